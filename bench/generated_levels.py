"""Generated levels against human ones (not a unit test): every difficulty of held-out songs, judged by evaluate.

For each song, ``mapkit generate --difficulty all`` with trained checkpoints
and the object model, then ``mapkit evaluate`` of the written levels (and of
the songs' own human levels, when the song is a level folder) against a human
baseline (``mapkit evaluate --store S --save-baseline B``). Prints, per
generated difficulty, the issue's judged metrics with each value's human
percentile (``*``: outside the 5-95 % band), how many levels lie inside the
band per metric, and the CPU seconds of each song's generation (one thread).
Stage 2 samples with generate's per-difficulty default
(``SAMPLING_BY_DIFFICULTY``) unless ``--top-p`` / ``--temperature`` set one
value for every difficulty (``--top-p 0.85``: the decoding before the table).

    python bench/generated_levels.py --placement ddc/best.pt --selection tr/best.pt \\
        --objects priors.json --baseline human.json SONG_DIR_1 SONG_DIR_2 SONG_DIR_3

Per song it also prints the share of each difficulty's notes on the quarter
beats of the written tempo map (``--no-align-grid``: generate without the
lead-in that puts the map's whole beats on the music's, to compare).

Error counts (parity errors, vision blocks, collisions) are one-sided: a
level with fewer than the human 5th percentile is better, not worse, so
"in band" counts them at or below the 95th percentile.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cputime import machine_note, run_once, torch_one_thread  # noqa: E402

#: (metric, column title, one-sided: only too many is bad)
METRICS = (("nps_mean", "notes/s", False), ("parity_error_share", "parity err", True),
           ("vision_blocks", "vision", True), ("collisions", "collisions", True),
           ("distinct_states", "distinct", False), ("state_entropy_bits", "entropy", False),
           ("top_state_share", "top share", False), ("walls_per_min", "walls/min", False),
           ("arcs_per_min", "arcs/min", False), ("chains_per_min", "chains/min", False),
           ("lights_per_min", "lights/min", False))


def in_band(percentile: float, one_sided: bool) -> bool:
    return percentile <= 95 if one_sided else 5 <= percentile <= 95


def cell(value, percentile, one_sided: bool) -> str:
    if value is None or value != value:
        return "–"
    text = f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
    if percentile is None:
        return text
    return f"{text} ({percentile:.0f}){'' if in_band(percentile, one_sided) else '*'}"


def wall_note(objects: dict) -> str:
    """``"N walls, shortest D beats"`` of one generated difficulty's objects."""
    walls = objects.get("obstacles")
    if walls is None or not len(walls):
        return "no walls"
    return f"{len(walls)} walls, shortest {float(walls['duration_beats'].min()):.3g} beats"


def on_quarter_beats(notes) -> float:
    """Share of notes on a quarter beat of their map (within 1/1000 beat)."""
    beats = notes["beat"] * 4
    return float((abs(beats - beats.round()) < 4e-3).mean()) if len(notes) else float("nan")


def table(report, counts: Counter, totals: Counter) -> list:
    """Markdown rows of an evaluate report; counts levels in band per metric into ``counts``/``totals``."""
    rows = []
    for item in report.items:
        v, p = item.metrics.values, item.percentiles or {}
        for key, _, one_sided in METRICS:
            if p.get(key) is not None and v.get(key) == v.get(key):
                totals[key] += 1
                counts[key] += in_band(p[key], one_sided)
        name = item.song_id.removesuffix("-mapkit").rsplit("_", 1)[-1][:40]
        rows.append(f"| {name} | {item.difficulty} | " +
                    " | ".join(cell(v.get(k), p.get(k), s) for k, _, s in METRICS) + " |")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("songs", nargs="+", help="Held-out songs (level folders, zips or audio files).")
    ap.add_argument("--placement", required=True, help="Stage-1 checkpoint (trained with --targets events).")
    ap.add_argument("--selection", required=True, help="Stage-2 checkpoint.")
    ap.add_argument("--objects", required=True, help="Object model (mapkit train objects).")
    ap.add_argument("--baseline", required=True, help="Human baseline (mapkit evaluate --save-baseline).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=None, help="One top-p for every difficulty (default: generate's "
                                                                "per-difficulty table).")
    ap.add_argument("--temperature", type=float, default=None, help="One temperature for every difficulty.")
    ap.add_argument("--no-align-grid", action="store_true", help="Beat 0 of the tempo map at 0 s, no lead-in.")
    args = ap.parse_args(argv)
    torch_one_thread()

    from mapkit.runs.evaluate import evaluate_generated, evaluate_levels, load_baseline
    from mapkit.runs.generate import generate

    baseline = load_baseline(args.baseline)
    sampling = {k: v for k, v in (("top_p", args.top_p), ("temperature", args.temperature)) if v is not None}
    head = "| song | difficulty | " + " | ".join(t for _, t, _ in METRICS) + " |"
    rule = "|---" * (len(METRICS) + 2) + "|"
    generated, human = [head, rule], [head, rule]
    counts, totals, h_counts, h_totals = Counter(), Counter(), Counter(), Counter()
    print(f"# generated levels against the human baseline {args.baseline}; {machine_note()}")
    with tempfile.TemporaryDirectory() as tmp:
        for song in args.songs:
            cpu, wall, level = run_once(generate, song, placement=args.placement, selection=args.selection,
                                        objects=args.objects, difficulty="all", out_dir=tmp, seed=args.seed,
                                        threads=1, align_grid=not args.no_align_grid, **sampling)
            print(f"{os.path.basename(str(song))[-40:]}: {len(level.charts)} difficulties, {level.tempo.describe()}, "
                  f"{cpu:.1f} CPU s (wall {wall:.1f} s); " +
                  ", ".join(f"{k} {v:.2f}" for k, v in level.timings.items()), flush=True)
            print("  " + "; ".join(f"{c.difficulty}: {c.decoding}, {wall_note(c.objects)}" for c in level.charts))
            print("  notes on quarter beats: " + ", ".join(f"{c.difficulty} {on_quarter_beats(c.notes):.0%}"
                                                         for c in level.charts))
            generated += table(evaluate_generated(level, baseline, args.baseline), counts, totals)
            if os.path.isdir(song):
                human += table(evaluate_levels([song], baseline=baseline, audio=True), h_counts, h_totals)
    for title, rows, c, t in (("generated", generated, counts, totals), ("human (same songs)", human, h_counts,
                                                                           h_totals)):
        print(f"\n## {title}: value (human percentile), * outside the band\n")
        print("\n".join(rows))
        print("\nin band: " + ", ".join(f"{name} {c[k]}/{t[k]}" for k, name, _ in METRICS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
