"""Run per-song work in parallel; write results in the parent; report every item.

The shape of every batch command (``extract``, ``build-targets``):

- **workers compute**: ``work(item)`` is a pure function of one item, run in
  worker processes (joblib/loky, ``jobs`` of them) or on a Dask cluster;
- **the parent writes**: ``write(item, value)`` runs in this process, one call
  at a time, as results arrive (in any order), so each HDF5 shard has exactly
  one writer (docs/design.md §10);
- **a bad item never stops the run**: an exception raised by ``work`` becomes a
  ``failed`` :class:`ItemResult` with its reason (a
  :class:`~mapkit.errors.MapkitError` gives its own reason; anything else its
  type and message). A worker process that dies (a crash in a decoder, out of
  memory) breaks the joblib pool: the items that were in flight are then run
  again one by one, each in a fresh process, and the one that kills its
  process again is ``failed`` with "worker process died"; the rest of the run
  goes on in a new pool. With ``jobs=1`` the work runs in this process (no pool,
  no protection against crashes). An exception raised by ``write`` (e.g. the
  disk is full) is a failure of the run itself and propagates.
- **no item can stall the run**: each ``work(item)`` has a time limit
  (``time_limit``, ``--item-timeout``, default :data:`DEFAULT_ITEM_TIMEOUT_S`);
  past it the item is ``failed`` with "timed out after N s" and the run goes
  on. The limit is a ``SIGALRM`` in the process doing the work, so it stops
  Python code and blocking reads; in a worker process, native code that
  ignores it is ended by the worker's watchdog :data:`HARD_GRACE_S` seconds
  later (or one time limit later, when that is shorter), and the item fails
  the same way. With ``jobs=1`` nothing can end
  native code that never returns. On Dask the work runs in a worker thread:
  the limit raises in that thread, and the same grace later ends the worker
  process (its item fails with "worker process died ..."; a local cluster
  does not retry it, a remote scheduler as often as its ``allowed-failures``).
- **workers never outlive the run**: every joblib worker runs a watchdog
  thread that ends it within a second when the process that started the run
  is gone (SIGKILL included), so no worker lingers holding memory and the
  caller's pipes, and joblib's temporary folders are removed with them.
- **SIGINT and SIGTERM stop the run promptly**: the item in progress is
  abandoned and nothing is recorded for it (not even a failure its
  interruption caused, e.g. a decoder that saw the signal as a read error),
  no ``write`` is ever cut in half (a signal during ``write`` takes effect
  after it), and :class:`RunInterrupted` propagates; the commands commit
  what was written and print :data:`INTERRUPTED_MESSAGE`.

Reports (:class:`RunReport`, :func:`write_report`) go to
``STORE/reports/<command>-<UTC timestamp>-<pid>.json``: settings, counts and
every item with its status (``ok``, ``skipped`` = already present,
``failed``, ``quarantined``) and reason.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mapkit
from mapkit.datasets.names import plural
from mapkit.errors import MapkitError

STATUSES = ("ok", "skipped", "failed", "quarantined")

#: How each status reads in a summary line.
STATUS_WORDS = {"ok": "written", "skipped": "already present", "failed": "failed", "quarantined": "quarantined"}

#: Default time limit of one item's work, in seconds (``--item-timeout``): generous, since a
#: 20-minute song extracts in well under a minute, but finite.
DEFAULT_ITEM_TIMEOUT_S = 600.0
#: How long past its time limit a worker stuck in native code is given before its watchdog ends it
#: (at most the time limit itself: a 1 s limit ends the worker after 2 s).
HARD_GRACE_S = 30.0
#: How often a worker's watchdog looks at its parent and its deadline, in seconds.
WATCHDOG_PERIOD_S = 0.5

#: The one line a command prints when SIGINT or SIGTERM stopped it.
INTERRUPTED_MESSAGE = ("interrupted: stopped; what was written is kept, run the same command again to finish")


class RunInterrupted(BaseException):
    """SIGINT or SIGTERM (``signum``) stopped a run; ``exit_code`` is 128 + signum (130, 143).

    A :class:`BaseException`, like :class:`KeyboardInterrupt`, so that no
    ``except Exception`` in the work turns it into an item's failure.
    """

    def __init__(self, signum: int):
        self.signum = int(signum)
        #: The items :func:`run_items` had handled when the signal came (their ItemResults, in input order).
        self.results: list = []
        #: How many items the run was given.
        self.n_items = 0
        #: The JSON report of the interrupted run, when the command wrote one.
        self.report_path = None
        super().__init__(f"interrupted by signal {self.signum}")

    def note(self) -> str:
        """The summary line of an interrupted run's report."""
        if self.n_items and len(self.results) >= self.n_items:
            return (f"interrupted by signal {self.signum} after all {self.n_items} items were handled: run the "
                    f"same command again to finish")
        return (f"interrupted by signal {self.signum} after {len(self.results)} of {self.n_items} items; "
                f"the rest were not handled: run the same command again to finish")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _ItemTimeout(BaseException):
    """Raised by SIGALRM in the work of an item past its time limit."""

BACKENDS = ("joblib", "dask")

#: Seconds to wait for a Dask scheduler to answer before the run gives up (nothing written by then).
DASK_CONNECT_TIMEOUT_S = 10.0


class SourceItem:
    """Base of the items of a run over input songs: ``song_id`` and ``path`` come from ``self.source``."""

    source: object  # mapkit.preprocess.sources.Source

    @property
    def song_id(self) -> str:
        return self.source.song_id

    @property
    def path(self) -> str:
        return str(self.source.path)


@dataclass
class ItemResult:
    """What happened to one item: ``status`` is one of :data:`STATUSES`."""

    song_id: str
    source: str
    status: str
    reason: str = ""

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}")


@dataclass(frozen=True)
class WorkFailure:
    """An exception raised by ``work`` in a worker, as plain picklable data.

    (MapkitError subclasses do not survive pickling: their ``__init__`` takes
    two arguments, so they are turned into this before leaving the worker.)
    """

    error_type: str
    path: str | None
    reason: str


def worker_died(time_limit: float | None = None) -> str:
    """The reason of an item whose worker process died; with ``time_limit``, it may also have been ended for
    being stuck past it (Dask: a killed worker's cause is not reported)."""
    limit = f", or stuck past the time limit of {time_limit:g} s" if time_limit else ""
    return f"worker process died while processing this item (crash in a decoder or out of memory{limit})"


def timed_out(time_limit: float) -> str:
    """The failure reason of an item past its time limit."""
    return f"timed out after {time_limit:g} s"


@contextmanager
def _quiet_unraisable():
    """Drop the report of a RunInterrupted/_ItemTimeout swallowed by a C callback (cffi prints it otherwise).

    libsndfile reads a Python file object through cffi callbacks; an exception
    raised in one (by a signal handler) is swallowed there and handed to
    ``sys.unraisablehook``, which would print a traceback. The run sees the
    signal through its own flag, so the report says nothing new.
    """
    previous = sys.unraisablehook

    def hook(unraisable):
        if not isinstance(unraisable.exc_value, (RunInterrupted, _ItemTimeout)):
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


def _hard_limit_s(time_limit: float) -> float:
    """Seconds after which an item stuck in native code has its worker process ended: the time limit plus
    :data:`HARD_GRACE_S`, or twice the limit when that is shorter."""
    return time_limit + min(HARD_GRACE_S, time_limit)


class _Deadline:
    """SIGALRM after ``time_limit`` seconds while active (main thread only; else a no-op).

    ``fired`` tells afterwards whether the limit was reached, even when the
    exception it raised was swallowed (a libsndfile read callback swallows
    every exception and reports a read error instead).
    """

    def __init__(self, time_limit: float | None):
        self.time_limit = time_limit
        self.fired = False
        self.active = False
        self._old = None

    def _alarm(self, signum, frame):
        if self.active:
            self.fired = True
            raise _ItemTimeout()

    def __enter__(self):
        global _HARD_DEADLINE
        if self.time_limit:
            _HARD_DEADLINE = time.monotonic() + _hard_limit_s(self.time_limit)
            if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
                self._old = signal.signal(signal.SIGALRM, self._alarm)
                self.active = True
                signal.setitimer(signal.ITIMER_REAL, float(self.time_limit))
        return self

    def __exit__(self, *exc):
        global _HARD_DEADLINE
        self.active = False
        _HARD_DEADLINE = None
        if self._old is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._old)
            self._old = None
        return False


#: Monotonic time after which this worker's watchdog ends the process (an item stuck in native code).
_HARD_DEADLINE: float | None = None
_WATCHDOG: threading.Thread | None = None


def _watchdog(parent_pid: int):
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)  # the run's process is gone: nobody will read this worker's result
        deadline = _HARD_DEADLINE
        if deadline is not None and time.monotonic() > deadline:
            os._exit(70)  # stuck in native code past the time limit: the parent reports the item
        time.sleep(WATCHDOG_PERIOD_S)


def _watch_parent(parent_pid: int | None):
    """In a worker process: start the watchdog once, and leave SIGINT to the parent."""
    global _WATCHDOG
    if parent_pid is None or os.getpid() == parent_pid or _WATCHDOG is not None:
        return
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C reaches the whole process group: the parent decides, the workers are ended by it
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WATCHDOG = threading.Thread(target=_watchdog, args=(parent_pid,), name="mapkit-watchdog", daemon=True)
    _WATCHDOG.start()


def _guarded(work, i, item, time_limit: float | None = None, parent_pid: int | None = None):
    """Run ``work(item)``; return ``(i, True, value)`` or ``(i, False, WorkFailure)``.

    ``time_limit``: seconds before the item fails with "timed out after N s".
    ``parent_pid``: in a worker process, the pid of the run's process (the
    watchdog ends the worker when it is gone).
    """
    _watch_parent(parent_pid)
    with _quiet_unraisable(), _Deadline(time_limit) as deadline:
        try:
            out = i, True, work(item)
        except _ItemTimeout:
            out = None
        except MapkitError as e:
            out = i, False, WorkFailure(type(e).__name__, e.path, e.reason)
        except Exception as e:  # noqa: BLE001 - an unexpected error is one item's failure, not the run's
            out = i, False, WorkFailure(type(e).__name__, None, f"{type(e).__name__}: {e}")
        deadline.active = False
    if deadline.fired:  # whatever the work made of the alarm, the item ran out of time
        return i, False, WorkFailure("TimeoutError", None, timed_out(time_limit))
    return out


class _Signals:
    """SIGINT/SIGTERM during a run: remembered, and raised as RunInterrupted only where that is safe."""

    def __init__(self):
        self.signum = None
        self.raise_now = False

    def handler(self, signum, frame):
        if self.signum is None:
            self.signum = signum
        if self.raise_now:
            self.raise_now = False
            raise RunInterrupted(signum)

    def check(self):
        if self.signum is not None:
            raise RunInterrupted(self.signum)

    @contextmanager
    def raising(self):
        """Inside: a signal raises at once (the work of an item, waiting for workers)."""
        self.check()
        self.raise_now = True
        try:
            yield
        finally:
            self.raise_now = False


@contextmanager
def _interruptible(state: _Signals):
    """Handle SIGINT and SIGTERM with ``state`` (main thread only), restoring the old handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    old = {s: signal.signal(s, state.handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield state
    except KeyboardInterrupt:  # a SIGINT that arrived as KeyboardInterrupt (e.g. through joblib)
        raise RunInterrupted(state.signum or signal.SIGINT) from None
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _failure_reason(item, failure: WorkFailure) -> str:
    if failure.path and failure.path != str(getattr(item, "path", "")):
        return f"{failure.path}: {failure.reason}"
    return failure.reason


def default_jobs() -> int:
    """All cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def run_items(items, work, write, jobs=None, backend="joblib", scheduler=None, desc="songs",
              progress=True, unit: str = "song", time_limit: float | None = DEFAULT_ITEM_TIMEOUT_S
              ) -> list[ItemResult]:
    """Run ``work`` over ``items`` in parallel and ``write`` each result in this process.

    Parameters
    ----------
    items : sequence
        Picklable items with ``song_id`` and ``path`` attributes (e.g.
        :class:`~mapkit.preprocess.sources.Source`), used to name them in results.
    work : callable
        ``work(item) -> value``, run in a worker. Must be picklable (a module-level
        function or a ``functools.partial`` of one) and a pure function of ``item``.
    write : callable
        ``write(item, value) -> ItemResult``, run in this process for each
        successful ``work``, one at a time, in order of completion.
    jobs : int, optional
        Worker processes (joblib) or, for Dask without a scheduler, local
        workers; default all cores. ``1`` runs everything in this process.
    backend : {"joblib", "dask"}
    scheduler : str, optional
        Dask scheduler address (``tcp://host:8786``). Without it, a
        ``distributed.LocalCluster`` with ``jobs`` single-threaded workers is started.
    desc : str
        Label of the tqdm progress bar (on stderr).
    progress : bool
        Show the progress bar.
    unit : str
        What one item is, as the progress bar counts it (``"song"``, ``"level"``).
    time_limit : float or None
        Seconds one item's work may take before it fails with "timed out
        after N s" (None: no limit).

    Returns
    -------
    list of ItemResult
        One per item, in the order of ``items``.

    Raises
    ------
    RunInterrupted
        SIGINT or SIGTERM arrived (when called from the main thread); the
        items handled before it were written, the one in progress was not.
        Its ``results`` are the handled items' ItemResults.
    """
    from mapkit.progress import progress_bar

    items = list(items)
    jobs = _checked_run_args(backend, jobs, time_limit)
    bar = progress_bar(total=len(items), desc=desc, unit=unit, file=sys.stderr, disable=not progress,
                       dynamic_ncols=True, smoothing=0.1)
    signals = _Signals()
    recorder = _Recorder(items, write, bar, signals)
    try:
        with _interruptible(signals), _quiet_unraisable():
            if not items:
                pass
            elif backend == "dask":
                with signals.raising():
                    _run_dask(items, work, recorder.handle, jobs, scheduler, time_limit)
            elif jobs == 1:
                _run_here(items, work, recorder.handle, time_limit, signals)
            else:
                _run_joblib(items, work, recorder.handle, jobs, time_limit, signals)
            signals.check()
    except RunInterrupted as e:
        e.results, e.n_items = [r for r in recorder.results if r is not None], len(items)
        raise
    finally:
        bar.close()
    return recorder.results


def _checked_run_args(backend: str, jobs, time_limit) -> int:
    """The number of jobs (default all cores); raises ValueError for an unknown backend, jobs < 1 or a
    time limit that is not > 0."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    jobs = default_jobs() if jobs is None else int(jobs)
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if time_limit is not None and not time_limit > 0:
        raise ValueError(f"time_limit must be > 0 seconds or None, got {time_limit}")
    return jobs


class _Recorder:
    """Records each item's outcome of :func:`run_items` in this process: writes a success, names a
    failure, counts the failed and the quarantined on the progress bar."""

    def __init__(self, items: list, write, bar, signals: _Signals):
        self.items, self.write, self.bar, self.signals = items, write, bar, signals
        #: One ItemResult per item, in the order of ``items`` (None until it is handled).
        self.results: list[ItemResult | None] = [None] * len(items)
        #: Items that failed and items quarantined so far, shown apart on the progress bar.
        self.n_bad = {"failed": 0, "quarantined": 0}

    def handle(self, i: int, ok: bool, value):
        """Record item ``i``: ``write`` it when ``ok``, else ``value`` is its failure; then act on a signal."""
        raising, self.signals.raise_now = self.signals.raise_now, False  # a write is never cut in half
        try:
            item = self.items[i]
            if ok:
                result = self.write(item, value)
            else:
                result = ItemResult(item.song_id, str(item.path), "failed", _failure_reason(item, value))
            self.results[i] = result
            if result.status in self.n_bad:
                self.n_bad[result.status] += 1
                self.bar.set_postfix({k: n for k, n in self.n_bad.items() if n}, refresh=False)
            self.bar.update(1)
        finally:
            self.signals.raise_now = raising
        self.signals.check()


def _run_here(items: list, work, handle, time_limit, signals: _Signals):
    """Run every item's work in this process, one after the other (``jobs=1``)."""
    for i, item in enumerate(items):
        with signals.raising():
            out = _guarded(work, i, item, time_limit)
        signals.check()  # a signal seen by the work: its outcome is dropped, not recorded
        handle(*out)


def _run_joblib(items, work, handle, jobs, time_limit=None, signals=None):
    from joblib import Parallel, delayed
    from joblib.externals.loky.process_executor import BrokenProcessPool, TerminatedWorkerError

    signals = _Signals() if signals is None else signals
    parent = os.getpid()
    pending = set(range(len(items)))
    while pending:
        dispatched = []

        def tasks():
            # joblib pulls tasks lazily (pre_dispatch), so this records which were handed out
            for i in sorted(pending):
                dispatched.append(i)
                yield delayed(_guarded)(work, i, items[i], time_limit, parent)

        results, crashed = None, False
        try:
            # Parallel() dispatches its first tasks at once: a worker can die before it returns
            results = Parallel(n_jobs=jobs, return_as="generator_unordered", pre_dispatch="2*n_jobs")(tasks())
            while True:
                try:
                    with signals.raising():
                        i, ok, value = next(results)
                except StopIteration:
                    break
                pending.discard(i)
                handle(i, ok, value)
        except (TerminatedWorkerError, BrokenProcessPool):
            crashed = True
        finally:
            if results is not None:
                results.close()  # on an interruption: joblib ends its workers
        if crashed:
            # Only the items in flight can have killed the pool: run each alone.
            for i in [i for i in dispatched if i in pending]:
                pending.discard(i)
                with signals.raising():
                    out = _run_isolated(work, i, items[i], time_limit)
                handle(*out)


def _run_isolated(work, i, item, time_limit=None):
    """Run one item in a fresh single-worker process; a dead worker is this item's failure.

    A worker that died after the item's time limit was stuck past it (its
    watchdog ended it): the item timed out.
    """
    from joblib.externals.loky import ProcessPoolExecutor
    from joblib.externals.loky.process_executor import BrokenProcessPool, TerminatedWorkerError

    start = time.monotonic()
    ex = ProcessPoolExecutor(max_workers=1)
    try:
        return ex.submit(_guarded, work, i, item, time_limit, os.getpid()).result()
    except (TerminatedWorkerError, BrokenProcessPool) as e:
        if time_limit and time.monotonic() - start >= time_limit:
            return i, False, WorkFailure("TimeoutError", None, timed_out(time_limit))
        return i, False, WorkFailure(type(e).__name__, None, worker_died())
    finally:
        ex.shutdown(wait=False, kill_workers=True)


def check_scheduler(address: str | None, timeout_s: float = DASK_CONNECT_TIMEOUT_S) -> None:
    """Refuse (one line) a Dask scheduler address that does not answer within ``timeout_s``.

    Called before a run creates or locks anything, so an unreachable
    scheduler leaves no trace. Checks that a TCP connection to
    ``tcp://HOST:PORT`` (or ``HOST:PORT``) opens; ``None`` (a local cluster)
    and other protocols pass.

    Raises
    ------
    MapkitError
        Naming the address, the timeout and the reason.
    """
    import socket
    from urllib.parse import urlsplit

    if address is None:
        return
    text = str(address)
    parts = urlsplit(text if "://" in text else f"tcp://{text}")
    if parts.scheme not in ("tcp", ""):
        return
    try:
        host, port = parts.hostname, parts.port or 8786
    except ValueError as e:
        raise MapkitError(text, f"not a Dask scheduler address ({e}); e.g. tcp://10.0.0.5:8786") from None
    if not host:
        raise MapkitError(text, "not a Dask scheduler address; e.g. tcp://10.0.0.5:8786")
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or type(e).__name__)
        raise MapkitError(text, f"Dask scheduler unreachable within {timeout_s:g} s ({reason}); "
                                f"nothing was written. Start it, or check --scheduler") from None


class _ThreadDeadline:
    """The time limit of an item run in a thread that is not the main one (a Dask worker's).

    Past ``time_limit`` seconds it raises :class:`_ItemTimeout` in that thread
    (at its next Python bytecode: Python code and returning native calls stop);
    past the hard grace (as :class:`_Deadline`'s watchdog) it ends the worker
    process, for native code that never returns. ``fired`` tells afterwards
    whether the limit was reached.
    """

    def __init__(self, time_limit: float | None):
        self.time_limit, self.fired, self._lock, self._timers = time_limit, False, threading.Lock(), []
        self.active = False

    def _raise_in(self, thread_id: int):
        import ctypes

        with self._lock:
            if self.active:
                self.fired = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(_ItemTimeout))

    def _end_process(self):
        with self._lock:
            if self.active:
                os._exit(70)  # stuck in native code past the limit: the scheduler reports the worker's death

    def __enter__(self):
        if self.time_limit:
            self.active = True
            self._timers = [threading.Timer(self.time_limit, self._raise_in, (threading.get_ident(),)),
                            threading.Timer(_hard_limit_s(self.time_limit), self._end_process)]
            for t in self._timers:
                t.daemon = True
                t.start()
        return self

    def stop(self):
        """The work is over: no exception is raised in this thread from now on."""
        with self._lock:
            self.active = False
        for t in self._timers:
            t.cancel()

    def __exit__(self, *exc):
        self.stop()
        return False


def _guarded_in_thread(work, i, item, time_limit: float | None = None):
    """:func:`_guarded` for a Dask worker thread: the same outcomes, with :class:`_ThreadDeadline`."""
    deadline = _ThreadDeadline(time_limit)
    try:
        with deadline:
            try:
                out = _guarded(work, i, item)
            finally:
                # an exception the deadline raised inside stop() is still caught below, and __exit__
                # then stops it again (cancelling the process-ending timer)
                deadline.stop()
    except _ItemTimeout:
        out = None
    if deadline.fired:  # whatever the work made of the exception, the item ran out of time
        return i, False, WorkFailure("TimeoutError", None, timed_out(time_limit))
    return out


def _dask_failure(e: BaseException, time_limit: float | None) -> WorkFailure:
    """An item whose Dask task raised outside the guard: its workers died (KilledWorker) or another error."""
    reason = f"{type(e).__name__}: {e}"
    if type(e).__name__ == "KilledWorker":
        reason = worker_died(time_limit)
    return WorkFailure(type(e).__name__, None, reason)


def _run_dask(items, work, handle, jobs, scheduler, time_limit=None):
    import dask
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler is None:
        # a worker that dies (a crash, or ended past the time limit) fails its item at once, not after retries
        with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
            cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True, dashboard_address=None)
        scheduler = cluster
    try:
        try:
            client = Client(scheduler, timeout=DASK_CONNECT_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - refused, timed out, or not a Dask scheduler: one line, not a trace
            raise MapkitError(str(scheduler), f"cannot connect to the Dask scheduler within "
                                              f"{DASK_CONNECT_TIMEOUT_S:g} s ({type(e).__name__}: {e}); is "
                                              f"it a Dask scheduler?") from None
        with client:
            futures = {client.submit(_guarded_in_thread, work, i, item, time_limit, pure=False): i
                       for i, item in enumerate(items)}
            for future in as_completed(futures):
                i = futures.pop(future)
                if future.status == "error":  # e.g. KilledWorker: the item killed its workers
                    handle(i, False, _dask_failure(future.exception(), time_limit))
                else:
                    handle(*future.result())
                future.release()
    finally:
        if cluster is not None:
            cluster.close()


@dataclass
class RunReport:
    """The outcome of one batch run.

    ``items``: one :class:`ItemResult` per input; ``problems``: ``(path,
    reason)`` of store-level issues (an unreadable shard); ``ignored``:
    ``(path, reason)`` of input entries skipped on purpose (a symbolic link
    leading outside the input folder, a stray info file: see
    :func:`mapkit.preprocess.sources.discover`), which do not change the exit
    code; ``report_path``: the JSON report written to ``STORE/reports/``.
    """

    command: str
    items: list
    report_path: Path | None = None
    problems: list = field(default_factory=list)
    ignored: list = field(default_factory=list)
    #: Further lines of the summary (e.g. the UNK share of build-targets).
    notes: list = field(default_factory=list)

    @property
    def counts(self) -> dict:
        counts = {s: 0 for s in STATUSES}
        for r in self.items:
            counts[r.status] += 1
        return counts

    @property
    def exit_code(self) -> int:
        """0 when every item is ok or already present, 2 when some failed or were quarantined."""
        c = self.counts
        return 2 if (c["failed"] or c["quarantined"] or self.problems) else 0

    def summary(self, unit: str = "songs", max_reasons: int = 8, max_named: int = 3) -> str:
        """The counts, then why items failed or were quarantined, then :attr:`notes`.

        E.g.::

            extract: 10 songs: 8 written, 1 already present, 1 failed (see reports/...)
              failed ×1: no features (run mapkit extract first): song-a

        Reasons are grouped (numbers aside), most frequent first, at most
        ``max_reasons`` groups with the first ``max_named`` items of each.
        """
        c = self.counts
        parts = [f"{c['ok']} {STATUS_WORDS['ok']}"]
        parts += [f"{c[s]} {STATUS_WORDS[s]}" for s in STATUSES[1:] if c[s]]
        if self.problems:
            parts.append(plural(len(self.problems), "unreadable shards"))
        if self.ignored:
            parts.append(f"{len(self.ignored)} input entr{'ies' if len(self.ignored) != 1 else 'y'} ignored")
        line = f"{self.command}: {plural(len(self.items), unit)}: " + ", ".join(parts)
        if self.report_path is not None:
            line += f" (see {self.report_path})"
        return "\n".join([line, *reason_lines(self.items, max_reasons, max_named),
                          *(f"  {path}: {reason}" for path, reason in self.problems[:max_reasons]),
                          *self.notes])


_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def merged_reason(reasons: list[str]) -> str:
    """One line for reasons that differ only in their numbers: each number becomes the range it spans.

    >>> merged_reason(["offset +37 frames", "offset +5 frames", "offset +12 frames"])
    'offset +5–37 frames'
    >>> merged_reason(["covers 18 % of the song"])
    'covers 18 % of the song'
    """
    first = reasons[0]
    if all(r == first for r in reasons):
        return first
    slots = [[float(n) for n in _NUMBER.findall(r)] for r in reasons]
    texts = [_NUMBER.findall(r) for r in reasons]
    pieces = _NUMBER.split(first)
    out = [pieces[0]]
    for k in range(len(pieces) - 1):
        low = min(range(len(reasons)), key=lambda i: slots[i][k])
        high = max(range(len(reasons)), key=lambda i: slots[i][k])
        a, b = texts[low][k], texts[high][k]
        out.append(a if slots[low][k] == slots[high][k] else f"{a}–{b}")
        out.append(pieces[k + 1])
    return "".join(out)


def reason_lines(items, max_reasons: int = 8, max_named: int = 3) -> list[str]:
    """Lines ``  failed ×4: <reason>: a, b, c and 1 more`` for failed and quarantined items.

    Items whose reasons differ only in their numbers share a line, each number
    shown as the range the group spans (:func:`merged_reason`); groups are
    listed most frequent first.
    """
    groups: dict = {}
    for r in items:
        if r.status in ("failed", "quarantined"):
            groups.setdefault((r.status, _NUMBER.sub("#", r.reason)), []).append(r)
    ordered = sorted(groups.values(), key=lambda g: (-len(g), g[0].status, g[0].reason))
    lines = []
    for group in ordered[:max_reasons]:
        names = ", ".join(r.song_id for r in group[:max_named])
        more = f" and {len(group) - max_named} more" if len(group) > max_named else ""
        reason = merged_reason([r.reason for r in group])
        reason = reason if len(reason) <= 200 else reason[:197] + "..."
        lines.append(f"  {group[0].status} \u00d7{len(group)}: {reason}: {names}{more}")
    if len(ordered) > max_reasons:
        lines.append(f"  ... and {plural(len(ordered) - max_reasons, 'other reasons')} (see the report)")
    return lines


@contextmanager
def signals_stop_the_run():
    """Inside, SIGINT and SIGTERM raise RunInterrupted, before and after the per-item work too.

    (During the work, :func:`~mapkit.runs.runner.run_items` handles them
    itself, so that no write is cut in half.) The old handlers come back after.
    """
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def handler(signum, frame):
        raise RunInterrupted(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def write_interrupted_report(reports_dir, command: str, interrupted: RunInterrupted, settings=None,
                             ignored=(), extra: dict | None = None, results=None, detail: str = "") -> Path:
    """The report of a run a signal stopped: the items it handled, its note, ``"interrupted"`` and the exit code.

    ``results`` (default: ``interrupted.results``) are the items the report lists, and
    ``detail`` a second note (e.g. why handled items were not written). Also sets
    ``interrupted.report_path``, which the command's last line names.
    """
    notes = [interrupted.note()] + ([detail] if detail else [])
    items = interrupted.results if results is None else results
    report = RunReport(command, items, ignored=list(ignored), notes=notes)
    interrupted.report_path = write_report(reports_dir, report, settings, extra={
        **(extra or {}), "interrupted": interrupted.signum, "exit_code": interrupted.exit_code})
    return interrupted.report_path


def write_report(reports_dir, report: RunReport, settings=None, extra: dict | None = None) -> Path:
    """Write ``report`` as ``<reports_dir>/<command>-<UTC timestamp>-<pid>.json`` (atomically).

    A second report of the same second and process gets ``-2``, ``-3``... before ``.json``.

    Sets and returns ``report.report_path``. The JSON holds the command,
    mapkit and schema versions, the settings and their hash, the counts, the
    exit code, the problems, the summary's notes, every item and ``extra`` (e.g.
    input folder, store; its keys win).
    """
    from mapkit.datasets.store import utc_timestamp, write_json_atomic

    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{report.command}-{utc_timestamp()}-{os.getpid()}"
    path = reports_dir / f"{stem}.json"
    n = 1
    while path.exists():  # a second run within one second in one process (library use)
        n += 1
        path = reports_dir / f"{stem}-{n}.json"
    obj = {
        "command": report.command,
        "mapkit_version": mapkit.__version__,
        "schema_version": mapkit.SCHEMA_VERSION,
        "finished": utc_timestamp(),
        "settings": None if settings is None else settings.to_dict(),
        "settings_hash": None if settings is None else settings.hash,
        "counts": report.counts,
        "exit_code": report.exit_code,
        "problems": [{"path": p, "reason": r} for p, r in report.problems],
        "ignored": [{"path": p, "reason": r} for p, r in report.ignored],
        "notes": list(report.notes),
        "items": [asdict(r) for r in report.items],
    }
    obj.update(extra or {})  # e.g. the input and store; an interrupted run's signal and exit code
    report.report_path = path
    write_json_atomic(path, obj)
    return path
