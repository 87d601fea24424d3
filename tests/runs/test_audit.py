"""mapkit audit on a store of synthetic levels with known faults: offsets, random notes, a partial map."""

import io
import json
import shutil
import warnings

import h5py
import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from mapkit.runs.audit import AuditSettings, audit_store
from mapkit.runs.build_targets import build_targets
from mapkit.cli import main
from mapkit.datasets.store import Store
from mapkit.datasets.torch_datasets import store_levels
from mapkit.runs.extract import extract

SR = 22050
DURATION_S = 20.0

#: song id -> (how the notes were made, the flags the audit must raise)
LEVELS = {
    "aligned": ("offset 0", []),
    "late-5": ("offset +5", ["offset"]),
    "early-5": ("offset -5", ["offset"]),
    "late-30": ("offset +30", ["offset"]),
    "early-30": ("offset -30", ["offset"]),
    "random": ("random", ["no_peak"]),
    "partial": ("18 % in the middle", ["partial"]),
}


def hit_times(seed):
    """Irregular hit times (no tempo, so no second peak a beat away) between 1.5 s and 18.5 s."""
    rng = np.random.default_rng(seed)
    times = 1.5 + np.cumsum(rng.uniform(0.08, 0.25, size=200))
    return times[times < DURATION_S - 1.5]


def render(times, seed):
    """A quiet noise floor with a short decaying noise burst starting exactly at each time."""
    rng = np.random.default_rng(seed)
    y = 0.003 * rng.standard_normal(int(DURATION_S * SR))
    envelope = np.exp(-np.arange(int(0.08 * SR)) / (0.015 * SR))
    for t in times:
        start = int(round(t * SR))
        stop = min(start + len(envelope), len(y))
        y[start:stop] += 0.5 * envelope[: stop - start] * rng.standard_normal(stop - start)
    buf = io.BytesIO()
    sf.write(buf, y.astype(np.float32), SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def note_times(kind, hits, rng):
    if kind == "random":
        return np.sort(rng.uniform(1.0, DURATION_S - 1.0, size=len(hits)))
    if kind == "18 % in the middle":
        return hits[(hits > 0.3 * DURATION_S) & (hits < 0.48 * DURATION_S)]
    return hits + int(kind.split()[1]) / 100.0


def write_level(folder, song_id, kind, seed):
    """A v2 level at 60 BPM (a beat is a second) with one Expert difficulty, and its audio."""
    hits = hit_times(seed)
    times = note_times(kind, hits, np.random.default_rng(seed + 1000))
    notes = [{"_time": round(float(t), 4), "_lineIndex": i % 4, "_lineLayer": 0, "_type": i % 2,
              "_cutDirection": 1} for i, t in enumerate(times)]
    info = {"_version": "2.0.0", "_songName": song_id, "_songSubName": "", "_songAuthorName": "test",
            "_levelAuthorName": "test", "_beatsPerMinute": 60, "_songTimeOffset": 0,
            "_songFilename": "song.wav", "_coverImageFilename": "cover.png",
            "_difficultyBeatmapSets": [{"_beatmapCharacteristicName": "Standard", "_difficultyBeatmaps": [
                {"_difficulty": "Expert", "_difficultyRank": 7, "_beatmapFilename": "ExpertStandard.dat",
                 "_noteJumpMovementSpeed": 16, "_noteJumpStartBeatOffset": 0}]}]}
    level = {"_version": "2.6.0", "_notes": notes, "_obstacles": [], "_events": []}
    d = folder / song_id
    d.mkdir(parents=True)
    (d / "Info.dat").write_text(json.dumps(info))
    (d / "ExpertStandard.dat").write_text(json.dumps(level))
    (d / "song.wav").write_bytes(render(hits, seed))


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    levels = root / "levels"
    for i, (song_id, (kind, _flags)) in enumerate(LEVELS.items()):
        write_level(levels, song_id, kind, seed=i)
    store = root / "store"
    for run in (extract, build_targets):
        report = run(levels, store=store, jobs=1, progress=False)
        assert report.exit_code == 0, report.summary()
    shutil.copytree(store, root / "unaudited")
    report = audit_store(store, jobs=1, progress=False)
    return store, report


def test_each_fault_is_found_and_the_clean_level_is_not_flagged(audited):
    _store, report = audited
    by_song = {d.song_id: d for d in report.difficulties}
    assert set(by_song) == set(LEVELS)
    for song_id, (_kind, flags) in LEVELS.items():
        assert by_song[song_id].flags == flags, (song_id, by_song[song_id])
    assert report.exit_code == 0


@pytest.mark.parametrize("song_id, lag", [("aligned", 0), ("late-5", 5), ("early-5", -5), ("late-30", 30),
                                          ("early-30", -30), ("partial", 0)])
def test_the_known_offset_is_measured(audited, song_id, lag):
    d = next(d for d in audited[1].difficulties if d.song_id == song_id)
    assert abs(d.lag_frames - lag) <= 1
    assert d.strength > 8


def test_reasons_read_as_the_table_prints_them(audited):
    report = audited[1]
    reasons = {d.song_id: d.reasons for d in report.difficulties}
    late = next(d for d in report.difficulties if d.song_id == "late-30")
    assert reasons["late-30"] == [f"offset {late.lag_frames:+d} frames"]
    assert reasons["random"][0].startswith("no alignment peak (strength ")
    assert reasons["partial"] == [f"covers {100 * next(d.coverage for d in report.difficulties if d.song_id == 'partial'):.0f} % of the song"]
    table = report.table()
    assert "late-30/Standard/Expert" in table and "aligned/" not in table
    assert "6 flagged" in table.splitlines()[-1]


def test_results_are_stored_as_attributes_and_the_store_stays_valid(audited):
    from mapkit.datasets.validation import validate_store

    store, report = audited
    targets = Store(store).index("targets")
    assert len(Store(store).shards("targets")) == 1  # the superseded shard was deleted
    for d in report.difficulties:
        with h5py.File(targets[d.song_id].shard, "r") as f:
            g = f[targets[d.song_id].group]
            a = g[d.difficulty].attrs
            assert a["align_lag_frames"] == d.lag_frames
            assert a["align_strength"] == pytest.approx(d.strength)
            assert a["align_coverage"] == pytest.approx(d.coverage)
            assert json.loads(a["audit_flags_json"]) == d.flags
            assert g.attrs["audit_settings_hash"] == AuditSettings().hash
    assert validate_store(store, progress=False).exit_code == 0


def test_report_and_plot_are_written(audited):
    _store, report = audited
    doc = json.loads(report.run.report_path.read_text())
    assert doc["flags"] == {"few_notes": 0, "no_peak": 1, "offset": 4, "partial": 1}
    assert len(doc["difficulties"]) == len(LEVELS)
    assert report.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_second_audit_reads_the_stored_results_and_writes_nothing(audited, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(audited[0], store)
    shards = Store(store).shards("targets")
    again = audit_store(store, jobs=1, progress=False, plot=tmp_path / "lags.png")
    assert again.run.counts["skipped"] == len(LEVELS)
    assert Store(store).shards("targets") == shards
    assert [(d.song_id, d.flags, d.lag_frames) for d in again.difficulties] == \
           [(d.song_id, d.flags, d.lag_frames) for d in audited[1].difficulties]
    assert (tmp_path / "lags.png").is_file()


def test_exclude_flagged_keeps_only_clean_audited_levels(audited):
    store = audited[0]
    assert len(store_levels(store)) == len(LEVELS)
    assert [lv.song_id for lv in store_levels(store, exclude_flagged=True)] == ["aligned"]


def test_exclude_flagged_warns_about_levels_never_audited(audited):
    store = audited[0].parent / "unaudited"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept = store_levels(store, exclude_flagged=True)
    assert len(kept) == len(store_levels(store))
    assert any("not audited" in str(w.message) for w in caught)


def test_levels_whose_features_are_gone_are_reported_not_audited(audited, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(audited[0], store)
    for p in Store(store).shards("features"):
        p.unlink()
    report = audit_store(store, jobs=1, progress=False, force=True)
    assert report.exit_code == 2
    assert report.run.counts["failed"] == len(LEVELS)
    assert "no features" in report.run.items[0].reason
    assert len(Store(store).index("targets")) == len(LEVELS)


def test_cli_audit_json_and_exit_codes(audited, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(audited[0], store)
    result = CliRunner().invoke(main, ["audit", "--store", str(store), "--json", "--jobs", "1", "--force"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["n_flagged"] == 6 and doc["counts"]["ok"] == len(LEVELS)
    result = CliRunner().invoke(main, ["audit", "--store", str(tmp_path / "nothing"), "--no-progress"])
    assert result.exit_code == 1 and "build-targets" in result.output


def test_training_datasets_and_config_carry_exclude_flagged(audited):
    from mapkit.datasets.torch_datasets import PlacementDataset, SelectionDataset
    from mapkit.train.ddc import DDCConfig, ddc_config

    store = audited[0]
    assert [lv.song_id for lv in PlacementDataset(store, exclude_flagged=True).levels] == ["aligned"]
    assert len(SelectionDataset(store, exclude_flagged=True).levels) == 1
    assert len(PlacementDataset(store).levels) == len(LEVELS)
    config = ddc_config("tiny", max_steps=1, exclude_flagged=True)
    assert config.exclude_flagged and DDCConfig.from_json(config.to_json()).exclude_flagged
    assert config.hash != ddc_config("tiny", max_steps=1).hash
    assert "--exclude-flagged" in CliRunner().invoke(main, ["train", "ddc", "--help"]).output


def test_worker_processes_give_the_same_audit(audited, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(audited[0], store)
    parallel = audit_store(store, jobs=2, force=True, progress=False)
    assert parallel.run.counts["ok"] == len(LEVELS)
    assert [(d.song_id, d.lag_frames, d.strength, d.flags) for d in parallel.difficulties] == \
           [(d.song_id, d.lag_frames, d.strength, d.flags) for d in audited[1].difficulties]


def _note_frames(dataset, li):
    return np.flatnonzero(dataset.level_classes(li) > 0)


@pytest.mark.parametrize("song_id", ["late-5", "early-5"])
def test_realign_moves_the_targets_onto_the_audio_by_the_audit_lag(audited, song_id):
    from mapkit.datasets.torch_datasets import PlacementDataset
    from mapkit.preprocess.timebase import frame_of

    store = audited[0]
    raw = PlacementDataset(store, [song_id], jitter=False)
    moved = PlacementDataset(store, [song_id], jitter=False, realign=True)
    lag = moved.levels[0].lag_frames
    assert lag == int(song_id.split("-")[1]) * (1 if song_id.startswith("late") else -1)
    hits = set(frame_of(hit_times(list(LEVELS).index(song_id))).tolist())
    on_hits = lambda frames: np.mean([f in hits for f in frames])
    assert on_hits(_note_frames(raw, 0)) < 0.1 and on_hits(_note_frames(moved, 0)) > 0.95
    assert np.array_equal(_note_frames(moved, 0), _note_frames(raw, 0) - lag)
    for index in range(len(moved)):  # the training windows read the same moved targets
        item, (li, start) = moved[index], moved.locate(index)
        n = int(item["mask"].sum())
        assert np.array_equal(item["frame_class"][:n].numpy(), moved.level_classes(li)[start: start + n])
    raw.close(), moved.close()


def test_realign_leaves_levels_never_audited_unchanged(audited):
    from mapkit.datasets.torch_datasets import PlacementDataset

    store = audited[0].parent / "unaudited"
    moved = PlacementDataset(store, ["late-5"], jitter=False, realign=True)
    raw = PlacementDataset(store, ["late-5"], jitter=False)
    assert moved.levels[0].lag_frames == 0
    assert np.array_equal(moved.level_classes(0), raw.level_classes(0))
    raw.close(), moved.close()


def test_ctrl_c_stops_the_audit_with_130_keeps_what_it_wrote_and_reports_it(audited, tmp_path, monkeypatch):
    import os
    import signal
    import time

    import mapkit.runs.audit as audit_module

    store = tmp_path / "store"
    shutil.copytree(audited[0].parent / "unaudited", store)
    handled, original = [], audit_module.audit_level

    def stopped_on_the_second(task, **kw):
        handled.append(task.song_id)
        if len(handled) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the second level is audited
            time.sleep(5)
        return original(task, **kw)

    monkeypatch.setattr(audit_module, "audit_level", stopped_on_the_second)
    result = CliRunner().invoke(main, ["audit", "--store", str(store), "--jobs", "1", "--no-progress"])
    assert result.exit_code == 130, result.output
    assert "interrupted: stopped" in result.output and "Traceback" not in result.output
    report = sorted((store / "reports").glob("audit-*.json"))[-1]
    doc = json.loads(report.read_text())
    assert doc["interrupted"] == signal.SIGINT and doc["exit_code"] == 130
    assert [item["song_id"] for item in doc["items"]] == handled[:1]
    monkeypatch.setattr(audit_module, "audit_level", original)
    again = audit_store(store, jobs=1, progress=False)  # a second run finishes the job...
    redone = {r.song_id for r in again.run.items if r.status == "ok"}
    assert handled[0] not in redone and redone == set(LEVELS) - {handled[0]}  # ...and keeps the first's audit
    assert again.exit_code == 0
