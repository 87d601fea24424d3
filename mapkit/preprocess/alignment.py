"""Does a level fit its audio? Notes against the audio's onsets, on the one frame grid.

Two pure functions (no I/O), used by ``mapkit audit`` and by evaluation:

- :func:`onset_strength`: the spectral flux of a song, per frame, from the
  stage-1 features already in the store (no second decode);
- :func:`align_notes`: the cross-correlation of a level's note frames (an
  impulse train) with that onset strength over lags of ``±max_lag`` frames,
  its best lag, how clearly that lag stands out, and how much of the song the
  notes span (:class:`Alignment`).

Sign convention: a **positive lag means the notes are late** with respect to
the audio: a note at frame ``n`` sits on the audio onset at frame
``n - lag_frames``. On a human map with the right audio the best lag is within
a few frames of 0 and its peak stands far above the other lags; notes timed to
another cut of the song or with a wrong offset give a far lag, and notes
unrelated to the audio give no clear peak.

Beat-periodic music correlates almost as well a beat (or half a beat) away,
and the highest peak can be that alias (a real 120 BPM Easy map read -500 ms,
a 185 BPM Hard +320 ms). So the best lag is chosen in two steps:

1. **Ties, nearest 0.** The local peaks of the correlation (the highest within
   ``PEAK_HALF_WIDTH`` lags each way) that tie with the highest peak are the
   candidates, and the one of smallest ``|lag|`` (then the negative one) wins.
   A peak ``k`` ties with the highest ``k_top`` when its correlation is within
   ``PEAK_TIE_Z`` robust spreads of it, or when the notes do not prefer
   ``k_top`` significantly: the paired t statistic of
   ``z[n - k_top] - z[n - k]`` over the note frames (:func:`_paired_t`, the
   peak's own uncertainty) is below ``PEAK_TIE_T`` (3).
2. **Half-beat folding** (when the level's beat period ``P`` in frames is
   given: :func:`beat_period_frames`). A chosen lag within
   ``BEAT_FOLD_TOLERANCE`` (3) frames of a non-zero multiple ``m`` of ``P/2``
   is read as ``m/2`` beats away (``alias_beats``) and reported as its
   remainder ``round(lag - m P/2)`` (:func:`fold_lag`).

So a map offset by a multiple of half a beat reads as aligned (it cannot be
told from an aligned one); an offset off the half-beat grid is found (one of
more than a quarter beat may be reported as a tied alias nearer 0, which is
still an offset). On 127 human difficulties of 81 real songs (measured
locally, not shipped), the lags were: before, 4 at -500, -170, +320 and
+530 ms with strengths up to 7.3; after, all within ±30 ms but one without
a peak (strength -0.1).

Frames are those of :mod:`mapkit.preprocess.timebase` (``FPS`` per second,
frame ``f`` centred on ``f / FPS`` s).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mapkit.preprocess.timebase import FPS
from mapkit.settings import FeatureSettings

#: Dynamic range kept below each column's loudest bin before differencing:
#: 80 dB (as ``librosa.power_to_db(top_db=80)``), in natural-log power units.
TOP_DB_NATS = 80.0 * np.log(10.0) / 10.0

#: Lags within this many frames of the best one are not "other lags" when
#: scoring its peak: the onset envelope smears one onset over a few frames.
PEAK_HALF_WIDTH = 3

#: A local peak of the correlation ties with the highest one when the notes
#: do not prefer the highest significantly: their paired t statistic
#: (:func:`_paired_t`) is below this. Among ties the lag nearest 0 is the best:
#: in beat-periodic music lags a beat (or half a beat) apart correlate almost
#: equally, and no onset measure can tell them apart.
PEAK_TIE_T = 3.0

#: A local peak also ties with the highest when its correlation is within this
#: many robust spreads of the correlations (``_centre_and_spread``) of it.
PEAK_TIE_Z = 1.0

#: With a known beat period, a best lag within this many frames of a non-zero
#: multiple of half a beat is read as that many beats away (``alias_beats``)
#: and reported as its remainder: the rounding of the frame grid and the
#: smearing of onsets (``PEAK_HALF_WIDTH``).
BEAT_FOLD_TOLERANCE = PEAK_HALF_WIDTH

#: The onset strength is compared with its mean over a centred window of this
#: many frames (1 s), so that loud passages do not outweigh quiet ones.
LOCAL_MEAN_FRAMES = FPS + 1


def onset_strength(placement: np.ndarray, pad: int | None = None, column: int = 0) -> np.ndarray:
    """Spectral flux of a song per frame, from its stored stage-1 features.

    For the unpadded log-mel rows ``X[f]`` (``f = 0 .. T-1``) of one FFT
    resolution (``column``), each bin first floored at 80 dB below the
    loudest bin of the song (``X = max(X, X.max() - TOP_DB_NATS)``), the
    onset strength is the mean over the mel bands of the half-wave rectified
    difference to the previous frame::

        onset[f] = mean_b max(0, X[f, b] - X[f-1, b])    for f = 1 .. T-1
        onset[0] = 0

    Frame 0 has no predecessor inside the song (the row before it is padding,
    digital silence), so it gets no onset rather than a spurious one.

    Parameters
    ----------
    placement : np.ndarray [shape=(T + 2*pad, n_columns, n_mels)]
        The stored stage-1 features of one song (``/songs/<id>/placement``):
        natural-log mel power, ``pad`` rows of padding on each side; float16
        or float32.
    pad : int or None
        Padding rows on each side: the song's ``pad_placement[0]`` attribute.
        ``None`` means ``FeatureSettings().placement_pad``.
    column : int
        The FFT resolution to use: column ``i`` is
        ``FeatureSettings.placement_n_ffts[i]``. The default, 0 (1024 samples,
        a 23 ms window at 44.1 kHz), is the sharpest in time.

    Returns
    -------
    np.ndarray [shape=(T,), dtype=float32]
        ``onset[f]`` for every frame of the song; non-negative.

    Raises
    ------
    ValueError
        When ``placement`` is not 3-D or has fewer than ``2 * pad`` rows.

    Examples
    --------
    A song that is silent, then holds a tone from frame 3 on: the onset is at frame 3.

    >>> silence = np.log(1e-10)
    >>> x = np.full((7 + 6 + 7, 3, 80), silence, dtype=np.float32)
    >>> x[7 + 3 : 7 + 6] = 0.0
    >>> onset = onset_strength(x, pad=7)
    >>> onset.shape, int(onset.argmax())
    ((6,), 3)
    """
    x = np.asarray(placement)
    if x.ndim != 3:
        raise ValueError(f"placement must be [T + 2*pad, columns, mels], got shape {x.shape}")
    if pad is None:
        pad = FeatureSettings().placement_pad
    pad = int(pad)
    n_frames = x.shape[0] - 2 * pad
    if pad < 0 or n_frames < 0:
        raise ValueError(f"placement has {x.shape[0]} rows: fewer than 2 * pad = {2 * pad}")
    onset = np.zeros(n_frames, dtype=np.float32)
    if n_frames < 2:
        return onset
    rows = x[pad : pad + n_frames, column, :].astype(np.float32)
    np.maximum(rows, rows.max() - np.float32(TOP_DB_NATS), out=rows)
    flux = np.diff(rows, axis=0)
    np.maximum(flux, 0.0, out=flux)
    onset[1:] = flux.mean(axis=1)
    return onset


@dataclass(frozen=True, eq=False)
class Alignment:
    """How a level's notes line up with its audio (the result of :func:`align_notes`).

    Attributes
    ----------
    lag_frames : int
        The best lag; **positive = notes late** vs the audio (a note at
        frame ``n`` sits on the onset at ``n - k``). The peak lag
        ``peak_lag_frames`` (the tied local peak nearest 0, module
        docstring step 1) less the half-beats folded out of it
        (``alias_beats``, step 2). 0 when there are no notes (then
        ``n_note_frames`` is 0 and every other value is NaN).
    strength : float
        How far the peak stands out, as a robust z-score:
        ``(c[k*] - median(c_o)) / (1.4826 * MAD(c_o))`` where ``c_o`` are the
        correlations at the other lags, those more than ``PEAK_HALF_WIDTH``
        frames from ``k*`` (MAD: median absolute deviation from the median;
        when it is 0 the standard deviation is used; when that is 0 too, the
        strength is 0). NaN when there are no notes. Notes unrelated to the
        audio give 0.5-3 (a tied noisy lag near 0; random note sets stay below
        4.2 whatever their size); a clear peak gives 10 and more.
    coverage : float
        Share of the song's frames spanned by the notes:
        ``(last - first + 1) / T``, where ``first``/``last`` are the smallest
        and largest note frames within ``[0, T)`` and ``T = len(onset)``;
        NaN when no note frame lies in ``[0, T)``. In ``[0, 1]``.
    correlation : np.ndarray [shape=(2*max_lag + 1,), dtype=float64]
        ``c[k]`` for ``k = -max_lag .. max_lag`` (index ``k + max_lag``): the
        mean normalised onset strength (:func:`normalised_onset`) at the frames ``n - k`` of the distinct
        note frames ``n`` for which ``0 <= n - k < T``; NaN for a lag where
        no note falls inside the song.
    n_note_frames : int
        Distinct note frames within ``[0, T)``.
    alias_beats : float
        Beats (a multiple of 1/2) folded out of the peak lag; 0.0 when none.
    peak_lag_frames : int or None
        The lag of the chosen correlation peak, before folding:
        ``lag_frames`` plus ``alias_beats`` beats.
    """

    lag_frames: int
    strength: float
    coverage: float
    correlation: np.ndarray
    n_note_frames: int = 0
    alias_beats: float = 0.0
    peak_lag_frames: int | None = None

    @property
    def peak_correlation(self) -> float:
        """``c`` at the peak's lag (``peak_lag_frames``); NaN without notes."""
        peak = self.lag_frames if self.peak_lag_frames is None else self.peak_lag_frames
        return float(self.correlation[peak + self.max_lag]) if self.n_note_frames else math.nan

    @property
    def max_lag(self) -> int:
        return (len(self.correlation) - 1) // 2

    @property
    def lags(self) -> np.ndarray:
        """The lag of each entry of ``correlation``: ``-max_lag .. max_lag``."""
        return np.arange(-self.max_lag, self.max_lag + 1)


def _local_mean(x: np.ndarray, width: int) -> np.ndarray:
    """Mean of ``x`` over a centred window of ``width`` samples (fewer at the edges)."""
    half = width // 2
    c = np.concatenate(([0.0], np.cumsum(x, dtype=np.float64)))
    i = np.arange(len(x))
    lo = np.maximum(i - half, 0)
    hi = np.minimum(i + half + 1, len(x))
    return (c[hi] - c[lo]) / (hi - lo)


def normalised_onset(onset: np.ndarray) -> np.ndarray:
    """The onset strength as :func:`align_notes` correlates it: Gaussianised ranks.

    With ``d = onset - local mean`` (centred window of ``LOCAL_MEAN_FRAMES``
    frames, 1 s: how much more onset a frame has than its surroundings) and
    ``r[f]`` the rank of ``d[f]`` among the ``T`` frames (0-based, ties
    sharing their average rank)::

        z[f] = Phi^-1((r[f] + 0.5) / T)

    where ``Phi^-1`` is the standard normal quantile function. ``z`` follows a
    standard normal distribution over the song whatever the music's dynamics,
    so the mean of ``z`` over ``N`` frames unrelated to the onsets has mean 0
    and standard deviation ``1/sqrt(N)`` for any song: a few loud onsets
    cannot make random notes look aligned.

    >>> z = normalised_onset(np.array([0, 0, 0, 1, 0, 0, 0], dtype=np.float32))
    >>> int(z.argmax()), bool(np.all(z[[0, 1, 2, 4, 5, 6]] == z[0]))
    (3, True)
    """
    from scipy.special import ndtri

    onset = np.asarray(onset, dtype=np.float64)
    if onset.size == 0:
        return onset
    d = onset - _local_mean(onset, LOCAL_MEAN_FRAMES)
    _, inverse, counts = np.unique(d, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - counts + (counts - 1) / 2.0
    return ndtri((average_rank[inverse.ravel()] + 0.5) / d.size)


def _centre_and_spread(correlation: np.ndarray, peak: int) -> tuple[float, float]:
    """Median and robust spread (1.4826 MAD, else the std, else 0) of the correlations away from ``peak``."""
    idx = np.arange(len(correlation))
    others = correlation[(np.abs(idx - peak) > PEAK_HALF_WIDTH) & np.isfinite(correlation)]
    if others.size < 2:
        return 0.0, 0.0
    centre = float(np.median(others))
    spread = 1.4826 * float(np.median(np.abs(others - centre)))
    if spread <= 0:
        spread = float(others.std())
    return centre, spread


def _peak_strength(correlation: np.ndarray, peak: int) -> float:
    """Robust z-score of ``correlation[peak]`` against the lags away from it."""
    centre, spread = _centre_and_spread(correlation, peak)
    if spread <= 0:
        return 0.0
    return float((correlation[peak] - centre) / spread)


def align_notes(note_frames: np.ndarray, onset: np.ndarray, max_lag: int = 100,
                beat_frames: float | None = None) -> Alignment:
    """Best lag between a level's notes and its audio's onsets, and how clear it is.

    The notes are an impulse train on the frame grid (one impulse per distinct
    note frame, however many notes share it); the audio is the normalised
    onset strength ``z`` (:func:`normalised_onset`). For each lag ``k`` in
    ``-max_lag .. max_lag`` the correlation is the mean of ``z[n - k]`` over
    the distinct note frames ``n`` with ``0 <= n - k < T``; the best lag is
    the tied peak nearest 0, folded by half-beats when ``beat_frames`` is
    given (module docstring). See
    :class:`Alignment` for the exact definitions of ``lag_frames``,
    ``strength`` and ``coverage``.

    Parameters
    ----------
    note_frames : np.ndarray [shape=(N,), int]
        Frames of the level's notes (e.g. the ``frame`` field of the stored
        ``notes`` of a difficulty, bombs left out). Frames outside ``[0, T)``
        are ignored.
    onset : np.ndarray [shape=(T,)]
        Onset strength of the song (:func:`onset_strength`).
    max_lag : int
        Largest lag tried, in frames (default 100: ±1 s).
    beat_frames : float or None
        The level's beat period in frames (:func:`beat_period_frames`); None:
        no half-beat folding.

    Returns
    -------
    Alignment

    Raises
    ------
    ValueError
        When ``max_lag`` is negative.

    Examples
    --------
    Onsets at irregular frames, notes on the same onsets 5 frames late:

    >>> rng = np.random.default_rng(0)
    >>> onset = np.zeros(3000, dtype=np.float32)
    >>> hits = np.sort(rng.choice(np.arange(200, 2800), 120, replace=False))
    >>> onset[hits] = 1.0
    >>> a = align_notes(hits + 5, onset)
    >>> a.lag_frames, a.strength > 8, round(a.coverage, 2)
    (5, True, 0.86)
    """
    if max_lag < 0:
        raise ValueError(f"max_lag must be >= 0, got {max_lag}")
    z = normalised_onset(onset)
    T = len(z)
    frames = np.unique(np.asarray(note_frames, dtype=np.int64))
    frames = frames[(frames >= 0) & (frames < T)]
    lags = np.arange(-max_lag, max_lag + 1)
    if frames.size == 0:
        return Alignment(0, math.nan, math.nan, np.full(len(lags), np.nan), 0)
    src = frames[None, :] - lags[:, None]  # [lags, notes]: the audio frame each note meets at each lag
    inside = (src >= 0) & (src < T)
    values = np.where(inside, z[np.clip(src, 0, T - 1)], 0.0)
    counts = inside.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        correlation = np.where(counts > 0, values.sum(axis=1) / np.maximum(counts, 1), np.nan)
    best = _best_lag_index(correlation, lags, values, inside)
    coverage = (int(frames[-1]) - int(frames[0]) + 1) / T
    lag, alias = fold_lag(int(lags[best]), beat_frames)
    return Alignment(lag, _peak_strength(correlation, best), float(coverage), correlation, int(frames.size),
                     alias, int(lags[best]))


def fold_lag(peak_lag: int, beat_frames: float | None) -> tuple[int, float]:
    """``(lag, alias_beats)``: a peak lag read modulo half a beat when it lies on that grid.

    With ``h = beat_frames / 2`` and ``m = round(peak_lag / h)``: when
    ``m != 0`` and ``|peak_lag - m h| <= BEAT_FOLD_TOLERANCE`` the lag is
    ``round(peak_lag - m h)`` and ``alias_beats = m / 2``; otherwise (or
    without a beat period) ``(peak_lag, 0.0)``.

    >>> fold_lag(-50, 50.0), fold_lag(33, 62.0), fold_lag(12, 50.0), fold_lag(12, None)
    ((0, -1.0), (2, 0.5), (12, 0.0), (12, 0.0))
    """
    if beat_frames is None or not np.isfinite(beat_frames) or beat_frames <= 2 * BEAT_FOLD_TOLERANCE:
        return peak_lag, 0.0
    half = beat_frames / 2.0
    m = int(round(peak_lag / half))
    if m == 0 or abs(peak_lag - m * half) > BEAT_FOLD_TOLERANCE:
        return peak_lag, 0.0
    return int(round(peak_lag - m * half)), m / 2.0


def beat_period_frames(tempo, beats, fps: int = FPS) -> float | None:
    """The level's beat period in frames at its notes: ``fps * 60 / median(bpm at each note's beat)``.

    Parameters
    ----------
    tempo : mapkit.preprocess.tempo.TempoMap or None
    beats : np.ndarray
        The notes' beats (the ``beat`` field of the notes).
    fps : int

    Returns
    -------
    float or None
        None without a tempo map or notes.

    >>> from mapkit.preprocess.tempo import TempoMap
    >>> beat_period_frames(TempoMap.constant(120.0), np.array([0.0, 4.0]))
    50.0
    """
    beats = np.asarray(beats, dtype=np.float64)
    if tempo is None or beats.size == 0:
        return None
    return float(fps * 60.0 / np.median(tempo.bpm_at(beats)))


def _paired_t(values: np.ndarray, inside: np.ndarray, a: int, b: int) -> float:
    """Paired t statistic of ``c[a] - c[b]`` over the note frames inside the song at both lags.

    ``d_n = z[n - lag_a] - z[n - lag_b]``; ``t = mean(d) / (std(d) / sqrt(m))``
    (``std`` with ``m - 1`` degrees of freedom, ``m`` such notes). When
    ``std(d)`` is 0 (or ``m < 2``): ``+inf`` if ``mean(d) > 0``, else 0.
    """
    both = inside[a] & inside[b]
    d = values[a, both] - values[b, both]
    m = d.size
    mean = float(d.mean()) if m else 0.0
    sd = float(d.std(ddof=1)) if m >= 2 else 0.0
    if sd <= 0:
        return math.inf if mean > 0 else 0.0
    return mean / (sd / math.sqrt(m))


def _local_peaks(correlation: np.ndarray) -> np.ndarray:
    """Indices of the lags whose correlation is the highest within ``PEAK_HALF_WIDTH`` lags each way."""
    c = np.where(np.isfinite(correlation), correlation, -np.inf)
    n = len(c)
    padded = np.concatenate((np.full(PEAK_HALF_WIDTH, -np.inf), c, np.full(PEAK_HALF_WIDTH, -np.inf)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * PEAK_HALF_WIDTH + 1)
    return np.flatnonzero(np.isfinite(c) & (c >= windows.max(axis=1)[:n]))


def _best_lag_index(correlation: np.ndarray, lags: np.ndarray, values: np.ndarray, inside: np.ndarray) -> int:
    """Index of the best lag: the local peak nearest lag 0 that the notes do not significantly reject.

    The highest finite lag, and the local peaks (:func:`_local_peaks`) more
    than ``2 * PEAK_HALF_WIDTH`` lags from it whose correlation is within
    ``PEAK_TIE_Z`` robust spreads of it or whose paired t statistic against
    it (:func:`_paired_t`) is below ``PEAK_TIE_T``; of these the smallest
    ``|lag|``, then the negative one.
    """
    finite = np.isfinite(correlation)
    top = int(np.flatnonzero(finite)[np.argmax(correlation[finite])])
    peaks = _local_peaks(correlation)
    _, spread = _centre_and_spread(correlation, top)
    close = correlation[top] - PEAK_TIE_Z * spread
    # peaks closer than 2 * PEAK_HALF_WIDTH to the highest are the same onsets, smeared: not aliases
    far = peaks[np.abs(peaks - top) > 2 * PEAK_HALF_WIDTH]
    tied = [top] + [int(k) for k in far
                    if correlation[k] >= close or _paired_t(values, inside, top, int(k)) < PEAK_TIE_T]
    tied = np.array(tied if tied else [top])
    order = np.lexsort((lags[tied], np.abs(lags[tied])))
    return int(tied[order[0]])
