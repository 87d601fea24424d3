import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mapkit.preprocess.timebase import frame_of, frame_time, n_frames


@pytest.mark.parametrize("sr", [22050, 44100, 48000, 16000])
def test_n_frames_boundaries(sr):
    # n*100 divisible by sr: exactly on a frame boundary
    n = sr * 3
    assert n_frames(n, sr) == 301
    assert n_frames(n - 1, sr) == 300
    assert n_frames(0, sr) == 1
    # matches the centred STFT frame count when the hop is an integer
    hop = sr // 100
    if sr % 100 == 0:
        for k in (hop - 1, hop, hop + 1, 10 * hop + 7):
            assert n_frames(k, sr) == 1 + k // hop


def test_n_frames_exact_integer_arithmetic():
    # 22050 * 7 / 100 is not an integer hop: floor(n*100/sr) must not suffer float error
    for n in range(0, 5000, 7):
        assert n_frames(n, 22050) == 1 + (n * 100) // 22050
    with pytest.raises(ValueError):
        n_frames(-1, 44100)


def test_frame_of_rounds_half_away_from_zero():
    assert frame_of(0.005) == 1  # python round() would give 0 here (half to even)
    assert frame_of(0.025) == 3
    assert frame_of(-0.005) == -1
    assert frame_of(0.0049) == 0
    arr = frame_of(np.array([0.0, 0.004, 0.006, 1.234]))
    assert arr.dtype == np.int64 and arr.tolist() == [0, 0, 1, 123]
    assert frame_time(123) == pytest.approx(1.23)


def test_the_song_end_and_samples_follow_the_frame_rule():
    from mapkit.preprocess.tempo import TempoMap
    from mapkit.preprocess.timebase import last_frame_time, sample_of, song_end_beat

    assert last_frame_time(101) == 1.0 and last_frame_time(101, fps=50) == 2.0
    assert song_end_beat(TempoMap.constant(120.0), 101) == 2.0  # 1 s at 120 BPM
    assert sample_of(0.5 / 44100, 44100) == 1 and sample_of(1.5 / 44100, 44100) == 2  # half away from zero
    assert sample_of(np.array([0.0, 1.0]), 100).tolist() == [0, 100]


# --- properties (from the end-to-end reliability tests)


@settings(max_examples=200, deadline=None)
@given(st.floats(-100, 1000, allow_nan=False))
def test_frame_rule_is_round_half_away_from_zero(t):
    f = frame_of(t)
    x = t * 100
    assert abs(x - f) <= 0.5
    if abs(x - f) == 0.5:  # a tie goes away from zero
        assert abs(f) > abs(x)
    assert frame_of(frame_time(f)) == f
    assert frame_of(np.array([t]))[0] == f


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10 ** 10), st.sampled_from([8000, 11025, 16000, 22050, 32000, 44100, 48000, 96000]))
def test_frame_count_rule(n, sr):
    T = n_frames(n, sr)
    # T - 1 = floor(n * 100 / sr) exactly: (T-1)/100 s <= n/sr < T/100 s
    assert (T - 1) * sr <= n * 100 < T * sr
    assert n_frames(n + sr // math.gcd(sr, 100), sr) >= T  # monotone in n
