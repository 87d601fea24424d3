"""PyTorch datasets over the store (docs/design.md §6).

:class:`PlacementDataset` (stage 1) yields windows of ``L`` output frames with
their +-7 context rows of placement features, per-band normalised, the
difficulty index and the per-frame classes. :class:`SelectionDataset`
(stage 2) yields one level each: its tokens and, per token, the normalised
stage-2 feature row of the token's frame and the four gaps;
:func:`collate_selection` pads a batch with PAD and builds the masks.

Both read the HDF5 shards lazily. ``__init__`` reads only metadata (the
store's indexes, one pass over the target groups) and closes every file;
``__getitem__`` opens the shards it needs in the process that calls it, with
handles cached per process id, so each DataLoader worker has its own
handles (they cannot be pickled, docs/design.md §10) and a forked worker
never reuses its parent's. Nothing depends on DataLoader internals: every
item is a pure function of ``(index, epoch, seed)`` and the store.

The train/validation split is by song group (:func:`mapkit.datasets.split.split_by_song`),
so a song's levels, and those of its other encodes, are all on one side.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from mapkit.datasets.schema import GAP_NAMES, NO_FRAME
from mapkit.datasets.store import Store, open_shard
from mapkit.errors import StoreError
from mapkit.preprocess.difficulties import DIFFICULTY_INDEX
from mapkit.preprocess.targets import PAD, Vocabulary, one_hot_states
from mapkit.settings import FeatureSettings


# --------------------------------------------------------------------------- store metadata


@dataclass(frozen=True)
class LevelRef:
    """Where one level's features and targets are.

    ``target_group`` is ``levels/<song_id>/<Characteristic>/<Difficulty>``.
    ``lag_frames`` is ``mapkit audit``'s ``align_lag_frames`` (positive: the
    notes are late against the audio's onsets), 0 when never audited.
    """

    song_id: str
    characteristic: str
    difficulty: str
    n_frames: int
    feature_shard: str
    feature_group: str
    target_shard: str
    target_group: str
    lag_frames: int = 0

    @property
    def difficulty_index(self) -> int:
        return DIFFICULTY_INDEX[self.difficulty]

    @property
    def name(self) -> str:
        return f"{self.song_id}/{self.characteristic}/{self.difficulty}"


def store_levels(store, song_ids=None, characteristic: str = "Standard", difficulties=None,
                 exclude_flagged: bool = False) -> list[LevelRef]:
    """Every level of the store with both features and targets, in a stable order.

    Reads only metadata and closes every file. Songs with targets but no
    features (or the reverse) are left out; a level whose ``frame_class``
    length differs from the song's ``n_frames`` is a :class:`StoreError`
    (``mapkit validate`` reports these; training must never guess).

    Parameters
    ----------
    store : Store or path
    song_ids : iterable of str, optional
        Only these songs (default: all).
    characteristic : str
        Characteristic to use ("Standard"), compared case-insensitively.
    difficulties : iterable of str, optional
        Only these difficulties (canonical names, e.g. "Expert").
    exclude_flagged : bool
        Leave out difficulties that ``mapkit audit`` flagged (a non-empty
        ``audit_flags_json`` attribute). Difficulties never audited are kept,
        with a warning that counts them.
    """
    store = store if isinstance(store, Store) else Store(store)
    not_audited = 0
    features = store.index("features")
    targets = store.index("targets")
    wanted = None if song_ids is None else set(song_ids)
    allowed = None if difficulties is None else set(difficulties)
    out = []
    for song_id in sorted(set(features) & set(targets)):
        if wanted is not None and song_id not in wanted:
            continue
        fe, te = features[song_id], targets[song_id]
        n_frames = int(fe.attrs["n_frames"])
        with open_shard(te.shard, features=False) as f:
            song = f[te.group]
            for char_name in sorted(song):
                if char_name.lower() != characteristic.lower():
                    continue
                for diff_name in sorted(song[char_name], key=lambda d: DIFFICULTY_INDEX.get(d, 99)):
                    if diff_name not in DIFFICULTY_INDEX or (allowed is not None and diff_name not in allowed):
                        continue
                    group = song[char_name][diff_name]
                    if "frame_class" not in group:
                        continue
                    if exclude_flagged and "audit_flags_json" not in group.attrs:
                        not_audited += 1
                    elif exclude_flagged and json.loads(group.attrs["audit_flags_json"]):
                        continue
                    if group["frame_class"].shape[0] != n_frames:
                        raise StoreError(te.shard, f"{group.name}: frame_class has {group['frame_class'].shape[0]} "
                                                   f"frames, the song's features {n_frames}; run mapkit validate")
                    out.append(LevelRef(song_id, char_name, diff_name, n_frames, str(fe.shard), fe.group,
                                        str(te.shard), group.name.lstrip("/"),
                                        int(group.attrs.get("align_lag_frames", 0))))
    if not_audited:
        warnings.warn(f"{not_audited} difficult{'ies' if not_audited != 1 else 'y'} of {store.root} not audited, "
                      f"kept: run mapkit audit before --exclude-flagged", stacklevel=2)
    return out


def read_rows(ds, start: int, n: int, n_frames: int) -> np.ndarray:
    """Rows ``[start, start + n)`` of a per-frame dataset (array or h5py) of ``n_frames`` rows, zero outside it.

    ``start`` may be negative or run past the end: those rows are zeros of the dataset's dtype.

    >>> read_rows(np.array([1, 2, 3]), -1, 3, 3)
    array([0, 1, 2])
    >>> read_rows(np.array([1, 2, 3]), 2, 3, 3)
    array([3, 0, 0])
    """
    out = np.zeros((n,) + tuple(ds.shape[1:]), dtype=ds.dtype)
    lo, hi = max(start, 0), min(start + n, n_frames)
    if hi > lo:
        out[lo - start: hi - start] = ds[lo: hi]
    return out


def stage_stats(stats: dict, stage: str) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` float32 arrays of one stage from ``stats.json``; std floored at 1e-6."""
    s = stats.get(stage) or {}
    if s.get("mean") is None or s.get("std") is None:
        raise StoreError("stats.json", f"no {stage} statistics: run mapkit extract first")
    mean = np.asarray(s["mean"], dtype=np.float32)
    std = np.maximum(np.asarray(s["std"], dtype=np.float32), np.float32(1e-6))  # a constant band must not divide by 0
    return mean, std


class ShardHandles:
    """h5py files and datasets opened on first use, per process: a forked or spawned worker opens its own.

    Dataset objects are cached too: an h5py group lookup costs more than
    reading a 100-frame window.
    """

    def __init__(self):
        self.pid = None
        self.files = {}
        self.datasets = {}

    def _check_pid(self):
        if self.pid != os.getpid():
            self.files, self.datasets = {}, {}  # inherited through fork: never use the parent's handles
            self.pid = os.getpid()

    def get(self, path: str, features: bool):
        """The open shard at ``path``."""
        self._check_pid()
        f = self.files.get(path)
        if f is None:
            f = self.files[path] = open_shard(path, features=features)
        return f

    def dataset(self, path: str, group: str, name: str, features: bool):
        """Dataset ``group/name`` of the shard at ``path``."""
        self._check_pid()
        key = (path, group, name)
        d = self.datasets.get(key)
        if d is None:
            d = self.datasets[key] = self.get(path, features)[group][name]
        return d

    def close(self):
        if self.pid == os.getpid():
            for f in self.files.values():
                f.close()
        self.files, self.datasets = {}, {}

    def __getstate__(self):  # pickled into spawned workers: without handles
        return {"pid": None, "files": {}, "datasets": {}}

    def __setstate__(self, state):
        self.__dict__.update(state)


def _item_rng(seed: int, epoch: int, index: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(epoch), int(index), int(purpose)])


# --------------------------------------------------------------------------- stage 1


class PlacementDataset(torch.utils.data.Dataset):
    """Stage-1 windows: ``L`` output frames of one level with their +-``context`` feature rows.

    An epoch holds ``ceil(T / L)`` windows of every level (a song shorter than
    ``L`` gives one, padded), so every song is seen in proportion to its
    length. Window ``k`` of a level starts at ``k * L`` plus a jitter drawn
    from ``(seed, epoch, index)`` (``jitter=True``, training) and is clipped
    to ``[0, T - L]``, so it never reads outside the song; without jitter the
    windows tile the song exactly (the last one overlaps its neighbour).
    Call :meth:`set_epoch` before each epoch.

    Each item is a dict:

    - ``features`` float32 ``[L + 2*context, 3, 80]``: padded placement rows
      ``[s, s + L + 2*context)``, i.e. frames ``s - context .. s + L - 1 + context``,
      normalised per band: ``(x - mean) / std``;
    - ``frame_class`` int64 ``[L]``: stored classes of frames ``s .. s + L - 1``;
    - ``mask`` bool ``[L]``: False on the frames past the end of a song shorter
      than ``L`` (their features are the silence value, their class 0);
    - ``difficulty`` int64 (Easy 0 .. ExpertPlus 4), ``level`` int64 (index
      into :attr:`levels`), ``start`` int64 (``s``);
    - ``frame_events`` float32 ``[L, K]`` only with ``frame_events=True``: the
      stored multi-label target of those frames (channels of
      :data:`mapkit.preprocess.frame_events.FRAME_EVENT_CHANNELS`; 0 where
      ``mask`` is False).

    Parameters
    ----------
    store : Store or path
    song_ids : iterable of str, optional
        The songs of this split (default: all).
    stats : dict
        ``stats.json`` contents (a checkpoint's copy when resuming); default the store's.
    window : int
        ``L``, output frames per item.
    context : int
        Context frames each side (default: the stored placement pad, ``feature_settings.placement_pad``);
        any other value is a ``ValueError``: the windows would silently shift.
    characteristic, difficulties, exclude_flagged : see :func:`store_levels`
    jitter : bool
        Random window offsets (training) or exact tiling (validation).
    seed : int
    feature_settings : FeatureSettings
        For the silence value of the padding.
    frame_events : bool
        Also return the multi-label ``frame_events`` targets.
    realign : bool
        Move every level's targets onto the audio by its audit lag (``LevelRef.lag_frames``):
        frame ``f`` gets the stored target of frame ``f + lag``, so a map whose notes sit 20 ms
        before the audio's onsets trains (and is scored) on those onsets. Levels never audited
        have lag 0 and are unchanged.
    beat_periods : tuple of float
        Also return ``beat`` float32 ``[L, 2 len(beat_periods)]``: the beat phase of every frame from the
        song's estimated tempo and first beat (:func:`~mapkit.preprocess.beats.song_beat_inputs`), for a
        model with ``PlacementConfig.beat_periods``. Computed once per song and process.
    """

    def __init__(self, store, song_ids=None, stats: dict | None = None, window: int = 100, context: int | None = None,
                 characteristic: str = "Standard", difficulties=None, jitter: bool = True, seed: int = 0,
                 feature_settings: FeatureSettings = FeatureSettings(), exclude_flagged: bool = False,
                 frame_events: bool = False, realign: bool = False, beat_periods: tuple = ()):
        self.frame_events = bool(frame_events)
        self.realign = bool(realign)
        self.beat_periods = tuple(beat_periods)
        self.feature_settings = feature_settings
        self._beat_grids = {}  # (feature shard, group) -> (bpm, first beat frame), filled on first use
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        store = store if isinstance(store, Store) else Store(store)
        self.levels = store_levels(store, song_ids, characteristic, difficulties, exclude_flagged)
        self.window = int(window)
        if context is not None and int(context) != feature_settings.placement_pad:
            raise ValueError(f"context {context} is not the store's placement pad {feature_settings.placement_pad}")
        self.context = feature_settings.placement_pad
        self.jitter = bool(jitter)
        self.seed = int(seed)
        self.epoch = 0
        self.silence = np.float32(feature_settings.silence_value)
        self.mean, self.std = stage_stats(stats if stats is not None else store.read_stats(), "placement")
        counts = [max(1, -(-lv.n_frames // self.window)) for lv in self.levels]
        #: item index -> (level index, window number k)
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._handles = ShardHandles()

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def set_epoch(self, epoch: int):
        """Draw this epoch's window offsets (training); items are a pure function of (index, epoch, seed)."""
        self.epoch = int(epoch)

    def locate(self, index: int) -> tuple[int, int]:
        """``(level index, start frame)`` of item ``index`` in the current epoch."""
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} of {len(self)}")
        li = int(np.searchsorted(self._offsets, index, side="right") - 1)
        k = index - int(self._offsets[li])
        n_frames = self.levels[li].n_frames
        start = k * self.window
        if self.jitter:
            start += int(_item_rng(self.seed, self.epoch, index, 1).integers(-(self.window // 2), self.window // 2 + 1))
        return li, int(min(max(start, 0), max(n_frames - self.window, 0)))

    def read_window(self, level: LevelRef, start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Normalised features, classes and mask of frames ``[start, start + L)`` of ``level``."""
        L, c = self.window, self.context
        n = min(L, level.n_frames - start)  # < L only for a song shorter than L
        rows = self._handles.dataset(level.feature_shard, level.feature_group, "placement", True)[
            start: start + n + 2 * c]
        if n == L:
            x = rows.astype(np.float32)
        else:
            x = np.full((L + 2 * c,) + rows.shape[1:], self.silence, dtype=np.float32)
            x[: len(rows)] = rows
        x -= self.mean
        x /= self.std
        classes = np.zeros(L, dtype=np.int64)
        classes[:n] = read_rows(self._handles.dataset(level.target_shard, level.target_group, "frame_class", False),
                                start + self.lag(level), n, level.n_frames)
        mask = np.zeros(L, dtype=bool)
        mask[:n] = True
        return x, classes, mask

    def __getitem__(self, index: int) -> dict:
        li, start = self.locate(index)
        level = self.levels[li]
        x, classes, mask = self.read_window(level, start)
        item = {"features": torch.from_numpy(x), "frame_class": torch.from_numpy(classes),
                "mask": torch.from_numpy(mask), "difficulty": torch.tensor(level.difficulty_index),
                "level": torch.tensor(li), "start": torch.tensor(start)}
        if self.beat_periods:
            item["beat"] = torch.from_numpy(self.beat_window(li, start, int(mask.sum())))
        if self.frame_events:
            from mapkit.datasets.object_stream import read_frame_events

            item["frame_events"] = torch.from_numpy(read_frame_events(
                self._handles.dataset(level.target_shard, level.target_group, "frame_events", False),
                start, self.window, level.n_frames, self.lag(level)))
        return item

    def level_features(self, li: int) -> np.ndarray:
        """The whole normalised padded placement array ``[T + 2*context, 3, 80]`` of level ``li``."""
        level = self.levels[li]
        x = self._handles.get(level.feature_shard, features=True)[level.feature_group]["placement"][:]
        return (x.astype(np.float32) - self.mean) / self.std

    def beat_grid(self, li: int) -> tuple[float, float]:
        """``(bpm, first beat frame)`` of level ``li``'s song (:func:`~mapkit.preprocess.beats.song_beat_grid`
        of its stored features; computed once per song and process)."""
        from mapkit.preprocess.beats import placement_envelope, song_beat_grid

        level = self.levels[li]
        key = (level.feature_shard, level.feature_group)
        if key not in self._beat_grids:
            rows = self._handles.get(level.feature_shard, features=True)[level.feature_group]["placement"][:]
            self._beat_grids[key] = song_beat_grid(placement_envelope(rows, self.feature_settings),
                                                   self.feature_settings.fps)
        return self._beat_grids[key]

    def beat_window(self, li: int, start: int, n: int) -> np.ndarray:
        """The beat-phase inputs ``[L, 2 len(beat_periods)]`` of frames ``[start, start + n)`` of level ``li``
        (zeros past ``n``, as the features' padding)."""
        from mapkit.preprocess.beats import beat_inputs

        bpm, first = self.beat_grid(li)
        out = np.zeros((self.window, 2 * len(self.beat_periods)), dtype=np.float32)
        out[:n] = beat_inputs(n, bpm, first - start, self.beat_periods, self.feature_settings.fps)
        return out

    def level_beat(self, li: int) -> np.ndarray:
        """The beat-phase inputs ``[T, 2 len(beat_periods)]`` of level ``li``'s whole song."""
        from mapkit.preprocess.beats import beat_inputs

        return beat_inputs(self.levels[li].n_frames, *self.beat_grid(li), self.beat_periods,
                           self.feature_settings.fps)

    def lag(self, level: LevelRef) -> int:
        """Frames the targets of ``level`` are moved by: its audit lag with ``realign``, else 0."""
        return level.lag_frames if self.realign else 0

    def level_classes(self, li: int) -> np.ndarray:
        """The stored ``frame_class`` [T] (uint8) of level ``li`` (moved by :meth:`lag`)."""
        level = self.levels[li]
        stored = self._handles.get(level.target_shard, features=False)[level.target_group]["frame_class"][:]
        return read_rows(stored, self.lag(level), level.n_frames, level.n_frames)

    def level_frame_events(self, li: int) -> np.ndarray:
        """The stored ``frame_events`` [T, K] (uint8) of level ``li`` (moved by :meth:`lag`)."""
        level = self.levels[li]
        stored = self._handles.get(level.target_shard, features=False)[level.target_group]["frame_events"][:]
        return read_rows(stored, self.lag(level), level.n_frames, level.n_frames)

    def event_fractions(self) -> np.ndarray:
        """Per channel, the fraction of frames on which it is 1, over all levels (closes the handles after)."""
        from mapkit.preprocess.frame_events import N_FRAME_EVENT_CHANNELS

        pos, total = np.zeros(N_FRAME_EVENT_CHANNELS, dtype=np.int64), 0
        try:
            for li in range(len(self.levels)):
                fe = self.level_frame_events(li)
                pos += fe.sum(axis=0, dtype=np.int64)
                total += len(fe)
        finally:
            self.close()
        return pos / total if total else pos.astype(np.float64)

    def positive_fraction(self) -> float:
        """Fraction of frames with a note (``frame_class > 0``) over all levels (reads every target).

        Closes this process' handles afterwards: it runs in the training
        parent before DataLoader workers start, which must inherit no open
        h5py file.
        """
        pos = total = 0
        try:
            for li in range(len(self.levels)):
                c = self.level_classes(li)
                pos += int(np.count_nonzero(c))
                total += len(c)
        finally:
            self.close()
        return pos / total if total else 0.0

    def close(self):
        self._handles.close()


# --------------------------------------------------------------------------- stage 2


class SelectionDataset(torch.utils.data.Dataset):
    """Stage-2 items: one level each, its tokens and a source vector per token.

    Each item is a dict:

    - ``tokens`` int64 ``[n+2]``: BOS, states, EOS (the only integer data);
    - ``src`` float32 ``[n+2, layout.dim(100)]``: per token, the normalised
      stage-2 rows around its frame (``layout.offsets``; padded row ``frame + 1``
      for offset 0; BOS and EOS read the pad rows) followed by ``gap_prev_s,
      gap_next_s, gap_prev_beats, gap_next_beats`` exactly as stored (floats,
      never truncated), the beat phase and the difficulty (:func:`selection_source`);
    - ``token_frames`` int64 ``[n+2]``, ``difficulty`` int64, ``level`` int64;
    - ``one_hot`` float32 ``[n+2, 12, 20]`` only with ``one_hot=True``: the seed
      design's state tensors, made from the tokens (not stored).

    With ``max_tokens`` a longer level yields a contiguous crop of that many
    positions, its start drawn from ``(seed, epoch, index)`` (training) or
    the first ones (``jitter=False``).

    Parameters
    ----------
    store : Store or path
    song_ids, stats, characteristic, difficulties, seed, exclude_flagged : as :class:`PlacementDataset`
    vocab : Vocabulary, optional
        For ``one_hot`` (default: the store's vocab.json).
    one_hot : bool
    max_tokens : int, optional
    jitter : bool
    layout : SourceLayout, optional
        What each source vector holds (default: the offset-0 row and the gaps only).
    """

    def __init__(self, store, song_ids=None, stats: dict | None = None, characteristic: str = "Standard",
                 difficulties=None, vocab: Vocabulary | None = None, one_hot: bool = False,
                 max_tokens: int | None = None, jitter: bool = True, seed: int = 0, exclude_flagged: bool = False,
                 feature_settings: FeatureSettings = FeatureSettings(), layout: "SourceLayout | None" = None):
        store = store if isinstance(store, Store) else Store(store)
        self.pad = feature_settings.selection_pad
        self.layout = layout or SourceLayout()
        self.levels = store_levels(store, song_ids, characteristic, difficulties, exclude_flagged)
        self.mean, self.std = stage_stats(stats if stats is not None else store.read_stats(), "selection")
        self.one_hot = bool(one_hot)
        self.vocab = vocab
        if self.one_hot and self.vocab is None:
            self.vocab = read_vocab(store)
        if max_tokens is not None and max_tokens < 2:
            raise ValueError(f"max_tokens must be >= 2, got {max_tokens}")
        self.max_tokens = max_tokens
        self.jitter = bool(jitter)
        self.seed = int(seed)
        self.epoch = 0
        self._handles = ShardHandles()

    def __len__(self) -> int:
        return len(self.levels)

    def set_epoch(self, epoch: int):
        self.epoch = int(epoch)

    def read_level(self, li: int) -> dict:
        """The whole (uncropped) item of level ``li`` as numpy arrays."""
        level = self.levels[li]
        g = self._handles.get(level.target_shard, features=False)[level.target_group]
        tokens = g["tokens"][:].astype(np.int64)
        frames = g["token_frames"][:].astype(np.int64)
        gaps = np.stack([g[name][:] for name in GAP_NAMES], axis=1).astype(np.float32)
        # The whole song's rows in one read: fancy indexing in h5py is slower than this for dense levels.
        rows = self._handles.get(level.feature_shard, features=True)[level.feature_group]["selection"][:]
        if frames.size and (frames[0] + 1 < 0 or frames[-1] + 1 >= len(rows)):
            raise StoreError(level.target_shard, f"{level.target_group}: token frames outside the features; "
                                                 f"run mapkit validate")
        src = selection_source(rows, frames, gaps, self.mean, self.std, self.pad, self.layout,
                               level.difficulty_index)
        return {"tokens": tokens, "token_frames": frames, "src": src}

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} of {len(self)}")
        d = self.read_level(index)
        n = len(d["tokens"])
        if self.max_tokens is not None and n > self.max_tokens:
            start = 0
            if self.jitter:
                start = int(_item_rng(self.seed, self.epoch, index, 2).integers(0, n - self.max_tokens + 1))
            d = {k: v[start: start + self.max_tokens] for k, v in d.items()}
        item = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in d.items()}
        item["difficulty"] = torch.tensor(self.levels[index].difficulty_index)
        item["level"] = torch.tensor(index)
        if self.one_hot:
            item["one_hot"] = torch.from_numpy(one_hot_states(d["tokens"], self.vocab))
        return item

    def close(self):
        self._handles.close()


@dataclass(frozen=True)
class SourceLayout:
    """What a stage-2 source vector holds, in this order (:func:`selection_source`).

    - the audio: ``len(offsets)`` normalised stage-2 rows, those of frames
      ``f + o`` for each offset ``o`` around the token's frame ``f`` (rows
      beyond the pads read the nearest pad row, silence);
    - the timing: the 4 stored gaps, then ``sin`` and ``cos`` of
      ``2 pi beat / P`` for each period ``P`` of ``beat_periods`` (the note's
      phase in the beat, the half bar, the bar), ``beat`` the token's beat
      (the sum of its ``gap_prev_beats`` and those before it; BOS at beat 0);
    - ``n_difficulties`` values: the one-hot difficulty of the level (none when 0).

    ``song_norm``: the mel rows are normalised per band by the song's own mean
    and standard deviation (over its ``T`` frames) instead of the store's, so
    the model sees how loud and bright the moment is *for this song*, not
    which song it is (the store's statistics then only stand in for a song
    with no spread, e.g. silence).
    """

    offsets: tuple = (0,)
    beat_periods: tuple = ()
    n_difficulties: int = 0
    song_norm: bool = False

    def audio_dim(self, n_mels: int) -> int:
        """Length of the audio part: ``len(offsets) * n_mels``."""
        return len(self.offsets) * n_mels

    @property
    def timing_dim(self) -> int:
        """Length of the timing part: 4 gaps and 2 phase values per period."""
        return len(GAP_NAMES) + 2 * len(self.beat_periods)

    def dim(self, n_mels: int) -> int:
        """Length of a whole source vector."""
        return self.audio_dim(n_mels) + self.timing_dim + self.n_difficulties


def selection_source(selection: np.ndarray, token_frames: np.ndarray, gaps: np.ndarray, mean: np.ndarray,
                     std: np.ndarray, pad: int, layout: SourceLayout = SourceLayout(),
                     difficulty: int | None = None) -> np.ndarray:
    """Stage-2 source vectors ``[n+2, layout.dim(n_mels)]`` of one level: training and generation both call this.

    Parameters
    ----------
    selection : np.ndarray [pad + T + pad, n_mels]
        Raw padded stage-2 features (float16 as stored, or float32).
    token_frames : np.ndarray [n+2] int
        Frame of each token; BOS -1 and EOS T read the pad rows (row = frame + pad).
    gaps : np.ndarray [n+2, 4]
        ``gap_prev_s, gap_next_s, gap_prev_beats, gap_next_beats``, used as they are.
    mean, std : np.ndarray [n_mels]
        Per-band normalisation (:func:`stage_stats`).
    pad : int
        The stored stage-2 pad (``FeatureSettings.selection_pad``, at least 1: BOS and EOS sit on pad rows).
    layout : SourceLayout
        Which rows, timing and difficulty values (default: the token's own row and the gaps).
    difficulty : int, optional
        Difficulty index 0..4 (Easy..ExpertPlus); needed when ``layout.n_difficulties``.

    Returns
    -------
    np.ndarray [n+2, layout.dim(n_mels)] float32
        Per token: its normalised feature rows (offset by offset), its gaps, its
        beat phases, its level's one-hot difficulty.
    """
    if pad < 1:
        raise ValueError(f"the stage-2 features need a pad of at least one row for BOS and EOS, got {pad}")
    selection = np.asarray(selection)
    if layout.song_norm:
        mean, std = song_statistics(selection, pad, std)
    rows = np.asarray(token_frames)[:, None] + pad + np.asarray(layout.offsets, dtype=np.int64)[None, :]
    rows = np.clip(rows, 0, len(selection) - 1)  # beyond the pads: the pad row (silence)
    mel = (selection[rows].astype(np.float32) - mean) / std  # [n, offsets, n_mels]
    parts = [mel.reshape(len(rows), -1), np.asarray(gaps, dtype=np.float32)]
    if layout.beat_periods:
        beat = np.cumsum(np.asarray(gaps, dtype=np.float64)[:, GAP_NAMES.index("gap_prev_beats")])
        angle = 2 * np.pi * beat[:, None] / np.asarray(layout.beat_periods, dtype=np.float64)[None, :]
        parts += [np.sin(angle).astype(np.float32), np.cos(angle).astype(np.float32)]
    if layout.n_difficulties:
        if difficulty is None or not 0 <= int(difficulty) < layout.n_difficulties:
            raise ValueError(f"a difficulty index in [0, {layout.n_difficulties}) is needed, got {difficulty}")
        one_hot = np.zeros((len(rows), layout.n_difficulties), dtype=np.float32)
        one_hot[:, int(difficulty)] = 1.0
        parts.append(one_hot)
    return np.concatenate(parts, axis=1)


def song_statistics(selection: np.ndarray, pad: int, fallback_std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and standard deviation of one song's stage-2 rows (its ``T`` frames, pads left out).

    A band whose spread is below 1e-3 (log units) keeps ``fallback_std``, so a
    constant band is not blown up.
    """
    song = np.asarray(selection[pad: len(selection) - pad], dtype=np.float32)
    if not len(song):
        return np.zeros(selection.shape[1], np.float32), np.asarray(fallback_std, np.float32)
    mean, std = song.mean(axis=0), song.std(axis=0)
    return mean, np.where(std > 1e-3, std, fallback_std).astype(np.float32)


def read_vocab(store) -> Vocabulary:
    """The store's ``vocab.json`` as a :class:`Vocabulary` (hash checked): :meth:`Store.read_vocab`."""
    store = store if isinstance(store, Store) else Store(store)
    return store.read_vocab()


def collate_selection(items: list[dict]) -> dict:
    """Right-pad a batch of :class:`SelectionDataset` items.

    Returns a dict with ``tokens`` int64 ``[B, S]`` padded with PAD,
    ``src`` float32 ``[B, S, source length]`` padded with 0.0, ``mask`` bool ``[B, S]``
    (True on real positions), ``token_frames`` int64 padded with -2 (no
    frame), ``lengths`` int64 ``[B]``, ``difficulty`` and ``level`` ``[B]``,
    and ``one_hot`` ``[B, S, 12, 20]`` (zeros on padding) when the items have it.
    Tensors keep their dtypes: nothing but tokens is an integer.
    """
    lengths = torch.tensor([len(it["tokens"]) for it in items], dtype=torch.int64)
    S = int(lengths.max()) if len(items) else 0
    B = len(items)
    out = {
        "tokens": torch.full((B, S), PAD, dtype=torch.int64),
        "token_frames": torch.full((B, S), NO_FRAME, dtype=torch.int64),
        "src": torch.zeros((B, S, items[0]["src"].shape[1]) if B else (0, 0, 0), dtype=torch.float32),
        "mask": torch.zeros((B, S), dtype=torch.bool),
        "lengths": lengths,
        "difficulty": torch.stack([it["difficulty"] for it in items]) if B else torch.zeros(0, dtype=torch.int64),
        "level": torch.stack([it["level"] for it in items]) if B else torch.zeros(0, dtype=torch.int64),
    }
    has_one_hot = B and "one_hot" in items[0]
    if has_one_hot:
        out["one_hot"] = torch.zeros((B, S) + tuple(items[0]["one_hot"].shape[1:]), dtype=torch.float32)
    for b, it in enumerate(items):
        n = int(lengths[b])
        out["tokens"][b, :n] = it["tokens"]
        out["token_frames"][b, :n] = it["token_frames"]
        out["src"][b, :n] = it["src"]
        out["mask"][b, :n] = True
        if has_one_hot:
            out["one_hot"][b, :n] = it["one_hot"]
    return out
