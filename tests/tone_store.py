"""A synthetic store for the stage-2 positive control: each note's column is given only by the audio.

Every song has one red down-cut note every ``step_s`` seconds (so the gaps
carry no information) in a column drawn at random; at each note time the
audio holds a short sine burst whose pitch names that column
(:data:`COLUMN_HZ`). A model that ignores its audio cannot beat chance
(1/4) on the column; one that listens can reach 100 %.
"""

from __future__ import annotations

import json

import numpy as np

from mapkit.writers.ogg import encode_ogg_vorbis
from mapkit.runs.build_targets import build_targets
from mapkit.runs.extract import extract
from mapkit.writers.files import write_folder

SAMPLE_RATE = 22050
#: Pitch of the burst at a note in column 0..3 (octaves apart: far apart in the 100 mel bands).
COLUMN_HZ = (220.0, 550.0, 1375.0, 3437.5)
BPM = 120.0


def tone_song(rng: np.random.Generator, duration_s: float, step_s: float):
    """``(audio, times, columns)``: sine bursts at ``times`` whose pitch is ``COLUMN_HZ[column]``."""
    times = np.arange(1.0, duration_s - 1.0, step_s)
    columns = rng.integers(0, 4, len(times))
    audio = 0.002 * rng.standard_normal(int(duration_s * SAMPLE_RATE))
    burst = int(0.12 * SAMPLE_RATE)
    envelope = np.hanning(burst)
    t = np.arange(burst) / SAMPLE_RATE
    for time, column in zip(times, columns):
        start = int(round((time - 0.04) * SAMPLE_RATE))
        audio[start: start + burst] += 0.5 * envelope * np.sin(2 * np.pi * COLUMN_HZ[column] * t)
    return audio.astype(np.float32), times, columns


def _level_files(audio, times, columns, title: str) -> dict:
    notes = [{"_time": float(t * BPM / 60.0), "_lineIndex": int(c), "_lineLayer": 0, "_type": 0,
              "_cutDirection": 1} for t, c in zip(times, columns)]
    info = {
        "_version": "2.0.0", "_songName": title, "_songSubName": "", "_songAuthorName": "tone control",
        "_levelAuthorName": "mapkit", "_beatsPerMinute": BPM, "_songFilename": "song.egg",
        "_coverImageFilename": "", "_songTimeOffset": 0,
        "_difficultyBeatmapSets": [{"_beatmapCharacteristicName": "Standard", "_difficultyBeatmaps": [
            {"_difficulty": "Expert", "_difficultyRank": 7, "_beatmapFilename": "Expert.dat",
             "_noteJumpMovementSpeed": 16.0, "_noteJumpStartBeatOffset": 0}]}],
    }
    level = {"_version": "2.6.0", "_notes": notes, "_obstacles": [], "_events": []}
    return {"Info.dat": json.dumps(info).encode(), "Expert.dat": json.dumps(level).encode(),
            "song.egg": encode_ogg_vorbis(audio, SAMPLE_RATE)}


#: The tone songs held out for validation (the vocabulary is counted without them).
VAL_SONGS = ("tone-00", "tone-01")


def build_tone_store(root, n_songs: int = 10, duration_s: float = 14.0, step_s: float = 0.25, seed: int = 0):
    """Write ``n_songs`` tone levels under ``root/levels``, extract and build targets; returns the store path."""
    rng = np.random.default_rng(seed)
    levels = root / "levels"
    for i in range(n_songs):
        audio, times, columns = tone_song(rng, duration_s, step_s)
        write_folder(levels / f"tone-{i:02d}", _level_files(audio, times, columns, f"tone {i}"))
    store = root / "store"
    for report in (extract(levels, store=store, jobs=1, progress=False),
                   build_targets(levels, store=store, jobs=1, progress=False, val_songs=VAL_SONGS)):
        assert report.exit_code == 0, report.summary()
    return store
