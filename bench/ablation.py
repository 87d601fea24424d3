"""Does a trained stage-2 model listen? Its validation figures with real, zeroed, shuffled and other-song audio.

For a ``mapkit train transformer`` checkpoint and the store it was trained
on, evaluates the model on its validation songs (or ``--songs``) once with
the real source vectors and once per ablation (:mod:`mapkit.train.ablation`:
the mel part replaced by zeros, by the level's own rows shuffled, or by
another song's rows; or the gaps shuffled and the audio kept). A model
conditioned on the music loses clearly under the audio ablations; one that
ignores it (issue 15) does not. Below the table: unigram and bigram models
of the training songs' tokens, scored on the same validation tokens
(:func:`mapkit.train.reference.ngram_baselines`).

    python bench/ablation.py --store mapkit-data --checkpoint mapkit-runs/transformer/best.pt
    python bench/ablation.py --store mapkit-data --checkpoint best.pt --songs song-a song-b --json

Exit codes: 0 ok, 1 could not proceed (unreadable checkpoint, another store).
"""

from __future__ import annotations

import argparse
import json
import sys

from mapkit.errors import MapkitError
from mapkit.train.ablation import ABLATIONS, checkpoint_ablation
from mapkit.train.reference import stage2_baselines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="the store the checkpoint was trained on")
    parser.add_argument("--checkpoint", required=True, help="best.pt or last.pt of mapkit train transformer")
    parser.add_argument("--songs", nargs="+", help="song ids to evaluate on (default: the checkpoint's validation "
                                                   "songs)")
    parser.add_argument("--modes", nargs="+", default=list(ABLATIONS), choices=ABLATIONS,
                        help=f"ablations to run (default: {' '.join(ABLATIONS)})")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1...")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    try:
        result = checkpoint_ablation(args.store, args.checkpoint, args.songs, args.modes, args.device)
        baselines = stage2_baselines(args.store, args.checkpoint, args.songs)
    except (MapkitError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"ablation": result, "baselines": baselines}, indent=2, sort_keys=True))
        return 0
    real = result["real"]
    print(f"{'audio':8s} {'loss':>8s} {'Δloss':>8s} {'perplexity':>11s} {'accuracy':>9s} {'tokens':>8s}")
    for mode, m in result.items():
        print(f"{mode:8s} {m['loss']:8.4f} {m['loss'] - real['loss']:+8.4f} {m['perplexity']:11.3f} "
              f"{m['accuracy']:9.4f} {m['tokens']:8d}")
    for name in ("unigram", "bigram"):
        m = baselines[name]
        print(f"{name:8s} {'':8s} {'':8s} {m['perplexity']:11.3f} {m['accuracy']:9.4f} {baselines['tokens']:8d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
