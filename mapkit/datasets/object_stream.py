"""Torch access to the whole level: the multi-label frame windows and the time-ordered object stream.

:class:`ObjectStreamDataset` (stage-2 style) yields one difficulty per item:
every note and object of it as one time-ordered stream
(:func:`mapkit.preprocess.frame_events.object_stream`, derived from the stored
record datasets when read: nothing more is stored), with the stage-2 feature
row of each entry's frame.
"""

from __future__ import annotations

import numpy as np
import torch

from mapkit.datasets.store import Store
from mapkit.errors import StoreError
from mapkit.preprocess.frame_events import STREAM_KINDS, object_stream
from mapkit.preprocess.objects import OBJECT_KINDS


def read_frame_events(ds, start: int, window: int, n_frames: int, lag: int = 0) -> np.ndarray:
    """Rows ``[start, start + window)`` of a stored ``frame_events`` dataset as float32, zero-padded past T.

    With ``lag`` (frames) row ``f`` holds stored row ``f + lag`` (zero where that is outside the song),
    the targets moved onto the audio by an audit lag (:func:`~mapkit.datasets.torch_datasets.read_rows`).
    """
    from mapkit.datasets.torch_datasets import read_rows

    n = min(window, n_frames - start)
    out = np.zeros((window, ds.shape[1]), dtype=np.float32)
    out[:n] = read_rows(ds, start + lag, n, n_frames)
    return out


def read_level_objects(group) -> tuple[np.ndarray, dict]:
    """A stored difficulty group's ``notes`` and placed object records by kind."""
    return group["notes"][()], {kind: group[kind][()] for kind in OBJECT_KINDS}


class ObjectStreamDataset(torch.utils.data.Dataset):
    """Stage-2-style items: the whole level of one difficulty as a time-ordered stream.

    Each item is a dict of tensors, one entry per note or object, ordered by
    time, then kind, then index (see :data:`~mapkit.preprocess.frame_events.STREAM_KINDS`):

    - ``time_s``, ``beat`` float64 ``[n]``; ``frame`` int64 ``[n]``;
    - ``kind`` int64 ``[n]`` (index into ``STREAM_KINDS``: 0 notes, 1
      obstacles, ... 8 event_box_groups), ``index`` int64 ``[n]`` (the record in
      that kind's stored dataset, read them with :meth:`records`);
    - ``src`` float32 ``[n, 100]``: the normalised stage-2 feature row of each
      entry's frame (padded row ``frame + 1``);
    - ``difficulty``, ``level`` int64.

    Parameters
    ----------
    store : Store or path
    song_ids, stats, characteristic, difficulties : as :class:`~mapkit.datasets.torch_datasets.SelectionDataset`
    kinds : iterable of str, optional
        Only these kinds (default all of ``STREAM_KINDS``).
    """

    def __init__(self, store, song_ids=None, stats: dict | None = None, characteristic: str = "Standard",
                 difficulties=None, kinds=None):
        from mapkit.datasets.torch_datasets import ShardHandles, stage_stats, store_levels

        store = store if isinstance(store, Store) else Store(store)
        self.levels = store_levels(store, song_ids, characteristic, difficulties)
        self.mean, self.std = stage_stats(stats if stats is not None else store.read_stats(), "selection")
        unknown = set(kinds or ()) - set(STREAM_KINDS)
        if unknown:
            raise ValueError(f"unknown kinds {sorted(unknown)}; choose from {', '.join(STREAM_KINDS)}")
        self.kinds = tuple(kinds) if kinds else STREAM_KINDS
        self._handles = ShardHandles()

    def __len__(self) -> int:
        return len(self.levels)

    def records(self, li: int) -> tuple[np.ndarray, dict]:
        """``(notes, {kind: records})`` of level ``li`` as stored."""
        level = self.levels[li]
        return read_level_objects(self._handles.get(level.target_shard, features=False)[level.target_group])

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} of {len(self)}")
        level = self.levels[index]
        notes, objects = self.records(index)
        stream = object_stream(notes if "notes" in self.kinds else notes[:0],
                               {k: v for k, v in objects.items() if k in self.kinds})
        rows = self._handles.get(level.feature_shard, features=True)[level.feature_group]["selection"]
        frames = stream["frame"].astype(np.int64)
        if frames.size and (frames.min() + 1 < 0 or frames.max() + 1 >= rows.shape[0]):
            raise StoreError(level.target_shard, f"{level.target_group}: object frames outside the features; "
                                                 f"run mapkit validate")
        rows = rows[:]
        src = (rows[frames + 1].astype(np.float32) - self.mean) / self.std
        return {"time_s": torch.from_numpy(stream["time_s"].copy()), "beat": torch.from_numpy(stream["beat"].copy()),
                "frame": torch.from_numpy(frames), "kind": torch.from_numpy(stream["kind"].astype(np.int64)),
                "index": torch.from_numpy(stream["index"].astype(np.int64)), "src": torch.from_numpy(src),
                "difficulty": torch.tensor(level.difficulty_index), "level": torch.tensor(index)}

    def close(self):
        self._handles.close()
