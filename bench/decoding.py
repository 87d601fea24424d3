"""Stage-2 decoding settings compared on real songs (not a unit test): variety, flow and CPU cost per note.

For each song (a level folder with a human map of ``--difficulty``), the
audio features, stage 1 and the peaks are computed once, as ``mapkit
generate`` does; then stage 2 decodes the same note times with every
setting (beam search, greedy, sampling at several temperatures / top-p, with
and without the flow constraint of mapkit/train/flow.py), and each level is
measured with ``mapkit evaluate``'s metrics next to the song's human map:
distinct states, top-5 share (share of the note frames taken by the 5 most
common states), state entropy, 4-gram repetition, parity errors per swing,
vision blocks, collisions, and the constraint's forced violations. With
``--baseline`` (``mapkit evaluate --save-baseline``) each value also gets its
human percentile. CPU time of stage 2 per note time is measured in this
process, one thread (bench/cputime.py).

    python bench/decoding.py --placement ddc/best.pt --selection tr/last.pt SONG_DIR ... --baseline human.json

``--synthetic N`` instead times the constraint with bench/generate.py's
setup: the default-size stage-2 model (random weights) over a 2000-state
vocabulary, N note times 0.1-0.5 s apart, beam 8 and sampling, with and
without the flow constraint (CPU ms per note time, fastest of ``--runs``).

    python bench/decoding.py --synthetic 300
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cputime import cpu_seconds, torch_one_thread  # noqa: E402

import numpy as np  # noqa: E402

#: name -> (beam_size or None, temperature, top_p, flow)
SETTINGS = {
    "beam8": (8, None, None, False),
    "beam8+flow": (8, None, None, True),
    "greedy+flow": (1, None, None, True),
    "T1": (None, 1.0, None, False),
    "T1+flow": (None, 1.0, None, True),
    "T1 p0.95+flow": (None, 1.0, 0.95, True),
    "T1 p0.9+flow": (None, 1.0, 0.9, True),
    "T1 p0.85+flow": (None, 1.0, 0.85, True),
    "T0.8 p0.9+flow": (None, 0.8, 0.9, True),
    "T1 p0.8+flow": (None, 1.0, 0.8, True),
    "T0.8 p0.8+flow": (None, 0.8, 0.8, True),
}
COLUMNS = ("notes", "distinct_states", "top5_share", "state_entropy_bits", "ngram4_repetition",
           "parity_error_share", "vision_blocks", "collisions")


def top5_share(notes) -> float:
    """Share of the note frames taken by the 5 most common states (bombs included, as evaluate's states)."""
    from mapkit.preprocess.targets import note_states
    from mapkit.preprocess.timebase import frame_of

    if not len(notes):
        return float("nan")
    _, grids, _ = note_states(frame_of(notes["time_s"]), notes["column"], notes["row"], notes["color"],
                              notes["direction"])
    _, counts = np.unique(grids, axis=0, return_counts=True)
    return float(np.sort(counts)[::-1][:5].sum() / counts.sum())


def measured(notes, difficulty: str, duration: float, baseline) -> dict:
    from mapkit.preprocess.quality import level_metrics

    values = dict(level_metrics(notes, difficulty, duration).values)
    values["top5_share"] = top5_share(notes)
    ranks = baseline.ranks(difficulty, values) if baseline is not None else {}
    return {k: (values.get(k), ranks.get(k)) for k in COLUMNS}


def song_inputs(song, p_model, s_model, p_ckpt, s_ckpt, difficulty: str):
    """Features, note frames, beats and tempo map of ``song`` as generate computes them (format v3)."""
    from mapkit.preprocess.features import song_features
    from mapkit.runs import generate as g

    p_setup, s_setup, thresholds = g._checked_setups(song, [difficulty], p_ckpt, s_ckpt, s_model, None)
    settings = p_setup.feature_settings
    source = g._song_source(song)
    feats = song_features(source, settings)
    tempo = g._song_tempo(source, feats, settings, "v3")[0]
    probs = g._note_probabilities(p_model, p_setup, feats.placement, difficulty)
    frames, beats, _ = g._note_beats(probs, thresholds[difficulty], p_setup, tempo, feats.duration_s, True)
    return s_setup, feats, frames, beats, tempo


def human_notes(song, difficulty: str):
    from mapkit.runs.evaluate import evaluate_levels

    report = evaluate_levels([song], difficulties=[difficulty], audio=False)
    return report.items[0].notes if report.items else None


def fmt(value, rank) -> str:
    if value is None or value != value:
        return "-"
    text = f"{value:.3f}" if abs(value) < 10 and value != int(value) else f"{value:g}"
    return text + (f" ({rank:.0f}%)" if rank is not None and rank == rank else "")


def synthetic(n_notes: int, runs: int, preset: str = "default") -> None:
    """CPU ms per note time of stage 2 with and without the flow constraint (bench/generate.py's models)."""
    import torch

    from cputime import measure
    from generate import build
    from mapkit.preprocess.targets import Vocabulary
    from mapkit.train.decoding import beam_search, sample
    from mapkit.train.flow import FlowConstraint, vocab_features

    _, selection, _, s_ckpt = build(preset, 2000, 20)
    vocab = Vocabulary.from_json(s_ckpt["vocab"])
    from mapkit.train.transformer import TransformerConfig

    window = TransformerConfig().max_tokens  # the default training crop, as bench/generate.py
    rng = np.random.default_rng(0)
    times = np.cumsum(rng.uniform(0.1, 0.5, n_notes))
    g = torch.Generator().manual_seed(0)
    c = selection.config
    src = torch.cat([torch.randn(n_notes + 2, c.audio_dim, generator=g),  # then gaps, phases, difficulty
                     torch.rand(n_notes + 2, c.src_dim - c.audio_dim, generator=g)], dim=1)
    clock = cpu_seconds()
    features = vocab_features(vocab)
    print(f"{preset} stage 2, {len(vocab)} tokens, {n_notes} note times; vocabulary features "
          f"{1000 * (cpu_seconds() - clock):.0f} ms once")
    flows = {"without": lambda: None, "with flow": lambda: FlowConstraint(features, times)}
    decoders = {"beam 8": lambda c: beam_search(selection, src, None, n_notes, beam_size=8, window=window,
                                                constraint=c),
                "sampling T 1 top-p 0.8": lambda c: sample(selection, src, None, n_notes, top_p=0.8, window=window,
                                                           generator=torch.Generator().manual_seed(0), constraint=c)}
    for name, decode in decoders.items():
        for flow, make in flows.items():
            with torch.inference_mode():
                timing, _ = measure(lambda: decode(make()), repeat=runs)
            print(f"  {name:24s} {flow:10s} {1000 * timing.cpu / n_notes:7.2f} ms per note time", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("songs", nargs="*", help="level folders (audio + a human map of --difficulty)")
    ap.add_argument("--placement")
    ap.add_argument("--selection")
    ap.add_argument("--synthetic", type=int, default=None, metavar="N",
                    help="time the constraint on N synthetic note times with the default-size model instead")
    ap.add_argument("--preset", default="default", help="model preset of --synthetic")
    ap.add_argument("--runs", type=int, default=1, help="repeats of --synthetic (fastest kept)")
    ap.add_argument("--difficulty", default="Expert")
    ap.add_argument("--baseline", default=None, help="human baseline JSON (mapkit evaluate --save-baseline)")
    ap.add_argument("--settings", nargs="*", default=list(SETTINGS), help=f"of {', '.join(SETTINGS)}")
    ap.add_argument("--seeds", type=int, default=1, help="sampling seeds per setting (figures averaged)")
    ap.add_argument("--json", default=None, help="also write every row to this JSON file")
    args = ap.parse_args()
    torch_one_thread()
    if args.synthetic:
        synthetic(args.synthetic, args.runs, args.preset)
        return 0
    if not (args.songs and args.placement and args.selection):
        ap.error("give level folders, --placement and --selection (or --synthetic N)")
    from mapkit.runs import generate as g
    from mapkit.runs.evaluate import load_baseline
    from mapkit.train.flow import FlowSettings
    from mapkit.train.loop import load_checkpoint

    baseline = load_baseline(args.baseline) if args.baseline else None
    p_model, p_ckpt = load_checkpoint(args.placement, "cpu")
    s_model, s_ckpt = load_checkpoint(args.selection, "cpu")
    rows = []
    print("| song | decoding | " + " | ".join(COLUMNS) + " | forced | stage 2 ms/note |")
    print("|---" * (len(COLUMNS) + 4) + "|")
    for song in args.songs:
        name = os.path.basename(os.path.normpath(song))[-40:]
        s_setup, feats, frames, beats, bpm = song_inputs(song, p_model, s_model, p_ckpt, s_ckpt, args.difficulty)
        human = human_notes(song, args.difficulty)
        if human is not None:
            m = measured(human, args.difficulty, feats.duration_s, baseline)
            print(f"| {name} | human | " + " | ".join(fmt(*m[k]) for k in COLUMNS) + " | | |")
            rows.append({"song": name, "decoding": "human", **{k: m[k][0] for k in COLUMNS}})
        for setting in args.settings:
            beam, temperature, top_p, flow = SETTINGS[setting]
            for seed in range(args.seeds if temperature is not None else 1):
                clock = cpu_seconds()
                notes, _, forced = g._note_states(s_model, s_setup, feats, frames, beats, bpm, temperature=temperature,
                                                  beam_size=beam or 8, seed=seed, top_p=top_p,
                                                  difficulty=args.difficulty, flow=FlowSettings() if flow else None)
                ms = 1000 * (cpu_seconds() - clock) / max(len(frames), 1)
                m = measured(notes, args.difficulty, feats.duration_s, baseline)
                print(f"| {name} | {setting} s{seed} | " + " | ".join(fmt(*m[k]) for k in COLUMNS)
                      + f" | {forced} | {ms:.2f} |", flush=True)
                rows.append({"song": name, "decoding": setting, "seed": seed, "forced": forced, "ms_per_note": ms,
                             **{k: m[k][0] for k in COLUMNS}})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
