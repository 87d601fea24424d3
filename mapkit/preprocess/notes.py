"""The normalised note record shared by level reading, targets, the store and generation.

A note is (time in seconds, beat, column 0-3, row 0-2, color, direction 0-8).
``color`` is 0 red/left, 1 blue/right, 3 bomb (as in the v2 ``_type``); bombs
carry direction 0 (the game ignores a bomb's direction). Arrays of notes are
numpy structured arrays sorted by (time_s, column, row).
"""

from __future__ import annotations

import numpy as np

RED, BLUE, BOMB = 0, 1, 3
N_COLUMNS, N_ROWS, N_DIRECTIONS = 4, 3, 9

#: One note as read from a level (no frame yet: frames need the time base).
NOTE_DTYPE = np.dtype(
    [
        ("time_s", "<f8"),
        ("beat", "<f8"),
        ("column", "i1"),
        ("row", "i1"),
        ("color", "i1"),
        ("direction", "i1"),
    ]
)

#: A note as stored in ``targets/``: NOTE_DTYPE plus its frame ``round(time_s * fps)``.
STORED_NOTE_DTYPE = np.dtype(
    [
        ("time_s", "<f8"),
        ("beat", "<f8"),
        ("frame", "<i4"),
        ("column", "i1"),
        ("row", "i1"),
        ("color", "i1"),
        ("direction", "i1"),
    ]
)


def sort_notes(notes: np.ndarray) -> np.ndarray:
    """Notes sorted by (time_s, column, row), stable."""
    order = np.lexsort((notes["row"], notes["column"], notes["time_s"]))
    return notes[order]
