"""Decoding walls, arcs, chains and lights from given event probabilities and a hand-made object model."""

import numpy as np
import pytest

from mapkit.preprocess.frame_events import FRAME_EVENT_CHANNELS
from mapkit.preprocess.notes import NOTE_DTYPE
from mapkit.preprocess.object_decoding import (GENERATED_KINDS, MIN_FREE_COLUMNS, SYNC_WALL_BEATS, ObjectPriors,
                                               WALL_MARGIN_S, chain_tail_cell, decode_objects, events_per_onset,
                                               object_onsets, wall_cells, wall_floor_beats)
from mapkit.preprocess.objects import OBJECT_DTYPES
from mapkit.preprocess.tempo import TempoMap

FPS = 100
T = 1200  # 12 s
TEMPO = TempoMap.constant(120.0)


def notes_every_half_second(row=0, direction=1):
    """Red at column 1, blue at column 2, alternating every 0.5 s from 1 s to 10.5 s (beats 2, 3, ...)."""
    beats = np.arange(2.0, 22.0)
    notes = np.zeros(len(beats), NOTE_DTYPE)
    notes["beat"] = beats
    notes["time_s"] = TEMPO.seconds(beats)
    notes["color"] = np.arange(len(beats)) % 2
    notes["column"] = 1 + notes["color"]
    notes["row"] = row
    notes["direction"] = direction
    return notes


PRIORS = {
    "rates": {"obstacles": 6.0, "arcs": 6.0, "chains": 6.0, "light_events": 30.0, "boost_events": 6.0},
    # a centre wall (always collides with the notes), a left-lane wall, a crouch wall over every lane
    "walls": [[1, 0, 2, 5, 1.0], [0, 0, 1, 5, 2.0], [0, 2, 4, 3, 0.5]],
    "arcs": [[1, 1.0, 1.0, 0, 2.0], [2, 0.5, 0.75, 1, 4.0]],
    "chains": [[4, 0.8, 2, 0.25], [3, 0.5, 1, 0.5]],
    "lights": [[1, 3, 1.0], [4, 1, 0.5], [2, 5, 1.0], [1, 7, 0.25]],
    "lights_per_frame": [2, 3, 1, 0, 0, 0, 0, 0],
}


def probs_with_peaks(frames_by_channel):
    p = np.full((T, len(FRAME_EVENT_CHANNELS)), 0.01, np.float32)
    for channel, frames in frames_by_channel.items():
        p[np.asarray(frames), FRAME_EVENT_CHANNELS.index(channel)] = 0.9
    return p


ONSETS = {"wall_start": np.arange(110, 1100, 97), "arc_head": np.arange(100, 1000, 150) + 1,
          "chain_head": np.arange(150, 1000, 100) - 2, "light_event": np.arange(50, 1150, 40),
          "boost_event": [300, 700, 900]}
THRESHOLDS = {c: 0.5 for c in ONSETS}


def decode(notes, seed=0, kinds=GENERATED_KINDS, thresholds=THRESHOLDS, priors=PRIORS):
    return decode_objects(probs_with_peaks(ONSETS), FRAME_EVENT_CHANNELS, notes, priors, thresholds, TEMPO,
                          T / FPS, FPS, seed=seed, kinds=kinds)


def test_every_kind_comes_out_in_the_store_dtypes_with_consistent_times():
    out = decode(notes_every_half_second(row=2))
    assert set(out) == set(GENERATED_KINDS)
    for kind, records in out.items():
        assert records.dtype == OBJECT_DTYPES[kind] and len(records), kind
        assert np.allclose(records["time_s"], TEMPO.seconds(records["beat"]))
        assert (records["frame"] == np.round(records["time_s"] * FPS)).all()
        assert (np.diff(records["time_s"]) >= 0).all() and records["time_s"].max() < T / FPS


def test_walls_never_overlap_notes_and_leave_room_to_dodge():
    notes = notes_every_half_second()
    walls = decode(notes)["obstacles"]
    assert len(walls) >= 3
    assert not ((walls["x"] == 1) & (walls["width"] == 2) & (walls["y"] == 0)).any()  # the centre wall never fits
    for w in walls:
        cols, rows = wall_cells(int(w["x"]), int(w["y"]), int(w["width"]), int(w["height"]))
        near = notes[(notes["time_s"] >= w["time_s"] - WALL_MARGIN_S) & (notes["time_s"] <= w["end_s"] + WALL_MARGIN_S)]
        assert not any(n["column"] in cols and n["row"] in rows for n in near)
        assert w["end_s"] == pytest.approx(TEMPO.seconds(w["beat"] + w["duration_beats"]))
        assert w["end_s"] < T / FPS
    for w in walls:  # standing walls overlapping in time leave two adjacent lanes
        blocked = set()
        for o in walls:
            if o["time_s"] <= w["end_s"] + WALL_MARGIN_S and w["time_s"] <= o["end_s"] + WALL_MARGIN_S and o["y"] < 2:
                blocked |= set(wall_cells(int(o["x"]), int(o["y"]), int(o["width"]), int(o["height"]))[0])
        assert any(not ({c, c + 1} & blocked) for c in range(4 - MIN_FREE_COLUMNS + 1))


def test_walls_are_never_shorter_than_the_learned_floor():
    notes = notes_every_half_second()
    # mostly sync walls (1/64 beat, in the free left lane) and a few longer ones, as in human levels
    rows = [[0, 0, 1, 5, 1 / 64]] * 30 + [[3, 0, 1, 5, 1 / 32]] * 10 + [[0, 0, 1, 5, 0.5]] * 12 + [[3, 0, 1, 5, 1.0]] * 8
    assert wall_floor_beats(rows) == 0.5 and wall_floor_beats([[0, 0, 1, 5, 1 / 64]]) is None
    priors = {**PRIORS, "walls": rows}
    learned = decode(notes, priors=priors)["obstacles"]  # an object model without the field: computed from its rows
    assert len(learned) >= 5 and learned["duration_beats"].min() >= 0.5
    stored = decode(notes, priors={**priors, "wall_min_beats": 1.0})["obstacles"]
    assert len(stored) >= 3 and set(stored["duration_beats"]) == {1.0}
    every = decode(notes, priors={**priors, "wall_min_beats": None})["obstacles"]  # no floor: sync walls drawn too
    assert (every["duration_beats"] < SYNC_WALL_BEATS).any()


def test_arcs_join_same_colour_notes_in_time_order_without_overlap():
    notes = notes_every_half_second()
    arcs = decode(notes)["arcs"]
    assert len(arcs) >= 3
    for a in arcs:
        head, tail = notes[a["head_note"]], notes[a["tail_note"]]
        assert head["color"] == tail["color"] == a["color"]
        assert head["beat"] == a["beat"] < tail["beat"] == a["tail_beat"]
        assert (a["x"], a["y"], a["tail_x"], a["tail_y"]) == (head["column"], head["row"], tail["column"], tail["row"])
        between = notes[(notes["color"] == a["color"]) & (notes["beat"] > a["beat"]) & (notes["beat"] < a["tail_beat"])]
        assert len(between) in (0, 1)  # k = 1 or 2 of the priors
        assert a["mid_anchor"] in (0, 1) and a["multiplier"] in (1.0, 0.5)
    for c in (0, 1):
        same = arcs[arcs["color"] == c]
        assert (same["beat"][1:] >= same["tail_beat"][:-1]).all()


def test_chains_start_on_a_note_and_follow_its_cut_direction():
    notes = notes_every_half_second(row=2, direction=1)  # down from the top row
    chains = decode(notes)["chains"]
    assert len(chains) >= 3
    for ch in chains:
        head = notes[ch["head_note"]]
        assert (ch["beat"], ch["x"], ch["y"], ch["color"], ch["direction"]) == (
            head["beat"], head["column"], head["row"], head["color"], head["direction"])
        assert ch["tail_x"] == ch["x"] and ch["tail_y"] < ch["y"] and 0 <= ch["tail_y"] <= 2
        later = notes[(notes["color"] == ch["color"]) & (notes["beat"] > ch["beat"])]["beat"]
        assert ch["beat"] < ch["tail_beat"] < later.min()
        assert ch["slices"] in (3, 4) and ch["squish"] > 0
    assert len(set(chains["head_note"].tolist())) == len(chains)


def test_chain_tail_cell_stays_in_the_grid():
    assert chain_tail_cell(0, 0, 1, 2) is None  # down from the bottom row
    assert chain_tail_cell(0, 0, 0, 5) == (0, 2)  # shortened to the top row
    assert chain_tail_cell(1, 1, 7, 1) == (2, 0)
    assert chain_tail_cell(1, 1, 8, 1) is None  # a dot has no direction


def test_lights_draw_types_and_values_from_the_priors_with_distinct_types_per_frame():
    lights = decode(notes_every_half_second())["light_events"]
    frames, counts = np.unique(lights["frame"], return_counts=True)
    assert len(frames) == len(ONSETS["light_event"]) and counts.max() <= 3
    rows = {tuple(r) for r in PRIORS["lights"]}
    assert all((int(t), int(v), float(f)) in rows for t, v, f in lights[["type", "value", "float_value"]].tolist())
    for f in frames:
        types = lights["type"][lights["frame"] == f]
        assert len(set(types.tolist())) == len(types)
    boosts = decode(notes_every_half_second())["boost_events"]
    assert boosts["on"].tolist() == [1, 0, 1] and boosts["frame"].tolist() == ONSETS["boost_event"]


def test_onsets_use_the_threshold_or_the_learned_rate():
    p = probs_with_peaks({"wall_start": [100, 300, 500, 700]})[:, FRAME_EVENT_CHANNELS.index("wall_start")]
    p[300] = 0.95
    assert object_onsets(p, 0.5, 0.0, 12.0, 5, 0).tolist() == [100, 300, 500, 700]
    assert object_onsets(p, 0.99, 100.0, 12.0, 5, 0).tolist() == []
    assert object_onsets(p, None, 10.0, 12.0, 5, 0).tolist() == [100, 300]  # 10 per minute, 0.2 min: the 2 highest
    assert object_onsets(p, 0.5, 0.0, 12.0, 5, 0, max_rate_per_min=15.0).tolist() == [100, 300, 500]  # capped
    out = decode(notes_every_half_second(), thresholds={})  # no validated channel: every kind at its rate
    assert len(out["boost_events"]) == round(6.0 * 12 / 60)
    per_frame = (2 * 1 + 3 * 2 + 1 * 3) / 6  # lights_per_frame [2, 3, 1]: events per lit frame
    assert events_per_onset(PRIORS) == pytest.approx(per_frame)
    assert len(np.unique(out["light_events"]["frame"])) == round(30.0 / per_frame * 12 / 60)
    capped = decode(notes_every_half_second(), priors={**PRIORS, "max_rates": {"boost_events": 5.0, "light_events":
                                                                              20.0 * per_frame}})
    assert len(capped["boost_events"]) == 1 and len(np.unique(capped["light_events"]["frame"])) == 4


def test_switches_remove_a_kind_and_the_same_seed_gives_the_same_objects():
    notes = notes_every_half_second(row=2)
    every = decode(notes, seed=3)
    no_walls = decode(notes, seed=3, kinds=("arcs", "chains", "light_events", "boost_events"))
    assert "obstacles" not in no_walls and set(no_walls) == set(GENERATED_KINDS) - {"obstacles"}
    assert decode(notes, kinds=()) == {}
    again = decode(notes, seed=3)
    assert all(np.array_equal(every[k], again[k]) for k in GENERATED_KINDS)
    other = decode(notes, seed=4)
    assert any(not np.array_equal(every[k], other[k]) for k in GENERATED_KINDS)


def test_priors_hash_is_stable_and_the_nearest_difficulty_stands_in():
    priors = ObjectPriors({"Expert": PRIORS, "Easy": {"rates": {}}}, "test")
    again = ObjectPriors.from_json(priors.to_json())
    assert again == priors and again.hash == priors.hash and len(priors.hash) == 16
    assert ObjectPriors({"Expert": {**PRIORS, "walls": []}}).hash != ObjectPriors({"Expert": PRIORS}).hash
    assert priors.for_difficulty("ExpertPlus") is PRIORS and priors.for_difficulty("Normal") == {"rates": {}}
    assert ObjectPriors().for_difficulty("Expert") is None
    with pytest.raises(ValueError, match="object_priors"):
        ObjectPriors.from_json('{"difficulties": {}}')


def test_a_kind_most_human_levels_lack_is_drawn_per_level_at_the_rate_of_those_that_have_it():
    from mapkit.preprocess.object_decoding import kind_present

    notes = notes_every_half_second(row=2)
    # no validated thresholds: the number of onsets follows the rates
    never = {**PRIORS, "presence": {k: {"share": 0.0, "rate": 0.0, "max_rate": 0.0} for k in GENERATED_KINDS}}
    always = {**PRIORS, "presence": {k: {"share": 1.0, "rate": 12.0, "max_rate": 12.0} for k in GENERATED_KINDS}}
    assert all(len(v) == 0 for v in decode(notes, priors=never, thresholds={}).values())
    walls_always = decode(notes, priors=always, thresholds={})["obstacles"]
    walls_old = decode(notes, priors=PRIORS, thresholds={})["obstacles"]  # 6 a minute, no presence: every level
    assert len(walls_always) > len(walls_old) > 0
    # a share of 0.3: about 30 % of levels (seeds, songs) have the kind, each draw repeatable
    third = {"presence": {"arcs": {"share": 0.3, "rate": 5.0, "max_rate": 9.0}}}
    draws = [kind_present(third, "arcs", seed, 180.0 + seed % 7) for seed in range(400)]
    assert 0.22 < np.mean(draws) < 0.38
    assert draws == [kind_present(third, "arcs", seed, 180.0 + seed % 7) for seed in range(400)]
    assert kind_present(PRIORS, "arcs", 0, 180.0)  # an older object model: every level has every kind
    common = {"presence": {"light_events": {"share": 0.6, "rate": 500.0, "max_rate": 900.0}}}
    assert all(kind_present(common, "light_events", seed, 180.0) for seed in range(50))  # most levels have it
