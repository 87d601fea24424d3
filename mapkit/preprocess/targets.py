"""Training targets from normalised notes (docs/design.md §3). Pure functions.

Stage 1, per frame (``frame_class``, uint8, length T):
    0 empty, 1 red only, 2 blue only, 3 red and blue, 4 bombs only.
    Bombs decide the class only when no colour note shares the frame.

Stage 2, per note-bearing frame, a *state*: the 12-cell grid (cell = 4*row + column)
with value 0 empty, ``1 + 9*color + direction`` for a colour note, 19 for a bomb.
States become tokens through a :class:`Vocabulary`: PAD 0, BOS 1, EOS 2, UNK 3,
then state rank + 4. An unseen state becomes UNK, never dropped.

Token positions: BOS sits on frame -1 and EOS on frame T, i.e. on the first and
last padding row of the stage-2 features (which are padded by one frame each
side), so ``token_frames`` is strictly increasing and every token has a feature
row: padded row = frame + 1.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass

import numpy as np

from mapkit.preprocess.notes import BLUE, BOMB, N_COLUMNS, N_DIRECTIONS, N_ROWS, NOTE_DTYPE, RED, sort_notes
from mapkit.preprocess.timebase import FPS, last_frame_time

EMPTY, RED_ONLY, BLUE_ONLY, RED_AND_BLUE, BOMBS_ONLY = 0, 1, 2, 3, 4
N_CELLS = N_COLUMNS * N_ROWS
BOMB_VALUE = 19
PAD, BOS, EOS, UNK = 0, 1, 2, 3
N_SPECIAL = 4
SPECIAL_TOKENS = {"PAD": PAD, "BOS": BOS, "EOS": EOS, "UNK": UNK}


def frame_class(frames: np.ndarray, colors: np.ndarray, n_frames: int) -> np.ndarray:
    """Stage-1 class of every frame: uint8 array of length ``n_frames``.

    ``frames`` and ``colors`` describe the notes (color 0 red, 1 blue, 3 bomb).
    All frames must lie in [0, n_frames): notes outside are the caller's to drop.
    """
    frames = np.asarray(frames, dtype=np.int64)
    colors = np.asarray(colors)
    if frames.size and (frames.min() < 0 or frames.max() >= n_frames):
        raise ValueError(f"note frames must lie in [0, {n_frames}), got [{frames.min()}, {frames.max()}]")
    red = np.zeros(n_frames, dtype=bool)
    blue = np.zeros(n_frames, dtype=bool)
    bomb = np.zeros(n_frames, dtype=bool)
    red[frames[colors == RED]] = True
    blue[frames[colors == BLUE]] = True
    bomb[frames[colors == BOMB]] = True
    out = (red * RED_ONLY + blue * BLUE_ONLY).astype(np.uint8)  # 1, 2 or 3
    out[(out == EMPTY) & bomb] = BOMBS_ONLY
    return out


def cell_values(colors: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Grid cell value of each note: ``1 + 9*color + direction`` (1..18), 19 for a bomb."""
    colors = np.asarray(colors, dtype=np.int64)
    directions = np.asarray(directions, dtype=np.int64)
    return np.where(colors == BOMB, BOMB_VALUE, 1 + 9 * colors + directions).astype(np.uint8)


def note_states(frames, columns, rows, colors, directions):
    """Group notes by frame into 12-cell states.

    Returns ``(state_frames [n] int64, states [n, 12] uint8, collisions)``, frames
    ascending. Notes must be sorted by time (as levels are): when two notes fall
    in one cell on one frame the later one wins and ``collisions`` counts it.
    """
    frames = np.asarray(frames, dtype=np.int64)
    if frames.size == 0:
        return np.zeros(0, np.int64), np.zeros((0, N_CELLS), np.uint8), 0
    state_frames, inverse = np.unique(frames, return_inverse=True)
    states = np.zeros((len(state_frames), N_CELLS), dtype=np.uint8)
    cells = 4 * np.asarray(rows, dtype=np.int64) + np.asarray(columns, dtype=np.int64)
    flat = inverse * N_CELLS + cells
    collisions = int(len(flat) - len(np.unique(flat)))
    # numpy fancy assignment keeps the last write for repeated indices
    states.reshape(-1)[flat] = cell_values(colors, directions)
    return state_frames, states, collisions


def state_notes(state) -> list[tuple[int, int, int, int]]:
    """The notes of one state as (column, row, color, direction); bombs get direction 0."""
    out = []
    for cell, v in enumerate(np.asarray(state).tolist()):
        if v == 0:
            continue
        column, row = cell % N_COLUMNS, cell // N_COLUMNS
        if v == BOMB_VALUE:
            out.append((column, row, BOMB, 0))
        else:
            out.append((column, row, (v - 1) // N_DIRECTIONS, (v - 1) % N_DIRECTIONS))
    return out


@dataclass(frozen=True)
class Vocabulary:
    """Top-k states by count; token = rank + 4 (PAD 0, BOS 1, EOS 2, UNK 3).

    ``states`` are 12-tuples sorted by descending count, ties broken by the state
    itself (ascending), so the same counts always give the same vocabulary.
    """

    states: tuple
    counts: tuple

    @classmethod
    def from_counts(cls, counts: Counter | dict, size: int) -> "Vocabulary":
        ranked = sorted(((tuple(int(x) for x in s), int(c)) for s, c in counts.items()), key=lambda sc: (-sc[1], sc[0]))
        ranked = ranked[:size]
        return cls(tuple(s for s, _ in ranked), tuple(c for _, c in ranked))

    def __len__(self) -> int:
        """Number of tokens, specials included."""
        return N_SPECIAL + len(self.states)

    @property
    def size(self) -> int:
        return len(self)

    def _lookup(self) -> dict:
        lut = self.__dict__.get("_lut")
        if lut is None:
            lut = {s: i + N_SPECIAL for i, s in enumerate(self.states)}
            object.__setattr__(self, "_lut", lut)
        return lut

    def _byte_lookup(self) -> dict:
        lut = self.__dict__.get("_byte_lut")
        if lut is None:
            lut = {bytes(s): i + N_SPECIAL for i, s in enumerate(self.states) if all(0 <= x <= 255 for x in s)}
            object.__setattr__(self, "_byte_lut", lut)
        return lut

    def encode(self, states: np.ndarray) -> np.ndarray:
        """Tokens (int32) of ``states`` [n, 12]; unseen states become UNK."""
        states = np.asarray(states)
        if states.ndim != 2 or len(states) == 0:
            lut = self._lookup()
            return np.array([lut.get(tuple(int(x) for x in s), UNK) for s in states], dtype=np.int32)
        # rows as raw bytes: one dict lookup per state, ~30x faster than building tuples
        in_range = np.all((states >= 0) & (states <= 255), axis=1)
        rows = np.ascontiguousarray(np.where(in_range[:, None], states, 0), dtype=np.uint8)
        lut = self._byte_lookup()
        out = np.array([lut.get(k, UNK) for k in rows.view(f"V{rows.shape[1]}").ravel().tolist()], dtype=np.int32)
        for i in np.flatnonzero(~in_range):  # values no uint8 holds: compared exactly, as ints
            out[i] = self._lookup().get(tuple(int(x) for x in states[i]), UNK)
        return out

    def decode(self, token: int):
        """The 12-tuple state of a state token, or None for a special token."""
        token = int(token)
        if token < N_SPECIAL:
            return None
        return self.states[token - N_SPECIAL]

    @property
    def hash(self) -> str:
        payload = json.dumps({"special": SPECIAL_TOKENS, "states": [list(s) for s in self.states]}, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def to_json(self) -> dict:
        return {
            "special_tokens": SPECIAL_TOKENS,
            "size": len(self),
            "states": [list(s) for s in self.states],
            "counts": list(self.counts),
            "hash": self.hash,
        }

    @classmethod
    def from_json(cls, d: dict) -> "Vocabulary":
        vocab = cls(tuple(tuple(int(x) for x in s) for s in d["states"]), tuple(int(c) for c in d["counts"]))
        if d.get("special_tokens", SPECIAL_TOKENS) != SPECIAL_TOKENS:
            raise ValueError(f"vocabulary special tokens {d.get('special_tokens')} != {SPECIAL_TOKENS}")
        if "hash" in d and d["hash"] != vocab.hash:
            raise ValueError(f"vocabulary hash {d['hash']} does not match its states ({vocab.hash})")
        return vocab


@dataclass
class TokenSequence:
    """Stage-2 target of one level: n note-bearing frames -> n+2 tokens (BOS, states, EOS)."""

    tokens: np.ndarray  # [n+2] int32
    token_frames: np.ndarray  # [n+2] int32, BOS on -1, EOS on n_frames
    gap_prev_s: np.ndarray  # [n+2] float32
    gap_next_s: np.ndarray
    gap_prev_beats: np.ndarray
    gap_next_beats: np.ndarray


def token_sequence(state_frames, state_tokens, state_times_s, state_beats, n_frames: int, end_beat: float,
                   fps: int = FPS) -> TokenSequence:
    """Tokens, their frames and the gaps to the previous/next note, in seconds and beats.

    ``state_times_s``/``state_beats`` are the time and beat of each state (the
    earliest note of its frame). BOS counts as time 0 s / beat 0 and EOS as the
    end of the song: the last frame's time ``frame_time(n_frames - 1)`` and
    ``end_beat``. So the first note's previous gap is its time from the start
    and the last note's next gap is its time to the end. BOS has gap_prev 0 and EOS gap_next 0. Gaps are
    float32, never truncated.
    """
    end_s = last_frame_time(n_frames, fps)
    times = np.concatenate([[0.0], np.asarray(state_times_s, np.float64), [end_s]])
    beats = np.concatenate([[0.0], np.asarray(state_beats, np.float64), [float(end_beat)]])
    dt, db = np.diff(times), np.diff(beats)
    zero = np.zeros(1)
    return TokenSequence(
        tokens=np.concatenate([[BOS], np.asarray(state_tokens, np.int32), [EOS]]).astype(np.int32),
        token_frames=np.concatenate([[-1], np.asarray(state_frames, np.int64), [n_frames]]).astype(np.int32),
        gap_prev_s=np.concatenate([zero, dt]).astype(np.float32),
        gap_next_s=np.concatenate([dt, zero]).astype(np.float32),
        gap_prev_beats=np.concatenate([zero, db]).astype(np.float32),
        gap_next_beats=np.concatenate([db, zero]).astype(np.float32),
    )


def one_hot_states(tokens: np.ndarray, vocab: Vocabulary) -> np.ndarray:
    """The seed design's one-hot grid tensor [n, 12, 20] (cell value one-hot) made from tokens.

    Special tokens (and UNK, whose state is unknown) give all-zero rows.
    """
    out = np.zeros((len(tokens), N_CELLS, BOMB_VALUE + 1), dtype=np.float32)
    for i, t in enumerate(np.asarray(tokens).tolist()):
        s = vocab.decode(t)
        if s is not None:
            out[i, np.arange(N_CELLS), np.asarray(s)] = 1.0
    return out


def notes_from_states(times_s: np.ndarray, beats: np.ndarray, states) -> np.ndarray:
    """Notes (``NOTE_DTYPE``, sorted) of one 12-cell state per time.

    ``states[i]`` is the 12-tuple state at ``times_s[i]`` / ``beats[i]``.
    """
    rows = []
    for t, b, state in zip(times_s, beats, states):
        rows.extend((float(t), float(b), column, row, color, direction)
                    for column, row, color, direction in state_notes(state))
    return sort_notes(np.array(rows, dtype=NOTE_DTYPE))
