"""A song's beats from its audio: onset envelope, one global tempo, beats snapped to a grid. Pure numpy.

``mapkit generate`` times the notes it places with these (docs/design.md §7):
one constant BPM estimated from the audio (:func:`estimate_tempo` of
:func:`onset_envelope`), beat 0 at audio time 0, beats optionally moved onto
a 1/16 grid where the note stays on its frame (:func:`snap_beats`), and
written with the fewest decimals that keep it there (:func:`short_beats`).
"""

from __future__ import annotations

import math

import numpy as np

from mapkit.preprocess.tempo import TempoMap
from mapkit.preprocess.timebase import FPS, frame_of

#: Grid divisions per beat of snapping, and how far (s) a note may move onto the grid.
SNAP_DIVISIONS = 16
SNAP_TOLERANCE_S = 0.010
#: Tempo search range and prior (log-normal around 120 BPM, one octave wide, as librosa's).
MIN_BPM, MAX_BPM, PRIOR_BPM = 60.0, 240.0, 120.0


def onset_envelope(log_mel: np.ndarray, top_db: float = 80.0) -> np.ndarray:
    """Spectral flux of a natural-log mel spectrogram: the onset strength of every frame.

    Parameters
    ----------
    log_mel : np.ndarray [shape=(T, n_mels)]
        ``ln(mel power + floor)``, time first (e.g. one FFT size of the placement features).
    top_db : float
        Values more than ``top_db`` below the maximum are raised to it (as
        ``librosa.power_to_db``), so near-silence does not make onsets.

    Returns
    -------
    np.ndarray [shape=(T,), dtype=float32]
        ``mean_over_bands(max(0, dB[t] - dB[t-1]))``, 0 on frame 0 (librosa's
        ``onset_strength`` with lag 1 and no max filter).
    """
    db = np.asarray(log_mel, dtype=np.float32) * np.float32(10.0 / math.log(10.0))
    if db.shape[0] == 0:
        return np.zeros(0, np.float32)
    db = np.maximum(db, db.max() - np.float32(top_db))
    flux = np.maximum(np.diff(db, axis=0), 0.0).mean(axis=1)
    return np.concatenate([[0.0], flux]).astype(np.float32)


def _periodicity(magnitude: np.ndarray, n_fft: int, bpms: np.ndarray, fps: float, harmonics: int = 4) -> np.ndarray:
    """Sum over harmonics h of ``|X(h * bpm / 60)| / h``, ``X`` the zero-padded spectrum of the envelope.

    ``magnitude`` is ``|rfft(x, n_fft)|``; each frequency is read at its nearest
    bin (``fps / n_fft`` Hz apart: 0.0057 BPM for 2**20 points at 100 fps).
    """
    out = np.zeros(len(bpms))
    for h in range(1, harmonics + 1):
        bins = np.rint(h * np.asarray(bpms, np.float64) / 60.0 * n_fft / fps).astype(np.int64)
        out += magnitude[np.minimum(bins, len(magnitude) - 1)] / h
    return out


def estimate_tempo(envelope: np.ndarray, fps: float = FPS, min_bpm: float = MIN_BPM, max_bpm: float = MAX_BPM,
                   prior_bpm: float = PRIOR_BPM, default: float = PRIOR_BPM) -> float:
    """Global tempo (BPM) of a song from its onset envelope.

    Two steps, both numpy (librosa's beat tracker costs 6-8 s of JIT
    compilation per process on these machines):

    1. coarse: the autocorrelation of the envelope (local mean removed)
       summed at lags ``k * 60 * fps / bpm`` for ``k = 1..4`` (a comb that
       rewards the beat and its multiples), weighted by a log-normal prior of
       one octave around ``prior_bpm``, on a 0.1 BPM grid;
    2. fine: around the coarse value (+-1 %), the whole-song Fourier
       magnitude of the envelope at the beat frequency and its first 4
       harmonics, on a 0.01 BPM grid: far finer than the frame rate allows
       for lags. An integer BPM is preferred when its score is within 0.5 %
       of the best (most songs are produced at integer tempi).

    Parameters
    ----------
    envelope : np.ndarray [T]
        Onset strength per frame (:func:`onset_envelope`).
    fps : float
        Frames per second of the envelope.
    min_bpm, max_bpm : float
        Search range.
    prior_bpm : float
        Centre of the prior (settles octave ambiguity).
    default : float
        Returned when the envelope is too short (< 4 beats at ``min_bpm``) or flat.

    Returns
    -------
    float
        BPM rounded to 0.01.
    """
    x = np.asarray(envelope, dtype=np.float64)
    max_lag = 60.0 * fps / min_bpm
    if len(x) < 4 * max_lag or not np.any(x > 0):
        return float(default)
    width = int(fps)  # 1 s moving average: removes loudness swells, keeps beat-rate periodicity
    x = x - np.convolve(x, np.ones(width) / width, mode="same")
    n_fft = 1 << int(np.ceil(np.log2(2 * len(x))))
    spec = np.fft.rfft(x, n_fft)
    ac = np.fft.irfft(spec * np.conj(spec), n_fft)[: int(4 * max_lag) + 2]
    if ac[0] <= 0:
        return float(default)
    ac = ac / ac[0]
    bpms = np.arange(min_bpm, max_bpm + 1e-9, 0.1)
    lags = 60.0 * fps / bpms
    comb = sum(np.interp(k * lags, np.arange(len(ac)), ac) for k in range(1, 5))
    prior = np.exp(-0.5 * np.log2(bpms / prior_bpm) ** 2)
    coarse = float(bpms[np.argmax(np.maximum(comb, 0) * prior)])
    n_fine = max(1 << 20, 1 << int(np.ceil(np.log2(len(x)))))
    magnitude = np.abs(np.fft.rfft(x, n_fine))
    fine = np.round(np.arange(coarse * 0.99, coarse * 1.01, 0.01), 2)
    score = _periodicity(magnitude, n_fine, fine, fps)
    best = float(fine[np.argmax(score)])
    integer = float(round(best))
    if abs(integer - best) <= coarse * 0.01:
        if _periodicity(magnitude, n_fine, np.array([integer]), fps)[0] >= 0.995 * score.max():
            return integer
    return round(best, 2)


def snap_beats(beats, bpm: float, divisions: int = SNAP_DIVISIONS, tolerance_s: float = SNAP_TOLERANCE_S,
               end_beat: float = math.inf, fps: int = FPS) -> tuple[np.ndarray, np.ndarray]:
    """Move beats onto a ``1/divisions`` grid where that keeps each note on its own frame.

    A beat is snapped only when all of these hold:

    - the note stays on its frame: ``frame_of(seconds(snapped)) ==
      frame_of(seconds(exact))`` (:func:`~mapkit.preprocess.timebase.frame_of`,
      seconds by ``TempoMap.constant(bpm)``), so every note's time still
      rounds to exactly the frame stage 1 chose;
    - it moves by at most ``tolerance_s``;
    - the order stays strict: the snapped beat stays above the previous
      output beat and below the next beat's exact value (and below
      ``end_beat``), so no two notes ever merge.

    Parameters
    ----------
    beats : np.ndarray [n]
        Exact beats, strictly increasing, >= 0.
    bpm : float
        Constant tempo of the beats, beat 0 at 0 s.
    divisions : int
        Grid lines per beat (16: 1/16 beat).
    tolerance_s : float
        Largest move, in seconds.
    end_beat : float
        Snapped beats must stay below this (the end of the song).
    fps : int
        Frame rate of the frames notes must stay on.

    Returns
    -------
    beats : np.ndarray [n] float64
        Snapped or exact beats, strictly increasing.
    snapped : np.ndarray [n] bool
        Which beats were moved onto the grid.
    """
    exact = np.asarray(beats, dtype=np.float64)
    if exact.size and (np.any(np.diff(exact) <= 0) or exact[0] < 0):
        raise ValueError("beats must be >= 0 and strictly increasing")
    tempo = TempoMap.constant(bpm)
    grid = np.floor(exact * divisions + 0.5) / divisions  # half up: beats are >= 0
    exact_s, grid_s = tempo.seconds(exact), tempo.seconds(grid)
    close = (np.abs(grid_s - exact_s) <= tolerance_s) & (frame_of(grid_s, fps) == frame_of(exact_s, fps))
    out = exact.copy()
    snapped = np.zeros(len(exact), dtype=bool)
    previous = -math.inf
    for i in range(len(exact)):
        upper = exact[i + 1] if i + 1 < len(exact) else end_beat
        if close[i] and previous < grid[i] < upper:
            out[i] = grid[i]
            snapped[i] = True
        previous = out[i]
    return out, snapped


def short_beats(beats, bpm: float) -> np.ndarray:
    """``beats`` each with the fewest decimals (3 to 9) that keep its note on the same frame at ``bpm``.

    Written files then read ``3.8`` rather than ``3.8002399999999996``, and
    every note still plays on exactly the frame it had
    (``frame_of(TempoMap.constant(bpm).seconds(beat))``).

    >>> short_beats([3.8002399999999996, 0.5], 120.0).tolist()
    [3.8, 0.5]
    """
    beats = np.asarray(beats, dtype=np.float64)
    seconds = TempoMap.constant(bpm).seconds
    out, frames = beats.copy(), frame_of(seconds(beats))
    todo = np.ones(len(beats), dtype=bool)
    for decimals in range(3, 10):
        short = np.round(beats, decimals)
        keep = todo & (frame_of(seconds(short)) == frames)
        out[keep] = short[keep]
        todo &= ~keep
    return out
