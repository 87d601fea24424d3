"""The pieces of the stage-1 reference report: F1 at a tolerance and the tuned baseline."""

import numpy as np
import pytest

from mapkit.train.reference import f1_at, ngram_baselines, normalised_flux, tune_baseline


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


def test_ngram_baselines_by_hand():
    from mapkit.train.transformer import unigram_perplexity

    BOS, EOS = 1, 2
    train = [np.array([BOS, 4, 5, 4, 5, EOS]), np.array([BOS, 4, 5, EOS])]
    val = [np.array([BOS, 4, 5, 4, EOS])]
    out = ngram_baselines(train, val, vocab_size=7)
    assert out["tokens"] == 4
    # unigram: counts 4:3 5:3 EOS:2, add-one over 5 targetable tokens (EOS, UNK, 4, 5, 6) -> /13
    expected = np.exp(-np.mean(np.log([4 / 13, 4 / 13, 4 / 13, 3 / 13])))
    assert out["unigram"]["perplexity"] == pytest.approx(expected)
    assert out["unigram"]["perplexity"] == pytest.approx(unigram_perplexity(train, val, 7))
    assert out["unigram"]["accuracy"] == 0.5  # argmax is token 4 (first of the tie 4/5)
    # bigram (Witten-Bell): BOS->4 (2 of 2, 1 type), 4->5 (3 of 3, 1 type), 5->4 (1 of 3, 2 types), 4->EOS (unseen)
    p = [(2 + 4 / 13) / 3, (3 + 4 / 13) / 4, (1 + 2 * 4 / 13) / 5, (0 + 3 / 13) / 4]
    assert out["bigram"]["perplexity"] == pytest.approx(np.exp(-np.mean(np.log(p))))
    assert out["bigram"]["accuracy"] == 0.5  # 4 after BOS and 5 after 4 right; EOS is likelier than 4 after 5


def test_reports_score_the_levels_the_run_validated_on():
    import json

    from mapkit.train.reference import _level_filters

    run = {"train_config": json.dumps({"characteristic": "OneSaber", "difficulties": ["Expert"],
                                       "exclude_flagged": True, "lr": 1e-3})}
    assert _level_filters(run) == {"characteristic": "OneSaber", "difficulties": ["Expert"], "exclude_flagged": True}
    older = {"train_config": json.dumps({"lr": 1e-3})}  # a run saved before the filters existed
    assert _level_filters(older) == {"characteristic": "Standard", "difficulties": None, "exclude_flagged": False}


def test_realigned_truth_moves_notes_by_the_audit_lag_and_drops_those_outside_the_song():
    from mapkit.datasets.torch_datasets import LevelRef
    from mapkit.train.reference import _moved

    level = LevelRef("s", "Standard", "Expert", 100, "f", "g", "t", "levels/s/Standard/Expert", lag_frames=3)
    assert _moved(np.array([2, 10, 99]), level).tolist() == [7, 96]  # notes 30 ms late sit 3 frames earlier
    early = LevelRef("s", "Standard", "Expert", 100, "f", "g", "t", "levels/s/Standard/Expert", lag_frames=-2)
    assert _moved(np.array([0, 50, 98]), early).tolist() == [2, 52]
