import math

import numpy as np
import pytest

from mapkit.preprocess.difficulties import DIFFICULTIES
from mapkit.preprocess.levels import read_level
from mapkit.preprocess.notes import BLUE, BOMB, RED, sort_notes
from mapkit.preprocess.quality import (
    METRIC_NAMES, VISION_WINDOWS, colliding_pairs, crossover_notes, density_metrics, level_metrics,
    notes_per_beat_histogram, object_metrics, timing_metrics, variety_metrics, vision_blocked,
)
from tests.preprocess.notes_helper import make_notes

FIXTURES = "tests/fixtures/maps"
DOWN, UP, DOT = 1, 0, 8


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_vision_block_at_each_difficulty_window_edge(difficulty):
    lo, hi = VISION_WINDOWS[difficulty]
    for dt, blocked in ((lo, True), (hi, True), (lo - 0.005, False), (hi + 0.005, False)):
        notes = make_notes([(1.0, 1, 1, RED, DOWN), (1.0 + dt, 0, 0, BLUE, DOWN)])
        assert vision_blocked(notes, difficulty).tolist() == ([1] if blocked else []), (dt, blocked)
    # a centre note on the right hides columns 2-3 only
    notes = make_notes([(1.0, 2, 1, RED, DOWN), (1.0 + lo, 0, 0, BLUE, DOWN), (1.0 + hi, 3, 2, BLUE, UP)])
    assert notes["column"][vision_blocked(notes, difficulty)].tolist() == [3]


def test_notes_shifted_40ms_match_at_50ms_but_not_at_20ms():
    reference = make_notes([(1.0 + 0.5 * i, i % 4, 0, i % 2, DOWN) for i in range(20)])
    shifted = reference.copy()
    shifted["time_s"] += 0.040
    m = timing_metrics(shifted, reference)
    assert (m["onset_f1_20ms"], m["onset_precision_20ms"], m["onset_recall_20ms"]) == (0.0, 0.0, 0.0)
    assert (m["onset_f1_50ms"], m["onset_precision_50ms"], m["onset_recall_50ms"]) == (1.0, 1.0, 1.0)
    half = timing_metrics(reference[::2], reference)
    assert half["onset_precision_20ms"] == 1.0 and half["onset_recall_20ms"] == 0.5


def test_a_single_repeated_state_has_zero_entropy():
    notes = make_notes([(1.0 + 0.5 * i, 0, 0, RED, DOWN) for i in range(10)])
    v = variety_metrics(notes)
    assert v["state_entropy_bits"] == 0.0 and v["distinct_states"] == 1 and v["top_state_share"] == 1.0
    assert v["ngram4_repetition"] == pytest.approx(1 - 1 / 7)
    assert v["red_share"] == 1.0 and v["dot_share"] == 0.0
    two = make_notes([(1.0 + 0.5 * i, 0, 0, RED, DOWN if i % 2 else UP) for i in range(8)])
    assert variety_metrics(two)["state_entropy_bits"] == pytest.approx(1.0)


def test_collision_pairs():
    # red cuts down from (1, 1) through the blue dot below it on the same frame
    notes = make_notes([(1.0, 1, 1, RED, DOWN), (1.0, 1, 0, BLUE, DOT)])
    assert colliding_pairs(notes) == [(0, 1)]
    # two notes in one cell on one frame (4 ms apart: the same frame)
    notes = make_notes([(2.0, 3, 2, BLUE, DOWN), (2.004, 3, 2, RED, UP)])
    assert len(colliding_pairs(notes)) == 1
    # side by side, both cutting down: no collision; a bomb in the cut path is one
    notes = make_notes([(1.0, 1, 1, RED, DOWN), (1.0, 2, 1, BLUE, DOWN)])
    assert colliding_pairs(notes) == []
    notes = make_notes([(1.0, 1, 1, RED, DOWN), (1.0, 1, 2, BOMB, 0)])
    assert len(colliding_pairs(notes)) == 1
    # a same-hand note in the path is a slider/stack, not a collision; another frame never collides
    notes = make_notes([(1.0, 1, 1, RED, DOWN), (1.0, 1, 0, RED, DOWN), (1.5, 1, 0, BLUE, DOWN)])
    assert colliding_pairs(notes) == []


def test_crossovers_and_density():
    notes = make_notes([(1.0, 3, 0, RED, DOWN), (1.05, 0, 0, BLUE, DOWN), (3.0, 0, 0, RED, DOWN),
                        (3.0, 3, 0, BLUE, DOWN)])
    assert crossover_notes(notes).tolist() == [0, 1]
    d = density_metrics(notes, duration_s=8.0)
    assert d["notes"] == 4 and d["bombs"] == 0 and d["nps_mean"] == 0.5
    assert d["nps_peak"] == 1.5  # [1.05, 3.05) holds the notes at 1.05, 3.0 and 3.0
    assert d["empty_share"] == 0.5  # windows [0,2) [2,4) hold notes, [4,6) [6,8) do not
    hist = notes_per_beat_histogram(notes)  # beats 2.0, 2.1, 6, 6 at 120 BPM -> beats 2..6
    assert hist == {"0": 0.6, "1": 0.0, "2": 0.4, "3": 0.0, "4+": 0.0}


def test_objects_per_minute():
    assert object_metrics({"obstacles": 30, "arcs": 3, "chains": 0, "light_events": 250}, 120.0) == {
        "walls_per_min": 15.0, "arcs_per_min": 1.5, "chains_per_min": 0.0, "lights_per_min": 125.0}
    assert math.isnan(object_metrics(None, 120.0)["walls_per_min"])
    assert math.isnan(object_metrics({"obstacles": 30}, 120.0)["lights_per_min"])  # a count not known


def test_difficulty_estimate_grows_with_speed():
    slow = make_notes([(1.0 + 0.5 * i, 1 + i % 2, 0, i % 2, DOWN if (i // 2) % 2 == 0 else UP) for i in range(40)])
    fast = slow.copy()
    fast["time_s"] /= 2
    a = level_metrics(slow, "Expert", 30.0).values
    b = level_metrics(fast, "Expert", 30.0).values
    assert a["parity_errors_left"] == a["parity_errors_right"] == 0
    assert b["difficulty_speed"] == pytest.approx(2 * a["difficulty_speed"])
    assert b["difficulty_estimate"] > a["difficulty_estimate"] > 0
    assert b["ebpm_median_left"] == pytest.approx(2 * a["ebpm_median_left"])


def test_real_fixture_levels_give_plausible_values():
    for name in ("JOURNEY", "werewolf howls"):
        level = read_level(f"{FIXTURES}/{name}")
        previous_nps = 0.0
        for d in level.difficulties:
            duration = float(d.notes["time_s"].max()) + 1.0
            m = level_metrics(d.notes, d.difficulty, duration, d.counts).values
            assert set(m) <= set(METRIC_NAMES)
            assert all(not math.isnan(m[k]) for k in ("nps_mean", "state_entropy_bits", "difficulty_estimate"))
            assert m["nps_mean"] > previous_nps  # harder difficulties are denser
            previous_nps = m["nps_mean"]
            assert 0.4 < m["red_share"] < 0.6 and 1 <= m["nps_mean"] <= 10 and m["nps_peak"] >= m["nps_mean"]
            assert m["parity_error_share"] < 0.15 and m["collisions"] == 0
            assert 3 < m["state_entropy_bits"] < 10 and 0 < m["top_state_share"] < 0.2
            assert 30 < m["ebpm_median_left"] < 200 and m["walls_per_min"] > 0
            if d.difficulty in ("Expert", "ExpertPlus"):
                assert m["parity_error_share"] < 0.02 and m["difficulty_estimate"] > 8


def test_a_mirrored_level_gives_mirrored_metrics():
    """Swap the hands, mirror columns and directions: per-hand metrics swap, the others stay (real levels)."""
    mirror = np.array([0, 1, 3, 2, 5, 4, 7, 6, 8])
    swap = {"left": "right", "right": "left"}
    for name in ("JOURNEY", "werewolf howls"):
        for d in read_level(f"{FIXTURES}/{name}").difficulties:
            m = d.notes.copy()
            m["column"] = 3 - m["column"]
            m["direction"] = mirror[m["direction"]]
            m["color"] = np.where(m["color"] == BOMB, BOMB, 1 - m["color"])
            a = level_metrics(d.notes, d.difficulty, 300.0).values
            b = level_metrics(sort_notes(m), d.difficulty, 300.0).values
            for k, v in a.items():
                side = k.rsplit("_", 1)[-1]
                other = k[: -len(side)] + swap[side] if side in swap else k
                want = 1 - v if k == "red_share" else v
                assert np.isclose(b[other], want, equal_nan=True), (name, d.difficulty, k)
