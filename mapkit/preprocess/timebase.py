"""The one time base of mapkit (docs/design.md §1).

Every array lives on a grid of ``FPS`` frames per second; frame ``f`` is centred
on ``t = f / FPS`` seconds. The rules below are the only place where seconds
become frames or samples, where a sample count becomes a frame count, and
where a song's end (its last frame) is timed: feature extraction, targets,
validation, training and generation all call them.
"""

from __future__ import annotations

import numpy as np

#: Frames per second of every array mapkit stores.
FPS = 100


def n_frames(n_samples: int, sample_rate: int, fps: int = FPS) -> int:
    """Number of frames ``T`` of a song of ``n_samples`` samples at ``sample_rate`` Hz.

    ``T = 1 + floor(n_samples * fps / sample_rate)``, in exact integer
    arithmetic (no float rounding at the boundary). This equals the number of
    centred STFT frames with hop ``sample_rate / fps`` when that hop is an
    integer, e.g. ``1 + n // 441`` at 44.1 kHz.

    >>> n_frames(44100, 44100)
    101
    >>> n_frames(44099, 44100)
    100
    """
    n_samples = int(n_samples)
    sample_rate = int(sample_rate)
    if n_samples < 0 or sample_rate <= 0:
        raise ValueError(f"need n_samples >= 0 and sample_rate > 0, got {n_samples}, {sample_rate}")
    return 1 + (n_samples * int(fps)) // sample_rate


def frame_of(seconds, fps: int = FPS):
    """Frame index of an event at ``seconds``: ``round(seconds * fps)``, half away from zero.

    Works on scalars (returns ``int``) and arrays (returns ``int64`` array).
    Python's ``round`` (half to even) and ``np.rint`` are deliberately not used.

    >>> frame_of(0.005), frame_of(0.0149), frame_of(-0.005)
    (1, 1, -1)
    """
    x = np.asarray(seconds, dtype=np.float64) * fps
    f = np.sign(x) * np.floor(np.abs(x) + 0.5)
    if f.ndim == 0:
        return int(f)
    return f.astype(np.int64)


def frame_time(frame, fps: int = FPS):
    """Centre time in seconds of ``frame`` (scalar or array): ``frame / fps``."""
    if np.ndim(frame) == 0:
        return float(frame) / fps
    return np.asarray(frame, dtype=np.float64) / fps


def last_frame_time(n_frames: int, fps: int = FPS) -> float:
    """The time of a song's end for its targets: the centre of its last frame, ``(n_frames - 1) / fps``.

    EOS sits there (the last note's ``gap_next`` runs to it).
    """
    return frame_time(int(n_frames) - 1, fps)


def song_end_beat(tempo, n_frames: int, fps: int = FPS) -> float:
    """The beat of a song's end (:func:`last_frame_time`) by ``tempo`` (anything with ``beats(seconds)``,
    e.g. a :class:`~mapkit.preprocess.tempo.TempoMap`)."""
    return float(tempo.beats(last_frame_time(n_frames, fps)))


def sample_of(seconds, sample_rate: int):
    """Sample index of an event at ``seconds``: ``round(seconds * sample_rate)``, half away from zero (as
    :func:`frame_of`). Scalars give ``int``, arrays ``int64`` arrays."""
    return frame_of(seconds, sample_rate)
