"""Walls, arcs, chains and lighting for a generated level: the learned object model and its decoding. Pure.

``mapkit generate`` decides *when* an object starts from the stage-1 event
probabilities (``mapkit train ddc --targets events``: the ``frame_events``
channels of :mod:`mapkit.preprocess.frame_events`) and *what* it is from
:class:`ObjectPriors`, empirical distributions fitted on a store's training
split (``mapkit train objects``, :mod:`mapkit.train.objects`), conditioned on
the generated notes. docs/design.md §7 describes the whole step.

When (:func:`object_onsets`)
    The onset frames of a kind are the peaks of its channel
    (:data:`ONSET_CHANNELS`) picked with that channel's threshold validated in
    ``mapkit train ddc`` (``event_peak_picking`` in the checkpoint). A channel
    without a validated threshold (no such object in the validation levels)
    takes the ``round(rate * minutes)`` highest peaks instead, ``rate`` being
    the kind's per-minute rate in the training levels of the difficulty. A
    validated channel keeps at most ``round(max_rate * minutes)`` peaks (the
    highest), ``max_rate`` the larger of the 85th percentile of the training
    levels' rates and their mean rate.
    For light events both rates are divided by the mean number of events per
    lit frame (:func:`events_per_onset`): rates count events, peaks frames.

What (one decoder per kind, each deterministic for a given ``rng``)
    * walls (:func:`decode_walls`): a shape ``(x, y, width, height,
      duration_beats)`` drawn from the training walls at least the
      difficulty's shortest wall long (:func:`wall_floor_beats`: human sync
      walls, a run of thin walls, are not drawn one at a time); kept only when no note
      or bomb lies in the cells it covers during ``[start - margin, end +
      margin]`` (so a wall never collides with a note) and when, with the
      walls already placed that overlap it in time, at least
      :data:`MIN_FREE_COLUMNS` adjacent columns stay free of walls that reach
      below the crouch height (so it never forces an impossible dodge). Up to
      :data:`SHAPE_TRIES` shapes are tried per onset; none fitting: no wall.
    * arcs (:func:`decode_arcs`): from the colour note nearest to the onset
      (within :data:`NOTE_TOLERANCE_FRAMES`) to its k-th next note of the
      same colour (k, head/tail multipliers and mid-anchor drawn together from
      the training arcs); arcs of one colour never overlap in time.
    * chains (:func:`decode_chains`): head on the nearest directional colour
      note; ``slices``, ``squish`` and length (cells along the head note's cut
      direction, beats) drawn from the training chains; the tail stays in the
      grid and ends before the next note of that colour.
    * light events (:func:`decode_lights`): at each onset, the number of
      events of one frame and their ``(type, value, float_value)`` drawn from
      the training lighting (distinct types within a frame).
    * colour boosts (:func:`decode_boosts`): alternately on and off.

Every kind comes out as records of the store's dtypes
(:data:`~mapkit.preprocess.objects.OBJECT_DTYPES`), beats on the level's
tempo map (rounded to :data:`BEAT_DECIMALS` decimals; ``time_s`` is the time
of that beat, ``frame`` its frame), ready for the level writers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from mapkit.preprocess.notes import BOMB
from mapkit.preprocess.objects import OBJECT_DTYPES
from mapkit.preprocess.parity import DIRECTION_VECTORS
from mapkit.preprocess.timebase import frame_of, frame_time

#: ``mapkit generate --no-<switch>`` -> the kinds it removes.
OBJECT_SWITCHES = {"walls": ("obstacles",), "arcs": ("arcs",), "chains": ("chains",),
                   "lights": ("light_events", "boost_events")}
#: The kinds generation makes, in writing order.
GENERATED_KINDS = ("obstacles", "arcs", "chains", "light_events", "boost_events")
#: The ``frame_events`` channel whose peaks start each kind.
ONSET_CHANNELS = {"obstacles": "wall_start", "arcs": "arc_head", "chains": "chain_head",
                  "light_events": "light_event", "boost_events": "boost_event"}
#: Most samples kept per distribution (a random subset, seed 0, beyond it).
MAX_SAMPLES = 4096
#: Shapes tried per wall onset before giving it up.
SHAPE_TRIES = 8
#: Seconds around a wall in which no note or bomb may lie in its cells.
WALL_MARGIN_S = 0.15
#: Adjacent columns (of the four) that walls overlapping in time must leave free.
MIN_FREE_COLUMNS = 2
#: A wall whose bottom is at this layer or higher is ducked under, not dodged sideways.
CROUCH_LAYER = 2
#: An arc or chain onset attaches to a colour note at most this many frames away.
NOTE_TOLERANCE_FRAMES = 5
#: Most light events on one frame.
MAX_LIGHTS_PER_FRAME = 8
#: Beats of generated objects are rounded to this many decimals (short files, same frames).
BEAT_DECIMALS = 4
#: Walls shorter than this many beats are sync walls: human levels place them in runs of thin walls on the beat
#: (81-song corpus, training split: 1567 of its 3153 walls, in 24 of the 56 levels with walls; only 65 walls lie
#: between 1/16 and 1/4 beat). Generation places walls one at a time, where one alone is a flicker.
SYNC_WALL_BEATS = 1 / 16
#: The shortest generated wall of a difficulty is this percentile of its training walls' durations, among
#: those at least :data:`SYNC_WALL_BEATS` long (:func:`wall_floor_beats`).
WALL_FLOOR_PERCENTILE = 5


# --------------------------------------------------------------------------- the object model


@dataclass(frozen=True)
class ObjectPriors:
    """The learned object model: per difficulty, rates and empirical distributions of every generated kind.

    ``difficulties`` maps a canonical difficulty name to a plain-JSON dict:

    ``minutes``, ``levels``
        Song minutes and levels it was fitted on.
    ``rates``
        kind -> objects per minute (kinds of :data:`GENERATED_KINDS`).
    ``max_rates``
        kind -> the larger of the 85th percentile of the training levels' per-minute rates and the mean rate
        (caps the onsets).
    ``walls``
        rows ``[x, y, width, height, duration_beats]``.
    ``wall_min_beats``
        the shortest wall generation makes (:func:`wall_floor_beats` of the training walls; null when
        every training wall is a sync wall). Absent in older files: computed from ``walls``.
    ``arcs``
        rows ``[k, multiplier, tail_multiplier, mid_anchor, gap_beats]``: the tail
        is the k-th next note of the head's colour (arcs linked to both notes).
    ``chains``
        rows ``[slices, squish, length_cells, length_beats]``, ``length_cells`` =
        ``max(|tail_x - x|, |tail_y - y|)``.
    ``lights``
        rows ``[type, value, float_value]``.
    ``lights_per_frame``
        counts of frames holding 1, 2, ... :data:`MAX_LIGHTS_PER_FRAME` light events.
    ``lights_on_notes``
        share of light-event frames within 2 frames of a note (reported, the relation to note times).
    ``boost_on_share``
        share of boost events that switch the boost on.
    ``note_density``
        ``[low, high]`` note times per second of the training levels (10th and 90th percentile,
        :func:`~mapkit.preprocess.density.density_band`): generate keeps each difficulty's density
        inside it (:func:`~mapkit.preprocess.density.threshold_for_density`). Absent in older files.
    ``nps_band``
        ``[low, high]`` colour notes per second (``mapkit evaluate``'s ``nps_mean``) of the training
        levels, 10th and 90th percentile: a generated difficulty above ``high`` (stage 2 made many
        double notes) is made again from fewer note times (``mapkit.runs.generate``). Absent in older files.
    ``presence``
        kind -> ``{"share", "rate", "max_rate"}``: the share of training levels with the kind, and the
        rate and cap of those levels (``mapkit.train.objects.presence``). A generated level has the
        kind with probability ``share`` (:func:`kind_present`), then at those rates. Absent in older
        files: every level has every kind, at ``rates``/``max_rates``.
    ``variety``
        metric -> ``[low, high]`` (10th and 90th percentile of the training levels) of
        ``distinct_states`` and ``top_state_share``: generate moves a difficulty's default top-p
        until its level lies inside (``mapkit.runs.generate``). Absent in older files.

    ``source`` says what it was fitted on. :attr:`hash` is stable (canonical JSON).
    """

    difficulties: dict = field(default_factory=dict)
    source: str = ""

    def to_json(self) -> str:
        return json.dumps({"kind": "object_priors", "difficulties": self.difficulties, "source": self.source},
                          sort_keys=True, separators=(",", ":"))

    @property
    def hash(self) -> str:
        """First 16 hex digits of the SHA-256 of :meth:`to_json`."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()[:16]

    @classmethod
    def from_json(cls, text: str) -> "ObjectPriors":
        """Parse :meth:`to_json`'s text; ValueError when it is not an object model."""
        d = json.loads(text)
        if not isinstance(d, dict) or d.get("kind") != "object_priors" or not isinstance(d.get("difficulties"), dict):
            raise ValueError("not an object model (mapkit train objects): no kind 'object_priors'")
        return cls(d["difficulties"], str(d.get("source", "")))

    def for_difficulty(self, difficulty: str) -> dict | None:
        """The priors of ``difficulty``, else of the nearest fitted difficulty (table order); None when empty."""
        from mapkit.preprocess.difficulties import DIFFICULTIES

        if difficulty in self.difficulties:
            return self.difficulties[difficulty]
        if not self.difficulties:
            return None
        rank = DIFFICULTIES.index(difficulty) if difficulty in DIFFICULTIES else len(DIFFICULTIES)
        known = [d for d in DIFFICULTIES if d in self.difficulties] or sorted(self.difficulties)
        return self.difficulties[min(known, key=lambda d: abs(DIFFICULTIES.index(d) - rank)
                                     if d in DIFFICULTIES else 99)]


def subsample(rows, max_rows: int = MAX_SAMPLES) -> list:
    """At most ``max_rows`` of ``rows`` (a seed-0 random subset in original order), as plain lists."""
    rows = [list(map(float, r)) for r in rows]
    if len(rows) <= max_rows:
        return rows
    keep = np.sort(np.random.default_rng(0).choice(len(rows), max_rows, replace=False))
    return [rows[i] for i in keep]


# --------------------------------------------------------------------------- when


def object_onsets(probs, threshold: float | None, rate_per_min: float, duration_s: float, min_gap_frames: int,
                  smoothing: int, max_rate_per_min: float | None = None) -> np.ndarray:
    """Onset frames of one kind from its channel's per-frame probabilities ``[T]``.

    With a validated ``threshold``: :func:`~mapkit.preprocess.peaks.pick_peaks`
    at it, at most the ``round(max_rate_per_min * duration_s / 60)`` highest
    of them when ``max_rate_per_min`` is given (the priors' ``max_rates``: no
    level gets more of a kind than 85 % of the training levels have, or than the mean rate when that is more).
    Without: the ``round(rate_per_min * duration_s / 60)`` highest peaks
    (threshold 0). In time order.
    """
    from mapkit.preprocess.peaks import pick_peaks

    probs = np.asarray(probs, dtype=np.float32)
    if threshold is not None:
        peaks = pick_peaks(probs, float(threshold), min_gap_frames, smoothing)
        n = len(peaks) if max_rate_per_min is None else int(round(max(max_rate_per_min, 0.0) * duration_s / 60.0))
    else:
        peaks = pick_peaks(probs, 0.0, min_gap_frames, smoothing)
        n = int(round(max(rate_per_min, 0.0) * duration_s / 60.0))
    if n >= len(peaks):
        return peaks
    if n <= 0:
        return np.zeros(0, np.int64)
    top = peaks[np.argsort(-probs[peaks], kind="stable")[:n]]
    return np.sort(top)


def _timed(kind: str, beats, tempo, fps: int) -> np.ndarray:
    """Records of ``kind`` with ``beat`` (rounded), ``time_s`` and ``frame`` set; other fields 0."""
    out = np.zeros(len(beats), OBJECT_DTYPES[kind])
    out["beat"] = np.round(np.asarray(beats, dtype=np.float64), BEAT_DECIMALS)
    out["time_s"] = tempo.seconds(out["beat"]) if len(out) else 0.0
    out["frame"] = frame_of(out["time_s"], fps) if len(out) else 0
    return out


# --------------------------------------------------------------------------- walls


def wall_cells(x: int, y: int, width: int, height: int) -> tuple[range, range]:
    """The grid columns (0-3) and layers (0-2) a wall covers (empty ranges for decoration outside the grid)."""
    return range(max(x, 0), min(x + width, 4)), range(max(y, 0), min(y + height, 3))


def _wall_fits(start_s, end_s, shape, notes, placed) -> bool:
    """No note in the wall's cells within the margin; with the overlapping walls, enough free columns."""
    x, y, w, h = (int(v) for v in shape[:4])
    cols, rows = wall_cells(x, y, w, h)
    near = notes[(notes["time_s"] >= start_s - WALL_MARGIN_S) & (notes["time_s"] <= end_s + WALL_MARGIN_S)]
    if len(near) and (np.isin(near["column"], list(cols)) & np.isin(near["row"], list(rows))).any():
        return False
    blocked = set(cols) if y < CROUCH_LAYER else set()
    for s, e, ox, oy, ow, oh in placed:
        if s <= end_s + WALL_MARGIN_S and start_s <= e + WALL_MARGIN_S and oy < CROUCH_LAYER:
            blocked |= set(wall_cells(ox, oy, ow, oh)[0])
    free = [c not in blocked for c in range(4)]
    return any(all(free[c:c + MIN_FREE_COLUMNS]) for c in range(4 - MIN_FREE_COLUMNS + 1))


def wall_floor_beats(rows) -> float | None:
    """The shortest wall generation makes, in beats, from wall rows ``[x, y, width, height, duration_beats]``.

    The :data:`WALL_FLOOR_PERCENTILE` percentile of the durations at least
    :data:`SYNC_WALL_BEATS` long (sync walls left out); None when no wall is
    that long.

    >>> wall_floor_beats([[0, 0, 1, 5, 0.01]] * 50 + [[0, 0, 1, 5, 0.5]] * 19 + [[3, 0, 1, 5, 0.25]])
    0.25
    """
    durations = np.asarray(rows, dtype=np.float64).reshape(-1, 5)[:, 4]
    long = durations[durations >= SYNC_WALL_BEATS]
    return float(np.percentile(long, WALL_FLOOR_PERCENTILE, method="lower")) if len(long) else None


def wall_shapes(priors: dict) -> np.ndarray:
    """The wall rows generation draws from: those at least the difficulty's ``wall_min_beats`` long (computed
    from its ``walls`` when the priors predate it); every row when there is no floor (all sync walls)."""
    rows = np.asarray(priors.get("walls", []), dtype=np.float64).reshape(-1, 5)
    floor = priors["wall_min_beats"] if "wall_min_beats" in priors else wall_floor_beats(rows)
    return rows if floor is None else rows[rows[:, 4] >= float(floor)]


def decode_walls(onsets, notes: np.ndarray, shapes, tempo, duration_s: float, rng, fps: int) -> np.ndarray:
    """Walls at ``onsets`` (frames): shapes drawn from ``shapes`` that fit (module docstring), as ``obstacles``.

    ``notes`` are the level's notes and bombs (NOTE_DTYPE, ``time_s``); a wall
    ends inside the audio (``duration_s``).
    """
    shapes = np.asarray(shapes, dtype=np.float64).reshape(-1, 5)
    placed, beats, chosen = [], [], []
    if not len(shapes):
        return _timed("obstacles", [], tempo, fps)
    for f in np.asarray(onsets, dtype=np.int64):
        start_beat = round(float(tempo.beats(frame_time(int(f), fps))), BEAT_DECIMALS)
        start_s = float(tempo.seconds(start_beat))
        for i in rng.choice(len(shapes), min(SHAPE_TRIES, len(shapes)), replace=False):
            shape = shapes[i]
            duration = round(float(max(shape[4], 0.0)), BEAT_DECIMALS)
            end_s = float(tempo.seconds(start_beat + duration))
            if end_s < duration_s and _wall_fits(start_s, end_s, shape, notes, placed):
                placed.append((start_s, end_s, *(int(v) for v in shape[:4])))
                beats.append(start_beat)
                chosen.append((*shape[:4], duration))
                break
    out = _timed("obstacles", beats, tempo, fps)
    if len(out):
        rows = np.asarray(chosen, dtype=np.float64)
        for k, name in enumerate(("x", "y", "width", "height", "duration_beats")):
            out[name] = rows[:, k]
        out["end_s"] = tempo.seconds(out["beat"] + out["duration_beats"])
        out["duration_s"] = out["end_s"] - out["time_s"]
        out["end_frame"] = frame_of(out["end_s"], fps)
    return out


# --------------------------------------------------------------------------- arcs and chains


def _nearest_note(frame: int, note_frames: np.ndarray, candidates: np.ndarray, rng) -> int:
    """Index (into the notes) of a candidate note nearest to ``frame`` within the tolerance, else -1 (ties: random)."""
    if not len(candidates):
        return -1
    dist = np.abs(note_frames[candidates] - frame)
    best = candidates[dist == dist.min()]
    if dist.min() > NOTE_TOLERANCE_FRAMES:
        return -1
    return int(best[rng.integers(len(best))])


def decode_arcs(onsets, notes: np.ndarray, rows, tempo, rng, fps: int) -> np.ndarray:
    """Arcs joining two notes of one colour in time order (module docstring), as ``arcs`` records.

    ``notes`` are the level's notes sorted by time (NOTE_DTYPE); ``head_note``
    and ``tail_note`` index them. ``rows`` are the priors' arc rows.
    """
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 5)
    colour = np.flatnonzero(notes["color"] != BOMB)
    frames = frame_of(notes["time_s"], fps) if len(notes) else np.zeros(0, np.int64)
    busy_until = {0: -np.inf, 1: -np.inf}
    picked = []
    for f in np.asarray(onsets, dtype=np.int64) if len(rows) else ():
        head = _nearest_note(int(f), frames, colour, rng)
        if head < 0 or notes["beat"][head] < busy_until[int(notes["color"][head])]:
            continue
        c = int(notes["color"][head])
        same = colour[(notes["color"][colour] == c) & (notes["beat"][colour] > notes["beat"][head])]
        k, mu, tmu, mid, _gap = rows[rng.integers(len(rows))]
        if len(same) < int(k) or int(k) < 1:
            continue
        tail = int(same[int(k) - 1])
        busy_until[c] = notes["beat"][tail]
        picked.append((head, tail, mu, tmu, mid))
    out = _timed("arcs", [notes["beat"][h] for h, *_ in picked], tempo, fps)
    for i, (head, tail, mu, tmu, mid) in enumerate(picked):
        out[i]["tail_beat"] = round(float(notes["beat"][tail]), BEAT_DECIMALS)
        for name, src in (("x", "column"), ("y", "row"), ("direction", "direction"), ("color", "color")):
            out[i][name] = notes[src][head]
        for name, src in (("tail_x", "column"), ("tail_y", "row"), ("tail_direction", "direction")):
            out[i][name] = notes[src][tail]
        out[i]["multiplier"], out[i]["tail_multiplier"], out[i]["mid_anchor"] = mu, tmu, int(mid)
        out[i]["head_note"], out[i]["tail_note"] = head, tail
    if len(out):
        out["tail_time_s"] = tempo.seconds(out["tail_beat"])
        out["tail_frame"] = frame_of(out["tail_time_s"], fps)
    return out


def chain_tail_cell(x: int, y: int, direction: int, length: int) -> tuple[int, int] | None:
    """The tail cell ``length`` cells from (x, y) along ``direction``, shortened to stay in the grid; None if none."""
    dx, dy = DIRECTION_VECTORS.get(int(direction), (0, 0))
    for n in range(max(int(length), 1), 0, -1):
        tx, ty = x + dx * n, y + dy * n
        if 0 <= tx <= 3 and 0 <= ty <= 2 and (tx, ty) != (x, y):
            return tx, ty
    return None


def decode_chains(onsets, notes: np.ndarray, rows, tempo, rng, fps: int) -> np.ndarray:
    """Chains whose head is a directional colour note and whose tail follows its cut direction, as ``chains``.

    ``rows`` are the priors' chain rows. A chain ends before the next note of
    its colour (its length in beats is halved until it does); a note heads one chain at most.
    """
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
    heads = np.flatnonzero((notes["color"] != BOMB) & (notes["direction"] != 8))
    frames = frame_of(notes["time_s"], fps) if len(notes) else np.zeros(0, np.int64)
    used, picked = set(), []
    for f in np.asarray(onsets, dtype=np.int64) if len(rows) else ():
        head = _nearest_note(int(f), frames, heads, rng)
        if head < 0 or head in used:
            continue
        slices, squish, cells, beats = rows[rng.integers(len(rows))]
        cell = chain_tail_cell(int(notes["column"][head]), int(notes["row"][head]), int(notes["direction"][head]),
                               int(cells))
        c, b = int(notes["color"][head]), float(notes["beat"][head])
        later = notes["beat"][(notes["color"] == c) & (notes["beat"] > b)]
        limit = float(later.min()) - b if len(later) else np.inf
        length = float(beats) if beats > 0 else 0.25
        while length >= limit and length > 1e-3:
            length /= 2
        if cell is None or length >= limit or length <= 1e-3:
            continue
        used.add(head)
        picked.append((head, cell, int(max(slices, 2)), float(squish) if squish > 0 else 1.0, length))
    out = _timed("chains", [notes["beat"][h] for h, *_ in picked], tempo, fps)
    for i, (head, (tx, ty), slices, squish, length) in enumerate(picked):
        for name, src in (("x", "column"), ("y", "row"), ("direction", "direction"), ("color", "color")):
            out[i][name] = notes[src][head]
        out[i]["tail_beat"] = round(float(out[i]["beat"]) + length, BEAT_DECIMALS)
        out[i]["tail_x"], out[i]["tail_y"], out[i]["slices"], out[i]["squish"] = tx, ty, slices, squish
        out[i]["head_note"] = head
    if len(out):
        out["tail_time_s"] = tempo.seconds(out["tail_beat"])
        out["tail_frame"] = frame_of(out["tail_time_s"], fps)
    return out


# --------------------------------------------------------------------------- lighting


def decode_lights(onsets, rows, per_frame, tempo, rng, fps: int) -> np.ndarray:
    """Light events at ``onsets``: per frame a count drawn from ``per_frame`` and that many distinct-type
    ``(type, value, float_value)`` rows of ``rows``, as ``light_events`` records (time order)."""
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
    counts = np.asarray(per_frame, dtype=np.float64)
    if not len(rows) or counts.sum() <= 0:
        return _timed("light_events", [], tempo, fps)
    p = counts / counts.sum()
    beats, chosen = [], []
    for f in np.asarray(onsets, dtype=np.int64):
        n = int(rng.choice(len(p), p=p)) + 1
        beat = float(tempo.beats(frame_time(int(f), fps)))
        types = set()
        for i in rng.choice(len(rows), min(len(rows), 4 * n), replace=False):
            if len(types) == n:
                break
            if int(rows[i][0]) not in types:
                types.add(int(rows[i][0]))
                beats.append(beat)
                chosen.append(rows[i])
    out = _timed("light_events", beats, tempo, fps)
    if len(out):
        chosen = np.asarray(chosen)
        out["type"], out["value"], out["float_value"] = chosen[:, 0], chosen[:, 1], chosen[:, 2]
    return out


def events_per_onset(priors: dict) -> float:
    """Mean light events per frame holding any, from the priors' ``lights_per_frame`` counts (1 when none)."""
    counts = np.asarray(priors.get("lights_per_frame", []), dtype=np.float64)
    if not len(counts) or counts.sum() <= 0:
        return 1.0
    return float((counts * np.arange(1, len(counts) + 1)).sum() / counts.sum())


def decode_boosts(onsets, tempo, fps: int) -> np.ndarray:
    """Colour-boost events at ``onsets``: on, off, on, ... (a boost lasts until the next event)."""
    out = _timed("boost_events", [tempo.beats(frame_time(int(f), fps)) for f in np.asarray(onsets)], tempo, fps)
    out["on"] = (np.arange(len(out)) % 2 == 0).astype(np.int8)
    return out


# --------------------------------------------------------------------------- every kind


#: A kind this share of the training levels of a difficulty have is in every generated level; a rarer one
#: (arcs, chains, boosts in most corpora) is drawn per song with its share (:func:`kind_present`).
ALWAYS_PRESENT_SHARE = 0.5


def kind_present(priors: dict, kind: str, seed: int, duration_s: float) -> bool:
    """Whether a generated level has ``kind`` at all: a draw with the priors' ``presence`` share.

    The draw depends on the seed, the kind and the song's length in ms, never on the other draws: songs
    differ at one seed, and the difficulties of one song share it, as a mapper's style does (a song
    with arcs at Hard has them wherever the share is higher). A kind that at least
    :data:`ALWAYS_PRESENT_SHARE` of the training levels have is always made (a level without lights
    or walls is the rarer choice, and a poorer default). Priors without ``presence``: True.
    """
    share = priors.get("presence", {}).get(kind, {}).get("share")
    if share is None or share >= ALWAYS_PRESENT_SHARE:
        return True
    kind_index = GENERATED_KINDS.index(kind)
    u = np.random.default_rng([int(seed), kind_index, int(round(duration_s * 1000))]).random()
    return bool(u < float(share))


def _kind_rates(priors: dict, kind: str) -> tuple[float, float | None]:
    """``(rate, cap)`` per minute of a level that has ``kind``: the presence figures, else rates/max_rates."""
    seen = priors.get("presence", {}).get(kind)
    if seen is not None:
        return float(seen["rate"]), float(seen["max_rate"])
    cap = priors.get("max_rates", {}).get(kind)
    return float(priors.get("rates", {}).get(kind, 0.0)), None if cap is None else float(cap)


def decode_objects(event_probs, channels, notes: np.ndarray, priors: dict, thresholds: dict, tempo,
                   duration_s: float, fps: int, seed: int = 0, kinds=GENERATED_KINDS, min_gap_frames: int = 5,
                   smoothing: int = 0) -> dict:
    """Every generated kind of one level: kind -> records (``OBJECT_DTYPES``), kinds not asked for left out.

    Parameters
    ----------
    event_probs : np.ndarray [T, K]
        Stage-1 class-head probabilities (``--targets events``).
    channels : sequence of str
        The name of each of the K channels (``FRAME_EVENT_CHANNELS``).
    notes : np.ndarray
        The level's notes and bombs (NOTE_DTYPE), sorted by time.
    priors : dict
        One difficulty of :class:`ObjectPriors` (:meth:`ObjectPriors.for_difficulty`).
    thresholds : dict
        channel -> validated threshold (a channel absent: the priors' rate).
    tempo : TempoMap
        The level's tempo map (beats of every object).
    duration_s : float
        Length of the audio: no object ends after it.
    fps : int
    seed : int
        Seed of every draw (same inputs and seed, same objects).
    kinds : iterable of str
        Kinds to make (:data:`GENERATED_KINDS`; ``--no-*`` removes some).
    min_gap_frames, smoothing : int
        Peak picking of the onsets (those the thresholds were validated with).
    """
    probs = np.asarray(event_probs, dtype=np.float32)
    rng = np.random.default_rng(int(seed))
    out = {}
    for kind in GENERATED_KINDS:
        if kind not in kinds:
            continue
        channel = ONSET_CHANNELS[kind]
        per_onset = events_per_onset(priors) if kind == "light_events" else 1.0  # rates count events, not onsets
        rate, cap = _kind_rates(priors, kind)
        present = kind_present(priors, kind, seed, duration_s)
        onsets = object_onsets(probs[:, list(channels).index(channel)], thresholds.get(channel),
                               rate / per_onset, duration_s, min_gap_frames, smoothing,
                               None if cap is None else cap / per_onset) if present else np.zeros(0, np.int64)
        if kind == "obstacles":
            out[kind] = decode_walls(onsets, notes, wall_shapes(priors), tempo, duration_s, rng, fps)
        elif kind == "arcs":
            out[kind] = decode_arcs(onsets, notes, priors.get("arcs", []), tempo, rng, fps)
        elif kind == "chains":
            out[kind] = decode_chains(onsets, notes, priors.get("chains", []), tempo, rng, fps)
        elif kind == "light_events":
            out[kind] = decode_lights(onsets, priors.get("lights", []), priors.get("lights_per_frame", [1]), tempo,
                                      rng, fps)
        else:
            out[kind] = decode_boosts(onsets, tempo, fps)
    return out
