"""Benchmark of ``mapkit generate`` on one song (not a unit test): CPU seconds per stage.

Builds both models at the chosen preset (``default``: the DDC-sized C-LSTM and
the 6+6-layer d512 transformer over a 2000-state vocabulary) with random
weights (the timings do not depend on the weights), and runs
:func:`mapkit.runs.generate.generate_level` on a song, printing the split by stage:
features (decode + both feature stages), tempo, stage1, peaks, stage2 (beam
search with cached keys/values), writing (JSON, song.egg, cover, zip). With
``--cli`` it also saves the models as checkpoints and times the whole
``mapkit generate`` command in a fresh process (imports and checkpoint
loading included).

Random weights give flat stage-1 probabilities, so the peak threshold is 0
and the minimum gap ``--min-gap`` frames (20 = at most 5 notes per second,
the density of a dense Expert level): stage 2 then decodes about as many
notes as a real level has.

With trained checkpoints (``--placement``, ``--selection``, ``--objects``)
it times the level a user gets: stage 1 with its event head, the object
model's walls, arcs, chains and lights (stage ``objects``), every
``--difficulty`` (``all``: the five; features and tempo once), decoded as
``mapkit generate`` decodes by default (flow-constrained nucleus sampling;
``--beam-size`` for beam search).

Then the cost of stage 2 per note time at 500 and 2000 note times
(``--notes``) over synthetic sources, with the decoding windows of the
default training crop (``max_tokens``; see mapkit/train/decoding.py), so the
cost per note stays flat: beam search (8 beams, or ``--beam-size``) and the
default decoding (flow-constrained sampling at T 1.0, top-p 0.85).

Times are CPU seconds of this process, one thread, fastest of ``--runs``
(bench/cputime.py); generate_level's own stage clock is pointed at the CPU
clock for this. The ``--cli`` run is a child process: its CPU seconds come
from RUSAGE_CHILDREN.

Song: ``--song``, else the song closest to 3 minutes under ``--songs DIR``
(default: the free Debian ``fretsonfire`` songs), else 3 minutes of
generated clicks.

    python bench/generate.py                     # default models, a 3-minute song
    python bench/generate.py --cli               # plus the end-to-end command
    python bench/generate.py --preset tiny --song x.ogg --runs 1
    python bench/generate.py --notes 500 2000 4000 --whole   # also decode without windows
    python bench/generate.py --notes-only --note-runs 2      # only the stage-2 cost per note time
    python bench/generate.py --baseline human.json           # evaluate percentiles of the generated level
    python bench/generate.py --placement ddc/best.pt --selection tr/best.pt --objects priors.json \
        --difficulty all --song song.ogg --notes                 # a whole level with trained models, 5 difficulties
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cputime import DEFAULT_SONGS, cpu_seconds, machine_note, measure, run_once, torch_one_thread  # noqa: E402

import numpy as np  # noqa: E402

STAGES = ("features", "tempo", "stage1", "peaks", "stage2", "objects", "writing")


def pick_song(folder: str, tmp: str) -> tuple[str, str]:
    """The ``song.ogg`` under ``folder`` closest to 180 s, else 3 minutes of generated clicks (Ogg Vorbis)."""
    import soundfile as sf

    songs = sorted(glob.glob(os.path.join(glob.escape(folder), "**", "song.ogg"), recursive=True))
    if songs:
        best = min(songs, key=lambda p: abs(sf.info(p).duration - 180.0))
        return best, f"real music: {os.path.basename(os.path.dirname(best))}"
    sr, bpm, seconds = 44100, 128.0, 180.0
    rng = np.random.default_rng(0)
    y = 0.01 * rng.standard_normal(int(seconds * sr)).astype(np.float32)
    n = int(0.05 * sr)
    burst = (rng.standard_normal(n) * np.exp(-np.arange(n) / (0.01 * sr))).astype(np.float32)
    for t in np.arange(0.1, seconds - 0.1, 60.0 / bpm / 2):
        i = int(t * sr)
        y[i: i + n] += 0.5 * burst[: len(y) - i]
    path = os.path.join(tmp, "clicks-3min.ogg")
    with sf.SoundFile(path, "w", sr, 1, format="OGG", subtype="VORBIS") as f:
        for i in range(0, len(y), sr):  # 1 s blocks: one large Ogg write crashes libsndfile
            f.write(y[i: i + sr])
    return path, "generated clicks (3 min, 128 BPM)"


def build(preset: str, vocab_size: int, min_gap: int, seed: int = 0):
    """Random models of ``preset`` and checkpoint dicts that generate_level reads."""
    import torch

    from mapkit.preprocess.targets import Vocabulary
    from mapkit.settings import FeatureSettings
    from mapkit.train.models import PLACEMENT_PRESETS, SELECTION_PRESETS, PlacementModel, SelectionModel

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    # distinct random states with descending counts: a vocabulary of the requested size
    states = {tuple(int(v) for v in rng.integers(0, 20, 12) * (rng.random(12) < 0.2)) for _ in range(4 * vocab_size)}
    vocab = Vocabulary.from_counts({s: len(states) - i for i, s in enumerate(sorted(states))}, vocab_size)
    placement = PlacementModel(PLACEMENT_PRESETS[preset]).eval()
    config = SELECTION_PRESETS[preset]
    selection = SelectionModel(type(config).from_dict({**config.to_dict(), "vocab_size": len(vocab)})).eval()
    fs = FeatureSettings()
    stats = {"placement": {"mean": [[-8.0] * fs.placement_n_mels] * len(fs.placement_n_ffts),
                           "std": [[4.0] * fs.placement_n_mels] * len(fs.placement_n_ffts)},
             "selection": {"mean": [-8.0] * fs.selection_n_mels, "std": [4.0] * fs.selection_n_mels}}
    common = {"stats": stats, "feature_settings_json": fs.to_json(), "feature_settings_hash": fs.hash}
    p_ckpt = {**common, "window": 100, "peak_picking": {"threshold": 0.0, "smoothing": 0, "min_gap_frames": min_gap}}
    s_ckpt = {**common, "vocab": vocab.to_json()}
    return placement, selection, p_ckpt, s_ckpt


def save(path: str, model, kind: str, extras: dict) -> str:
    from mapkit.train.loop import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, save_checkpoint

    ckpt = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "model_kind": kind,
            "model_config": model.config.to_json(), "model": model.state_dict(), **extras}
    return str(save_checkpoint(path, ckpt))


def loaded(placement: str, selection: str):
    """Trained models and their checkpoint dicts (``mapkit train ddc`` / ``transformer``)."""
    from mapkit.train.loop import load_checkpoint

    p_model, p_ckpt = load_checkpoint(placement, "cpu")
    s_model, s_ckpt = load_checkpoint(selection, "cpu")
    return p_model.eval(), s_model.eval(), p_ckpt, s_ckpt


def per_note_cost(selection, n_notes: int, beam_size: int, window, runs: int, vocab=None) -> float:
    """CPU seconds per note time of stage 2 over a synthetic source of ``n_notes`` note times: beam search,
    or with ``vocab`` the default decoding of generate (flow-constrained nucleus sampling, 4 note times a second)."""
    import torch

    from mapkit.runs.generate import DEFAULT_TEMPERATURE, DEFAULT_TOP_P
    from mapkit.train.decoding import beam_search, sample
    from mapkit.train.flow import FlowConstraint, vocab_features

    g = torch.Generator().manual_seed(n_notes)
    c = selection.config
    src = torch.cat([torch.randn(n_notes + 2, c.audio_dim, generator=g),  # then gaps, phases, difficulty
                     torch.rand(n_notes + 2, c.src_dim - c.audio_dim, generator=g)], dim=1)
    def sampled():
        constraint = FlowConstraint(vocab_features(vocab), np.arange(n_notes) * 0.25 + 1.0)
        return sample(selection, src, None, n_notes, temperature=DEFAULT_TEMPERATURE, top_p=DEFAULT_TOP_P,
                      generator=torch.Generator().manual_seed(0), window=window, constraint=constraint)

    with torch.inference_mode():
        run = sampled if vocab is not None else (
            lambda: beam_search(selection, src, None, n_notes, beam_size=beam_size, window=window))
        timing, _ = measure(run, repeat=runs)
    return timing.cpu / n_notes


class _CpuClock:
    """Stands in for the ``time`` module inside mapkit.runs.generate: its stage clock reads CPU seconds."""

    perf_counter = staticmethod(cpu_seconds)

    def __getattr__(self, name):
        return getattr(time, name)


def evaluate_summary(level, baseline_path: str | None) -> str:
    """The ``mapkit evaluate`` table of the generated level (with human percentiles given a baseline).

    With random weights (this script's default) the figures only show that
    the level is measurable; with trained models they are how generated
    levels are judged (docs/evaluate.md).
    """
    from mapkit.runs.evaluate import evaluate_generated, format_table, load_baseline

    baseline = load_baseline(baseline_path) if baseline_path else None
    return "mapkit evaluate of the generated level:\n" + format_table(
        evaluate_generated(level, baseline, baseline_path))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--song", help="Song to generate for (default: a ~3-minute real song under --songs).")
    ap.add_argument("--songs", default=DEFAULT_SONGS, metavar="DIR", help=f"Folder of songs (default {DEFAULT_SONGS}).")
    ap.add_argument("--notes", type=int, nargs="*", default=[500, 2000],
                    help="Note times for the stage-2 cost per note (default 500 2000; none to skip).")
    ap.add_argument("--whole", action="store_true", help="Also time stage 2 without windows (grows with length).")
    ap.add_argument("--notes-only", action="store_true",
                    help="Only the stage-2 cost per note time (--notes), no level generated.")
    ap.add_argument("--note-runs", type=int, default=1, help="Runs of each cost per note time (fastest kept; "
                                                             "default 1).")
    ap.add_argument("--preset", choices=("default", "tiny"), default="default")
    ap.add_argument("--vocab-size", type=int, default=2000)
    ap.add_argument("--beam-size", type=int, default=None,
                    help="Decode the level by beam search (default: generate's default decoding, sampling) and "
                         "time beam search per note with this many beams (default 8).")
    ap.add_argument("--placement", metavar="CKPT", help="Trained stage-1 checkpoint (instead of random models).")
    ap.add_argument("--selection", metavar="CKPT", help="Trained stage-2 checkpoint (with --placement).")
    ap.add_argument("--objects", metavar="FILE", help="Object model (mapkit train objects): walls, arcs, chains, "
                                                      "lights, with a stage 1 trained with --targets events.")
    ap.add_argument("--difficulty", action="append", default=None,
                    help="Difficulty to generate (repeatable; 'all': the five; default Expert).")
    ap.add_argument("--min-gap", type=int, default=20, help="Minimum frames between notes (20: <= 5 per second).")
    ap.add_argument("--runs", type=int, default=2, help="Runs; the fastest is reported per stage.")

    ap.add_argument("--cli", action="store_true", help="Also time `mapkit generate` end to end in a new process.")
    ap.add_argument("--baseline", metavar="FILE", help="Human baseline (mapkit evaluate --save-baseline) for the "
                                                        "generated level's metric percentiles.")
    ap.add_argument("--no-evaluate", action="store_true", help="Skip the mapkit evaluate summary of the level.")
    args = ap.parse_args(argv)

    import torch

    torch_one_thread()

    import mapkit.runs.generate
    from mapkit.runs.generate import generate_level
    from mapkit.train.transformer import TransformerConfig

    mapkit.runs.generate.time = _CpuClock()  # stage timings in CPU seconds
    window = TransformerConfig().max_tokens
    if args.notes_only:
        trained = bool(args.placement and args.selection)
        _, selection, _, s_ckpt = (loaded(args.placement, args.selection) if trained
                                   else build(args.preset, args.vocab_size, args.min_gap))
        print(f"stage 2: {'trained ' + args.selection if trained else 'preset ' + args.preset}; "
              f"torch {torch.__version__}, {torch.get_num_threads()} thread; {machine_note()}")
        note_costs(args, selection, s_ckpt, window)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        song, what = (args.song, "given") if args.song else pick_song(args.songs, tmp)
        trained = bool(args.placement and args.selection)
        placement, selection, p_ckpt, s_ckpt = (loaded(args.placement, args.selection) if trained
                                                else build(args.preset, args.vocab_size, args.min_gap))
        n_params = sum(p.numel() for m in (placement, selection) for p in m.parameters())
        print(f"song: {song} ({what})")
        decoding = f"beam {args.beam_size}" if args.beam_size else "flow-constrained sampling (generate's default)"
        print(f"models: {'trained checkpoints' if trained else 'preset ' + args.preset}, {n_params / 1e6:.1f} M "
              f"parameters, {decoding}, decoding windows of {window}; torch {torch.__version__}, "
              f"{torch.get_num_threads()} thread; {machine_note()}")
        best, level = {}, None
        if not trained:
            s_ckpt["max_tokens"] = window  # as a trained checkpoint carries it
        extra = {}
        if args.objects:
            from mapkit.train.objects import load_object_priors

            extra["object_priors"] = load_object_priors(args.objects)
        for run in range(args.runs):
            level = generate_level(song, placement, selection, p_ckpt, s_ckpt, beam_size=args.beam_size,
                                   difficulty=args.difficulty or "Expert", out_dir=os.path.join(tmp, "out"),
                                   force=True, **extra)
            for k, v in level.timings.items():
                best[k] = min(best.get(k, float("inf")), v)
        n_times = sum(len(c.peak_frames) for c in level.charts)
        objects = sum(len(v) for c in level.charts for v in c.objects.values())
        print(f"audio {level.duration_s:.1f} s, {level.n_frames} frames, {len(level.charts)} difficulties, "
              f"{n_times} note times, {sum(len(c.notes) for c in level.charts)} notes, {objects} objects, "
              f"{level.tempo.describe()}")
        print(f"{'stage':<10} {'CPU s':>8}   (fastest of {args.runs} run(s), in-process)")
        for k in STAGES:
            print(f"{k:<10} {best.get(k, 0.0):>8.3f}")
        total = sum(best.get(k, 0.0) for k in STAGES)
        print(f"{'total':<10} {total:>8.3f}   x{level.duration_s / total:.1f} realtime; stage 2 "
              f"{1000 * best['stage2'] / max(1, n_times):.1f} ms per note time")
        if not args.no_evaluate:
            print(evaluate_summary(level, args.baseline))
        if args.cli:
            p = save(os.path.join(tmp, "ddc", "last.pt"), placement, "placement", p_ckpt)
            s = save(os.path.join(tmp, "transformer", "last.pt"), selection, "selection", s_ckpt)
            cmd = [sys.executable, "-m", "mapkit", "generate", song, "--placement", p, "--selection", s,
                   "--beam-size", str(args.beam_size or 8), "--threads", "1", "--out", os.path.join(tmp, "cli")]
            cpu, wall, out = run_once(subprocess.run, cmd, capture_output=True, text=True)  # child CPU counted
            if out.returncode != 0:
                print(out.stderr, file=sys.stderr)
                return 1
            sizes = sum(os.path.getsize(x) for x in (p, s)) / 1e6
            print(f"{'cli':<10} {cpu:>8.3f}   `mapkit generate` end to end (imports, {sizes:.0f} MB of "
                  f"checkpoints loaded; wall {wall:.1f} s)")
        note_costs(args, selection, s_ckpt, window)
    return 0


def note_costs(args, selection, s_ckpt, window) -> None:
    """Print the stage-2 cost per note time at each of ``args.notes``: beam search and the default decoding."""
    from mapkit.train.checkpoints import SelectionSetup

    vocab = SelectionSetup.from_checkpoint(s_ckpt).vocab
    beams, runs = args.beam_size or 8, args.note_runs
    size = sum(p.numel() for p in selection.parameters()) / 1e6
    if args.notes:  # the figure is for the default size: say which model these are
        print(f"stage 2 per note time: {size:.1f} M parameters ({selection.config.d_model} wide, "
              f"{selection.config.n_decoder_layers} decoder layers), {len(vocab)} tokens", flush=True)
    for n in args.notes:
        ms = 1000 * per_note_cost(selection, n, beams, window, runs)
        sampled = 1000 * per_note_cost(selection, n, beams, window, runs, vocab=vocab)
        line = (f"stage 2, {n:5d} note times: beam {beams} {ms:6.1f} ms per note time, default decoding "
                f"(flow-constrained sampling) {sampled:6.1f} ms (windows of {window})")
        if args.whole:
            line += f"; beam without windows {1000 * per_note_cost(selection, n, beams, None, runs):6.1f} ms"
        print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
