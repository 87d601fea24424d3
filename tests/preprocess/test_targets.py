from collections import Counter

import numpy as np
import pytest

from mapkit.preprocess.notes import BOMB, BLUE, RED
from mapkit.preprocess.targets import (
    BOS, EOS, UNK, Vocabulary, cell_values, frame_class, note_states, one_hot_states, state_notes,
    token_sequence,
)


def test_frame_class_each_combination():
    frames = np.array([0, 2, 4, 4, 6, 6, 8, 8, 9])
    colors = np.array([RED, BLUE, RED, BLUE, BOMB, BOMB, BOMB, RED, BLUE])
    fc = frame_class(frames, colors, 10)
    assert fc.dtype == np.uint8 and len(fc) == 10
    # frame 8: a bomb and a red note -> the colour note decides (red only)
    assert fc.tolist() == [1, 0, 2, 0, 3, 0, 4, 0, 1, 2]
    assert frame_class([], [], 5).tolist() == [0] * 5


def test_frame_class_rejects_out_of_range_frames():
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        frame_class([10], [RED], 10)
    with pytest.raises(ValueError):
        frame_class([-1], [RED], 10)


def test_cell_values_and_round_trip():
    assert cell_values([RED, BLUE, BOMB], [0, 8, 5]).tolist() == [1, 18, 19]
    frames = np.array([3, 3, 3, 7])
    cols = np.array([0, 3, 1, 2])
    rows = np.array([0, 2, 1, 0])
    colors = np.array([RED, BLUE, BOMB, BLUE])
    dirs = np.array([1, 8, 0, 4])
    sf, states, coll = note_states(frames, cols, rows, colors, dirs)
    assert sf.tolist() == [3, 7] and coll == 0
    assert states[0, 0] == 2 and states[0, 11] == 18 and states[0, 5] == 19 and states[1, 2] == 14
    assert sorted(state_notes(states[0])) == [(0, 0, RED, 1), (1, 1, BOMB, 0), (3, 2, BLUE, 8)]


def test_two_notes_in_one_cell_on_one_frame_count_as_collision_last_wins():
    sf, states, coll = note_states([5, 5], [1, 1], [0, 0], [RED, BLUE], [0, 1])
    assert coll == 1
    assert states[0, 1] == 1 + 9 * BLUE + 1


def test_vocabulary_ranks_unk_and_hash():
    a, b, c = (1,) + (0,) * 11, (0, 2) + (0,) * 10, (0, 0, 19) + (0,) * 9
    vocab = Vocabulary.from_counts(Counter({a: 5, b: 9, c: 1}), size=2)
    assert vocab.states == (b, a) and len(vocab) == 6
    toks = vocab.encode(np.array([a, b, c]))
    assert toks.tolist() == [5, 4, UNK]  # c is out of vocabulary: UNK, not dropped
    assert vocab.decode(4) == b and vocab.decode(BOS) is None
    again = Vocabulary.from_json(vocab.to_json())
    assert again == vocab and again.hash == vocab.hash
    # ties are broken by the state, so the order never depends on dict order
    v1 = Vocabulary.from_counts({a: 3, b: 3}, 2)
    v2 = Vocabulary.from_counts({b: 3, a: 3}, 2)
    assert v1.states == v2.states
    bad = vocab.to_json()
    bad["states"][0][0] = 7
    with pytest.raises(ValueError, match="hash"):
        Vocabulary.from_json(bad)


def test_token_sequence_gaps_and_frames():
    seq = token_sequence([10, 50], [4, 9], [0.1, 0.5], [0.2, 1.0], n_frames=101, end_beat=2.0)
    assert seq.tokens.tolist() == [BOS, 4, 9, EOS]
    assert seq.token_frames.tolist() == [-1, 10, 50, 101]
    np.testing.assert_allclose(seq.gap_prev_s, [0, 0.1, 0.4, 0.5], atol=1e-7)
    np.testing.assert_allclose(seq.gap_next_s, [0.1, 0.4, 0.5, 0], atol=1e-7)
    np.testing.assert_allclose(seq.gap_prev_beats, [0, 0.2, 0.8, 1.0], atol=1e-7)
    assert seq.gap_prev_s.dtype == np.float32 and seq.tokens.dtype == np.int32


def test_empty_level_is_bos_eos():
    seq = token_sequence([], [], [], [], n_frames=301, end_beat=6.0)
    assert seq.tokens.tolist() == [BOS, EOS]
    assert seq.token_frames.tolist() == [-1, 301]
    assert seq.gap_next_s.tolist() == pytest.approx([3.0, 0.0])


def test_one_hot_from_tokens():
    a = (1,) + (0,) * 11
    vocab = Vocabulary.from_counts({a: 1}, 10)
    oh = one_hot_states(np.array([BOS, 4, UNK, EOS]), vocab)
    assert oh.shape == (4, 12, 20)
    assert oh[1, 0, 1] == 1 and oh[1, 1, 0] == 1 and oh[1].sum() == 12
    assert oh[0].sum() == 0 and oh[2].sum() == 0
