import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from mapkit.preprocess.peaks import best_threshold, best_thresholds_by_group, onset_counts, onset_f1, pick_peaks, smooth


# ----------------------------------------------------------------- pick_peaks

def test_peaks_threshold_is_inclusive_and_edges_count():
    p = np.array([0.9, 0.1, 0.5, 0.2, 0.1, 0.8])
    assert pick_peaks(p, 0.5).tolist() == [0, 2, 5]
    assert pick_peaks(p, 0.51).tolist() == [0, 5]
    assert pick_peaks(p, 0.95).tolist() == []


def test_peaks_min_gap_drops_the_lower_of_two_close_peaks():
    p = np.zeros(40)
    p[[5, 9, 20, 33]] = [0.6, 0.9, 0.7, 0.8]
    assert pick_peaks(p, 0.5, min_gap_frames=1).tolist() == [5, 9, 20, 33]
    assert pick_peaks(p, 0.5, min_gap_frames=5).tolist() == [9, 20, 33]
    # distance 13 (0.125 s at 100 fps): 20 is 11 from 9 and 13 from 33 -> the lower one goes
    assert pick_peaks(p, 0.5, min_gap_frames=13).tolist() == [9, 33]


def test_flat_peak_gives_its_middle():
    assert pick_peaks([0.0, 0.7, 0.7, 0.7, 0.0], 0.5).tolist() == [2]
    assert pick_peaks([0.7, 0.7, 0.7], 0.5).tolist() == [1]
    assert pick_peaks([], 0.5).tolist() == []


def test_smoothing_window_is_normalised_and_centred():
    p = np.zeros(21)
    p[10] = 1.0
    s = smooth(p, 5, "hann")
    assert s.sum() == pytest.approx(1.0)
    assert np.argmax(s) == 10 and s[9] == pytest.approx(s[11])
    # a constant signal keeps its value inside (the window sums to 1, not 6.56 as in DeepSaber)
    assert smooth(np.full(30, 0.4), 13)[6:-6] == pytest.approx(np.full(18, 0.4))
    # smoothing merges two adjacent spikes into one peak between them
    q = np.zeros(30)
    q[[14, 16]] = 1.0
    assert pick_peaks(q, 0.1).tolist() == [14, 16]
    assert pick_peaks(q, 0.1, smoothing=7).tolist() == [15]
    with pytest.raises(ValueError, match="odd"):
        smooth(q, 4)


# ----------------------------------------------------------------- onset F1

def test_f1_exact_cases():
    assert onset_f1([], []) == (1.0, 1.0, 1.0)
    assert onset_f1([], [5]) == (1.0, 0.0, 0.0)
    assert onset_f1([5], []) == (0.0, 1.0, 0.0)
    assert onset_f1([10], [12]) == (1.0, 1.0, 1.0)  # 2 frames = 20 ms: inside
    assert onset_f1([10], [13]) == (0.0, 0.0, 0.0)  # 30 ms: outside
    assert onset_f1([10], [13], tolerance_frames=3) == (1.0, 1.0, 1.0)


def test_one_true_onset_is_matched_once():
    # two predictions near one true onset: one hit, one false positive
    p, r, f = onset_f1([10, 11], [10])
    assert (p, r) == (0.5, 1.0) and f == pytest.approx(2 / 3)
    # one prediction between two true onsets matches only one of them
    assert onset_counts([11], [10, 12]) == (1, 1, 2)


def test_matching_is_maximal_not_nearest_first():
    # nearest-first would pair 11 with 12 and leave 14 unmatched; the best pairing is 11-10, 14-12
    assert onset_counts([11, 14], [10, 12]) == (2, 2, 2)
    # order of the inputs does not matter, duplicates are separate onsets
    assert onset_counts([14, 11, 11], [12, 10, 10]) == (3, 3, 3)


def _max_matching(pred, true, tol):
    if not pred or not true:
        return 0
    cost = (np.abs(np.subtract.outer(pred, true)) > tol).astype(float)
    rows, cols = linear_sum_assignment(cost)
    return int((cost[rows, cols] == 0).sum())


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 60), max_size=15), st.lists(st.integers(0, 60), max_size=15), st.integers(0, 4))
def test_greedy_matching_equals_maximum_bipartite_matching(pred, true, tol):
    matched, n_pred, n_true = onset_counts(pred, true, tol)
    assert (n_pred, n_true) == (len(pred), len(true))
    assert matched == _max_matching(pred, true, tol)


# ----------------------------------------------------------------- best threshold

def test_best_threshold_finds_the_separating_value():
    rng = np.random.default_rng(0)
    probs, trues = [], []
    for _ in range(3):
        p = rng.uniform(0.0, 0.3, 500)  # noise stays below 0.3
        true = np.sort(rng.choice(np.arange(5, 495, 20), 12, replace=False))
        p[true] = rng.uniform(0.6, 0.9, len(true))
        probs.append(p)
        trues.append(true)
    th, f1 = best_threshold(probs, trues, thresholds=[0.1, 0.2, 0.35, 0.5, 0.95], min_gap_frames=3)
    assert th == 0.35 and f1 == 1.0
    th, f1 = best_threshold(probs, trues, thresholds=[0.1, 0.95])
    assert 0.0 < f1 < 1.0


def test_each_group_gets_its_own_best_threshold():
    # group "loud": true peaks at 0.9 and false ones at 0.5; group "soft": true 0.3, false 0.1
    def song(true_height, false_height):
        p = np.zeros(200)
        p[[20, 60, 100, 140]] = true_height
        p[[40, 80, 120]] = false_height
        return p, np.array([20, 60, 100, 140])

    songs = [song(0.9, 0.5), song(0.3, 0.1), song(0.9, 0.5)]
    groups = ["loud", "soft", "loud"]
    best = best_thresholds_by_group([p for p, _ in songs], [t for _, t in songs], groups)
    assert list(best) == ["loud", "soft"]
    assert 0.5 < best["loud"][0] <= 0.9 and best["loud"][1] == 1.0
    assert 0.1 < best["soft"][0] <= 0.3 and best["soft"][1] == 1.0
    single, f1 = best_threshold([p for p, _ in songs], [t for _, t in songs])
    assert f1 < 1.0  # no one threshold serves both groups
    with pytest.raises(ValueError, match="group names"):
        best_thresholds_by_group([songs[0][0]], [songs[0][1]], ["a", "b"])
