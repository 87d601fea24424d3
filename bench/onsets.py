"""Stage-1 reference figures: onset F1 per difficulty at +-20 and +-50 ms, next to a tuned spectral-flux baseline.

For a ``mapkit train ddc`` checkpoint and the store it was trained on,
predicts every level of the held-out songs (default: the checkpoint's
validation songs), picks peaks as ``mapkit generate`` does and matches them
one to one with the human notes (:func:`mapkit.train.reference.stage1_report`).
The baseline (librosa's spectral flux of the audio, per-song scaled) gets a
threshold and a shift tuned per difficulty on the training songs; with
``--thresholds train`` so does the model (its thresholds, not the ones its run
validated on the held-out songs). Two tables: against the human notes as
mapped, and against them moved onto the audio by each level's audit lag.

    python bench/onsets.py --store mapkit-data --checkpoint mapkit-runs/ddc/best.pt
    python bench/onsets.py --store mapkit-data --checkpoint best.pt --songs song-a song-b --json
    python bench/onsets.py --store mapkit-data --checkpoint best.pt --thresholds train

Exit codes: 0 ok, 1 could not proceed (unreadable checkpoint, no level in the songs).
"""

from __future__ import annotations

import argparse
import json
import sys

from mapkit.errors import MapkitError
from mapkit.train.reference import stage1_report


def print_table(report: dict, suffix: str, tolerances, baseline: bool):
    cols = [f"F1 ±{10 * t} ms" for t in tolerances]
    print(f"{'':10s} {'levels':>6s} " + " ".join(f"{'model ' + c:>16s}" for c in cols)
          + ("" if not baseline else " " + " ".join(f"{'flux ' + c:>15s}" for c in cols)))
    for name, row in report["model" + suffix].items():
        line = f"{name:10s} {row['levels']:6d} " + " ".join(f"{row[f'f1@{t}']:16.3f}" for t in tolerances)
        if baseline:
            base = report["baseline" + suffix][name]
            line += " " + " ".join(f"{base[f'f1@{t}']:15.3f}" for t in tolerances)
        print(line)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="the store the checkpoint was trained on")
    parser.add_argument("--checkpoint", required=True, help="best.pt or last.pt of mapkit train ddc")
    parser.add_argument("--songs", nargs="+", help="held-out song ids (default: the checkpoint's validation songs)")
    parser.add_argument("--tolerances", nargs="+", type=int, default=[2, 5],
                        help="matching tolerances in frames of 10 ms (default: 2 5)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the spectral-flux baseline")
    parser.add_argument("--thresholds", choices=["checkpoint", "train"], default="checkpoint",
                        help="the model's peak thresholds: as its run validated them (default) or tuned on the "
                             "training songs")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1...")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    try:
        report = stage1_report(args.store, args.checkpoint, args.songs, tolerances=tuple(args.tolerances),
                               device=args.device, baseline=not args.no_baseline, thresholds=args.thresholds)
    except (MapkitError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return 0
    for suffix, title in (("", "notes as mapped"), ("_realigned", "notes moved onto the audio by the audit lag")):
        print(f"# {title}")
        print_table(report, suffix, args.tolerances, not args.no_baseline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
