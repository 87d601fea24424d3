"""Activation checkpointing of the transformer's layers (RunOptions.recompute): same gradients, less kept."""

import pytest
import torch

from mapkit.train.loop import recompute_layers
from mapkit.train.models import PlacementModel, SelectionConfig, SelectionModel, selection_loss
from tests.train.test_models import _batch

CONFIG = SelectionConfig(vocab_size=40, d_model=32, n_encoder_layers=2, n_decoder_layers=2, n_heads=4, d_ff=128,
                         dropout=0.3)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _step(model, batch):
    """Loss and gradients of one training step, and the bytes autograd kept for the backward pass."""
    src, mask, tokens = batch
    kept = []

    def pack(t):
        kept.append(t.numel() * t.element_size())
        return t

    torch.manual_seed(1)  # the same dropout masks for both models
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = selection_loss(model(src, mask, tokens[:, :-1], mask[:, :-1]), tokens[:, 1:])
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()}, sum(kept)


def test_recomputed_layers_give_the_same_gradients_and_keep_less():
    torch.manual_seed(0)
    plain = SelectionModel(CONFIG).train()
    recomputed = SelectionModel(CONFIG).train()
    recomputed.load_state_dict(plain.state_dict())
    assert recompute_layers(recomputed) == 4
    batch = _batch(torch.Generator().manual_seed(3), [40, 33, 25])
    loss_a, grads_a, kept_a = _step(plain, batch)
    loss_b, grads_b, kept_b = _step(recomputed, batch)
    assert loss_a == loss_b
    for name, g in grads_a.items():
        torch.testing.assert_close(grads_b[name], g, rtol=1e-5, atol=1e-7, msg=name)
    assert kept_b < 0.5 * kept_a, (kept_b, kept_a)  # only the layers' inputs (and the rest) are kept
    # eval mode and no_grad run the layers as before
    recomputed.eval()
    plain.eval()
    src, mask, tokens = batch
    with torch.no_grad():
        assert torch.equal(recomputed(src, mask, tokens[:, :-1], mask[:, :-1]), plain(src, mask, tokens[:, :-1], mask[:, :-1]))


def test_models_without_transformer_layers_are_left_alone():
    assert recompute_layers(PlacementModel()) == 0
