"""Input discovery: levels, broken levels, bare audio, song ids (mapkit.preprocess.sources)."""

import json
import os
import zipfile

import pytest

from mapkit.errors import MapkitError
from mapkit.preprocess.sources import discover


def level(folder, song="song.egg"):
    folder.mkdir(parents=True)
    (folder / "Info.dat").write_text(json.dumps({"_version": "2.0.0", "_songFilename": song,
                                                 "_beatsPerMinute": 120, "_difficultyBeatmapSets": []}))
    (folder / song).write_bytes(b"audio")
    return folder


def broken(folder, *extra):
    """An unfinished level: song.egg (and maybe a difficulty file or cover) but no info file."""
    folder.mkdir(parents=True)
    (folder / "song.egg").write_bytes(b"audio")
    for name in extra:
        (folder / name).write_bytes(b"{}")
    return folder


def kinds(sources):
    return {s.song_id: (s.kind, os.path.basename(s.path)) for s in sources}


def test_broken_level_folders_are_levels_not_songs_called_song(tmp_path):
    """Two level folders without an info file no longer clash as two bare songs named 'song'."""
    inp = tmp_path / "CustomLevels"
    level(inp / "good")
    broken(inp / "half downloaded")
    broken(inp / "lost info", "ExpertStandard.dat", "cover.jpg")
    (inp / "loose.ogg").write_bytes(b"audio")  # the input folder's own audio files stay bare songs
    assert kinds(discover(inp)) == {"good": ("level", "good"), "half downloaded": ("level", "half downloaded"),
                                    "lost info": ("level", "lost info"), "loose": ("audio", "loose.ogg")}
    assert [s.song_id for s in discover(inp, kinds=("level",))] == ["good", "half downloaded", "lost info"]


def test_a_broken_level_is_not_searched_further(tmp_path):
    inp = tmp_path / "in"
    broken(inp / "odd")
    level(inp / "odd" / "inner")
    assert kinds(discover(inp)) == {"odd": ("level", "odd")}


def test_folders_without_audio_are_searched(tmp_path):
    inp = tmp_path / "in"
    level(inp / "pack" / "a")
    level(inp / "pack" / "deeper" / "b")
    (inp / "pack" / "readme.txt").write_text("no audio here")
    with zipfile.ZipFile(inp / "pack" / "c.zip", "w") as z:
        z.writestr("Info.dat", "{}")
    assert kinds(discover(inp)) == {"a": ("level", "a"), "b": ("level", "b"), "c": ("level", "c.zip")}


def test_the_input_folder_of_bare_audio_files(tmp_path):
    inp = tmp_path / "songs"
    inp.mkdir()
    for name in ("a.ogg", "b.WAV", "c.flac", "d.mp3", "e.egg", "notes.txt"):
        (inp / name).write_bytes(b"x")
    assert kinds(discover(inp)) == {k: ("audio", f) for k, f in
                                    (("a", "a.ogg"), ("b", "b.WAV"), ("c", "c.flac"), ("d", "d.mp3"), ("e", "e.egg"))}
    assert discover(inp, kinds=("level",)) == []


def test_nested_folders_of_bare_audio_are_read_as_broken_levels(tmp_path):
    """songs/artist/x.ogg from songs/: 'artist' is a level without info (documented); from songs/artist/: songs."""
    songs = tmp_path / "songs"
    (songs / "artist").mkdir(parents=True)
    (songs / "artist" / "x.ogg").write_bytes(b"x")
    (songs / "artist" / "y.ogg").write_bytes(b"y")
    assert kinds(discover(songs)) == {"artist": ("level", "artist")}
    assert kinds(discover(songs / "artist")) == {"x": ("audio", "x.ogg"), "y": ("audio", "y.ogg")}


def test_single_inputs(tmp_path):
    lv = level(tmp_path / "lv")
    assert kinds(discover(lv)) == {"lv": ("level", "lv")}
    assert kinds(discover(lv / "song.egg")) == {"song": ("audio", "song.egg")}
    # a folder given directly is the input folder: without an info file its audio files are songs
    b = broken(tmp_path / "b")
    assert kinds(discover(b)) == {"song": ("audio", "song.egg")}
    with pytest.raises(MapkitError, match="input does not exist"):
        discover(tmp_path / "nowhere")


def test_duplicate_song_ids_name_both_paths(tmp_path):
    inp = tmp_path / "in"
    level(inp / "x" / "same")
    level(inp / "y" / "same")
    with pytest.raises(MapkitError) as e:
        discover(inp)
    first, second = str(inp / "x" / "same"), str(inp / "y" / "same")
    assert "duplicate song id 'same'" in str(e.value)
    assert first in str(e.value) and second in str(e.value)


def test_symlink_loops_are_followed_once(tmp_path):
    inp = tmp_path / "in"
    level(inp / "pack" / "a")
    os.symlink(inp, inp / "pack" / "loop")
    assert kinds(discover(inp)) == {"a": ("level", "a")}


def test_a_link_back_to_the_input_folder_is_not_a_broken_level(tmp_path):
    """loop/back -> the input folder, which holds bare audio: not a level called 'back', nothing found twice."""
    inp = tmp_path / "in"
    level(inp / "a")
    (inp / "x.ogg").write_bytes(b"x")
    (inp / "loop").mkdir()
    os.symlink(inp, inp / "loop" / "back")
    os.symlink(inp / "loop", inp / "loop" / "self")
    assert kinds(discover(inp)) == {"a": ("level", "a"), "x": ("audio", "x.ogg")}
