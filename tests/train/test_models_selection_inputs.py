"""What stage 2 reads besides one mel row: rows around the note, the beat phase, the difficulty (issue 15)."""

from dataclasses import replace

import h5py
import numpy as np
import pytest
import torch

from mapkit.datasets.torch_datasets import SelectionDataset, SourceLayout, selection_source
from mapkit.preprocess.difficulties import DIFFICULTY_INDEX
from mapkit.preprocess.targets import BOS, EOS, token_sequence
from mapkit.train.models import SELECTION_PRESETS, SelectionModel, selection_loss
from tests.tiny_store import build_tiny_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_selection_source_reads_rows_around_each_note_its_beat_phase_and_difficulty():
    T, pad, n_mels = 12, 1, 3
    rows = np.full((T + 2 * pad, n_mels), -23.0, np.float32)
    rows[pad: pad + T] = np.arange(T, dtype=np.float32)[:, None] + np.array([0.0, 0.25, 0.5], np.float32)
    frames, beats = np.array([0, 5, 11]), np.array([0.5, 1.25, 3.0])
    seq = token_sequence(frames, np.zeros(3, np.int32), frames / 100, beats, T, end_beat=4.0, fps=100)
    gaps = np.stack([seq.gap_prev_s, seq.gap_next_s, seq.gap_prev_beats, seq.gap_next_beats], axis=1)
    mean, std = np.zeros(n_mels, np.float32), np.full(n_mels, 2.0, np.float32)
    layout = SourceLayout(offsets=(-2, 0, 1), beat_periods=(1, 4), n_difficulties=5)
    src = selection_source(rows, seq.token_frames, gaps, mean, std, pad, layout, difficulty=3)
    assert src.shape == (5, layout.dim(n_mels)) == (5, 9 + 4 + 4 + 5) and src.dtype == np.float32
    audio = src[:, :9].reshape(5, 3, n_mels)
    for i, f in enumerate(seq.token_frames):  # BOS on frame -1, EOS on T
        for k, o in enumerate((-2, 0, 1)):
            want = rows[min(max(f + o + pad, 0), T + 2 * pad - 1)] / 2.0  # beyond the pads: the pad row
            np.testing.assert_array_equal(audio[i, k], want)
    assert audio[1, 0, 0] == -11.5  # the first note's row 2 frames before is the pad (silence)
    np.testing.assert_array_equal(src[:, 9:13], gaps)
    all_beats = np.array([0.0, 0.5, 1.25, 3.0, 4.0])  # BOS at beat 0, EOS at the end beat
    for j, period in enumerate((1, 4)):
        np.testing.assert_allclose(src[:, 13 + j], np.sin(2 * np.pi * all_beats / period), atol=1e-6)
        np.testing.assert_allclose(src[:, 15 + j], np.cos(2 * np.pi * all_beats / period), atol=1e-6)
    assert (src[:, 17:].argmax(1) == 3).all() and (src[:, 17:].sum(1) == 1).all()
    plain = selection_source(rows, seq.token_frames, gaps, mean, std, pad)
    assert plain.shape == (5, n_mels + 4)  # the default layout: the note's own row and the gaps
    np.testing.assert_array_equal(plain, src[:, [3, 4, 5, 9, 10, 11, 12]])
    with pytest.raises(ValueError, match="difficulty index"):
        selection_source(rows, seq.token_frames, gaps, mean, std, pad, layout)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_tiny_store(tmp_path_factory.mktemp("tiny-inputs"), n_levels=3)


def test_dataset_items_carry_their_level_difficulty_and_the_stored_beats(store):
    layout = SELECTION_PRESETS["tiny"].source_layout
    ds = SelectionDataset(store, jitter=False, layout=layout)
    audio = layout.audio_dim(100)
    difficulties = set()
    for li, level in enumerate(ds.levels):
        src = ds[li]["src"].numpy()
        assert src.shape[1] == layout.dim(100)
        assert (src[:, -5:].argmax(1) == level.difficulty_index).all() and (src[:, -5:].sum(1) == 1).all()
        difficulties.add(level.difficulty_index)
        with h5py.File(level.target_shard, "r") as f:
            g = f[level.target_group]
            notes, frames = g["notes"][:], g["token_frames"][1:-1]
        # the beat of each state is the earliest stored note on its frame
        beats = np.array([notes["beat"][notes["frame"] == fr].min() for fr in frames])
        phase = np.arctan2(src[1:-1, audio + 4], src[1:-1, audio + 7]) / (2 * np.pi)  # period 1: sin, cos
        np.testing.assert_allclose(np.mod(phase - beats + 0.5, 1.0) - 0.5, 0.0, atol=1e-3)
    assert len(difficulties) > 1
    ds.close()


def _difficulty_batch(rng, n_levels=16, n=12):
    """Levels whose every state is ``4 + (difficulty == ExpertPlus)``: only the difficulty says which."""
    config = replace(SELECTION_PRESETS["tiny"], vocab_size=8)
    layout = config.source_layout
    src = torch.zeros(n_levels, n + 2, config.src_dim)
    src[..., : config.audio_dim] = 0.3 * torch.randn(n_levels, n + 2, config.audio_dim, generator=rng)
    src[..., config.audio_dim: config.audio_dim + 4] = 0.1  # equal gaps, no beat phase
    difficulty = torch.tensor([DIFFICULTY_INDEX["Easy"], DIFFICULTY_INDEX["ExpertPlus"]] * (n_levels // 2))
    src[torch.arange(n_levels), :, config.audio_dim + layout.timing_dim + difficulty] = 1.0
    tokens = (4 + (difficulty == DIFFICULTY_INDEX["ExpertPlus"]).long())[:, None].repeat(1, n + 2)
    tokens[:, 0], tokens[:, -1] = BOS, EOS
    return config, src, tokens


def test_the_difficulty_input_decides_when_only_it_can():
    torch.manual_seed(0)
    config, src, tokens = _difficulty_batch(torch.Generator().manual_seed(0))
    model = SelectionModel(config)
    optim = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(80):
        loss = selection_loss(model(src, None, tokens[:, :-1]), tokens[:, 1:], 0.0)
        optim.zero_grad()
        loss.backward()
        optim.step()
    model.eval()
    _, test_src, test_tokens = _difficulty_batch(torch.Generator().manual_seed(1), n_levels=8)
    with torch.no_grad():
        right = model(test_src, None, test_tokens[:, :-1])[:, :-1].argmax(-1)  # the states (EOS last)
        swapped_src = test_src.clone()
        swapped_src[..., -5:] = test_src[..., -5:].flip(-1)  # Easy <-> ExpertPlus
        swapped = model(swapped_src, None, test_tokens[:, :-1])[:, :-1].argmax(-1)
    states = test_tokens[:, 1:-1]
    assert (right == states).float().mean() > 0.95
    # the first state has no history to copy: the difficulty alone decides it, and swapping it swaps the state
    assert (right[:, 0] == states[:, 0]).all() and (swapped[:, 0] == 9 - states[:, 0]).all()


def test_song_norm_uses_the_songs_own_statistics_without_its_pads():
    rng = np.random.default_rng(0)
    T, pad = 50, 1
    song = rng.normal(3.0, 2.0, (T, 2)).astype(np.float32)
    song[:, 1] = -5.0  # a constant band keeps the store's spread
    rows = np.concatenate([np.full((pad, 2), -23.0, np.float32), song, np.full((pad, 2), -23.0, np.float32)])
    store_mean, store_std = np.zeros(2, np.float32), np.full(2, 4.0, np.float32)
    frames = np.arange(-1, T + 1)
    gaps = np.zeros((T + 2, 4), np.float32)
    src = selection_source(rows, frames, gaps, store_mean, store_std, pad, SourceLayout(song_norm=True))
    np.testing.assert_allclose(src[1:-1, 0].mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(src[1:-1, 0].std(), 1.0, atol=1e-5)
    np.testing.assert_allclose(src[1:-1, 1], 0.0, atol=1e-6)  # (x - its mean) / the store's 4.0
    np.testing.assert_allclose(src[0, 1], (-23.0 + 5.0) / 4.0, rtol=1e-6)  # BOS reads the pad row
    louder = selection_source(rows + 10.0, frames, gaps, store_mean, store_std, pad, SourceLayout(song_norm=True))
    np.testing.assert_allclose(louder[1:-1], src[1:-1], atol=1e-4)  # the same song 10 log units louder
    plain = selection_source(rows + 10.0, frames, gaps, store_mean, store_std, pad)
    assert not np.allclose(plain[1:-1, :2], selection_source(rows, frames, gaps, store_mean, store_std, pad)[1:-1, :2])
