"""The store's reliability rules, on small synthetic items (no audio)."""

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

import mapkit
from mapkit.datasets.store import (CHUNK_ROWS, Entry, attrs_checksum, ShardItem, ShardWriter, Store, feature_stats,
                                   shard_file_attrs, write_json_atomic)
from mapkit.errors import StoreError
from mapkit.settings import FeatureSettings, TargetSettings


def song_item(song_id, n_rows=5, value=0.0):
    return ShardItem(group=f"songs/{song_id}",
                     datasets={"placement": np.full((n_rows, 3, 4), value, np.float16),
                               "selection": np.full((n_rows, 6), value, np.float16)},
                     attrs={"n_frames": n_rows, "audio_sha256": f"sha-{song_id}"})


def features_writer(store, **kw):
    return ShardWriter(store.features_dir, shard_file_attrs("features", FeatureSettings()), **kw)


def test_shard_writer_commits_by_rename_and_rolls_over(tmp_path):
    store = Store(tmp_path)
    store.create()
    w = features_writer(store, max_items=2)
    w.write(song_item("a"))
    assert sorted(os.listdir(store.features_dir)) == ["shard-00001.h5.partial"]
    assert store.index("features") == {}  # a partial shard never counts
    w.write(song_item("b"))  # full: committed
    assert sorted(os.listdir(store.features_dir)) == ["shard-00001.h5"]
    w.write(song_item("c"))
    w.close()
    assert sorted(os.listdir(store.features_dir)) == ["shard-00001.h5", "shard-00002.h5"]
    index = store.index("features")
    assert {k: v.shard.name for k, v in index.items()} == {"a": "shard-00001.h5", "b": "shard-00001.h5",
                                                           "c": "shard-00002.h5"}
    assert index["c"].attrs == {"n_frames": 5, "audio_sha256": "sha-c",
                                "attrs_crc32": attrs_checksum({"n_frames": 5, "audio_sha256": "sha-c"}, "/songs/c")}
    assert index.problems == []


def test_shard_file_attrs_dtypes_and_chunks(tmp_path):
    store = Store(tmp_path)
    settings = FeatureSettings()
    with features_writer(store, chunk_rows=4) as w:
        w.write(song_item("long", n_rows=10, value=1.5))
        w.write(ShardItem("songs/empty", {"placement": np.zeros((0, 3, 4), np.float16)},
                          subgroup_attrs={"sub/deeper": {"x": 3}}))
    with h5py.File(store.shards("features")[0], "r") as f:
        assert f.attrs["schema_version"] == mapkit.SCHEMA_VERSION
        assert f.attrs["mapkit_version"] == mapkit.__version__
        assert f.attrs["kind"] == "features"
        assert f.attrs["settings_hash"] == settings.hash
        assert FeatureSettings.from_json(f.attrs["settings_json"]) == settings
        assert len(f.attrs["created"]) == 16
        d = f["songs/long/placement"]
        assert d.dtype == np.float16 and d.shape == (10, 3, 4)
        assert d.chunks == (4, 3, 4) and d.compression is None
        assert np.all(d[:] == np.float16(1.5))
        assert f["songs/empty/placement"].shape == (0, 3, 4)
        assert f["songs/empty/sub/deeper"].attrs["x"] == 3


def test_default_chunks_are_1024_rows(tmp_path):
    store = Store(tmp_path)
    with features_writer(store) as w:
        w.write(song_item("x", n_rows=3000))
        w.write(song_item("y", n_rows=10))
    with h5py.File(store.shards("features")[0], "r") as f:
        assert f["songs/x/selection"].chunks == (CHUNK_ROWS, 6)
        assert f["songs/y/selection"].chunks == (10, 6)


def test_shard_numbers_never_reuse_an_existing_number(tmp_path):
    store = Store(tmp_path)
    store.create()
    (store.features_dir / "shard-00007.h5").write_bytes(b"")
    with features_writer(store) as w:
        w.write(song_item("a"))
    assert store.features_dir.joinpath("shard-00008.h5").exists()


def test_same_group_twice_in_one_shard_is_refused(tmp_path):
    w = features_writer(Store(tmp_path))
    w.write(song_item("a"))
    with pytest.raises(StoreError, match="written twice"):
        w.write(song_item("a"))
    w.close()


def test_newest_shard_wins(tmp_path):
    store = Store(tmp_path)
    for value in (1.0, 2.0):
        with features_writer(store) as w:
            w.write(song_item("a", value=value))
            if value == 1.0:
                w.write(song_item("b", value=value))
    index = store.index("features")
    assert len(index) == 2
    assert index["a"].shard.name == "shard-00002.h5" and index["b"].shard.name == "shard-00001.h5"
    with h5py.File(index["a"].shard, "r") as f:
        assert f[index["a"].group]["placement"][0, 0, 0] == 2.0


def test_unreadable_shards_are_reported_not_crashed_on(tmp_path):
    store = Store(tmp_path)
    with features_writer(store) as w:
        w.write(song_item("good"))
    with features_writer(store) as w:
        w.write(song_item("in_truncated"))
    truncated = store.shards("features")[1]
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    (store.features_dir / "shard-00003.h5").write_bytes(os.urandom(5000))
    with ShardWriter(store.features_dir, shard_file_attrs("targets", TargetSettings())) as w:
        w.write(song_item("wrong_kind"))
    index = store.index("features")
    assert list(index) == ["good"]
    problems = dict(index.problems)
    assert set(problems) == {str(p) for p in store.shards("features")[1:]}
    assert "unreadable shard" in problems[str(truncated)]
    assert "shard kind 'targets'" in problems[str(store.shards("features")[3])]


def test_lock_refuses_a_second_run_and_names_the_holder(tmp_path):
    store = Store(tmp_path)
    with store.lock("extract"):
        with pytest.raises(StoreError) as e:
            with Store(tmp_path).lock("build-targets"):
                pass
        assert str(tmp_path) in str(e.value)
        assert f"pid {os.getpid()}, mapkit extract" in e.value.reason
    with store.lock("build-targets"):  # released on exit
        pass


def test_taking_the_lock_adopts_flushed_songs_and_deletes_partial_shards_of_a_killed_run(tmp_path):
    store = Store(tmp_path)
    w = features_writer(store)
    w.write(song_item("a"))
    w.abandon()  # as if killed: the shard stays .partial, song "a" flushed whole
    store.targets_dir.mkdir()
    (store.targets_dir / "shard-00004.h5.partial").write_bytes(b"half")
    (store.features_dir / "notes.txt.partial").write_bytes(b"not ours")
    with store.lock("extract"):
        assert sorted(os.listdir(store.features_dir)) == ["notes.txt.partial", "shard-00002.h5"]
        assert os.listdir(store.targets_dir) == []
    assert list(store.index("features")) == ["a"] and store.recovered == ["songs/a"]


def entry(song_id, placement, selection, settings_hash="h"):
    """An index entry whose band sums are those of the given unpadded arrays."""
    attrs = {"n_frames": len(placement)}
    for stage, x in (("placement", placement), ("selection", selection)):
        attrs[f"{stage}_band_sum"] = x.sum(axis=0)
        attrs[f"{stage}_band_sumsq"] = (x * x).sum(axis=0)
    return Entry(song_id, Path("/store/features/shard-00001.h5"), f"songs/{song_id}", attrs,
                 {"settings_hash": settings_hash})


def test_feature_stats_equal_numpy_over_all_frames():
    rng = np.random.default_rng(1)
    songs = [(rng.normal(-5, 3, (n, 3, 80)), rng.normal(2, 1, (n, 100))) for n in (7, 50, 1)]
    stats = feature_stats([entry(str(i), p, s) for i, (p, s) in enumerate(songs)])
    assert stats["n_songs"] == 3 and stats["n_frames"] == 58 and stats["settings_hash"] == "h"
    allp = np.concatenate([p for p, _ in songs])
    alls = np.concatenate([s for _, s in songs])
    np.testing.assert_allclose(stats["placement"]["mean"], allp.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats["placement"]["std"], allp.std(axis=0), rtol=1e-9)
    np.testing.assert_allclose(stats["selection"]["std"], alls.std(axis=0), rtol=1e-9)
    assert np.shape(stats["placement"]["mean"]) == (3, 80)
    empty = feature_stats([])
    assert empty["n_songs"] == 0 and empty["placement"]["mean"] is None
    with pytest.raises(StoreError, match="several settings hashes"):
        feature_stats([entry("a", allp, alls, "h1"), entry("b", allp, alls, "h2")])


def test_write_json_atomic_leaves_no_temporary(tmp_path):
    write_json_atomic(tmp_path / "x.json", {"a": 1})
    write_json_atomic(tmp_path / "x.json", {"a": 2})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 2}
    assert os.listdir(tmp_path) == ["x.json"]


def test_a_finished_run_leaves_no_holder_line(tmp_path):
    store = Store(tmp_path / "s")
    with store.lock("extract"):
        assert f"pid {os.getpid()}" in store.lock_path.read_text()
    assert store.lock_path.read_text() == ""


def test_the_refused_run_waits_for_a_just_started_holder_to_write_its_line(tmp_path):
    import fcntl
    import threading

    store = Store(tmp_path / "s")
    store.create()
    fd = os.open(store.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # taken, line not written yet
        writer = threading.Timer(0.2, lambda: os.pwrite(fd, b"pid 4242, mapkit extract, since now\n", 0))
        writer.start()
        with pytest.raises(StoreError, match="pid 4242"):
            with store.lock("extract"):
                pass
        writer.join()
    finally:
        os.close(fd)
