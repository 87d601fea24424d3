"""The flow constraint of stage-2 decoding (mapkit/train/flow.py) and the sampling options of decoding.py."""

from collections import Counter

import numpy as np
import pytest
import torch

from mapkit.preprocess.notes import BLUE, BOMB, RED
from mapkit.preprocess.parity import parity_errors, swing_states
from mapkit.preprocess.quality import colliding_pairs, vision_blocked
from mapkit.preprocess.targets import BOMB_VALUE, N_SPECIAL, Vocabulary, note_states, notes_from_states
from mapkit.preprocess.timebase import frame_of
from mapkit.train.decoding import _nucleus, beam_search, greedy, sample
from mapkit.train.flow import FlowConstraint, FlowSettings, same_rules, state_features
from mapkit.train.models import SelectionConfig, SelectionModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")
UP, DOWN, LEFT, DOTTED = 0, 1, 2, 8


def state(*notes):
    """A 12-cell state from (column, row, color, direction) notes (direction ignored for bombs)."""
    cells = [0] * 12
    for c, r, color, d in notes:
        cells[4 * r + c] = BOMB_VALUE if color == BOMB else 1 + 9 * color + d
    return tuple(cells)


RED_DOWN = state((1, 0, RED, DOWN))
RED_UP = state((1, 0, RED, UP))
RED_DOT = state((0, 0, RED, DOTTED))
BLUE_DOWN = state((2, 0, BLUE, DOWN))
CENTRE = state((1, 1, RED, DOTTED))            # hides columns 0-1
CENTRE_RIGHT = state((2, 1, BLUE, DOTTED))     # hides columns 2-3
LEFT_SIDE = state((0, 0, RED, DOTTED))
RIGHT_SIDE = state((3, 0, BLUE, DOTTED))
BOMB_BELOW = state((1, 0, BOMB, 0))
CROSSED = state((1, 0, RED, DOWN), (1, 1, BOMB, 0))  # the down cut comes from the bomb's cell


def vocab_of(*states):
    return Vocabulary(tuple(states), tuple(range(len(states), 0, -1)))


def token(vocab, s):
    return vocab.states.index(s) + N_SPECIAL


def tiny_model(vocab, preferred: dict, seed=0):
    """A decoder whose output ignores its input: ``preferred`` token -> logit, every other state 0."""
    torch.manual_seed(seed)
    model = SelectionModel(SelectionConfig(vocab_size=len(vocab), d_model=16, n_encoder_layers=1, n_decoder_layers=1,
                                           n_heads=2, d_ff=32, dropout=0.0))
    with torch.no_grad():
        model.out.weight.zero_()
        model.out.bias.zero_()
        for t, logit in preferred.items():
            model.out.bias[t] = logit
    return model


def two_hand_model():
    """A vocabulary of both colours' states in 4 columns, 2 rows, 3 directions, and a random tiny decoder over it."""
    states = [state((c, r, color, d)) for c in range(4) for r in (0, 2) for color in (RED, BLUE) for d in (0, 1, 8)]
    vocab = vocab_of(*states)
    torch.manual_seed(3)
    return vocab, SelectionModel(SelectionConfig(vocab_size=len(vocab), d_model=16, n_encoder_layers=1,
                                                 n_decoder_layers=1, n_heads=2, d_ff=32, dropout=0.0))


def states_only_mask(vocab_size):
    """An ``allowed`` callable equal to the default mask (every state, no special token): it turns the seam
    repair off, which only the default mask gets."""
    def allowed(prefix):
        mask = torch.ones(prefix.shape[0], vocab_size, dtype=torch.bool)
        mask[:, :N_SPECIAL] = False
        return mask
    return allowed


def src_of(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randn(n + 2, 100, generator=g), torch.rand(n + 2, 4, generator=g)], dim=1)


def decoded_notes(vocab, hyp, times):
    return notes_from_states(times, times * 2, [vocab.decode(t) for t in hyp.states.tolist()])


def errors(notes) -> int:
    return sum(h["errors"] for h in parity_errors(notes).values())


# --------------------------------------------------------------------------- parity


def test_decoding_never_breaks_parity_when_a_legal_state_exists():
    vocab = vocab_of(RED_DOWN, RED_UP, RED_DOT)
    model = tiny_model(vocab, {token(vocab, RED_DOWN): 8.0})  # always the same forehand: a parity error each swing
    n, times = 12, 0.5 * np.arange(1, 13)
    free = greedy(model, src_of(n), None, n)
    assert errors(decoded_notes(vocab, free, times)) == n - 1  # the model alone breaks parity at every swing
    for decode in (lambda c: beam_search(model, src_of(n), None, n, beam_size=3, constraint=c),
                   lambda c: greedy(model, src_of(n), None, n, constraint=c),
                   lambda c: sample(model, src_of(n), None, n, generator=torch.Generator().manual_seed(1),
                                    constraint=c)):
        hyp = decode(FlowConstraint(state_features(vocab.states), times))
        notes = decoded_notes(vocab, hyp, times)
        assert errors(notes) == 0 and hyp.violations == 0
        assert hyp.states.tolist().count(token(vocab, RED_DOWN)) >= n // 3  # still the model's favourite, alternated


def test_without_a_legal_state_the_best_is_taken_and_counted():
    vocab = vocab_of(RED_DOWN, BLUE_DOWN)
    model = tiny_model(vocab, {token(vocab, RED_DOWN): 8.0})
    n, times = 6, 0.5 * np.arange(1, 7)
    hyp = beam_search(model, src_of(n), None, n, beam_size=2, constraint=FlowConstraint(state_features(vocab.states),
                                                                                         times))
    # both states are forehands: from each hand's second swing on no state is legal, so the model's best is taken
    notes = decoded_notes(vocab, hyp, times)
    assert hyp.violations == errors(notes) > 0


def test_a_bomb_below_the_hand_allows_the_reset():
    vocab = vocab_of(RED_DOWN, RED_UP, BOMB_BELOW)
    features = state_features(vocab.states)
    times = np.array([0.5, 1.0, 1.5])
    down, bomb = token(vocab, RED_DOWN), token(vocab, BOMB_BELOW)
    for between, reset_ok in ((bomb, True), (token(vocab, RED_UP), False)):
        c = FlowConstraint(features, times)
        c.begin([1], 1)
        allowed = np.ones((1, len(vocab)), bool)
        allowed[:, :N_SPECIAL] = False
        for t in (down, between):
            c.mask(allowed)
            c.append(np.array([t]))
        bad, _ = c.bad()
        # after down + bomb below: down again is a bomb reset (legal); after down + up: down is the right parity
        assert not bad[0, down]
        if reset_ok:
            notes = notes_from_states(times, times, [RED_DOWN, BOMB_BELOW, RED_DOWN])
            assert errors(notes) == 0 and parity_errors(notes)["left"]["bomb_resets"] == 1
    c = FlowConstraint(features, times)
    c.begin([1], 1)
    c.mask(np.ones((1, len(vocab)), bool))
    c.append(np.array([down]))
    c.mask(np.ones((1, len(vocab)), bool))
    c.append(np.array([down]))  # a forced pick: the constraint counts it when its rule says so
    assert c.bad()[0][0, down] and not c.bad()[0][0, token(vocab, RED_UP)]


def test_the_constraint_flags_exactly_the_swings_evaluate_counts_as_errors():
    # random picks over a real vocabulary: every flagged pick is a parity error of evaluate's model and back
    from mapkit.preprocess.levels import read_level

    level = read_level("tests/fixtures/maps/JOURNEY")
    counts = Counter()
    for d in level.difficulties:
        notes = d.notes
        counts.update(map(tuple, note_states(frame_of(notes["time_s"]), notes["column"], notes["row"], notes["color"],
                                             notes["direction"])[1].tolist()))
    vocab = Vocabulary.from_counts(counts, 300)
    features = state_features(vocab.states)
    rng = np.random.default_rng(0)
    times = np.cumsum(rng.choice([0.05, 0.1, 0.15, 0.25, 0.4], size=300))
    c = FlowConstraint(features, times, settings=FlowSettings(vision=False, collisions=False))
    c.begin([1], 1)
    picks, flagged = [], []
    for _ in range(len(times)):
        c.mask(np.ones((1, len(vocab)), bool))
        pick = int(rng.integers(N_SPECIAL, len(vocab)))
        flagged.append(bool(c._last_bad[0, pick]))
        picks.append(pick)
        c.append(np.array([pick]))
    notes = notes_from_states(times, times, [vocab.decode(t) for t in picks])
    swings = swing_states(notes).swings
    error_picks = [set(range(np.searchsorted(times, s["start_s"]), np.searchsorted(times, s["end_s"]) + 1))
                   for s in swings[swings["error"]]]
    flagged_picks = set(np.flatnonzero(flagged).tolist())
    assert len(error_picks) > 20
    assert all(picks_of_swing & flagged_picks for picks_of_swing in error_picks)  # every error was flagged
    assert flagged_picks <= set().union(*error_picks)  # and nothing else (one pick can break both hands)
    assert c.violations([0]) == sum(flagged)


# --------------------------------------------------------------------------- vision and collisions


def test_vision_blocks_are_masked():
    vocab = vocab_of(CENTRE, LEFT_SIDE, RIGHT_SIDE, CENTRE_RIGHT)
    times = np.array([0.0, 0.3, 0.45, 0.7, 1.0])
    c = FlowConstraint(state_features(vocab.states), times, "Expert")  # Expert window: 0.1-0.625 s
    c.begin([1], 1)
    allowed = np.ones((1, len(vocab)), bool)
    c.mask(allowed)
    c.append(np.array([token(vocab, CENTRE)]))
    bad = c.bad()[1][0]
    assert bad[token(vocab, LEFT_SIDE)] and bad[token(vocab, CENTRE)] and not bad[token(vocab, RIGHT_SIDE)]
    # a centre note on the right now would hide columns 2-3 at 0.45 s, where columns 0-1 are hidden already
    assert bad[token(vocab, CENTRE_RIGHT)]
    model = tiny_model(vocab, {token(vocab, CENTRE): 6.0, token(vocab, LEFT_SIDE): 5.0})
    n = len(times)
    hyp = sample(model, src_of(n), None, n, generator=torch.Generator().manual_seed(0),
                 constraint=FlowConstraint(state_features(vocab.states), times, "Expert"))
    notes = decoded_notes(vocab, hyp, times)
    assert len(vision_blocked(notes, "Expert")) == 0 and hyp.violations == 0
    free = sample(model, src_of(n), None, n, generator=torch.Generator().manual_seed(0))
    assert len(vision_blocked(decoded_notes(vocab, free, times), "Expert")) > 0


def test_colliding_states_are_never_picked():
    vocab = vocab_of(CROSSED, RED_UP, RED_DOWN)
    features = state_features(vocab.states)
    assert features.collides.tolist()[N_SPECIAL:] == [True, False, False]
    assert colliding_pairs(notes_from_states(np.zeros(1), np.zeros(1), [CROSSED])) != []
    model = tiny_model(vocab, {token(vocab, CROSSED): 9.0})
    n, times = 8, 0.5 * np.arange(1, 9)
    for use_cache in (True, False):
        hyp = beam_search(model, src_of(n), None, n, beam_size=2, use_cache=use_cache,
                          constraint=FlowConstraint(features, times))
        assert token(vocab, CROSSED) not in hyp.states.tolist()
        assert colliding_pairs(decoded_notes(vocab, hyp, times)) == []


# --------------------------------------------------------------------------- sampling options


def test_top_p_keeps_exactly_the_nucleus():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3], [0.25, 0.25, 0.25, 0.25]])
    kept = _nucleus(probs, 0.8, None)
    assert (kept[0] > 0).tolist() == [False, True, False, True]  # 0.5 + 0.3 reach 0.8
    assert torch.allclose(kept.sum(-1), torch.ones(2))
    assert (_nucleus(probs, 0.81, None)[0] > 0).tolist() == [False, True, True, True]
    assert (_nucleus(probs, 0.5, None)[1] > 0).tolist() == [True, True, False, False]  # ties: the lower ids
    assert (_nucleus(probs, 1e-6, None)[0] > 0).tolist() == [False, True, False, False]
    assert (_nucleus(probs, None, 2)[0] > 0).tolist() == [False, True, False, True]
    assert torch.equal(_nucleus(probs, None, None), probs)


def test_sampling_draws_only_from_the_nucleus():
    states = [state((c, r, RED, DOTTED)) for c in range(4) for r in range(2)]
    vocab = vocab_of(*states)
    logits = {N_SPECIAL + k: float(v) for k, v in enumerate([3.0, 2.5, 2.0, 0.5, 0.0, 0.0, 0.0, 0.0])}
    model = tiny_model(vocab, logits)
    p = torch.softmax(torch.tensor([3.0, 2.5, 2.0, 0.5, 0.0, 0.0, 0.0, 0.0]), 0)
    nucleus = int((torch.cumsum(p, 0) - p < 0.7).sum())  # the first k states reach 0.7
    n = 200
    hyp = sample(model, src_of(n), None, n, top_p=0.7, generator=torch.Generator().manual_seed(0))
    assert set(hyp.states.tolist()) == set(range(N_SPECIAL, N_SPECIAL + nucleus))
    hyp = sample(model, src_of(n), None, n, top_k=2, generator=torch.Generator().manual_seed(0))
    assert set(hyp.states.tolist()) == {N_SPECIAL, N_SPECIAL + 1}
    with pytest.raises(ValueError, match="top_p"):
        sample(model, src_of(3), None, 3, top_p=0.0)


def test_constrained_sampling_is_seeded_and_cache_independent():
    vocab, model = two_hand_model()
    n = 40
    times = np.cumsum(np.tile([0.12, 0.3, 0.5, 0.2], 10))
    features = state_features(vocab.states)

    def run(seed, use_cache, window=None):
        return sample(model, src_of(n), None, n, temperature=1.5, top_p=0.95, use_cache=use_cache, window=window,
                      generator=torch.Generator().manual_seed(seed), constraint=FlowConstraint(features, times))

    a, b, c = run(7, True), run(7, False), run(8, True)
    assert torch.equal(a.tokens, b.tokens) and a.score == pytest.approx(b.score, abs=1e-5)
    assert not torch.equal(a.tokens, c.tokens)
    for hyp in (a, c):
        notes = decoded_notes(vocab, hyp, times)
        assert errors(notes) == 0 and len(vision_blocked(notes, "Expert")) == 0 and hyp.violations == 0
    beams = [beam_search(model, src_of(n), None, n, beam_size=4, use_cache=u,
                         constraint=FlowConstraint(features, times)) for u in (True, False)]
    assert torch.equal(beams[0].tokens, beams[1].tokens)
    assert errors(decoded_notes(vocab, beams[0], times)) == 0
    windowed = run(7, True, window=12)  # windows decode side by side, each with its own hand states
    assert len(windowed.states) == n and windowed.violations == 0


def test_window_seams_are_repaired():
    # windows decode apart, each from empty hands: every window would open with the favourite forehand
    vocab = vocab_of(RED_DOWN, RED_UP, RED_DOT)
    model = tiny_model(vocab, {token(vocab, RED_DOWN): 8.0, token(vocab, RED_UP): 4.0})
    n, times = 30, 0.5 * np.arange(1, 31)
    features = state_features(vocab.states)
    for decode in (lambda c: beam_search(model, src_of(n), None, n, beam_size=2, window=7, constraint=c),
                   lambda c: sample(model, src_of(n), None, n, window=7, constraint=c,
                                    generator=torch.Generator().manual_seed(0))):
        hyp = decode(FlowConstraint(features, times))
        assert len(hyp.states) == n and errors(decoded_notes(vocab, hyp, times)) == 0 == hyp.violations
    # without the repair (a callable `allowed` turns it off) the seams break parity: each window opens with a forehand
    states_only = states_only_mask(len(vocab))
    apart = beam_search(model, src_of(n), None, n, beam_size=2, window=7, allowed=states_only,
                        constraint=FlowConstraint(features, times))
    assert errors(decoded_notes(vocab, apart, times)) > 0


def test_a_repaired_seam_redecodes_only_the_window_start():
    # a seam that breaks a rule is decoded again only until the window's own states keep the rules from there on
    vocab, model = two_hand_model()
    n, window = 120, 42  # 3 windows of 40 states
    times = np.cumsum(np.tile([0.12, 0.3, 0.5, 0.2], n // 4))
    features = state_features(vocab.states)

    states_only = states_only_mask(len(vocab))  # the default mask, as a callable: the seams are left as decoded
    steps = Counter()
    decode_step = model.decode_step

    def counted(tokens, cache):
        steps[tokens.shape[0]] += 1
        return decode_step(tokens, cache)

    model.decode_step = counted
    for kw in (dict(beam_size=3), dict(generator=True)):
        def decode(allowed=None):
            if "generator" in kw:
                return sample(model, src_of(n), None, n, window=window, allowed=allowed,
                              constraint=FlowConstraint(features, times), generator=torch.Generator().manual_seed(1))
            return beam_search(model, src_of(n), None, n, window=window, allowed=allowed,
                               constraint=FlowConstraint(features, times), **kw)

        apart = decode(states_only)
        steps.clear()
        hyp = decode()
        notes = decoded_notes(vocab, hyp, times)
        assert errors(notes) == 0 == hyp.violations and errors(decoded_notes(vocab, apart, times)) > 0
        changed = np.flatnonzero((hyp.tokens != apart.tokens).numpy())
        redone = sum(k for rows, k in steps.items() if rows < 3 * kw.get("beam_size", 1))  # steps of one window
        assert len(changed) and redone < 40  # some states changed, fewer steps than a window's 40 were decoded again
        assert all(any(a <= i < a + redone for a in (41, 81)) for i in changed)  # only at the windows' starts
    model.decode_step = decode_step


def test_path_and_rejoins_follow_the_hands_as_decoding_does():
    vocab = vocab_of(RED_DOWN, RED_UP, BLUE_DOWN)
    down, up, blue = (token(vocab, s) for s in (RED_DOWN, RED_UP, BLUE_DOWN))
    times = 0.5 * np.arange(1, 9)
    c = FlowConstraint(state_features(vocab.states), times)
    own = [down, up, down, up, down, up]
    path = c.path(own)
    c.begin([1], 1)
    for k, t in enumerate(own):
        assert same_rules(c.rows[0], path[k])
        c.mask(np.ones((1, len(vocab)), bool))
        c.append(np.array([t]))
    assert same_rules(c.rows[0], path[-1]) and len(path) == len(own) + 1
    # a row whose red hand last swung down: the own states from `down` on would repeat the parity, from `up` on not
    other = FlowConstraint(state_features(vocab.states), times)
    other.begin([1], 1)
    other.append(np.array([blue]))
    other.append(np.array([down]))  # its state after 2 states: red swung down, blue too
    assert not other.rejoins(0, own[2:], path[2:])
    # from `up` on every state keeps the rules, but blue's state never meets the reference's (blue does not play):
    # true when every remaining state was checked, false when more remain than the horizon
    assert other.rejoins(0, own[3:], path[3:]) and not other.rejoins(0, own[3:], path[3:], horizon=2)
    same = FlowConstraint(state_features(vocab.states), times)
    same.begin([1], 1)
    for t in (down, up):
        same.append(np.array([t]))
    assert same.rejoins(0, own[2:], path[2:])  # the same hands: they have met at once
    assert not same_rules(path[1], path[2]) and same_rules(path[2], path[2]._replace(violations=3))
