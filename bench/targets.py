"""Benchmark of the per-level work of ``mapkit build-targets`` (not a unit test).

On the real fixture levels (tests/fixtures/maps: JOURNEY, 6 difficulties up to
2329 notes and 13k light events per file; werewolf howls, 5 difficulties), in
one process, best of ``--repeat`` runs:

(a) the whole per-level work of a run: read the level (every characteristic),
    targets of every difficulty (notes on frames, states), state counting,
    encoding with the vocabulary, token sequences, gaps, frame classes and the
    shard item; printed as levels/s and difficulties/s;
(b) the same for the largest difficulty alone (JOURNEY Standard ExpertPlus,
    2329 notes), split into: parsing its JSON file, the rest of level reading
    (note checks, tempo), targets, counting, encoding + item;
(c) writing the shard items into an HDF5 shard (the parent's share).

The songs' T are those of songs just long enough for the notes (no audio is
decoded: features are not part of this command's work). Times are CPU seconds
of this process, one thread, best of ``--repeat`` (bench/cputime.py).

    python bench/targets.py
    python bench/targets.py --repeat 10
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cputime import machine_note, measure  # noqa: E402  (sets one thread before numpy loads)

from mapkit.preprocess.difficulty_targets import difficulty_targets  # noqa: E402
from mapkit.runs.build_targets import (LevelTargets, TargetTask, count_states, level_files_sha256,  # noqa: E402
                                       level_item, targets_one)
from mapkit.datasets.store import ShardWriter, shard_file_attrs
from mapkit.preprocess.jsonio import load_json_bytes
from mapkit.preprocess.levels import read_level
from mapkit.preprocess.sources import Source
from mapkit.preprocess.targets import Vocabulary
from mapkit.settings import TargetSettings

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "maps"
SETTINGS = TargetSettings()


def best(fn, repeat):
    """(minimum CPU seconds over ``repeat`` calls, the last result)."""
    timing, out = measure(fn, repeat=repeat)
    return timing.cpu, out


def song_frames(path) -> int:
    """T of a song that ends 2 s after the level's last note."""
    level = read_level(path, characteristic="all")
    last = max(float(d.notes["time_s"].max()) for d in level.difficulties if len(d.notes))
    return int(last * 100) + 200


def single_difficulty_level(src: Path, filename: str, dst: Path) -> Path:
    """A copy of level ``src`` whose info file lists only ``filename`` (Standard), in ``dst``."""
    import json

    info = json.loads((src / "Info.dat").read_bytes())
    for s in info["_difficultyBeatmapSets"]:
        s["_difficultyBeatmaps"] = [d for d in s["_difficultyBeatmaps"] if d["_beatmapFilename"] == filename]
    info["_difficultyBeatmapSets"] = [s for s in info["_difficultyBeatmapSets"] if s["_difficultyBeatmaps"]]
    out = dst / src.name
    out.mkdir()
    (out / "Info.dat").write_text(json.dumps(info))
    (out / filename).write_bytes((src / filename).read_bytes())
    return out


def objects_share(raw: bytes, path: Path, diff, dt, T: int, total: float, repeat: int) -> None:
    """(b') The whole-level objects' part of (b): walls, arcs, chains, events read, timed, placed, frame_events.

    Measured side by side with (b) in the same run; "notes only" is (b)'s
    total less this part, i.e. the per-level cost before the store held the
    whole level, and the ratio is what the objects cost on a level with
    thousands of light events.
    """
    from mapkit.preprocess.frame_events import frame_events
    from mapkit.preprocess.objects import normalise_objects, place_objects, read_raw_objects

    doc = load_json_bytes(raw, str(path))
    major = str(diff.sniffed_version)
    t_raw, rawobj = best(lambda: read_raw_objects(doc, major, str(path)), repeat)
    t_norm, (records, _read, _drops) = best(lambda: normalise_objects(rawobj, diff.tempo), repeat)
    t_place, (placed, _beyond) = best(lambda: place_objects(records, T, dt.notes), repeat)
    t_frames, _ = best(lambda: frame_events(dt.notes, placed, T), repeat)
    part = t_raw + t_norm + t_place + t_frames
    n = {k: len(v) for k, v in records.items() if hasattr(v, "__len__")}
    print(f"(b') its objects ({', '.join(f'{k} {v}' for k, v in n.items() if v)}):")
    print(f"    read {1000 * t_raw:.1f} ms, timed {1000 * t_norm:.1f} ms, placed {1000 * t_place:.1f} ms, "
          f"frame_events {1000 * t_frames:.1f} ms: {1000 * part:.1f} ms of (b)'s {1000 * total:.1f} ms; "
          f"notes only {1000 * (total - part):.1f} ms, so the whole level costs "
          f"{total / max(total - part, 1e-9):.2f}x (limit 2x)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    levels = [FIXTURES / "JOURNEY", FIXTURES / "werewolf howls"]
    tasks = [TargetTask(Source(p.name, str(p), "level"), song_frames(p), "0" * 64, "bench") for p in levels]

    # a vocabulary over these levels, as the first run of a store would count it
    results = [targets_one(t, SETTINGS, "all") for t in tasks]
    counts = Counter()
    for r in results:
        count_states(r, counts)
    vocab = Vocabulary.from_counts(counts, SETTINGS.vocab_size)

    # (a) whole per-level work
    def per_level(task):
        r = targets_one(task, SETTINGS, "all")
        c = Counter()
        count_states(r, c)
        return level_item(r, vocab, "all")

    print(f"levels: {', '.join(p.name for p in levels)}; vocabulary {len(vocab)} tokens; best of {args.repeat}; "
          f"{machine_note()}")
    total_t, total_d = 0.0, 0
    items = []
    for task, r in zip(tasks, results):
        t, item = best(lambda: per_level(task), args.repeat)
        items.append(item)
        n_diff = len(r.difficulties)
        n_notes = sum(len(d.notes) for d in r.difficulties)
        total_t += t
        total_d += n_diff
        print(f"(a) {task.song_id:<16} {n_diff} difficulties, {n_notes:5d} notes: {1000 * t:7.1f} ms per level "
              f"({1000 * t / n_diff:.1f} ms per difficulty)")
    print(f"(a) all: {len(tasks) / total_t:.1f} levels/s, {total_d / total_t:.1f} difficulties/s")

    # (b) the largest difficulty alone
    path = FIXTURES / "JOURNEY" / "ExpertPlusStandard.dat"
    raw = path.read_bytes()
    t_parse, _ = best(lambda: load_json_bytes(raw, str(path)), args.repeat)
    with tempfile.TemporaryDirectory() as tmp:
        alone = single_difficulty_level(FIXTURES / "JOURNEY", "ExpertPlusStandard.dat", Path(tmp))
        t_read, level = best(lambda: read_level(alone, SETTINGS, "Standard"), args.repeat)
    diff = level.get("Standard", "ExpertPlus")
    T = tasks[0].n_frames
    t_targets, dt = best(lambda: difficulty_targets(diff, T, level.bpm, SETTINGS), args.repeat)
    one = LevelTargets("JOURNEY", "", "", "2.0.0", 185.0, 0.0, T, "", "", [dt], [], [])
    t_count, _ = best(lambda: count_states(one, Counter()), args.repeat)
    t_encode, _ = best(lambda: level_item(one, vocab, "Standard"), args.repeat)
    t_hash, _ = best(lambda: level_files_sha256(FIXTURES / "JOURNEY"), args.repeat)
    print(f"(b) JOURNEY Standard/ExpertPlus, {len(diff.notes)} notes, {len(dt.states)} states, T = {T}:")
    print(f"    JSON parse of its file ({len(raw) / 1e6:.1f} MB): {1000 * t_parse:6.1f} ms")
    print(f"    level reading (parse included):                  {1000 * t_read:6.1f} ms")
    print(f"    targets (frames, beyond-audio, states):          {1000 * t_targets:6.1f} ms")
    print(f"    state counting:                                  {1000 * t_count:6.1f} ms")
    print(f"    encoding, tokens, gaps, frame_class, item:       {1000 * t_encode:6.1f} ms")
    print(f"    total without JSON parsing:                      "
          f"{1000 * (t_read - t_parse + t_targets + t_count + t_encode):6.1f} ms")
    total = t_read + t_targets + t_count + t_encode
    print(f"    total:                                           {1000 * total:6.1f} ms")
    print(f"    build-targets' own share (targets, count, encode): {1000 * (t_targets + t_count + t_encode):.1f} ms")
    print(f"    (resume check: SHA-256 of all the level's files, {1000 * t_hash:.1f} ms per level)")
    objects_share(raw, path, diff, dt, T, total, args.repeat)

    # (c) HDF5 writing in the parent
    with tempfile.TemporaryDirectory() as tmp:
        def write_all():
            d = Path(tmp) / f"w{time.perf_counter_ns()}"
            with ShardWriter(d, shard_file_attrs("targets", SETTINGS), max_items=1000) as w:
                for it in items:
                    w.write(it)
            return sum(os.path.getsize(p) for p in d.iterdir())

        t_write, size = best(write_all, args.repeat)
    print(f"(c) HDF5 write of both levels ({total_d} difficulties, {size / 1e6:.1f} MB): "
          f"{1000 * t_write:.1f} ms ({1000 * t_write / len(items):.1f} ms per level)")


if __name__ == "__main__":
    main()
