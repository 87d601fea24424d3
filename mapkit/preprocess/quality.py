"""Objective metrics of one difficulty's notes: timing, density, flow, variety, difficulty, other objects.

Pure numpy functions over ``NOTE_DTYPE``/``STORED_NOTE_DTYPE`` arrays sorted
by time (as levels, the store and generation give them). Every metric is
defined exactly, with its source, in docs/evaluate.md; the docstrings below
repeat the definitions. :func:`level_metrics` computes all of them for one
difficulty; ``mapkit evaluate`` (:mod:`mapkit.runs.evaluate`) runs it over levels.

Conventions: "colour notes" are red (0) and blue (1) notes, bombs (3) are
counted separately; a metric that is undefined (e.g. the colour balance of a
level without notes) is NaN (``null`` in JSON); times are in seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mapkit.preprocess.notes import BLUE, BOMB, N_DIRECTIONS, RED
from mapkit.preprocess.parity import DIRECTION_VECTORS, DOT, ParitySettings, SwingStates, parity_errors, swing_states
from mapkit.preprocess.targets import note_states
from mapkit.preprocess.timebase import FPS, frame_of
from mapkit.settings import Settings

#: Vision-block window per difficulty: (min, max) seconds after a centre note
#: (BeatSaber-MapCheck's difficulty-specific defaults, MIT).
VISION_WINDOWS = {
    "Easy": (0.025, 1.2),
    "Normal": (0.05, 1.0),
    "Hard": (0.08, 0.75),
    "Expert": (0.1, 0.625),
    "ExpertPlus": (0.1, 0.5),
}
#: Centre cells that block vision: (column, row) -> the columns hidden behind it.
CENTRE_BLOCKERS = {(1, 1): (0, 1), (2, 1): (2, 3)}
_EPS = 1e-9  # time comparisons at a window's edge are inclusive despite float rounding


@dataclass(frozen=True)
class EvaluateSettings(Settings):
    """Every constant of the metrics (docs/evaluate.md); its hash is saved with a baseline."""

    KIND = "evaluate"

    fps: int = FPS
    #: onset matching tolerances in frames (2 = +-20 ms, 5 = +-50 ms at 100 fps)
    tolerances_frames: tuple = (2, 5)
    density_window_s: float = 2.0
    empty_window_s: float = 2.0
    swing_merge_s: float = 0.08
    slider_s: float = 0.2
    crossover_window_s: float = 0.1
    ngram: int = 4
    difficulty_window_s: float = 2.0
    difficulty_hop_s: float = 1.0
    difficulty_quantile: float = 0.8

    @property
    def parity(self) -> ParitySettings:
        return ParitySettings(merge_s=self.swing_merge_s, slider_s=self.slider_s)


@dataclass(frozen=True)
class MetricInfo:
    """A scalar metric: its key, its group and a short label for tables."""

    name: str
    group: str
    label: str


#: Every scalar metric, in report order (definitions: docs/evaluate.md).
METRICS = tuple(MetricInfo(*m) for m in (
    ("onset_precision_20ms", "timing", "onset precision +-20 ms vs reference"),
    ("onset_recall_20ms", "timing", "onset recall +-20 ms"),
    ("onset_f1_20ms", "timing", "onset F1 +-20 ms"),
    ("onset_precision_50ms", "timing", "onset precision +-50 ms"),
    ("onset_recall_50ms", "timing", "onset recall +-50 ms"),
    ("onset_f1_50ms", "timing", "onset F1 +-50 ms"),
    ("align_lag_ms", "timing", "lag of notes vs audio onsets (ms)"),
    ("align_strength", "timing", "alignment strength"),
    ("align_coverage", "timing", "alignment coverage"),
    ("align_correlation", "timing", "alignment correlation"),
    ("duration_s", "density", "song duration (s)"),
    ("notes", "density", "colour notes"),
    ("bombs", "density", "bombs"),
    ("nps_mean", "density", "notes per second, mean"),
    ("nps_peak", "density", "notes per second, peak 2 s"),
    ("empty_share", "density", "share of 2 s windows without notes"),
    ("parity_errors_left", "flow", "parity errors, left hand"),
    ("parity_errors_right", "flow", "parity errors, right hand"),
    ("bomb_resets_left", "flow", "bomb resets, left hand"),
    ("bomb_resets_right", "flow", "bomb resets, right hand"),
    ("parity_error_share", "flow", "parity errors per swing"),
    ("vision_blocks", "flow", "vision-blocked notes"),
    ("crossovers", "flow", "crossover notes"),
    ("collisions", "flow", "colliding note pairs"),
    ("double_directionals", "flow", "double directionals"),
    ("swings_per_s_left", "flow", "swings per second, left"),
    ("swings_per_s_right", "flow", "swings per second, right"),
    ("ebpm_median_left", "flow", "effective BPM median, left"),
    ("ebpm_median_right", "flow", "effective BPM median, right"),
    ("ebpm_peak_left", "flow", "effective BPM peak, left"),
    ("ebpm_peak_right", "flow", "effective BPM peak, right"),
    ("distinct_states", "variety", "distinct states"),
    ("state_entropy_bits", "variety", "state entropy (bits)"),
    ("top_state_share", "variety", "share of the most common state"),
    ("ngram4_repetition", "variety", "repeated 4-grams of states"),
    ("red_share", "variety", "red share of colour notes"),
    ("dot_share", "variety", "dot share of colour notes"),
    ("difficulty_estimate", "difficulty", "difficulty estimate"),
    ("difficulty_speed", "difficulty", "swings per second (80th pct of 2 s windows)"),
    ("difficulty_travel", "difficulty", "hand travel per swing (cells)"),
    ("walls_per_min", "objects", "walls per minute"),
    ("arcs_per_min", "objects", "arcs per minute"),
    ("chains_per_min", "objects", "chains per minute"),
    ("lights_per_min", "objects", "light events per minute"),
))
METRIC_NAMES = tuple(m.name for m in METRICS)
#: Metrics that count over the whole level (not per second, per swing or a share): a short level
#: reads low on them against whole human songs.
COUNT_METRICS = ("notes", "bombs", "distinct_states")
GROUPS = ("timing", "density", "flow", "variety", "difficulty", "objects")


def _colour(notes: np.ndarray) -> np.ndarray:
    return notes[notes["color"] != BOMB]


# --------------------------------------------------------------------------- timing


def onset_frames(notes: np.ndarray, fps: int = FPS) -> np.ndarray:
    """Distinct frames holding a note or bomb (``round(time_s * fps)``): the onsets stage 1 predicts."""
    return np.unique(frame_of(notes["time_s"], fps)) if len(notes) else np.zeros(0, np.int64)


def timing_metrics(notes: np.ndarray, reference: np.ndarray, settings: EvaluateSettings = EvaluateSettings()) -> dict:
    """Onset precision, recall and F1 of ``notes`` against ``reference`` notes at each tolerance.

    Both are reduced to their distinct note frames (:func:`onset_frames`) and
    matched one to one within ``+-tolerance`` frames by
    :func:`mapkit.preprocess.peaks.onset_counts` (the matching of stage-1
    validation). Keys: ``onset_{precision,recall,f1}_{ms}ms`` with ``ms =
    1000 * tolerance / fps``.
    """
    from mapkit.preprocess.peaks import f1_from_counts, onset_counts

    pred, true = onset_frames(notes, settings.fps), onset_frames(reference, settings.fps)
    out = {}
    for tol in settings.tolerances_frames:
        ms = round(1000 * tol / settings.fps)
        p, r, f = f1_from_counts(*onset_counts(pred, true, tol))
        out.update({f"onset_precision_{ms}ms": p, f"onset_recall_{ms}ms": r, f"onset_f1_{ms}ms": f})
    return out


# --------------------------------------------------------------------------- density


def density_metrics(notes: np.ndarray, duration_s: float, settings: EvaluateSettings = EvaluateSettings()) -> dict:
    """Notes, bombs, mean and peak notes per second, share of empty windows (colour notes only).

    - ``nps_mean`` = colour notes / ``duration_s`` (the song's length).
    - ``nps_peak`` = the most colour notes in any window ``[t, t + w)`` that
      starts on a colour note, divided by ``w`` (``density_window_s``, 2 s);
      NaN without colour notes (there is no such window).
    - ``empty_share`` = the share of the consecutive windows
      ``[k w, (k + 1) w)``, ``k = 0 .. ceil(duration / w) - 1``
      (``empty_window_s``, 2 s), that hold no colour note.
    """
    colour = _colour(notes)
    t = colour["time_s"]
    n = len(colour)
    w = settings.density_window_s
    peak = float(np.max(np.searchsorted(t, t + w - _EPS, side="left") - np.arange(n)) / w) if n else math.nan
    n_windows = max(1, math.ceil(duration_s / settings.empty_window_s - _EPS))
    bins = np.floor(t / settings.empty_window_s).astype(np.int64)
    bins = bins[(bins >= 0) & (bins < n_windows)]
    empty = 1.0 - len(np.unique(bins)) / n_windows
    return {"duration_s": float(duration_s), "notes": n, "bombs": int(len(notes) - n),
            "nps_mean": n / duration_s if duration_s > 0 else math.nan, "nps_peak": peak, "empty_share": empty}


def notes_per_beat_histogram(notes: np.ndarray, max_count: int = 4) -> dict:
    """Share of the beats from the first to the last colour note's beat holding 0, 1, ... ``max_count``+ notes.

    Beat ``k`` is ``[k, k + 1)`` of the level's beat axis. Keys ``"0"`` ...
    ``"{max_count}+"``; empty dict without colour notes.
    """
    colour = _colour(notes)
    if not len(colour):
        return {}
    beats = np.floor(colour["beat"]).astype(np.int64)
    counts = np.bincount(beats - beats.min())
    counts = np.minimum(counts, max_count)
    shares = np.bincount(counts, minlength=max_count + 1) / len(counts)
    return {(f"{k}+" if k == max_count else str(k)): float(s) for k, s in enumerate(shares)}


# --------------------------------------------------------------------------- flow


def vision_blocked(notes: np.ndarray, difficulty: str) -> np.ndarray:
    """Indices of the notes (colour notes and bombs) hidden behind a centre note.

    A note at (column 1, row 1) hides columns 0-1, one at (2, 1) columns 2-3
    (``CENTRE_BLOCKERS``); a note is blocked when it lies in a hidden column
    and comes ``min <= dt <= max`` seconds after such a centre note, with
    ``(min, max) = VISION_WINDOWS[difficulty]`` (inclusive edges). As
    BeatSaber-MapCheck's vision-block tool (MIT), without its NJS cap.
    """
    lo, hi = VISION_WINDOWS[difficulty]
    t = notes["time_s"]
    blocked = np.zeros(len(notes), bool)
    for (col, row), hidden in CENTRE_BLOCKERS.items():
        centre_t = t[(notes["column"] == col) & (notes["row"] == row)]
        if not centre_t.size:
            continue
        side = np.isin(notes["column"], hidden)
        first = np.searchsorted(centre_t, t - hi - _EPS, side="left")
        last = np.searchsorted(centre_t, t - lo + _EPS, side="right")
        blocked |= side & (last > first)
    return np.flatnonzero(blocked)


def crossover_notes(notes: np.ndarray, window_s: float = 0.1) -> np.ndarray:
    """Indices of colour notes taken with crossed hands.

    A red note is crossed when some blue note within ``+-window_s`` lies in a
    column strictly left of it, and a blue note when some red note within the
    window lies strictly right of it.
    """
    t, col, color = notes["time_s"], notes["column"], notes["color"]
    out = np.zeros(len(notes), bool)
    for me, other, crossed_if_left in ((RED, BLUE, True), (BLUE, RED, False)):
        mine = np.flatnonzero(color == me)
        for c in np.unique(col[color == other]).tolist():  # at most 4 columns: vectorised per column
            theirs_t = t[(color == other) & (col == c)]
            cand = mine[col[mine] > c] if crossed_if_left else mine[col[mine] < c]
            lo = np.searchsorted(theirs_t, t[cand] - window_s - _EPS, side="left")
            hi = np.searchsorted(theirs_t, t[cand] + window_s + _EPS, side="right")
            out[cand[hi > lo]] = True
    return np.flatnonzero(out)


def colliding_pairs(notes: np.ndarray, fps: int = FPS) -> list[tuple[int, int]]:
    """Pairs of note indices ``(i, j)``, ``i < j``, that cannot be cut together on one frame.

    Two notes on one frame (``round(time_s * fps)``) collide when they share
    a cell, or when one is an arrow whose cut path passes through the other's
    cell and the other is a bomb or a note of the other hand. The cut path of
    an arrow at (c, r) with direction vector (dx, dy) is the cell it is cut
    from, (c - dx, r - dy), and the cell it is cut towards, (c + dx, r + dy).
    """
    if len(notes) < 2:
        return []
    frames = frame_of(notes["time_s"], fps)
    shared = np.flatnonzero(np.r_[frames[1:] == frames[:-1], False] | np.r_[False, frames[1:] == frames[:-1]])
    cells: dict = {}
    for i in shared.tolist():
        cells.setdefault((int(frames[i]), int(notes["column"][i]), int(notes["row"][i])), []).append(i)
    pairs = set()
    for (f, c, r), members in cells.items():
        for a in range(len(members)):
            for b in range(a + 1, len(members)):
                pairs.add((members[a], members[b]))
    for i in shared.tolist():
        color, d = int(notes["color"][i]), int(notes["direction"][i])
        if color == BOMB or d == DOT:
            continue
        dx, dy = DIRECTION_VECTORS[d]
        c, r = int(notes["column"][i]), int(notes["row"][i])
        for cell in ((c - dx, r - dy), (c + dx, r + dy)):
            for j in cells.get((int(frames[i]), *cell), ()):
                if int(notes["color"][j]) != color:
                    pairs.add((min(i, j), max(i, j)))
    return sorted(pairs)


def double_directionals(swings: np.ndarray) -> int:
    """Consecutive swings of one hand with the same arrow direction (a dot-only swing breaks no chain)."""
    n = 0
    for h in (0, 1):
        d = swings["direction"][swings["hand"] == h]
        n += int(np.sum((d[1:] == d[:-1]) & (d[1:] >= 0)))
    return n


def _hand_speed(swings: np.ndarray, hand: int, duration_s: float) -> tuple[float, float, float]:
    """(swings per second, median and peak effective BPM) of one hand.

    The effective BPM of a swing is ``30 / dt``, ``dt`` the seconds since the
    hand's previous swing started: the BPM at which that gap is half a beat
    (BeatSaber-MapCheck's "effective BPM", MIT). NaN with fewer than two swings.
    """
    starts = swings["start_s"][swings["hand"] == hand]
    rate = len(starts) / duration_s if duration_s > 0 else math.nan
    gaps = np.diff(starts)
    gaps = gaps[gaps > 0]
    if not gaps.size:
        return rate, math.nan, math.nan
    ebpm = 30.0 / gaps
    return rate, float(np.median(ebpm)), float(ebpm.max())


def flow_metrics(notes: np.ndarray, states: SwingStates, difficulty: str, duration_s: float,
                 settings: EvaluateSettings = EvaluateSettings()) -> dict:
    """Parity errors and bomb resets per hand, vision blocks, crossovers, collisions, double directionals, speed."""
    s = states.swings
    out = {}
    for h, name in ((0, "left"), (1, "right")):
        mine = s[s["hand"] == h]
        out[f"parity_errors_{name}"] = int(mine["error"].sum())
        out[f"bomb_resets_{name}"] = int(mine["bomb_reset"].sum())
    out["parity_error_share"] = float(s["error"].sum() / len(s)) if len(s) else math.nan
    out["vision_blocks"] = int(len(vision_blocked(notes, difficulty))) if difficulty in VISION_WINDOWS else math.nan
    out["crossovers"] = int(len(crossover_notes(notes, settings.crossover_window_s)))
    out["collisions"] = len(colliding_pairs(notes, settings.fps))
    out["double_directionals"] = double_directionals(s)
    for h, name in ((0, "left"), (1, "right")):
        rate, median, peak = _hand_speed(s, h, duration_s)
        out[f"swings_per_s_{name}"], out[f"ebpm_median_{name}"], out[f"ebpm_peak_{name}"] = rate, median, peak
    return out


# --------------------------------------------------------------------------- variety


def variety_metrics(notes: np.ndarray, ngram: int = 4, fps: int = FPS) -> dict:
    """Distinct states, state entropy, top-state share, n-gram repetition, red and dot shares.

    A *state* is the 12-cell grid of one note frame, exactly as stage 2's
    targets (:func:`mapkit.preprocess.targets.note_states`, bombs included).

    - ``state_entropy_bits`` = ``-sum p log2 p`` over the states' frequencies.
    - ``top_state_share`` = frequency of the most common state.
    - ``ngram4_repetition`` = 1 - distinct / all ``ngram``-grams of
      consecutive states (0: no 4-state pattern ever repeats); NaN with fewer
      than ``ngram`` states.
    - ``red_share`` = red / colour notes; ``dot_share`` = dots / colour notes.
    """
    out = {}
    if len(notes):
        _, grids, _ = note_states(frame_of(notes["time_s"], fps), notes["column"], notes["row"], notes["color"],
                                  notes["direction"])
        _, inverse, counts = np.unique(grids, axis=0, return_inverse=True, return_counts=True)
        inverse = inverse.ravel()
        p = counts / counts.sum()
        out["distinct_states"] = int(len(counts))
        out["state_entropy_bits"] = float(max(0.0, -(p * np.log2(p)).sum()))
        out["top_state_share"] = float(p.max())
        if len(inverse) >= ngram:
            grams = np.stack([inverse[k: len(inverse) - ngram + 1 + k] for k in range(ngram)], axis=1)
            out[f"ngram{ngram}_repetition"] = 1.0 - len(np.unique(grams, axis=0)) / len(grams)
        else:
            out[f"ngram{ngram}_repetition"] = math.nan
    else:
        out.update(distinct_states=0, state_entropy_bits=math.nan, top_state_share=math.nan)
        out[f"ngram{ngram}_repetition"] = math.nan
    colour = _colour(notes)
    n = len(colour)
    out["red_share"] = float((colour["color"] == RED).sum() / n) if n else math.nan
    out["dot_share"] = float((colour["direction"] == DOT).sum() / n) if n else math.nan
    return out


def direction_histogram(notes: np.ndarray) -> dict:
    """Share of colour notes per cut direction ``"0"``..``"8"`` (8 = dot); empty without colour notes."""
    colour = _colour(notes)
    if not len(colour):
        return {}
    h = np.bincount(colour["direction"].astype(np.int64), minlength=N_DIRECTIONS) / len(colour)
    return {str(d): float(v) for d, v in enumerate(h)}


# --------------------------------------------------------------------------- difficulty


def difficulty_metrics(states: SwingStates, notes: np.ndarray, settings: EvaluateSettings = EvaluateSettings()) -> dict:
    """A transparent difficulty estimate: speed x (1 + travel / 4) x (1 + reset share / 2).

    - ``difficulty_speed``: swings of both hands per second in windows of
      ``difficulty_window_s`` (2 s) every ``difficulty_hop_s`` (1 s) from the
      first to the last swing; its ``difficulty_quantile`` (80th percentile):
      the pace of the level's harder sections, not its average.
    - ``difficulty_travel``: mean distance in cells (Euclidean over column,
      row) from one swing's last note to the same hand's next swing's first
      note; NaN when no hand swings twice (the estimate then counts no travel).
    - reset share: resets (errors and bomb resets) per swing.

    ``difficulty_estimate`` is their product as above; all three are NaN for
    a level without swings. It is not calibrated to any ranking system's stars.
    """
    s = states.swings
    if not len(s):
        return {"difficulty_estimate": math.nan, "difficulty_speed": math.nan, "difficulty_travel": math.nan}
    starts = np.sort(s["start_s"])
    w, hop = settings.difficulty_window_s, settings.difficulty_hop_s
    window_starts = np.arange(starts[0], max(starts[-1] - w, starts[0]) + _EPS, hop)
    counts = np.searchsorted(starts, window_starts + w - _EPS) - np.searchsorted(starts, window_starts - _EPS)
    speed = float(np.quantile(counts / w, settings.difficulty_quantile))
    travel = []
    for h in (0, 1):
        mine = s[s["hand"] == h]
        if len(mine) > 1:
            travel.append(np.hypot(mine["first_column"][1:].astype(float) - mine["last_column"][:-1],
                                   mine["first_row"][1:].astype(float) - mine["last_row"][:-1]))
    travel = float(np.concatenate(travel).mean()) if travel else math.nan
    reset_share = float(s["reset"].sum() / len(s))
    moved = travel if travel == travel else 0.0  # NaN (no hand swings twice): no travel to count
    return {"difficulty_estimate": speed * (1 + moved / 4) * (1 + reset_share / 2), "difficulty_speed": speed,
            "difficulty_travel": travel}


# --------------------------------------------------------------------------- other objects


def object_metrics(counts: dict | None, duration_s: float) -> dict:
    """Walls, arcs, chains and basic light events per minute of song, from the level's object counts (NaN when
    unknown).

    ``counts`` holds ``obstacles``, ``arcs`` and ``chains`` as read
    (:attr:`mapkit.preprocess.levels.Difficulty.counts`, or the store's
    ``counts_json``) and ``light_events`` (basic lighting events as read:
    ``Difficulty.objects_read``, the store's ``objects_read_json``; colour
    boosts and event-box groups not counted). Walls that force an impossible
    dodge need the walls' positions, which mapkit does not read yet.
    """
    per_min = 60.0 / duration_s if duration_s > 0 else math.nan
    out = {}
    for key, name in (("obstacles", "walls_per_min"), ("arcs", "arcs_per_min"), ("chains", "chains_per_min"),
                      ("light_events", "lights_per_min")):
        value = (counts or {}).get(key)
        out[name] = float(value) * per_min if value is not None else math.nan
    return out


# --------------------------------------------------------------------------- everything


@dataclass
class LevelMetrics:
    """All metrics of one difficulty: ``values`` (scalar metric -> float, NaN when undefined, keys of
    ``METRIC_NAMES`` that apply), ``details`` (histograms, per-hand parity counts) and what the plots need."""

    values: dict
    details: dict = field(default_factory=dict)
    states: SwingStates | None = None
    vision_blocked: np.ndarray | None = None


def level_metrics(notes: np.ndarray, difficulty: str, duration_s: float, counts: dict | None = None,
                  reference: np.ndarray | None = None, settings: EvaluateSettings = EvaluateSettings()
                  ) -> LevelMetrics:
    """Every metric that needs no audio for one difficulty's notes.

    Parameters
    ----------
    notes : np.ndarray
        Notes sorted by time (bombs included).
    difficulty : str
        Canonical difficulty name (sets the vision-block window).
    duration_s : float
        The song's length in seconds.
    counts : dict, optional
        Object counts as read (obstacles, arcs, chains, light_events); NaN metrics without.
    reference : np.ndarray, optional
        Notes of a reference level: adds the onset metrics.
    settings : EvaluateSettings
    """
    states = swing_states(notes, settings.parity)
    values = {}
    if reference is not None:
        values.update(timing_metrics(notes, reference, settings))
    values.update(density_metrics(notes, duration_s, settings))
    values.update(flow_metrics(notes, states, difficulty, duration_s, settings))
    values.update(variety_metrics(notes, settings.ngram, settings.fps))
    values.update(difficulty_metrics(states, notes, settings))
    values.update(object_metrics(counts, duration_s))
    details = {
        "notes_per_beat": notes_per_beat_histogram(notes),
        "directions": direction_histogram(notes),
        "parity": parity_errors(states),
    }
    blocked = vision_blocked(notes, difficulty) if difficulty in VISION_WINDOWS else np.zeros(0, np.int64)
    return LevelMetrics({k: float(v) for k, v in values.items()}, details, states, blocked)

