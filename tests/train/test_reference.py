"""The pieces of the stage-1 reference report: F1 at a tolerance and the tuned baseline."""

import numpy as np

from mapkit.train.reference import f1_at, normalised_flux, tune_baseline


def test_f1_at_widens_with_the_tolerance():
    truth = [np.array([10, 50, 90])]
    late = [np.array([13, 53, 93])]  # every onset 30 ms late
    assert f1_at(late, truth, 2) == 0.0
    assert f1_at(late, truth, 3) == 1.0


def test_the_baseline_finds_the_threshold_and_the_shift():
    env = np.zeros(200)
    env[[23, 63, 103, 143]] = 1.0  # onsets detected 3 frames late
    env[[40, 80, 120]] = 0.4  # weaker false ones
    truth = np.array([20, 60, 100, 140])
    th, shift, f1 = tune_baseline([env], [truth], min_gap_frames=1, tolerance=0)
    assert shift == -3 and 0.4 < th <= 1.0 and f1 == 1.0


def test_flux_is_scaled_by_its_99th_percentile():
    rng = np.random.default_rng(0)
    placement = rng.normal(-5, 1, (2 + 300 + 2, 3, 8)).astype(np.float32)
    env = normalised_flux(placement, pad=2, column=1)
    assert env.shape == (300,) and env.max() == 1.0 and env.min() >= 0.0
    assert np.mean(env == 1.0) <= 0.02
