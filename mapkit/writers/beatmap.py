"""Beat Saber's JSON files as mapkit writes them: the one serialiser, a v3 difficulty, a v2.1 info file.

Shared by ``mapkit generate`` and the demo set (docs/formats.md describes the formats).
"""

from __future__ import annotations

import json

import numpy as np

from mapkit.preprocess.difficulties import DIFFICULTY_SPECS
from mapkit.preprocess.notes import BOMB


def dumps(obj, pretty: bool = False) -> bytes:
    """UTF-8 JSON bytes of a level file: compact (difficulty files) or indented with a final newline (info files).

    Compact separators: v3 files must have no whitespace after the colon of
    ``"version"`` (docs/formats.md §1.4).
    """
    if pretty:
        return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def v3_difficulty(color_notes: list, bomb_notes: list, bpm_events: list, light_events=(),
                  compatible_events: bool = False) -> dict:
    """A v3.3.0 difficulty: the given notes, tempo and basic light events, every other array empty.

    ``compatible_events`` is ``useNormalEventsAsCompatibleEvents``.
    """
    return {
        "version": "3.3.0", "bpmEvents": list(bpm_events), "rotationEvents": [], "colorNotes": list(color_notes),
        "bombNotes": list(bomb_notes), "obstacles": [], "sliders": [], "burstSliders": [], "waypoints": [],
        "basicBeatmapEvents": list(light_events), "colorBoostBeatmapEvents": [], "lightColorEventBoxGroups": [],
        "lightRotationEventBoxGroups": [], "lightTranslationEventBoxGroups": [], "vfxEventBoxGroups": [],
        "_fxEventsCollections": {"_fl": [], "_il": []}, "basicEventTypesWithKeywords": {"d": []},
        "useNormalEventsAsCompatibleEvents": bool(compatible_events), "customData": {},
    }

def bpm_events(tempo) -> list:
    """v3 ``bpmEvents`` of a tempo: ``{b, m}`` at beat 0 with the tempo from 0 s, then one per change.

    ``tempo`` is a BPM or a :class:`~mapkit.preprocess.tempo.TempoMap` with
    beat 0 at 0 s; :meth:`TempoMap.from_bpm_events(first bpm, events)
    <mapkit.preprocess.tempo.TempoMap.from_bpm_events>` rebuilds the map.
    """
    from mapkit.preprocess.tempo import TempoMap

    segments = tempo.segments if isinstance(tempo, TempoMap) else [(0.0, 0.0, float(tempo))]
    return [{"b": float(b), "m": float(m)} for b, _, m in segments]


def _num(value) -> float | int:
    """A JSON number: an int when the value is whole (``1`` not ``1.0``), else the float to 6 decimals."""
    v = float(value)
    return int(v) if v.is_integer() else round(v, 6)  # float32 fields: 0.8, not 0.800000011920929


def v3_objects(objects: dict) -> dict:
    """The v3 arrays of generated objects (records of ``OBJECT_DTYPES`` by kind; a kind absent: no entry).

    ``obstacles`` -> ``obstacles {b,d,x,y,w,h}``, ``arcs`` -> ``sliders
    {b,c,x,y,d,mu,tb,tx,ty,tc,tmu,m}``, ``chains`` -> ``burstSliders
    {b,c,x,y,d,tb,tx,ty,sc,s}``, ``light_events`` -> ``basicBeatmapEvents
    {b,et,i,f}``, ``boost_events`` -> ``colorBoostBeatmapEvents {b,o}``;
    every field written (docs/formats.md).
    """
    out = {}
    for kind, key, fields in _V3_OBJECT_FIELDS:
        records = objects.get(kind)
        if records is None:
            continue
        out[key] = [{k: (bool(r[f]) if k == "o" else _num(r[f])) for k, f in fields} for r in records]
    return out


#: kind, v3 key, (JSON key, record field) of every generated object kind.
_V3_OBJECT_FIELDS = (
    ("obstacles", "obstacles", (("b", "beat"), ("d", "duration_beats"), ("x", "x"), ("y", "y"), ("w", "width"),
                                ("h", "height"))),
    ("arcs", "sliders", (("b", "beat"), ("c", "color"), ("x", "x"), ("y", "y"), ("d", "direction"),
                         ("mu", "multiplier"), ("tb", "tail_beat"), ("tx", "tail_x"), ("ty", "tail_y"),
                         ("tc", "tail_direction"), ("tmu", "tail_multiplier"), ("m", "mid_anchor"))),
    ("chains", "burstSliders", (("b", "beat"), ("c", "color"), ("x", "x"), ("y", "y"), ("d", "direction"),
                                ("tb", "tail_beat"), ("tx", "tail_x"), ("ty", "tail_y"), ("sc", "slices"),
                                ("s", "squish"))),
    ("light_events", "basicBeatmapEvents", (("b", "beat"), ("et", "type"), ("i", "value"), ("f", "float_value"))),
    ("boost_events", "colorBoostBeatmapEvents", (("b", "beat"), ("o", "on"))),
)


def difficulty_json(notes: np.ndarray, tempo, objects: dict | None = None) -> dict:
    """A v3.3.0 difficulty holding ``notes`` (NOTE_DTYPE) at their ``beat`` and the generated ``objects``.

    ``objects`` maps kind -> records (walls, arcs, chains, light and boost
    events; :func:`v3_objects`); None writes no objects. Every field is
    written (no defaulted properties) and the tempo (a BPM or a
    :class:`~mapkit.preprocess.tempo.TempoMap`) is given as ``bpmEvents``
    (:func:`bpm_events`): the first at beat 0, as the official editor does.
    """
    color, bomb = [], []
    for n in notes:
        if int(n["color"]) == BOMB:
            bomb.append({"b": float(n["beat"]), "x": int(n["column"]), "y": int(n["row"])})
        else:
            color.append({"b": float(n["beat"]), "x": int(n["column"]), "y": int(n["row"]), "c": int(n["color"]),
                          "d": int(n["direction"]), "a": 0})
    doc = v3_difficulty(color, bomb, bpm_events(tempo), compatible_events=True)
    doc.update(v3_objects(objects or {}))
    return doc


def _rgba(hex_rgb: str) -> dict:
    r, g, b = (int(hex_rgb[i:i + 2], 16) / 255.0 for i in (0, 2, 4))
    return {"r": round(r, 4), "g": round(g, 4), "b": round(b, 4), "a": 1.0}


def info_json(title: str, bpm: float, difficulty: str, beatmap_filename: str, duration_s: float,
              author: str = "") -> dict:
    """An ``Info.dat`` v2.1.0 for one Standard difficulty (:func:`info_json_levels` with one)."""
    return info_json_levels(title, bpm, [(difficulty, beatmap_filename)], duration_s, author=author)


def info_json_levels(title: str, bpm: float, beatmaps: list, duration_s: float, author: str = "") -> dict:
    """An ``Info.dat`` v2.1.0 listing Standard difficulties: ``beatmaps`` is ``[(difficulty, file name), ...]``.

    ``_beatsPerMinute`` is ``bpm`` (the map's base tempo, the song's: v3
    ``bpmEvents`` carry the lead-in and the changes). ``_songTimeOffset`` is 0 and ``_beatmapColorSchemeIdx`` 0 names the one
    scheme in ``_colorSchemes`` (BeatSaver rejects an index out of range);
    that scheme has ``useOverride`` false, so the environment's own colours
    are used.
    """
    colors = {"saberAColor": "C81414", "saberBColor": "288ED2", "environmentColor0": "D91616",
              "environmentColor1": "30ACFF", "obstaclesColor": "FF3030", "environmentColor0Boost": "D216D9",
              "environmentColor1Boost": "00FFA5"}
    return {
        "_version": "2.1.0", "_songName": title, "_songSubName": "", "_songAuthorName": author,
        "_levelAuthorName": "mapkit", "_beatsPerMinute": float(bpm), "_shuffle": 0, "_shufflePeriod": 0.5,
        "_previewStartTime": round(min(12.0, duration_s / 3), 3),
        "_previewDuration": round(min(10.0, duration_s / 3), 3),
        "_songFilename": "song.egg", "_coverImageFilename": "cover.png",
        "_environmentName": "DefaultEnvironment", "_allDirectionsEnvironmentName": "GlassDesertEnvironment",
        "_environmentNames": ["DefaultEnvironment"],
        "_colorSchemes": [{"useOverride": False, "colorScheme": {
            "colorSchemeId": "mapkit", **{k: _rgba(v) for k, v in colors.items()}}}],
        "_songTimeOffset": 0, "_customData": {"_editors": {"_lastEditedBy": "mapkit"}},
        "_difficultyBeatmapSets": [{
            "_beatmapCharacteristicName": "Standard",
            "_difficultyBeatmaps": [{
                "_difficulty": difficulty, "_difficultyRank": DIFFICULTY_SPECS[difficulty].rank,
                "_beatmapFilename": filename, "_noteJumpMovementSpeed": DIFFICULTY_SPECS[difficulty].njs,
                "_noteJumpStartBeatOffset": 0, "_beatmapColorSchemeIdx": 0,
                "_environmentNameIdx": 0, "_customData": {"_difficultyLabel": "mapkit"},
            } for difficulty, filename in beatmaps],
        }],
    }
