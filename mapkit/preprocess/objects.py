"""Every object of a level besides notes: walls, arcs, chains, lighting, rotations, NJS events.

One place for the store contract of these objects (docs/store.md, "Objects"):
the record dtypes (:data:`OBJECT_DTYPES`), the kinds (:data:`OBJECT_KINDS`),
the drop reasons (:data:`OBJECT_DROP_REASONS`), the field ranges
(:data:`FIELD_RANGES`), the names of the stored datasets and attributes.

Reading (:func:`read_raw_objects`, pure on the parsed JSON) gathers each kind's
raw fields from a v1/v2, v3 or v4 difficulty (and a v4 lightshow file);
:func:`normalise_objects` turns them into time-sorted record arrays, every time
by the difficulty's :class:`~mapkit.preprocess.tempo.TempoMap`, dropping and
counting by reason exactly like notes. :func:`place_objects` (build-targets)
puts them on frames with :func:`mapkit.preprocess.timebase.frame_of` and drops
objects outside the audio (``beyond_audio``).

Kinds and where they come from
------------------------------
===================  ==============================  ==============================  ==========================
kind                 v1/v2                           v3                              v4
===================  ==============================  ==============================  ==========================
``obstacles``        ``_obstacles`` (``_type`` 0     ``obstacles {b,d,x,y,w,h}``     ``obstacles`` +
                     full: y 0 h 5; 1 crouch: y 2                                    ``obstaclesData``
                     h 3; 2 free: ``_lineLayer``,
                     ``_height``)
``arcs``             ``_sliders`` (2.6.0)            ``sliders``                     ``arcs`` + ``colorNotesData``
                                                                                     + ``arcsData``
``chains``           --                              ``burstSliders``                ``chains`` + ``colorNotesData``
                                                                                     + ``chainsData``
``light_events``     ``_events`` except 5, 14, 15,   ``basicBeatmapEvents``          lightshow ``basicEvents`` +
                     100 (type 10 kept: a light      (``bpmEvents`` are tempo)       ``basicEventsData``
                     since game 1.18)
``boost_events``     ``_events`` type 5 (value 1 on) ``colorBoostBeatmapEvents``     lightshow ``colorBoostEvents``
``rotation_events``  ``_events`` 14 early, 15 late,  ``rotationEvents {b,e,r}``      ``spawnRotations`` +
                     value 0-7 -> -60..60 degrees                                    ``spawnRotationsData``
``njs_events``       --                              --                              ``njsEvents`` + ``njsEventData``
``event_box_groups`` --                              ``light{Color,Rotation,Trans-   lightshow ``eventBoxGroups``
                                                     lation}EventBoxGroups``,
                                                     ``vfxEventBoxGroups``
===================  ==============================  ==============================  ==========================

Event-box groups are kept as records (time, group type, group id, number of
boxes) plus each group's JSON, verbatim (keys sorted, compact), in one byte
array: nothing is lost, a richer encoding can be derived from it.

Drop reasons (first that applies, as for notes): ``fake`` (Noodle fake
objects), ``missing_field`` (v1/v2 only), ``bad_value``, ``non_finite``,
``modded`` (Mapping Extensions values >= 1000 in magnitude, v2 wall types >=
1000, Noodle geometry ``_position``/``_scale``/``coordinates``/``size``,
v2 rotation values >= 1000), ``unknown_type``, ``out_of_range`` (a field
outside :data:`FIELD_RANGES`, or not whole where it must be), ``negative_duration``,
``reversed`` (an arc's or chain's tail before its head), ``negative_time``,
``bad_index`` (a v4 lightshow index out of range; in the beatmap file such an
index makes the file unreadable, as for notes), and in build-targets
``beyond_audio``.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np

from mapkit.preprocess.timebase import FPS, frame_of

#: The kinds, in the order they are stored and reported.
OBJECT_KINDS = ("obstacles", "arcs", "chains", "light_events", "boost_events", "rotation_events", "njs_events",
                "event_box_groups")
#: Kinds that are gameplay: their drops count for quarantine, as notes' do.
GAMEPLAY_KINDS = ("obstacles", "arcs", "chains")

#: Drop reasons of objects, in the order they are checked (``beyond_audio`` is added by build-targets).
OBJECT_DROP_REASONS = ("fake", "missing_field", "bad_value", "non_finite", "modded", "unknown_type", "out_of_range",
                       "negative_duration", "reversed", "negative_time", "bad_index")
BEYOND_AUDIO = "beyond_audio"

_T = [("time_s", "<f8"), ("beat", "<f8"), ("frame", "<i4")]
#: The stored record of each kind. ``frame`` fields are ``frame_of(time)``, set by :func:`place_objects`.
OBJECT_DTYPES = {
    "obstacles": np.dtype(_T + [("duration_beats", "<f8"), ("duration_s", "<f8"), ("end_s", "<f8"),
                                ("end_frame", "<i4"), ("x", "i1"), ("y", "i1"), ("width", "i1"), ("height", "i1")]),
    "arcs": np.dtype(_T + [("x", "i1"), ("y", "i1"), ("direction", "i1"), ("color", "i1"), ("multiplier", "<f4"),
                           ("tail_time_s", "<f8"), ("tail_beat", "<f8"), ("tail_frame", "<i4"), ("tail_x", "i1"),
                           ("tail_y", "i1"), ("tail_direction", "i1"), ("mid_anchor", "i1"),
                           ("tail_multiplier", "<f4"), ("head_note", "<i4"), ("tail_note", "<i4")]),
    "chains": np.dtype(_T + [("x", "i1"), ("y", "i1"), ("direction", "i1"), ("color", "i1"),
                             ("tail_time_s", "<f8"), ("tail_beat", "<f8"), ("tail_frame", "<i4"), ("tail_x", "i1"),
                             ("tail_y", "i1"), ("slices", "<i2"), ("squish", "<f4"), ("head_note", "<i4")]),
    "light_events": np.dtype(_T + [("type", "<i2"), ("value", "<i4"), ("float_value", "<f4")]),
    "boost_events": np.dtype(_T + [("on", "i1")]),
    "rotation_events": np.dtype(_T + [("late", "i1"), ("rotation", "<f4")]),
    "njs_events": np.dtype(_T + [("use_previous", "i1"), ("easing", "i1"), ("delta", "<f4")]),
    "event_box_groups": np.dtype(_T + [("group_type", "i1"), ("group_id", "<i4"), ("n_boxes", "<i4"),
                                       ("json_start", "<i8"), ("json_length", "<i4")]),
}
#: The byte array holding each event-box group's JSON (UTF-8), addressed by ``json_start``/``json_length``.
EVENT_BOX_JSON = "event_box_groups_json"
#: The datasets of a difficulty group this module defines (``frame_events`` is in frame_events.py).
OBJECT_DATASETS = OBJECT_KINDS + (EVENT_BOX_JSON,)
#: Event-box group types: v3 arrays / v4 ``t`` (1-4) -> 0 light colour, 1 rotation, 2 translation, 3 vfx.
GROUP_TYPES = ("light_color", "light_rotation", "light_translation", "vfx")
#: Degrees of the v2 rotation values 0-7.
V2_ROTATIONS = (-60, -45, -30, -15, 15, 30, 45, 60)

#: Inclusive ranges of the integer/float fields kept (``None``: any finite value). Time fields excluded.
FIELD_RANGES = {
    # walls outside the four lanes are vanilla decoration: kept (Mapping Extensions' >= 1000 are ``modded``)
    "obstacles": {"x": (-100, 100), "y": (-100, 100), "width": (1, 100), "height": (1, 100),
                  "duration_beats": (0, None)},
    "arcs": {"x": (0, 3), "y": (0, 2), "direction": (0, 8), "color": (0, 1), "tail_x": (0, 3), "tail_y": (0, 2),
             "tail_direction": (0, 8), "mid_anchor": (0, 2), "multiplier": (None, None),
             "tail_multiplier": (None, None)},
    "chains": {"x": (0, 3), "y": (0, 2), "direction": (0, 8), "color": (0, 1), "tail_x": (0, 3), "tail_y": (0, 2),
               "slices": (1, 999), "squish": (0, None)},
    "light_events": {"type": (0, 32767), "value": (-(2 ** 31), 2 ** 31 - 1), "float_value": (None, None)},
    "boost_events": {"on": (0, 1)},
    "rotation_events": {"late": (0, 1), "rotation": (-360, 360)},
    "njs_events": {"use_previous": (0, 1), "easing": (-1, 127), "delta": (None, None)},
    "event_box_groups": {"group_type": (0, 3), "group_id": (-(2 ** 31), 2 ** 31 - 1), "n_boxes": (0, 2 ** 31 - 1)},
}
#: Float fields (the others in FIELD_RANGES must be whole numbers).
FLOAT_FIELDS = {"multiplier", "tail_multiplier", "float_value", "rotation", "delta", "squish", "duration_beats"}

#: Difficulty attributes written by build-targets (JSON objects keyed by kind).
ATTR_READ = "objects_read_json"      # kind -> objects read (dropped ones included)
ATTR_KEPT = "objects_kept_json"      # kind -> records stored (= the dataset's length)
ATTR_DROPS = "objects_drops_json"    # kind -> {reason: count}

# v2 event types that are not lights
_V2_BOOST, _V2_EARLY, _V2_LATE, _V2_TEMPO = 5, 14, 15, 100
_NOODLE_V2 = ("_position", "_scale", "_localRotation", "_rotation")
_NOODLE_V3 = ("coordinates", "size", "localRotation", "worldRotation")


# --- raw columns -----------------------------------------------------------------------------------

class RawKind:
    """One kind's raw fields as read: record field -> list of raw JSON values, in file order.

    ``fake`` flags Noodle fakes, ``modded`` objects with Noodle geometry,
    ``bad_index`` v4 objects whose index is out of range, ``json``
    (event-box groups) each group's JSON text. Filled a whole array at a time
    (levels have tens of thousands of light events).
    """

    def __init__(self):
        self.cols: dict[str, list] = {}
        self.fake: list = []
        self.modded: list = []
        self.bad_index: list = []
        self.json: list = []

    def __len__(self) -> int:
        return len(self.fake)

    def extend(self, cols: dict, fake=False, modded=False, bad_index=False, texts=None):
        """Append equally long columns (a column absent here is None for these rows); flags: bool or list."""
        n0 = len(self.fake)
        n = len(next(iter(cols.values())))
        if n == 0:
            return
        for k, col in cols.items():
            self.cols.setdefault(k, [None] * n0).extend(col)
        for k, col in self.cols.items():
            if len(col) < n0 + n:
                col.extend([None] * (n0 + n - len(col)))
        for name, flag in (("fake", fake), ("modded", modded), ("bad_index", bad_index)):
            getattr(self, name).extend(flag if isinstance(flag, list) else [bool(flag)] * n)
        self.json.extend(texts if texts is not None else [""] * n)


def _noodle(obj: dict, keys) -> bool:
    c = obj.get("_customData") if "_customData" in obj else obj.get("customData")
    return isinstance(c, dict) and any(k in c for k in keys)


#: Keys of lighting, rotation and NJS data: one that is not a list loses that data (a warning), not the file.
_LENIENT_KEYS = ("_events", "basicBeatmapEvents", "colorBoostBeatmapEvents", "lightColorEventBoxGroups",
                 "lightRotationEventBoxGroups", "lightTranslationEventBoxGroups", "vfxEventBoxGroups",
                 "rotationEvents", "spawnRotations", "spawnRotationsData", "njsEvents", "njsEventData",
                 "basicEvents", "basicEventsData", "colorBoostEvents", "colorBoostEventsData", "eventBoxGroups")
_warnings: list = []  # of the read in progress (read_raw_objects hands them out)


def _objs(doc: dict, key: str, where: str) -> list:
    """``doc[key]``'s entries (a non-object entry becomes ``{}``); a gameplay key that is not a list is corruption."""
    from mapkit.preprocess.levels import as_list
    value = doc.get(key)
    if key in _LENIENT_KEYS and value is not None and not isinstance(value, list):
        _warnings.append(f"{key} is not a list but {type(value).__name__}: ignored")
        return []
    return [o if isinstance(o, dict) else {} for o in as_list(doc, key, where)]


def _cols(objs: list, keys, default) -> dict:
    """``{field: [obj.get(key, default) for obj in objs]}`` for ``keys`` = ((json key, field), ...)."""
    return {f: [o.get(k, default) for o in objs] for k, f in keys}


def _bools(values: list) -> list:
    """JSON booleans as 0/1 (v3 ``o``, v4 boost ``b``); other values unchanged."""
    return [int(v) if isinstance(v, bool) else v for v in values]


_V3_OBSTACLE = (("b", "beat"), ("d", "duration_beats"), ("x", "x"), ("y", "y"), ("w", "width"), ("h", "height"))
_V3_CHAIN = (("b", "beat"), ("x", "x"), ("y", "y"), ("c", "color"), ("d", "direction"), ("tb", "tail_beat"),
             ("tx", "tail_x"), ("ty", "tail_y"), ("sc", "slices"), ("s", "squish"))
_V3_ARC = (("b", "beat"), ("x", "x"), ("y", "y"), ("d", "direction"), ("c", "color"), ("mu", "multiplier"),
           ("tb", "tail_beat"), ("tx", "tail_x"), ("ty", "tail_y"), ("tc", "tail_direction"),
           ("tmu", "tail_multiplier"), ("m", "mid_anchor"))
_V2_ARC = (("_headTime", "beat"), ("_headLineIndex", "x"), ("_headLineLayer", "y"), ("_headCutDirection", "direction"),
           ("_colorType", "color"), ("_headControlPointLengthMultiplier", "multiplier"), ("_tailTime", "tail_beat"),
           ("_tailLineIndex", "tail_x"), ("_tailLineLayer", "tail_y"), ("_tailCutDirection", "tail_direction"),
           ("_tailControlPointLengthMultiplier", "tail_multiplier"))


def _read_v2(doc: dict, where: str, raw: dict):
    from mapkit.preprocess.levels import MISSING, strict_number
    m = MISSING
    walls = _objs(doc, "_obstacles", where)
    if walls:
        cols = _cols(walls, (("_time", "beat"), ("_duration", "duration_beats"), ("_lineIndex", "x"),
                             ("_width", "width"), ("_type", "v2_type")), m)
        cols.update(_cols(walls, (("_lineLayer", "v2_layer"), ("_height", "v2_height")), 0))
        raw["obstacles"].extend(cols, fake=[_fake_v2(o) for o in walls], modded=[_noodle(o, _NOODLE_V2) for o in walls])
    arcs = _objs(doc, "_sliders", where)
    if arcs:
        cols = _cols(arcs, _V2_ARC, m)
        cols.update(_cols(arcs, (("_sliderMidAnchorMode", "mid_anchor"),), 0))
        raw["arcs"].extend(cols, modded=[_noodle(o, _NOODLE_V2) for o in arcs])
    events = _objs(doc, "_events", where)
    if not events:
        return
    types = [e.get("_type", m) for e in events]
    if not set(map(type, types)) <= {int}:  # floats, numeric strings, junk: parsed strictly
        types = [strict_number(t)[0] if t is not m else None for t in types]
    boost = [e for e, t in zip(events, types) if t == _V2_BOOST]
    rotations = [(e, t) for e, t in zip(events, types) if t in (_V2_EARLY, _V2_LATE)]
    lights = [e for e, t in zip(events, types) if t not in (_V2_BOOST, _V2_EARLY, _V2_LATE, _V2_TEMPO)]
    if boost:
        raw["boost_events"].extend(_cols(boost, (("_time", "beat"), ("_value", "on")), m))
    if rotations:
        rot = [e for e, _ in rotations]
        cols = _cols(rot, (("_time", "beat"), ("_value", "v2_rotation")), m)
        cols["late"] = [int(t == _V2_LATE) for _, t in rotations]
        raw["rotation_events"].extend(cols)
    if lights:
        cols = _cols(lights, (("_time", "beat"), ("_type", "type"), ("_value", "value")), m)
        cols.update(_cols(lights, (("_floatValue", "float_value"),), 1.0))  # before 2.5.0: full brightness
        raw["light_events"].extend(cols)


def _fake_v2(o: dict) -> bool:
    c = o.get("_customData")
    return isinstance(c, dict) and c.get("_fake") is True


def _read_v3(doc: dict, where: str, raw: dict):
    from mapkit.preprocess.levels import as_dict
    custom = as_dict(doc.get("customData"))
    for fake, src in ((False, doc), (True, custom)):
        walls = _objs(src, "fakeObstacles" if fake else "obstacles", where)
        if walls:
            raw["obstacles"].extend(_cols(walls, _V3_OBSTACLE, 0), fake=fake,
                                    modded=[_noodle(o, _NOODLE_V3) for o in walls])
        chains = _objs(src, "fakeBurstSliders" if fake else "burstSliders", where)
        if chains:
            raw["chains"].extend(_cols(chains, _V3_CHAIN, 0), fake=fake,
                                 modded=[_noodle(o, _NOODLE_V3) for o in chains])
    arcs = _objs(doc, "sliders", where)
    if arcs:
        raw["arcs"].extend(_cols(arcs, _V3_ARC, 0), modded=[_noodle(o, _NOODLE_V3) for o in arcs])
    _read_v3_lights(doc, where, raw)
    rotations = _objs(doc, "rotationEvents", where)
    if rotations:
        raw["rotation_events"].extend(_cols(rotations, (("b", "beat"), ("e", "late"), ("r", "rotation")), 0))


def _read_v3_lights(doc: dict, where: str, raw: dict):
    lights = _objs(doc, "basicBeatmapEvents", where)
    if lights:
        raw["light_events"].extend(_cols(lights, (("b", "beat"), ("et", "type"), ("i", "value"),
                                                  ("f", "float_value")), 0))
    boosts = _objs(doc, "colorBoostBeatmapEvents", where)
    if boosts:
        cols = _cols(boosts, (("b", "beat"), ("o", "on")), 0)
        cols["on"] = _bools(cols["on"])
        raw["boost_events"].extend(cols)
    for gtype, key in enumerate(("lightColorEventBoxGroups", "lightRotationEventBoxGroups",
                                 "lightTranslationEventBoxGroups", "vfxEventBoxGroups")):
        _add_groups(raw, _objs(doc, key, where), [gtype] * len(_objs(doc, key, where)))


def _add_groups(raw: dict, groups: list, types: list):
    if not groups:
        return
    cols = _cols(groups, (("b", "beat"), ("g", "group_id")), 0)
    cols["group_type"] = types
    cols["n_boxes"] = [len(o["e"]) if isinstance(o.get("e"), list) else 0 for o in groups]
    raw["event_box_groups"].extend(cols, texts=[json.dumps(o, sort_keys=True, separators=(",", ":"), default=str)
                                                for o in groups])


def _indexed(doc: dict, objs: list, key: str, array: str, where: str):
    """The v4 data entries ``objs[k][key]`` index in ``doc[array]``: (entries, index ok flags)."""
    from mapkit.preprocess.levels import as_list
    value = doc.get(array)
    if array in _LENIENT_KEYS and value is not None and not isinstance(value, list):
        _warnings.append(f"{array} is not a list but {type(value).__name__}: ignored")
        value = []
    data = value if isinstance(value, list) else as_list(doc, array, where)
    entries, ok = [], []
    for o in objs:
        i = o.get(key, 0)
        good = not isinstance(i, bool) and isinstance(i, int) and 0 <= i < len(data)
        entry = data[i] if good else {}
        entries.append(entry if isinstance(entry, dict) else {})
        ok.append(good)
    return entries, ok


def _read_v4(doc: dict, lightshow: dict | None, where: str, lwhere: str, raw: dict):
    # beatmap indices were checked by the note reader (a bad one made the file unreadable)
    walls = _objs(doc, "obstacles", where)
    if walls:
        data, _ = _indexed(doc, walls, "i", "obstaclesData", where)
        cols = _cols(data, (("d", "duration_beats"), ("x", "x"), ("y", "y"), ("w", "width"), ("h", "height")), 0)
        raw["obstacles"].extend({"beat": [o.get("b", 0) for o in walls], **cols})
    arcs = _objs(doc, "arcs", where)
    if arcs:
        heads, _ = _indexed(doc, arcs, "hi", "colorNotesData", where)
        tails, _ = _indexed(doc, arcs, "ti", "colorNotesData", where)
        data, _ = _indexed(doc, arcs, "ai", "arcsData", where)
        raw["arcs"].extend({**_cols(arcs, (("hb", "beat"), ("tb", "tail_beat")), 0),
                            **_cols(heads, (("x", "x"), ("y", "y"), ("d", "direction"), ("c", "color")), 0),
                            **_cols(tails, (("x", "tail_x"), ("y", "tail_y"), ("d", "tail_direction")), 0),
                            **_cols(data, (("m", "multiplier"), ("tm", "tail_multiplier"), ("a", "mid_anchor")), 0)})
    chains = _objs(doc, "chains", where)
    if chains:
        heads, _ = _indexed(doc, chains, "i", "colorNotesData", where)
        data, _ = _indexed(doc, chains, "ci", "chainsData", where)
        raw["chains"].extend({**_cols(chains, (("hb", "beat"), ("tb", "tail_beat")), 0),
                              **_cols(heads, (("x", "x"), ("y", "y"), ("c", "color"), ("d", "direction")), 0),
                              **_cols(data, (("tx", "tail_x"), ("ty", "tail_y"), ("c", "slices"), ("s", "squish")),
                                      0)})
    _v4_events(doc, "spawnRotations", "spawnRotationsData", (("t", "late"), ("r", "rotation")),
               raw["rotation_events"], where)
    _v4_events(doc, "njsEvents", "njsEventData", (("p", "use_previous"), ("e", "easing"), ("d", "delta")),
               raw["njs_events"], where)
    if lightshow is None:
        return
    _v4_events(lightshow, "basicEvents", "basicEventsData", (("t", "type"), ("i", "value"), ("f", "float_value")),
               raw["light_events"], lwhere)
    _v4_events(lightshow, "colorBoostEvents", "colorBoostEventsData", (("b", "on"),), raw["boost_events"], lwhere)
    groups = _objs(lightshow, "eventBoxGroups", lwhere)
    _add_groups(raw, groups, [t - 1 if isinstance(t := o.get("t", 0), int) and not isinstance(t, bool) else t
                              for o in groups])


def _v4_events(doc: dict, key: str, data_key: str, fields, kind: RawKind, where: str):
    """v4 ``{b, i}`` objects and their data entries; an index out of range is dropped as ``bad_index``."""
    objs = _objs(doc, key, where)
    if not objs:
        return
    data, ok = _indexed(doc, objs, "i", data_key, where)
    cols = {"beat": [o.get("b", 0) for o in objs], **_cols(data, fields, 0)}
    cols = {k: _bools(v) for k, v in cols.items()}
    kind.extend(cols, bad_index=[not g for g in ok])


def read_raw_objects(doc: dict, major: str, where: str, lightshow: dict | None = None,
                     lightshow_where: str = "", warnings: list | None = None) -> dict:
    """Each kind's raw fields (:class:`RawKind`) from one parsed difficulty file.

    Parameters
    ----------
    doc : dict
        The difficulty file's JSON.
    major : str
        Its format as the keys say: "1", "2", "3" or "4".
    where : str
        The file, for error messages (a key that is not a list is corruption: LevelError).
    lightshow : dict, optional
        A v4 difficulty's lightshow file (basic events, boosts, event-box groups).
    warnings : list, optional
        Gets what was ignored (a lighting, rotation or NJS key that is not a list).

    Raises
    ------
    LevelError
        A key of walls, arcs or chains (or Noodle fakes) that is not a list.
    """
    raw = {kind: RawKind() for kind in OBJECT_KINDS}
    _warnings.clear()
    try:
        if major in ("1", "2"):
            _read_v2(doc, where, raw)
        elif major == "3":
            _read_v3(doc, where, raw)
        else:
            _read_v4(doc, lightshow, where, lightshow_where, raw)
    finally:
        if warnings is not None:
            warnings.extend(_warnings)
        _warnings.clear()
    return raw


# --- normalising -----------------------------------------------------------------------------------

def _column(raw: RawKind, name: str):
    """(float64 values, parse states) of one raw column; an absent column is all zeros."""
    from mapkit.preprocess.levels import number_column
    n = len(raw)
    col = raw.cols.get(name)
    if col is None:
        return np.zeros(n), np.zeros(n, dtype=np.int8)
    from mapkit.preprocess.levels import MISSING
    return number_column([v if v is not None else MISSING for v in col])


def _v2_obstacle_geometry(typ, layer, height):
    """v2 ``_type`` -> (y, height, known): 0 full (y 0, h 5), 1 crouch (y 2, h 3), 2 free (``_lineLayer``, ``_height``)."""
    y = np.where(typ == 0, 0, np.where(typ == 1, 2, layer))
    h = np.where(typ == 0, 5, np.where(typ == 1, 3, height))
    return y.astype(np.float64), h.astype(np.float64), np.isin(typ, (0, 1, 2))


def field_out_of_range(kind: str, field_name: str, values) -> np.ndarray:
    """Which ``values`` of one field of ``kind`` break its rule (:data:`FIELD_RANGES`): outside ``[lo, hi]``,
    not whole where the field is an integer, or (``squish``) not above 0 (squish 0 crashes the game).

    Reading drops such objects (``out_of_range``); validation reports a stored one.
    """
    lo, hi = FIELD_RANGES[kind][field_name]
    v = np.asarray(values, dtype=np.float64)
    bad = np.zeros(len(v), dtype=bool) if field_name in FLOAT_FIELDS else (np.floor(v) != v)
    if lo is not None:
        bad |= v < lo
    if hi is not None:
        bad |= v > hi
    if field_name == "squish":
        bad |= v <= 0
    return bad


def normalise_kind(kind: str, raw: RawKind, tempo) -> tuple[np.ndarray, Counter]:
    """One kind's raw fields -> (time-sorted records of ``OBJECT_DTYPES[kind]``, drops by reason).

    Each object is dropped for the first reason of :data:`OBJECT_DROP_REASONS`
    that applies. Times are ``tempo.seconds(beat)`` (tails and wall ends by
    their own beats, so a tempo change inside a wall is honoured); ``frame``
    fields stay 0 until :func:`place_objects`. Ties in time keep file order.
    """
    from mapkit.preprocess.levels import ABSENT, BAD
    dtype = OBJECT_DTYPES[kind]
    n = len(raw)
    if n == 0:
        return np.zeros(0, dtype), Counter()
    names = ["beat"] + [f for f in ("tail_beat",) if f in dtype.names] + list(FIELD_RANGES[kind])
    names += [k for k in raw.cols if k.startswith("v2_")]
    parsed = {k: _column(raw, k) for k in dict.fromkeys(names)}
    vals = {k: v for k, (v, _) in parsed.items()}
    states = np.stack([s for _, s in parsed.values()])
    unknown = np.zeros(n, dtype=bool)
    modded = np.array(raw.modded, dtype=bool)
    with np.errstate(invalid="ignore"):
        if "v2_type" in vals:  # v2 obstacles: the type says the height
            typ = vals["v2_type"]
            modded |= np.abs(typ) >= 1000
            vals["y"], vals["height"], known = _v2_obstacle_geometry(typ, vals["v2_layer"], vals["v2_height"])
            unknown |= ~known
        if "v2_rotation" in vals:
            r = vals["v2_rotation"]
            modded |= np.abs(r) >= 1000
            ok = np.isin(r, np.arange(len(V2_ROTATIONS)))
            unknown |= ~ok & ~(np.abs(r) >= 1000)
            vals["rotation"] = np.where(ok, np.asarray(V2_ROTATIONS, np.float64)[np.where(ok, r, 0).astype(int)], 0)
        finite = np.all([np.isfinite(v) for v in vals.values()], axis=0)
        for f in ("x", "y", "width", "height", "tail_x", "tail_y"):
            if f in vals:
                modded |= np.abs(vals[f]) >= 1000
        out_of_range = np.zeros(n, dtype=bool)
        for f in FIELD_RANGES[kind]:
            bad = field_out_of_range(kind, f, vals[f])
            if f != "duration_beats":
                out_of_range |= bad
        negative_duration = vals["duration_beats"] < 0 if kind == "obstacles" else np.zeros(n, dtype=bool)
        reversed_ = vals["tail_beat"] < vals["beat"] if "tail_beat" in vals else np.zeros(n, dtype=bool)
    checks = (("fake", np.array(raw.fake, dtype=bool)),
              ("missing_field", (states == ABSENT).any(axis=0)),
              ("bad_value", (states == BAD).any(axis=0)),
              ("non_finite", ~finite),
              ("modded", modded),
              ("unknown_type", unknown),
              ("out_of_range", out_of_range),
              ("negative_duration", negative_duration),
              ("reversed", reversed_),
              ("bad_index", np.array(raw.bad_index, dtype=bool)))
    drops: Counter = Counter()
    kept = np.ones(n, dtype=bool)
    for reason, dropped in checks:
        hit = dropped & kept
        if hit.any():
            drops[reason] += int(hit.sum())
            kept &= ~hit
    out = np.zeros(int(kept.sum()), dtype)
    for f in dtype.names:
        if f in vals:
            out[f] = vals[f][kept]
    out["time_s"] = tempo.seconds(out["beat"])
    if kind == "obstacles":
        out["end_s"] = tempo.seconds(out["beat"] + out["duration_beats"])
        out["duration_s"] = out["end_s"] - out["time_s"]
    if "tail_beat" in dtype.names:
        out["tail_time_s"] = tempo.seconds(out["tail_beat"])
    if kind == "event_box_groups":  # until place_objects: json_start is the group's index in file order
        out["json_start"] = np.flatnonzero(kept)
    negative = out["time_s"] < 0
    if negative.any():
        drops["negative_time"] += int(negative.sum())
        out = out[~negative]
    return out[np.argsort(out["time_s"], kind="stable")], drops


def normalise_objects(raw: dict, tempo) -> tuple[dict, dict, dict]:
    """All kinds: ``(records by kind, read counts by kind, drops by kind {reason: n})`` (kinds in order).

    ``records[EVENT_BOX_JSON]`` is the list of every event-box group's JSON
    text in file order (dropped ones included); a group record's
    ``json_start`` indexes it until :func:`place_objects` makes the byte array.
    """
    records, read, drops = {EVENT_BOX_JSON: list((raw.get("event_box_groups") or RawKind()).json)}, {}, {}
    for kind in OBJECT_KINDS:
        r = raw.get(kind) or RawKind()
        records[kind], d = normalise_kind(kind, r, tempo)
        read[kind] = len(r)
        drops[kind] = {reason: d[reason] for reason in OBJECT_DROP_REASONS if d.get(reason)}
    return records, read, drops


def empty_objects() -> dict:
    """Records of every kind, none (and no event-box group JSON)."""
    return {**{kind: np.zeros(0, OBJECT_DTYPES[kind]) for kind in OBJECT_KINDS}, EVENT_BOX_JSON: []}


def quarantine_reason(read: dict, drops: dict, max_fraction: float, what: str = "dropped") -> str | None:
    """Why a difficulty is quarantined by its gameplay objects: more than ``max_fraction`` of one kind dropped.

    Lighting, rotation and NJS events never quarantine (they are counted only).
    """
    for kind in GAMEPLAY_KINDS:
        n, d = read.get(kind, 0), sum(drops.get(kind, {}).values())
        if n and d / n > max_fraction:
            detail = ", ".join(f"{r} {c}" for r, c in drops[kind].items())
            return f"{what} {d} of {n} {kind} ({100 * d / n:.1f}% > {100 * max_fraction:g}%): {detail}"
    return None


def _json_bytes(groups: np.ndarray, texts: list) -> np.ndarray:
    """Concatenate the JSON of ``groups`` (``json_start`` = index in ``texts``); set their start and length."""
    chunks = [texts[i].encode("utf-8", "backslashreplace") if i < len(texts) else b"{}"
              for i in groups["json_start"].tolist()]
    lengths = np.array([len(c) for c in chunks], dtype=np.int64)
    groups["json_length"] = lengths
    groups["json_start"] = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else lengths
    return np.frombuffer(b"".join(chunks), dtype=np.uint8).copy()


def group_json(groups: np.ndarray, json_bytes: np.ndarray, i: int):
    """The parsed JSON of stored event-box group ``i``."""
    start, length = int(groups["json_start"][i]), int(groups["json_length"][i])
    return json.loads(bytes(json_bytes[start:start + length]).decode("utf-8"))


# --- frames (build-targets) ------------------------------------------------------------------------

def _link_notes(notes: np.ndarray, beats, xs, ys, colors) -> np.ndarray:
    """Index in ``notes`` (stored notes) of the colour note at each (beat, x, y, colour), -1 when none.

    Beats match within 1e-6 beats (the same number written twice in a file).
    """
    out = np.full(len(beats), -1, dtype=np.int32)
    if not len(notes) or not len(beats):
        return out
    keys = {}
    for i, (b, c, r, col) in enumerate(zip(notes["beat"].tolist(), notes["column"].tolist(), notes["row"].tolist(),
                                           notes["color"].tolist())):
        keys.setdefault((round(b * 1e6), c, r, col), i)
    for j, (b, x, y, c) in enumerate(zip(np.asarray(beats).tolist(), np.asarray(xs).tolist(),
                                         np.asarray(ys).tolist(), np.asarray(colors).tolist())):
        out[j] = keys.get((round(b * 1e6), int(x), int(y), int(c)), -1)
    return out


def place_objects(records: dict, n_frames: int, notes: np.ndarray, fps: int = FPS) -> tuple[dict, dict]:
    """Put every kind on frames: ``(placed records by kind, beyond_audio counts by kind)``.

    The placed dict also holds :data:`EVENT_BOX_JSON`: the kept groups' JSON
    texts (UTF-8) concatenated as a uint8 array, each group's at
    ``json_start`` for ``json_length`` bytes.

    ``frame = frame_of(time_s)``; an object whose frame is outside [0, T), or
    whose tail frame (arcs, chains) is, is dropped (``beyond_audio``). A wall
    keeps its true ``end_s`` and gets ``end_frame = min(frame_of(end_s), T)``.
    Arcs' ``head_note``/``tail_note`` and chains' ``head_note`` are the index
    in ``notes`` (the stored notes) of the colour note they attach to (same
    beat, cell and colour), -1 when there is none.
    """
    placed, beyond = {}, {}
    for kind in OBJECT_KINDS:
        r = records.get(kind)
        if r is None:
            r = empty_objects()[kind]
        frames = frame_of(r["time_s"], fps) if len(r) else np.zeros(0, np.int64)
        inside = (frames >= 0) & (frames < n_frames)
        if "tail_time_s" in r.dtype.names:
            tails = frame_of(r["tail_time_s"], fps) if len(r) else np.zeros(0, np.int64)
            inside &= (tails >= 0) & (tails < n_frames)
        out = r[inside]
        out["frame"] = frames[inside]
        if "tail_time_s" in r.dtype.names:
            out["tail_frame"] = tails[inside]
        if kind == "obstacles":
            out["end_frame"] = np.minimum(frame_of(out["end_s"], fps), n_frames) if len(out) else 0
        if kind == "arcs":
            out["head_note"] = _link_notes(notes, out["beat"], out["x"], out["y"], out["color"])
            out["tail_note"] = _link_notes(notes, out["tail_beat"], out["tail_x"], out["tail_y"], out["color"])
        if kind == "chains":
            out["head_note"] = _link_notes(notes, out["beat"], out["x"], out["y"], out["color"])
        if kind == "event_box_groups":
            placed[EVENT_BOX_JSON] = _json_bytes(out, records.get(EVENT_BOX_JSON, []))
        placed[kind] = out
        if (~inside).any():
            beyond[kind] = int((~inside).sum())
    return placed, beyond


# --- reports (inspect) -----------------------------------------------------------------------------

#: Record fields that only build-targets sets (frames need the audio; note links the stored notes).
PLACED_FIELDS = ("frame", "tail_frame", "end_frame", "head_note", "tail_note")


def objects_to_json(records: dict) -> dict:
    """Every object as read, as plain JSON: kind -> list of dicts (event-box groups add their ``json``).

    The fields of :data:`PLACED_FIELDS` are left out: they do not exist before
    build-targets puts the objects on the song's frames.
    """
    out = {}
    texts = records.get(EVENT_BOX_JSON, [])
    for kind in OBJECT_KINDS:
        r = records.get(kind)
        if r is None:
            continue
        names = [f for f in r.dtype.names if f not in PLACED_FIELDS]
        rows = [{f: (v.item() if hasattr(v, "item") else v) for f, v in zip(names, rec)} for rec in r[names].tolist()]
        if kind == "event_box_groups":
            for row in rows:  # before placement json_start indexes the file-order texts
                i = row.pop("json_start")
                row.pop("json_length")
                row["json"] = json.loads(texts[i]) if isinstance(texts, list) and i < len(texts) else None
        out[kind] = rows
    return out


def format_objects(read: dict, records: dict, drops: dict) -> list[str]:
    """Inspect lines: per kind, read, kept and dropped by reason (kinds with nothing read are left out)."""
    lines = []
    for kind in OBJECT_KINDS:
        n = read.get(kind, 0)
        if not n:
            continue
        d = ", ".join(f"{r} {c}" for r, c in drops.get(kind, {}).items()) or "none"
        lines.append(f"    {kind}: read {n}, kept {len(records.get(kind, ()))}, dropped: {d}")
    return lines


def place_difficulty_objects(diff, n_frames: int, notes: np.ndarray, settings) -> tuple[dict, dict, str | None]:
    """build-targets' step for one difficulty: ``(placed records, difficulty attrs, quarantine reason or None)``.

    ``diff`` is a :class:`~mapkit.preprocess.levels.Difficulty`; ``notes`` its
    stored notes. Objects beyond the audio are dropped (``beyond_audio``) and,
    for walls, arcs and chains, count towards quarantine as notes' drops do.
    The attrs are :data:`ATTR_READ`, :data:`ATTR_KEPT`, :data:`ATTR_DROPS`.
    """
    records = diff.objects if diff.objects else empty_objects()
    placed, beyond = place_objects(records, n_frames, notes, settings.fps)
    drops = {kind: dict(diff.objects_drops.get(kind, {})) for kind in OBJECT_KINDS}
    for kind, n in beyond.items():
        drops[kind][BEYOND_AUDIO] = n
    read = {kind: int(diff.objects_read.get(kind, 0)) for kind in OBJECT_KINDS}
    attrs = {ATTR_READ: json.dumps(read), ATTR_KEPT: json.dumps({k: int(len(placed[k])) for k in OBJECT_KINDS}),
             ATTR_DROPS: json.dumps(drops)}
    return placed, attrs, quarantine_reason(read, drops, settings.max_drop_fraction)
