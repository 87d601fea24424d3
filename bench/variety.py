"""Stage-2 sampling settings per difficulty against the human variety band (not a unit test).

For each song and difficulty the features, tempo, stage 1, the density-moved
threshold and the note times are computed once, as ``mapkit generate`` does;
then stage 2 samples the same note times with every ``--top-p`` (and
``--temperatures``) for every ``--seeds`` seed, with the flow constraint, and
each level's variety (distinct states, state entropy, top-state share) and
flow errors (parity errors per swing, vision blocks, collisions) are placed
among the human levels of the baseline. Prints, per difficulty and setting,
how many draws lie inside the human 5-95 % band for all three variety metrics
(and for each), and the median percentile of each: the table
``mapkit.runs.generate.SAMPLING_BY_DIFFICULTY`` was chosen from this output
on held-out songs other than those of bench/generated_levels.py's reference.

    python bench/variety.py --placement ddc/best.pt --selection tr/best.pt --objects priors.json \\
        --baseline human.json --top-p 0.7 0.8 0.85 0.9 --seeds 3 SONG_DIR...
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cputime import torch_one_thread  # noqa: E402

import numpy as np  # noqa: E402

VARIETY = ("distinct_states", "state_entropy_bits", "top_state_share")
ERRORS = ("parity_error_share", "vision_blocks", "collisions")


def note_times(song, p_model, s_model, p_ckpt, s_ckpt, priors, difficulties):
    """``(s_setup, feats, tempo, {difficulty: (frames, beats)})`` of ``song`` as generate computes them."""
    from mapkit.preprocess.density import threshold_for_density
    from mapkit.preprocess.features import song_features
    from mapkit.runs import generate as g

    p_setup, s_setup, thresholds = g._checked_setups(song, difficulties, p_ckpt, s_ckpt, s_model, None)
    feats = song_features(g._song_source(song), p_setup.feature_settings)
    tempo, *_ = g._song_tempo(g._song_source(song), feats, p_setup.feature_settings, "v3")
    out = {}
    for d in difficulties:
        probs = g._note_probabilities(p_model, p_setup, feats.placement, d)
        th, band = thresholds[d], g._band(priors, d, "note_density")
        if band is not None:
            th = threshold_for_density(probs, th, band, feats.duration_s, p_setup.min_gap_frames, p_setup.smoothing)
        frames, beats, _ = g._note_beats(probs, th, p_setup, tempo, feats.duration_s, True)
        out[d] = (frames, beats)
    return s_setup, feats, tempo, out


def in_band(key: str, percentile) -> bool:
    if percentile is None or percentile != percentile:
        return False
    return percentile <= 95 if key in ERRORS else 5 <= percentile <= 95


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("songs", nargs="+")
    ap.add_argument("--placement", required=True)
    ap.add_argument("--selection", required=True)
    ap.add_argument("--objects", required=True, help="Object model (its note-density bands move the threshold).")
    ap.add_argument("--baseline", required=True)
    ap.add_argument("--top-p", type=float, nargs="+", default=[0.7, 0.75, 0.8, 0.85, 0.9])
    ap.add_argument("--temperatures", type=float, nargs="+", default=[1.0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--difficulties", nargs="+", default=None)
    args = ap.parse_args(argv)
    torch_one_thread()

    from mapkit.preprocess.difficulties import DIFFICULTIES
    from mapkit.preprocess.quality import level_metrics
    from mapkit.runs import generate as g
    from mapkit.runs.evaluate import load_baseline
    from mapkit.train.flow import FlowSettings
    from mapkit.train.loop import load_checkpoint
    from mapkit.train.objects import load_object_priors

    baseline = load_baseline(args.baseline)
    priors = load_object_priors(args.objects)
    p_model, p_ckpt = load_checkpoint(args.placement, "cpu")
    s_model, s_ckpt = load_checkpoint(args.selection, "cpu")
    difficulties = args.difficulties or list(DIFFICULTIES)
    results = defaultdict(list)  # (difficulty, T, top_p) -> [{metric: (value, percentile)}]
    for song in args.songs:
        s_setup, feats, tempo, times = note_times(song, p_model, s_model, p_ckpt, s_ckpt, priors, difficulties)
        for d in difficulties:
            frames, beats = times[d]
            for t in args.temperatures:
                for p in args.top_p:
                    for seed in range(args.seeds):
                        notes, _, _ = g._note_states(s_model, s_setup, feats, frames, beats, tempo, temperature=t,
                                                     seed=seed, top_p=p, difficulty=d, flow=FlowSettings())
                        values = dict(level_metrics(notes, d, feats.duration_s).values)
                        ranks = baseline.ranks(d, values)
                        results[(d, t, p)].append({k: (values.get(k), ranks.get(k)) for k in VARIETY + ERRORS})
                        print(f"  {os.path.basename(song)[-30:]} | {d} | T {t:g} | top-p {p:g} | seed {seed} | " +
                              " | ".join(f"{k} {values.get(k, float('nan')):.3g} ({ranks.get(k, float('nan')):.0f})"
                                         for k in VARIETY), flush=True)
        print(f"done {os.path.basename(song)[-40:]}", flush=True)
    print("\n| difficulty | T | top-p | draws | all 3 in band | distinct | entropy | top share | errors in band | "
          "median distinct (pct) | median entropy (pct) | median top share (pct) |")
    print("|---" * 12 + "|")
    for (d, t, p), rows in sorted(results.items(), key=lambda kv: (DIFFICULTIES.index(kv[0][0]), kv[0][1:])):
        ok = {k: sum(in_band(k, r[k][1]) for r in rows) for k in VARIETY + ERRORS}
        both = sum(all(in_band(k, r[k][1]) for k in VARIETY) for r in rows)
        errors = sum(all(in_band(k, r[k][1]) for k in ERRORS) for r in rows)
        med = {k: (np.nanmedian([r[k][0] for r in rows]), np.nanmedian([r[k][1] for r in rows])) for k in VARIETY}
        print(f"| {d} | {t:g} | {p:g} | {len(rows)} | {both} | {ok['distinct_states']} | "
              f"{ok['state_entropy_bits']} | {ok['top_state_share']} | {errors} | " +
              " | ".join(f"{v:.2f} ({q:.0f})" for v, q in med.values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
