"""Datasets over a real tiny store: windows, alignment, per-process handles, stage-2 items, split."""

import pickle

import h5py
import numpy as np
import pytest
import torch

from mapkit.datasets.split import split_by_song
from mapkit.datasets.store import Store
from mapkit.datasets.torch_datasets import (PlacementDataset, SelectionDataset, collate_selection,
                                            read_vocab, stage_stats, store_levels)
from mapkit.errors import StoreError
from mapkit.preprocess.difficulties import DIFFICULTY_INDEX
from mapkit.preprocess.targets import PAD, one_hot_states
from mapkit.settings import FeatureSettings
from tests.tiny_store import build_tiny_store

SILENCE = FeatureSettings().silence_value


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_tiny_store(tmp_path_factory.mktemp("tiny"))


def stored(level, name, kind="targets"):
    """One dataset of a level read with plain h5py (features: the song's group)."""
    path, group = (level.target_shard, level.target_group) if kind == "targets" else \
        (level.feature_shard, level.feature_group)
    with h5py.File(path, "r") as f:
        return f[group][name][:]


# --- split -----------------------------------------------------------------------------------------


def test_split_is_by_song_deterministic_and_stable_when_songs_are_added():
    songs = [f"song-{i:03d}" for i in range(200)]
    train, val = split_by_song(songs, 0.2, seed=3)
    assert set(train) | set(val) == set(songs) and not set(train) & set(val)
    assert 20 <= len(val) <= 60  # a hash, not a count, but close to the fraction
    assert split_by_song(reversed(songs), 0.2, seed=3) == (train, val)
    more_train, more_val = split_by_song(songs + [f"new-{i}" for i in range(50)], 0.2, seed=3)
    assert set(val) <= set(more_val) and set(train) <= set(more_train)  # no song changes side
    assert split_by_song(songs, 0.2, seed=4)[1] != val


def test_split_never_silently_empty_and_explicit_songs():
    assert split_by_song(["a", "b"], 0.01)[1] != []  # a fraction asked for gives at least one song
    assert split_by_song(["a", "b"], 0.0) == (["a", "b"], [])
    assert split_by_song(["a"], 0.5)[0] in (["a"], [])  # one song: whatever the hash says, nothing forced
    assert split_by_song(["a", "b", "c"], 0.9, val_songs=["b"]) == (["a", "c"], ["b"])
    with pytest.raises(ValueError, match="zzz"):
        split_by_song(["a", "b"], val_songs=["zzz"])
    with pytest.raises(ValueError):
        split_by_song(["a", "b"], 1.0)


# --- stage 1 ---------------------------------------------------------------------------------------


def test_levels_cover_the_store_with_difficulty_indices(store):
    levels = store_levels(store)
    assert len(levels) == 8  # demo: 3 + 2 + 3 difficulties
    assert {lv.song_id for lv in levels} == set(Store(store).index("features"))
    assert all(lv.difficulty_index == DIFFICULTY_INDEX[lv.difficulty] for lv in levels)
    assert [lv.name for lv in store_levels(store, difficulties=["Easy"])] == \
        [lv.name for lv in levels if lv.difficulty == "Easy"]
    assert store_levels(store, characteristic="OneSaber") == []


def test_windows_are_the_normalised_store_rows_inside_the_song(store):
    ds = PlacementDataset(store, window=100)
    mean, std = stage_stats(Store(store).read_stats(), "placement")
    assert len(ds) == sum(-(-lv.n_frames // 100) for lv in ds.levels)
    starts = []
    for i in range(0, len(ds), 7):
        item = ds[i]
        lv = ds.levels[int(item["level"])]
        s = int(item["start"])
        starts.append(s)
        assert 0 <= s <= lv.n_frames - 100
        assert item["features"].shape == (114, 3, 80) and item["features"].dtype == torch.float32
        rows = stored(lv, "placement", "features")[s: s + 114].astype(np.float32)
        np.testing.assert_allclose(item["features"].numpy(), (rows - mean) / std, rtol=1e-6, atol=1e-5)
        np.testing.assert_array_equal(item["frame_class"].numpy(), stored(lv, "frame_class")[s: s + 100])
        assert bool(item["mask"].all()) and int(item["difficulty"]) == lv.difficulty_index
    assert len(set(s % 100 for s in starts)) > 1  # jittered, not only multiples of L


def test_window_jitter_is_a_function_of_seed_epoch_and_index(store):
    a, b = PlacementDataset(store, seed=1), PlacementDataset(store, seed=1)
    first = [a.locate(i) for i in range(len(a))]
    assert first == [b.locate(i) for i in range(len(b))]
    a.set_epoch(1)
    assert first != [a.locate(i) for i in range(len(a))]
    a.set_epoch(0)
    assert first == [a.locate(i) for i in range(len(a))]


def test_validation_windows_tile_every_frame(store):
    ds = PlacementDataset(store, window=300, jitter=False)
    covered = {li: np.zeros(lv.n_frames, bool) for li, lv in enumerate(ds.levels)}
    for i in range(len(ds)):
        li, s = ds.locate(i)
        covered[li][s: s + 300] = True
    assert all(c.all() for c in covered.values())


def test_notes_sit_on_the_loud_hits_at_offset_zero(store):
    """The DeepSaber offset bug (labels 8 frames off the features) would move the energy peak."""
    ds = PlacementDataset(store, difficulties=["Expert"], jitter=False)
    gain = {}
    for offset in (-8, -2, 0, 2, 8):
        on, off = [], []
        for li in range(len(ds.levels)):
            x = ds.level_features(li).mean(axis=(1, 2))[7:-7]  # loudness of each frame's own row
            note = ds.level_classes(li) > 0
            shifted = np.roll(note, offset)
            on.append(x[shifted])
            off.append(x[~shifted])
        gain[offset] = np.concatenate(on).mean() - np.concatenate(off).mean()
    assert max(gain, key=gain.get) == 0
    assert gain[0] > 2 * max(gain[-8], gain[8])


def test_a_song_shorter_than_the_window_is_padded_and_masked(store):
    ds = PlacementDataset(store, window=1500)
    T = ds.levels[0].n_frames
    assert T < 1500 and len(ds) == len(ds.levels)  # one window per level, none dropped
    item = ds[0]
    mean, std = ds.mean, ds.std
    assert int(item["start"]) == 0 and int(item["mask"].sum()) == T
    np.testing.assert_allclose(item["features"][T + 14:].numpy(), np.broadcast_to((SILENCE - mean) / std,
                                                                                  (1500 - T, 3, 80)), rtol=1e-6)
    assert int(item["frame_class"][T:].abs().sum()) == 0
    np.testing.assert_array_equal(item["frame_class"][:T].numpy(), stored(ds.levels[0], "frame_class"))


def test_handles_are_opened_per_process_never_in_init_or_parent(store):
    ds = PlacementDataset(store)
    assert ds._handles.files == {}  # __init__ read metadata only and closed it
    expected = [ds[i]["features"] for i in range(4)]
    assert ds._handles.files  # this process opened its own
    clone = pickle.loads(pickle.dumps(ds))  # what a spawned worker receives: no handles
    assert clone._handles.files == {}
    fresh = PlacementDataset(store)
    loader = torch.utils.data.DataLoader(fresh, batch_size=2, sampler=range(4), num_workers=2,
                                         multiprocessing_context="spawn")
    got = torch.cat([b["features"] for b in loader])
    assert torch.equal(got, torch.stack(expected))
    assert fresh._handles.files == {}  # the workers opened theirs, the parent none
    # stage 1's class balance reads every target in the parent, then closes what it opened
    assert 0 < fresh.positive_fraction() < 1 and fresh._handles.files == {} and fresh._handles.datasets == {}


def test_mismatched_target_length_is_refused(store, tmp_path):
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    lv = store_levels(copy)[0]
    with h5py.File(lv.target_shard, "r+") as f:
        g = f[lv.target_group]
        short = g["frame_class"][:-3]
        del g["frame_class"]
        g["frame_class"] = short
    with pytest.raises(StoreError, match="frame_class has"):
        PlacementDataset(copy)


# --- stage 2 ---------------------------------------------------------------------------------------


def test_selection_items_hold_rows_at_token_frames_and_float_gaps(store):
    ds = SelectionDataset(store, jitter=False)
    mean, std = stage_stats(Store(store).read_stats(), "selection")
    non_integer_gaps = 0
    for li, lv in enumerate(ds.levels):
        item = ds[li]
        tokens = stored(lv, "tokens")
        frames = stored(lv, "token_frames")
        assert item["tokens"].dtype == torch.int64 and item["src"].dtype == torch.float32
        np.testing.assert_array_equal(item["tokens"].numpy(), tokens)
        np.testing.assert_array_equal(item["token_frames"].numpy(), frames)
        assert frames[0] == -1 and frames[-1] == lv.n_frames  # BOS and EOS on the pad rows
        rows = stored(lv, "selection", "features")[frames + 1].astype(np.float32)
        np.testing.assert_allclose(item["src"][:, :100].numpy(), (rows - mean) / std, rtol=1e-6, atol=1e-5)
        for k, name in enumerate(("gap_prev_s", "gap_next_s", "gap_prev_beats", "gap_next_beats")):
            gap = stored(lv, name)
            np.testing.assert_array_equal(item["src"][:, 100 + k].numpy(), gap)
            non_integer_gaps += int((gap != np.round(gap)).sum())
    assert non_integer_gaps > 0  # seconds stay fractional (DeepSaber truncated them)


def test_one_hot_states_come_from_the_tokens(store):
    vocab = read_vocab(store)
    ds = SelectionDataset(store, one_hot=True)
    item = ds[2]
    assert item["one_hot"].shape == (len(item["tokens"]), 12, 20)
    np.testing.assert_array_equal(item["one_hot"].numpy(), one_hot_states(item["tokens"].numpy(), vocab))
    state = vocab.decode(int(item["tokens"][1]))
    assert tuple(item["one_hot"][1].argmax(-1).tolist()) == tuple(state)
    assert float(item["one_hot"][0].sum()) == 0  # BOS has no state


def test_collate_pads_with_pad_and_masks(store):
    ds = SelectionDataset(store, one_hot=True)
    items = [ds[i] for i in range(len(ds))]
    batch = collate_selection(items)
    lengths = [len(it["tokens"]) for it in items]
    S = max(lengths)
    assert batch["tokens"].shape == (len(items), S) and batch["src"].shape == (len(items), S, 104)
    assert batch["src"].dtype == torch.float32 and batch["one_hot"].shape == (len(items), S, 12, 20)
    assert batch["mask"].sum(1).tolist() == lengths == batch["lengths"].tolist()
    for b, n in enumerate(lengths):
        assert torch.equal(batch["tokens"][b, :n], items[b]["tokens"])
        assert bool((batch["tokens"][b, n:] == PAD).all()) and float(batch["src"][b, n:].abs().sum()) == 0
        assert float(batch["one_hot"][b, n:].sum()) == 0
    assert min(lengths) < S  # the levels differ in length, so padding was exercised


def test_max_tokens_crops_a_contiguous_window(store):
    full = SelectionDataset(store, jitter=False)
    crop = SelectionDataset(store, max_tokens=8, seed=5)
    li = max(range(len(full)), key=lambda i: len(full[i]["tokens"]))
    whole, part = full[li]["tokens"].tolist(), crop[li]["tokens"].tolist()
    assert len(part) == 8
    assert any(whole[s: s + 8] == part for s in range(len(whole) - 7))


def test_windows_read_the_stored_pad_and_refuse_another_context(store):
    assert PlacementDataset(store).context == FeatureSettings().placement_pad
    with pytest.raises(ValueError, match="context 5 is not the store's placement pad 7"):
        PlacementDataset(store, context=5)
