"""Benchmark of the training input pipeline and of one training step (not a unit test).

Prints, on the same songs:

(a) stage-1 windows per second from the store with
    :class:`mapkit.datasets.torch_datasets.PlacementDataset` (random items:
    one HDF5 read of ``L + 14`` rows, one small ``frame_class`` read,
    normalisation), in this process and through a DataLoader with workers;
(b) the DeepSaber way on the same data: per item ``np.load`` of the song's
    whole feature array from a ``.npy`` file, then 10 random windows sliced
    from it (DeepSaber's ``num_windows``), normalised the same way;
(c) the CPU time of one training step (forward, backward, AdamW) of both
    default models: the C-LSTM on a batch of 32 windows of 100 frames, the
    transformer (d_model 512, 6+6 layers, 8 heads, 2004 tokens) on 16 levels
    of 256 tokens;

and (``--memory``) the peak RSS of one default transformer step in a fresh
process, with and without recomputing the layers' activations
(``mapkit train --recompute``, the default), for 16 levels of 256 and of
1024 tokens (the default crop);

so the loader can be compared with the step it feeds: the loader is not the
bottleneck when (a) delivers a batch faster than (c) consumes it.

Rates are windows per CPU second (of this process and of the DataLoader's
worker processes, counted when they exit: each DataLoader run is one full
pass over a fixed number of windows, worker start-up included), one thread
per process, steps the fastest of their repeats in CPU seconds
(bench/cputime.py); wall rates are printed beside.

Songs: ``--store`` (a real store), else a synthetic store in the public
layout (``--songs`` songs of ``--minutes`` minutes of random float16 features
and random targets, written with the store's own ShardWriter), so the I/O is
that of real shards of that size.

    python bench/loader.py                   # synthetic store: 20 songs x 3 minutes
    python bench/loader.py --store mapkit-data --seconds 20
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cputime import cpu_seconds, machine_note, measure, torch_one_thread  # noqa: E402  (before numpy)

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mapkit.datasets.store import (ShardItem, ShardWriter, Store, shard_file_attrs,  # noqa: E402
                                   write_json_atomic)
from mapkit.settings import FeatureSettings, TargetSettings  # noqa: E402

L = 100
CONTEXT = 7


def synthetic_store(root, n_songs: int, minutes: float, seed: int = 0) -> Store:
    """A store in the public layout with random features, Expert targets and matching stats.json."""
    rng = np.random.default_rng(seed)
    store = Store(root)
    store.create()
    fs = FeatureSettings()
    T = int(minutes * 60 * 100)
    with ShardWriter(store.features_dir, shard_file_attrs("features", fs), max_items=16) as fw, \
            ShardWriter(store.targets_dir, shard_file_attrs("targets", TargetSettings()), max_items=64) as tw:
        for i in range(n_songs):
            song = f"song-{i:04d}"
            placement = rng.normal(-8, 4, size=(T + 2 * CONTEXT, 3, 80)).astype(np.float16)
            selection = rng.normal(-8, 4, size=(T + 2, 100)).astype(np.float16)
            fw.write(ShardItem(f"songs/{song}", {"placement": placement, "selection": selection},
                               attrs={"n_frames": T}))
            classes = (rng.random(T) < 0.05).astype(np.uint8)
            tw.write(ShardItem(f"levels/{song}", {"Standard/Expert/frame_class": classes}))
    stats = {"settings_hash": fs.hash, "n_songs": n_songs,
             "placement": {"mean": np.full((3, 80), -8.0).tolist(), "std": np.full((3, 80), 4.0).tolist()},
             "selection": {"mean": np.full(100, -8.0).tolist(), "std": np.full(100, 4.0).tolist()}}
    write_json_atomic(store.stats_path, stats)
    return store


def bench_store(ds, seconds: float, seed: int = 0) -> tuple[float, float]:
    """Random items of ``ds`` for about ``seconds`` of CPU time; (windows per CPU second, per wall second)."""
    rng = np.random.default_rng(seed)
    n, start, wall = 0, cpu_seconds(), time.perf_counter()
    while cpu_seconds() - start < seconds:
        for i in rng.integers(0, len(ds), 64):
            ds[int(i)]
        n += 64
    return n / (cpu_seconds() - start), n / (time.perf_counter() - wall)


def bench_loader(ds, windows: int, workers: int, batch_size: int = 32) -> tuple[float, float]:
    """One shuffled DataLoader pass over ``windows`` random windows with ``workers`` processes.

    Returns (windows per CPU second of this process and the workers, windows per wall second).
    The workers exit at the end of the pass (not persistent), so their CPU time is in RUSAGE_CHILDREN.
    """
    import torch

    subset = torch.utils.data.Subset(ds, np.random.default_rng(1).integers(0, len(ds), windows).tolist())
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         persistent_workers=False)
    n, start, wall = 0, cpu_seconds(), time.perf_counter()
    for batch in loader:
        n += len(batch["features"])
    del loader  # workers joined
    return n / (cpu_seconds() - start), n / (time.perf_counter() - wall)


def bench_deepsaber(npy_paths, mean, std, seconds: float, windows_per_load: int = 10,
                    seed: int = 0) -> tuple[float, float]:
    """DeepSaber's access: load a song's whole .npy per item, slice ``windows_per_load`` windows.

    Returns (windows per CPU second, per wall second).
    """
    rng = np.random.default_rng(seed)
    n, start, wall = 0, cpu_seconds(), time.perf_counter()
    while cpu_seconds() - start < seconds:
        x = np.load(npy_paths[int(rng.integers(len(npy_paths)))])
        for s in rng.integers(0, len(x) - (L + 2 * CONTEXT) + 1, windows_per_load):
            (x[s: s + L + 2 * CONTEXT].astype(np.float32) - mean) / std
            n += 1
    return n / (cpu_seconds() - start), n / (time.perf_counter() - wall)


def step_time(model, make_batch, loss_fn, repeat: int = 5) -> float:
    """Fastest CPU seconds of forward + backward + AdamW step over ``repeat`` (after one warm-up step)."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step():
        loss = loss_fn(model, make_batch())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    return measure(step, repeat=repeat)[0].cpu


STEP_MEMORY_CHILD = """
import sys, time
import torch
torch.set_num_threads(1)
from mapkit.train.loop import recompute_layers
from mapkit.train.models import SELECTION_PRESETS, SelectionModel, selection_loss

def hwm():  # peak RSS of this process in MiB
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024

B, T, recompute = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
torch.manual_seed(0)
model = SelectionModel(SELECTION_PRESETS["default"]).train()
if recompute:
    recompute_layers(model)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
V = model.config.vocab_size
src, tokens = torch.randn(B, T, SELECTION_PRESETS["default"].src_dim).abs(), torch.randint(4, V, (B, T))
mask = torch.ones(B, T, dtype=torch.bool)
base, t = hwm(), time.process_time()
loss = selection_loss(model(src, mask, tokens[:, :-1], mask[:, :-1]), tokens[:, 1:])
loss.backward()
opt.step()
print(base, hwm(), time.process_time() - t)
"""


def step_memory(batch: int, tokens: int, recompute: bool) -> tuple[float, float, float]:
    """(MiB after building the model, peak MiB of one default transformer step, its CPU seconds), fresh process."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", STEP_MEMORY_CHILD, str(batch), str(tokens), str(int(recompute))],
                         capture_output=True, text=True, check=True)
    base, peak, cpu = map(float, out.stdout.split())
    return base, peak, cpu


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", help="a real store (default: a synthetic one)")
    ap.add_argument("--songs", type=int, default=20)
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--seconds", type=float, default=10.0, help="CPU seconds per in-process loader measurement")
    ap.add_argument("--windows", type=int, default=4096, help="windows per DataLoader pass (default 4096)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-steps", action="store_true", help="skip the model step times")
    ap.add_argument("--memory", action="store_true", help="also the peak RSS of default transformer steps "
                                                          "(needs about 6 GB free)")
    args = ap.parse_args(argv)

    import torch

    torch_one_thread()

    from mapkit.datasets.torch_datasets import PlacementDataset
    from mapkit.train.models import (PLACEMENT_PRESETS, SELECTION_PRESETS, PlacementModel, SelectionModel,
                                     onset_loss, selection_loss)

    with tempfile.TemporaryDirectory() as tmp:
        if args.store:
            store = Store(args.store)
        else:
            t = time.perf_counter()
            store = synthetic_store(os.path.join(tmp, "store"), args.songs, args.minutes)
            print(f"synthetic store: {args.songs} songs x {args.minutes:g} min in {time.perf_counter() - t:.1f} s")
        ds = PlacementDataset(store)
        print(f"{len(ds.levels)} levels, {len(ds)} windows of {L} frames per epoch; torch threads "
              f"{torch.get_num_threads()}; {machine_note()}")

        store_rate, store_wall = bench_store(ds, args.seconds)
        print(f"(a) store, 1 process:           {store_rate:9.0f} windows per CPU s (wall: {store_wall:.0f}/s)")
        loader_rate, loader_wall = bench_loader(PlacementDataset(store), args.windows, args.workers)
        print(f"(a) store, DataLoader {args.workers} workers: {loader_rate:9.0f} windows per CPU s, all processes "
              f"(wall: {loader_wall:.0f}/s)")

        npy_dir = os.path.join(tmp, "npy")
        os.makedirs(npy_dir)
        paths = []
        for li, level in enumerate(ds.levels):  # each song's placement features, as DeepSaber kept them
            p = os.path.join(npy_dir, f"{li}.npy")
            np.save(p, ds._handles.get(level.feature_shard, True)[level.feature_group]["placement"][:])
            paths.append(p)
        ds.close()
        ds_rate, ds_wall = bench_deepsaber(paths, ds.mean, ds.std, args.seconds)
        print(f"(b) DeepSaber whole .npy + 10:  {ds_rate:9.0f} windows per CPU s (wall: {ds_wall:.0f}/s)   "
              f"(store/DeepSaber: {store_rate / ds_rate:.1f}x)")

    if args.no_steps:
        return
    torch.manual_seed(0)
    pm = PlacementModel(PLACEMENT_PRESETS["default"])
    p_step = step_time(pm, lambda: (torch.randn(32, L + 2 * CONTEXT, 3, 80), torch.randint(0, 5, (32,)),
                                    (torch.rand(32, L) < 0.05).long(), torch.randn(32, L, pm.config.beat_inputs)),
                       lambda m, b: onset_loss(m(b[0], b[1], beat=b[3] if m.config.beat_inputs else None), b[2], 20.0))
    sm = SelectionModel(SELECTION_PRESETS["default"])
    V = SELECTION_PRESETS["default"].vocab_size
    s_step = step_time(sm, lambda: (torch.randn(16, 256, sm.config.src_dim).abs(), torch.randint(4, V, (16, 256))),
                       lambda m, b: selection_loss(m(b[0], None, b[1][:, :-1]), b[1][:, 1:]), repeat=3)
    print(f"(c) CPU step, C-LSTM default, 32 x {L} frames:      {p_step * 1000:8.0f} CPU ms  "
          f"(needs {32 / p_step:6.0f} windows per CPU s)")
    print(f"(c) CPU step, transformer default, 16 x 256 tokens: {s_step * 1000:8.0f} CPU ms")
    print(f"loader headroom over the C-LSTM step: {store_rate / (32 / p_step):.0f}x in one process")
    if args.memory:
        # 16 x 1024 without recomputing needs well over 20 GB: not run
        for batch, tokens, recompute in ((16, 256, False), (16, 256, True), (16, 1024, True)):
            base, peak, cpu = step_memory(batch, tokens, recompute)
            print(f"(d) transformer default step, {batch} x {tokens} tokens, recompute {'on ' if recompute else 'off'}: "
                  f"peak RSS {peak / 1024:5.2f} GiB ({base / 1024:.2f} GiB with the model built), "
                  f"{cpu:.1f} CPU s")


if __name__ == "__main__":
    main()
