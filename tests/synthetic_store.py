"""A store of many synthetic levels with known attributes (no real arrays), for mapkit stats.

Only attributes are realistic (those build-targets, extract, audit and the
grouping write); datasets are one-row placeholders, since stats never reads them.
"""

import json

import numpy as np

from mapkit.datasets.store import ShardItem, ShardWriter, Store, shard_file_attrs
from mapkit.preprocess.difficulties import DIFFICULTIES
from mapkit.settings import FeatureSettings, TargetSettings


VERSIONS = ("2.0.0", "2.6.0", "3.3.0", "4.1.0")


def level_plan(i: int) -> dict:
    """The attributes of synthetic level ``i`` (deterministic)."""
    rng = np.random.default_rng(i)
    n_diff = 1 + i % 3
    duration = float(60 + (i * 37) % 240)
    diffs = []
    for k in range(n_diff):
        name = DIFFICULTIES[(i + k) % 5]
        n_notes = int(duration * (1 + DIFFICULTIES.index(name)))
        segments = [{"beat": 0.0, "bpm": 120.0, "second": 0.0}] + \
                   [{"beat": 8.0 * s, "bpm": 130.0, "second": 4.0 * s} for s in range(1, 1 + i % 4)]
        flags = [] if i % 5 else (["offset"] if i % 2 else ["partial"])
        diffs.append({"name": f"Standard/{name}", "n_notes": n_notes, "n_bombs": i % 7,
                      "declared_version": VERSIONS[i % 4], "n_states": n_notes // 2, "n_unk": (i % 3),
                      "tempo_map": json.dumps({"base_bpm": 120.0, "offset_s": 0.0, "segments": segments}),
                      "counts_json": json.dumps({"notes": n_notes, "bombs": i % 7, "obstacles": i % 11,
                                                 "arcs": 0, "chains": 0}),
                      "drops_json": json.dumps({"beyond_audio": 1} if i % 10 == 0 else {}),
                      "audit_flags_json": json.dumps(flags), "align_lag_frames": int(rng.integers(-2, 3))})
    return {"song_id": f"song-{i:05d}", "duration_s": duration, "sample_rate": 44100 if i % 4 else 48000,
            "info_version": "2.0.0", "info_bpm": float(80 + i % 120), "difficulties": diffs,
            "quarantined": [[f"song-{i:05d}/Standard/Hard", "requires Noodle Extensions"]] if i % 9 == 0 else [],
            "group_id": f"g{i // 2}", "automapped": bool(i % 8 == 0), "level_hash": f"h{i if i % 50 else 0}"}


def write_synthetic_store(root, n_levels: int, shard_levels: int = 256):
    """Write ``n_levels`` synthetic songs and levels into a store at ``root``; returns their plans."""
    store = Store(root)
    store.create()
    plans = [level_plan(i) for i in range(n_levels)]
    placeholder = np.zeros((1,), dtype=np.uint8)
    with ShardWriter(store.features_dir, shard_file_attrs("features", FeatureSettings()),
                     max_items=shard_levels) as w:
        for p in plans:
            w.write(ShardItem(f"songs/{p['song_id']}", {"placement": placeholder},
                              {"n_frames": int(p["duration_s"] * 100) + 1, "sample_rate": p["sample_rate"],
                               "duration_s": p["duration_s"], "group_id": p["group_id"]}))
    with ShardWriter(store.targets_dir, shard_file_attrs("targets", TargetSettings()), max_items=shard_levels) as w:
        for p in plans:
            sub = {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in p["difficulties"]}
            w.write(ShardItem(f"levels/{p['song_id']}",
                              {f"{d['name']}/frame_class": placeholder for d in p["difficulties"]},
                              {"song_id": p["song_id"], "info_version": p["info_version"], "info_bpm": p["info_bpm"],
                               "difficulties_json": json.dumps([d["name"] for d in p["difficulties"]]),
                               "quarantined_json": json.dumps(p["quarantined"]), "automapped": p["automapped"],
                               "level_hash": p["level_hash"]},
                              subgroup_attrs=sub))
    return plans
