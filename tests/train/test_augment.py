"""Stage-1 augmentation and target widening (mapkit.train.augment)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mapkit.train.augment import LOG_PER_DB, batch_generator, gain_shift, mel_shift, widen_targets
from mapkit.train.models import onset_loss


def test_widen_targets_gives_neighbours_the_soft_value_and_keeps_notes_at_one():
    target = torch.tensor([[0, 0, 1, 0, 0, 0, 0, 1.0], [1, 0, 0, 0, 0, 0, 0, 0]])
    wide = widen_targets(target, 1, 0.5)
    assert wide.tolist() == [[0, 0.5, 1, 0.5, 0, 0, 0.5, 1], [1, 0.5, 0, 0, 0, 0, 0, 0]]
    assert widen_targets(target, 2, 0.25)[0].tolist() == [0.25, 0.25, 1, 0.25, 0.25, 0.25, 0.25, 1]
    assert torch.equal(widen_targets(target, 0, 0.5), target)
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        widen_targets(target, 1, 0.0)


def test_onset_loss_with_widening_and_mask():
    logits = torch.zeros(1, 5)
    cls = torch.tensor([[0, 0, 3, 0, 0]])
    # at logit 0 the BCE is log 2 whatever the (soft) target
    assert float(onset_loss(logits, cls, widen=1)) == pytest.approx(math.log(2))
    big = torch.tensor([[-9.0, 9.0, 9.0, 9.0, -9.0]])
    assert float(onset_loss(big, cls, widen=1, widen_value=1.0)) < 1e-3
    assert float(onset_loss(big, cls)) > 3.0  # without widening the neighbours are wrong
    mask = torch.tensor([[False, False, True, False, False]])
    assert float(onset_loss(big, cls, mask=mask)) < 1e-3  # only the note frame counts


def test_gain_shift_adds_the_gain_in_log_power_units_per_band():
    x = torch.zeros(2, 4, 3, 5)
    std = np.full((3, 5), 2.0, dtype=np.float32)
    y = gain_shift(x, std, 6.0, torch.Generator().manual_seed(0))
    per_item = y[:, 0, 0, 0]
    assert torch.all(y == per_item[:, None, None, None])  # one gain per item, all frames and bands
    assert torch.all(per_item.abs() <= 6.0 * LOG_PER_DB / 2.0 + 1e-6)
    assert per_item[0] != per_item[1]
    assert gain_shift(x, std, 0.0, torch.Generator()) is x


def test_mel_shift_moves_whole_bins_and_repeats_the_edges():
    x = torch.arange(6, dtype=torch.float32).expand(64, 2, 1, 6).clone()
    y = mel_shift(x, 2, torch.Generator().manual_seed(1))
    shifts = set()
    for row in y[:, 0, 0]:
        k = int(x[0, 0, 0, 3] - row[3])  # bin 3 holds bin 3 - k
        shifts.add(k)
        expected = (torch.arange(6) - k).clamp(0, 5).float()
        assert torch.equal(row, expected)
    assert shifts == {-2, -1, 0, 1, 2}
    assert mel_shift(x, 0, torch.Generator()) is x


def test_batch_generator_is_a_function_of_the_batch():
    a = torch.rand(3, generator=batch_generator(0, torch.tensor([1, 2]), torch.tensor([0, 100])))
    b = torch.rand(3, generator=batch_generator(0, torch.tensor([1, 2]), torch.tensor([0, 100])))
    c = torch.rand(3, generator=batch_generator(0, torch.tensor([1, 2]), torch.tensor([0, 101])))
    d = torch.rand(3, generator=batch_generator(1, torch.tensor([1, 2]), torch.tensor([0, 100])))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, d)


def test_ddc_training_loss_uses_the_augmentation_only_when_asked(tmp_path):
    from mapkit.datasets.store import Store
    from mapkit.train.ddc import DDCStage, ddc_config
    from mapkit.train.models import PlacementModel
    from tests.tiny_store import VAL_SONG, build_tiny_store

    store = Store(build_tiny_store(tmp_path / "tiny"))
    torch.manual_seed(0)
    plain = DDCStage(store, ddc_config("tiny", max_steps=1))
    songs = [s for s in store.index("features") if s != VAL_SONG]
    plain.prepare(store.read_stats(), songs, [VAL_SONG], 0)
    batch = torch.utils.data.default_collate([plain.train_dataset[i] for i in range(4)])
    model = PlacementModel(plain.model_config()).eval()
    with torch.no_grad():
        base = float(plain.loss(model, batch, "cpu"))
        assert torch.equal(plain.augment(batch), batch["features"])
        for change in (dict(gain_db=6.0), dict(mel_shift_bins=2), dict(widen_frames=1)):
            stage = DDCStage(store, ddc_config("tiny", max_steps=1, **change))
            stage.prepare(store.read_stats(), songs, [VAL_SONG], 0)
            first, again = float(stage.loss(model, batch, "cpu")), float(stage.loss(model, batch, "cpu"))
            assert first != pytest.approx(base, abs=1e-6) and first == again, change
