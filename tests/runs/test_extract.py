"""``mapkit extract`` end to end on small generated songs: layout, resume, failures, kills, locks, backends."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile

import h5py
import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from mapkit.cli import main
from mapkit.datasets.schema import ATTRS_CHECKSUM, FILE_ATTRS, OPTIONAL_SONG_ATTRS, SONG_ATTRS
from mapkit.datasets.store import Store, open_shard
from mapkit.datasets.validation import validate_store
from mapkit.errors import MapkitError, StoreError
from mapkit.runs.extract import extract
from mapkit.preprocess.timebase import n_frames
from mapkit.settings import FeatureSettings

SETTINGS = FeatureSettings()


def song_samples(seconds, sr, seed, channels=2):
    """A few tones and some noise: distinct songs for distinct seeds."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    y = sum(0.2 * np.sin(2 * np.pi * f * t) for f in rng.uniform(100, 4000, 3))
    y = y + 0.02 * rng.standard_normal(len(t))
    return np.stack([y * (0.5 + 0.5 * c) for c in range(channels)], axis=1).astype(np.float32)


def write_song(path, seconds=1.5, sr=44100, seed=0, channels=2):
    """Write a song; Ogg in 1 s blocks (one large write to Ogg crashes libsndfile)."""
    y = song_samples(seconds, sr, seed, channels)
    if str(path).lower().endswith((".ogg", ".egg")):
        with sf.SoundFile(path, "w", sr, channels, format="OGG", subtype="VORBIS") as f:
            for i in range(0, len(y), sr):
                f.write(y[i:i + sr])
    else:
        sf.write(path, y, sr)
    return path


def info_v2(song_filename):
    return json.dumps({"_version": "2.0.0", "_songName": "x", "_beatsPerMinute": 120,
                       "_songFilename": song_filename, "_difficultyBeatmapSets": []})


def make_inputs(root, n_audio=3, seed=0):
    """Bare audio songs (wav, ogg, egg) in ``root``; returns the song ids."""
    root.mkdir(parents=True, exist_ok=True)
    exts = (".wav", ".ogg", ".egg")
    ids = []
    for i in range(n_audio):
        sid = f"song{i:02d}"
        write_song(root / f"{sid}{exts[i % 3]}", seconds=1.0 + 0.25 * (i % 4), seed=seed + i,
                   sr=(44100, 22050, 48000)[i % 3], channels=1 + i % 2)
        ids.append(sid)
    return ids


def read_store(root):
    """{song_id: (placement, selection, attrs)} of the songs a reader of the store sees."""
    store = Store(root)
    index = store.index("features")
    assert index.problems == []
    out = {}
    for sid, e in index.items():
        with open_shard(e.shard) as f:
            g = f[e.group]
            out[sid] = (g["placement"][:], g["selection"][:], e.attrs)
    return out


def assert_same_songs(a, b):
    assert sorted(a) == sorted(b)
    for sid in a:
        np.testing.assert_array_equal(a[sid][0], b[sid][0])
        np.testing.assert_array_equal(a[sid][1], b[sid][1])
        assert a[sid][2].keys() == b[sid][2].keys()
        for k in a[sid][2]:
            np.testing.assert_array_equal(a[sid][2][k], b[sid][2][k])


def files_digest(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A store built from audio files, a level folder, a zipped level and three bad inputs."""
    base = tmp_path_factory.mktemp("mixed")
    inp = base / "in"
    ids = make_inputs(inp, 3)
    level = inp / "Level Folder"
    level.mkdir()
    write_song(level / "song.egg", seconds=2.0, seed=10)
    (level / "Info.dat").write_text(info_v2("SONG.EGG"))  # case differs from the file's
    zdir = base / "zsrc"
    zdir.mkdir()
    write_song(zdir / "Audio.ogg", seconds=1.2, sr=22050, seed=11)
    with zipfile.ZipFile(inp / "zipped.zip", "w") as z:
        z.write(zdir / "Audio.ogg", "inner/Audio.ogg")
        z.writestr("inner/info.dat", info_v2("audio.ogg"))
    (inp / "noise.egg").write_bytes(np.random.default_rng(5).bytes(3000))
    (inp / "empty.ogg").write_bytes(b"")
    missing = inp / "missing_audio"
    missing.mkdir()
    (missing / "Info.dat").write_text(info_v2("gone.egg"))
    store = base / "store"
    report = extract(inp, store=store, jobs=1, progress=False)
    return {"input": inp, "store": store, "report": report,
            "good": ids + ["Level Folder", "zipped"], "bad": ["empty", "missing_audio", "noise"]}


def test_layout_and_every_attribute(mixed):
    store = Store(mixed["store"])
    assert store.stats_path.is_file() and store.reports_dir.is_dir()
    shards = store.shards("features")
    assert [p.name for p in shards] == ["shard-00001.h5"]
    songs = read_store(mixed["store"])
    assert sorted(songs) == sorted(mixed["good"])
    with h5py.File(shards[0], "r") as f:
        assert f.attrs["settings_hash"] == SETTINGS.hash and f.attrs["kind"] == "features"
        # schema.py lists every attribute written: of the file and of each song
        assert set(f.attrs) == set(FILE_ATTRS) | {ATTRS_CHECKSUM}
        for sid in mixed["good"]:
            g = f["songs"][sid]
            T = int(g.attrs["n_frames"])
            assert T == n_frames(g.attrs["n_samples"], g.attrs["sample_rate"])
            assert g.attrs["duration_s"] == pytest.approx(g.attrs["n_samples"] / g.attrs["sample_rate"])
            assert list(g.attrs["pad_placement"]) == [7, 7] and list(g.attrs["pad_selection"]) == [1, 1]
            assert g["placement"].shape == (T + 14, 3, 80) and g["placement"].dtype == np.float16
            assert g["selection"].shape == (T + 2, 100) and g["selection"].dtype == np.float16
            assert g["placement"].chunks[0] <= 1024 and g["placement"].compression is None
            assert len(g.attrs["audio_sha256"]) == 64
            assert set(g.attrs) == set(SONG_ATTRS) | set(OPTIONAL_SONG_ATTRS) | {ATTRS_CHECKSUM}
    assert songs["Level Folder"][2]["source"].endswith("Level Folder/song.egg")
    assert songs["zipped"][2]["source"].endswith("zipped.zip!Audio.ogg")
    assert songs["zipped"][2]["sample_rate"] == 22050
    sha = hashlib.sha256((mixed["input"] / "Level Folder" / "song.egg").read_bytes()).hexdigest()
    assert songs["Level Folder"][2]["audio_sha256"] == sha


def test_pad_rows_hold_the_silence_value(mixed):
    silence = np.float16(SETTINGS.silence_value)
    for placement, selection, _ in read_store(mixed["store"]).values():
        assert np.all(placement[:7] == silence) and np.all(placement[-7:] == silence)
        assert np.all(selection[:1] == silence) and np.all(selection[-1:] == silence)
        assert np.any(placement[7:-7] != silence)  # real frames are not silence


def test_failures_are_reported_with_reasons_and_the_rest_stored(mixed):
    report = mixed["report"]
    assert report.exit_code == 2
    assert report.counts == {"ok": 5, "skipped": 0, "failed": 3, "quarantined": 0}
    obj = json.loads(report.report_path.read_text())
    assert report.report_path.parent == mixed["store"] / "reports"
    reasons = {i["song_id"]: i["reason"] for i in obj["items"] if i["status"] == "failed"}
    assert reasons["empty"] == "empty file (0 bytes)"
    assert reasons["noise"].startswith("not a readable audio file")
    assert "gone.egg" in reasons["missing_audio"] and "missing" in reasons["missing_audio"]
    lines = report.summary().splitlines()
    assert lines[0] == f"extract: 8 songs: 5 written, 3 failed (see {report.report_path})"
    assert sorted(line.rsplit(": ", 1)[1] for line in lines[1:]) == ["empty", "missing_audio", "noise"]


def test_stats_json_matches_numpy_over_the_stored_frames(mixed):
    stats = json.loads((mixed["store"] / "stats.json").read_text())
    songs = read_store(mixed["store"])
    placement = np.concatenate([p[7:-7].astype(np.float64) for p, _, _ in songs.values()])
    selection = np.concatenate([s[1:-1].astype(np.float64) for _, s, _ in songs.values()])
    assert stats["n_songs"] == 5 and stats["n_frames"] == len(placement) == len(selection)
    assert stats["settings_hash"] == SETTINGS.hash
    # stats come from the float32 values before the float16 cast: equal within float16 rounding
    np.testing.assert_allclose(stats["placement"]["mean"], placement.mean(axis=0), atol=0.01)
    np.testing.assert_allclose(stats["placement"]["std"], placement.std(axis=0), atol=0.01)
    np.testing.assert_allclose(stats["selection"]["mean"], selection.mean(axis=0), atol=0.01)
    np.testing.assert_allclose(stats["selection"]["std"], selection.std(axis=0), atol=0.01)


def test_resume_skips_without_rewriting_and_force_redoes(tmp_path):
    inp = tmp_path / "in"
    make_inputs(inp, 3)
    store = tmp_path / "store"
    first = extract(inp, store=store, jobs=1, progress=False)
    assert first.exit_code == 0 and first.counts["ok"] == 3
    before = files_digest(store / "features")
    stats_before = (store / "stats.json").read_text()

    again = extract(inp, store=store, jobs=1, progress=False)
    assert again.exit_code == 0 and again.counts == {"ok": 0, "skipped": 3, "failed": 0, "quarantined": 0}
    assert files_digest(store / "features") == before
    assert (store / "stats.json").read_text() == stats_before
    assert len(list((store / "reports").iterdir())) == 2

    # a changed audio file is recomputed even without --force
    write_song(inp / "song01.ogg", seconds=2.0, seed=99)
    changed = extract(inp, store=store, jobs=1, progress=False)
    assert {r.song_id: r.status for r in changed.items} == {"song00": "skipped", "song01": "ok", "song02": "skipped"}
    assert Store(store).index("features")["song01"].attrs["duration_s"] == pytest.approx(2.0)

    old = read_store(store)
    forced = extract(inp, store=store, jobs=1, force=True, progress=False)
    assert forced.counts["ok"] == 3
    index = Store(store).index("features")
    assert len(index) == 3 and {e.shard.name for e in index.values()} == {"shard-00003.h5"}
    assert_same_songs(read_store(store), old)
    assert json.loads((store / "stats.json").read_text())["n_songs"] == 3


def test_other_settings_are_refused(tmp_path):
    inp = tmp_path / "in"
    make_inputs(inp, 1)
    extract(inp, store=tmp_path / "s", jobs=1, progress=False)
    other = FeatureSettings(resample_quality="VHQ")
    for force in (False, True):
        with pytest.raises(StoreError, match="other settings"):
            extract(inp, store=tmp_path / "s", settings=other, jobs=1, force=force, progress=False)


def test_a_second_run_on_a_locked_store_refuses(tmp_path):
    inp = tmp_path / "in"
    make_inputs(inp, 1)
    store = Store(tmp_path / "s")
    with store.lock("extract"):
        with pytest.raises(StoreError, match="in use by another run"):
            extract(inp, store=store.root, jobs=1, progress=False)
        r = CliRunner().invoke(main, ["extract", str(inp), "--store", str(store.root), "--jobs", "1"])
        assert r.exit_code == 1
        assert "in use by another run" in r.output and f"pid {os.getpid()}" in r.output
    assert store.shards("features") == []


def test_cli_exit_codes_and_summary(tmp_path):
    inp = tmp_path / "in"
    make_inputs(inp, 2)
    store = tmp_path / "s"
    args = ["extract", str(inp), "--store", str(store), "--jobs", "2", "--no-progress"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "extract: 2 songs: 2 written (see " in r.output
    (inp / "broken.wav").write_bytes(b"RIFF1234WAVEjunk")
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2
    assert "extract: 3 songs: 0 written, 2 already present, 1 failed" in r.output
    r = CliRunner().invoke(main, ["extract", str(tmp_path / "nowhere"), "--store", str(store)])
    assert r.exit_code == 1 and "input does not exist" in r.output
    dup = tmp_path / "dup"
    dup.mkdir()
    write_song(dup / "a.wav", seconds=0.5)
    write_song(dup / "a.ogg", seconds=0.5)
    r = CliRunner().invoke(main, ["extract", str(dup), "--store", str(store)])
    assert r.exit_code == 1 and "duplicate song id 'a'" in r.output
    assert str(dup / "a.wav") in r.output and str(dup / "a.ogg") in r.output  # both inputs named


def test_broken_level_folders_are_reported_one_by_one(tmp_path):
    """Level folders whose info file is missing fail on their own in extract and build-targets; the rest goes on."""
    inp = tmp_path / "CustomLevels"
    good = inp / "good"
    good.mkdir(parents=True)
    write_song(good / "song.egg", seconds=1.0, seed=1)
    info = json.loads(info_v2("song.egg"))
    info["_difficultyBeatmapSets"] = [{"_beatmapCharacteristicName": "Standard", "_difficultyBeatmaps": [
        {"_difficulty": "Expert", "_difficultyRank": 7, "_beatmapFilename": "Expert.dat"}]}]
    (good / "Info.dat").write_text(json.dumps(info))
    (good / "Expert.dat").write_text(json.dumps({"_version": "2.2.0", "_notes": [
        {"_time": 1, "_lineIndex": 1, "_lineLayer": 0, "_type": 0, "_cutDirection": 1}], "_events": []}))
    for name in ("unfinished", "lost info"):
        (inp / name).mkdir()
        write_song(inp / name / "song.egg", seconds=0.5, seed=2)
    (inp / "lost info" / "ExpertStandard.dat").write_text("{}")
    store = tmp_path / "store"
    no_info = "no Info.dat (or legacy info.json) in level"
    for command in ("extract", "build-targets"):
        r = CliRunner().invoke(main, [command, str(inp), "--store", str(store), "--jobs", "1", "--no-progress"])
        assert r.exit_code == 2, r.output
        report = json.loads(max((store / "reports").glob(f"{command}-*.json")).read_text())
        items = {i["song_id"]: (i["status"], i["reason"]) for i in report["items"]}
        assert items["unfinished"] == items["lost info"] == ("failed", no_info)
        assert items.get("good", items.get("good/Standard/Expert"))[0] == "ok"


def test_jobs_2_and_dask_give_the_same_store_as_one_process(tmp_path):
    from distributed import LocalCluster

    inp = tmp_path / "in"
    make_inputs(inp, 4)
    (inp / "bad.egg").write_bytes(b"OggS" + bytes(200))
    one = extract(inp, store=tmp_path / "one", jobs=1, progress=False)
    two = extract(inp, store=tmp_path / "two", jobs=2, progress=False)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        dask = extract(inp, store=tmp_path / "dask", backend="dask", scheduler=cluster.scheduler_address,
                       progress=False)
    for report in (one, two, dask):
        assert report.counts == {"ok": 4, "skipped": 0, "failed": 1, "quarantined": 0}
        assert [i.song_id for i in report.items] == ["bad", "song00", "song01", "song02", "song03"]
    assert {i.reason for i in dask.items if i.status == "failed"} == {i.reason for i in one.items
                                                                     if i.status == "failed"}
    reference = read_store(tmp_path / "one")
    assert_same_songs(read_store(tmp_path / "two"), reference)
    assert_same_songs(read_store(tmp_path / "dask"), reference)


def complete_shards(store):
    d = store / "features"
    return len([p for p in d.iterdir() if p.name.endswith(".h5")]) if d.is_dir() else 0


def test_killed_runs_then_a_rerun_equal_a_store_built_in_one_go(tmp_path):
    inp = tmp_path / "in"
    make_inputs(inp, 24)
    store, reference = tmp_path / "store", tmp_path / "ref"

    def cmd(to):
        return [sys.executable, "-m", "mapkit", "extract", str(inp), "--store", str(to), "--jobs", "1",
                "--shard-songs", "2", "--no-progress"]

    assert subprocess.run(cmd(reference), capture_output=True).returncode == 0
    rng = np.random.default_rng(7)
    stored_after_kill = []
    for _ in range(3):
        # kill at a random point: after a random number of newly committed shards, plus a random delay
        target = complete_shards(store) + int(rng.integers(1, 3))
        proc = subprocess.Popen(cmd(store), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while proc.poll() is None and complete_shards(store) < target and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.08))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        # whatever the moment, every complete shard is readable
        index = Store(store).index("features")
        assert index.problems == []
        stored_after_kill.append(len(index))
    assert 0 < stored_after_kill[0] < stored_after_kill[-1] < 24  # the kills interrupted real work
    done = subprocess.run(cmd(store), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # songs the last kill left flushed in its .partial shard are adopted (not recomputed): already present
    m = re.search(r"recovered (\d+) items? flushed", done.stderr)
    recovered = int(m.group(1)) if m else 0
    present = stored_after_kill[-1] + recovered
    assert f"{24 - present} written, {present} already present" in done.stderr
    assert_same_songs(read_store(store), read_store(reference))
    assert not [p for p in (store / "features").iterdir() if p.name.endswith(".partial")]
    # nothing written twice: each song is in exactly one shard
    copies = []
    for shard in Store(store).shards("features"):
        with h5py.File(shard, "r") as f:
            copies += list(f["songs"])
    assert sorted(copies) == sorted(read_store(reference))
    ref_stats = json.loads((reference / "stats.json").read_text())
    stats = json.loads((store / "stats.json").read_text())
    assert stats["n_frames"] == ref_stats["n_frames"] and stats["n_songs"] == 24
    np.testing.assert_allclose(stats["placement"]["mean"], ref_stats["placement"]["mean"], rtol=1e-12)
    assert validate_store(store, progress=False).ok  # and the resumed store passes every check


def test_unknown_or_empty_input_raises_a_named_error(tmp_path):
    with pytest.raises(MapkitError, match="input does not exist"):
        extract(tmp_path / "nope", store=tmp_path / "s", jobs=1, progress=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no songs here")
    with pytest.raises(MapkitError, match="no songs found") as e:
        extract(tmp_path / "empty", store=tmp_path / "s", jobs=1, progress=False)
    assert e.value.path == str(tmp_path / "empty")
