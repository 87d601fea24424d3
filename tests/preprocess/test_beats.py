"""Beats from audio: the tempo of a click track, snapping that keeps every note on its frame."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mapkit.preprocess.beats import estimate_tempo, onset_envelope, short_beats, snap_beats
from mapkit.preprocess.features import placement_features
from mapkit.preprocess.tempo import TempoMap
from mapkit.preprocess.timebase import frame_of

SR = 22050


def click_track(bpm: float, seconds: float, offset: float = 0.237, seed: int = 0) -> np.ndarray:
    """Decaying noise bursts on every beat (downbeats louder) over a faint noise floor, mono float32."""
    rng = np.random.default_rng(seed)
    y = 0.002 * rng.standard_normal(int(seconds * SR)).astype(np.float32)
    n = int(0.03 * SR)
    burst = rng.standard_normal(n) * np.exp(-np.arange(n) / (0.005 * SR))
    for k, t in enumerate(np.arange(offset, seconds - 0.1, 60.0 / bpm)):
        i = int(t * SR)
        y[i: i + n] += (1.0 if k % 4 == 0 else 0.6) * burst[: len(y) - i]
    return np.clip(y, -1, 1).astype(np.float32)




def test_snap_moves_beats_onto_the_grid_only_within_their_own_frame():
    bpm = 120.0  # 1/16 beat = 31.25 ms, frames 10 ms apart
    frames = np.array([50, 51, 52, 53, 56])
    exact = TempoMap.constant(bpm).beats(frames / 100.0)  # 1.0, 1.02, 1.04, 1.06, 1.12
    beats, snapped = snap_beats(exact, bpm)
    # frame 51 is 10 ms from beat 1.0 (within the tolerance) but that time rounds to frame 50: it stays
    assert snapped.tolist() == [True, False, False, True, True]
    assert beats.tolist() == [1.0, 1.02, 1.04, 1.0625, 1.125]
    assert snap_beats(exact, bpm, tolerance_s=0.016)[1].tolist() == [True, False, False, True, True]
    assert snap_beats(exact, bpm, tolerance_s=0.002)[1].tolist() == [True, False, False, True, False]
    assert snap_beats(exact, bpm, tolerance_s=0.001)[1].tolist() == [True, False, False, False, False]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 30_000), min_size=1, max_size=60, unique=True),
       st.floats(60.0, 240.0, allow_nan=False), st.sampled_from([4, 8, 16]))
def test_snapped_notes_keep_their_stage1_frames(frames, bpm, divisions):
    frames = np.sort(np.array(frames))
    tempo = TempoMap.constant(bpm)
    exact = tempo.beats(frames / 100.0)
    beats, snapped = snap_beats(exact, bpm, divisions=divisions)
    assert np.array_equal(frame_of(tempo.seconds(beats)), frames)
    assert np.all(np.diff(beats) > 0)
    assert np.all(np.abs(tempo.seconds(beats) - tempo.seconds(exact)) <= 0.010 + 1e-12)
    on_grid = np.floor(beats * divisions + 0.5) / divisions == beats
    assert np.all(on_grid[snapped]) and np.array_equal(beats[~snapped], exact[~snapped])


def test_snap_never_merges_or_reorders_notes():
    bpm = 60.0  # 1/16 beat = 62.5 ms: three notes on frame 100 all lie within 10 ms of beat 1.0
    exact = np.array([0.998, 1.001, 1.003])
    beats, snapped = snap_beats(exact, bpm, tolerance_s=0.010)
    assert np.all(np.diff(beats) > 0)
    assert snapped.tolist() == [True, False, False]  # the others would collide with beat 1.0
    # the next note's exact beat bounds a snap from above, the end of the song too
    beats, snapped = snap_beats(np.array([0.99, 0.999]), bpm, tolerance_s=0.010)
    assert snapped.tolist() == [False, True] and np.all(np.diff(beats) > 0)
    assert snap_beats(np.array([9.998]), bpm, end_beat=10.0)[1].tolist() == [False]
    assert snap_beats(np.array([9.998]), bpm)[1].tolist() == [True]
    assert snap_beats(np.array([]), bpm)[0].shape == (0,)
    with pytest.raises(ValueError):
        snap_beats(np.array([1.0, 1.0]), bpm)


@pytest.mark.parametrize("bpm", [87.5, 100.0, 128.37, 141.23])
def test_tempo_of_a_click_track(bpm):
    y = click_track(bpm, 10.0)
    x = placement_features(y, SR)[7:-7, 1].astype(np.float16)
    assert estimate_tempo(onset_envelope(x)) == pytest.approx(bpm, abs=0.05)


def test_tempo_of_too_little_audio_is_the_default():
    assert estimate_tempo(np.zeros(50, np.float32)) == 140.0  # the centre of the prior
    assert estimate_tempo(np.zeros(5000, np.float32), default=99.0) == 99.0


def test_short_beats_keep_every_note_on_its_frame():
    beats = np.array([3.8002399999999996, 0.5, 1.0000000001])
    out = short_beats(beats, 120.0)
    assert out.tolist() == [3.8, 0.5, 1.0]
    seconds = TempoMap.constant(120.0).seconds
    assert np.array_equal(frame_of(seconds(out)), frame_of(seconds(beats)))


@pytest.mark.parametrize("bpm, offset", [(100.0, 0.237), (128.37, 0.05), (141.23, 0.4)])
def test_beat_offset_finds_the_first_beat_of_a_click_track(bpm, offset):
    from mapkit.preprocess.beats import beat_offset

    env = onset_envelope(placement_features(click_track(bpm, 10.0, offset), SR)[7:-7, 1].astype(np.float16))
    period = 6000.0 / bpm
    found = beat_offset(env, bpm)
    assert 0.0 <= found < period
    # frames of 10 ms; the 2048-point window centred on a frame hears a click up to 2 frames before it
    assert -2.5 <= found - offset * 100.0 <= 1.0


def test_beat_inputs_are_the_phase_of_each_period():
    from mapkit.preprocess.beats import beat_inputs

    x = beat_inputs(200, 120.0, 10.0, (0.5, 1.0, 2.0))  # a beat every 50 frames from frame 10
    assert x.shape == (200, 6) and x.dtype == np.float32
    beats = (np.arange(200) - 10.0) / 50.0
    for k, period in enumerate((0.5, 1.0, 2.0)):
        assert np.allclose(x[:, 2 * k], np.sin(2 * np.pi * beats / period), atol=1e-6)
        assert np.allclose(x[:, 2 * k + 1], np.cos(2 * np.pi * beats / period), atol=1e-6)
    assert np.allclose(x[[10, 60, 110, 160], 3], 1.0)  # cos of the beat phase is 1 on every beat


def test_song_beat_inputs_peak_on_the_clicks():
    from mapkit.preprocess.beats import song_beat_inputs

    env = onset_envelope(placement_features(click_track(120.0, 10.0, 0.3), SR)[7:-7, 1].astype(np.float16))
    x = song_beat_inputs(env)
    clicks = frame_of(np.arange(0.3, 9.9, 0.5))
    assert np.all(x[clicks, 3] > 0.95)  # beat-period cosine near 1 on every click
    assert song_beat_inputs(env, ()).shape == (len(env), 0)


# --- the grid's whole beats on the music's beats -----------------------------------------------------


def test_grid_lead_in_puts_beat_1_on_the_music_and_keeps_the_lead_in_tempo_sane():
    from mapkit.preprocess.beats import grid_lead_in

    for first in (0.04, 0.1, 0.2, 0.26, 0.45):  # 120 BPM: a period of 0.5 s
        m = grid_lead_in(TempoMap.constant(120.0), [first + 3.0])  # any music beat gives the phase
        (b0, s0, lead), (b1, s1, bpm) = m.segments
        assert (b0, s0, b1, bpm, m.base_bpm) == (0.0, 0.0, 1.0, 120.0, 120.0)
        assert s1 == pytest.approx(first if first >= 0.25 else first + 0.5)
        assert 80.0 - 1e-9 <= lead <= 240.0 + 1e-9  # 2/3 to 2 times the song's tempo
        music = first + 0.5 * np.arange(1, 40)
        assert np.allclose(m.beats(music), np.round(m.beats(music)))
    assert grid_lead_in(TempoMap.constant(120.0), [0.03]).segments == [(0.0, 0.0, 120.0)]  # under 1/16 beat
    assert grid_lead_in(TempoMap.constant(120.0), [0.47]).segments == [(0.0, 0.0, 120.0)]


def test_grid_lead_in_bridges_a_tempo_change_so_the_next_segment_is_on_whole_beats_too():
    from mapkit.preprocess.beats import grid_lead_in

    tempo = TempoMap.from_bpm_events(120.0, [(40, 150.0)])  # the change at 20 s
    m = grid_lead_in(tempo, [0.3, 20.1])  # the music: 120 BPM beats at 0.3 + k/2, then 150 BPM at 20.1 + k 0.4
    (_, _, lead), (_, _, m1), (b2, s2, bridge), (b3, s3, m3) = m.segments
    assert (m1, m3, b3) == (120.0, 150.0, b2 + 1) and b2 == round(b2)
    assert 0.25 - 1e-9 <= s3 - s2 < 0.25 + 0.4  # between half the old period and that plus a new one
    before, after = 0.3 + 0.5 * np.arange(1, 38), 20.1 + 0.4 * np.arange(2, 50)
    for music in (before[before < s2 + 1e-9], after[after >= s3 - 1e-9]):
        assert np.allclose(m.beats(music), np.round(m.beats(music)), atol=1e-9)


def test_segment_beats_reads_each_segments_phase_on_its_own_stretch():
    from mapkit.preprocess.beats import segment_beats

    env = np.zeros(4000, np.float32)
    env[30:2000:50] = 1.0  # 120 BPM from 0.3 s
    env[2010::40] = 1.0  # 150 BPM from 20.1 s
    got = segment_beats(env, TempoMap.from_bpm_events(120.0, [(40, 150.0)]))
    assert got[0] == pytest.approx(0.3) and (got[1] - 20.1) / 0.4 == pytest.approx(round((got[1] - 20.1) / 0.4))
