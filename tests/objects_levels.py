"""Small synthetic levels with every object kind, one per format version (v2, v3, v4 + lightshow).

Each ``write_*`` writes a level folder (and, with ``n_samples``, a faint-noise
``song.egg`` at 8 kHz) and returns it. Tempo: 120 BPM, in v3 a ``bpmEvents``
change to 240 BPM at beat 8; in v4 audio-data regions with the same change.
So beat b is at ``b / 2`` s before beat 8 and at ``4 + (b - 8) / 4`` s after.
"""

import json

import numpy as np
import soundfile as sf

SR = 8000


def seconds(beat):
    """Time of ``beat`` in the v3/v4 levels here (120 BPM, 240 from beat 8), written out independently."""
    return beat / 2 if beat <= 8 else 4 + (beat - 8) / 4


def write_noise(path, n_samples, seed=0):
    y = (np.random.default_rng(seed).standard_normal(n_samples) * 300).astype(np.int16)
    sf.write(str(path), y, SR, format="WAV", subtype="PCM_16")


def _info_v2(name):
    return {"_version": "2.0.0", "_songName": name, "_beatsPerMinute": 120, "_songTimeOffset": 0,
            "_songFilename": "song.egg", "_difficultyBeatmapSets": [{"_beatmapCharacteristicName": "Standard",
                                                                      "_difficultyBeatmaps": [
                                                                          {"_difficulty": "Expert",
                                                                           "_beatmapFilename": "Expert.dat",
                                                                           "_noteJumpMovementSpeed": 16}]}]}


def _finish(folder, n_samples, seed):
    if n_samples:
        write_noise(folder / "song.egg", n_samples, seed)
    return folder


def write_v2(folder, n_samples=0, seed=0):
    """v2.6.0: walls of _type 0, 1, 2 (free), 1000+ (Mapping Extensions), negative duration; an arc; events."""
    folder.mkdir(parents=True)
    (folder / "Info.dat").write_text(json.dumps(_info_v2(folder.name)))
    notes = [{"_time": 2, "_lineIndex": 1, "_lineLayer": 0, "_type": 0, "_cutDirection": 1},
             {"_time": 4, "_lineIndex": 2, "_lineLayer": 1, "_type": 0, "_cutDirection": 0}]
    walls = [{"_time": 1, "_duration": 2, "_lineIndex": 0, "_width": 1, "_type": 0},
             {"_time": 3, "_duration": 0.5, "_lineIndex": 2, "_width": 2, "_type": 1},
             {"_time": 5, "_duration": 1, "_lineIndex": 3, "_width": 1, "_type": 2, "_lineLayer": 1, "_height": 2},
             {"_time": 6, "_duration": 1, "_lineIndex": 0, "_width": 1, "_type": 4001},
             {"_time": 7, "_duration": -1, "_lineIndex": 0, "_width": 1, "_type": 0}]
    arcs = [{"_colorType": 0, "_headTime": 2, "_headLineIndex": 1, "_headLineLayer": 0, "_headCutDirection": 1,
             "_headControlPointLengthMultiplier": 1.0, "_tailTime": 4, "_tailLineIndex": 2, "_tailLineLayer": 1,
             "_tailCutDirection": 0, "_tailControlPointLengthMultiplier": 0.5, "_sliderMidAnchorMode": 1}]
    events = [{"_time": 0.5, "_type": 1, "_value": 3, "_floatValue": 0.5},
              {"_time": 1, "_type": 5, "_value": 1},          # boost on
              {"_time": 1.5, "_type": 14, "_value": 0},       # early rotation -60
              {"_time": 2.5, "_type": 15, "_value": 7},       # late rotation +60
              {"_time": 3, "_type": 15, "_value": 1360},      # Mapping Extensions rotation: modded
              {"_time": 2, "_type": 100, "_floatValue": 120},  # tempo: not a light
              {"_time": 3.5, "_type": 4, "_value": 0}]        # no _floatValue: 1.0
    doc = {"_version": "2.6.0", "_notes": notes, "_obstacles": walls, "_events": events, "_sliders": arcs}
    (folder / "Expert.dat").write_text(json.dumps(doc))
    return _finish(folder, n_samples, seed)


def write_v3(folder, n_samples=0, seed=0):
    """v3.3.0: walls, sliders, burstSliders (one reversed, one squish 0), events, event-box groups, a tempo change."""
    folder.mkdir(parents=True)
    (folder / "Info.dat").write_text(json.dumps(_info_v2(folder.name)))
    doc = {"version": "3.3.0",
           "bpmEvents": [{"b": 8, "m": 240}],
           "colorNotes": [{"b": 2, "x": 1, "y": 0, "c": 0, "d": 1}, {"b": 10, "x": 2, "y": 1, "c": 1, "d": 0},
                          {"b": 12, "x": 3, "y": 2, "c": 1, "d": 8}],
           "bombNotes": [{"b": 3, "x": 0, "y": 0}],
           "obstacles": [{"b": 6, "d": 4, "x": 1, "y": 0, "w": 2, "h": 5},     # crosses the tempo change
                         {"b": 9, "d": 1, "x": -1, "y": 0, "w": 1, "h": 1},    # decoration left of the lanes
                         {"b": 9, "d": 1, "x": 1000, "y": 0, "w": 1, "h": 1}],  # Mapping Extensions
           "sliders": [{"b": 2, "c": 0, "x": 1, "y": 0, "d": 1, "mu": 1, "tb": 10, "tx": 2, "ty": 1, "tc": 0,
                        "tmu": 0.75, "m": 2}],
           "burstSliders": [{"b": 10, "c": 1, "x": 2, "y": 1, "d": 0, "tb": 11, "tx": 2, "ty": 2, "sc": 4, "s": 0.5},
                            {"b": 11, "c": 1, "x": 2, "y": 1, "d": 0, "tb": 10, "tx": 2, "ty": 2, "sc": 4, "s": 1},
                            {"b": 12, "c": 1, "x": 2, "y": 1, "d": 0, "tb": 13, "tx": 2, "ty": 2, "sc": 4, "s": 0}],
           "rotationEvents": [{"b": 4, "e": 1, "r": 15}],
           "basicBeatmapEvents": [{"b": 1, "et": 0, "i": 1, "f": 1}, {"b": 9, "et": 2, "i": 5, "f": 0.25}],
           "colorBoostBeatmapEvents": [{"b": 5, "o": True}, {"b": 7, "o": False}],
           "lightColorEventBoxGroups": [{"b": 4, "g": 2, "e": [{"f": {"f": 1}, "e": [{"b": 0, "c": 1}]}]}],
           "lightRotationEventBoxGroups": [{"b": 6, "g": 3, "e": []}],
           "customData": {"fakeObstacles": [{"b": 1, "d": 1, "x": 0, "y": 0, "w": 1, "h": 1}]}}
    (folder / "Expert.dat").write_text(json.dumps(doc))
    return _finish(folder, n_samples, seed)


def write_v4(folder, n_samples=0, seed=0, bad_lightshow_index=True):
    """v4.1.0 beatmap + lightshow + audio data; data arrays shared; the lightshow has an index out of range."""
    folder.mkdir(parents=True)
    info = {"version": "4.0.1", "song": {"title": folder.name},
            "audio": {"songFilename": "song.egg", "songDuration": 10, "bpm": 120, "audioDataFilename": "BPMInfo.dat"},
            "difficultyBeatmaps": [{"characteristic": "Standard", "difficulty": "Expert",
                                    "beatmapDataFilename": "Expert.dat", "lightshowDataFilename": "Lights.dat",
                                    "noteJumpMovementSpeed": 18}]}
    (folder / "Info.dat").write_text(json.dumps(info))
    # 120 BPM for beats 0-8 (4 s = 32000 samples), then 240 BPM: 16 more beats in 4 s
    audio = {"version": "4.0.0", "songFrequency": SR, "songSampleCount": 64000,
             "bpmData": [{"si": 0, "ei": 32000, "sb": 0, "eb": 8}, {"si": 32000, "ei": 64000, "sb": 8, "eb": 24}]}
    (folder / "BPMInfo.dat").write_text(json.dumps(audio))
    beatmap = {"version": "4.1.0",
               "colorNotes": [{"b": 2, "i": 0}, {"b": 10, "i": 1}, {"b": 10, "i": 2}],
               "colorNotesData": [{"x": 1, "y": 0, "c": 0, "d": 1}, {"x": 2, "y": 1, "c": 1, "d": 0},
                                  {"x": 3, "y": 1, "c": 0, "d": 0}],
               "bombNotes": [], "bombNotesData": [],
               "obstacles": [{"b": 6, "i": 0}, {"b": 12, "i": 0}],
               "obstaclesData": [{"d": 4, "x": 1, "y": 0, "w": 2, "h": 5}],
               "arcs": [{"hb": 2, "tb": 10, "hi": 0, "ti": 2, "ai": 0}],
               "arcsData": [{"m": 1, "tm": 0.5, "a": 1}],
               "chains": [{"hb": 10, "tb": 11, "i": 1, "ci": 0}],
               "chainsData": [{"tx": 2, "ty": 2, "c": 3, "s": 0.5}],
               "njsEvents": [{"b": 4, "i": 0}, {"b": 9, "i": 1}],
               "njsEventData": [{"p": 0, "e": 1, "d": 2.5}, {"p": 1, "e": 0, "d": -1}],
               "spawnRotations": [{"b": 3, "i": 0}], "spawnRotationsData": [{"t": 0, "r": 30}]}
    (folder / "Expert.dat").write_text(json.dumps(beatmap))
    lights = {"version": "4.0.0",
              "basicEvents": [{"b": 1, "i": 0}, {"b": 9, "i": 1}] + ([{"b": 5, "i": 7}] if bad_lightshow_index else []),
              "basicEventsData": [{"t": 1, "i": 3, "f": 1}, {"t": 4, "i": 0, "f": 0.5}],
              "colorBoostEvents": [{"b": 5, "i": 0}], "colorBoostEventsData": [{"b": 1}],
              "eventBoxGroups": [{"t": 1, "b": 4, "g": 7, "e": [{"f": 0, "e": 0, "l": [{"b": 0, "i": 0}]}]},
                                 {"t": 4, "b": 10, "g": 8, "e": []}]}
    (folder / "Lights.dat").write_text(json.dumps(lights))
    return _finish(folder, n_samples, seed)
