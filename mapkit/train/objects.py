"""The object model of ``mapkit generate``: fitting :class:`~mapkit.preprocess.object_decoding.ObjectPriors`
from a store (``mapkit train objects``) and validating the event channels' thresholds (``mapkit train ddc``).

Fitting (:func:`fit_object_priors`) reads the training split of a store (the
songs ``mapkit train`` trains on: same ``val_fraction``, seed and song groups)
and, per difficulty, counts song minutes and objects and collects the rows of
each distribution documented on :class:`ObjectPriors` from the stored notes
and object records. Nothing is trained by gradient: it is counting, so it
takes seconds.

Thresholds (:func:`event_thresholds`): for each onset channel of
:data:`~mapkit.preprocess.object_decoding.ONSET_CHANNELS` with objects in the
validation levels, the peak-picking threshold with the best onset F1
(:func:`mapkit.preprocess.peaks.best_threshold`, the note threshold's rule).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from mapkit.preprocess.object_decoding import (GENERATED_KINDS, MAX_LIGHTS_PER_FRAME, ONSET_CHANNELS, ObjectPriors,
                                               subsample, wall_floor_beats)

#: Percentile of the training levels' per-minute rates that caps a kind's onsets in generation (``max_rates``:
#: the larger of it and the mean rate, so a kind most levels lack, e.g. arcs in older corpora, still appears).
RATE_CAP_PERCENTILE = 85
#: The variety metrics whose human band (:func:`variety_band`) generation keeps a level in (``variety``).
VARIETY_METRICS = ("distinct_states", "top_state_share")
#: Default output of ``mapkit train objects`` and default ``--objects`` of ``mapkit generate``.
DEFAULT_PRIORS = "mapkit-runs/objects/priors.json"


def event_thresholds(probs_list, events_list, channels, min_gap_frames: int, smoothing: int,
                     tolerance_frames: int) -> dict:
    """channel -> validated threshold of each onset channel that has objects in the validation levels.

    Parameters
    ----------
    probs_list : list of np.ndarray [T_i, K]
        Class-head probabilities of each validation level.
    events_list : list of np.ndarray [T_i, K]
        Their ``frame_events`` targets.
    channels : sequence of str
        Names of the K channels.
    min_gap_frames, smoothing, tolerance_frames : int
        Peak picking and matching, as for the note threshold.
    """
    from mapkit.preprocess.peaks import best_threshold

    out = {}
    for channel in dict.fromkeys(ONSET_CHANNELS.values()):
        k = list(channels).index(channel)
        truths = [np.flatnonzero(np.asarray(e)[:, k]) for e in events_list]
        if not sum(len(t) for t in truths):
            continue
        th, _ = best_threshold([np.asarray(p)[:, k] for p in probs_list], truths, min_gap_frames=min_gap_frames,
                               smoothing=smoothing, tolerance_frames=tolerance_frames)
        out[channel] = float(th)
    return out


# --------------------------------------------------------------------------- fitting


def _same_colour_rank(notes: np.ndarray) -> np.ndarray:
    """For each stored note, its index among the colour notes of its colour (bombs: -1)."""
    rank = np.full(len(notes), -1, dtype=np.int64)
    for c in (0, 1):
        idx = np.flatnonzero(notes["color"] == c)
        rank[idx] = np.arange(len(idx))
    return rank


def level_rows(notes: np.ndarray, objects: dict) -> dict:
    """The prior rows of one stored level (see :class:`ObjectPriors`): walls, arcs, chains, lights, per-frame
    light counts, light frames near notes, boosts on, and object counts by kind."""
    walls, arcs, chains = objects["obstacles"], objects["arcs"], objects["chains"]
    lights, boosts = objects["light_events"], objects["boost_events"]
    rank = _same_colour_rank(notes)
    linked = arcs[(arcs["head_note"] >= 0) & (arcs["tail_note"] >= 0)]
    k = rank[linked["tail_note"]] - rank[linked["head_note"]] if len(linked) else np.zeros(0)
    ok = k >= 1
    light_frames, per_frame = np.unique(lights["frame"], return_counts=True)
    note_frames = np.unique(notes["frame"])
    near = 0
    if len(light_frames) and len(note_frames):
        pos = np.clip(np.searchsorted(note_frames, light_frames), 1, len(note_frames)) - 1
        nxt = np.minimum(pos + 1, len(note_frames) - 1)
        near = int((np.minimum(np.abs(note_frames[pos] - light_frames), np.abs(note_frames[nxt] - light_frames))
                    <= 2).sum())
    return {
        "walls": np.stack([walls[f] for f in ("x", "y", "width", "height", "duration_beats")], 1).tolist(),
        "arcs": np.stack([k[ok], linked["multiplier"][ok], linked["tail_multiplier"][ok], linked["mid_anchor"][ok],
                          (linked["tail_beat"] - linked["beat"])[ok]], 1).tolist(),
        "chains": np.stack([chains["slices"], chains["squish"],
                            np.maximum(np.abs(chains["tail_x"] - chains["x"]), np.abs(chains["tail_y"] - chains["y"])),
                            chains["tail_beat"] - chains["beat"]], 1).tolist(),
        "lights": np.stack([lights["type"], lights["value"], lights["float_value"]], 1).tolist(),
        "lights_per_frame": np.bincount(np.minimum(per_frame, MAX_LIGHTS_PER_FRAME) - 1,
                                        minlength=MAX_LIGHTS_PER_FRAME).tolist() if len(per_frame) else
        [0] * MAX_LIGHTS_PER_FRAME,
        "light_frames": [int(len(light_frames)), near],
        "boosts_on": [int(boosts["on"].sum()), int(len(boosts))],
        "counts": {kind: int(len(objects[kind])) for kind in GENERATED_KINDS},
        "note_times": int(len(note_frames)),
    }


def variety_values(notes: np.ndarray, difficulty: str, duration_s: float) -> dict:
    """The metrics of one stored level that generation keeps in band (:data:`VARIETY_METRICS` and
    ``nps_mean``), as ``mapkit evaluate`` computes them (:func:`~mapkit.preprocess.quality.level_metrics`)."""
    from mapkit.preprocess.quality import level_metrics

    values = level_metrics(notes, difficulty, duration_s).values
    return {k: float(values[k]) for k in VARIETY_METRICS + ("nps_mean",)}


def variety_band(levels: list) -> dict:
    """metric -> ``[low, high]``: the :data:`~mapkit.preprocess.density.DENSITY_PERCENTILES` of the levels'
    :func:`variety_values` (levels without them, or NaN values, left out); {} when none has them."""
    from mapkit.preprocess.density import DENSITY_PERCENTILES

    out = {}
    for k in VARIETY_METRICS:
        values = [r["variety"][k] for _, r in levels if "variety" in r and r["variety"][k] == r["variety"][k]]
        if values:
            out[k] = [round(float(v), 6) for v in np.percentile(values, DENSITY_PERCENTILES)]
    return out


def nps_band(levels: list) -> list | None:
    """``[low, high]`` colour notes per second (``evaluate``'s ``nps_mean``) of the levels, at the
    :data:`~mapkit.preprocess.density.DENSITY_PERCENTILES`; None when no level has it."""
    from mapkit.preprocess.density import density_band

    values = [r["variety"]["nps_mean"] for _, r in levels if "nps_mean" in r.get("variety", {})]
    return list(density_band(values)) if values else None


def max_rates(levels: list) -> dict:
    """kind -> the larger of the :data:`RATE_CAP_PERCENTILE` percentile of the levels' per-minute rates and
    their mean rate (all objects over all minutes), for ``levels`` = ``[(minutes, level_rows(...)), ...]``."""
    minutes = sum(m for m, _ in levels)
    out = {}
    for kind in GENERATED_KINDS:
        per_level = [r["counts"][kind] / m for m, r in levels if m > 0] or [0.0]
        mean = sum(r["counts"][kind] for _, r in levels) / minutes if minutes > 0 else 0.0
        out[kind] = max(float(np.percentile(per_level, RATE_CAP_PERCENTILE)), float(mean))
    return out


def presence(levels: list) -> dict:
    """kind -> ``{"share", "rate", "max_rate"}`` over ``levels`` = ``[(minutes, level_rows(...)), ...]``.

    ``share``: the fraction of levels with at least one object of the kind; ``rate`` and
    ``max_rate``: :func:`max_rates`' two figures over those levels only (0 when none has it).
    Most human levels of a difficulty have no arcs, a few have many: drawing whether a level has a
    kind at all, then the rate of the levels that have it, gives generated levels the human spread,
    where the mean rate for every level put each of them above 95 % of human ones.
    """
    out = {}
    for kind in GENERATED_KINDS:
        having = [(m, r) for m, r in levels if r["counts"][kind] > 0 and m > 0]
        minutes = sum(m for m, _ in having)
        out[kind] = {"share": len(having) / len(levels) if levels else 0.0,
                     "rate": sum(r["counts"][kind] for _, r in having) / minutes if minutes > 0 else 0.0,
                     "max_rate": max_rates(having)[kind] if having else 0.0}
    return out


def priors_from_rows(by_difficulty: dict, source: str = "") -> ObjectPriors:
    """:class:`ObjectPriors` from ``{difficulty: [(minutes, level_rows(...)), ...]}``."""
    from mapkit.preprocess.density import density_band

    out = {}
    for difficulty, levels in by_difficulty.items():
        minutes = float(sum(m for m, _ in levels))
        counts = {kind: sum(r["counts"][kind] for _, r in levels) for kind in GENERATED_KINDS}
        lf = np.sum([r["light_frames"] for _, r in levels], axis=0)
        bo = np.sum([r["boosts_on"] for _, r in levels], axis=0)
        out[difficulty] = {
            "minutes": minutes, "levels": len(levels),
            "rates": {kind: (n / minutes if minutes > 0 else 0.0) for kind, n in counts.items()},
            "max_rates": max_rates(levels),
            "presence": presence(levels),
            **{name: subsample([row for _, r in levels for row in r[name]])
               for name in ("walls", "arcs", "chains", "lights")},
            "wall_min_beats": wall_floor_beats([row for _, r in levels for row in r["walls"]]),
            "variety": variety_band(levels),
            "lights_per_frame": np.sum([r["lights_per_frame"] for _, r in levels], axis=0).astype(int).tolist(),
            "lights_on_notes": float(lf[1] / lf[0]) if lf[0] else 0.0,
            "boost_on_share": float(bo[0] / bo[1]) if bo[1] else 0.0,
            "note_density": list(density_band([r.get("note_times", 0) / (60.0 * m) for m, r in levels if m > 0]
                                              or [0.0])),
            "nps_band": nps_band(levels),
        }
    return ObjectPriors(out, source)


def training_songs(store, val_fraction: float, seed: int) -> list:
    """The songs ``mapkit train`` trains on with this ``val_fraction`` and ``seed`` (split by song group)."""
    from mapkit.datasets.split import song_groups, split_by_song

    features = store.index("features")
    songs = set(features) & set(store.index("targets"))
    train, _val = split_by_song(songs, val_fraction, seed, None, song_groups(features))
    return train


def fit_object_priors(store, out=DEFAULT_PRIORS, val_fraction: float = 0.1, seed: int = 0,
                      characteristic: str = "Standard", progress: bool = False) -> ObjectPriors:
    """Fit the object model on the training split of ``store`` and write it to ``out`` (JSON).

    Parameters
    ----------
    store : Store or path
        A store with features and targets (``mapkit build-targets``).
    out : path
        Where the priors go (atomically written JSON).
    val_fraction, seed : float, int
        The split of ``mapkit train`` (give the same values): validation songs are left out.
    characteristic : str
    progress : bool
        A progress bar over the levels.

    Raises
    ------
    MapkitError
        No training level in the store.
    """
    from tqdm import tqdm

    from mapkit.datasets.store import Store, open_shard, write_json_atomic
    from mapkit.datasets.torch_datasets import store_levels
    from mapkit.errors import MapkitError
    from mapkit.preprocess.objects import OBJECT_KINDS
    from mapkit.preprocess.timebase import FPS

    store = store if isinstance(store, Store) else Store(store)
    if not store.targets_dir.is_dir():
        raise MapkitError(store.root, "no targets/ in the store (run mapkit build-targets first)")
    levels = store_levels(store, training_songs(store, val_fraction, seed), characteristic)
    if not levels:
        raise MapkitError(store.root, f"no {characteristic} level in the training songs")
    by_difficulty = defaultdict(list)
    for level in tqdm(levels, desc="objects", unit="level", disable=not progress):
        with open_shard(level.target_shard, features=False) as f:
            g = f[level.target_group]
            objects = {kind: g[kind][:] for kind in OBJECT_KINDS if kind in g}
            if not all(kind in objects for kind in GENERATED_KINDS):
                continue  # a store from before the objects: nothing to learn from this level
            rows = level_rows(g["notes"][:], objects)
            rows["variety"] = variety_values(g["notes"][:], level.difficulty, level.n_frames / FPS)
        by_difficulty[level.difficulty].append((level.n_frames / FPS / 60.0, rows))
    priors = priors_from_rows(dict(by_difficulty), source=f"{store.root} (train split, val_fraction "
                                                            f"{val_fraction:g}, seed {seed})")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, json.loads(priors.to_json()))
    return priors


def load_object_priors(path) -> ObjectPriors:
    """Read priors written by :func:`fit_object_priors`; MapkitError naming the file when unreadable."""
    from mapkit.errors import MapkitError

    try:
        return ObjectPriors.from_json(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise MapkitError(path, f"unreadable object model: {e}") from None


__all__ = ["DEFAULT_PRIORS", "RATE_CAP_PERCENTILE", "VARIETY_METRICS", "event_thresholds", "fit_object_priors",
           "level_rows", "load_object_priors", "max_rates", "nps_band", "presence", "priors_from_rows",
           "training_songs", "variety_band", "variety_values"]
