"""Alignment on beat-periodic music: an aligned map reads lag ~0, a real offset is still found.

The corpus run found human maps read a whole or half beat away (185 BPM Hard
+320 ms; a 120 BPM Easy at -500 ms). Synthetic songs: a click on every beat
(louder on the off-beats, as a snare on 2 and 4), notes on beats with a few
ms of jitter.
"""

import numpy as np
import pytest

from mapkit.runs.audit import AuditSettings, audit_flags
from mapkit.preprocess.alignment import align_notes, beat_period_frames, fold_lag, onset_strength
from mapkit.preprocess.features import placement_features
from mapkit.preprocess.tempo import TempoMap
from mapkit.preprocess.timebase import frame_of
from tests.preprocess.test_alignment import SR, render_hits

BPM = 120.0
BEAT_S = 60.0 / BPM
BEAT_FRAMES = beat_period_frames(TempoMap.constant(BPM), np.array([0.0]))
DURATION_S = 30.0


@pytest.fixture(scope="module")
def clicks():
    """Onset strength of clicks on every beat, the odd beats 3x louder; and the beat times."""
    beats = np.arange(1.0, DURATION_S - 1.0, BEAT_S)
    y = render_hits(beats[0::2], duration_s=DURATION_S, seed=11) + 3 * render_hits(beats[1::2], duration_s=DURATION_S,
                                                                                      seed=12)
    return onset_strength(placement_features(y, SR)), beats


def _notes(beats, rng, every=1, jitter_s=0.008):
    """Notes on every ``every``-th beat (the soft ones first), each moved by up to ``jitter_s``."""
    t = beats[0::every]
    return frame_of(t + rng.uniform(-jitter_s, jitter_s, len(t)))


def test_beat_period_is_read_from_the_tempo_map():
    assert BEAT_FRAMES == 50.0
    tempo = TempoMap.from_bpm_events(120.0, [(0.0, 120.0), (8.0, 240.0)])
    assert beat_period_frames(tempo, np.array([9.0, 10.0, 11.0])) == 25.0
    assert beat_period_frames(None, np.array([1.0])) is None and beat_period_frames(tempo, np.array([])) is None


@pytest.mark.parametrize("every", [1, 2])
def test_an_aligned_map_on_beat_periodic_music_reads_lag_zero(clicks, every):
    onset, beats = clicks
    rng = np.random.default_rng(every)
    a = align_notes(_notes(beats, rng, every), onset, beat_frames=BEAT_FRAMES)
    assert abs(a.lag_frames) <= 1, (a.lag_frames, a.peak_lag_frames, a.alias_beats)
    assert audit_flags(a, AuditSettings()) == ([], [])


def test_notes_on_the_soft_beats_only_are_not_read_one_beat_off(clicks):
    # every note sits on a soft click; one beat away every note meets a loud one:
    # the correlation's highest peak is a beat away; the notes do not significantly prefer it (paired t)
    onset, beats = clicks
    a = align_notes(_notes(beats, np.random.default_rng(5), every=2), onset, beat_frames=BEAT_FRAMES)
    assert abs(abs(int(a.lags[np.nanargmax(a.correlation)])) - BEAT_FRAMES) <= 1  # the highest peak: a beat off
    assert abs(a.lag_frames) <= 1 and a.alias_beats in (-1.0, 0.0, 1.0)
    assert audit_flags(a, AuditSettings()) == ([], [])


@pytest.mark.parametrize("offset", [12, -17, 7])
def test_an_offset_off_the_beat_grid_is_found(clicks, offset):
    onset, beats = clicks
    notes = _notes(beats, np.random.default_rng(abs(offset))) + offset
    for beat_frames in (BEAT_FRAMES, None):
        a = align_notes(notes, onset, beat_frames=beat_frames)
        assert abs(a.lag_frames - offset) <= 1, (offset, beat_frames, a.lag_frames, a.peak_lag_frames)
        flags, reasons = audit_flags(a, AuditSettings())
        assert flags == ["offset"], reasons


def test_fold_lag_reads_lags_modulo_half_a_beat_only_on_that_grid():
    assert fold_lag(-50, 50.0) == (0, -1.0) and fold_lag(26, 50.0) == (1, 0.5) and fold_lag(-99, 50.0) == (1, -2.0)
    assert fold_lag(12, 50.0) == (12, 0.0) and fold_lag(-29, 50.0) == (-29, 0.0)
    assert fold_lag(2, 50.0) == (2, 0.0) and fold_lag(50, None) == (50, 0.0)


def test_the_audit_reads_the_beat_period_from_the_stored_tempo_map():
    import json

    from mapkit.runs.audit import stored_beat_frames
    from mapkit.preprocess.notes import STORED_NOTE_DTYPE

    notes = np.zeros(3, dtype=STORED_NOTE_DTYPE)
    notes["beat"] = [1.0, 2.0, 3.0]
    notes["color"] = [0, 1, 3]
    attrs = {"tempo_map": json.dumps(TempoMap.constant(150.0).to_json())}
    assert stored_beat_frames(attrs, notes) == 40.0
    assert stored_beat_frames({"tempo_map": ""}, notes) is None
    assert stored_beat_frames({"tempo_map": "{not json"}, notes) is None
    assert stored_beat_frames(attrs, notes[2:]) is None  # bombs only: no colour notes


def test_a_difficulty_without_notes_is_few_notes_only_and_null_in_the_audit_json():
    import json

    from mapkit.runs.audit import AuditReport, DifficultyAudit
    from mapkit.runs.runner import RunReport

    a = align_notes(np.zeros(0, np.int64), np.ones(500, np.float32), beat_frames=BEAT_FRAMES)
    flags, reasons = audit_flags(a, AuditSettings())
    assert flags == ["few_notes"] and reasons == ["only 0 note frames"]
    row = DifficultyAudit("song", "Standard/Easy", a.lag_frames, a.strength, a.coverage, a.n_note_frames, flags,
                          reasons)
    report = AuditReport(RunReport("audit", []), AuditSettings(), [row])
    (d,) = json.loads(json.dumps(report.to_json(), allow_nan=False))["difficulties"]
    assert d["strength"] is None and d["coverage"] is None and d["flags"] == ["few_notes"]
