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
