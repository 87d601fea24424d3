"""Reliability: hostile inputs, two writers, kills (the time rules' properties are in tests/preprocess).

Every hostile input is reported with its reason, the run goes on (the other
items of the same run are stored), and the store validates afterwards.
"""

import gzip
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from mapkit.runs.build_targets import build_targets
from mapkit.datasets.store import Store, open_shard
from mapkit.datasets.validation import validate_store
from mapkit.runs.demo import make_demo
from mapkit.runs.extract import extract
from mapkit.preprocess.timebase import n_frames

UNICODE_AUDIO = "Ünïcödé sông — ça va"
UNICODE_LEVEL = "Lévél wïth spaces ✓"


def tone(seconds, sr=44100, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t) + 0.01 * rng.standard_normal(len(t))
            ).astype(np.float32)


def write_ogg(path, y, sr=44100):
    """Ogg Vorbis in 1 s blocks (one large write to Ogg crashes libsndfile)."""
    with sf.SoundFile(path, "w", sr, 1, format="OGG", subtype="VORBIS") as f:
        for i in range(0, len(y), sr):
            f.write(y[i:i + sr])
    return path


def v2_to_strings(data: bytes) -> bytes:
    """A v2 difficulty with every note number written as a string ("4.0")."""
    doc = json.loads(data)
    doc["_notes"] = [{k: str(v) for k, v in n.items()} for n in doc["_notes"]]
    return json.dumps(doc).encode()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """One input folder with every hostile input; extract, build-targets and validate run once over it."""
    base = tmp_path_factory.mktemp("hostile")
    demo = make_demo(base / "demo", n_levels=6, duration_s=4, include_fretsonfire=False, progress=False)
    v2 = demo.levels[0]  # v2 folder: Easy, Normal, Expert in EasyStandard.dat ...
    v4 = demo.levels[5]  # v4 folder: Normal.dat, Expert.dat
    assert (v2.beatmap_format, v4.beatmap_format) == ("v2", "v4") and not v2.is_zip and not v4.is_zip
    inp = base / "in"
    inp.mkdir()
    expert = v2.path / "ExpertStandard.dat"
    raw = expert.read_bytes()

    def level_copy(name, src=v2.path):
        dst = inp / name
        shutil.copytree(src, dst)
        return dst

    # --- levels (build-targets); their audio is fine, so extract stores them all
    level_copy(UNICODE_LEVEL)  # the untouched level, under a name with spaces and non-ASCII
    (level_copy("lv-invalid-json") / "ExpertStandard.dat").write_bytes(raw[: len(raw) // 2])
    nan = raw.replace(b'"_time":5.0', b'"_time":NaN', 1)
    assert nan != raw
    (level_copy("lv-nan") / "ExpertStandard.dat").write_bytes(nan)
    inf = raw.replace(b'"_time":5.0', b'"_time":Infinity', 1)
    (level_copy("lv-infinity") / "ExpertStandard.dat").write_bytes(inf)
    (level_copy("lv-strings") / "ExpertStandard.dat").write_bytes(v2_to_strings(raw))
    (level_copy("lv-gzip") / "ExpertStandard.dat").write_bytes(gzip.compress(raw))
    (level_copy("lv-utf16") / "ExpertStandard.dat").write_bytes(raw.decode().encode("utf-16"))
    (level_copy("lv-missing-difficulty") / "ExpertStandard.dat").unlink()
    v4_expert = json.loads((v4.path / "Expert.dat").read_bytes())
    v4_expert["colorNotes"][1]["i"] = 99  # the data array has a handful of entries
    (level_copy("lv-v4-bad-index", v4.path) / "Expert.dat").write_text(json.dumps(v4_expert))

    # --- bare audio (extract only)
    good = write_ogg(base / "good.ogg", tone(2.0, seed=1))
    shutil.copyfile(good, inp / f"{UNICODE_AUDIO}.ogg")
    data = good.read_bytes()
    (inp / "truncated.ogg").write_bytes(data[: int(len(data) * 0.6)])
    (inp / "random.egg").write_bytes(np.random.default_rng(3).bytes(20000))
    (inp / "empty.ogg").write_bytes(b"")
    sf.write(inp / "silence.wav", np.zeros(44100, np.float32), 44100, subtype="PCM_16")
    sf.write(inp / "one-sample.wav", np.array([0.5], np.float32), 44100, subtype="FLOAT")

    # --- a symlink loop: loop/back -> the input folder, loop/self -> loop
    (inp / "loop").mkdir()
    os.symlink(inp, inp / "loop" / "back")
    os.symlink(inp / "loop", inp / "loop" / "self")

    store = base / "store"
    ext = extract(inp, store=store, jobs=1, progress=False)
    tgt = build_targets(inp, store=store, jobs=1, progress=False)
    return {"store": store, "extract": ext, "targets": tgt, "v2": v2, "v4": v4,
            "valid": validate_store(store, progress=False)}


def items(report):
    return {i.song_id: i for i in report.items}


def stored_notes(store, song_id, name="Standard/Expert"):
    e = Store(store).index("targets")[song_id]
    with open_shard(e.shard, features=False) as f:
        return f[e.group][name]["notes"][()]


def test_the_store_validates_after_every_hostile_input(hostile):
    report = hostile["valid"]
    assert report.ok, report.summary()
    # 8 copies of the v2 level (3 difficulties, 4 lose Expert) and the v4 copy (2, loses Expert)
    assert report.counts["songs"] == 11 and report.counts["levels"] == 8 * 3 - 4 + 1


@pytest.mark.parametrize("song_id, reason", [
    ("truncated", "truncated"),
    ("random", "not a readable audio file"),
    ("empty", "empty file (0 bytes)"),
    ("silence", "silent: all samples are zero"),
])
def test_bad_audio_is_reported_with_its_reason(hostile, song_id, reason):
    item = items(hostile["extract"])[song_id]
    assert item.status == "failed" and item.reason.startswith(reason), item.reason
    assert song_id not in Store(hostile["store"]).index("features")
    obj = json.loads(hostile["extract"].report_path.read_text())
    assert {"song_id": song_id, "status": "failed"}.items() <= next(
        i for i in obj["items"] if i["song_id"] == song_id).items()


def test_extract_went_on_and_stored_every_good_song(hostile):
    report = hostile["extract"]
    assert report.exit_code == 2
    assert report.counts == {"ok": 11, "skipped": 0, "failed": 4, "quarantined": 0}
    index = Store(hostile["store"]).index("features")
    assert UNICODE_AUDIO in index and UNICODE_LEVEL in index and "one-sample" in index


def test_a_one_sample_file_gives_one_frame(hostile):
    e = Store(hostile["store"]).index("features")["one-sample"]
    assert e.attrs["n_samples"] == 1 and e.attrs["n_frames"] == 1 == n_frames(1, 44100)
    with open_shard(e.shard) as f:
        assert f[e.group]["placement"].shape == (15, 3, 80) and f[e.group]["selection"].shape == (3, 100)


def test_symlink_loop_is_not_followed_twice(hostile):
    # the loop leads back to the input folder: each song is found once, none twice
    ids = [i.song_id for i in hostile["extract"].items]
    assert len(ids) == len(set(ids)) == 15
    assert not any("loop" in i.source for i in hostile["extract"].items)


@pytest.mark.parametrize("song_id, reason", [
    ("lv-invalid-json", "ExpertStandard.dat: invalid JSON"),
    ("lv-nan", "ExpertStandard.dat: invalid JSON: non-finite number NaN"),
    ("lv-infinity", "ExpertStandard.dat: invalid JSON: non-finite number Infinity"),
    ("lv-missing-difficulty", "ExpertStandard.dat: file not found"),
    ("lv-v4-bad-index", "Expert.dat: corrupt v4 index: colorNotes[1].i = 99"),
])
def test_bad_level_files_quarantine_that_difficulty_only(hostile, song_id, reason):
    it = items(hostile["targets"])
    bad = it[f"{song_id}/Standard/Expert"]
    assert bad.status == "quarantined" and reason in bad.reason, bad.reason
    ok = [i for sid, i in it.items() if sid.startswith(f"{song_id}/") and i is not bad]
    assert ok and all(i.status == "ok" for i in ok)  # the level's other difficulties are stored
    e = Store(hostile["store"]).index("targets")[song_id]
    with open_shard(e.shard, features=False) as f:
        assert "Expert" not in f[e.group]["Standard"] and "Normal" in f[e.group]["Standard"]


@pytest.mark.parametrize("song_id", ["lv-strings", "lv-gzip", "lv-utf16"])
def test_odd_but_valid_encodings_read_the_same_notes(hostile, song_id):
    assert items(hostile["targets"])[f"{song_id}/Standard/Expert"].status == "ok"
    reference = stored_notes(hostile["store"], UNICODE_LEVEL)
    assert len(reference) == len(hostile["v2"].difficulties[2].notes) > 0
    np.testing.assert_array_equal(stored_notes(hostile["store"], song_id), reference)


def test_build_targets_went_on(hostile):
    report = hostile["targets"]
    assert report.exit_code == 2
    assert report.counts["quarantined"] == 5 and report.counts["failed"] == 0
    assert report.counts["ok"] == 8 * 3 + 2 - 5  # every other difficulty of the 9 levels
    it = items(report)
    assert all(it[f"{UNICODE_LEVEL}/Standard/{d}"].status == "ok" for d in ("Easy", "Normal", "Expert"))


@pytest.mark.slow
def test_a_20_minute_file_extracts_on_the_frame_rule(tmp_path):
    sr = 22050  # FLAC encodes fast; 20 min of low-amplitude noise
    n = 20 * 60 * sr + 123
    inp = tmp_path / "in"
    inp.mkdir()
    rng = np.random.default_rng(0)
    with sf.SoundFile(inp / "long.flac", "w", sr, 1, format="FLAC", subtype="PCM_16") as f:
        for start in range(0, n, 60 * sr):
            f.write((0.01 * rng.standard_normal(min(60 * sr, n - start))).astype(np.float32))
    report = extract(inp, store=tmp_path / "store", jobs=1, progress=False)
    assert report.exit_code == 0, report.items
    e = Store(tmp_path / "store").index("features")["long"]
    T = 1 + (n * 100) // sr
    assert e.attrs["n_samples"] == n and e.attrs["n_frames"] == T == n_frames(n, sr) == 120001
    with open_shard(e.shard) as f:
        assert f[e.group]["placement"].shape == (T + 14, 3, 80)
    valid = validate_store(tmp_path / "store", progress=False)
    assert valid.ok, valid.summary()


# --- two writers ----------------------------------------------------------------------------------


def test_two_extract_processes_one_proceeds_one_refuses(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    for i in range(24):  # seconds of work for the winner, so the loser always finds the lock held
        write_ogg(inp / f"s{i:02d}.ogg", tone(3.0, seed=i))
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "mapkit", "extract", str(inp), "--store", str(store), "--jobs", "1",
           "--no-progress"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], outs
    loser = outs[[p.returncode for p in procs].index(1)][1]
    winner = procs[[p.returncode for p in procs].index(0)]
    assert "in use by another run" in loser and f"pid {winner.pid}" in loser
    report = validate_store(store, progress=False)
    assert report.ok and report.counts["songs"] == 24, report.summary()
    assert len(list((store / "reports").iterdir())) == 1  # the refused run wrote nothing
