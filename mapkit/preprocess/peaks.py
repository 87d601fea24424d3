"""Peak picking of stage-1 probabilities and onset F1 (docs/design.md §§6 and 7).

Frames are on the one time base (:mod:`mapkit.preprocess.timebase`): at 100 fps
a tolerance of 2 frames is +-20 ms, a minimum gap of 13 frames is DDC's
0.125 s rule. Pure numpy/scipy.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import find_peaks, get_window

#: Default thresholds searched by :func:`best_threshold`.
DEFAULT_THRESHOLDS = tuple(np.round(np.arange(0.02, 1.0, 0.02), 2))


def smooth(probabilities, width: int, window: str = "hamming") -> np.ndarray:
    """Convolve with a symmetric window normalised to sum 1 (centred, zero beyond the ends).

    Parameters
    ----------
    probabilities : np.ndarray [T]
    width : int
        Window length in frames, odd so the output is not shifted; 0 or 1 = no smoothing.
    window : str
        A symmetric :func:`scipy.signal.get_window` name, e.g. "hamming", "hann".
    """
    x = np.asarray(probabilities, dtype=np.float64)
    if width <= 1:
        return x.copy()
    if width % 2 == 0:
        raise ValueError(f"smoothing width must be odd (a centred window), got {width}")
    w = get_window(window, width, fftbins=False)
    return np.convolve(x, w / w.sum(), mode="same")


def pick_peaks(probabilities, threshold: float, min_gap_frames: int = 1, smoothing: int = 0,
               window: str = "hamming") -> np.ndarray:
    """Frames of the local maxima of ``probabilities`` at or above ``threshold``.

    Parameters
    ----------
    probabilities : np.ndarray [T]
        Per-frame note probability (``sigmoid`` of the stage-1 logits).
    threshold : float
        A peak's (smoothed) value must be ``>= threshold``.
    min_gap_frames : int
        Minimum distance between two picked peaks; of two closer peaks the
        lower one is dropped (:func:`scipy.signal.find_peaks` ``distance``).
    smoothing : int
        Odd window length for :func:`smooth` before picking; 0 = none.
    window : str
        Window of the smoothing.

    Returns
    -------
    np.ndarray [n] int64
        Frame indices, increasing. The first and last frame can be peaks
        (the signal is treated as lower outside ``[0, T)``). A flat peak gives
        its middle frame (rounded down).
    """
    x = smooth(probabilities, smoothing, window)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D probability array, got shape {x.shape}")
    if min_gap_frames < 1:
        raise ValueError(f"min_gap_frames must be >= 1, got {min_gap_frames}")
    if x.size == 0:
        return np.zeros(0, dtype=np.int64)
    padded = np.concatenate([[-np.inf], x, [-np.inf]])
    peaks, _ = find_peaks(padded, height=threshold, distance=min_gap_frames)
    return (peaks - 1).astype(np.int64)


def onset_counts(pred_frames, true_frames, tolerance_frames: int = 2) -> tuple[int, int, int]:
    """``(matched, n_pred, n_true)`` under one-to-one matching within the tolerance.

    A predicted and a true onset match when ``|pred - true| <= tolerance_frames``;
    each is matched at most once, and the number of matches is the largest
    possible (a greedy left-to-right sweep over both sorted lists is optimal
    for matching points to intervals of equal width).
    """
    pred = np.sort(np.asarray(pred_frames, dtype=np.int64).ravel())
    true = np.sort(np.asarray(true_frames, dtype=np.int64).ravel())
    i = j = matched = 0
    while i < len(pred) and j < len(true):
        if abs(pred[i] - true[j]) <= tolerance_frames:
            matched += 1
            i += 1
            j += 1
        elif true[j] < pred[i]:
            j += 1  # this true onset is too early for every remaining prediction
        else:
            i += 1  # this prediction is too early for every remaining true onset
    return matched, len(pred), len(true)


def f1_from_counts(matched: int, n_pred: int, n_true: int) -> tuple[float, float, float]:
    """``(precision, recall, f1)``; precision is 1 with no predictions, recall 1 with no true onsets."""
    precision = matched / n_pred if n_pred else 1.0
    recall = matched / n_true if n_true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def onset_f1(pred_frames, true_frames, tolerance_frames: int = 2) -> tuple[float, float, float]:
    """``(precision, recall, f1)`` of predicted onset frames against true ones.

    One-to-one matching within ``+-tolerance_frames`` (2 frames = +-20 ms at
    100 fps), see :func:`onset_counts`. No predictions and no true onsets is a
    perfect ``(1, 1, 1)``; predictions without true onsets (or the reverse)
    give F1 0.
    """
    return f1_from_counts(*onset_counts(pred_frames, true_frames, tolerance_frames))


def best_threshold(probs_list, true_frames_list, thresholds=DEFAULT_THRESHOLDS, min_gap_frames: int = 1,
                   smoothing: int = 0, window: str = "hamming", tolerance_frames: int = 2) -> tuple[float, float]:
    """The threshold with the best F1 over several songs, and that F1.

    F1 is computed from the match counts summed over all songs (micro
    average), so long songs weigh more. Of equal F1s the first threshold in
    ``thresholds`` wins.

    Parameters
    ----------
    probs_list : list of np.ndarray [T_i]
        Per-frame probabilities of each song (or level).
    true_frames_list : list of array-like
        True onset frames of each.
    thresholds : sequence of float
    min_gap_frames, smoothing, window : see :func:`pick_peaks`
    tolerance_frames : see :func:`onset_counts`
    """
    if len(probs_list) != len(true_frames_list):
        raise ValueError(f"{len(probs_list)} probability arrays but {len(true_frames_list)} onset lists")
    if len(thresholds) == 0:
        raise ValueError("no thresholds to try")
    smoothed = [smooth(p, smoothing, window) for p in probs_list]  # once, not per threshold
    best = (float(thresholds[0]), -1.0)
    for th in thresholds:
        totals = np.zeros(3, dtype=np.int64)
        for x, true in zip(smoothed, true_frames_list):
            totals += onset_counts(pick_peaks(x, th, min_gap_frames), true, tolerance_frames)
        f1 = f1_from_counts(*totals)[2]
        if f1 > best[1]:
            best = (float(th), f1)
    return best


def best_thresholds_by_group(probs_list, true_frames_list, groups, **kwargs) -> dict:
    """:func:`best_threshold` of each group of songs: ``{group: (threshold, f1)}``.

    ``groups[i]`` names the group of song ``i`` (e.g. its difficulty: Easy
    levels want a higher threshold than Expert+ ones); ``kwargs`` go to
    :func:`best_threshold`.
    """
    if len(groups) != len(probs_list):
        raise ValueError(f"{len(probs_list)} probability arrays but {len(groups)} group names")
    out = {}
    for group in dict.fromkeys(groups):
        idx = [i for i, g in enumerate(groups) if g == group]
        out[group] = best_threshold([probs_list[i] for i in idx], [true_frames_list[i] for i in idx], **kwargs)
    return out
