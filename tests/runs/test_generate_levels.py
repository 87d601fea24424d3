"""mapkit generate: a real tempo map written and read back, --format v4, several difficulties in one level."""

import json

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from mapkit.cli import main
from mapkit.preprocess.difficulties import DIFFICULTIES
from mapkit.preprocess.levels import read_level
from mapkit.preprocess.notes import NOTE_DTYPE
from mapkit.preprocess.objects import OBJECT_DTYPES
from mapkit.preprocess.tempo import TempoMap
from mapkit.preprocess.timebase import frame_of
from mapkit.runs.generate import LEVEL_SUFFIX, generate_level
from mapkit.writers import v4
from mapkit.writers.beatmap import dumps
from tests.preprocess.test_tempo_map import SR, clicks_at
from tests.runs.test_generate import _save, tiny_models

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRUTH = TempoMap.from_bpm_events(120, [(40, 150)])  # 120 BPM for 20 s, then 150 BPM


@pytest.fixture(scope="module")
def songs(tmp_path_factory):
    """``change.ogg``: 40 s of clicks whose tempo changes from 120 to 150 BPM at 20 s; ``short.ogg``: 6 s at 120."""
    d = tmp_path_factory.mktemp("songs")
    beats = np.arange(0, TRUTH.beats(40.0))
    sf.write(d / "change.ogg", clicks_at(TRUTH.seconds(beats) + 0.237, 40.0), SR, format="OGG", subtype="VORBIS")
    sf.write(d / "short.ogg", clicks_at(np.arange(0.237, 6.0, 0.5), 6.0), SR, format="OGG", subtype="VORBIS")
    return d


def _generate(song, out, **kwargs):
    placement, selection, p_ckpt, s_ckpt = tiny_models()
    return generate_level(song, placement, selection, p_ckpt, s_ckpt, beam_size=2, out_dir=out, **kwargs)


def _assert_read_back(gen, expected_tempo_source: str):
    """Every difficulty read back by mapkit's reader: the same beats and cells, times within 1 ms, the same map."""
    level = read_level(gen.folder)
    assert level.quarantine is None and level.bpm == gen.bpm
    for chart in gen.charts:
        diff = level.get("Standard", chart.difficulty)
        assert diff is not None and diff.quarantine is None and diff.n_dropped == 0, chart.difficulty
        assert diff.tempo.source == expected_tempo_source and diff.tempo == gen.tempo
        back = diff.notes
        assert len(back) == len(chart.notes) > 0
        assert np.array_equal(back["beat"], chart.notes["beat"])
        assert np.max(np.abs(back["time_s"] - chart.notes["time_s"])) <= 1e-3
        assert np.array_equal(frame_of(np.unique(back["time_s"])), chart.peak_frames)  # still on stage 1's frames
        for key in ("column", "row", "color", "direction"):
            assert np.array_equal(back[key], chart.notes[key]), key


def test_a_tempo_change_is_written_as_bpm_events_and_read_back(songs, tmp_path):
    gen = _generate(songs / "change.ogg", tmp_path, difficulty=["Expert", "Hard"], align_grid=False)
    assert gen.difficulties == ["Hard", "Expert"] and gen.format == "v3"
    (_, _, m0), (b1, s1, m1) = gen.tempo.segments
    assert m0 == pytest.approx(120, abs=0.1) and m1 == pytest.approx(150, abs=0.1) and abs(s1 - 20) <= 1.5
    info = json.loads((gen.folder / "Info.dat").read_text())
    assert info["_beatsPerMinute"] == m0
    for chart in gen.charts:
        doc = json.loads((gen.folder / chart.filename).read_text())
        assert doc["bpmEvents"] == [{"b": 0.0, "m": m0}, {"b": b1, "m": m1}]
        assert chart.snapped.any()
        after = chart.notes["time_s"] > s1 + 0.01  # notes after the change snapped on the 150 BPM grid
        assert np.any(chart.notes["beat"][after] * 16 == np.round(chart.notes["beat"][after] * 16))
    _assert_read_back(gen, "bpm_events")
    assert len(gen.summary().splitlines()) == 3 and "from beat" in gen.summary()


def test_format_v4_writes_info_beatmaps_lightshows_and_audio_data_read_back(songs, tmp_path):
    gen = _generate(songs / "change.ogg", tmp_path, difficulty="Expert", format="v4", align_grid=False)
    names = sorted(p.name for p in gen.folder.iterdir())
    assert names == sorted(["Info.dat", "ExpertStandard.dat", "ExpertLightshow.dat", "BPMInfo.dat", "song.egg",
                            "cover.png"])
    info = json.loads((gen.folder / "Info.dat").read_text())
    assert info["version"] == "4.0.1" and info["audio"]["bpm"] == gen.bpm
    entry = info["difficultyBeatmaps"][0]
    assert (entry["difficulty"], entry["beatmapDataFilename"], entry["lightshowDataFilename"]) == \
        ("Expert", "ExpertStandard.dat", "ExpertLightshow.dat")
    audio = json.loads((gen.folder / "BPMInfo.dat").read_text())
    snd = sf.info(str(gen.folder / "song.egg"))
    assert (audio["songSampleCount"], audio["songFrequency"]) == (snd.frames, snd.samplerate)
    assert len(audio["songChecksum"]) == 40 and audio["lufsData"] == []
    assert len(audio["bpmData"]) == 2 and audio["bpmData"][-1]["ei"] == snd.frames
    beatmap = json.loads((gen.folder / "ExpertStandard.dat").read_text())
    assert beatmap["version"] == "4.1.0" and "bpmEvents" not in beatmap
    assert all(set(n) == {"b", "r", "i"} for n in beatmap["colorNotes"])
    assert all(set(d) == {"x", "y", "c", "d", "a"} for d in beatmap["colorNotesData"])
    assert len(beatmap["colorNotesData"]) == len({tuple(sorted(d.items())) for d in beatmap["colorNotesData"]})
    _assert_read_back(gen, "regions")
    # the estimated map's two tempi, nothing after the audio's end (the reader keeps the last region's tempo there)
    (_, _, m0), (_, s1, m1) = gen.tempo.segments
    assert m0 == gen.bpm and m1 == pytest.approx(150, abs=0.1) and s1 < gen.duration_s


def test_a_constant_tempo_v4_level_reads_back_constant(songs, tmp_path):
    gen = _generate(songs / "short.ogg", tmp_path, difficulty="Expert", format="v4", align_grid=False)
    audio = json.loads((gen.folder / "BPMInfo.dat").read_text())
    assert len(audio["bpmData"]) == 1 and audio["bpmData"][0]["ei"] == audio["songSampleCount"]
    assert gen.tempo.is_constant and gen.tempo == TempoMap.from_regions(
        gen.bpm, [tuple(r[k] for k in ("si", "ei", "sb", "eb")) for r in audio["bpmData"]], audio["songFrequency"],
        audio["songSampleCount"])
    _assert_read_back(gen, "regions")
    assert read_level(gen.folder).get("Standard", "Expert").tempo.segments == [(0.0, 0.0, gen.bpm)]
    assert "constant" in gen.summary().splitlines()[0]


@pytest.mark.parametrize("format", ["v3", "v4"])
def test_the_grid_lead_in_puts_the_music_beats_on_whole_beats_and_reads_back(songs, tmp_path, format):
    """change.ogg's clicks start 0.237 s in: a one-beat lead-in, 120 BPM, a one-beat bridge, 150 BPM, every click
    (away from the change, whose time is an estimate) on a whole beat of the written map; the Info BPM stays
    the song's tempo."""
    gen = _generate(songs / "change.ogg", tmp_path, difficulty="Expert", format=format)
    (b0, s0, lead), (b1, s1, m1), (b2, s2, bridge), (b3, s3, m3) = gen.tempo.segments
    assert (b0, s0, b1) == (0.0, 0.0, 1.0) and s1 == pytest.approx(0.237 + 0.5, abs=0.025)  # beat 1 on a click
    assert gen.bpm == m1 == pytest.approx(120, abs=0.1) and m3 == pytest.approx(150, abs=0.1)
    assert b2 == round(b2) and b3 == b2 + 1 and abs(s2 - 20) <= 1.5
    clicks = TRUTH.seconds(np.arange(1, TRUTH.beats(39.0))) + 0.237
    clicks = clicks[np.abs(clicks - 20.237) > 2.0]
    beats = gen.tempo.beats(clicks)
    assert np.max(np.abs(beats - np.round(beats))) < 0.06  # within 1/16 beat, both tempi
    if format == "v3":
        info = json.loads((gen.folder / "Info.dat").read_text())
        doc = json.loads((gen.folder / "ExpertStandard.dat").read_text())
        assert info["_beatsPerMinute"] == gen.bpm
        assert doc["bpmEvents"] == [{"b": b, "m": m} for b, _, m in gen.tempo.segments]
    else:
        audio = json.loads((gen.folder / "BPMInfo.dat").read_text())
        assert [(r["sb"], r["eb"]) for r in audio["bpmData"]][:3] == [(0.0, 1.0), (1.0, b2), (b2, b3)]
    _assert_read_back(gen, "bpm_events" if format == "v3" else "regions")
    on_frames = frame_of(np.unique(gen.notes["time_s"]))
    assert np.array_equal(on_frames, gen.charts[0].peak_frames)  # the lead-in moves no note off its frame


def _objects(tempo: TempoMap) -> dict:
    """One or two records of every kind the v4 writer serialises, at beats of ``tempo``."""
    def records(kind, rows):
        out = np.zeros(len(rows), OBJECT_DTYPES[kind])
        for r, row in zip(out, rows):
            for key, value in row.items():
                r[key] = value
            r["time_s"] = tempo.seconds(r["beat"])
        return out

    return {
        "obstacles": records("obstacles", [dict(beat=2.0, duration_beats=1.5, x=0, y=0, width=1, height=5),
                                           dict(beat=6.5, duration_beats=0.25, x=3, y=2, width=1, height=3)]),
        "arcs": records("arcs", [dict(beat=4.0, x=1, y=0, direction=1, color=0, multiplier=1.0, tail_beat=5.0,
                                      tail_x=2, tail_y=1, tail_direction=0, mid_anchor=1, tail_multiplier=0.5)]),
        "chains": records("chains", [dict(beat=8.0, x=2, y=0, direction=1, color=1, tail_beat=8.5, tail_x=2,
                                          tail_y=2, slices=5, squish=0.8)]),
        "light_events": records("light_events", [dict(beat=0.0, type=1, value=3, float_value=1.0),
                                                 dict(beat=4.0, type=4, value=0, float_value=0.5)]),
        "boost_events": records("boost_events", [dict(beat=1.0, on=1), dict(beat=9.0, on=0)]),
    }


def test_v4_writer_round_trips_every_object_kind(tmp_path):
    tempo = TempoMap.from_bpm_events(128, [(8, 160)])
    rate, seconds = 22050, 6.0
    sf.write(tmp_path / "song.egg", np.zeros(int(rate * seconds), np.float32), rate, format="OGG", subtype="VORBIS")
    n = sf.info(str(tmp_path / "song.egg")).frames
    level_tempo = TempoMap.from_regions(128, tempo.to_regions(n, rate), rate, n)  # the reader knows the end
    notes = np.zeros(2, NOTE_DTYPE)
    notes["beat"], notes["column"], notes["color"], notes["direction"] = [4.0, 8.0], [1, 2], [0, 1], [1, 1]
    notes["time_s"] = level_tempo.seconds(notes["beat"])
    objects = _objects(level_tempo)
    files = {"Info.dat": dumps(v4.v4_info("t", 128, [("Hard", "HardStandard.dat")], seconds), pretty=True),
             "BPMInfo.dat": dumps(v4.v4_audio_data(tempo.to_regions(n, rate), n, rate)),
             "HardStandard.dat": dumps(v4.v4_beatmap(notes, objects)),
             "HardLightshow.dat": dumps(v4.v4_lightshow(objects))}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    diff = read_level(tmp_path).get("Standard", "Hard")
    assert diff.quarantine is None and diff.tempo == level_tempo
    assert np.array_equal(diff.notes["beat"], notes["beat"]) and np.array_equal(diff.notes["color"], notes["color"])
    for kind, expected in objects.items():
        back = diff.objects[kind]
        assert len(back) == len(expected), kind
        for field in expected.dtype.names:
            if field in ("frame", "end_frame", "tail_frame", "head_note", "tail_note", "time_s", "end_s",
                         "duration_s", "tail_time_s"):
                continue  # set by the reader / build-targets
            assert np.allclose(back[field], expected[field], atol=1e-6), (kind, field)
        assert np.allclose(back["time_s"], expected["time_s"], atol=1e-3), kind
    assert all(sum(drops.values()) == 0 for drops in diff.objects_drops.values())
    assert all(diff.objects_read[kind] == len(objects[kind]) for kind in objects)


def test_per_difficulty_thresholds_set_each_density(songs, tmp_path):
    placement, selection, p_ckpt, s_ckpt = tiny_models()
    # the random model's probabilities are all near 0.5: Easy's validated threshold keeps no peak, Expert's all
    p_ckpt = {**p_ckpt, "peak_picking": {**p_ckpt["peak_picking"], "thresholds": {"Easy": 0.999, "Expert": 0.0}}}
    gen = generate_level(songs / "short.ogg", placement, selection, p_ckpt, s_ckpt, difficulty=["Easy", "Expert"],
                         beam_size=1, out_dir=tmp_path)
    easy, expert = gen.charts
    assert (easy.threshold, expert.threshold) == (0.999, 0.0)
    assert len(easy.peak_frames) == 0 < len(expert.peak_frames)
    assert gen.exit_code == 2 and len(gen.warnings) == 1 and "no notes found for Easy" in gen.warnings[0]
    level = read_level(gen.folder)  # the empty difficulty is still written and listed
    assert len(level.get("Standard", "Easy").notes) == 0 and len(level.get("Standard", "Expert").notes) > 0


def test_difficulty_all_writes_five_difficulties_into_one_info_v2_and_v4(songs, tmp_path):
    gen = _generate(songs / "short.ogg", tmp_path / "v3", difficulty="all")
    info = json.loads((gen.folder / "Info.dat").read_text())
    entries = info["_difficultyBeatmapSets"][0]["_difficultyBeatmaps"]
    assert info["_version"] == "2.1.0" and [e["_difficulty"] for e in entries] == list(DIFFICULTIES)
    assert [e["_difficultyRank"] for e in entries] == [1, 3, 5, 7, 9]
    assert all((gen.folder / e["_beatmapFilename"]).is_file() for e in entries)
    _assert_read_back(gen, "bpm_events")
    # the CLI: --difficulty all --format v4, a summary line per difficulty, read back by mapkit inspect
    placement, selection, p_ckpt, s_ckpt = tiny_models()
    p = _save(tmp_path / "ddc" / "last.pt", placement, "placement", p_ckpt)
    s = _save(tmp_path / "transformer" / "last.pt", selection, "selection", s_ckpt)
    r = CliRunner().invoke(main, ["generate", str(songs / "short.ogg"), "--placement", str(p), "--selection", str(s),
                                  "--beam-size", "1", "--difficulty", "all", "--format", "v4",
                                  "--out", str(tmp_path / "v4")])
    assert r.exit_code == 0, r.output
    assert all(f"  {d}: {d}Standard.dat" in r.output for d in DIFFICULTIES)
    folder = tmp_path / "v4" / f"short{LEVEL_SUFFIX}"
    info = json.loads((folder / "Info.dat").read_text())
    assert [e["difficulty"] for e in info["difficultyBeatmaps"]] == list(DIFFICULTIES)
    level = read_level(folder)
    assert sorted(d.difficulty for d in level.difficulties) == sorted(DIFFICULTIES)
    assert all(d.quarantine is None and len(d.notes) > 0 for d in level.difficulties)
    r = CliRunner().invoke(main, ["inspect", str(folder)])
    assert r.exit_code == 0 and all(d in r.output for d in DIFFICULTIES), r.output
    # several --difficulty values; an unknown one is a usage error naming the valid ones
    r = CliRunner().invoke(main, ["generate", str(songs / "short.ogg"), "--placement", str(p), "--selection", str(s),
                                  "--difficulty", "Hard", "--difficulty", "Expert+", "--out", str(tmp_path / "two")])
    assert r.exit_code == 0, r.output
    assert sorted(d.difficulty for d in read_level(tmp_path / "two" / f"short{LEVEL_SUFFIX}").difficulties) == \
        ["ExpertPlus", "Hard"]
    r = CliRunner().invoke(main, ["generate", str(songs / "short.ogg"), "--difficulty", "Brutal"])
    assert r.exit_code == 64 and "ExpertPlus" in r.output
