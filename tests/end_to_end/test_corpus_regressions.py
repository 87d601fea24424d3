"""Regressions found by the real-corpus measurement run, on small synthetic levels made in tmp_path.

- a level without notes has NaN (JSON null) for every undefined metric;
- a level with notes past its audio's end measures the same from its folder
  and from the store, and ``inspect``'s kept counts match its drops;
- a Git LFS pointer in place of the audio is named as such.
"""

import json
import math

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from mapkit.cli import main
from mapkit.runs.evaluate import evaluate
from tests.preprocess.notes_helper import make_notes
from tests.preprocess.test_alignment import SR, render_hits

BPM = 120.0
SONG_S = 12.0


def _level(folder, notes, audio: bool = True, difficulty: str = "Expert"):
    """A level folder: Info.dat v2.1, a v3.3 difficulty holding ``notes``, and a rendered song.egg of SONG_S s."""
    from mapkit.writers.beatmap import difficulty_json, info_json

    folder.mkdir(parents=True)
    name = f"{difficulty}Standard.dat"
    (folder / "Info.dat").write_text(json.dumps(info_json(folder.name, BPM, difficulty, name, SONG_S)))
    (folder / name).write_text(json.dumps(difficulty_json(notes, BPM)))
    if audio:
        hits = np.arange(1.0, SONG_S - 0.5, 0.5)
        sf.write(folder / "song.egg", render_hits(hits, duration_s=SONG_S), SR, format="OGG", subtype="VORBIS")
    return folder


def _beat_notes(times):
    """Alternating red/blue down/up notes at ``times`` (s)."""
    return make_notes([(t, 1 + i % 2, 0, i % 2, i % 2) for i, t in enumerate(times)], bpm=BPM)


def test_a_level_without_notes_has_nan_for_every_undefined_metric(tmp_path):
    level = _level(tmp_path / "empty", _beat_notes([]))
    report = evaluate([level], difficulties=["Expert"])
    (item,) = report.items
    v = item.metrics.values
    undefined = ["align_lag_ms", "align_strength", "align_coverage", "align_correlation", "nps_peak",
                 "parity_error_share", "state_entropy_bits", "top_state_share", "ngram4_repetition", "red_share",
                 "dot_share", "ebpm_median_left", "ebpm_peak_right", "difficulty_estimate", "difficulty_speed",
                 "difficulty_travel"]
    assert [k for k in undefined if not math.isnan(v[k])] == []
    # counts and rates over the song stay defined
    assert (v["notes"], v["nps_mean"], v["distinct_states"], v["empty_share"]) == (0, 0.0, 0, 1.0)
    doc = json.loads(CliRunner().invoke(main, ["evaluate", str(level), "--json", "--no-progress"]).stdout)
    assert doc["levels"][0]["values"]["align_lag_ms"] is None


def test_a_one_note_level_has_nan_only_where_a_pair_is_needed(tmp_path):
    level = _level(tmp_path / "one", _beat_notes([3.0]))
    (item,) = evaluate([level], difficulties=["Expert"]).items
    v = item.metrics.values
    assert v["notes"] == 1 and v["nps_peak"] == 0.5 and v["red_share"] == 1.0 and v["state_entropy_bits"] == 0.0
    assert math.isnan(v["ngram4_repetition"]) and math.isnan(v["ebpm_median_left"])
    assert math.isnan(v["difficulty_travel"]) and v["difficulty_estimate"] == v["difficulty_speed"] == 0.5
    assert v["align_coverage"] > 0 and not math.isnan(v["align_lag_ms"])


@pytest.fixture(scope="module")
def past_the_end(tmp_path_factory):
    """A level of 40 notes on the song's hits, 2 of them (5 %) past the audio's end; extracted and built."""
    from mapkit.runs.build_targets import build_targets
    from mapkit.runs.extract import extract

    root = tmp_path_factory.mktemp("past_the_end")
    times = list(np.arange(1.0, 1.0 + 38 * 0.25, 0.25)) + [SONG_S + 0.5, SONG_S + 1.0]
    level = _level(root / "levels" / "late-notes", _beat_notes(times))
    store = root / "store"
    for run in (extract, build_targets):
        report = run(root / "levels", store=store, jobs=1, progress=False)
        assert report.exit_code == 0, report.summary()
    return level, store


def test_notes_past_the_audio_measure_the_same_from_the_folder_and_the_store(past_the_end):
    level, store = past_the_end
    (folder,) = evaluate([level]).items
    (stored,) = evaluate(store=store).items
    assert folder.metrics.values["notes"] == stored.metrics.values["notes"] == 38
    a, b = folder.metrics.values, stored.metrics.values
    assert a.keys() == b.keys()
    same = {k for k in a if a[k] == pytest.approx(b[k]) or (math.isnan(a[k]) and math.isnan(b[k]))}
    differ = {k: (a[k], b[k]) for k in a if k not in same}
    assert differ == {}


def test_inspect_kept_counts_follow_the_audio_check(past_the_end):
    level, _ = past_the_end
    r = CliRunner().invoke(main, ["inspect", str(level), "--json"])
    assert r.exit_code == 0, r.output
    (d,) = json.loads(r.stdout)["difficulties"]
    assert d["drops"] == {"beyond_audio": 2} and d["kept"] == {"notes": 38, "bombs": 0}
    assert d["counts"]["notes"] == 40 and len(d["notes"]) == 38
    text = CliRunner().invoke(main, ["inspect", str(level)]).stdout
    assert "notes 38" in text and "beyond_audio 2" in text


def test_a_git_lfs_pointer_is_named_as_such(tmp_path):
    from mapkit.errors import AudioError
    from mapkit.preprocess.audio import decode_audio

    pointer = tmp_path / "song.egg"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\n"
                       "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 3145728\n")
    with pytest.raises(AudioError) as e:
        decode_audio(pointer)
    assert e.value.reason == "a Git LFS pointer, not audio: fetch the real file (git lfs pull)"
    with open(pointer, "rb") as f, pytest.raises(AudioError) as e:
        decode_audio(f, name="level.zip!song.egg")
    assert "Git LFS pointer" in e.value.reason and e.value.path == "level.zip!song.egg"
    # other unreadable files keep libsndfile's reason, without a doubled full stop
    (tmp_path / "junk.egg").write_bytes(b"not audio at all, just some text" * 10)
    with pytest.raises(AudioError) as e:
        decode_audio(tmp_path / "junk.egg")
    assert e.value.reason.startswith("not a readable audio file: ") and not e.value.reason.endswith(".")
