"""A swing-state (parity) model of each hand: forehand/backhand swings, resets, parity errors.

Pure numpy/Python; used by ``mapkit evaluate`` and meant for parity-aware
decoding (:func:`next_parity` is the one-step rule). Full definitions with
their sources: docs/evaluate.md, "Flow and playability".

Model
-----
Red notes (colour 0) are the left hand, blue (1) the right; bombs belong to
no hand. Directions: 0 up, 1 down, 2 left, 3 right, 4 up-left, 5 up-right,
6 down-left, 7 down-right, 8 any (dot).

1. **Swings.** The notes of one hand are grouped into swings in time order: a
   note joins the hand's current swing when it comes at most ``merge_s``
   after the swing's last note (stacks, windows, towers), or at most
   ``slider_s`` after it *and* continues the cut (a dot, or its direction
   within 45 degrees of the swing's, and its cell not behind the last
   note's cell along the cut direction: a slider). Otherwise it starts a new
   swing. Notes of one hand at the same time are taken in the order the cut
   meets them (by their position along the direction of the first arrow
   among them; dots only: nearest the hand's previous note first), so a
   swing's first and last notes are where it enters and leaves. A swing's direction is that of its first arrow (non-dot) note; a
   swing of dots only has none.
2. **Parity.** A downward cut (1, 6, 7) is a *forehand*, an upward cut
   (0, 4, 5) a *backhand*: turning the wrist more than 90 degrees from its
   neutral position is not a comfortable swing, so these cuts have one
   parity only. Horizontal cuts (2, 3) and dots fit either parity and take
   the *expected* one. The expected parity of a swing is the opposite of the
   hand's previous swing (swings alternate), or the same when a bomb forces
   a reset (below). A hand's first swing is a forehand unless its direction
   says backhand (hands start up).
3. **Resets.** A swing with the same parity as the hand's previous swing is
   a *reset* (the hand must travel back without cutting). It is a *bomb
   reset* when a bomb forces it, otherwise a *parity error*.
4. **Bomb resets.** A bomb forces a reset when it comes strictly between
   the previous swing's last note and this swing's first note and lies where
   the hand rests after the previous swing: in the same column at or above
   the last note's row after an upward cut (0, 4, 5), at or below after a
   downward cut (1, 6, 7); in the same row at or left of the column after a
   left cut (2), at or right after a right cut (3). (After JoshaParity's
   bomb-reset conditions, MIT; re-derived, simplified to these four cases.)

References: JoshaParity (github.com/Joshabi/JoshaParity, MIT) and
BeatSaber-MapCheck's parity and swing tools (github.com/KivalEvan/BeatSaber-MapCheck,
MIT) were read for the rules; this is an independent, simpler implementation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mapkit.preprocess.notes import BLUE, BOMB, RED
from mapkit.settings import _Settings

FOREHAND, BACKHAND, NO_PARITY = 1, -1, 0
DOT = 8
#: Cut directions whose parity is fixed (a forehand is a downward cut).
FOREHAND_DIRECTIONS = frozenset((1, 6, 7))
BACKHAND_DIRECTIONS = frozenset((0, 4, 5))
#: Unit vector (column step, row step) of each cut direction; a dot has none.
DIRECTION_VECTORS = {0: (0, 1), 1: (0, -1), 2: (-1, 0), 3: (1, 0), 4: (-1, 1), 5: (1, 1), 6: (-1, -1), 7: (1, -1)}
#: Angle in degrees of each cut direction (0 = up, clockwise as seen by the player).
DIRECTION_ANGLES = {0: 0, 5: 45, 3: 90, 7: 135, 1: 180, 6: 225, 2: 270, 4: 315}
HANDS = {RED: "left", BLUE: "right"}

#: One swing: hand 0/1, first/last note index (into the notes given), times, direction (-1: dots only),
#: parity, the cell of its first and last note, reset flags.
SWING_DTYPE = np.dtype([
    ("hand", "i1"), ("first", "<i4"), ("last", "<i4"), ("n_notes", "<i4"),
    ("start_s", "<f8"), ("end_s", "<f8"), ("direction", "i1"), ("parity", "i1"),
    ("first_column", "i1"), ("first_row", "i1"), ("last_column", "i1"), ("last_row", "i1"),
    ("reset", "?"), ("bomb_reset", "?"), ("error", "?"),
])


@dataclass(frozen=True)
class ParitySettings(_Settings):
    """How notes group into swings (seconds). See the module docstring, rule 1."""

    KIND = "parity"

    merge_s: float = 0.08
    slider_s: float = 0.2


def direction_parity(direction: int) -> int:
    """``FOREHAND`` for a downward cut (1, 6, 7), ``BACKHAND`` for an upward one (0, 4, 5), else ``NO_PARITY``.

    >>> direction_parity(1), direction_parity(4), direction_parity(2), direction_parity(8)
    (1, -1, 0, 0)
    """
    if direction in FOREHAND_DIRECTIONS:
        return FOREHAND
    if direction in BACKHAND_DIRECTIONS:
        return BACKHAND
    return NO_PARITY


def next_parity(prev_parity: int, direction: int, bomb_reset: bool = False) -> tuple[int, bool]:
    """The parity of a hand's next swing and whether it is a reset: the one-step rule of the model.

    Parameters
    ----------
    prev_parity : int
        ``FOREHAND``/``BACKHAND`` of the hand's previous swing, or ``NO_PARITY`` before its first swing.
    direction : int
        The new swing's direction (0-7), or 8 / -1 for a swing of dots.
    bomb_reset : bool
        A bomb forces a reset before this swing (:func:`bomb_forces_reset`).

    Returns
    -------
    (parity, reset) : (int, bool)
        ``reset`` is True when ``parity == prev_parity``; it is a parity error
        unless ``bomb_reset``.

    >>> next_parity(FOREHAND, 0), next_parity(FOREHAND, 1), next_parity(FOREHAND, 8)
    ((-1, False), (1, True), (-1, False))
    >>> next_parity(FOREHAND, 8, bomb_reset=True), next_parity(NO_PARITY, 2)
    ((1, True), (1, False))
    """
    fixed = direction_parity(direction)
    if prev_parity == NO_PARITY:
        return (fixed if fixed != NO_PARITY else FOREHAND), False
    expected = prev_parity if bomb_reset else -prev_parity
    parity = fixed if fixed != NO_PARITY else expected
    return parity, parity == prev_parity


def bomb_forces_reset(last_direction: int, column: int, row: int, bomb_columns, bomb_rows) -> bool:
    """Whether any of the bombs lies where the hand rests after a cut in ``last_direction`` ending at (column, row).

    Rule 4 of the module docstring. ``bomb_columns``/``bomb_rows`` are the
    bombs between the two swings; a swing of dots (direction 8 or -1) is never reset by a bomb.
    """
    bc = np.asarray(bomb_columns)
    br = np.asarray(bomb_rows)
    if bc.size == 0:
        return False
    if last_direction in (0, 4, 5):
        hit = (bc == column) & (br >= row)
    elif last_direction in (1, 6, 7):
        hit = (bc == column) & (br <= row)
    elif last_direction == 2:
        hit = (br == row) & (bc <= column)
    elif last_direction == 3:
        hit = (br == row) & (bc >= column)
    else:
        return False
    return bool(hit.any())


def _continues_cut(direction: int, swing_direction: int, dcol: int, drow: int) -> bool:
    """Whether a note (direction, cell step from the last note) continues a swing cut in ``swing_direction``."""
    if swing_direction < 0:  # a swing of dots so far: anything close continues it
        return True
    if direction != DOT:
        diff = abs(DIRECTION_ANGLES[direction] - DIRECTION_ANGLES[swing_direction]) % 360
        if min(diff, 360 - diff) > 45:
            return False
    vx, vy = DIRECTION_VECTORS[swing_direction]
    return dcol * vx + drow * vy >= 0  # not behind the last note along the cut


def group_swings(times, columns, rows, directions, settings: ParitySettings = ParitySettings()) -> list[int]:
    """Swing index (0, 1, ...) of each note of ONE hand, notes in time order (rule 1)."""
    times, columns, rows, directions = (list(map(float, times)), list(map(int, columns)), list(map(int, rows)),
                                        list(map(int, directions)))
    out = []
    swing, swing_dir = 0, -1
    merge_s, slider_s = settings.merge_s, settings.slider_s
    for i, d in enumerate(directions):
        if i > 0:
            gap = times[i] - times[i - 1]
            joins = gap <= merge_s or (
                gap <= slider_s
                and _continues_cut(d, swing_dir, columns[i] - columns[i - 1], rows[i] - rows[i - 1]))
            if not joins:
                swing, swing_dir = swing + 1, -1
        if swing_dir < 0 and d != DOT:
            swing_dir = d
        out.append(swing)
    return out


def _cut_order(idx: list, times: list, cols: list, rows: list, dirs: list) -> list:
    """``idx`` (one hand's notes, time order) with each run of equal times in the order the cut meets them.

    The cut is the direction of the run's first arrow; notes are ordered by
    their position along it (ties keep column/row order), so a swing's first
    and last notes are where it enters and leaves. A run of dots only starts
    with the dot nearest the hand's previous note (of two equally near, the
    one ahead along the hand's last arrow), so a mirrored level gives
    mirrored swings.
    """
    out, k, last_arrow = [], 0, -1
    while k < len(idx):
        m = k
        while m + 1 < len(idx) and times[idx[m + 1]] == times[idx[k]]:
            m += 1
        run = idx[k: m + 1]
        arrows = [dirs[i] for i in run if dirs[i] != DOT]
        if len(run) > 1 and arrows:
            vx, vy = DIRECTION_VECTORS[arrows[0]]
            run = sorted(run, key=lambda i: cols[i] * vx + rows[i] * vy)  # stable: ties keep their order
        elif len(run) > 1 and out:  # dots only: nearest to the hand's previous note first
            c0, r0 = cols[out[-1]], rows[out[-1]]
            vx, vy = DIRECTION_VECTORS.get(last_arrow, (0, 0))  # of equally near ones, the one ahead of the cut
            run = sorted(run, key=lambda i: ((cols[i] - c0) ** 2 + (rows[i] - r0) ** 2,
                                             -((cols[i] - c0) * vx + (rows[i] - r0) * vy)))
        if arrows:
            last_arrow = arrows[-1]
        out.extend(run)
        k = m + 1
    return out


@dataclass
class SwingStates:
    """The parity model's result for a list of notes (see :func:`swing_states`).

    Per note (arrays of the notes' length, in the notes' order): ``hand`` (0
    left/red, 1 right/blue, -1 bomb), ``swing`` (index into ``swings``, -1
    for bombs), ``parity`` (+1 forehand, -1 backhand, 0 bomb),
    ``swing_start`` (the note starts its swing: the first the cut meets), and on swing starts
    ``reset``, ``bomb_reset``, ``error``. ``swings`` is a ``SWING_DTYPE``
    array of all swings of both hands, ordered by hand then time.
    """

    hand: np.ndarray
    swing: np.ndarray
    parity: np.ndarray
    swing_start: np.ndarray
    reset: np.ndarray
    bomb_reset: np.ndarray
    error: np.ndarray
    swings: np.ndarray


def swing_states(notes: np.ndarray, settings: ParitySettings = ParitySettings()) -> SwingStates:
    """Forehand/backhand of every note, its swing, and the reset/error flags of every swing start.

    Parameters
    ----------
    notes : np.ndarray
        ``NOTE_DTYPE`` or ``STORED_NOTE_DTYPE`` records sorted by time (as
        levels, the store and generation give them).
    settings : ParitySettings

    Returns
    -------
    SwingStates
    """
    import bisect

    n = len(notes)
    colors = notes["color"].astype(np.int64)
    hand = np.where(colors == RED, 0, np.where(colors == BLUE, 1, -1)).astype(np.int8)
    times, cols, rows, dirs = (notes[k].tolist() for k in ("time_s", "column", "row", "direction"))
    bombs = np.flatnonzero(colors == BOMB).tolist()
    bomb_t = [times[b] for b in bombs]
    rows_out, member_lists = [], []
    for h in (0, 1):
        idx = _cut_order(np.flatnonzero(hand == h).tolist(), times, cols, rows, dirs)
        if not idx:
            continue
        groups = group_swings([times[i] for i in idx], [cols[i] for i in idx], [rows[i] for i in idx],
                              [dirs[i] for i in idx], settings)
        prev = None  # (parity, end time, direction of its last arrow, last column, last row)
        k = 0
        while k < len(idx):
            m = k
            while m + 1 < len(idx) and groups[m + 1] == groups[k]:
                m += 1
            members = idx[k: m + 1]
            arrows = [dirs[i] for i in members if dirs[i] != DOT]
            direction = arrows[0] if arrows else -1
            first, last = members[0], members[-1]
            forced = False
            if prev is not None and prev[2] >= 0:
                lo = bisect.bisect_right(bomb_t, prev[1])  # bombs strictly between the two swings
                hi = bisect.bisect_left(bomb_t, times[first])
                if lo < hi:
                    between = bombs[lo:hi]
                    forced = bomb_forces_reset(prev[2], prev[3], prev[4], [cols[b] for b in between],
                                               [rows[b] for b in between])
            p, is_reset = next_parity(prev[0] if prev else NO_PARITY, direction, forced)
            member_lists.append(members)
            rows_out.append((h, first, last, len(members), times[first], times[last], direction, p,
                             cols[first], rows[first], cols[last], rows[last],
                             is_reset, is_reset and forced, is_reset and not forced))
            prev = (p, times[last], arrows[-1] if arrows else -1, cols[last], rows[last])
            k = m + 1
    swings = np.array(rows_out, dtype=SWING_DTYPE) if rows_out else np.zeros(0, SWING_DTYPE)
    swing_of = np.full(n, -1, np.int32)
    if member_lists:
        swing_of[np.concatenate(member_lists)] = np.repeat(np.arange(len(member_lists)), [len(m) for m in member_lists])
    parity = np.where(swing_of >= 0, swings["parity"][np.maximum(swing_of, 0)] if len(swings) else 0, 0).astype(np.int8)
    start = np.zeros(n, bool)
    reset, bomb_reset, error = (np.zeros(n, bool) for _ in range(3))
    if len(swings):
        start[swings["first"]] = True
        reset[swings["first"]] = swings["reset"]
        bomb_reset[swings["first"]] = swings["bomb_reset"]
        error[swings["first"]] = swings["error"]
    return SwingStates(hand, swing_of, parity, start, reset, bomb_reset, error, swings)


def parity_errors(notes_or_states, settings: ParitySettings = ParitySettings()) -> dict:
    """Per hand ("left", "right"): ``swings``, ``resets``, ``bomb_resets`` and ``errors`` (parity errors).

    Parameters
    ----------
    notes_or_states : np.ndarray or SwingStates
        Notes (sorted by time), or the :func:`swing_states` of them.
    """
    states = notes_or_states if isinstance(notes_or_states, SwingStates) else swing_states(notes_or_states, settings)
    s = states.swings
    out = {}
    for h, name in ((0, "left"), (1, "right")):
        mine = s[s["hand"] == h]
        out[name] = {"swings": int(len(mine)), "resets": int(mine["reset"].sum()),
                     "bomb_resets": int(mine["bomb_reset"].sum()), "errors": int(mine["error"].sum())}
    return out
