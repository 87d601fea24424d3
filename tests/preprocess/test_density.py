"""The threshold that keeps a generated level's note density inside the human band (mapkit.preprocess.density)."""

import numpy as np
import pytest

from mapkit.preprocess.density import DENSITY_PERCENTILES, MIN_THRESHOLD, density_band, threshold_for_density
from mapkit.preprocess.peaks import pick_peaks

DURATION_S = 20.0


@pytest.fixture(scope="module")
def probs():
    """2000 frames (20 s) with 400 isolated peaks whose heights spread evenly over (0.02, 0.98)."""
    rng = np.random.default_rng(0)
    p = np.zeros(2000, np.float32)
    p[2::5] = rng.permutation(np.linspace(0.02, 0.98, 400)).astype(np.float32)
    return p


def rate(probs, th):
    return len(pick_peaks(probs, th)) / DURATION_S


def test_a_threshold_inside_the_band_is_kept(probs):
    assert rate(probs, 0.5) == pytest.approx(10.0, abs=0.1)
    assert threshold_for_density(probs, 0.5, (8.0, 12.0), DURATION_S) == 0.5


def test_too_dense_raises_the_threshold_as_little_as_it_can(probs):
    th = threshold_for_density(probs, 0.3, (2.0, 6.0), DURATION_S)
    assert th > 0.3 and rate(probs, th) <= 6.0
    assert rate(probs, th - 1e-4) > 6.0  # a hair lower is too dense again: the smallest move


def test_too_sparse_lowers_the_threshold_as_little_as_it_can(probs):
    th = threshold_for_density(probs, 0.9, (8.0, 12.0), DURATION_S)
    assert th < 0.9 and rate(probs, th) >= 8.0
    assert rate(probs, th + 1e-4) < 8.0


def test_a_band_out_of_reach_stops_at_the_bounds(probs):
    assert threshold_for_density(probs, 0.5, (50.0, 60.0), DURATION_S) == MIN_THRESHOLD  # 20/s at most
    assert threshold_for_density(np.zeros(2000), 0.5, (0.0, 0.0), DURATION_S) == 0.5  # no peak: inside
    flat = np.full(2000, 0.99, np.float32)  # one flat peak: 0.05/s whatever the threshold below 0.99
    assert threshold_for_density(flat, 0.5, (1.0, 2.0), DURATION_S) == MIN_THRESHOLD


def test_the_band_is_the_percentiles_of_the_training_rates():
    rates = np.arange(1, 101, dtype=float) / 10
    assert density_band(rates) == pytest.approx(tuple(np.percentile(rates, DENSITY_PERCENTILES)))
    with pytest.raises(ValueError):
        density_band([])


def test_a_very_short_song_keeps_its_strongest_note():
    p = np.zeros(30, np.float32)
    p[[5, 15, 25]] = [0.6, 0.9, 0.7]  # 3 peaks in 0.3 s: 10 a second, far above a band of (1, 2)
    th = threshold_for_density(p, 0.5, (1.0, 2.0), 0.3)
    assert list(pick_peaks(p, th)) == [15]
