"""Beat Saber's v4 level files as mapkit writes them: Info 4.0.1, beatmap 4.1.0, lightshow 4.0.0, audio data 4.0.0.

``mapkit generate --format v4`` writes these (docs/formats.md §1.5, checked
against bsmap's v4 schema: the field names, the index arrays and the files).
Every object kind is serialised from the store's record arrays
(:data:`mapkit.preprocess.objects.OBJECT_DTYPES`), notes from ``NOTE_DTYPE``;
a v4 object is ``{b, r, i}`` plus a shared data entry that identical objects
share (``i`` indexes ``*Data``), arcs and chains take their head (and an
arc's tail) from ``colorNotesData``. Tempo lives only in the audio-data file's
``bpmData`` regions (:meth:`~mapkit.preprocess.tempo.TempoMap.to_regions`).
The level reader (:func:`mapkit.preprocess.levels.read_level`) reads all of it back.
"""

from __future__ import annotations

import numpy as np

from mapkit.preprocess.difficulties import DIFFICULTY_SPECS
from mapkit.preprocess.notes import BOMB

#: The versions written.
INFO_VERSION, BEATMAP_VERSION, LIGHTSHOW_VERSION, AUDIO_DATA_VERSION = "4.0.1", "4.1.0", "4.0.0", "4.0.0"
#: File names of the shared audio-data file and of a difficulty's lightshow.
AUDIO_DATA_FILENAME = "BPMInfo.dat"


def lightshow_filename(difficulty: str) -> str:
    """The lightshow file of a difficulty: ``<Difficulty>Lightshow.dat`` (lights may differ per difficulty)."""
    return f"{difficulty}Lightshow.dat"


class _Indexed:
    """Objects ``{b, r, i, ...}`` and the data entries they index, identical entries shared."""

    def __init__(self):
        self.entries: dict = {}

    def index(self, entry: dict) -> int:
        """The index of ``entry`` in the data array (appended when new)."""
        return self.entries.setdefault(tuple(sorted(entry.items())), len(self.entries))

    def data(self) -> list:
        return [dict(key) for key in self.entries]


def _records(objects: dict, kind: str) -> np.ndarray:
    """``objects[kind]`` or an empty array (no such kind generated)."""
    records = objects.get(kind)
    return records if records is not None else np.zeros(0)


def _note_entry(x, y, color, direction) -> dict:
    return {"x": int(x), "y": int(y), "c": int(color), "d": int(direction), "a": 0}


def v4_beatmap(notes: np.ndarray, objects: dict | None = None) -> dict:
    """A v4.1.0 beatmap: colour notes, bombs, walls, arcs and chains; no NJS events.

    Parameters
    ----------
    notes : np.ndarray
        ``NOTE_DTYPE`` records at their ``beat`` (bombs have color 3).
    objects : dict, optional
        Kind -> records of ``OBJECT_DTYPES[kind]`` (``obstacles``, ``arcs``,
        ``chains`` are written here; other kinds are ignored). Missing kinds: none.

    Returns
    -------
    dict
        ``colorNotes{b, r, i}`` + ``colorNotesData{x, y, c, d, a}``,
        ``bombNotes{b, r, i}`` + ``bombNotesData{x, y}``,
        ``obstacles{b, r, i}`` + ``obstaclesData{d, x, y, w, h}``,
        ``arcs{hb, hi, hr, tb, ti, tr, ai}`` + ``arcsData{m, tm, a}``,
        ``chains{hb, hr, tb, tr, i, ci}`` + ``chainsData{tx, ty, c, s}``;
        ``r`` (lane rotation) is 0.
    """
    objects = objects or {}
    colors, bombs, walls, arcs, chains = _Indexed(), _Indexed(), _Indexed(), _Indexed(), _Indexed()
    color_notes, bomb_notes = [], []
    for n in notes:
        if int(n["color"]) == BOMB:
            bomb_notes.append({"b": float(n["beat"]), "r": 0, "i": bombs.index({"x": int(n["column"]),
                                                                                 "y": int(n["row"])})})
        else:
            entry = _note_entry(n["column"], n["row"], n["color"], n["direction"])
            color_notes.append({"b": float(n["beat"]), "r": 0, "i": colors.index(entry)})
    obstacles = [{"b": float(o["beat"]), "r": 0, "i": walls.index({
        "d": float(o["duration_beats"]), "x": int(o["x"]), "y": int(o["y"]), "w": int(o["width"]),
        "h": int(o["height"])})} for o in _records(objects, "obstacles")]
    arc_list = [{"hb": float(a["beat"]), "hi": colors.index(_note_entry(a["x"], a["y"], a["color"], a["direction"])),
                 "hr": 0, "tb": float(a["tail_beat"]),
                 "ti": colors.index(_note_entry(a["tail_x"], a["tail_y"], a["color"], a["tail_direction"])),
                 "tr": 0, "ai": arcs.index({"m": float(a["multiplier"]), "tm": float(a["tail_multiplier"]),
                                            "a": int(a["mid_anchor"])})}
                for a in _records(objects, "arcs")]
    chain_list = [{"hb": float(c["beat"]), "hr": 0, "tb": float(c["tail_beat"]), "tr": 0,
                   "i": colors.index(_note_entry(c["x"], c["y"], c["color"], c["direction"])),
                   "ci": chains.index({"tx": int(c["tail_x"]), "ty": int(c["tail_y"]), "c": int(c["slices"]),
                                       "s": float(c["squish"])})}
                  for c in _records(objects, "chains")]
    return {
        "version": BEATMAP_VERSION,
        "colorNotes": color_notes, "colorNotesData": colors.data(),
        "bombNotes": bomb_notes, "bombNotesData": bombs.data(),
        "obstacles": obstacles, "obstaclesData": walls.data(),
        "arcs": arc_list, "arcsData": arcs.data(),
        "chains": chain_list, "chainsData": chains.data(),
        "njsEvents": [], "njsEventData": [],
    }


def v4_lightshow(objects: dict | None = None) -> dict:
    """A v4.0.0 lightshow: ``basicEvents{b, i}`` + ``basicEventsData{t, i, f}`` (``light_events``) and
    ``colorBoostEvents{b, i}`` + ``colorBoostEventsData{b}`` (``boost_events``); no event boxes."""
    objects = objects or {}
    basic, boost = _Indexed(), _Indexed()
    basic_events = [{"b": float(e["beat"]), "i": basic.index({"t": int(e["type"]), "i": int(e["value"]),
                                                               "f": float(e["float_value"])})}
                    for e in _records(objects, "light_events")]
    boost_events = [{"b": float(e["beat"]), "i": boost.index({"b": int(e["on"])})}
                    for e in _records(objects, "boost_events")]
    return {
        "version": LIGHTSHOW_VERSION,
        "waypoints": [], "waypointsData": [],
        "basicEvents": basic_events, "basicEventsData": basic.data(),
        "colorBoostEvents": boost_events, "colorBoostEventsData": boost.data(),
        "eventBoxGroups": [], "indexFilters": [], "lightColorEventBoxes": [], "lightColorEvents": [],
        "lightRotationEventBoxes": [], "lightRotationEvents": [], "lightTranslationEventBoxes": [],
        "lightTranslationEvents": [], "fxEventBoxes": [], "floatFxEvents": [],
        "basicEventTypesWithKeywords": {"d": []}, "useNormalEventsAsCompatibleEvents": False,
    }


def v4_audio_data(regions, n_samples: int, sample_rate: int, checksum: str = "") -> dict:
    """A v4.0.0 audio-data file: ``bpmData{si, ei, sb, eb}`` from ``regions`` (see
    :meth:`~mapkit.preprocess.tempo.TempoMap.to_regions`), no loudness data (``lufsData`` empty)."""
    return {
        "version": AUDIO_DATA_VERSION, "songChecksum": str(checksum), "songSampleCount": int(n_samples),
        "songFrequency": int(sample_rate),
        "bpmData": [{"si": int(si), "ei": int(ei), "sb": float(sb), "eb": float(eb)} for si, ei, sb, eb in regions],
        "lufsData": [],
    }


def v4_info(title: str, bpm: float, beatmaps: list, duration_s: float, author: str = "") -> dict:
    """An ``Info.dat`` v4.0.1 listing Standard difficulties.

    Parameters
    ----------
    title, author : str
        Song title and artist.
    bpm : float
        ``audio.bpm`` (the map's base tempo, the song's; the audio-data regions time the level).
    beatmaps : list of (difficulty, beatmap file name)
        Easiest first; each gets its own lightshow (:func:`lightshow_filename`).
    duration_s : float
        ``audio.songDuration``; sets the preview window.

    ``beatmapColorSchemeIdx`` 0 names the one scheme (BeatSaver rejects an
    index out of range); it overrides neither notes nor lights.
    """
    colors = {"saberAColor": "C81414FF", "saberBColor": "288ED2FF", "obstaclesColor": "FF3030FF",
              "environmentColor0": "D91616FF", "environmentColor1": "30ACFFFF",
              "environmentColor0Boost": "D216D9FF", "environmentColor1Boost": "00FFA5FF"}
    return {
        "version": INFO_VERSION,
        "song": {"title": title, "subTitle": "", "author": author},
        "audio": {"songFilename": "song.egg", "songDuration": round(float(duration_s), 6),
                  "audioDataFilename": AUDIO_DATA_FILENAME, "bpm": float(bpm), "lufs": 0,
                  "previewStartTime": round(min(12.0, duration_s / 3), 3),
                  "previewDuration": round(min(10.0, duration_s / 3), 3)},
        "songPreviewFilename": "song.egg", "coverImageFilename": "cover.png",
        "environmentNames": ["DefaultEnvironment"],
        "colorSchemes": [{"colorSchemeName": "mapkit", "overrideNotes": False, "overrideLights": False, **colors}],
        "difficultyBeatmaps": [{
            "characteristic": "Standard", "difficulty": difficulty,
            "beatmapAuthors": {"mappers": ["mapkit"], "lighters": ["mapkit"]},
            "environmentNameIdx": 0, "beatmapColorSchemeIdx": 0,
            "noteJumpMovementSpeed": DIFFICULTY_SPECS[difficulty].njs, "noteJumpStartBeatOffset": 0,
            "beatmapDataFilename": filename, "lightshowDataFilename": lightshow_filename(difficulty),
        } for difficulty, filename in beatmaps],
        "customData": {"editors": {"_lastEditedBy": "mapkit"}},
    }
