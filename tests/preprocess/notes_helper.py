"""Hand-written notes for the metric tests: (time_s, column, row, color, direction) tuples -> NOTE_DTYPE."""

import numpy as np

from mapkit.preprocess.notes import NOTE_DTYPE, sort_notes


def make_notes(rows, bpm: float = 120.0) -> np.ndarray:
    """Notes sorted by time; the beat is ``time_s * bpm / 60`` (one constant tempo)."""
    arr = np.zeros(len(rows), dtype=NOTE_DTYPE)
    for i, (t, c, r, color, d) in enumerate(rows):
        arr[i] = (t, t * bpm / 60.0, c, r, color, d)
    return sort_notes(arr)
