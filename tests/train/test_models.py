import math
import time
from dataclasses import replace

import pytest
import torch

from mapkit.preprocess.targets import BOS, EOS, PAD
from mapkit.train.models import (
    PLACEMENT_PRESETS,
    SELECTION_PRESETS,
    PlacementConfig,
    PlacementModel,
    SelectionConfig,
    SelectionModel,
    onset_loss,
    selection_loss,
    token_accuracy,
)



pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY_SEL = SelectionConfig(vocab_size=40, d_model=32, n_encoder_layers=2, n_decoder_layers=2, n_heads=4, d_ff=64,
                           dropout=0.0)
TINY_COPY = replace(TINY_SEL, copy_head=True)
#: the decoder tests run with and without the copy head (its own cache: queries, keys, token history)
BOTH = pytest.mark.parametrize("config", [TINY_SEL, TINY_COPY], ids=["plain", "copy"])


# ----------------------------------------------------------------- stage 1

def test_placement_shapes_and_ddc_sizes():
    c = PLACEMENT_PRESETS["default"]
    assert (c.context_rows, c.conv_mel_bins, c.frame_features) == (7, 8, 20 * 7 * 8)
    model = PlacementModel(PlacementConfig(n_classes=5)).eval()
    x = torch.randn(2, 30 + 14, 3, 80)
    onset, classes = model(x, torch.tensor([0, 4]), return_classes=True)
    assert onset.shape == (2, 30) and classes.shape == (2, 30, 5)
    assert torch.equal(onset, model(x, torch.tensor([0, 4])))
    with pytest.raises(ValueError, match="expected features"):
        model(torch.randn(2, 44, 80, 3), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="no output frame"):
        model(torch.randn(1, 14, 3, 80), torch.tensor([0]))


def test_placement_preset_hashes_are_stable_and_distinct():
    tiny, default = PLACEMENT_PRESETS["tiny"], PLACEMENT_PRESETS["default"]
    assert tiny.hash != default.hash
    assert PlacementConfig.from_json(tiny.to_json()) == tiny
    assert PlacementConfig.from_json(tiny.to_json()).hash == tiny.hash


@pytest.mark.parametrize("config", [PLACEMENT_PRESETS["default"],
                                    PlacementConfig(conv_filters=(3, 5, 4), conv_time_kernels=(5, 3, 3),
                                                    conv_mel_kernels=(3, 3, 2), pool_mel=2, context=6, n_mels=40)])
def test_conv_once_equals_per_frame_patches(config):
    torch.manual_seed(0)
    model = PlacementModel(config).eval()
    L, w = 12, config.window
    x = torch.randn(2, L + w - 1, config.n_channels, config.n_mels)
    fast = model.frame_features(x)
    # naive: the convs on every output frame's own (2*context+1)-frame patch
    naive = torch.stack([model.convs(x[:, k:k + w].permute(0, 2, 1, 3)).flatten(1) for k in range(L)], dim=1)
    assert fast.shape == naive.shape == (2, L, config.frame_features)
    torch.testing.assert_close(fast, naive, rtol=1e-5, atol=1e-5)


def test_placement_output_k_sees_only_rows_k_to_k_plus_14_before_the_lstm():
    model = PlacementModel(PLACEMENT_PRESETS["tiny"]).eval()
    x = torch.randn(1, 40 + 14, 3, 80)
    base = model.frame_features(x)
    x2 = x.clone()
    x2[:, 30] += 5.0  # padded row 30 = context of outputs 16..30
    changed = (model.frame_features(x2) - base).abs().amax(dim=2)[0] > 0
    assert changed.nonzero().flatten().tolist() == list(range(16, 31))


def test_difficulty_conditions_the_output():
    model = PlacementModel(PLACEMENT_PRESETS["tiny"]).eval()
    x = torch.randn(1, 20 + 14, 3, 80).expand(2, -1, -1, -1)
    out = model(x, torch.tensor([1, 3]))
    assert not torch.allclose(out[0], out[1])


def test_tiny_placement_model_overfits_a_tiny_batch():
    torch.manual_seed(0)
    model = PlacementModel(PLACEMENT_PRESETS["tiny"])
    x = torch.randn(4, 50 + 14, 3, 80)
    target = (torch.rand(4, 50) < 0.2).long() * torch.randint(1, 5, (4, 50))
    x[:, 7:-7] += 3.0 * (target > 0).float()[:, :, None, None]  # onsets are audible on their own frame
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    start = time.process_time()
    losses = []
    for _ in range(100):
        loss = onset_loss(model(x, torch.tensor([0, 1, 3, 4])), target)
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert time.process_time() - start < 10  # CPU seconds of this process: robust to other load
    assert losses[-1] < 0.25 * losses[0]


def test_onset_loss_targets_any_note_and_weights_positives():
    logits = torch.zeros(1, 4)
    cls = torch.tensor([[0, 1, 3, 4]])
    assert float(onset_loss(logits, cls)) == pytest.approx(math.log(2))
    big = torch.tensor([[-20.0, 20.0, 20.0, 20.0]])
    assert float(onset_loss(big, cls)) < 1e-6
    assert float(onset_loss(logits, cls, pos_weight=3.0)) == pytest.approx(math.log(2) * (3 * 3 + 1) / 4)


# ----------------------------------------------------------------- stage 2

def _batch(rng, lengths, vocab=40):
    """Right-padded sources [B, S, 104], masks and tokens [B, S] (BOS ... EOS, PAD after)."""
    S = max(lengths)
    src = torch.zeros(len(lengths), S, 104)
    tokens = torch.full((len(lengths), S), PAD, dtype=torch.long)
    for b, n in enumerate(lengths):
        src[b, :n, :100] = torch.randn(n, 100, generator=rng)
        src[b, :n, 100:] = torch.rand(n, 4, generator=rng) * 2
        tokens[b, :n] = torch.randint(4, vocab, (n,), generator=rng)
        tokens[b, 0], tokens[b, n - 1] = BOS, EOS
    return src, tokens != PAD, tokens


def test_selection_shapes_presets_and_parameter_count():
    assert SELECTION_PRESETS["default"].d_model == 512 and SELECTION_PRESETS["tiny"].d_model == 32
    tiny = SELECTION_PRESETS["tiny"]
    # 9 mel rows around each note, 4 gaps, sin/cos of 3 beat phases, 5 difficulties
    assert tiny.src_dim == 9 * 100 + 4 + 6 + 5 and tiny.audio_dim == 900
    model = SelectionModel(tiny)
    rng = torch.Generator().manual_seed(0)
    src, mask, tokens = _batch(rng, [7, 5], vocab=2004)
    src = torch.cat([src[..., :100].repeat(1, 1, 9), src[..., 100:], torch.zeros(2, 7, 11)], dim=-1)
    logits = model(src, mask, tokens[:, :-1], mask[:, :-1])
    assert logits.shape == (2, 6, 2004)
    with pytest.raises(ValueError, match="915"):
        model(src[..., :913], mask, tokens[:, :-1])
    assert SelectionConfig.from_json(TINY_SEL.to_json()).hash == TINY_SEL.hash


def test_default_selection_model_is_the_46m_transformer():
    n = sum(p.numel() for p in SelectionModel(SELECTION_PRESETS["default"]).parameters())
    assert 44e6 < n < 48e6


def test_gaps_enter_through_log1p():
    model = SelectionModel(TINY_SEL)
    src = torch.rand(1, 3, 104)
    v = model.source_vectors(src)
    torch.testing.assert_close(v[..., :100], src[..., :100])
    torch.testing.assert_close(v[..., 100:], torch.log1p(src[..., 100:]))


@BOTH
def test_decoder_is_causal(config):
    torch.manual_seed(0)
    model = SelectionModel(config).eval()
    src, mask, tokens = _batch(torch.Generator().manual_seed(1), [9])
    tgt = tokens[:, :-1]
    base = model(src, mask, tgt)
    for i in range(1, tgt.shape[1]):
        changed = tgt.clone()
        changed[0, i] = 4 + (int(changed[0, i]) - 3) % 36
        out = model(src, mask, changed)
        torch.testing.assert_close(out[:, :i], base[:, :i], rtol=0, atol=1e-6)
        assert not torch.allclose(out[:, i:], base[:, i:])


@BOTH
def test_padding_does_not_change_real_positions(config):
    torch.manual_seed(0)
    model = SelectionModel(config).eval()
    src, mask, tokens = _batch(torch.Generator().manual_seed(2), [6, 9])
    batched = model(src, mask, tokens[:, :-1], mask[:, :-1])
    alone = model(src[:1, :6], mask[:1, :6], tokens[:1, :5])
    torch.testing.assert_close(batched[0, :5], alone[0], rtol=1e-5, atol=1e-5)


@BOTH
def test_cached_steps_equal_full_decoder_at_every_position(config):
    torch.manual_seed(0)
    model = SelectionModel(config).eval()
    src, mask, tokens = _batch(torch.Generator().manual_seed(3), [11, 11])
    with torch.no_grad():
        memory = model.encode(src, mask)
        full = model.decode(memory, mask, tokens[:, :-1])
        cache = model.start_cache(memory, mask, batch_size=2, capacity=10)
        steps = torch.stack([model.decode_step(tokens[:, i], cache) for i in range(10)], dim=1)
        with pytest.raises(ValueError, match="full"):
            model.decode_step(tokens[:, 0], cache)
    torch.testing.assert_close(steps, full, rtol=1e-5, atol=1e-5)


@BOTH
def test_cache_reorder_follows_back_pointers(config):
    torch.manual_seed(0)
    model = SelectionModel(config).eval()
    src, mask, tokens = _batch(torch.Generator().manual_seed(4), [8])
    prefixes = torch.tensor([[BOS, 5, 6], [BOS, 7, 8], [BOS, 9, 10]])
    with torch.no_grad():
        memory = model.encode(src, mask)
        cache = model.start_cache(memory, mask, batch_size=3, capacity=7)
        for i in range(3):
            model.decode_step(prefixes[:, i], cache)
        index = torch.tensor([2, 0, 0])
        cache.reorder(index)
        nxt = torch.tensor([11, 12, 13])
        stepped = model.decode_step(nxt, cache)
        full = model.decode(memory.expand(3, -1, -1), None, torch.cat([prefixes[index], nxt[:, None]], 1))[:, -1]
    torch.testing.assert_close(stepped, full, rtol=1e-5, atol=1e-5)


@BOTH
def test_beams_converging_on_a_common_prefix_share_it_in_the_cache(config):
    torch.manual_seed(0)
    model = SelectionModel(config).eval()
    src, mask, _ = _batch(torch.Generator().manual_seed(5), [12])
    g = torch.Generator().manual_seed(6)
    # back-pointers of a beam search: row 0 first (BOS), then random parents, twice all one parent
    pointers = [torch.zeros(3, dtype=torch.long)] + [torch.randint(0, 3, (3,), generator=g) for _ in range(7)]
    pointers[3] = torch.tensor([1, 1, 1])
    pointers[6] = torch.tensor([2, 2, 2])
    with torch.no_grad():
        memory = model.encode(src, mask)
        cache = model.start_cache(memory, mask, batch_size=3, capacity=10)
        prefix = torch.full((3, 1), BOS)
        for step, index in enumerate(pointers):
            stepped = model.decode_step(prefix[:, -1], cache)
            full = model.decode(memory, mask, prefix)[:, -1]  # one source, every row's whole prefix
            torch.testing.assert_close(stepped, full, rtol=1e-5, atol=1e-5)
            cache.reorder(index)
            prefix = torch.cat([prefix[index], torch.randint(4, 40, (3, 1), generator=g)], dim=1)
            same = (prefix[:, :-1] == prefix[:1, :-1]).all(0).cumprod(0)  # positions whose history is shared
            assert cache.shared <= int(same.sum())
            if step >= 6:
                assert cache.shared >= 6  # everything up to the last all-one-parent step is shared
    # the prefix part of the attention equals attending over the concatenated keys
    attn = model.decoder[0].self_attn
    x, kp, vp = torch.randn(3, 1, 32), torch.randn(1, 4, 5, 8), torch.randn(1, 4, 5, 8)
    k, v = torch.randn(3, 4, 4, 8), torch.randn(3, 4, 4, 8)
    with torch.no_grad():
        torch.testing.assert_close(attn.attend_with_prefix(x, kp, vp, k, v),
                                   attn.attend(x, torch.cat([kp.expand(3, -1, -1, -1), k], 2),
                                               torch.cat([vp.expand(3, -1, -1, -1), v], 2), None),
                                   rtol=1e-5, atol=1e-5)


def test_selection_loss_ignores_pad_and_smooths_labels():
    V = 10
    logits = torch.zeros(1, 3, V)
    logits[0, 0, 5] = 100.0
    targets = torch.tensor([[5, 6, PAD]])
    loss = selection_loss(logits, targets, label_smoothing=0.0)
    # position 0 is certain (loss 0), position 1 uniform (ln 10), PAD ignored
    assert float(loss) == pytest.approx(torch.log(torch.tensor(10.0)).item() / 2, abs=1e-4)
    assert float(selection_loss(logits, targets)) > float(loss)  # smoothing penalises the certain position
    assert token_accuracy(logits, targets) == (1, 2)


def test_tiny_selection_model_overfits_a_tiny_batch():
    torch.manual_seed(0)
    model = SelectionModel(TINY_SEL)
    src, mask, tokens = _batch(torch.Generator().manual_seed(5), [12, 9, 7])
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    start = time.process_time()
    losses = []
    for _ in range(60):
        loss = selection_loss(model(src, mask, tokens[:, :-1], mask[:, :-1]), tokens[:, 1:], label_smoothing=0.0)
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert time.process_time() - start < 10  # CPU seconds of this process: robust to other load
    assert losses[-1] < 0.1 * losses[0]
    model.eval()
    correct, count = token_accuracy(model(src, mask, tokens[:, :-1], mask[:, :-1]), tokens[:, 1:])
    assert correct == count == 25


def test_forward_is_deterministic_in_eval_mode():
    torch.manual_seed(0)
    a = SelectionModel(TINY_SEL)
    torch.manual_seed(0)
    b = SelectionModel(TINY_SEL)
    src, mask, tokens = _batch(torch.Generator().manual_seed(6), [8])
    a.eval(), b.eval()
    assert torch.equal(a(src, mask, tokens[:, :-1]), b(src, mask, tokens[:, :-1]))
    assert torch.equal(a(src, mask, tokens[:, :-1]), a(src, mask, tokens[:, :-1]))


def test_a_model_that_does_not_fit_the_store_features_is_named():
    from mapkit.settings import FeatureSettings

    assert PlacementConfig().feature_mismatches(FeatureSettings()) == []
    bad = PlacementConfig(context=5, n_mels=64).feature_mismatches(FeatureSettings())
    assert bad == ["model context 5, store placement_pad 7", "model n_mels 64, store placement_n_mels 80"]
    assert PlacementConfig().feature_mismatches(FeatureSettings(placement_pad=9)) == [
        "model context 7, store placement_pad 9"]


def test_a_beat_phase_model_needs_the_phase_of_every_frame_and_reads_it():
    from mapkit.preprocess.beats import BEAT_INPUT_PERIODS

    config = replace(PLACEMENT_PRESETS["tiny"], beat_periods=BEAT_INPUT_PERIODS)
    assert config.beat_inputs == 2 * len(BEAT_INPUT_PERIODS) and PLACEMENT_PRESETS["tiny"].beat_inputs == 0
    torch.manual_seed(0)
    model = PlacementModel(config).eval()
    x, d = torch.randn(2, 30 + 14, 3, 80), torch.tensor([0, 4])
    beat = torch.randn(2, 30, config.beat_inputs)
    for wrong in (None, beat[:, :29], beat[..., :4]):
        with pytest.raises(ValueError, match="beat phase"):
            model(x, d, beat=wrong)
    out = model(x, d, beat=beat)
    assert out.shape == (2, 30) and not torch.allclose(out, model(x, d, beat=beat.roll(7, dims=1)))
    assert PlacementConfig.from_json(config.to_json()) == config  # checkpoints keep the periods
