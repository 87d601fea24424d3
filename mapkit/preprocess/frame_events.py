"""The per-frame multi-label target and the time-ordered object stream of a whole level. Pure functions.

``frame_events`` [T, K] uint8 (beside ``frame_class``): 1 where a frame holds
an event of channel k, 0 elsewhere. Channels (:data:`FRAME_EVENT_CHANNELS`):

==  ==================  ===================================================================
k   name                1 on frame f when
==  ==================  ===================================================================
0   ``red_note``        a red colour note has frame f
1   ``blue_note``       a blue colour note has frame f
2   ``bomb``            a bomb has frame f
3   ``wall_start``      a wall's ``frame`` is f
4   ``wall_active``     ``frame <= f < max(end_frame, frame + 1)`` for some wall
5   ``arc_head``        an arc's ``frame`` is f
6   ``arc_tail``        an arc's ``tail_frame`` is f
7   ``chain_head``      a chain's ``frame`` is f
8   ``chain_tail``      a chain's ``tail_frame`` is f
9   ``light_event``     a basic light event has frame f
10  ``boost_event``     a colour-boost event has frame f
11  ``rotation_event``  a rotation event has frame f
12  ``njs_event``       an NJS event has frame f
13  ``light_group``     an event-box group has frame f
==  ==================  ===================================================================

The object stream (:func:`object_stream`) is derived, not stored: every
note and object of a difficulty as one record array (:data:`STREAM_DTYPE`:
time, beat, frame, kind, index into its own dataset), sorted by time, then
kind (:data:`STREAM_KINDS` order), then index.
"""

from __future__ import annotations

import numpy as np

from mapkit.preprocess.notes import BLUE, BOMB, RED
from mapkit.preprocess.objects import OBJECT_KINDS

#: The channels of ``frame_events``, in order (K = 14).
FRAME_EVENT_CHANNELS = ("red_note", "blue_note", "bomb", "wall_start", "wall_active", "arc_head", "arc_tail",
                        "chain_head", "chain_tail", "light_event", "boost_event", "rotation_event", "njs_event",
                        "light_group")
N_FRAME_EVENT_CHANNELS = len(FRAME_EVENT_CHANNELS)
#: Name of the stored dataset.
FRAME_EVENTS = "frame_events"

#: Kinds of the object stream: notes (stored ``notes``, colour notes and bombs) then every object kind.
STREAM_KINDS = ("notes",) + OBJECT_KINDS
#: One entry of the object stream: ``kind`` indexes STREAM_KINDS, ``index`` the record in its dataset.
STREAM_DTYPE = np.dtype([("time_s", "<f8"), ("beat", "<f8"), ("frame", "<i4"), ("kind", "i1"), ("index", "<i4")])

_POINT_CHANNELS = (("wall_start", "obstacles", "frame"), ("arc_head", "arcs", "frame"),
                   ("arc_tail", "arcs", "tail_frame"), ("chain_head", "chains", "frame"),
                   ("chain_tail", "chains", "tail_frame"), ("light_event", "light_events", "frame"),
                   ("boost_event", "boost_events", "frame"), ("rotation_event", "rotation_events", "frame"),
                   ("njs_event", "njs_events", "frame"), ("light_group", "event_box_groups", "frame"))


def frame_events(notes: np.ndarray, objects: dict, n_frames: int) -> np.ndarray:
    """The ``[n_frames, K]`` uint8 multi-label target of stored notes and placed objects.

    Parameters
    ----------
    notes : np.ndarray
        Stored notes (``frame``, ``color``), frames in [0, T).
    objects : dict
        Placed records by kind (``mapkit.preprocess.objects.place_objects``);
        a missing kind counts as none.
    n_frames : int
        T.

    Raises
    ------
    ValueError
        A frame outside [0, T) (placed records never have one).
    """
    out = np.zeros((n_frames, N_FRAME_EVENT_CHANNELS), dtype=np.uint8)
    ch = {name: k for k, name in enumerate(FRAME_EVENT_CHANNELS)}

    def mark(channel: str, frames):
        frames = np.asarray(frames, dtype=np.int64)
        if frames.size and (frames.min() < 0 or frames.max() >= n_frames):
            raise ValueError(f"{channel} frames must lie in [0, {n_frames}), got [{frames.min()}, {frames.max()}]")
        out[frames, ch[channel]] = 1

    for name, color in (("red_note", RED), ("blue_note", BLUE), ("bomb", BOMB)):
        mark(name, notes["frame"][notes["color"] == color])
    for name, kind, field in _POINT_CHANNELS:
        records = objects.get(kind)
        if records is not None and len(records):
            mark(name, records[field])
    walls = objects.get("obstacles")
    if walls is not None and len(walls):
        # +1 at each start, -1 at each end: the running sum is the number of active walls
        start = walls["frame"].astype(np.int64)
        end = np.minimum(np.maximum(walls["end_frame"].astype(np.int64), start + 1), n_frames)
        delta = np.zeros(n_frames + 1, dtype=np.int64)
        np.add.at(delta, start, 1)
        np.add.at(delta, end, -1)
        out[:, ch["wall_active"]] = np.cumsum(delta[:n_frames]) > 0
    return out


def object_stream(notes: np.ndarray, objects: dict) -> np.ndarray:
    """Every note and object as one time-ordered ``STREAM_DTYPE`` array (see the module docstring)."""
    parts = []
    for k, kind in enumerate(STREAM_KINDS):
        records = notes if kind == "notes" else objects.get(kind)
        if records is None or not len(records):
            continue
        part = np.zeros(len(records), STREAM_DTYPE)
        for f in ("time_s", "beat", "frame"):
            part[f] = records[f]
        part["kind"] = k
        part["index"] = np.arange(len(records))
        parts.append(part)
    if not parts:
        return np.zeros(0, STREAM_DTYPE)
    stream = np.concatenate(parts)
    return stream[np.lexsort((stream["index"], stream["kind"], stream["time_s"]))]
