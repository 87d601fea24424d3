"""A song's tempo map from its audio: changes only where the tempo really changes, snapping on the map's grid."""

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mapkit.preprocess.beats import (estimate_tempo, estimate_tempo_map, local_tempi, onset_envelope, short_beats,
                                     snap_beats, tempo_changes, tempo_support)
from mapkit.preprocess.features import placement_features
from mapkit.preprocess.tempo import TempoMap
from mapkit.preprocess.timebase import frame_of
from mapkit.writers.beatmap import bpm_events

SR = 22050
FOF = Path("/usr/share/games/fretsonfire/data/songs")


def clicks_at(times, seconds: float, seed: int = 0) -> np.ndarray:
    """Decaying noise bursts at ``times`` (every 4th louder) over a faint noise floor, mono float32."""
    rng = np.random.default_rng(seed)
    y = 0.002 * rng.standard_normal(int(seconds * SR)).astype(np.float32)
    n = int(0.03 * SR)
    burst = rng.standard_normal(n) * np.exp(-np.arange(n) / (0.005 * SR))
    for k, t in enumerate(times):
        i = int(t * SR)
        if i < len(y):
            y[i: i + n] += (1.0 if k % 4 == 0 else 0.6) * burst[: len(y) - i]
    return np.clip(y, -1, 1).astype(np.float32)


def envelope_of(y: np.ndarray, sr: int = SR) -> np.ndarray:
    """The onset envelope generate uses: the 2048-point column of the placement features."""
    return onset_envelope(placement_features(y, sr)[7:-7, 1].astype(np.float16))


def test_a_click_track_with_a_tempo_change_gets_one_change_at_the_right_place():
    truth = TempoMap.from_bpm_events(120, [(48, 150)])  # 120 BPM for 24 s, then 150 BPM
    beats = np.arange(0, truth.beats(48.0))
    tempo = estimate_tempo_map(envelope_of(clicks_at(truth.seconds(beats) + 0.237, 48.0)))
    (b0, s0, m0), (b1, s1, m1) = tempo.segments  # exactly one change
    assert (b0, s0) == (0.0, 0.0) and tempo.base_bpm == m0
    assert m0 == pytest.approx(120, abs=0.1) and m1 == pytest.approx(150, abs=0.1)
    assert b1 == round(b1) and abs(s1 - 24.0) <= 1.5  # on a whole beat, near the real change


def test_a_steady_click_track_with_fills_keeps_one_tempo():
    period = 60 / 128.0
    times = list(np.arange(0.1, 40.0, period))
    times += list(np.arange(20.0, 22.0, period / 3))  # a 2 s triplet fill: no tempo change
    tempo = estimate_tempo_map(envelope_of(clicks_at(sorted(times), 40.0)))
    assert tempo.is_constant and tempo.base_bpm == pytest.approx(128, abs=0.05)


def test_short_or_silent_audio_is_one_default_or_global_tempo():
    assert estimate_tempo_map(np.zeros(300, np.float32)) == TempoMap.constant(140.0)
    assert estimate_tempo_map(np.zeros(3000, np.float32), bpm=97.0) == TempoMap.constant(97.0)


def test_hysteresis_needs_a_long_consistent_run():
    centres = np.arange(40, dtype=float)
    steady = np.full(40, 120.0)
    spikes = steady.copy()
    spikes[10:18] = 150.0  # 8 s of another tempo: shorter than the minimum segment
    assert tempo_changes(centres, spikes, 120.0, min_segment_s=12) == []
    long = steady.copy()
    long[20:] = 150.0
    ((t, m),) = tempo_changes(centres, long, 120.0, min_segment_s=12)
    assert m == pytest.approx(150.0) and 18 <= t <= 21
    wobble = 120.0 * (1 + 0.02 * np.sin(centres))  # +-2 %: under the 3 % threshold
    assert tempo_changes(centres, wobble, 120.0) == []


def test_local_tempi_stay_in_the_band_and_support_prefers_the_real_tempo():
    y = clicks_at(np.arange(0.1, 30.0, 0.5), 30.0)  # 120 BPM
    env = envelope_of(y)
    centres, tempi = local_tempi(env, 118.0)
    assert len(centres) == 23 and np.all(np.abs(tempi - 120.0) <= 0.5)
    assert np.all((tempi >= 118.0 / 1.3) & (tempi <= 118.0 * 1.3))
    assert tempo_support(env, 120.0, 150.0) > 1.3 > tempo_support(env, 150.0, 120.0)
    assert tempo_support(np.zeros(100), 120.0, 150.0) == 0.0


@pytest.mark.skipif(not FOF.is_dir(), reason="Debian's fretsonfire-songs-* not installed (scripts/setup.sh)")
def test_fretsonfire_songs_steady_at_their_midi_tempo_and_a_splice_changes_once():
    from mapkit.preprocess.audio import decode_audio

    def excerpt(path, start, seconds):
        y, sr = decode_audio(path)
        y = y if y.ndim == 1 else y.mean(axis=1)
        return y[int(start * sr): int((start + seconds) * sr)], sr

    war, sr = excerpt(FOF / "sectoid/War of freedom/song.ogg", 30, 40)  # notes.mid: 140 BPM
    chaos, sr2 = excerpt(FOF / "muldjord/chaos_god/song.ogg", 30, 40)  # notes.mid: 170 BPM
    assert sr == sr2
    steady = estimate_tempo_map(envelope_of(war, sr))
    assert steady.is_constant and steady.base_bpm == pytest.approx(140, abs=0.5)
    spliced = estimate_tempo_map(envelope_of(np.concatenate([war, chaos]), sr))
    (_, _, m0), (_, s1, m1) = spliced.segments
    assert m0 == pytest.approx(140, abs=0.5) and m1 == pytest.approx(170, abs=0.5) and abs(s1 - 40) <= 2


def test_the_prior_prefers_the_tempo_range_of_human_maps():
    # eighth notes as loud as the beat: 83 and 166 BPM fit equally; the prior picks 166
    y = clicks_at(np.arange(0.1, 30.0, 60 / 166.0), 30.0)
    assert estimate_tempo(envelope_of(y)) == pytest.approx(166, abs=0.05)
    # a sparse 87.5 BPM pulse stays at 87.5 (its double has half the comb)
    y = clicks_at(np.arange(0.1, 30.0, 60 / 87.5), 30.0)
    assert estimate_tempo(envelope_of(y)) == pytest.approx(87.5, abs=0.05)


TEMPI = st.lists(st.tuples(st.integers(1, 400), st.floats(60.0, 240.0)), min_size=0, max_size=4)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 30_000), min_size=1, max_size=60, unique=True), st.floats(60.0, 240.0), TEMPI)
def test_snapping_on_a_tempo_map_keeps_every_note_on_its_frame(frames, base, events):
    frames = np.sort(np.array(frames))
    tempo = TempoMap.from_bpm_events(base, [(float(b), m) for b, m in events])
    exact = tempo.beats(frames / 100.0)
    beats, snapped = snap_beats(exact, tempo)
    assert np.array_equal(frame_of(tempo.seconds(beats)), frames)
    assert np.all(np.diff(beats) > 0)
    assert np.all(np.abs(tempo.seconds(beats) - tempo.seconds(exact)) <= 0.010 + 1e-12)
    assert np.all(beats[snapped] * 16 == np.round(beats[snapped] * 16))
    short = short_beats(beats, tempo)
    assert np.array_equal(frame_of(tempo.seconds(short)), frames)


@settings(max_examples=100, deadline=None)
@given(st.floats(60.0, 240.0), TEMPI, st.sampled_from([22050, 44100, 48000]), st.floats(5.0, 400.0))
def test_bpm_events_and_regions_rebuild_the_map(base, events, rate, seconds):
    tempo = TempoMap.from_bpm_events(base, [(float(b), m) for b, m in events])
    back = TempoMap.from_bpm_events(bpm_events(tempo)[0]["m"], [(e["b"], e["m"]) for e in bpm_events(tempo)])
    assert back == tempo
    tempi = [base] + [m for _, _, m in tempo.segments]
    # regions cannot tell tempi apart that differ by float noise (60 and 60.00000000000001): one region
    assume(all(not math.isclose(a, b, rel_tol=1e-9) or a == b for a, b in zip(tempi, tempi[1:])))
    n = int(seconds * rate)
    regions = tempo.to_regions(n, rate)
    assert regions[0][:1] == (0,) and regions[-1][1] == n
    assert all(a[1] == b[0] and a[3] == b[2] for a, b in zip(regions, regions[1:]))
    v4 = TempoMap.from_regions(base, regions, rate)
    probe = np.linspace(0, n / rate, 50)  # inside the audio
    assert np.max(np.abs(v4.seconds(tempo.beats(probe)) - probe)) <= 0.5 / rate + 1e-6
    assert v4.to_regions(n, rate) == regions  # the regions' own map gives the same regions
    # knowing the audio's end: no segment after it, the same map inside it, the same regions again (the end
    # beat up to float rounding: no segment anchors it now)
    ends = TempoMap.from_regions(base, regions, rate, n)
    assert all(second < n / rate for _, second, _ in ends.segments)
    assert ends.segments == [seg for seg in v4.segments if seg[1] < n / rate]
    again = ends.to_regions(n, rate)
    assert [r[:3] for r in again] == [r[:3] for r in regions] and again[-1][3] == pytest.approx(regions[-1][3], 1e-13)
    constant = TempoMap.constant(base)
    assert TempoMap.from_regions(base, constant.to_regions(n, rate), rate, n) == constant  # not a hair off base


def test_a_song_that_starts_at_another_tempo_gets_it_as_its_first_tempo():
    truth = TempoMap.from_bpm_events(150, [(50, 120)])  # 150 BPM for 20 s, then 120 BPM
    env = envelope_of(clicks_at(truth.seconds(np.arange(0, truth.beats(40.0))) + 0.1, 40.0))
    tempo = estimate_tempo_map(env, bpm=120.0)  # a global tempo of the second half: no 150 BPM lead-in segment
    (b0, s0, m0), (b1, s1, m1) = tempo.segments
    assert tempo.base_bpm == m0 == pytest.approx(150, abs=0.1) and m1 == pytest.approx(120, abs=0.1)
    assert abs(s1 - 20) <= 1.5


def test_a_sample_count_of_zero_is_unknown_the_base_tempo_follows_the_last_region():
    # one region of 2 s at 120 BPM (4 beats) over a 100 BPM base: after it, the base tempo (formats §1.8)
    regions = [(0, 88200, 0.0, 4.0)]
    for n_samples in (None, 0, -1, 441000):
        assert TempoMap.from_regions(100.0, regions, 44100, n_samples).seconds([8.0])[0] == pytest.approx(4.4)
    # a count the region reaches: no audio is left, the region's tempo goes on
    assert TempoMap.from_regions(100.0, regions, 44100, 88200).seconds([8.0])[0] == pytest.approx(4.0)
