import json
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mapkit.errors import TempoError
from mapkit.preprocess.tempo import TempoMap


# --- the worked examples of docs/design.md §1 --------------------------------------------------

def test_worked_example_tempo_event():
    # base 120, a real tempo event at beat 16 to 240: 16 * 0.5 + 4 * 0.25
    assert TempoMap.from_bpm_events(120, [(16, 240)]).seconds(20) == 9.0
    # the same with an explicit event at beat 0 (docs/formats.md §1.8 example)
    assert TempoMap.from_bpm_events(120, [(0, 120), (16, 240)]).seconds(20) == 9.0


def test_worked_example_editor_only_change_does_not_move_notes():
    # an editor-only change builds no tempo map: the base BPM times every beat
    assert TempoMap.constant(120).seconds(20) == 10.0


def test_worked_example_v4_regions():
    tm = TempoMap.from_regions(120, [(0, 441000, 0, 20), (441000, 882000, 20, 60)], 44100)
    assert tm.seconds(30) == 12.5
    assert tm.bpm_at(10) == 120 and tm.bpm_at(30) == 240


# --- constant and events --------------------------------------------------------------------------

def test_constant_map_is_linear_and_invertible():
    tm = TempoMap.constant(185)
    beats = np.array([0.0, 1.0, 5.9375, 1037.5])
    np.testing.assert_allclose(tm.seconds(beats), beats * 60 / 185)
    np.testing.assert_allclose(tm.beats(tm.seconds(beats)), beats)
    assert isinstance(tm.seconds(1), float) and tm.seconds(beats).dtype == np.float64
    assert tm.is_constant and tm.base_bpm == 185.0


def test_event_at_beat_zero_replaces_the_base_tempo():
    tm = TempoMap.from_bpm_events(120, [(0, 60)])
    assert tm.seconds(4) == 4.0
    assert tm.base_bpm == 120  # the info BPM is still reported


def test_unsorted_events_are_sorted_and_flagged():
    a = TempoMap.from_bpm_events(120, [(32, 60), (16, 240)])
    b = TempoMap.from_bpm_events(120, [(16, 240), (32, 60)])
    assert a == b
    assert a.seconds(36) == 8.0 + 4.0 + 4.0
    assert any("not sorted" in w for w in a.warnings)
    assert not b.warnings


def test_duplicate_events_last_in_file_order_wins_and_is_flagged():
    tm = TempoMap.from_bpm_events(120, [(16, 240), (16, 60)])
    assert tm.seconds(17) == 8.0 + 1.0
    assert any("several tempo events at beat 16" in w for w in tm.warnings)


def test_event_before_beat_zero_applies_from_zero():
    tm = TempoMap.from_bpm_events(120, [(-4, 60)])
    assert tm.seconds(2) == 2.0
    assert any("before beat 0" in w for w in tm.warnings)


@pytest.mark.parametrize("bpm", [0, -120, math.nan, math.inf, "fast", None, True])
def test_invalid_event_bpm_is_rejected_with_a_reason(bpm):
    with pytest.raises(TempoError, match=r"tempo event 0 \(beat 16\) BPM"):
        TempoMap.from_bpm_events(120, [(16, bpm)])


@pytest.mark.parametrize("bpm", [0, -1, math.nan, -math.inf])
def test_invalid_base_bpm_is_rejected(bpm):
    with pytest.raises(TempoError, match="BPM must be a finite number > 0"):
        TempoMap.constant(bpm)
    with pytest.raises(TempoError, match="base BPM"):
        TempoMap.from_bpm_events(bpm, [])


def test_non_finite_event_beat_is_rejected():
    with pytest.raises(TempoError, match="beat must be finite"):
        TempoMap.from_bpm_events(120, [(math.inf, 100)])


# --- regions ---------------------------------------------------------------------------------------

def test_regions_unsorted_are_sorted():
    tm = TempoMap.from_regions(120, [(441000, 882000, 20, 60), (0, 441000, 0, 20)], 44100)
    assert tm.seconds(30) == 12.5
    assert any("not sorted" in w for w in tm.warnings)


def test_after_the_last_region_the_base_tempo_holds():
    tm = TempoMap.from_regions(100, [(0, 441000, 0, 20)], 44100)  # 120 BPM region, base 100
    assert tm.seconds(20) == 10.0
    assert tm.seconds(30) == pytest.approx(10.0 + 10 * 60 / 100)


def test_a_first_region_after_beat_zero_is_reached_at_base_tempo():
    # region starts at beat 8 = 4 s at 120 BPM: beats 0..8 at base tempo end exactly there
    tm = TempoMap.from_regions(120, [(176400, 352800, 8, 16)], 44100)
    assert tm.seconds(0) == 0.0
    assert tm.seconds(8) == 4.0 and tm.seconds(12) == 6.0


def test_a_gap_between_regions_is_bridged_continuously():
    tm = TempoMap.from_regions(120, [(0, 44100, 0, 2), (88200, 132300, 6, 8)], 44100)
    assert tm.seconds(2) == 1.0 and tm.seconds(6) == 2.0
    assert tm.seconds(4) == 1.5  # the gap runs linearly: 4 beats in 1 s
    b = np.linspace(-1, 10, 200)
    assert np.all(np.diff(tm.seconds(b)) > 0)


@pytest.mark.parametrize("regions, reason", [
    ([(100, 100, 0, 4)], "needs ei > si and eb > sb"),
    ([(0, 44100, 4, 4)], "needs ei > si and eb > sb"),
    ([(0, 44100, 0, 4), (22050, 88200, 4, 8)], "overlap"),
    ([(0, 44100, 0, 4), (44100, 88200, 6, 8)], "spans samples but not beats"),
    ([(0, math.nan, 0, 4)], "non-finite"),
])
def test_invalid_regions_are_rejected_with_a_reason(regions, reason):
    with pytest.raises(TempoError, match=reason):
        TempoMap.from_regions(120, regions, 44100)


def test_regions_need_a_positive_sample_rate():
    with pytest.raises(TempoError, match="songFrequency"):
        TempoMap.from_regions(120, [(0, 1, 0, 1)], 0)


def test_no_regions_means_base_tempo():
    assert TempoMap.from_regions(150, [], 44100).seconds(150) == 60.0


# --- offset, serialisation, immutability ---------------------------------------------------------

def test_shifted_adds_the_song_offset():
    tm = TempoMap.from_bpm_events(120, [(16, 240)]).shifted(0.25)
    assert tm.seconds(20) == 9.25 and tm.seconds(0) == 0.25
    assert tm.beats(9.25) == 20.0
    assert tm.offset_s == 0.25


def test_json_round_trip():
    tm = TempoMap.from_regions(120, [(0, 441000, 0, 20), (441000, 882000, 20, 60)], 44100).shifted(-0.1)
    d = json.loads(json.dumps(tm.to_json()))
    back = TempoMap.from_json(d)
    assert back == tm and back.source == "regions"
    assert [s["bpm"] for s in d["segments"]] == [120.0, 240.0, 120.0]


def test_tempo_map_is_immutable():
    tm = TempoMap.constant(120)
    with pytest.raises(AttributeError):
        tm.foo = 1
    with pytest.raises(ValueError):
        tm._beat[0] = 5.0


def test_describe_names_the_changes():
    assert TempoMap.constant(185).describe() == "185 BPM constant"
    text = TempoMap.from_bpm_events(120, [(16, 240)]).describe()
    assert "from beat 16 (8.000 s): 240 BPM" in text


@settings(max_examples=60, deadline=None)
@given(st.floats(30, 400), st.lists(st.tuples(st.floats(0, 500), st.floats(20, 600)), max_size=6),
       st.lists(st.floats(-10, 600), min_size=1, max_size=20))
def test_events_map_is_monotone_and_invertible(base, events, beats):
    tm = TempoMap.from_bpm_events(base, events)
    b = np.sort(np.array(beats))
    t = tm.seconds(b)
    assert np.all(np.diff(t) >= 0)
    np.testing.assert_allclose(tm.beats(t), b, rtol=1e-9, atol=1e-6)
    assert tm.seconds(0) == 0.0


# --- continuity ------------------------------------------------------------------------------------

def test_a_discontinuous_segment_list_is_rejected_with_the_numbers():
    # 120 BPM from 0 s reaches beat 8 at 4 s, not 2 s: seconds(7.9) = 3.95 > seconds(8) = 2.0 otherwise
    with pytest.raises(TempoError, match=r"not continuous: segment 1 starts at beat 8 on 2 s.*reaches that beat "
                                         r"at 4 s"):
        TempoMap(120, [(0, 0, 120), (8, 2, 150)])


def test_a_discontinuous_stored_tempo_map_is_rejected_by_from_json():
    d = TempoMap.from_bpm_events(120, [(16, 240)]).to_json()
    d["segments"][1]["second"] += 0.5
    with pytest.raises(TempoError, match="segment 1 starts at beat 16 on 8.5 s"):
        TempoMap.from_json(d)


def test_continuity_tolerance_accepts_float_rounding_only():
    exact = 4.0
    TempoMap(120, [(0, 0, 120), (8, exact * (1 + 1e-12), 150)])  # a few roundings: accepted
    with pytest.raises(TempoError, match="not continuous"):
        TempoMap(120, [(0, 0, 120), (8, exact + 1e-6, 150)])  # one microsecond: a jump


@settings(max_examples=60, deadline=None)
@given(st.floats(30, 400),
       st.lists(st.tuples(st.integers(1, 10 ** 6), st.integers(1, 10 ** 6), st.floats(0.01, 50),
                          st.one_of(st.just(0.0), st.floats(0.01, 20))), max_size=5),
       st.sampled_from([22050, 44100, 48000]), st.floats(-2, 2))
def test_every_regions_map_is_continuous_and_survives_json_and_shift(base, steps, sr, offset):
    # regions built back to back or with gaps spanning both samples and beats (valid by construction)
    regions, si, sb = [], 0, 0.0
    for length, gap_samples, beats, gap_beats in steps:
        if gap_beats > 0:
            si, sb = si + gap_samples, sb + gap_beats
        regions.append((si, si + length, sb, sb + beats))
        si, sb = si + length, sb + beats
    tm = TempoMap.from_regions(base, regions, sr)
    back = TempoMap.from_json(json.loads(json.dumps(tm.shifted(offset).to_json())))
    b = np.linspace(-1, sb + 10, 400)
    assert np.all(np.diff(back.seconds(b)) > 0)


# --- properties (from the end-to-end reliability tests)


@settings(max_examples=80, deadline=None)
@given(st.floats(30, 400), st.lists(st.tuples(st.floats(0, 500), st.floats(20, 600)), max_size=6),
       st.lists(st.floats(0, 900), min_size=1, max_size=20))
def test_tempo_seconds_of_beats_of_t_is_t(base, events, times):
    tm = TempoMap.from_bpm_events(base, events)
    t = np.sort(np.array(times))
    b = tm.beats(t)
    assert np.all(np.diff(b) >= 0)  # beats(t) monotone
    np.testing.assert_allclose(tm.seconds(b), t, rtol=1e-9, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(st.floats(60, 240), st.lists(st.tuples(st.integers(1, 88200), st.floats(0.25, 16)), min_size=1,
                                    max_size=5),
       st.lists(st.floats(0, 30), min_size=1, max_size=20))
def test_regions_map_is_monotone_and_invertible(base, spans, times):
    """v4 regions laid end to end (sample spans, beat spans) give a strictly increasing invertible map."""
    regions, si, sb = [], 0, 0.0
    for samples, beats in spans:
        regions.append((si, si + samples, sb, sb + beats))
        si, sb = si + samples, sb + beats
    tm = TempoMap.from_regions(base, regions, 44100)
    t = np.sort(np.array(times))
    b = tm.beats(t)
    assert np.all(np.diff(b) >= 0)
    np.testing.assert_allclose(tm.seconds(b), t, rtol=1e-9, atol=1e-9)
    for r in regions:  # each region's end sample is reached at its end beat
        assert tm.seconds(r[3]) == pytest.approx(r[1] / 44100, abs=1e-9)
