import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from mapkit.preprocess.targets import BOS, EOS, N_SPECIAL
from mapkit.train.decoding import beam_search, greedy, sample, window_starts
from mapkit.train.models import SelectionConfig, SelectionModel

VOCAB = 12
CONFIG = SelectionConfig(vocab_size=VOCAB, d_model=32, n_encoder_layers=2, n_decoder_layers=2, n_heads=4, d_ff=64,
                         dropout=0.1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = SelectionModel(CONFIG)
    with torch.no_grad():  # a peaky output layer, so beams really diverge
        m.out.weight.mul_(8.0)
    return m


def _src(n_tokens, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.cat([torch.randn(n_tokens + 2, 100, generator=g), torch.rand(n_tokens + 2, 4, generator=g)], dim=1)
    return src


def _sequence_log_prob(model, src, tokens, allowed_ids=None):
    """Sum of log-probabilities of ``tokens[1:-1]`` renormalised over the allowed ids (full decoder)."""
    model.eval()
    with torch.no_grad():
        logits = model(src[None], None, tokens[None, :-2])[0]
    allowed = torch.zeros(VOCAB, dtype=torch.bool)
    allowed[N_SPECIAL:] = True
    if allowed_ids is not None:
        allowed[:] = False
        allowed[allowed_ids] = True
    logp = F.log_softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
    return float(logp.gather(1, tokens[1:-1, None]).sum())


@pytest.mark.parametrize("beam_size", [1, 2, 5, 8])
def test_beam_search_with_cache_equals_without(model, beam_size):
    src = _src(15)
    a = beam_search(model, src, None, 15, beam_size=beam_size, use_cache=True)
    b = beam_search(model, src, None, 15, beam_size=beam_size, use_cache=False)
    assert torch.equal(a.tokens, b.tokens)
    assert a.score == pytest.approx(b.score, abs=1e-5)


def test_output_has_exactly_n_states_between_bos_and_eos(model):
    for n in (0, 1, 9):
        for hyp in (beam_search(model, _src(n), None, n, beam_size=3), greedy(model, _src(n), None, n),
                    sample(model, _src(n), None, n, generator=torch.Generator().manual_seed(0))):
            assert len(hyp.tokens) == n + 2
            assert hyp.tokens[0] == BOS and hyp.tokens[-1] == EOS
            assert hyp.states.tolist() == hyp.tokens[1:-1].tolist()
            assert all(t >= N_SPECIAL for t in hyp.states.tolist())


def test_score_is_the_sequence_log_probability(model):
    src = _src(7, seed=1)
    for hyp in (beam_search(model, src, None, 7, beam_size=4),
                sample(model, src, None, 7, temperature=2.0, generator=torch.Generator().manual_seed(3))):
        assert hyp.score == pytest.approx(_sequence_log_prob(model, src, hyp.tokens), abs=1e-4)


def test_exhaustive_beam_finds_the_best_sequence(model):
    # 8 states, 3 tokens: a beam of 64 keeps every 2-token prefix, so it finds the exact optimum
    n, src = 3, _src(3, seed=2)
    states = range(N_SPECIAL, VOCAB)
    best = max(_sequence_log_prob(model, src, torch.tensor([BOS, *seq, EOS]))
               for seq in itertools.product(states, repeat=n))
    hyp = beam_search(model, src, None, n, beam_size=64)
    assert hyp.score == pytest.approx(best, abs=1e-5)
    assert beam_search(model, src, None, n, beam_size=4).score <= hyp.score + 1e-6
    assert greedy(model, src, None, n).score <= hyp.score + 1e-6


def test_greedy_takes_the_argmax_at_every_step(model):
    src = _src(6, seed=3)
    hyp = greedy(model, src, None, 6)
    model.eval()
    with torch.no_grad():
        logits = model(src[None], None, hyp.tokens[None, :-2])[0]
    assert hyp.states.tolist() == (logits[:, N_SPECIAL:].argmax(-1) + N_SPECIAL).tolist()


def test_allowed_mask_and_callable_restrict_the_tokens(model):
    src = _src(6, seed=4)
    only = torch.zeros(VOCAB, dtype=torch.bool)
    only[[5, 9]] = True
    hyp = beam_search(model, src, None, 6, beam_size=3, allowed=only)
    assert set(hyp.states.tolist()) <= {5, 9}
    assert hyp.score == pytest.approx(_sequence_log_prob(model, src, hyp.tokens, [5, 9]), abs=1e-4)

    def no_repeat(prefix):  # a per-beam rule: never repeat the previous state
        mask = torch.zeros(prefix.shape[0], VOCAB, dtype=torch.bool)
        mask[:, N_SPECIAL:] = True
        mask[torch.arange(prefix.shape[0]), prefix[:, -1]] = False
        return mask

    for use_cache in (True, False):
        states = beam_search(model, src, None, 6, beam_size=4, allowed=no_repeat, use_cache=use_cache).states.tolist()
        assert all(a != b for a, b in zip(states, states[1:]))
    with pytest.raises(ValueError, match="no allowed token"):
        beam_search(model, src, None, 6, allowed=torch.zeros(VOCAB, dtype=torch.bool))


def test_sampling_is_reproducible_and_cache_independent(model):
    src = _src(12, seed=5)
    a = sample(model, src, None, 12, temperature=1.5, generator=torch.Generator().manual_seed(7))
    b = sample(model, src, None, 12, temperature=1.5, generator=torch.Generator().manual_seed(7), use_cache=False)
    c = sample(model, src, None, 12, temperature=1.5, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.tokens, b.tokens) and a.score == pytest.approx(b.score, abs=1e-5)
    assert not torch.equal(a.tokens, c.tokens)
    # a very low temperature is greedy
    cold = sample(model, src, None, 12, temperature=1e-4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(cold.tokens, greedy(model, src, None, 12).tokens)
    with pytest.raises(ValueError, match="temperature"):
        sample(model, src, None, 12, temperature=0)


def test_decoding_is_deterministic_and_restores_training_mode(model):
    model.train()
    src = _src(10, seed=6)
    a = beam_search(model, src, None, 10, beam_size=4)
    assert model.training
    b = beam_search(model, src, None, 10, beam_size=4)
    assert torch.equal(a.tokens, b.tokens) and a.score == b.score


def test_source_length_must_match_the_token_count(model):
    with pytest.raises(ValueError, match="12 real positions but 9 tokens need 11"):
        beam_search(model, _src(10), None, 9)
    # a padded source is fine when its real part has n + 2 rows
    src = torch.cat([_src(9), torch.zeros(3, 104)])
    mask = torch.tensor([True] * 11 + [False] * 3)
    padded = beam_search(model, src, mask, 9, beam_size=3)
    assert torch.equal(padded.tokens, beam_search(model, _src(9), None, 9, beam_size=3).tokens)
    assert math.isfinite(padded.score)


@pytest.mark.parametrize("n, window", [(10, 12), (11, 12), (30, 12), (29, 10), (1000, 1024), (2000, 1024), (5, 3)])
def test_windows_cover_every_state_within_the_window_length(n, window):
    starts, q = window_starts(n, window)
    assert q + 2 <= window or n + 2 <= window
    if n + 2 <= window:
        assert (starts, q) == ([1], n)
        return
    assert len(starts) == math.ceil(n / (window - 2))
    assert starts[0] == 1 and starts[-1] + q - 1 == n  # first state to last
    for a, b in zip(starts, starts[1:]):
        assert a < b <= a + q  # consecutive windows touch or overlap: no state is left out
    assert sum(a + q - b for a, b in zip(starts, starts[1:])) < len(starts)  # overlaps are small


def _decode_window_alone(model, src, a, q, **kw):
    """One window decoded by itself: its source rows a-1 .. a+q as a level of q states."""
    if "generator" in kw:
        return sample(model, src[a - 1: a + q + 1], None, q, **kw)
    return beam_search(model, src[a - 1: a + q + 1], None, q, **kw)


@pytest.mark.parametrize("beam_size", [1, 3])
@pytest.mark.parametrize("use_cache", [True, False])
def test_windows_decoded_side_by_side_equal_each_window_decoded_alone(model, beam_size, use_cache):
    n, window = 25, 10  # 4 windows of 7 states (3 states of overlap in all)
    src = _src(n, seed=9)
    hyp = beam_search(model, src, None, n, beam_size=beam_size, use_cache=use_cache, window=window)
    starts, q = window_starts(n, window)
    assert len(starts) == 4 and len(hyp.tokens) == n + 2
    alone = [_decode_window_alone(model, src, a, q, beam_size=beam_size) for a in starts]
    expected, end = [BOS], 1
    for a, h in zip(starts, alone):
        expected += h.tokens[1 + end - a: -1].tolist()  # the earlier window keeps the overlap
        end = a + q
    assert hyp.tokens.tolist() == expected + [EOS]
    assert hyp.score == pytest.approx(sum(h.score for h in alone), abs=1e-4)
    # a window that holds the whole level changes nothing
    whole = beam_search(model, src, None, n, beam_size=beam_size, use_cache=use_cache)
    assert torch.equal(whole.tokens, beam_search(model, src, None, n, beam_size=beam_size, window=n + 2).tokens)


def test_windowed_sampling_is_cache_independent(model):
    src = _src(25, seed=4)
    a = sample(model, src, None, 25, generator=torch.Generator().manual_seed(3), window=10)
    b = sample(model, src, None, 25, generator=torch.Generator().manual_seed(3), window=10, use_cache=False)
    assert torch.equal(a.tokens, b.tokens) and a.score == pytest.approx(b.score, abs=1e-4)
    assert len(a.tokens) == 27 and a.tokens[0] == BOS and a.tokens[-1] == EOS
    assert bool((a.tokens[1:-1] >= N_SPECIAL).all())
