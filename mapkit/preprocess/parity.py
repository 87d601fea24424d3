"""A swing-state (parity) model of each hand: forehand/backhand swings, resets, parity errors.

Pure numpy/Python; used by ``mapkit evaluate`` and meant for parity-aware
decoding. Whole levels: :func:`swing_states` (per note: hand, swing,
forehand/backhand, reset and error flags) and :func:`parity_errors` (counts
per hand). Step by step, as a decoder needs it: :class:`HandState` and
:func:`advance_hand` (one hand's notes at one time -> the new state, whether
they start a swing, and ``state.error``); :func:`swing_states` is built on
them, so both give the same answers. :func:`next_parity` is the one-swing
rule. Full definitions with their sources: docs/evaluate.md, "Flow and
playability".

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

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from mapkit.preprocess.notes import BLUE, BOMB, RED
from mapkit.settings import Settings

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
class ParitySettings(Settings):
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


class HandState(NamedTuple):
    """One hand after the notes seen so far: what parity-aware decoding carries from step to step.

    ``parity`` is the parity of the hand's current (latest) swing and
    ``prev_parity`` that of the swing before it (``NO_PARITY``: none yet);
    ``direction`` is the current swing's first arrow (-1: dots so far) and
    ``swing_arrow`` its last arrow (-1: none); ``last_arrow`` is the last
    arrow the hand cut in any swing; ``time``, ``column``, ``row`` are those
    of the hand's latest note (the last its cut met); ``bomb_reset`` says a
    bomb forced the current swing's reset; ``swings`` counts the swings.
    """

    parity: int = NO_PARITY
    prev_parity: int = NO_PARITY
    direction: int = -1
    swing_arrow: int = -1
    last_arrow: int = -1
    time: float = -math.inf
    column: int = -1
    row: int = -1
    bomb_reset: bool = False
    swings: int = 0

    @property
    def reset(self) -> bool:
        """The current swing has the previous swing's parity."""
        return self.parity == self.prev_parity

    @property
    def error(self) -> bool:
        """The current swing is a parity error: a reset no bomb forced."""
        return self.reset and not self.bomb_reset


def cut_order(state: HandState, notes) -> list[int]:
    """Indices of one hand's simultaneous ``notes`` ((column, row, direction) each) in the order the cut meets them.

    The cut is the direction of their first arrow; notes are ordered by
    their position along it (ties keep the given order), so a swing's first
    and last notes are where it enters and leaves. Dots only: the dot nearest
    the hand's previous note first (of two equally near, the one ahead along
    the hand's last arrow), so a mirrored level gives mirrored swings.
    """
    if len(notes) < 2:
        return [0]
    order = list(range(len(notes)))
    arrows = [d for _, _, d in notes if d != DOT]
    if arrows:
        vx, vy = DIRECTION_VECTORS[arrows[0]]
        return sorted(order, key=lambda i: notes[i][0] * vx + notes[i][1] * vy)
    if state.swings:
        c0, r0 = state.column, state.row
        vx, vy = DIRECTION_VECTORS.get(state.last_arrow, (0, 0))
        return sorted(order, key=lambda i: ((notes[i][0] - c0) ** 2 + (notes[i][1] - r0) ** 2,
                                            -((notes[i][0] - c0) * vx + (notes[i][1] - r0) * vy)))
    return order


def advance_hand(state: HandState, time: float, notes, bombs=(), settings: ParitySettings = ParitySettings()
                 ) -> tuple[HandState, bool, list[int]]:
    """Add one hand's notes at one time to its state: the incremental form of the whole model.

    Parameters
    ----------
    state : HandState
        The hand before these notes (``HandState()`` at the start).
    time : float
        Their time in seconds, after ``state.time``.
    notes : sequence of (column, row, direction)
        The hand's notes at ``time`` (at least one).
    bombs : sequence of (column, row)
        The bombs strictly between ``state.time`` and ``time``.
    settings : ParitySettings

    Returns
    -------
    (state, new_swing, order)
        The hand after these notes; whether they start a new swing (else
        they continue the current one: rules 1-4 of the module docstring);
        the notes' indices in the order the cut meets them (:func:`cut_order`).
        ``state.reset``/``state.error``/``state.bomb_reset`` describe the
        current swing.
    """
    order = cut_order(state, notes)
    c, r, d = notes[order[0]]
    arrows = [notes[i][2] for i in order if notes[i][2] != DOT]
    last_c, last_r, _ = notes[order[-1]]
    new = True
    if state.swings:
        gap = time - state.time
        new = not (gap <= settings.merge_s or (
            gap <= settings.slider_s and _continues_cut(d, state.direction, c - state.column, r - state.row)))
    last_arrow = arrows[-1] if arrows else state.last_arrow
    if new:
        forced = bool(bombs) and state.swing_arrow >= 0 and bomb_forces_reset(
            state.swing_arrow, state.column, state.row, [b[0] for b in bombs], [b[1] for b in bombs])
        direction = arrows[0] if arrows else -1
        parity, _ = next_parity(state.parity, direction, forced)
        return HandState(parity, state.parity, direction, arrows[-1] if arrows else -1, last_arrow, time, last_c,
                         last_r, forced, state.swings + 1), True, order
    parity, direction = state.parity, state.direction
    if direction < 0 and arrows:  # the swing's first arrow decides its parity
        direction = arrows[0]
        parity, _ = next_parity(state.prev_parity, direction, state.bomb_reset)
    return HandState(parity, state.prev_parity, direction, arrows[-1] if arrows else state.swing_arrow, last_arrow,
                     time, last_c, last_r, state.bomb_reset, state.swings), False, order


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

    def close(h, members, st):
        first, last = members[0], members[-1]
        member_lists.append(members)
        rows_out.append((h, first, last, len(members), times[first], times[last], st.direction, st.parity,
                         cols[first], rows[first], cols[last], rows[last], st.reset, st.reset and st.bomb_reset,
                         st.error))

    for h in (0, 1):
        idx = np.flatnonzero(hand == h).tolist()
        state, members, k, n_hand = HandState(), [], 0, len(idx)
        while k < n_hand:
            t, m = times[idx[k]], k + 1
            while m < n_hand and times[idx[m]] == t:
                m += 1
            run = idx[k:m]
            between = ()
            if bomb_t and state.swings:
                lo, hi = bisect.bisect_right(bomb_t, state.time), bisect.bisect_left(bomb_t, t)
                between = [(cols[b], rows[b]) for b in bombs[lo:hi]]
            before = state
            state, new, order = advance_hand(state, t, [(cols[i], rows[i], dirs[i]) for i in run], between, settings)
            if new and members:
                close(h, members, before)
                members = []
            members.extend([run[i] for i in order] if m - k > 1 else run)
            k = m
        if members:
            close(h, members, state)
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
