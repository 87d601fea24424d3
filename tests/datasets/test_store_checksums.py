"""Seeded corruptions that only checksums and the structure rules can see (issue 10).

Each corruption changes what a reader would get; validate must name the song
and exit non-zero. build-targets must restore what validate calls missing,
never crash on a damaged level, and --rebuild-vocab must commit all or nothing.
"""

import json
import shutil

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import mapkit
from mapkit.runs.build_targets import build_targets
from mapkit.cli import main
from mapkit.datasets.store import Store, attrs_checksum, data_checksum
from mapkit.datasets.validation import validate_store
from mapkit.runs.demo import make_demo
from mapkit.errors import StoreError
from mapkit.runs.extract import extract
from mapkit.settings import TargetSettings


@pytest.fixture(scope="module")
def sound(tmp_path_factory):
    """Two demo songs of equal length (6 s), with levels; features and targets in one shard each."""
    base = tmp_path_factory.mktemp("checksums")
    demo = make_demo(base / "demo", n_levels=2, duration_s=6, include_fretsonfire=False, progress=False)
    store = base / "store"
    assert extract(demo.levels_dir, store=store, jobs=1, progress=False).exit_code == 0
    assert build_targets(demo.levels_dir, store=store, jobs=1, progress=False).exit_code == 0
    assert validate_store(store, progress=False).ok
    return {"store": store, "levels": demo.levels_dir, "songs": [lv.song_id for lv in demo.levels]}


@pytest.fixture
def store(sound, tmp_path):
    dst = tmp_path / "store"
    shutil.copytree(sound["store"], dst)
    return dst


def features_file(store):
    [shard] = Store(store).shards("features")
    return h5py.File(shard, "r+")


def targets_file(store):
    [shard] = Store(store).shards("targets")
    return h5py.File(shard, "r+")


def assert_caught(store, song_id, check):
    """validate fails ``check`` naming ``song_id``, and the CLI exits 1 naming it too."""
    report = validate_store(store, progress=False)
    assert not report.ok
    found = [p for p in report.problems if p["check"] == check]
    assert found and all(song_id in p["where"] for p in found), report.summary()
    r = CliRunner().invoke(main, ["validate", "--store", str(store), "--no-progress"])
    assert r.exit_code == 1 and song_id in r.output and f"FAIL [{check}]" in r.output
    return found


@pytest.mark.parametrize("how", ["roll", "reverse"])
def test_features_rolled_or_reversed_in_time(store, sound, how):
    sid = sound["songs"][0]
    with features_file(store) as f:
        ds = f[f"songs/{sid}/placement"]
        x = ds[()]
        # the rows of the song only: pads, band sums and stats cannot see it
        body = x[7:-7]
        ds[7:-7] = np.roll(body, 3, axis=0) if how == "roll" else body[::-1]
    [p] = assert_caught(store, sid, "checksum")
    assert "placement" in p["message"]
    assert validate_store(store, progress=False, checksums=False).ok  # --quick does not look at the bytes


def test_features_swapped_between_two_songs(store, sound):
    a, b = sound["songs"]
    with features_file(store) as f:
        xa, xb = f[f"songs/{a}/selection"][()], f[f"songs/{b}/selection"][()]
        assert xa.shape == xb.shape
        f[f"songs/{a}/selection"][...] = xb
        f[f"songs/{b}/selection"][...] = xa
    report = validate_store(store, progress=False)
    named = {p["where"].split()[1] for p in report.problems if p["check"] == "checksum"}
    assert named == {a, b}, report.summary()


def test_datasets_moved_with_their_checksums_between_two_songs(store, sound):
    """Moving the datasets themselves (attribute and all): the checksum is bound to the dataset's path."""
    a, b = sound["songs"]
    with features_file(store) as f:
        f.move(f"songs/{a}/placement", "tmp")
        f.move(f"songs/{b}/placement", f"songs/{a}/placement")
        f.move("tmp", f"songs/{b}/placement")
    report = validate_store(store, progress=False)
    named = {p["where"].split()[1] for p in report.problems if p["check"] == "checksum"}
    assert named == {a, b}, report.summary()


def test_song_groups_renamed_into_each_other(store, sound):
    a, b = sound["songs"]
    with features_file(store) as f:
        f.move(f"songs/{a}", "songs/tmp")
        f.move(f"songs/{b}", f"songs/{a}")
        f.move("songs/tmp", f"songs/{b}")
    report = validate_store(store, progress=False)
    named = {p["where"].split()[1] for p in report.problems if p["check"] == "checksum"}
    assert named == {a, b}, report.summary()


@pytest.mark.parametrize("where", ["song group", "song dataset", "level group", "difficulty dataset",
                                   "characteristic dataset", "top-level group", "top-level dataset",
                                   "songs dataset"])
def test_an_extra_group_or_dataset_is_an_error(store, sound, where):
    sid = sound["songs"][1]
    opener, path, make = {
        "song group": (features_file, f"songs/{sid}/extra", "group"),
        "song dataset": (features_file, f"songs/{sid}/extra", "dataset"),
        "level group": (targets_file, f"levels/{sid}/Standard/Extra", "group"),
        "difficulty dataset": (targets_file, f"levels/{sid}/Standard/Expert/extra", "dataset"),
        "characteristic dataset": (targets_file, f"levels/{sid}/Standard/extra", "dataset"),
        "top-level group": (features_file, "extra", "group"),
        "top-level dataset": (targets_file, "extra", "dataset"),
        "songs dataset": (features_file, "songs/extra", "dataset"),
    }[where]
    with opener(store) as f:
        if make == "group":
            f.create_group(path)
        else:
            f.create_dataset(path, data=np.arange(3))
    report = validate_store(store, progress=False)
    assert not report.ok
    found = [p for p in report.problems if p["check"] == "structure"]
    assert found, report.summary()
    assert path.rsplit("/", 1)[-1] in found[0]["message"] or "Extra" in found[0]["message"]
    if where.startswith(("song", "level", "difficulty", "characteristic")) and where != "songs dataset":
        assert all(sid in p["where"] for p in found)
    assert validate_store(store, progress=False, checksums=False).exit_code == 1  # not a checksum finding


def test_an_extra_attribute_on_a_dataset_is_an_error(store, sound):
    sid = sound["songs"][0]
    with targets_file(store) as f:
        f[f"levels/{sid}/Standard/Expert/tokens"].attrs["note"] = "hi"
    assert_caught(store, sid, "structure")


def test_a_listed_difficulty_deleted_is_named_and_restored_by_build_targets(store, sound):
    sid = sound["songs"][0]
    with targets_file(store) as f:
        listed = json.loads(f[f"levels/{sid}"].attrs["difficulties_json"])
        assert "Standard/Expert" in listed
        del f[f"levels/{sid}/Standard/Expert"]
    [p] = assert_caught(store, sid, "structure")
    assert "Standard/Expert" in p["message"] and "missing" in p["message"]
    report = build_targets(sound["levels"], store=store, jobs=1, progress=False)
    assert report.exit_code == 0
    by_item = {r.song_id: r for r in report.items}
    assert by_item[f"{sid}/Standard/Expert"].status == "ok"  # built again, not "already present"
    assert by_item[f"{sound['songs'][1]}/Standard/Expert"].status == "skipped"
    assert validate_store(store, progress=False).ok


@pytest.mark.parametrize("garbage", ["not json", '{"a": 1}', "[1, 2]", '["no-slash"]'])
def test_garbage_difficulties_json_is_named_and_build_targets_does_not_crash(store, sound, garbage):
    sid = sound["songs"][1]
    with targets_file(store) as f:
        f[f"levels/{sid}"].attrs["difficulties_json"] = garbage
    found = assert_caught(store, sid, "level_attrs")
    assert "difficulties_json" in found[0]["message"]
    report = build_targets(sound["levels"], store=store, jobs=1, progress=False)
    assert report.exit_code == 0
    assert all(r.status == "ok" for r in report.items if r.song_id.startswith(sid))
    assert validate_store(store, progress=False).ok


def test_audio_sha256_changed_on_a_song_without_levels(store, sound):
    sid = sound["songs"][0]
    shutil.rmtree(store / "targets")
    (store / "vocab.json").unlink()
    assert validate_store(store, progress=False).ok  # features only: a sound store
    with features_file(store) as f:
        f[f"songs/{sid}"].attrs["audio_sha256"] = "0" * 64
    [p] = assert_caught(store, sid, "checksum")
    assert "attributes" in p["message"]


def test_a_levels_n_frames_changed(store, sound):
    sid = sound["songs"][1]
    with targets_file(store) as f:
        f[f"levels/{sid}"].attrs["n_frames"] = int(f[f"levels/{sid}"].attrs["n_frames"]) + 1
    assert_caught(store, sid, "checksum")
    report = validate_store(store, progress=False, checksums=False)
    [p] = [p for p in report.problems if p["check"] == "target_length"]  # seen even without checksums
    assert sid in p["where"]


def test_a_changed_shard_attribute(store):
    [shard] = Store(store).shards("targets")
    with h5py.File(shard, "r+") as f:
        f.attrs["created"] = "yesterday"
    report = validate_store(store, progress=False)
    assert [p["where"] for p in report.problems if p["check"] == "checksum"] == [str(shard)]


def test_checksums_are_the_documented_functions(store, sound):
    """A plain-h5py reader can recompute them: CRC-32 of path + NUL + the values' bytes; attrs likewise."""
    sid = sound["songs"][0]
    [shard] = Store(store).shards("features")
    with h5py.File(shard, "r") as f:
        ds = f[f"songs/{sid}/placement"]
        assert int(ds.attrs["crc32"]) == data_checksum(f"/songs/{sid}/placement", ds[()])
        g = f[f"songs/{sid}"]
        assert int(g.attrs["attrs_crc32"]) == attrs_checksum(g.attrs, f"/songs/{sid}")
        assert f.attrs["schema_version"] == mapkit.SCHEMA_VERSION == 3


@pytest.mark.parametrize("old", [1, 2])  # 2: before walls, arcs, chains and events (issue 14)
def test_a_store_of_the_previous_schema_is_refused_with_what_to_do(store, sound, old):
    for shard in Store(store).shards("features"):
        with h5py.File(shard, "r+") as f:
            f.attrs["schema_version"] = old
    with pytest.raises(StoreError, match="re-run mapkit extract and build-targets"):
        extract(sound["levels"], store=store, jobs=1, progress=False)
    r = CliRunner().invoke(main, ["build-targets", str(sound["levels"]), "--store", str(store), "--no-progress"])
    assert r.exit_code == 1 and f"schema {old}" in r.stderr and "re-run mapkit extract" in r.stderr
    report = validate_store(store, progress=False)
    assert any("re-run mapkit extract" in p["message"] for p in report.problems if p["check"] == "shard_attrs")


# --- build-targets --rebuild-vocab: vocab.json and the re-encoded shards, all or nothing ---------------


def _rebuild(sound, store, **kw):
    return build_targets(sound["levels"], store=store, jobs=1, progress=False, rebuild_vocab=True,
                         settings=TargetSettings(vocab_size=3), **kw)


class Interrupted(Exception):
    pass


def test_rebuild_vocab_interrupted_before_its_commit_leaves_the_old_store(store, sound, monkeypatch):
    old_vocab = (store / "vocab.json").read_text()
    monkeypatch.setattr(Store, "commit_rebuild", lambda *a, **k: (_ for _ in ()).throw(Interrupted()))
    with pytest.raises(Interrupted):
        _rebuild(sound, store)
    assert (store / "vocab.json").read_text() == old_vocab
    report = validate_store(store, progress=False)
    assert report.ok and report.counts["partial_files"] >= 1  # the new shards never counted
    monkeypatch.undo()
    with pytest.raises(StoreError, match="vocab size"):  # the stored vocabulary still rules
        build_targets(sound["levels"], store=store, jobs=1, progress=False,
                      settings=TargetSettings(vocab_size=3))


def test_rebuild_vocab_interrupted_inside_its_commit_is_finished_by_the_next_run(store, sound, monkeypatch):
    """Killed between writing vocab.json and publishing the shards: the journal lets the next run finish."""
    import mapkit.datasets.store as store_module

    real_replace = store_module.os.replace
    state = {"vocab_written": False}

    def replace(src, dst):
        if str(dst).endswith("vocab.json"):
            state["vocab_written"] = True
        elif state["vocab_written"] and str(src).endswith(".h5.partial"):
            raise Interrupted()  # after vocab.json, before the first shard is published
        return real_replace(src, dst)

    monkeypatch.setattr(store_module.os, "replace", replace)
    with pytest.raises(Interrupted):
        _rebuild(sound, store)
    monkeypatch.undo()
    assert state["vocab_written"]
    report = validate_store(store, progress=False)
    assert not report.ok and "--rebuild-vocab was interrupted" in report.summary()
    with Store(store).lock("build-targets"):  # any writing run finishes the commit first
        pass
    report = validate_store(store, progress=False)
    assert report.ok, report.summary()
    assert json.loads((store / "vocab.json").read_text())["vocab_size"] == 3
    assert build_targets(sound["levels"], store=store, jobs=1, progress=False,
                         settings=TargetSettings(vocab_size=3)).exit_code == 0


def test_rebuild_vocab_commits_everything(store, sound):
    assert _rebuild(sound, store).exit_code == 0
    assert not (store / ".rebuild-vocab.json").exists()
    assert [p.name for p in Store(store).shards("targets")] == ["shard-00002.h5"]
    assert validate_store(store, progress=False).ok
