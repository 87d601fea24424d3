"""``mapkit validate`` for walls, arcs, chains, events and ``frame_events`` (store schema 3).

:func:`check_objects` proves for every object kind what the notes' checks
prove for notes:

=================  ==========================================================================
check              what it proves
=================  ==========================================================================
``objects``        records of the contract's dtype; times, beats and float fields finite;
                   sorted by ``time_s``; integer fields whole and in
                   :data:`~mapkit.preprocess.objects.FIELD_RANGES`; walls' durations >= 0
                   and ``duration_s = end_s - time_s``; tails not before heads; the
                   event-box groups' JSON bytes exactly covered by ``json_start``/
                   ``json_length``, each a JSON object; note links (``head_note``,
                   ``tail_note``) -1 or a colour note at the same beat, cell and colour
``object_frames``  ``frame = round(time_s * 100)`` in [0, T) (tails likewise);
                   ``end_frame = min(round(end_s * 100), T)``, so <= T
``object_times``   the tempo map times every beat to its stored seconds (tails, wall ends)
``object_counts``  each dataset's length is its ``objects_kept_json`` count, and read =
                   kept + dropped (``objects_read_json``, ``objects_drops_json``)
``frame_events``   ``[T, K]`` uint8 and equal to the channels recomputed from the stored
                   notes and objects (checked once notes and objects are sound)
=================  ==========================================================================
"""

from __future__ import annotations

import json

import numpy as np

from mapkit.preprocess.frame_events import FRAME_EVENTS, N_FRAME_EVENT_CHANNELS, frame_events
from mapkit.preprocess.objects import (ATTR_DROPS, ATTR_KEPT, ATTR_READ, EVENT_BOX_JSON, FIELD_RANGES, FLOAT_FIELDS,
                                       OBJECT_DTYPES, OBJECT_KINDS, field_out_of_range)
from mapkit.preprocess.timebase import FPS, frame_of

#: |beat -> seconds - stored seconds| allowed (float64 arithmetic on the same numbers), as for notes.
TIME_ATOL = 1e-6


def _attr_json(dg, name):
    raw = dg.attrs.get(name)
    if raw is None:
        return None
    try:
        value = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _first(mask) -> int:
    return int(np.flatnonzero(mask)[0])


def _check_kind(kind: str, r: np.ndarray, T: int, tempo, notes, where: str, report, fps: int) -> bool:
    """One kind's records; returns whether they are sound (frames recomputable from them)."""
    n = len(r)
    if not n:
        return True
    sound = True
    time_fields = [f for f in ("time_s", "beat", "tail_time_s", "tail_beat", "end_s", "duration_s") if f in r.dtype.names]
    for f in time_fields + [f for f in FIELD_RANGES[kind] if f in FLOAT_FIELDS]:
        bad = ~np.isfinite(r[f].astype(np.float64))
        if bad.any():
            report.add("objects", where, f"{kind}: {int(bad.sum())} records with non-finite {f}; record {_first(bad)}",
                       kind=kind, field=f, index=_first(bad))
            return False
    if np.any(np.diff(r["time_s"]) < 0):
        i = _first(np.diff(r["time_s"]) < 0) + 1
        report.add("objects", where, f"{kind} not sorted by time, first out of place at record {i}", kind=kind,
                   index=i)
        sound = False
    for f, (lo, hi) in FIELD_RANGES[kind].items():
        v = r[f].astype(np.float64)
        bad = field_out_of_range(kind, f, v)
        if bad.any():
            i = _first(bad)
            report.add("objects", where, f"{kind}: {int(bad.sum())} records with {f} outside [{lo}, {hi}]; record "
                                         f"{i} has {v[i]!r}", kind=kind, field=f, index=i, value=float(v[i]))
            sound = False
    if kind == "obstacles":
        off = np.abs(r["duration_s"] - (r["end_s"] - r["time_s"])) > TIME_ATOL
        if off.any() or np.any(r["duration_s"] < 0):
            i = _first(off | (r["duration_s"] < 0))
            report.add("objects", where, f"obstacles: record {i} has duration_s {r['duration_s'][i]!r}, its times "
                                         f"give {r['end_s'][i] - r['time_s'][i]!r}", kind=kind, index=i)
            sound = False
    if "tail_beat" in r.dtype.names and np.any(r["tail_beat"] < r["beat"]):
        i = _first(r["tail_beat"] < r["beat"])
        report.add("objects", where, f"{kind}: record {i} has its tail before its head", kind=kind, index=i)
        sound = False
    sound &= _check_frames(kind, r, T, where, report, fps)
    if tempo is not None:
        pairs = [("beat", "time_s"), ("tail_beat", "tail_time_s")]
        for beat_f, time_f in pairs:
            if beat_f in r.dtype.names:
                _check_times(kind, tempo.seconds(r[beat_f]), r[time_f], time_f, where, report)
        if kind == "obstacles":
            _check_times(kind, tempo.seconds(r["beat"] + r["duration_beats"]), r["end_s"], "end_s", where, report)
    for f in ("head_note", "tail_note"):
        if f in r.dtype.names:
            sound &= _check_links(kind, r, f, notes, where, report)
    return sound


def _check_frames(kind: str, r: np.ndarray, T: int, where: str, report, fps: int) -> bool:
    sound = True
    for time_f, frame_f in (("time_s", "frame"), ("tail_time_s", "tail_frame")):
        if time_f not in r.dtype.names:
            continue
        want = frame_of(r[time_f], fps)
        got = r[frame_f].astype(np.int64)
        bad = (got != want) | (got < 0) | (got >= T)
        if bad.any():
            i = _first(bad)
            report.add("object_frames", where, f"{kind}: {int(bad.sum())} records off their {frame_f} or outside "
                                               f"[0, {T}); record {i} at {r[time_f][i]:.6f} s is on {frame_f} "
                                               f"{int(got[i])}", kind=kind, field=frame_f, index=i, stored=int(got[i]),
                       expected=int(want[i]))
            sound = False
    if kind == "obstacles":
        want = np.minimum(frame_of(r["end_s"], fps), T)
        bad = r["end_frame"].astype(np.int64) != want
        if bad.any():
            i = _first(bad)
            report.add("object_frames", where, f"obstacles: record {i} ends on frame {int(r['end_frame'][i])}, "
                                               f"min(round(end_s * 100), T) is {int(want[i])}", kind=kind,
                       field="end_frame", index=i, stored=int(r["end_frame"][i]), expected=int(want[i]))
            sound = False
    return sound


def _check_times(kind, from_tempo, stored, field, where, report):
    dt = np.abs(from_tempo - stored)
    if dt.size and dt.max() > TIME_ATOL:
        i = int(np.argmax(dt))
        report.add("object_times", where, f"{kind}: record {i} is timed {from_tempo[i]:.6f} s by the tempo map, "
                                          f"{field} stored {stored[i]:.6f} s", kind=kind, field=field, index=i)


def _check_links(kind, r, field, notes, where, report) -> bool:
    link = r[field].astype(np.int64)
    beat_f, x_f, y_f = ("beat", "x", "y") if field == "head_note" else ("tail_beat", "tail_x", "tail_y")
    ok = link == -1
    valid = (link >= 0) & (link < len(notes))
    idx = np.where(valid, link, 0)
    if len(notes):
        same = ((np.abs(notes["beat"][idx] - r[beat_f]) <= 1e-6) & (notes["column"][idx] == r[x_f])
                & (notes["row"][idx] == r[y_f]) & (notes["color"][idx] == r["color"]))
        ok |= valid & same
    if not ok.all():
        i = _first(~ok)
        report.add("objects", where, f"{kind}: record {i} links {field} {int(link[i])}, not a note at its beat, "
                                     f"cell and colour", kind=kind, field=field, index=i)
        return False
    return True


def _check_group_json(groups: np.ndarray, data: np.ndarray, where: str, report) -> bool:
    starts, lengths = groups["json_start"].astype(np.int64), groups["json_length"].astype(np.int64)
    expected = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else lengths
    if np.any(lengths < 0) or not np.array_equal(starts, expected) or int(lengths.sum()) != len(data):
        report.add("objects", where, f"event_box_groups: json_start/json_length do not cover the {len(data)} bytes "
                                     f"of {EVENT_BOX_JSON} in order", kind="event_box_groups")
        return False
    raw = data.tobytes()
    for i, (s, n) in enumerate(zip(starts.tolist(), lengths.tolist())):
        try:
            ok = isinstance(json.loads(raw[s:s + n].decode("utf-8")), dict)
        except ValueError:
            ok = False
        if not ok:
            report.add("objects", where, f"event_box_groups: group {i}'s JSON does not read as a JSON object",
                       kind="event_box_groups", index=i)
            return False
    return True


def _notes_sound(notes: np.ndarray, T: int, fps: int) -> bool:
    """Whether the notes can give frame_events (otherwise the note checks report them, once)."""
    if not {"time_s", "frame", "column", "row", "color", "direction"} <= set(notes.dtype.names or ()):
        return False
    times = notes["time_s"].astype(np.float64)
    if not np.all(np.isfinite(times)):
        return False
    frames = notes["frame"].astype(np.int64)
    col, row, color, direction = (notes[k].astype(np.int64) for k in ("column", "row", "color", "direction"))
    on_grid = ((col >= 0) & (col < 4) & (row >= 0) & (row < 3) & np.isin(color, (0, 1, 3))
               & (direction >= 0) & (direction < 9) & ((color != 3) | (direction == 0)))
    in_order = np.array_equal(np.lexsort((row, col, times)), np.arange(len(times)))
    return bool(np.all(frames == frame_of(times, fps)) and np.all((frames >= 0) & (frames < T))
                and np.all(on_grid) and in_order)


def check_objects(dg, where: str, T: int, tempo, report, fps: int = FPS) -> int:
    """Every object check of one difficulty group ``dg`` (see the module docstring); returns its object count.

    ``tempo`` is the group's TempoMap (None when it does not read: then only
    the time checks are skipped); the dtypes were checked by the caller, so a
    dataset of another dtype is skipped here.
    """
    notes = dg["notes"][()] if "notes" in dg else np.zeros(0)
    records, sound, total = {}, notes.dtype.names is not None, 0
    kept = _attr_json(dg, ATTR_KEPT)
    read, drops = _attr_json(dg, ATTR_READ), _attr_json(dg, ATTR_DROPS)
    if kept is None or read is None or drops is None:
        report.add("object_counts", where, f"{ATTR_KEPT}, {ATTR_READ} or {ATTR_DROPS} missing or not a JSON object")
    for kind in OBJECT_KINDS:
        if kind not in dg or dg[kind].dtype != OBJECT_DTYPES[kind]:
            sound = False
            continue
        r = dg[kind][()]
        records[kind] = r
        total += len(r)
        if kept is not None and kept.get(kind) != len(r):
            report.add("object_counts", where, f"{kind}: {len(r)} records, {ATTR_KEPT} says {kept.get(kind)}",
                       kind=kind, stored=len(r), attribute=kept.get(kind))
        if kept is not None and read is not None and drops is not None:
            d = drops.get(kind, {})
            if not isinstance(d, dict) or read.get(kind) != kept.get(kind, 0) + sum(d.values()):
                report.add("object_counts", where, f"{kind}: read {read.get(kind)} is not kept {kept.get(kind)} + "
                                                   f"dropped {d}", kind=kind)
        if sound or notes.dtype.names is not None:
            sound &= _check_kind(kind, r, T, tempo, notes, where, report, fps)
    if "event_box_groups" in records and EVENT_BOX_JSON in dg and dg[EVENT_BOX_JSON].dtype == np.uint8:
        sound &= _check_group_json(records["event_box_groups"], dg[EVENT_BOX_JSON][()], where, report)
    fe = dg[FRAME_EVENTS]
    if fe.shape != (T, N_FRAME_EVENT_CHANNELS):
        report.add("frame_events", where, f"frame_events is {list(fe.shape)}, expected [{T}, "
                                          f"{N_FRAME_EVENT_CHANNELS}]", shape=list(fe.shape))
    elif sound and fe.dtype == np.uint8 and _notes_sound(notes, T, fps):
        stored = fe[()]
        want = frame_events(notes, records, T)
        diff = np.argwhere(stored != want)
        if len(diff):
            f, k = (int(x) for x in diff[0])
            report.add("frame_events", where, f"{len(diff)} frame/channel values disagree with the notes and objects; "
                                              f"frame {f} channel {k} holds {int(stored[f, k])}, they give "
                                              f"{int(want[f, k])}", count=len(diff), frame=f, channel=k)
    return total
