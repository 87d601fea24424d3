"""`mapkit evaluate` end to end: fixture levels, a real store's baseline, audio alignment, plots, bad input."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from mapkit.cli import main
from mapkit.runs.evaluate import evaluate, format_table
from tests.tiny_store import build_tiny_store

FIXTURES = "tests/fixtures/maps"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A store of demo levels (notes on loud hits, real rendered audio) and its level folders."""
    root = tmp_path_factory.mktemp("evaluate")
    store = build_tiny_store(root, n_levels=3, duration_s=8.0)
    return store, root / "demo" / "levels"


def test_fixture_levels_json_every_difficulty(tmp_path):
    r = CliRunner().invoke(main, ["evaluate", FIXTURES, "--no-audio", "--json", "--no-progress"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    got = {(lv["song_id"], lv["difficulty"]) for lv in doc["levels"]}
    assert len(got) == 10 and ("JOURNEY", "ExpertPlus") in got and ("werewolf howls", "Easy") in got
    journey = next(lv for lv in doc["levels"] if lv["song_id"] == "JOURNEY" and lv["difficulty"] == "Expert")
    assert journey["values"]["notes"] == 1869 and journey["duration_source"] == "notes"
    assert journey["details"]["parity"]["left"]["swings"] > 800
    assert "align_lag_ms" not in journey["values"] and doc["failures"] == []


def test_a_short_level_against_whole_songs_is_warned_that_its_counts_read_low(tmp_path):
    from mapkit.preprocess.baseline import Baseline

    long_songs = [("ExpertPlus", {"duration_s": float(d), "distinct_states": float(d), "nps_mean": 3.0})
                  for d in range(1000, 1200)]
    path = tmp_path / "long-songs.json"
    path.write_text(json.dumps(Baseline.from_values(long_songs, settings_hash="other").to_json()))
    report = evaluate([f"{FIXTURES}/werewolf howls"], baseline=path, difficulties=["Expert+"], audio=False)
    (item,) = report.items
    assert item.metrics.values["duration_s"] < 1000 and item.metrics.values["distinct_states"] < 1000
    assert "distinct_states" in item.flagged
    assert any(w.startswith("distinct_states below the human band: a count over the whole level")
               for w in item.warnings)
    assert "warning (werewolf howls): distinct_states below" in format_table(report)


def test_table_and_reference_timing():
    report = evaluate([f"{FIXTURES}/werewolf howls"], reference=f"{FIXTURES}/werewolf howls", difficulties=["Expert+"],
                      audio=False)
    (item,) = report.items
    assert item.metrics.values["onset_f1_20ms"] == 1.0 and item.metrics.values["onset_f1_50ms"] == 1.0
    table = format_table(report)
    assert "== ExpertPlus (1 level) ==" in table and "onset F1 +-20 ms" in table and "parity errors, left" in table


def test_store_baseline_then_percentiles_and_plots(tiny, tmp_path):
    store, levels = tiny
    baseline = tmp_path / "human.json"
    r = CliRunner().invoke(main, ["evaluate", "--store", str(store), "--save-baseline", str(baseline),
                                  "--no-progress"])
    assert r.exit_code == 0, r.output
    doc = json.loads(baseline.read_text())
    assert doc["difficulties"] and all(len(t) == 101 for d in doc["difficulties"].values()
                                       for t in d["metrics"].values())
    # the alignment of the human levels comes from the store's features: the demo's notes sit on its hits
    lags = doc["difficulties"]["Normal"]["metrics"]["align_lag_ms"]
    assert -20 <= lags[0] <= lags[100] <= 20 and doc["difficulties"]["Normal"]["metrics"]["align_strength"][0] > 5
    plots = tmp_path / "plots"
    r = CliRunner().invoke(main, ["evaluate", str(levels), "--baseline", str(baseline), "--json", "--plot",
                                  str(plots), "--difficulty", "Normal", "--no-progress"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    normal = doc["difficulties"]["Normal"]["n_levels"]
    assert len(out["levels"]) == normal and out["baseline"] == str(baseline)
    for lv in out["levels"]:
        assert lv["duration_source"] == "audio"
        # the demo's notes sit on the hits of its own audio
        assert abs(lv["values"]["align_lag_ms"]) <= 20 and lv["values"]["align_strength"] > 5
        assert lv["percentiles"]["nps_mean"] is not None
    assert len(list(plots.glob("*.png"))) == normal
    # the same levels read from folders and from the store agree on every metric both have
    store_report = evaluate(store=store, audio=False)
    folder_report = evaluate([levels], audio=False)
    a = {i.song_id + i.difficulty: i.metrics.values for i in store_report.items}
    for i in folder_report.items:
        for k in ("notes", "nps_peak", "parity_errors_left", "state_entropy_bits", "walls_per_min"):
            assert np.isclose(i.metrics.values[k], a[i.song_id + i.difficulty][k], equal_nan=True), k


def test_bad_input_is_reported_and_the_run_goes_on(tmp_path):
    shutil.copytree(f"{FIXTURES}/werewolf howls", tmp_path / "good")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "Info.dat").write_text("{not json")
    r = CliRunner().invoke(main, ["evaluate", str(tmp_path), "--no-audio", "--no-progress", "--difficulty", "Hard"])
    assert r.exit_code == 2 and "broken" in r.stderr and "== Hard (1 level) ==" in r.stdout
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": 1}')
    r = CliRunner().invoke(main, ["evaluate", str(tmp_path / "good"), "--no-audio", "--baseline", str(bad)])
    assert r.exit_code == 1 and "bad.json" in r.stderr and "percentiles" in r.stderr
    r = CliRunner().invoke(main, ["evaluate", "--no-audio"])
    assert r.exit_code == 64 and "nothing to evaluate" in r.stderr  # bad usage, as a wrong option is
    r = CliRunner().invoke(main, ["evaluate", str(tmp_path / "good"), "--store", str(tmp_path), "--no-audio"])
    assert r.exit_code == 64 and "not both" in r.stderr
    r = CliRunner().invoke(main, ["evaluate", str(tmp_path / "good"), "--no-audio", "--difficulty", "Foo"])
    assert r.exit_code == 64 and "Foo" in r.stderr


def test_generate_evaluate_prints_metrics_and_percentiles(tiny, tmp_path, one_torch_thread):
    import soundfile as sf

    from tests.runs.test_generate import SR, _save, click_track, tiny_models

    store, _ = tiny
    baseline = tmp_path / "human.json"
    evaluate(store=store, save_baseline_to=baseline)
    sf.write(tmp_path / "clicks.ogg", click_track(120.0, 6.0), SR, format="OGG", subtype="VORBIS")
    placement, selection, p_ckpt, s_ckpt = tiny_models()
    p = _save(tmp_path / "ddc" / "last.pt", placement, "placement", p_ckpt)
    s = _save(tmp_path / "transformer" / "last.pt", selection, "selection", s_ckpt)
    args = ["generate", str(tmp_path / "clicks.ogg"), "--placement", str(p), "--selection", str(s),
            "--beam-size", "2", "--out", str(tmp_path / "gen")]
    r = CliRunner().invoke(main, args + ["--evaluate", "--baseline", str(baseline)])
    assert r.exit_code == 0, r.output
    assert "== Expert (1 level) ==" in r.stdout and "parity errors, left hand" in r.stdout
    assert "%" in r.stdout and "lag of notes vs audio onsets" in r.stdout
    r = CliRunner().invoke(main, args + ["--baseline", str(tmp_path / "missing.json")])
    assert r.exit_code == 1 and "missing.json" in r.stderr


def _write_level(folder, notes, difficulty="Expert", bpm=120.0):
    """A hand-written level folder (Info.dat v2.1, a v3.3 difficulty) holding ``notes``."""
    from mapkit.writers.beatmap import difficulty_json, info_json

    folder.mkdir(parents=True)
    name = f"{difficulty}Standard.dat"
    (folder / "Info.dat").write_text(json.dumps(info_json(folder.name, bpm, difficulty, name, 30.0)))
    (folder / name).write_text(json.dumps(difficulty_json(notes, bpm)))


def test_hand_written_levels_shifted_40ms_and_three_left_parity_errors(tmp_path):
    from tests.preprocess.notes_helper import make_notes

    # left: down, DOWN, up, UP, down-left, DOWN-RIGHT, left (3 errors); right alternates cleanly
    red = [(1.0 + 0.5 * i, 1, 0, 0, d) for i, d in enumerate([1, 1, 0, 0, 6, 7, 2])]
    blue = [(1.25 + 0.5 * i, 2, 0, 1, d) for i, d in enumerate([1, 0, 3, 8, 7, 0])]
    notes = make_notes(red + blue)
    late = notes.copy()
    late["time_s"] += 0.04
    late["beat"] += 0.08  # 40 ms at 120 BPM
    _write_level(tmp_path / "reference", notes)
    _write_level(tmp_path / "late", late)
    r = CliRunner().invoke(main, ["evaluate", str(tmp_path / "late"), "--reference", str(tmp_path / "reference"),
                                  "--no-audio", "--json", "--no-progress"])
    assert r.exit_code == 0, r.output
    (lv,) = json.loads(r.stdout)["levels"]
    v = lv["values"]
    assert (v["onset_f1_20ms"], v["onset_f1_50ms"]) == (0.0, 1.0)
    # down-left then down-right is a parity error but not the same direction twice
    assert (v["parity_errors_left"], v["parity_errors_right"], v["double_directionals"]) == (3, 0, 2)
    assert v["notes"] == 13 and v["collisions"] == 0
