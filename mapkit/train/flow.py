"""Playable flow as a decoding constraint: swing parity, vision blocks and collisions (docs/design.md §7).

At every note time, stage 2 picks one *state* (the layout of all notes on one
frame). :class:`FlowConstraint` says, for each decoded prefix (a beam, or a
sampled sequence), which next states would break the flow rules of ``mapkit
evaluate`` (the same definitions, the same settings):

- **parity** (:mod:`mapkit.preprocess.parity`): a state is refused when, for
  either hand, its notes start a swing with the previous swing's parity (or
  give the current swing of dots that parity) and no bomb between the swings
  forces the reset: a parity error as ``evaluate`` counts it. The hands'
  states (:class:`~mapkit.preprocess.parity.HandState`) are advanced with
  :func:`~mapkit.preprocess.parity.advance_hand`, exactly as ``evaluate``
  builds them, so a decoded level has no parity error ``evaluate`` would see
  wherever a legal state existed;
- **vision blocks** (:func:`mapkit.preprocess.quality.vision_blocked`): a
  state is refused when it puts a note (or bomb) in a column hidden by a centre
  note (column 1 or 2, row 1) of an earlier state ``VISION_WINDOWS[difficulty]``
  seconds before;
- **collisions** (:func:`mapkit.preprocess.quality.colliding_pairs`): a state
  whose own notes collide (two in one cell, or an arrow whose cut path crosses
  a bomb or the other hand's note) is refused. Collisions only happen within
  one frame, so this is a fixed property of the state.

When every allowed state of a prefix breaks a rule, nothing is refused for it
(the model's best is taken) and the pick is counted as a violation
(:meth:`FlowConstraint.violations`). A pause does not excuse a reset: as in
``evaluate``, only a bomb does.

Speed: the features the rules need (per hand: whether the state has an arrow,
the parity of its first arrow, the cell and direction of the note the cut
meets first; the state's vision and collision flags) are computed once per
vocabulary as arrays (:class:`StateFeatures`), and each step checks every
state of every row at once with numpy; only the picked states advance the
hand states (two :func:`advance_hand` calls per row and step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from mapkit.preprocess.notes import BLUE, BOMB, NOTE_DTYPE, RED
from mapkit.preprocess.parity import (DIRECTION_ANGLES, DIRECTION_VECTORS, DOT, NO_PARITY, HandState, ParitySettings,
                                      advance_hand, bomb_forces_reset, cut_order, direction_parity)
from mapkit.preprocess.quality import CENTRE_BLOCKERS, VISION_WINDOWS, EvaluateSettings, colliding_pairs
from mapkit.preprocess.targets import N_SPECIAL, state_notes
from mapkit.settings import Settings

_EPS = 1e-9  # as quality.vision_blocked: window edges are inclusive despite float rounding
#: Angle of each direction 0-8 (a dot: NaN, it never breaks the angle test of a slider).
_ANGLES = np.array([DIRECTION_ANGLES.get(d, np.nan) for d in range(9)], dtype=np.float64)


@dataclass(frozen=True)
class FlowSettings(Settings):
    """Which rules decoding enforces; the swing grouping comes from ``evaluate`` (:class:`EvaluateSettings`)."""

    KIND = "flow"

    parity: bool = True
    vision: bool = True
    collisions: bool = True
    swing_merge_s: float = EvaluateSettings.swing_merge_s
    slider_s: float = EvaluateSettings.slider_s

    @property
    def parity_settings(self) -> ParitySettings:
        return ParitySettings(merge_s=self.swing_merge_s, slider_s=self.slider_s)


class StateFeatures(NamedTuple):
    """What the rules need of every token of a vocabulary, as arrays ``[vocab]`` (``[2, vocab]`` per hand).

    ``state`` marks state tokens (not PAD/BOS/EOS/UNK). Per hand (0 left/red,
    1 right/blue): ``arrow`` (the hand has an arrow), ``parity`` (of its first
    arrow in cut order: +1 forehand, -1 backhand, 0 sideways), ``first_column``,
    ``first_row``, ``first_direction`` (the note the cut meets first, when the
    hand has an arrow). ``collides``: the state's notes collide. ``hides``
    ``[2, vocab]``: a note or bomb in the columns hidden by blocker 0 (1, 1)
    and blocker 1 (2, 1) of ``CENTRE_BLOCKERS``; ``centre`` ``[2, vocab]``:
    a note or bomb on that blocker's cell. ``notes``: per token, the hands'
    notes ``((column, row, direction), ...)`` and the bombs ``((column, row), ...)``.
    """

    state: np.ndarray
    arrow: np.ndarray
    parity: np.ndarray
    first_column: np.ndarray
    first_row: np.ndarray
    first_direction: np.ndarray
    collides: np.ndarray
    hides: np.ndarray
    centre: np.ndarray
    notes: tuple


def state_features(states) -> StateFeatures:
    """:class:`StateFeatures` of ``states``: one 12-tuple state per token from ``N_SPECIAL`` on (a vocabulary's)."""
    n = N_SPECIAL + len(states)
    is_state = np.zeros(n, bool)
    arrow = np.zeros((2, n), bool)
    parity, first_col, first_row, first_dir = (np.zeros((2, n), np.int64) for _ in range(4))
    collides = np.zeros(n, bool)
    hides, centre = np.zeros((2, n), bool), np.zeros((2, n), bool)
    notes: list = [((), (), ())] * N_SPECIAL
    blockers = list(CENTRE_BLOCKERS.items())
    for token, state in enumerate(states, start=N_SPECIAL):
        is_state[token] = True
        cells = state_notes(state)
        # in the order evaluate meets them (sort_notes: column, then row): the first arrow sets the cut's order
        hands = tuple(tuple(sorted((c, r, d) for c, r, color, d in cells if color == hand)) for hand in (RED, BLUE))
        bombs = tuple((c, r) for c, r, color, _ in cells if color == BOMB)
        notes.append((*hands, bombs))
        for h, mine in enumerate(hands):
            if any(d != DOT for _, _, d in mine):
                order = cut_order(HandState(), mine)  # state-independent when the hand has an arrow
                first = mine[order[0]]
                arrow[h, token] = True
                parity[h, token] = direction_parity(next(mine[i][2] for i in order if mine[i][2] != DOT))
                first_col[h, token], first_row[h, token], first_dir[h, token] = first
        for b, ((col, row), hidden) in enumerate(blockers):
            hides[b, token] = any(c in hidden for c, _, _, _ in cells)
            centre[b, token] = any(c == col and r == row for c, r, _, _ in cells)
        collides[token] = bool(colliding_pairs(_one_frame(cells)))
    return StateFeatures(is_state, arrow, parity, first_col, first_row, first_dir, collides, hides, centre,
                         tuple(notes))


def _one_frame(cells) -> np.ndarray:
    """The notes of one state as ``NOTE_DTYPE`` records at time 0 (for :func:`colliding_pairs`)."""
    return np.array([(0.0, 0.0, c, r, color, d) for c, r, color, d in cells], dtype=NOTE_DTYPE)


class _Row(NamedTuple):
    """One decoded prefix: both hands, the bombs that may still force a reset, recent centre notes, violations."""

    hands: tuple = (HandState(), HandState())
    bombs: tuple = ()  # (time, column, row)
    centres: tuple = ()  # (time, blocker index)
    violations: int = 0


#: tokens :meth:`FlowConstraint.rejoins` checks before giving up (a hand's state is the same as another's after
#: its next two swings with the same notes; 32 states leave room for one-handed runs)
REJOIN_HORIZON = 32


def same_rules(a: _Row, b: _Row) -> bool:
    """Whether two row states meet the same rules with any next states: equal but for the violations counted and
    how many swings each hand has had beyond the first (only whether it has had one matters)."""
    def key(row):
        hands = tuple(h._replace(swings=min(h.swings, 1)) for h in row.hands)
        return hands, row.bombs, row.centres

    return key(a) == key(b)


class FlowConstraint:
    """Per-step masks of the states that keep the flow playable, for :mod:`mapkit.train.decoding`.

    Parameters
    ----------
    features : StateFeatures
        Of the decoding vocabulary (:func:`state_features`; compute once per vocabulary).
    times_s : array [n_tokens]
        The time in seconds of each note time (token 1 .. n of the sequence).
    difficulty : str
        Canonical difficulty: the vision-block window (``VISION_WINDOWS``).
    settings : FlowSettings

    The decoder calls :meth:`begin` with its windows, then per step :meth:`mask`
    (before picking) and :meth:`append` (with the picked tokens and the rows
    they extend, as ``_Stepper.append``).
    """

    def __init__(self, features: StateFeatures, times_s, difficulty: str = "Expert",
                 settings: FlowSettings = FlowSettings()):
        self.features, self.settings, self.difficulty = features, settings, difficulty
        self.times = np.asarray(times_s, dtype=np.float64)
        self.vision_window = VISION_WINDOWS.get(difficulty)
        self.parity = settings.parity_settings
        self.rows: list[_Row] = []
        self._last_bad: np.ndarray | None = None
        self._table: list | None = None
        self._times_at: tuple | None = None
        self._seed = _Row()

    def begin(self, starts: list[int], per_window: int) -> None:
        """Start ``len(starts) * per_window`` rows (empty, or :meth:`window`'s history); window ``g``'s first
        state is token ``starts[g]``."""
        self.starts, self.per_window, self.step = list(starts), per_window, 0
        self._times_at = None
        self.rows = [self._seed for _ in range(len(starts) * per_window)]

    def replay(self, tokens) -> np.ndarray:
        """Bool per state of ``tokens`` (state tokens 1..n of one sequence, no BOS): the pick broke an enabled rule.

        The states are fed one by one as a decoder would, from the same start
        (:meth:`begin` with one row), so this is what :meth:`violations` counts,
        for any sequence: e.g. one stitched from windows decoded apart.
        """
        copy = FlowConstraint(self.features, self.times, self.difficulty, self.settings)
        copy._seed, copy._table = self._seed, self._table
        copy.begin([1], 1)
        allowed = np.ones((1, len(self.features.state)), bool)
        broke = []
        for t in np.asarray(tokens).tolist():
            copy.mask(allowed)
            broke.append(bool(copy._last_bad[0, t]))
            copy.append(np.array([t]))
        return np.array(broke, bool)

    def window(self, first: int, n_states: int, history) -> "FlowConstraint":
        """The constraint of states ``first .. first + n_states - 1`` decoded alone (as tokens 1..n_states),
        its rows starting after the states ``history`` (tokens 1 .. first - 1 of the sequence)."""
        sub = FlowConstraint(self.features, self.times[first - 1: first - 1 + n_states], self.difficulty,
                             self.settings)
        row = self._seed
        for k, t in enumerate(np.asarray(history).tolist()):
            row = self._advance(row, t, float(self.times[k]), False)
        sub._seed, sub._table = row._replace(violations=0), self._table
        return sub

    def path(self, tokens) -> list:
        """The row states along ``tokens`` (states 1..n of this constraint's sequence, no BOS) from its start:
        ``n + 1`` states, the start first. Picks are not checked (``violations`` stays as it starts)."""
        rows = [self._seed]
        for k, t in enumerate(np.asarray(tokens).tolist()):
            rows.append(self._advance(rows[-1], t, float(self.times[k]), False))
        return rows

    def rejoins(self, r: int, tokens, reference: list, horizon: int = REJOIN_HORIZON) -> bool:
        """Whether row ``r`` may go on with ``tokens`` (the next states) and keep every rule.

        ``reference[j]`` is the row state another decode of the same states
        had before ``tokens[j]`` (:meth:`path`), whose picks kept the rules
        from there on. The tokens are checked one by one from row ``r``'s
        state until that state is :func:`same_rules` as the reference's
        (from then on both meet the same rules, so the rest keeps them as it
        did there); ``False`` when a token breaks a rule first, or when the
        states have not met within ``horizon`` tokens.
        """
        row, first = self.rows[r], self.starts[r // self.per_window] + self.step  # token index of tokens[0]
        for j, t in enumerate(np.asarray(tokens[:horizon + 1]).tolist()):
            if same_rules(row, reference[j]):
                return True
            if j == horizon:
                return False
            time = self.times[min(first + j, len(self.times)) - 1]
            bad, vision = self.bad([row], np.array([time]))
            if bad[0, t] or vision[0, t]:
                return False
            row = self._advance(row, t, float(time), False)
        return True

    def _row_times(self) -> np.ndarray:
        """The time of the note each row decodes at this step (computed once per step)."""
        if self._times_at is None or self._times_at[0] != self.step:
            index = np.repeat(np.asarray(self.starts) + self.step, self.per_window)  # token index, BOS = 0
            self._times_at = (self.step, self.times[np.minimum(index, len(self.times)) - 1])
        return self._times_at[1]

    def bad(self, rows: list | None = None, times: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Bool ``[rows, vocab]`` each: the states that would break the parity or collision rule; the vision rule.

        Of this step's rows at their note times, or of the given ``rows``
        (``_Row`` states) at ``times`` (seconds, one per row).
        """
        f = self.features
        rows, times = (self.rows, self._row_times()) if rows is None else (rows, np.asarray(times, np.float64))
        bad = np.zeros((len(rows), len(f.state)), bool)
        if self.settings.parity:
            for h in (0, 1):
                bad |= self._parity_errors(h, times, rows)
        if self.settings.collisions:
            bad |= f.collides[None, :]
        vision = np.zeros_like(bad)
        if self.settings.vision and self.vision_window is not None:
            vision = self._vision_blocks(times, rows)
        return bad, vision

    def mask(self, allowed: np.ndarray) -> np.ndarray:
        """``allowed`` ``[rows, vocab]`` without the states that break a rule, for every row that keeps one.

        A row where every allowed state breaks some rule keeps those that
        break only the vision rule (a parity error or a collision is worse than
        a hidden note); where none does, all its allowed states.
        """
        bad, vision = self.bad()
        keep = allowed & ~bad
        strict = keep & ~vision
        full = strict.any(axis=1)
        keep[full] = strict[full]
        empty = ~keep.any(axis=1)
        keep[empty] = allowed[empty]
        self._last_bad = bad | vision
        return keep

    def append(self, tokens, rows=None) -> None:
        """Extend row ``rows[b]`` (default ``b``) by state ``tokens[b]``; advances that row's hands."""
        tokens = np.asarray(tokens).tolist()
        rows = list(range(len(tokens))) if rows is None else np.asarray(rows).tolist()
        times = self._row_times()
        bad = self._last_bad
        self.rows = [self._advance(self.rows[r], tokens[b], float(times[b]),
                                   bool(bad is not None and bad[r, tokens[b]])) for b, r in enumerate(rows)]
        self._last_bad = None
        self.step += 1

    def violations(self, rows) -> int:
        """Picks that broke a rule (no legal state was left), summed over ``rows``."""
        return int(sum(self.rows[r].violations for r in rows))

    def _advance(self, row: _Row, token: int, t: float, violated: bool) -> _Row:
        left, right, bombs = self.features.notes[token] if token < len(self.features.notes) else ((), (), ())
        hands = list(row.hands)
        for h, mine in enumerate((left, right)):
            if mine:
                state = hands[h]
                between = [(c, r) for bt, c, r in row.bombs if state.time < bt < t] if state.swings else ()
                hands[h] = advance_hand(state, t, mine, between, self.parity)[0]
        started = [hs.time for hs in hands if hs.swings]
        floor = min(started) if started else np.inf  # bombs no hand can still be reset by are dropped
        kept = tuple(b for b in row.bombs if b[0] > floor) + tuple((t, c, r) for c, r in bombs if t > floor)
        centres = row.centres
        if self.vision_window is not None:
            hi = self.vision_window[1]
            centres = tuple(c for c in centres if c[0] >= t - hi - 1.0)
            centres += tuple((t, b) for b in range(2) if token < len(self.features.state)
                             and self.features.centre[b, token])
        return _Row(tuple(hands), kept, centres, row.violations + int(violated))

    def _tables(self) -> list:
        """Per hand: ``(parity -> arrow states of that parity, direction -> states whose first note may slide on
        a cut in that direction, direction -> their first note's step along it)``, ``[vocab]`` each."""
        f, out = self.features, []
        for h in (0, 1):
            same = {p: f.arrow[h] & (f.parity[h] == p) for p in (-1, 1)}
            angle = _ANGLES[f.first_direction[h]]
            close, along = {}, {}
            for d, (vx, vy) in DIRECTION_VECTORS.items():
                diff = np.abs(angle - DIRECTION_ANGLES[d]) % 360
                close[d] = (np.minimum(diff, 360 - diff) <= 45) | (f.first_direction[h] == DOT)
                along[d] = f.first_column[h] * vx + f.first_row[h] * vy
            out.append((same, close, along))
        return out

    def _parity_errors(self, h: int, times: np.ndarray, rows: list) -> np.ndarray:
        """Bool ``[rows, vocab]``: the state gives hand ``h`` a parity error (see the module notes).

        Per row, :func:`advance_hand`'s rule over all states at once: whether
        the hand's first note joins the current swing (within ``merge_s``, or
        within ``slider_s`` continuing the cut) and, if it starts a new swing,
        whether its first arrow repeats the last swing's parity with no bomb
        forcing the reset; if it joins a swing of dots, whether its first arrow
        gives that swing the previous swing's parity.
        """
        if self._table is None:
            self._table = self._tables()
        same, close, along = self._table[h]
        out = np.zeros((len(rows), len(self.features.state)), bool)
        for i, (row, t) in enumerate(zip(rows, times.tolist())):
            s = row.hands[h]
            if not s.swings:
                continue
            gap = t - s.time
            if gap <= self.parity.merge_s or (gap <= self.parity.slider_s and s.direction < 0):
                joins = True
            elif gap <= self.parity.slider_s:
                vx, vy = DIRECTION_VECTORS[s.direction]
                joins = close[s.direction] & (along[s.direction] >= s.column * vx + s.row * vy)
            else:
                joins = False
            if joins is not True and s.parity != NO_PARITY and not self._bomb_reset(row, s, t):
                out[i] = same[s.parity] if joins is False else same[s.parity] & ~joins
            if joins is not False and s.direction < 0 and s.prev_parity != NO_PARITY and not s.bomb_reset:
                out[i] |= same[s.prev_parity] if joins is True else same[s.prev_parity] & joins
        return out

    @staticmethod
    def _bomb_reset(row: _Row, state: HandState, t: float) -> bool:
        """Whether the bombs between the hand's last note and ``t`` force its next swing's reset."""
        if not row.bombs or state.swing_arrow < 0:
            return False
        between = [(c, r) for bt, c, r in row.bombs if state.time < bt < t]
        return bool(between) and bomb_forces_reset(state.swing_arrow, state.column, state.row,
                                                   [b[0] for b in between], [b[1] for b in between])

    def _vision_blocks(self, times: np.ndarray, rows: list) -> np.ndarray:
        """Bool ``[rows, vocab]``: the state has a note hidden by a centre note of the row ``lo..hi`` s before,
        or its centre notes would hide all four columns at a later note time (which no state could then fill).

        The later note times a centre note at ``t`` hides are those in
        ``[t + lo, t + hi]``; one of the other side's, at ``ct <= t``, still
        hides the first of them (the earliest at or after ``t + lo``) when it
        is at most ``ct + hi``.
        """
        lo, hi = self.vision_window
        f = self.features
        out = np.zeros((len(rows), len(f.state)), bool)
        both = f.centre[0] & f.centre[1]
        following = np.searchsorted(self.times, times + lo - _EPS)
        n = len(self.times)
        for i, (row, t) in enumerate(zip(rows, times.tolist())):
            hidden, latest = [False, False], [-np.inf, -np.inf]
            for ct, b in row.centres:
                hidden[b] = hidden[b] or t - hi - _EPS <= ct <= t - lo + _EPS
                latest[b] = max(latest[b], ct)
            for b in (0, 1):
                if hidden[b]:
                    out[i] |= f.hides[b]
            k = int(following[i])
            if k < n and self.times[k] <= t + hi + _EPS:  # a later note time this state's centre notes would hide
                out[i] |= both
                for b in (0, 1):
                    if latest[1 - b] + hi + _EPS >= self.times[k]:
                        out[i] |= f.centre[b]
        return out

_FEATURES: dict = {}


def vocab_features(vocab) -> StateFeatures:
    """:func:`state_features` of a :class:`~mapkit.preprocess.targets.Vocabulary`, computed once per vocabulary hash."""
    key = vocab.hash
    if key not in _FEATURES:
        _FEATURES.clear()  # one vocabulary at a time is what generation uses
        _FEATURES[key] = state_features(vocab.states)
    return _FEATURES[key]
