"""Walls, arcs, chains and events read from real levels (hand-checked seconds) and from small synthetic files."""

import json
from pathlib import Path

import numpy as np
import pytest

from mapkit.errors import LevelError
from mapkit.preprocess.frame_events import FRAME_EVENT_CHANNELS, STREAM_KINDS, frame_events, object_stream
from mapkit.preprocess.levels import read_level
from mapkit.runs.inspect import format_level
from mapkit.preprocess.objects import EVENT_BOX_JSON, OBJECT_KINDS, group_json, place_objects
from mapkit.settings import TargetSettings
from tests.objects_levels import seconds, write_v2, write_v3, write_v4

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "maps"
ARCS_CHAINS = FIXTURES.parent / "arcs-chains"
LENIENT = TargetSettings(max_drop_fraction=1.0)


def only(level, characteristic="Standard", difficulty="Expert"):
    d = level.get(characteristic, difficulty)
    assert d is not None
    return d


# --- real levels: seconds checked by hand --------------------------------------------------------

def test_journey_v2_walls_and_lights_hand_checked():
    """JOURNEY ExpertPlus (v2.6.0, 185 BPM): first wall _time 68.75, _type 1 (crouch), _duration 0.5."""
    d = only(read_level(FIXTURES / "JOURNEY"), difficulty="ExpertPlus")
    walls = d.objects["obstacles"]
    assert d.objects_read["obstacles"] == 236 == len(walls) and d.objects_drops["obstacles"] == {}
    first = walls[0]
    assert first["beat"] == 68.75 and first["time_s"] == pytest.approx(68.75 * 60 / 185, abs=1e-12)  # 22.2973 s
    assert first["time_s"] == pytest.approx(22.297297297297, abs=1e-9)
    assert (first["y"], first["height"]) == (2, 3)  # crouch wall in v3 geometry
    assert first["duration_s"] == pytest.approx(0.5 * 60 / 185, abs=1e-12)
    # 13424 events: 104 boosts (type 5) go to boost_events, the other 13320 are lights (no 14/15/100 in it)
    assert d.objects_read["light_events"] == 13320 and d.objects_read["boost_events"] == 104
    raw = json.loads((FIXTURES / "JOURNEY" / "ExpertPlusStandard.dat").read_text())["_events"]
    lights = sorted((e["_time"], e["_type"], e["_value"]) for e in raw if e["_type"] != 5)
    got = sorted(zip(d.objects["light_events"]["beat"].tolist(), d.objects["light_events"]["type"].tolist(),
                     d.objects["light_events"]["value"].tolist()))
    assert got == lights
    assert np.allclose(d.objects["light_events"]["time_s"], d.objects["light_events"]["beat"] * 60 / 185, atol=1e-12)
    assert np.all(np.diff(d.objects["light_events"]["time_s"]) >= 0)


def test_werewolf_walls_full_height_and_crouch():
    d = only(read_level(FIXTURES / "werewolf howls"), difficulty="ExpertPlus")
    w = d.objects["obstacles"]
    # first wall: _time 2.5, _type 0, _duration 1.25 at 222 BPM -> 0.675676 s, full height
    assert w[0]["time_s"] == pytest.approx(2.5 * 60 / 222, abs=1e-12) == pytest.approx(0.675675675676, abs=1e-9)
    assert (w[0]["y"], w[0]["height"], w[0]["duration_s"]) == (0, 5, pytest.approx(1.25 * 60 / 222))
    assert sorted(set(zip(w["y"].tolist(), w["height"].tolist()))) == [(0, 5), (2, 3)]


def test_bsmap_v3_arcs_chains_and_a_tempo_change_hand_checked():
    """bsmap's 'I Bet You'll Forget...' NormalOneSaber (v3.2.0): bpmEvents 139 BPM from 0, 195 from beat 41."""
    level = read_level(ARCS_CHAINS / "IBetYoullForget", characteristic="OneSaber")
    d = only(level, "OneSaber", "Normal")
    assert d.quarantine is None
    at41 = 41 * 60 / 139  # 17.697842 s
    wall = d.objects["obstacles"][0]  # b 41.25, d 14.25, x 0, y 2, w 1, h 3
    assert wall["time_s"] == pytest.approx(17.774764803542, abs=1e-9) == pytest.approx(at41 + 0.25 * 60 / 195)
    assert wall["duration_s"] == pytest.approx(14.25 * 60 / 195) and (wall["x"], wall["y"], wall["height"]) == (0, 2, 3)
    arc = d.objects["arcs"][0]  # b 25 -> tb 27, both before the change
    assert (arc["time_s"], arc["tail_time_s"]) == (pytest.approx(25 * 60 / 139), pytest.approx(27 * 60 / 139))
    assert arc["time_s"] == pytest.approx(10.791366906475, abs=1e-9)
    assert (arc["x"], arc["y"], arc["direction"], arc["tail_x"], arc["tail_y"], arc["tail_direction"]) == (0, 1, 2, 2, 1, 3)
    chain = d.objects["chains"][0]  # b 101 -> tb 101.125, 5 slices, squish 1
    assert chain["time_s"] == pytest.approx(36.159380188157, abs=1e-9)
    assert chain["tail_time_s"] == pytest.approx(at41 + 60.125 * 60 / 195)
    assert (chain["slices"], chain["squish"], chain["color"]) == (5, 1.0, 1)
    assert d.objects_read["arcs"] == 36 == len(d.objects["arcs"]) and d.objects_read["chains"] == 7
    boost = d.objects["boost_events"][0]  # {b: 57, o: true}
    assert boost["on"] == 1 and boost["time_s"] == pytest.approx(at41 + 16 * 60 / 195)
    assert d.objects_read["event_box_groups"] == 5287 + 1361 + 2481 == len(d.objects["event_box_groups"])
    g = d.objects["event_box_groups"]
    assert set(g["group_type"].tolist()) == {0, 1, 2}
    # the JSON is kept verbatim: the first colour group (b 0.75, g 15) reads back as written
    first_colour = int(np.flatnonzero(g["group_type"] == 0)[0])
    text = json.loads(d.objects[EVENT_BOX_JSON][int(g["json_start"][first_colour])])
    assert text["b"] == 0.75 and text["g"] == 15 and text["e"][0]["f"]["p"] == 1
    # the files of the other OneSaber difficulties are not in the fixture: unreadable, the run goes on
    assert only(level, "OneSaber", "Expert").quarantine.startswith("unreadable")


# --- synthetic files: each version's conversion ----------------------------------------------------

def test_v2_obstacle_types_and_event_split(tmp_path):
    d = only(read_level(write_v2(tmp_path / "v2"), settings=LENIENT))
    w = d.objects["obstacles"]
    # _type 0 -> y 0 h 5; 1 -> y 2 h 3; 2 (free) -> _lineLayer 1, _height 2; 4001 modded; negative duration dropped
    assert [(r["beat"], r["x"], r["y"], r["width"], r["height"]) for r in w] == [
        (1, 0, 0, 1, 5), (3, 2, 2, 2, 3), (5, 3, 1, 1, 2)]
    assert d.objects_drops["obstacles"] == {"modded": 1, "negative_duration": 1}
    assert w["time_s"].tolist() == [0.5, 1.5, 2.5] and w["duration_s"].tolist() == [1.0, 0.25, 0.5]
    # 5 walls read, 2 dropped of gameplay walls: 40% > 5% -> quarantined like notes would be
    strict = only(read_level(tmp_path / "v2"))
    assert strict.quarantine.startswith("dropped 2 of 5 obstacles") and "modded 1" in strict.quarantine
    arc = d.objects["arcs"][0]
    assert (arc["time_s"], arc["tail_time_s"], arc["multiplier"], arc["tail_multiplier"], arc["mid_anchor"]) == (
        1.0, 2.0, 1.0, 0.5, 1)
    lights = d.objects["light_events"]
    assert lights[["beat", "type", "value"]].tolist() == [(0.5, 1, 3), (3.5, 4, 0)]
    assert lights["float_value"].tolist() == [0.5, 1.0]
    assert d.objects["boost_events"][["time_s", "on"]].tolist() == [(0.5, 1)]
    rot = d.objects["rotation_events"]
    assert rot[["time_s", "late", "rotation"]].tolist() == [(0.75, 0, -60.0), (1.25, 1, 60.0)]
    assert d.objects_drops["rotation_events"] == {"modded": 1}
    assert d.objects_read["light_events"] == 2  # the tempo event is not a light


def test_v3_sliders_burst_sliders_and_the_tempo_change(tmp_path):
    d = only(read_level(write_v3(tmp_path / "v3"), settings=LENIENT))
    w = d.objects["obstacles"]
    assert w["beat"].tolist() == [6, 9]  # the decoration at x -1 is kept, x 1000 is Mapping Extensions
    assert d.objects_drops["obstacles"] == {"fake": 1, "modded": 1} and d.objects_read["obstacles"] == 4
    # beats 6..10 cross the change at beat 8: 3 s -> 4.5 s, so 1.5 s long, not 2
    assert (w[0]["time_s"], w[0]["end_s"], w[0]["duration_s"]) == (seconds(6), seconds(10), 1.5)
    arc = d.objects["arcs"][0]
    assert (arc["time_s"], arc["tail_time_s"], arc["mid_anchor"], arc["tail_multiplier"]) == (1.0, 4.5, 2, 0.75)
    chains = d.objects["chains"]
    assert len(chains) == 1 and d.objects_drops["chains"] == {"out_of_range": 1, "reversed": 1}
    assert (chains[0]["time_s"], chains[0]["tail_time_s"], chains[0]["slices"]) == (seconds(10), seconds(11), 4)
    assert d.objects["boost_events"][["time_s", "on"]].tolist() == [(2.5, 1), (3.5, 0)]
    assert d.objects["rotation_events"][["time_s", "late", "rotation"]].tolist() == [(2.0, 1, 15.0)]
    assert d.objects["light_events"][["time_s", "type", "value"]].tolist() == [(0.5, 0, 1), (seconds(9), 2, 5)]
    g = d.objects["event_box_groups"]
    assert g[["time_s", "group_type", "group_id", "n_boxes"]].tolist() == [(2.0, 0, 2, 1), (3.0, 1, 3, 0)]


def test_v4_index_arrays_lightshow_njs_and_a_bad_lightshow_index(tmp_path):
    level = read_level(write_v4(tmp_path / "v4"), settings=LENIENT)
    d = only(level)
    assert d.tempo.source == "regions"
    w = d.objects["obstacles"]  # both index obstaclesData[0]: d 4, x 1, w 2, h 5
    assert w[["beat", "x", "width", "height"]].tolist() == [(6, 1, 2, 5), (12, 1, 2, 5)]
    assert w["duration_s"].tolist() == [1.5, 1.0]
    arc = d.objects["arcs"][0]  # head from colorNotesData[0], tail from [2]
    assert (arc["x"], arc["y"], arc["color"], arc["tail_x"], arc["tail_y"], arc["tail_direction"]) == (1, 0, 0, 3, 1, 0)
    assert (arc["time_s"], arc["tail_time_s"], arc["multiplier"], arc["tail_multiplier"]) == (1.0, 4.5, 1.0, 0.5)
    chain = d.objects["chains"][0]
    assert (chain["x"], chain["color"], chain["tail_y"], chain["slices"], chain["squish"]) == (2, 1, 2, 3, 0.5)
    assert d.objects["njs_events"][["time_s", "use_previous", "easing", "delta"]].tolist() == [
        (2.0, 0, 1, 2.5), (seconds(9), 1, 0, -1.0)]
    assert d.objects["rotation_events"][["time_s", "late", "rotation"]].tolist() == [(1.5, 0, 30.0)]
    # lightshow: basic events via basicEventsData; index 7 is out of range: dropped, counted, the rest kept
    assert d.objects["light_events"][["time_s", "type", "value"]].tolist() == [(0.5, 1, 3), (seconds(9), 4, 0)]
    assert d.objects_drops["light_events"] == {"bad_index": 1} and d.quarantine is None
    assert d.objects["boost_events"]["on"].tolist() == [1]
    g = d.objects["event_box_groups"]
    assert g[["group_type", "group_id", "n_boxes"]].tolist() == [(0, 7, 1), (3, 8, 0)]


def test_v4_beatmap_index_out_of_range_is_still_corruption(tmp_path):
    root = write_v4(tmp_path / "v4")
    doc = json.loads((root / "Expert.dat").read_text())
    doc["chains"][0]["ci"] = 5
    (root / "Expert.dat").write_text(json.dumps(doc))
    d = only(read_level(root))
    assert d.quarantine.startswith("unreadable") and "chains[0].ci = 5" in d.quarantine


def test_unreadable_lightshow_loses_the_lighting_not_the_level(tmp_path):
    root = write_v4(tmp_path / "v4")
    (root / "Lights.dat").write_text("{not json")
    d = only(read_level(root))
    assert d.quarantine is None and len(d.objects["obstacles"]) == 2 and len(d.objects["light_events"]) == 0
    assert any("lightshow unreadable" in w for w in d.warnings)


def test_objects_with_bad_values_are_dropped_by_reason(tmp_path):
    root = write_v3(tmp_path / "v3")
    doc = json.loads((root / "Expert.dat").read_text())
    doc["basicBeatmapEvents"] += [{"b": "x", "et": 1}, {"b": -100, "et": 1}, {"b": 1, "et": 1, "f": 1e400}]
    (root / "Expert.dat").write_text(json.dumps(doc).replace("Infinity", "1e400"))
    d = only(read_level(root, settings=LENIENT))
    assert d.objects_drops["light_events"] == {"bad_value": 1, "non_finite": 1, "negative_time": 1}
    assert d.objects_read["light_events"] == 5 and len(d.objects["light_events"]) == 2


def test_lighting_that_is_not_a_list_is_lost_with_a_warning_but_walls_are_corruption(tmp_path):
    root = write_v3(tmp_path / "v3")
    doc = json.loads((root / "Expert.dat").read_text())
    doc["basicBeatmapEvents"] = {"b": 1}
    (root / "Expert.dat").write_text(json.dumps(doc))
    d = only(read_level(root, settings=LENIENT))
    assert d.quarantine is None and len(d.objects["light_events"]) == 0 and len(d.objects["obstacles"]) == 2
    assert "basicBeatmapEvents is not a list but dict: ignored" in d.warnings
    doc["obstacles"] = {"b": 1}
    (root / "Expert.dat").write_text(json.dumps(doc))
    d = only(read_level(root, settings=LENIENT))
    assert d.quarantine.startswith("unreadable") and "'obstacles' is not a list" in d.quarantine
    v4 = write_v4(tmp_path / "v4")
    doc = json.loads((v4 / "Expert.dat").read_text())
    doc["njsEventData"] = 5
    (v4 / "Expert.dat").write_text(json.dumps(doc))
    d = only(read_level(v4, settings=LENIENT))
    assert d.objects_drops["njs_events"] == {"bad_index": 2} and "njsEventData is not a list but int: ignored" in d.warnings


# --- frames, links, the frame target and the stream ----------------------------------------------

def test_placement_frames_links_and_beyond_audio(tmp_path):
    from mapkit.preprocess.difficulty_targets import place_notes

    d = only(read_level(write_v3(tmp_path / "v3"), settings=LENIENT))
    T = 451  # 4.5 s is frame 450, the last one
    notes, _ = place_notes(d.notes, T)
    placed, beyond = place_objects(d.objects, T, notes)
    w = placed["obstacles"]
    assert w[["frame", "end_frame"]].tolist() == [(300, 450), (425, 450)]
    assert beyond == {"chains": 1}  # its tail at beat 11 (4.75 s) is after the audio
    assert only(read_level(tmp_path / "v3", settings=LENIENT)).objects_read["chains"] == 3
    short, beyond = place_objects(d.objects, 440, notes[:2])
    assert short["obstacles"]["end_frame"].tolist() == [440, 440]  # min(round(end_s * 100), T)
    assert beyond == {"arcs": 1, "chains": 1}
    arc = placed["arcs"][0]
    # the arc's head and tail are the red note at beat 2 and the blue note at beat 10... of another colour:
    # its tail (colour 0 at x 2 y 1) matches no note, so -1
    assert (arc["frame"], arc["tail_frame"], arc["head_note"], arc["tail_note"]) == (100, 450, 0, -1)
    fe = frame_events(notes, placed, T)
    ch = {n: k for k, n in enumerate(FRAME_EVENT_CHANNELS)}
    assert fe.shape == (T, 14) and fe.dtype == np.uint8
    assert np.flatnonzero(fe[:, ch["wall_start"]]).tolist() == [300, 425]
    assert np.flatnonzero(fe[:, ch["wall_active"]]).tolist() == list(range(300, 450))
    assert np.flatnonzero(fe[:, ch["arc_tail"]]).tolist() == [450]
    assert np.flatnonzero(fe[:, ch["boost_event"]]).tolist() == [250, 350]
    assert np.flatnonzero(fe[:, ch["red_note"]]).tolist() == [100]
    assert np.flatnonzero(fe[:, ch["bomb"]]).tolist() == [150]
    assert np.flatnonzero(fe[:, ch["light_group"]]).tolist() == [200, 300]
    assert placed[EVENT_BOX_JSON].dtype == np.uint8
    assert group_json(placed["event_box_groups"], placed[EVENT_BOX_JSON], 1) == {"b": 6, "e": [], "g": 3}
    stream = object_stream(notes, placed)
    assert np.all(np.diff(stream["time_s"]) >= 0)
    assert len(stream) == len(notes) + sum(len(placed[k]) for k in OBJECT_KINDS)
    first = stream[0]
    assert STREAM_KINDS[first["kind"]] == "light_events" and first["time_s"] == 0.5


def test_inspect_text_and_json_show_every_kind(tmp_path):
    from mapkit.runs.inspect import inspect_levels

    root = write_v3(tmp_path / "v3")
    [text] = inspect_levels([root], settings=LENIENT)
    assert "obstacles: read 4, kept 2, dropped: fake 1, modded 1" in text.text
    assert "chains: read 3, kept 1, dropped: out_of_range 1, reversed 1" in text.text
    [js] = inspect_levels([root], settings=LENIENT, as_json=True)
    d = json.loads(js.text)["difficulties"][0]
    assert d["objects_read"]["chains"] == 3 and d["objects_drops"]["obstacles"] == {"fake": 1, "modded": 1}
    assert [o["beat"] for o in d["objects"]["obstacles"]] == [6, 9]
    assert d["objects"]["event_box_groups"][0]["json"]["g"] == 2
    assert set(d["objects"]) == set(OBJECT_KINDS)
    assert "frame" not in d["objects"]["obstacles"][0] and d["objects"]["obstacles"][0]["end_s"] == 4.5
