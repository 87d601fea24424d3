import gzip
import json
import math
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mapkit.errors import LevelError
from mapkit.preprocess.levels import (MISSING, DROP_REASONS, strict_number, _v2_notes, _v3_notes,
                                      normalise_notes, read_level)
from mapkit.preprocess.notes import BOMB, NOTE_DTYPE
from mapkit.preprocess.tempo import TempoMap
from mapkit.settings import TargetSettings

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "maps"
LENIENT = TargetSettings(max_drop_fraction=1.0)


# --- helpers: synthetic levels --------------------------------------------------------------------

def write_json(path: Path, doc, encoding="utf-8", gzipped=False, bom=False):
    data = json.dumps(doc).encode(encoding)
    if bom:
        data = b"\xef\xbb\xbf" + data
    if gzipped:
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def v2_info(bpm=120, files=(("Standard", "Expert", "Expert.dat"),), **extra):
    sets = {}
    for char, diff, fname in files:
        sets.setdefault(char, []).append({"_difficulty": diff, "_difficultyRank": 7, "_beatmapFilename": fname,
                                          "_noteJumpMovementSpeed": 16, "_noteJumpStartBeatOffset": 0})
    info = {"_version": "2.0.0", "_songName": "t", "_beatsPerMinute": bpm, "_songTimeOffset": 0, "_shuffle": 0,
            "_songFilename": "song.ogg", "_coverImageFilename": "cover.jpg",
            "_difficultyBeatmapSets": [{"_beatmapCharacteristicName": c, "_difficultyBeatmaps": d}
                                       for c, d in sets.items()]}
    info.update(extra)
    return info


def n2(time, x=1, y=0, t=0, d=1, **extra):
    note = {"_time": time, "_lineIndex": x, "_lineLayer": y, "_type": t, "_cutDirection": d}
    note.update(extra)
    return note


def make_v2_level(tmp_path, notes, name="lvl", info=None, events=(), **doc_extra):
    root = tmp_path / name
    root.mkdir()
    write_json(root / "Info.dat", info or v2_info())
    doc = {"_version": "2.5.0", "_notes": notes, "_obstacles": [], "_events": list(events)}
    doc.update(doc_extra)
    write_json(root / "Expert.dat", doc)
    return root


def only(level):
    assert len(level.difficulties) == 1
    return level.difficulties[0]


# --- real fixture levels ---------------------------------------------------------------------------

def expected_counts(level_dir: Path):
    """(characteristic, difficulty) -> (colour notes, bombs), counted straight from the JSON files."""
    info = json.loads((level_dir / "Info.dat").read_text())
    out = {}
    for s in info["_difficultyBeatmapSets"]:
        for b in s["_difficultyBeatmaps"]:
            doc = json.loads((level_dir / b["_beatmapFilename"]).read_text())
            if "_notes" in doc:
                colour = sum(1 for n in doc["_notes"] if n["_type"] in (0, 1))
                bombs = sum(1 for n in doc["_notes"] if n["_type"] == 3)
            else:
                colour, bombs = len(doc["colorNotes"]), len(doc["bombNotes"])
            out[(s["_beatmapCharacteristicName"], b["_difficulty"])] = (colour, bombs, doc.get("_version", doc.get("version")))
    return out


@pytest.mark.parametrize("name", ["JOURNEY", "werewolf howls"])
def test_fixture_levels_read_exactly(name):
    level = read_level(FIXTURES / name, characteristic="all")
    expected = expected_counts(FIXTURES / name)
    assert {(d.characteristic, d.difficulty) for d in level.difficulties} == set(expected)
    info = json.loads((FIXTURES / name / "Info.dat").read_text())
    assert level.bpm == info["_beatsPerMinute"] and level.info_version == "2.0.0"
    assert level.song_filename == info["_songFilename"] and level.quarantine is None
    for d in level.difficulties:
        colour, bombs, version = expected[(d.characteristic, d.difficulty)]
        assert d.counts["notes"] == colour and d.counts["bombs"] == bombs
        assert d.quarantine is None and d.drops == {}
        assert len(d.notes) == colour + bombs
        assert int((d.notes["color"] == BOMB).sum()) == bombs
        assert d.declared_version == version and not d.version_mismatch
        assert d.notes.dtype == NOTE_DTYPE
        # constant tempo: time = beat * 60 / BPM; sorted by time, column, row
        np.testing.assert_allclose(d.notes["time_s"], d.notes["beat"] * 60 / level.bpm)
        keys = list(zip(d.notes["time_s"], d.notes["column"], d.notes["row"]))
        assert keys == sorted(keys)


def test_journey_has_v2_and_v3_difficulties_in_one_level():
    level = read_level(FIXTURES / "JOURNEY", characteristic="all")
    versions = {(d.characteristic, d.difficulty): d.sniffed_version for d in level.difficulties}
    assert versions[("OneSaber", "ExpertPlus")] == "3"
    assert versions[("Standard", "ExpertPlus")] == "2"
    assert level.get("onesaber", "Expert+").counts["notes"] == 1227 == len(
        json.loads((FIXTURES / "JOURNEY" / "ExpertPlusOneSaber.dat").read_text())["colorNotes"])


def test_characteristic_filter():
    standard = read_level(FIXTURES / "JOURNEY")
    assert {d.characteristic for d in standard.difficulties} == {"Standard"}
    assert [d.difficulty for d in standard.difficulties] == ["Easy", "Normal", "Hard", "Expert", "ExpertPlus"]
    one = read_level(FIXTURES / "JOURNEY", characteristic="onesaber")
    assert [(d.characteristic, d.difficulty) for d in one.difficulties] == [("OneSaber", "ExpertPlus")]
    assert set(standard.characteristics) == {"Standard", "OneSaber"}
    none = read_level(FIXTURES / "JOURNEY", characteristic="360Degree")
    assert none.difficulties == [] and any("no 360Degree difficulties" in w for w in none.warnings)


def test_zip_reads_like_the_folder(tmp_path):
    src = FIXTURES / "werewolf howls"
    zpath = tmp_path / "ww.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for f in src.iterdir():
            z.write(f, f"werewolf howls/{f.name}")  # one top-level folder, as some uploads have
    from_zip = read_level(zpath)
    from_dir = read_level(src)
    assert from_zip.song_id == "ww"
    for a, b in zip(from_zip.difficulties, from_dir.difficulties):
        assert np.array_equal(a.notes, b.notes) and a.counts == b.counts


def test_level_to_json_is_plain_json():
    level = read_level(FIXTURES / "werewolf howls")
    doc = json.loads(json.dumps(level.to_json()))
    d = doc["difficulties"][0]
    assert d["kept"]["notes"] + d["kept"]["bombs"] == len(d["notes"]) == d["counts"]["notes"] + d["counts"]["bombs"]
    assert set(d["notes"][0]) == {"time_s", "beat", "column", "row", "color", "direction"}
    assert d["tempo"]["segments"] == [{"beat": 0.0, "second": 0.0, "bpm": 222.0}]
    assert "notes" not in level.to_json(notes=False)["difficulties"][0]


# --- formats ---------------------------------------------------------------------------------------

def test_legacy_v1_uses_each_difficulty_files_own_bpm(tmp_path):
    root = tmp_path / "old"
    root.mkdir()
    write_json(root / "info.json", {"songName": "old", "beatsPerMinute": 120, "difficultyLevels": [
        {"difficulty": "Expert", "difficultyRank": 4, "audioPath": "song.ogg", "jsonPath": "Expert.json",
         "offset": 225, "oldOffset": 225},  # editor-only (docs/design.md): never moves a note
        {"difficulty": "Hard", "difficultyRank": 3, "audioPath": "song.ogg", "jsonPath": "Hard.json"}]})
    write_json(root / "Expert.json", {"_version": "1.5.0", "_beatsPerMinute": 60, "_noteJumpSpeed": 10,
                                      "_notes": [n2(2)], "_obstacles": [], "_events": []})
    write_json(root / "Hard.json", {"_version": "1.5.0", "_beatsPerMinute": 120,
                                    "_notes": [n2(2)], "_obstacles": [], "_events": []})
    level = read_level(root)
    assert level.info_version == "1" and level.song_filename == "song.ogg" and level.bpm == 120
    expert, hard = level.difficulties
    assert expert.sniffed_version == "1" and not expert.version_mismatch
    assert expert.notes["time_s"].tolist() == [2.0] and expert.njs == 10
    assert any("differs from info BPM" in w for w in expert.warnings)
    assert hard.notes["time_s"].tolist() == [1.0] and not hard.warnings


def test_v3_missing_fields_default_to_zero(tmp_path):
    root = tmp_path / "v3"
    root.mkdir()
    write_json(root / "Info.dat", v2_info(bpm=60))
    write_json(root / "Expert.dat", {"version": "3.3.0", "colorNotes": [{"b": 10}, {"b": 2, "x": 3, "y": 2, "c": 1, "d": 8}],
                                     "bombNotes": [{"b": 1, "x": 1}], "obstacles": [{"b": 1}], "burstSliders": [{}]})
    d = only(read_level(root))
    assert d.sniffed_version == "3" and d.declared_version == "3.3.0"
    assert d.counts == {"notes": 2, "bombs": 1, "obstacles": 1, "arcs": 0, "chains": 1}
    assert d.notes.tolist() == [(1.0, 1.0, 1, 0, BOMB, 0), (2.0, 2.0, 3, 2, 1, 8), (10.0, 10.0, 0, 0, 0, 0)]


def test_v3_bpm_events_are_applied_and_editor_changes_are_not(tmp_path):
    root = tmp_path / "v3"
    root.mkdir()
    write_json(root / "Info.dat", v2_info(bpm=120))
    write_json(root / "Expert.dat", {"version": "3.2.0", "bpmEvents": [{"b": 16, "m": 240}],
                                     "colorNotes": [{"b": 20, "x": 1, "c": 0, "d": 1}],
                                     "customData": {"BPMChanges": [{"b": 4, "m": 60, "p": 4, "o": 0}]}})
    level = read_level(root)
    d = only(level)
    assert d.notes["time_s"].tolist() == [9.0]
    assert d.editor_bpm_changes == [{"beat": 4, "bpm": 60, "source": "customData.BPMChanges"}]
    assert level.editor_bpm_changes[0]["difficulty"] == "Expert"


def v4_level(tmp_path, beatmap, regions=None, audio_data_name="BPMInfo.dat"):
    root = tmp_path / "v4"
    root.mkdir()
    info = {"version": "4.0.0", "song": {"title": "t"},
            "audio": {"songFilename": "song.ogg", "songDuration": 30, "bpm": 120,
                      "audioDataFilename": audio_data_name},
            "difficultyBeatmaps": [{"characteristic": "Standard", "difficulty": "Expert",
                                    "beatmapDataFilename": "Expert.dat", "noteJumpMovementSpeed": 18}]}
    write_json(root / "Info.dat", info)
    if regions is not None:
        write_json(root / audio_data_name, {"version": "4.0.0", "songFrequency": 44100, "songSampleCount": 882000,
                                            "bpmData": [{"si": a, "ei": b, "sb": c, "eb": d} for a, b, c, d in regions]})
    write_json(root / "Expert.dat", beatmap)
    return root


def test_v4_index_arrays_and_audio_data_regions(tmp_path):
    beatmap = {"version": "4.0.0",
               "colorNotes": [{"b": 30, "i": 0}, {"b": 10, "i": 1}, {"b": 30, "r": 0, "i": 1}],
               "colorNotesData": [{"x": 1, "y": 0, "c": 0, "d": 1}, {"x": 2, "y": 1, "c": 1, "d": 8}],
               "bombNotes": [{"b": 0}], "bombNotesData": [{"x": 3}],
               "obstacles": [], "arcs": [], "chains": []}
    root = v4_level(tmp_path, beatmap, regions=[(0, 441000, 0, 20), (441000, 882000, 20, 60)])
    level = read_level(root)
    d = only(level)
    assert level.info_version == "4.0.0" and level.bpm == 120 and d.njs == 18
    assert d.sniffed_version == "4" and d.tempo.source == "regions"
    assert d.notes.tolist() == [(0.0, 0.0, 3, 0, BOMB, 0), (5.0, 10.0, 2, 1, 1, 8),
                                (12.5, 30.0, 1, 0, 0, 1), (12.5, 30.0, 2, 1, 1, 8)]


def test_v4_without_audio_data_uses_the_base_bpm(tmp_path):
    beatmap = {"version": "4.1.0", "colorNotes": [{"b": 30}], "colorNotesData": [{}]}
    root = v4_level(tmp_path, beatmap, regions=None, audio_data_name=None)
    d = only(read_level(root))
    assert d.notes["time_s"].tolist() == [15.0] and d.tempo.is_constant


def test_v4_missing_audio_data_file_quarantines_v4_beatmaps(tmp_path):
    beatmap = {"version": "4.0.0", "colorNotes": [{"b": 1}], "colorNotesData": [{}]}
    d = only(read_level(v4_level(tmp_path, beatmap, regions=None)))
    assert d.quarantine.startswith("unreadable:") and "BPMInfo.dat" in d.quarantine and "not found" in d.quarantine


def test_v4_index_out_of_range_is_corruption(tmp_path):
    beatmap = {"version": "4.0.0", "colorNotes": [{"b": 1, "i": 0}, {"b": 2, "i": 5}],
               "colorNotesData": [{"x": 1}]}
    d = only(read_level(v4_level(tmp_path, beatmap, regions=[(0, 44100, 0, 2)])))
    assert "corrupt v4 index: colorNotes[1].i = 5" in d.quarantine and "1 entries" in d.quarantine
    assert len(d.notes) == 0


def test_v4_obstacle_index_out_of_range_is_corruption_too(tmp_path):
    beatmap = {"version": "4.0.0", "obstacles": [{"b": 1, "i": 0}], "obstaclesData": []}
    d = only(read_level(v4_level(tmp_path, beatmap, regions=[(0, 44100, 0, 2)])))
    assert "corrupt v4 index: obstacles[0].i = 0" in d.quarantine


def test_v4_info_may_point_to_a_v2_beatmap(tmp_path):
    beatmap = {"_version": "2.6.0", "_notes": [n2(16)], "_events": []}
    d = only(read_level(v4_level(tmp_path, beatmap, regions=[(0, 441000, 0, 40)])))
    assert d.sniffed_version == "2" and d.notes["time_s"].tolist() == [8.0] and d.tempo.is_constant


def test_gzipped_info_and_difficulty(tmp_path):
    root = tmp_path / "gz"
    root.mkdir()
    write_json(root / "Info.dat", v2_info(bpm=60), gzipped=True)
    write_json(root / "Expert.dat", {"_version": "2.0.0", "_notes": [n2(3), n2(1, t=3, d=5)]}, gzipped=True)
    d = only(read_level(root))
    assert d.notes.tolist() == [(1.0, 1.0, 1, 0, BOMB, 0), (3.0, 3.0, 1, 0, 0, 1)]


@pytest.mark.parametrize("encoding, bom", [("utf-16", False), ("utf-16-le", False), ("utf-8", True)])
def test_utf16_and_bom_files(tmp_path, encoding, bom):
    root = tmp_path / "enc"
    root.mkdir()
    write_json(root / "info.DAT", v2_info(bpm=60), encoding=encoding, bom=bom)  # any case
    write_json(root / "Expert.dat", {"_version": "2.0.0", "_notes": [n2(3)]}, encoding=encoding, bom=bom)
    level = read_level(root)
    assert level.info_filename == "info.DAT" and only(level).notes["time_s"].tolist() == [3.0]


# --- versions --------------------------------------------------------------------------------------

def test_declared_and_sniffed_versions_disagree(tmp_path):
    root = tmp_path / "mm"
    root.mkdir()
    write_json(root / "Info.dat", v2_info(bpm=60))
    write_json(root / "Expert.dat", {"_version": "2.0.0", "colorNotes": [{"b": 1, "x": 2}]})
    d = only(read_level(root))
    assert d.declared_version == "2.0.0" and d.sniffed_version == "3" and d.version_mismatch
    assert d.notes["column"].tolist() == [2] and any("keys say v3" in w for w in d.warnings)


def test_unusual_version_string_is_read_by_its_major_digit(tmp_path):
    root = tmp_path / "vv"
    root.mkdir()
    write_json(root / "Info.dat", v2_info(bpm=60))
    write_json(root / "Expert.dat", {"version": "v3"})
    d = only(read_level(root))
    assert d.sniffed_version == "3" and not d.version_mismatch and d.quarantine is None
    assert any("unusual version string 'v3'" in w for w in d.warnings)


def test_file_without_version_or_known_keys_is_unreadable(tmp_path):
    root = make_v2_level(tmp_path, [])
    write_json(root / "Expert.dat", {"hello": 1})
    assert "cannot tell the format version" in only(read_level(root)).quarantine


# --- tempo in levels -------------------------------------------------------------------------------

def test_v2_type_100_events_apply_and_editor_changes_do_not(tmp_path):
    events = [{"_time": 16, "_type": 100, "_value": 1, "_floatValue": 240}, {"_time": 3, "_type": 10, "_value": 1}]
    d = only(read_level(make_v2_level(tmp_path, [n2(20)], events=events)))
    assert d.notes["time_s"].tolist() == [9.0]
    assert any("type-10" in w for w in d.warnings)
    editor = {"_customData": {"_BPMChanges": [{"_time": 16, "_BPM": 240, "_beatsPerBar": 4, "_metronomeOffset": 4}]},
              "_BPMChanges": [{"_time": 8, "_BPM": 0}]}
    d2 = only(read_level(make_v2_level(tmp_path, [n2(20)], name="editor", **editor)))
    assert d2.notes["time_s"].tolist() == [10.0]
    assert [c["source"] for c in d2.editor_bpm_changes] == ["_customData._BPMChanges", "_BPMChanges"]
    assert d2.tempo.is_constant


@pytest.mark.parametrize("bpm", ["0", "-5", "1e400"])  # 1e400 is valid JSON that Python reads as inf
def test_invalid_tempo_event_quarantines_the_difficulty(tmp_path, bpm):
    root = make_v2_level(tmp_path, [n2(1)])
    (root / "Expert.dat").write_text('{"_version":"2.5.0","_notes":[],'
                                     '"_events":[{"_time":16,"_type":100,"_value":1,"_floatValue":%s}]}' % bpm)
    d = only(read_level(root))
    assert d.quarantine.startswith("invalid tempo:") and "must be a finite number > 0" in d.quarantine


def test_type_100_event_without_float_value_quarantines(tmp_path):
    d = only(read_level(make_v2_level(tmp_path, [n2(1)], events=[{"_time": 4, "_type": 100, "_value": 1}])))
    assert "has no _floatValue" in d.quarantine


@pytest.mark.parametrize("bpm", [0, -120, "fast", None])
def test_invalid_info_bpm_makes_the_level_unreadable(tmp_path, bpm):
    with pytest.raises(LevelError, match="BPM") as e:
        read_level(make_v2_level(tmp_path, [n2(1)], info=v2_info(bpm=bpm)))
    assert e.value.path.endswith("Info.dat")


def test_song_time_offset_quarantines_by_default_and_is_added_when_applied(tmp_path):
    root = make_v2_level(tmp_path, [n2(2)], info=v2_info(bpm=60, _songTimeOffset=0.5))
    level = read_level(root)
    assert "_songTimeOffset 0.5" in level.quarantine
    assert only(level).quarantine.startswith("level quarantined: non-zero _songTimeOffset")
    applied = read_level(root, settings=TargetSettings(song_offset="apply"))
    d = only(applied)
    assert applied.quarantine is None and d.quarantine is None
    assert d.notes["time_s"].tolist() == [2.5] and d.tempo.seconds(2) == 2.5  # added: later in the audio
    assert applied.song_time_offset == 0.5


def test_shuffle_is_flagged(tmp_path):
    level = read_level(make_v2_level(tmp_path, [n2(2)], info=v2_info(_shuffle=1)))
    assert any("_shuffle 1" in w for w in level.warnings) and level.quarantine is None


# --- drops by reason -------------------------------------------------------------------------------

DROP_CASES = {
    "fake": n2(1, _customData={"_fake": True}),
    "modded_data": n2(1, _customData={"_position": [0.5, 1.25], "_color": [1, 0, 0, 1]}),
    "missing_field": {"_time": 1, "_lineIndex": 1, "_type": 0, "_cutDirection": 1},
    "bad_value": n2(1, x="left"),
    "unknown_type": n2(1, t=2),
    "fractional_position": n2(1, x=1.5),
    "off_grid": n2(1, x=4),
    "bad_direction": n2(1, d=9),
    "negative_time": n2(-1),
}


@pytest.mark.parametrize("reason", sorted(DROP_CASES))
def test_each_drop_reason_is_counted(tmp_path, reason):
    good = [n2(2), n2(3, t=1, x=2)]
    d = only(read_level(make_v2_level(tmp_path, good + [DROP_CASES[reason]]), settings=LENIENT))
    assert d.drops == {reason: 1}
    assert len(d.notes) == 2 and d.quarantine is None
    assert d.counts["notes"] + d.counts["bombs"] == len(d.notes) + d.n_dropped


def test_mapping_extensions_values_are_off_grid(tmp_path):
    notes = [n2(1, x=1000), n2(1, x=-2000), n2(1, y=1500.5), n2(1, x=2, y=3), n2(1, d=1045), n2(2)]
    d = only(read_level(make_v2_level(tmp_path, notes), settings=LENIENT))
    assert d.drops == {"off_grid": 4, "bad_direction": 1}


def test_non_finite_numbers_are_dropped(tmp_path):
    root = make_v2_level(tmp_path, [])
    # 1e400 is valid JSON that Python reads as inf; NaN literals are rejected by the reader itself
    (root / "Expert.dat").write_text('{"_version":"2.0.0","_notes":[{"_time":1e400,"_lineIndex":1,"_lineLayer":0,'
                                     '"_type":0,"_cutDirection":1},{"_time":1,"_lineIndex":1,"_lineLayer":0,'
                                     '"_type":1,"_cutDirection":1}]}')
    d = only(read_level(root, settings=LENIENT))
    assert d.drops == {"non_finite": 1} and len(d.notes) == 1


def test_duplicates_are_deduplicated_keeping_the_first(tmp_path):
    notes = [n2(1, d=3), n2(1, d=5, t=1), n2(1, x=2)]
    d = only(read_level(make_v2_level(tmp_path, notes), settings=LENIENT))
    assert d.drops == {"duplicate": 1}
    assert d.notes[["column", "color", "direction"]].tolist() == [(1, 0, 3), (2, 0, 1)]


def test_string_numbers_parse_strictly_and_are_flagged(tmp_path):
    notes = [n2("1.5", x="2", t="1"), n2("1e0", x=" 3 ")]
    d = only(read_level(make_v2_level(tmp_path, notes)))
    assert d.drops == {} and d.notes["beat"].tolist() == [1.0, 1.5]
    assert any("5 numeric fields written as strings" in w for w in d.warnings)
    d2 = only(read_level(make_v2_level(tmp_path, [n2("0x10"), n2(True)], name="bad"), settings=LENIENT))
    assert d2.drops == {"bad_value": 2}


def test_v3_fake_notes_are_counted_as_fake(tmp_path):
    root = tmp_path / "v3"
    root.mkdir()
    write_json(root / "Info.dat", v2_info(bpm=60))
    write_json(root / "Expert.dat", {"version": "3.0.0", "colorNotes": [{"b": 1, "c": 5}, {"b": 2}],
                                     "customData": {"fakeColorNotes": [{"b": 1}], "fakeBombNotes": [{"b": 1}]}})
    d = only(read_level(root, settings=LENIENT))
    assert d.drops == {"fake": 2, "unknown_type": 1} and len(d.notes) == 1
    assert d.counts["notes"] == 3 and d.counts["bombs"] == 1


def test_too_many_drops_quarantine_with_the_reasons(tmp_path):
    notes = [n2(i) for i in range(1, 20)] + [n2(30, x=4)]  # 1 of 20 = 5%: not more than 5%
    assert only(read_level(make_v2_level(tmp_path, notes))).quarantine is None
    notes.append(n2(31, x=1.5))  # 2 of 21 > 5%
    d = only(read_level(make_v2_level(tmp_path, notes, name="more")))
    assert d.quarantine == "dropped 2 of 21 notes (9.5% > 5%): fractional_position 1, off_grid 1"


@pytest.mark.parametrize("req", ["Mapping Extensions", "Noodle Extensions", "Mapping Extensions-Precision Placement"])
def test_modded_requirements_quarantine(tmp_path, req):
    info = v2_info()
    info["_difficultyBeatmapSets"][0]["_difficultyBeatmaps"][0]["_customData"] = {"_requirements": [req]}
    d = only(read_level(make_v2_level(tmp_path, [n2(1)], info=info)))
    assert d.quarantine == f"requires {req}"
    chroma = v2_info()
    chroma["_difficultyBeatmapSets"][0]["_difficultyBeatmaps"][0]["_customData"] = {"_requirements": ["Chroma"]}
    assert only(read_level(make_v2_level(tmp_path, [n2(1)], name="chroma", info=chroma))).quarantine is None


def test_drop_reason_keys_are_the_documented_ones():
    assert set(DROP_CASES) | {"non_finite", "duplicate"} == set(DROP_REASONS)


# --- broken inputs ---------------------------------------------------------------------------------

def test_a_broken_difficulty_does_not_stop_the_others(tmp_path):
    root = tmp_path / "broken"
    root.mkdir()
    write_json(root / "Info.dat", v2_info(files=[("Standard", "Hard", "Hard.dat"), ("Standard", "Expert", "Expert.dat"),
                                                 ("Standard", "ExpertPlus", "Missing.dat")]))
    (root / "Hard.dat").write_text('{"_version": "2.0.0", "_notes": [')
    write_json(root / "Expert.dat", {"_version": "2.0.0", "_notes": [n2(1)]})
    hard, expert, plus = read_level(root).difficulties
    assert hard.quarantine.startswith("unreadable:") and "Hard.dat" in hard.quarantine and "invalid JSON" in hard.quarantine
    assert expert.quarantine is None and len(expert.notes) == 1
    assert "Missing.dat" in plus.quarantine and "file not found" in plus.quarantine


def test_notes_that_are_not_a_list_are_corruption(tmp_path):
    root = make_v2_level(tmp_path, [])
    write_json(root / "Expert.dat", {"_version": "2.0.0", "_notes": {"0": 1}})
    assert "'_notes' is not a list" in only(read_level(root)).quarantine


def test_level_without_info_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LevelError, match="no Info.dat"):
        read_level(tmp_path / "empty")


def test_invalid_info_json_names_the_file(tmp_path):
    root = make_v2_level(tmp_path, [])
    (root / "Info.dat").write_text("{ nope")
    with pytest.raises(LevelError, match="invalid JSON") as e:
        read_level(root)
    assert e.value.path.endswith("Info.dat")


def test_info_without_a_difficulty_list(tmp_path):
    root = make_v2_level(tmp_path, [])
    write_json(root / "Info.dat", {"_version": "2.0.0", "_beatsPerMinute": 100})
    with pytest.raises(LevelError, match="lists no difficulties"):
        read_level(root)


def test_unknown_and_repeated_difficulty_names(tmp_path):
    root = make_v2_level(tmp_path, [n2(1)], info=v2_info(files=[
        ("Standard", "expert+", "Expert.dat"), ("Standard", "ExpertPlus", "Expert.dat"), ("Standard", "Insane", "Expert.dat")]))
    a, b, c = read_level(root).difficulties
    assert a.difficulty == "ExpertPlus" and a.quarantine is None
    assert b.quarantine == "duplicate difficulty: Standard/ExpertPlus listed twice in the info file"
    assert c.difficulty == "Insane" and c.quarantine == "unknown difficulty name 'Insane'"



def test_file_names_from_the_info_cannot_leave_the_level(tmp_path):
    write_json(tmp_path / "outside.dat", {"_version": "2.0.0", "_notes": [n2(1)]})
    root = make_v2_level(tmp_path, [n2(1)], info=v2_info(files=[("Standard", "Hard", "../outside.dat"),
                                                               ("Standard", "Expert", "./Expert.dat")]))
    hard, expert = read_level(root).difficulties
    assert hard.quarantine.startswith("unreadable:") and "file not found" in hard.quarantine
    assert expert.quarantine is None and len(expert.notes) == 1


def test_notes_that_are_not_objects_are_bad_values(tmp_path):
    d = only(read_level(make_v2_level(tmp_path, [n2(1), 7, "note", None]), settings=LENIENT))
    assert d.drops == {"bad_value": 3} and len(d.notes) == 1
    root = tmp_path / "v3"
    root.mkdir()
    write_json(root / "Info.dat", v2_info(bpm=60))
    write_json(root / "Expert.dat", {"version": "3.0.0", "colorNotes": [{"b": 1}, [1, 2]], "bombNotes": [3]})
    d3 = only(read_level(root, settings=LENIENT))
    assert d3.drops == {"bad_value": 2} and d3.counts["bombs"] == 1


# --- the column-wise note checks equal the per-note rules ------------------------------------------

def reference_check(beat, x, y, typ, direction, fake, allowed, is_bomb):
    """One note, checked field by field in DROP_REASONS order: ``(reason, kept fields, numeric strings)``."""
    if fake:
        return "fake", None, 0
    fields = (beat, x, y, typ, direction)
    if any(v is MISSING for v in fields):
        return "missing_field", None, 0
    parsed = [strict_number(v) for v in fields]
    if any(num is None for num, _ in parsed):
        return "bad_value", None, 0
    n_strings = sum(s for _, s in parsed)
    beat, x, y, typ, direction = (num for num, _ in parsed)
    if is_bomb:
        direction = 0.0
    if not all(math.isfinite(v) for v in (beat, x, y, typ, direction)):
        return "non_finite", None, n_strings
    if typ != int(typ) or int(typ) not in allowed:
        return "unknown_type", None, n_strings
    if x != int(x) or y != int(y):
        return ("off_grid" if abs(x) >= 1000 or abs(y) >= 1000 else "fractional_position"), None, n_strings
    if not (0 <= x < 4 and 0 <= y < 3):
        return "off_grid", None, n_strings
    if direction != int(direction) or not 0 <= direction < 9:
        return "bad_direction", None, n_strings
    return None, (beat, int(x), int(y), int(typ), int(direction)), n_strings


def reference_normalise(checked, bpm):
    """Kept notes timed, negative times dropped, sorted stably, later duplicates dropped."""
    drops, kept, n_strings = Counter(), [], 0
    for reason, note, ns in checked:
        n_strings += ns
        if reason:
            drops[reason] += 1
        else:
            kept.append((note[0] * 60 / bpm,) + note)
    drops["negative_time"] += sum(1 for n in kept if n[0] < 0)
    kept = sorted((n for n in kept if n[0] >= 0), key=lambda n: (n[0], n[2], n[3]))
    out = []
    for n in kept:
        if out and (out[-1][1], out[-1][2], out[-1][3]) == (n[1], n[2], n[3]):
            drops["duplicate"] += 1
        else:
            out.append(n)
    return out, +drops, n_strings


raw_values = st.sampled_from([0, 1, 2, 3, 8, 9, -1, 4, 1.0, 2.5, -0.5, 1000, -2000, 1500.5, 1045, float("inf"),
                              float("nan"), 10 ** 400, -(10 ** 400), "1", " 2 ", "1e0", "0x10", "left", "", True,
                              False, None, [1], {"a": 1}])
maybe = st.one_of(raw_values, st.just(MISSING))
V2_KEYS = ("_time", "_lineIndex", "_lineLayer", "_type", "_cutDirection")
v2_note = st.one_of(
    st.fixed_dictionaries({}, optional={**{k: raw_values for k in V2_KEYS},
                                        "_customData": st.sampled_from([{"_fake": True}, {"_fake": 1}, {}, 5])}),
    st.builds(lambda t, x, y, c, d: {"_time": t, "_lineIndex": x, "_lineLayer": y, "_type": c, "_cutDirection": d},
              st.integers(-2, 6), st.integers(-1, 4), st.integers(0, 3), st.sampled_from([0, 1, 2, 3]),
              st.integers(0, 9)),
    raw_values)  # not an object
v3_note = st.one_of(st.fixed_dictionaries({}, optional={k: raw_values for k in "bxycd"}),
                    st.builds(lambda b, x, y, c, d: {"b": b, "x": x, "y": y, "c": c, "d": d}, st.integers(-2, 6),
                              st.integers(-1, 4), st.integers(0, 3), st.integers(0, 2), st.integers(0, 9)),
                    raw_values)


@settings(max_examples=300, deadline=None)
@given(st.lists(v2_note, max_size=30))
def test_v2_note_checks_equal_the_per_note_rules(notes):
    checked = []
    for n in notes:
        if not isinstance(n, dict):
            checked.append(reference_check(None, 0, 0, 0, 0, False, (0, 1, 3), False))
            continue
        t = n.get("_type", MISSING)
        custom = n.get("_customData")
        checked.append(reference_check(*(n.get(k, MISSING) for k in V2_KEYS),
                                       isinstance(custom, dict) and custom.get("_fake") is True, (0, 1, 3),
                                       strict_number(t)[0] == 3))
    expected, expected_drops, expected_strings = reference_normalise(checked, 120)
    arr, drops, n_strings = normalise_notes(_v2_notes({"_notes": notes}, "x.dat"), TempoMap.constant(120))
    assert arr.tolist() == expected
    assert +drops == expected_drops and n_strings == expected_strings


@settings(max_examples=300, deadline=None)
@given(st.lists(v3_note, max_size=12), st.lists(v3_note, max_size=8), st.lists(v3_note, max_size=4),
       st.lists(v3_note, max_size=4))
def test_v3_note_checks_equal_the_per_note_rules(colour, bombs, fake_colour, fake_bombs):
    checked = []
    for group, fake, is_bomb in ((colour, False, False), (bombs, False, True), (fake_colour, True, False),
                                 (fake_bombs, True, True)):
        for n in group:
            n = n if isinstance(n, dict) else {"b": None}
            b, x, y = (n.get(k, 0) for k in "bxy")
            c, d = (3, 0) if is_bomb else (n.get("c", 0), n.get("d", 0))
            checked.append(reference_check(b, x, y, c, d, fake, (3,) if is_bomb else (0, 1), is_bomb))
    doc = {"colorNotes": colour, "bombNotes": bombs,
           "customData": {"fakeColorNotes": fake_colour, "fakeBombNotes": fake_bombs}}
    expected, expected_drops, expected_strings = reference_normalise(checked, 60)
    arr, drops, n_strings = normalise_notes(_v3_notes(doc, "x.dat"), TempoMap.constant(60))
    assert arr.tolist() == expected
    assert +drops == expected_drops and n_strings == expected_strings


def test_integers_beyond_float_range_are_non_finite(tmp_path):
    root = make_v2_level(tmp_path, [])
    huge = "1" + "0" * 400
    (root / "Expert.dat").write_text('{"_version":"2.0.0","_notes":[{"_time":1,"_lineIndex":%s,"_lineLayer":0,'
                                     '"_type":0,"_cutDirection":1},{"_time":2,"_lineIndex":1,"_lineLayer":0,'
                                     '"_type":3,"_cutDirection":-%s}]}' % (huge, huge))
    d = only(read_level(root, settings=LENIENT))
    assert d.drops == {"non_finite": 1} and d.notes.tolist() == [(1.0, 2.0, 1, 0, BOMB, 0)]  # a bomb's direction
    assert d.counts == {"notes": 1, "bombs": 1, "obstacles": 0, "arcs": 0, "chains": 0}   # is ignored


def test_event_types_parse_strictly(tmp_path):
    events = [{"_time": 8, "_type": "100", "_floatValue": 240}, {"_time": 1, "_type": 10.0},
              {"_time": 1, "_type": "10"}, {"_time": 2, "_type": True}, {"_time": 3, "_type": 100.5}, 7]
    d = only(read_level(make_v2_level(tmp_path, [n2(12)], events=events)))
    assert d.notes["time_s"].tolist() == [5.0]  # 8 beats at 120 BPM, then 4 at 240
    assert any(w.startswith("2 type-10 events") for w in d.warnings)
    d2 = only(read_level(make_v2_level(tmp_path, [n2(1)], name="plain", events=[{"_time": 0, "_type": 4}] * 3)))
    assert d2.tempo.is_constant and not any("type-10" in w for w in d2.warnings)


# --- review fixes: requirements as a string, v4 info facts, arcs/chains, 2.0.0 audio data, zips ----------

@pytest.mark.parametrize("where", ["difficulty", "level"])
def test_a_requirement_written_as_a_string_quarantines_too(tmp_path, where):
    info = v2_info()
    custom = {"_requirements": "Mapping Extensions"}  # a string, not a list
    if where == "level":
        info["_customData"] = custom
    else:
        info["_difficultyBeatmapSets"][0]["_difficultyBeatmaps"][0]["_customData"] = custom
    d = only(read_level(make_v2_level(tmp_path, [n2(1)], info=info)))
    assert d.requirements == ["Mapping Extensions"] and d.quarantine == "requires Mapping Extensions"


def test_a_v4_requirement_written_as_a_string_quarantines_too(tmp_path):
    beatmap = {"version": "4.0.0", "colorNotes": [{"b": 1}], "colorNotesData": [{}]}
    root = v4_level(tmp_path, beatmap, regions=None, audio_data_name=None)
    info = json.loads((root / "Info.dat").read_text())
    info["difficultyBeatmaps"][0]["customData"] = {"requirements": "Noodle Extensions"}
    write_json(root / "Info.dat", info)
    assert only(read_level(root)).quarantine == "requires Noodle Extensions"


def test_v4_info_without_audio_bpm_says_so(tmp_path):
    root = v4_level(tmp_path, {"version": "4.0.0", "colorNotes": []}, regions=None, audio_data_name=None)
    info = json.loads((root / "Info.dat").read_text())
    del info["audio"]
    write_json(root / "Info.dat", info)
    with pytest.raises(LevelError) as e:
        read_level(root)
    assert e.value.reason == "v4 info has no audio.bpm" and e.value.path.endswith("Info.dat")


def test_arc_and_chain_counts_of_every_format(tmp_path):
    """Arcs and chains are not notes, but are counted per format: v2.6 _sliders, v3 sliders/burstSliders, v4 arcs/chains."""
    v2 = make_v2_level(tmp_path, [n2(1)], name="v26", _sliders=[{"_colorType": 0}] * 2)
    c = only(read_level(v2)).counts
    assert (c["arcs"], c["chains"], c["notes"]) == (2, 0, 1)
    v3 = make_v2_level(tmp_path, [], name="v3")
    write_json(v3 / "Expert.dat", {"version": "3.2.0", "colorNotes": [{"b": 1, "x": 1, "y": 0, "c": 0, "d": 1}],
                                   "sliders": [{"b": 1}] * 3, "burstSliders": [{"b": 2}] * 4})
    c = only(read_level(v3)).counts
    assert (c["arcs"], c["chains"], c["notes"]) == (3, 4, 1)
    v4 = v4_level(tmp_path, {"version": "4.0.0", "colorNotes": [{"b": 1, "i": 0}], "colorNotesData": [{"x": 1}],
                             "arcs": [{"hb": 1, "tb": 2}] * 5, "arcsData": [{}], "chains": [{"hb": 1}] * 6,
                             "chainsData": [{}]}, regions=None, audio_data_name=None)
    c = only(read_level(v4)).counts
    assert (c["arcs"], c["chains"], c["notes"]) == (5, 6, 1)


def test_v4_info_with_a_2_0_0_audio_data_file_uses_its_regions(tmp_path):
    """An older AudioData (``_version`` 2.0.0, ``_regions``) times v4 beatmaps like ``bpmData`` does."""
    beatmap = {"version": "4.0.0", "colorNotes": [{"b": 10, "i": 0}, {"b": 30, "i": 0}], "colorNotesData": [{}]}
    root = v4_level(tmp_path, beatmap, regions=None, audio_data_name="AudioData.dat")
    write_json(root / "AudioData.dat", {"_version": "2.0.0", "_songSampleCount": 882000, "_songFrequency": 44100,
                                        "_regions": [
                                            {"_startSampleIndex": 0, "_endSampleIndex": 441000,
                                             "_startBeat": 0, "_endBeat": 20},
                                            {"_startSampleIndex": 441000, "_endSampleIndex": 882000,
                                             "_startBeat": 20, "_endBeat": 60}]})
    d = only(read_level(root))
    assert d.quarantine is None and d.tempo.source == "regions"
    assert d.notes["time_s"].tolist() == [5.0, 12.5]  # docs/design.md §1: beat 30 -> 12.5 s


def test_info_characteristics_reads_only_the_info_file(tmp_path):
    from mapkit.preprocess.levels import info_characteristics

    raw = json.loads((FIXTURES / "JOURNEY" / "Info.dat").read_text())["_difficultyBeatmapSets"]
    assert info_characteristics(FIXTURES / "JOURNEY") == [s["_beatmapCharacteristicName"] for s in raw]
    assert sorted(info_characteristics(FIXTURES / "JOURNEY")) == ["OneSaber", "Standard"]
    root = make_v2_level(tmp_path, [n2(1)], info=v2_info(files=(("Lawless", "Expert", "Expert.dat"),
                                                               ("Standard", "Hard", "Missing.dat"),
                                                               ("Lawless", "Hard", "Expert.dat"))))
    assert info_characteristics(root) == ["Lawless", "Standard"]
    (tmp_path / "none").mkdir()
    with pytest.raises(LevelError, match="no Info.dat"):
        info_characteristics(tmp_path / "none")


def zip_of(path: Path, members: dict) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


@pytest.mark.parametrize("layout", ["macosx", "dotfiles", "deeper", "deeper_with_readme"])
def test_zip_root_ignores_sidecars_and_finds_a_deeper_info_file(tmp_path, layout):
    src = FIXTURES / "werewolf howls"
    files = {f.name: f.read_bytes() for f in src.iterdir()}
    if layout == "macosx":  # what macOS's "Compress" adds next to the level folder
        members = {f"werewolf/{n}": b for n, b in files.items()}
        members.update({f"__MACOSX/werewolf/._{n}": b"\0\5\26\7" for n in files})
    elif layout == "dotfiles":
        members = {f"werewolf/{n}": b for n, b in files.items()}
        members.update({".DS_Store": b"junk", "._werewolf": b"junk"})
    elif layout == "deeper":
        members = {f"pack/werewolf/{n}": b for n, b in files.items()}
    else:  # a file beside the level folder: the shallowest info file still decides
        members = {f"pack/werewolf/{n}": b for n, b in files.items()}
        members.update({"README.txt": b"hi", "pack/other/Info.txt": b"not an info file"})
    level = read_level(zip_of(tmp_path / "ww.zip", members))
    reference = read_level(src)
    assert len(level.difficulties) == len(reference.difficulties) == 5
    for a, b in zip(level.difficulties, reference.difficulties):
        assert a.difficulty == b.difficulty and np.array_equal(a.notes, b.notes) and a.quarantine is None


def test_zip_root_is_the_shallowest_info_file():
    from mapkit.preprocess.container import zip_root

    assert zip_root(["a/b/Info.dat", "a/Info.dat", "a/song.egg"]) == "a/"
    assert zip_root(["x/info.json", "y/INFO.DAT"]) == "y/"  # same depth: Info.dat before legacy info.json
    assert zip_root(["__MACOSX/Info.dat", "s/Info.dat"]) == "s/"
    assert zip_root([".hidden/Info.dat", "s/Info.dat"]) == "s/"
    assert zip_root(["s/song.egg", "s/cover.jpg", ".DS_Store"]) == "s/"  # no info: the single top folder
    assert zip_root(["song.egg", "s/cover.jpg"]) == ""


def test_zip_without_any_info_file_names_the_reason(tmp_path):
    z = zip_of(tmp_path / "broken.zip", {"broken/song.egg": b"x", "__MACOSX/broken/._song.egg": b"y"})
    with pytest.raises(LevelError) as e:
        read_level(z)
    assert e.value.reason == "no Info.dat (or legacy info.json) in level"


# --- undeclared modded data, empty difficulties ------------------------------------------------------

def test_undeclared_noodle_notes_are_dropped_and_the_level_quarantined(tmp_path):
    """Like a real level that declares no requirement while most notes carry Noodle placement data."""
    noodle = [n2(2 + i, _customData={"_position": [i * 0.5, 1.0]}) for i in range(6)]
    noodle += [n2(8, _customData={"_animation": {"_dissolve": [[0, 0]]}})]
    plain = [n2(10, x=2, _customData={"_color": [1, 0, 0, 1]}), n2(11, t=1, x=3)]  # Chroma colour is harmless
    walls = [{"_time": 1, "_lineIndex": 0, "_type": 0, "_duration": 1, "_width": 1,
              "_customData": {"_position": [-5, 0], "_scale": [1, 5]}},
             {"_time": 2, "_lineIndex": 3, "_type": 0, "_duration": 1, "_width": 1}]
    d = only(read_level(make_v2_level(tmp_path, noodle + plain, _obstacles=walls)))
    assert d.drops == {"modded_data": 7} and d.counts["obstacles"] == 2
    assert d.objects_drops.get("obstacles", {}).get("modded") == 1  # walls: the objects' own rule
    assert d.quarantine.startswith("dropped 7 of 9 notes") and "modded_data 7" in d.quarantine
    v3 = tmp_path / "v3"
    v3.mkdir()
    write_json(v3 / "Info.dat", v2_info(bpm=60))
    write_json(v3 / "Expert.dat", {"version": "3.2.0", "colorNotes": [
        {"b": 1, "x": 1, "y": 0, "c": 0, "d": 1, "customData": {"coordinates": [0.5, 2]}},
        *({"b": 2 + i, "x": 1, "y": 0, "c": 1, "d": 1} for i in range(30))]})
    d = only(read_level(v3))
    assert d.drops == {"modded_data": 1} and d.quarantine is None and len(d.notes) == 30


def test_difficulty_without_notes_is_read_but_not_a_target(tmp_path):
    from mapkit.preprocess.difficulty_targets import no_notes_reason

    d = only(read_level(make_v2_level(tmp_path, [])))
    assert d.quarantine is None and "no notes" in d.warnings  # inspect and evaluate see it as it is
    assert no_notes_reason(d) == "no notes"  # build-targets quarantines it (tests/runs/test_build_targets.py)
    d = only(read_level(make_v2_level(tmp_path, [n2(1, t=3), n2(2, t=3)], name="bombs")))
    assert no_notes_reason(d) == "no notes (only 2 bombs)"
    assert no_notes_reason(only(read_level(make_v2_level(tmp_path, [n2(1), n2(2, t=1)], name="two")))) is None
