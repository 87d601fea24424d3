"""The runner never stalls, never outlives its parent, and stops cleanly on SIGINT/SIGTERM (issue 10)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass

import pytest

from mapkit.runs.runner import INTERRUPTED_MESSAGE, ItemResult, RunInterrupted, run_items


@dataclass(frozen=True)
class Item:
    song_id: str
    path: str
    seconds: float = 0.0


def sleepy(item: Item):
    """Slow in Python when told to: a sleep the time limit must cut short."""
    time.sleep(item.seconds)
    return item.song_id


def swallowing(item: Item):
    """Like a libsndfile read callback: swallows whatever the alarm raises, then fails on its own."""
    try:
        time.sleep(item.seconds)
    except BaseException:  # noqa: BLE001 - what a C callback does with an exception
        pass
    raise OSError("read error (as a decoder reports a swallowed exception)")


def writer(log):
    def write(item, value):
        log.append(item.song_id)
        return ItemResult(item.song_id, item.path, "ok")
    return write


def test_a_slow_item_times_out_and_the_run_goes_on():
    items = [Item("a", "a"), Item("slow", "slow", 30.0), Item("b", "b")]
    written = []
    t0 = time.monotonic()
    results = run_items(items, sleepy, writer(written), jobs=1, progress=False, time_limit=1.0)
    assert time.monotonic() - t0 < 15
    assert [r.status for r in results] == ["ok", "failed", "ok"]
    assert results[1].reason == "timed out after 1 s"
    assert sorted(written) == ["a", "b"]


def test_a_timeout_swallowed_by_the_work_is_still_a_timeout():
    results = run_items([Item("x", "x", 30.0)], swallowing, writer([]), jobs=1, progress=False, time_limit=0.5)
    assert results[0].status == "failed" and results[0].reason == "timed out after 0.5 s"


def test_no_time_limit_and_a_bad_one():
    assert run_items([Item("a", "a", 0.01)], sleepy, writer([]), jobs=1, progress=False,
                     time_limit=None)[0].status == "ok"
    with pytest.raises(ValueError, match="time_limit"):
        run_items([Item("a", "a")], sleepy, writer([]), jobs=1, progress=False, time_limit=0)


def interrupt_self(item: Item):
    """The signal arrives while this item is worked on, and the work swallows it (a C callback would)."""
    if item.song_id == "victim":
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except BaseException:  # noqa: BLE001
            pass
        raise OSError("truncated: read error")  # what the decoder then reports: must not be recorded
    return item.song_id


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_run_and_records_nothing_for_the_interrupted_item(signum):
    def kill_on(item: Item):
        if item.song_id == "victim":
            os.kill(os.getpid(), signum)
            time.sleep(5)
        return item.song_id

    written = []
    items = [Item("first", "first"), Item("victim", "victim"), Item("never", "never")]
    t0 = time.monotonic()
    with pytest.raises(RunInterrupted) as e:
        run_items(items, kill_on, writer(written), jobs=1, progress=False)
    assert time.monotonic() - t0 < 4  # the sleep was cut short
    assert e.value.signum == signum and e.value.exit_code == 128 + signum
    assert written == ["first"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_a_signal_swallowed_by_the_work_still_stops_the_run_and_drops_its_failure():
    written = []
    items = [Item("first", "first"), Item("victim", "victim"), Item("never", "never")]
    with pytest.raises(RunInterrupted):
        run_items(items, interrupt_self, writer(written), jobs=1, progress=False)
    assert written == ["first"]


def test_a_signal_during_a_write_takes_effect_after_it():
    written = []

    def write(item, value):
        if item.song_id == "a":
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # the handler ran here, and did not raise
        written.append(item.song_id)
        return ItemResult(item.song_id, item.path, "ok")

    with pytest.raises(RunInterrupted):
        run_items([Item("a", "a"), Item("b", "b")], sleepy, write, jobs=1, progress=False)
    assert written == ["a"]


PARENT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from tests.runs.test_runner_limits import Item, sleepy, writer
    from mapkit.runs.runner import run_items
    print("started", flush=True)
    run_items([Item(str(i), str(i), 60.0) for i in range(4)], sleepy, writer([]), jobs=2, progress=False)
""")


def _children(pid):
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout
    return [int(p) for p, pp in (line.split() for line in out.splitlines()) if int(pp) == pid]


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie waits for its reaper, it is not running
        return f.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc (Linux)")
def test_workers_exit_when_the_parent_is_killed():
    signum = signal.SIGKILL
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p = subprocess.Popen([sys.executable, "-c", PARENT.format(root=root)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "started"
    workers = []
    deadline = time.monotonic() + 60
    while len(workers) < 2 and time.monotonic() < deadline:  # two loky workers busy on their item
        workers = [c for c in _children(p.pid)
                   if "popen_loky" in open(f"/proc/{c}/cmdline").read()]
        time.sleep(0.2)
    assert len(workers) == 2
    time.sleep(1.0)  # let them start their items (and their watchdogs)
    shm = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    p.send_signal(signum)
    p.wait(timeout=30)
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    survivors = [w for w in workers if _alive(w)]
    for w in survivors:  # never leave them behind, even when the test fails
        os.kill(w, signal.SIGKILL)
    assert not survivors, "a worker outlived its parent"
    if shm:  # joblib's temporary folders go with the workers
        time.sleep(1.0)
        left = [d for d in os.listdir("/dev/shm") if d.startswith(f"joblib_memmapping_folder_{p.pid}_")]
        assert not left


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_extract_stops_on_a_signal_keeps_what_it_wrote_and_a_rerun_finishes(tmp_path, signum):
    from mapkit.datasets.store import Store
    from mapkit.datasets.validation import validate_store
    from tests.runs.test_extract import make_inputs

    inp, store = tmp_path / "in", tmp_path / "store"
    make_inputs(inp, 6)
    cmd = [sys.executable, "-m", "mapkit", "extract", str(inp), "--store", str(store), "--jobs", "1",
           "--no-progress"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while p.poll() is None and time.monotonic() < deadline and not (
            (store / "features").is_dir() and any(f.name.endswith(".partial") for f in (store / "features").iterdir())):
        time.sleep(0.005)  # the first song is written: the run is in the middle of its work
    assert p.poll() is None, p.communicate()
    t0 = time.monotonic()
    p.send_signal(signum)
    out, err = p.communicate(timeout=60)
    assert time.monotonic() - t0 < 10
    assert p.returncode == 128 + signum, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(INTERRUPTED_MESSAGE + " (see ") and "Traceback" not in err
    index = Store(store).index("features")
    assert 1 <= len(index) < 6  # what was written is committed, not left as a partial shard
    assert not [f for f in (store / "features").iterdir() if f.name.endswith(".partial")]
    reports = list((store / "reports").glob("extract-*.json"))  # the interrupted run's report, named in the line
    assert len(reports) == 1 and str(reports[0]) in last
    doc = json.loads(reports[0].read_text())
    assert doc["interrupted"] == signum and doc["counts"]["ok"] == len(index)
    assert any(f"after {len(index)} of 6 items" in line for line in doc["notes"])
    assert validate_store(store, progress=False).ok
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{6 - len(index)} written, {len(index)} already present" in done.stderr


def deaf(item: Item):
    """``stuck``: native code that never sees the alarm (SIGALRM blocked); ``slow``: Python that does."""
    if item.song_id == "stuck":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(item.seconds)
    return item.song_id


def test_in_workers_slow_and_stuck_items_time_out_and_the_run_goes_on():
    items = [Item("a", "a"), Item("slow", "slow", 60.0), Item("stuck", "stuck", 60.0), Item("b", "b"),
             Item("c", "c")]
    written = []
    t0 = time.monotonic()
    results = run_items(items, deaf, writer(written), jobs=2, progress=False, time_limit=1.0)
    assert time.monotonic() - t0 < 30
    assert {r.song_id: r.status for r in results} == {"a": "ok", "slow": "failed", "stuck": "failed", "b": "ok",
                                                     "c": "ok"}
    assert results[1].reason == results[2].reason == "timed out after 1 s"
    assert sorted(written) == ["a", "b", "c"]


def busy_or_asleep(item: Item):
    """``busy``: a Python loop (stopped at its next bytecode); ``asleep``: a native call that never returns in
    time (the worker process must be ended)."""
    if item.song_id == "busy":
        end = time.monotonic() + item.seconds
        while time.monotonic() < end:
            pass
    elif item.song_id == "asleep":
        time.sleep(item.seconds)
    return item.song_id


def test_on_dask_slow_and_stuck_items_time_out_and_the_run_goes_on():
    items = [Item("a", "a"), Item("busy", "busy", 60.0), Item("asleep", "asleep", 60.0), Item("b", "b")]
    written = []
    t0 = time.monotonic()
    results = run_items(items, busy_or_asleep, writer(written), jobs=2, backend="dask", progress=False,
                        time_limit=1.0)
    assert time.monotonic() - t0 < 40  # the limits end both; without them the run takes a minute
    by_id = {r.song_id: r for r in results}
    assert {k: r.status for k, r in by_id.items()} == {"a": "ok", "busy": "failed", "asleep": "failed", "b": "ok"}
    assert by_id["busy"].reason == "timed out after 1 s"
    assert by_id["asleep"].reason.startswith("worker process died while processing this item")
    assert "stuck past the time limit of 1 s" in by_id["asleep"].reason
    assert sorted(written) == ["a", "b"]


class SignalOnRead:
    """A song file object that sends a signal to this process on its third read, as Ctrl-C would."""

    def __init__(self, data: bytes, signum: int):
        import io

        self._f, self.signum, self.reads = io.BytesIO(data), signum, 0

    def readinto(self, b):
        self.reads += 1
        if self.reads == 3:
            os.kill(os.getpid(), self.signum)  # the handler runs inside libsndfile's read callback
        return self._f.readinto(b)

    def __getattr__(self, name):
        return getattr(self._f, name)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_inside_the_decoders_read_callback_is_not_a_truncated_song(monkeypatch, signum):
    """cffi swallows the exception a handler raises in a callback: the run must still stop, silently."""
    import io

    import numpy as np
    import soundfile as sf

    from mapkit.preprocess.audio import decode_audio

    buf = io.BytesIO()
    sf.write(buf, 0.1 * np.ones((200_000, 1), np.float32), 44100, format="WAV")

    def decode(item: Item):
        if item.song_id == "victim":
            decode_audio(SignalOnRead(buf.getvalue(), signum), "victim.wav")
        return item.song_id

    written, reported = [], []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)  # what would be printed as a traceback
    with pytest.raises(RunInterrupted):
        run_items([Item("first", "first"), Item("victim", "victim"), Item("never", "never")], decode,
                  writer(written), jobs=1, progress=False)
    assert written == ["first"]  # no "truncated" failure recorded for the victim
    assert reported == []  # the exception cffi swallowed is not reported


def test_the_commands_stop_on_a_signal_outside_the_work_too():
    from mapkit.runs.runner import signals_stop_the_run

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(RunInterrupted) as e, signals_stop_the_run():
        os.kill(os.getpid(), signal.SIGTERM)  # e.g. while the input folder is being searched
        time.sleep(5)
    assert e.value.exit_code == 143
    assert signal.getsignal(signal.SIGINT) is before and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_summary_line_shows_the_range_of_the_numbers_its_reasons_differ_in():
    from types import SimpleNamespace

    from mapkit.runs.runner import merged_reason, reason_lines

    items = [SimpleNamespace(status="quarantined", reason=f"wall at beat {b} lies beyond the audio ({s} s)",
                             song_id=f"song-{i}") for i, (b, s) in enumerate([(412, 180.5), (97, 61.25), (230, 95.0)])]
    items.append(SimpleNamespace(status="failed", reason="not a file", song_id="odd"))
    lines = reason_lines(items)
    assert lines[0] == ("  quarantined \u00d73: wall at beat 97\u2013412 lies beyond the audio (61.25\u2013180.5 s): "
                        "song-0, song-1, song-2")
    assert lines[1] == "  failed \u00d71: not a file: odd"
    assert merged_reason(["only 9 note frames", "only 9 note frames"]) == "only 9 note frames"


def test_the_progress_bar_counts_failed_and_quarantined_items_apart(capsys):
    def failing(item: Item):
        if item.song_id == "bad":
            raise OSError("unreadable")
        return item.song_id

    def write(item, value):
        return ItemResult(item.song_id, item.path, "quarantined" if value == "odd" else "ok", "")

    items = [Item("a", "a"), Item("odd", "odd"), Item("bad", "bad"), Item("odd", "odd2")]
    results = run_items(items, failing, write, jobs=1, progress=True, time_limit=None)
    assert [r.status for r in results] == ["ok", "quarantined", "failed", "quarantined"]
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "failed=1" in last and "quarantined=2" in last
