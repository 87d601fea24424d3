"""Alignment of notes with audio onsets: rendered hits, known offsets, random and partial maps."""

import numpy as np
import pytest

from mapkit.preprocess.alignment import PEAK_HALF_WIDTH, align_notes, normalised_onset, onset_strength
from mapkit.preprocess.features import placement_features
from mapkit.preprocess.timebase import FPS, frame_of, n_frames
from mapkit.settings import FeatureSettings

SR = 44100
DURATION_S = 24.0


def render_hits(hit_times, duration_s=DURATION_S, seed=0):
    """A quiet noise floor with a short decaying noise burst starting exactly at each hit time."""
    rng = np.random.default_rng(seed)
    y = 0.003 * rng.standard_normal(int(duration_s * SR)).astype(np.float32)
    burst_n = int(0.08 * SR)
    envelope = np.exp(-np.arange(burst_n) / (0.015 * SR)).astype(np.float32)
    for t in hit_times:
        start = int(round(t * SR))
        stop = min(start + burst_n, len(y))
        y[start:stop] += 0.5 * envelope[: stop - start] * rng.standard_normal(stop - start).astype(np.float32)
    return y


@pytest.fixture(scope="module")
def song():
    """Irregular hits (no tempo, so no second peak one beat away), their audio's onset and hit frames."""
    rng = np.random.default_rng(1)
    gaps = rng.uniform(0.12, 0.5, size=200)
    times = 1.5 + np.cumsum(gaps)
    times = times[times < DURATION_S - 1.5]
    y = render_hits(times)
    onset = onset_strength(placement_features(y, SR))
    return onset, frame_of(times)


def test_onset_strength_has_one_value_per_song_frame_and_peaks_on_the_hits(song):
    onset, hits = song
    assert onset.shape == (n_frames(int(DURATION_S * SR), SR),)
    assert onset.dtype == np.float32 and (onset >= 0).all()
    # the strongest onset frames are the hit frames (within one frame), not the noise in between
    top = np.argsort(onset)[-len(hits) // 2:]
    distance = np.abs(top[:, None] - hits[None, :]).min(axis=1)
    assert (distance <= 1).mean() > 0.95


def test_onset_strength_reads_the_pad_width_it_is_given():
    pad = FeatureSettings().placement_pad
    x = np.full((2 * pad + 5, 3, 80), -23.0, dtype=np.float16)
    x[pad + 2:pad + 5] = 0.0
    assert int(onset_strength(x).argmax()) == 2
    assert onset_strength(x, pad=pad + 1).shape == (3,)
    with pytest.raises(ValueError, match="rows"):
        onset_strength(x[:2 * pad - 1])


@pytest.mark.parametrize("offset", [0, 5, -5, 30, -30])
def test_a_known_offset_is_found_with_a_clear_peak(song, offset):
    onset, hits = song
    a = align_notes(hits + offset, onset)
    assert abs(a.lag_frames - offset) <= 1
    assert a.strength > 8
    assert a.coverage > 0.8
    assert a.correlation.shape == (201,) and a.lags[0] == -100
    assert a.lags[int(np.nanargmax(a.correlation))] == a.lag_frames


@pytest.mark.parametrize("n_notes", [20, 60, 300])
def test_random_notes_have_no_clear_peak_however_many(song, n_notes):
    onset, hits = song
    strengths = []
    for seed in range(40):
        rng = np.random.default_rng(100 + seed)
        notes = np.sort(rng.choice(np.arange(len(onset)), size=n_notes, replace=False))
        strengths.append(align_notes(notes, onset).strength)
    assert max(strengths) < 4.5, strengths
    # ties go to the lag nearest 0, not to the highest of ~200 noisy lags: random notes read weaker still
    assert 0.5 < np.median(strengths) < 2.5


def test_twenty_aligned_notes_still_peak_clearly(song):
    onset, hits = song
    assert align_notes(hits[:20], onset).strength > 8


def test_normalised_onset_is_standard_normal_and_shares_ranks_of_ties():
    rng = np.random.default_rng(0)
    z = normalised_onset(rng.exponential(size=5000) ** 3)
    assert abs(z.mean()) < 1e-9 and z.std() == pytest.approx(1.0, abs=0.01)
    assert (normalised_onset(np.zeros(50)) == 0).all()


def test_a_partial_map_covers_its_share_of_the_song(song):
    onset, hits = song
    T = len(onset)
    part = hits[hits < 0.2 * T]
    a = align_notes(part, onset)
    assert abs(a.lag_frames) <= 1
    assert a.coverage == pytest.approx((part[-1] - part[0] + 1) / T)
    assert a.coverage < 0.2


def test_chords_count_once_and_notes_outside_the_song_are_ignored():
    onset = np.zeros(500, dtype=np.float32)
    onset[[100, 220, 300, 410]] = 1.0
    a = align_notes(np.array([100, 100, 100, 220, 300, 410, -3, 900]), onset, max_lag=20)
    assert a.n_note_frames == 4 and a.lag_frames == 0
    assert a.coverage == pytest.approx((410 - 100 + 1) / 500)


def test_no_notes_gives_an_empty_alignment():
    a = align_notes(np.array([], dtype=np.int64), np.ones(300, dtype=np.float32), max_lag=10)
    assert (a.lag_frames, a.n_note_frames) == (0, 0) and np.isnan(a.strength) and np.isnan(a.coverage)
    assert np.isnan(a.peak_correlation)
    assert np.isnan(a.correlation).all()
    with pytest.raises(ValueError):
        align_notes(np.array([1]), np.ones(10), max_lag=-1)


def test_strength_is_a_robust_z_score_against_the_lags_away_from_the_peak():
    rng = np.random.default_rng(3)
    onset = rng.random(4000).astype(np.float32)
    notes = np.sort(rng.choice(4000, 300, replace=False))
    onset[notes] += 3.0
    a = align_notes(notes, onset, max_lag=50)
    c, k = a.correlation, a.lag_frames + a.max_lag
    others = np.delete(c, np.arange(k - PEAK_HALF_WIDTH, k + PEAK_HALF_WIDTH + 1))
    expected = (c[k] - np.median(others)) / (1.4826 * np.median(np.abs(others - np.median(others))))
    assert a.strength == pytest.approx(expected)
    z = normalised_onset(onset)
    assert c[k] == pytest.approx(z[notes].mean())


def test_local_mean_window_is_one_second():
    from mapkit.preprocess.alignment import LOCAL_MEAN_FRAMES

    assert LOCAL_MEAN_FRAMES == FPS + 1


@pytest.fixture(scope="module")
def beat_song():
    """Hits on 70 % of the half-beats at 100 BPM (30 frames): lags a beat apart nearly tie."""
    grid = np.arange(1.0, DURATION_S - 1.0, 0.3)
    times = grid[np.random.default_rng(7).random(len(grid)) < 0.7]
    onset = onset_strength(placement_features(render_hits(times, seed=5), SR))
    return onset, frame_of(times)


def test_in_periodic_music_near_ties_go_to_the_lag_nearest_zero(beat_song):
    onset, beats = beat_song
    a = align_notes(beats, onset)
    assert abs(a.lag_frames) <= 1
    # lower than for irregular hits (the lags a beat away correlate too), still above random notes
    assert a.strength > 4.2
    # a one-beat offset cannot be told from an aligned map: documented, reads as aligned
    assert abs(align_notes(beats + 60, onset).lag_frames) <= 1


def test_in_periodic_music_an_offset_off_the_beat_grid_is_found(beat_song):
    onset, beats = beat_song
    for offset in (7, -12):
        a = align_notes(beats + offset, onset)
        assert abs(a.lag_frames - offset) <= 1, (offset, a.lag_frames)
