"""Stage-1 peak picking: validation F1 of a checkpoint for several smoothing widths and minimum gaps.

Predicts the checkpoint's validation levels once, then for every
``(smoothing, min_gap)`` pair tunes the threshold of each difficulty on those
levels (as ``mapkit train ddc`` does) and prints the F1 at +-20 ms, micro-averaged
over all levels and per difficulty. The pair that ``mapkit train ddc`` should use is
the best one here; the training's own validation uses the DDCConfig values.

    python bench/stage1_peaks.py --store data --checkpoint runs/ddc/best.pt
    python bench/stage1_peaks.py --store data --checkpoint best.pt --smoothing 0 3 5 --min-gap 1 3 5 --json
    python bench/stage1_peaks.py --store data --checkpoint best.pt --smoothing 5 --min-gap 5 --window 400 --margin 50

Exit codes: 0 ok, 1 could not proceed.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def validation_probabilities(store, checkpoint, window=None, margin=0):
    """``(probs, truths, difficulty names)`` of the checkpoint's validation levels.

    ``window`` (default: the checkpoint's) and ``margin`` are those of
    :func:`~mapkit.train.ddc.predict_probabilities`.
    """
    from mapkit.datasets.torch_datasets import PlacementDataset
    from mapkit.preprocess.difficulties import DIFFICULTIES
    from mapkit.train.checkpoints import PlacementSetup
    from mapkit.train.ddc import predict_probabilities, song_beat
    from mapkit.train.loop import load_checkpoint

    model, ckpt = load_checkpoint(checkpoint, "cpu")
    setup = PlacementSetup.from_checkpoint(ckpt, checkpoint)
    ds = PlacementDataset(store, ckpt["val_songs"], stats=ckpt["stats"], window=setup.window, jitter=False,
                          feature_settings=setup.feature_settings)
    probs, truths, names = [], [], []
    for li, level in enumerate(ds.levels):
        raw = ds._handles.get(level.feature_shard, features=True)[level.feature_group]["placement"][:]
        probs.append(predict_probabilities(model, raw, level.difficulty_index, ds.mean, ds.std,
                                           float(ds.silence), window or setup.window, margin=margin,
                                           beat=song_beat(model, raw, setup.feature_settings)))
        truths.append(np.flatnonzero(ds.level_classes(li) > 0))
        names.append(DIFFICULTIES[level.difficulty_index])
    ds.close()
    return probs, truths, names


def grid(probs, truths, names, smoothings, gaps, tolerance=2) -> list[dict]:
    """F1 (overall and per difficulty, thresholds tuned per difficulty) of every (smoothing, min_gap)."""
    from mapkit.preprocess.peaks import best_thresholds_by_group, f1_from_counts, onset_counts, pick_peaks

    rows = []
    for s in smoothings:
        for g in gaps:
            kw = dict(min_gap_frames=g, smoothing=s, tolerance_frames=tolerance)
            ths = {d: t for d, (t, _) in best_thresholds_by_group(probs, truths, names, **kw).items()}
            totals, per = np.zeros(3, dtype=np.int64), {}
            for p, t, d in zip(probs, truths, names):
                counts = np.asarray(onset_counts(pick_peaks(p, ths[d], g, s), t, tolerance))
                totals += counts
                per[d] = per.get(d, 0) + counts
            rows.append({"smoothing": s, "min_gap": g, "f1": round(f1_from_counts(*totals)[2], 4),
                         **{d: round(f1_from_counts(*c)[2], 4) for d, c in per.items()}})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--smoothing", nargs="+", type=int, default=[0, 3, 5, 7], help="default 0 3 5 7")
    parser.add_argument("--min-gap", nargs="+", type=int, default=[1, 3, 5, 7, 10], help="default 1 3 5 7 10")
    parser.add_argument("--window", type=int, help="prediction window in frames (default: the checkpoint's)")
    parser.add_argument("--margin", type=int, default=0, help="overlap margin of the prediction windows (default 0)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        found = validation_probabilities(args.store, args.checkpoint, args.window, args.margin)
        rows = grid(*found, args.smoothing, args.min_gap)
    except (OSError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for row in sorted(rows, key=lambda r: -r["f1"]):
        print(json.dumps(row) if args.json else "  ".join(f"{k}={v}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
