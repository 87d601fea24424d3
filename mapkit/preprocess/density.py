"""Note density per difficulty: the peak threshold that keeps a generated level's note times in the human band.

Stage 1's thresholds are validated for onset F1 per difficulty; on a new song
they can leave an Easy level as dense as an Expert one (3.6 note times per
second where human Easy levels have 1.3). ``mapkit generate`` therefore moves
a difficulty's threshold, as little as it can, until the note times per second
lie inside the band the human levels of that difficulty span (the object
model's ``note_times_per_s``: 10th and 90th percentile of the training
levels, :mod:`mapkit.train.objects`). Pure functions.
"""

from __future__ import annotations

import numpy as np

from mapkit.preprocess.peaks import pick_peaks

#: Percentiles of the training levels' note times per second that bound a generated level's (low, high).
DENSITY_PERCENTILES = (10, 90)
#: The lowest threshold a too-sparse level may fall to (below it stage 1 says "no note" with confidence).
MIN_THRESHOLD = 0.05
#: Bisection steps (a threshold to within 2**-24).
_STEPS = 24


def density_band(note_times_per_s) -> tuple[float, float]:
    """``(low, high)`` note times per second: the :data:`DENSITY_PERCENTILES` of the training levels' rates.

    Examples
    --------
    >>> density_band([1.0, 1.2, 1.4, 1.6, 3.0])
    (1.08, 2.44)
    """
    rates = np.asarray(note_times_per_s, dtype=np.float64)
    if rates.size == 0:
        raise ValueError("no training level to take a density band from")
    low, high = np.percentile(rates, DENSITY_PERCENTILES)
    return round(float(low), 6), round(float(high), 6)


def threshold_for_density(probabilities, threshold: float, band, duration_s: float, min_gap_frames: int = 1,
                          smoothing: int = 0) -> float:
    """The threshold nearest ``threshold`` whose peaks per second lie inside ``band``.

    Parameters
    ----------
    probabilities : np.ndarray [T]
        Stage 1's per-frame note probability.
    threshold : float
        The validated threshold of the difficulty.
    band : (float, float)
        Note times per second ``(low, high)`` (:func:`density_band`).
    duration_s : float
        Seconds of audio the peaks lie in.
    min_gap_frames, smoothing : int
        As :func:`~mapkit.preprocess.peaks.pick_peaks`.

    Returns
    -------
    float
        ``threshold`` when its rate is inside the band; else, by bisection,
        the lowest threshold above it whose rate is at most ``high`` (at least
        one note a song: ``high`` is never below ``1 / duration_s``), or the
        highest threshold below it (not under :data:`MIN_THRESHOLD`) whose
        rate is at least ``low`` — or that bound when no threshold reaches the band.

    Examples
    --------
    >>> p = np.tile([0.0, 0.9, 0.0, 0.6], 50)   # 100 peaks in 2 s: 50 at 0.9, 50 at 0.6
    >>> threshold_for_density(p, 0.5, (10.0, 30.0), 2.0) > 0.6
    True
    """
    low, high = band
    high = max(high, 1.0 / max(duration_s, 1e-9))  # a very short song keeps its strongest note

    def rate(th: float) -> float:
        return len(pick_peaks(probabilities, th, min_gap_frames, smoothing)) / max(duration_s, 1e-9)

    r = rate(threshold)
    if low <= r <= high:
        return float(threshold)
    if r > high:  # too dense: raise, the lowest threshold that is sparse enough
        lo, hi = float(threshold), 1.0 + 1e-9
        for _ in range(_STEPS):
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if rate(mid) <= high else (mid, hi)
        return float(min(hi, 1.0))
    lo, hi = MIN_THRESHOLD, float(threshold)  # too sparse: lower, the highest threshold that is dense enough
    if lo >= hi or rate(lo) < low:
        return float(min(lo, hi))
    for _ in range(_STEPS):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if rate(mid) >= low else (lo, mid)
    return float(lo)


__all__ = ["DENSITY_PERCENTILES", "MIN_THRESHOLD", "density_band", "threshold_for_density"]
