"""mapkit generate: tempo, snapping, the level it writes and its read-back, checkpoints, the CLI, the bench."""

import json
import math
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from mapkit.cli import main
from mapkit.errors import MapkitError
from mapkit.runs.generate import LEVEL_SUFFIX, generate, generate_level
from mapkit.preprocess.difficulties import DIFFICULTY_SPECS
from mapkit.preprocess.levels import read_level
from mapkit.preprocess.targets import Vocabulary
from mapkit.preprocess.timebase import frame_of
from mapkit.settings import FeatureSettings
from mapkit.train.loop import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, save_checkpoint
from mapkit.train.models import PLACEMENT_PRESETS, PlacementModel, SelectionConfig, SelectionModel
from tests.preprocess.test_beats import click_track

SR = 22050
ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- generation with tiny models


VOCAB = Vocabulary.from_counts({
    (1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 0, 0): 50,  # red down bottom-left, blue down top-right
    (0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0): 40,
    (0, 0, 0, 0, 19, 0, 0, 0, 0, 0, 0, 0): 30,  # a bomb
    (0, 0, 11, 0, 0, 0, 0, 0, 0, 0, 0, 0): 20,
    (9, 0, 0, 18, 0, 0, 0, 0, 0, 0, 0, 0): 10,
}, size=5)


def _stats(settings=FeatureSettings()):
    # rough log-mel statistics: the exact values only shift the random models' outputs
    n_ffts = len(settings.placement_n_ffts)
    return {"placement": {"mean": [[-8.0] * settings.placement_n_mels] * n_ffts,
                          "std": [[4.0] * settings.placement_n_mels] * n_ffts},
            "selection": {"mean": [-8.0] * settings.selection_n_mels, "std": [4.0] * settings.selection_n_mels}}


def tiny_models(seed=0):
    torch.manual_seed(seed)
    placement = PlacementModel(PLACEMENT_PRESETS["tiny"]).eval()
    selection = SelectionModel(SelectionConfig(vocab_size=len(VOCAB), d_model=32, n_encoder_layers=1,
                                               n_decoder_layers=1, n_heads=2, d_ff=64)).eval()
    with torch.no_grad():  # peaky outputs, so the decoders' choices differ between steps
        selection.out.weight.mul_(8.0)
    settings = FeatureSettings()
    common = {"stats": _stats(settings), "feature_settings_json": settings.to_json(),
              "feature_settings_hash": settings.hash}
    # threshold 0: every local maximum at least 25 frames from a higher one is a note
    p_ckpt = {**common, "window": 100, "peak_picking": {"threshold": 0.0, "smoothing": 0, "min_gap_frames": 25}}
    s_ckpt = {**common, "vocab": VOCAB.to_json()}
    return placement, selection, p_ckpt, s_ckpt


@pytest.fixture(scope="module")
def song(tmp_path_factory):
    """A 6-second click track at 120 BPM as Ogg Vorbis (copied into the level) and as WAV (re-encoded)."""
    d = tmp_path_factory.mktemp("songs")
    y = click_track(120.0, 6.0)
    sf.write(d / "clicks.ogg", y, SR, format="OGG", subtype="VORBIS")
    sf.write(d / "clicks.wav", y, SR)
    return d


@pytest.fixture(scope="module")
def generated(song, tmp_path_factory):
    placement, selection, p_ckpt, s_ckpt = tiny_models()
    out = tmp_path_factory.mktemp("out")
    return generate_level(song / "clicks.ogg", placement, selection, p_ckpt, s_ckpt, difficulty="Expert",
                          beam_size=4, out_dir=out)


def test_level_folder_and_zip_hold_the_generated_notes(generated):
    gen = generated
    assert gen.folder.is_dir() and gen.zip_path.is_file()
    assert gen.folder.name == f"clicks{LEVEL_SUFFIX}"
    assert len(gen.peak_frames) > 10 and len(gen.notes) >= len(gen.peak_frames)
    assert gen.bpm == pytest.approx(120.0, abs=0.05)
    assert np.all(gen.notes["time_s"] >= 0) and np.all(gen.notes["time_s"] < gen.duration_s)
    # every note plays on exactly its stage-1 frame, within the snap tolerance of its centre
    times = np.unique(gen.notes["time_s"])
    assert len(times) == len(gen.peak_frames)
    assert np.array_equal(frame_of(times), gen.peak_frames)
    assert np.all(np.abs(times - gen.peak_frames / 100.0) <= 0.010 + 1e-9)
    assert gen.snapped.any()
    for path in (gen.folder, gen.zip_path):
        level = read_level(path)
        assert level.quarantine is None and level.bpm == gen.bpm and level.song_time_offset == 0
        diff = level.get("Standard", "Expert")
        assert diff is not None and diff.quarantine is None and diff.n_dropped == 0
        assert diff.declared_version == "3.3.0" and diff.njs == DIFFICULTY_SPECS["Expert"].njs
        back = diff.notes
        assert len(back) == len(gen.notes)
        assert np.array_equal(back["beat"], gen.notes["beat"])
        assert np.allclose(back["time_s"], gen.notes["time_s"], atol=1e-3)
        for key in ("column", "row", "color", "direction"):
            assert np.array_equal(back[key], gen.notes[key]), key


def test_level_files_are_valid_v2_info_and_v3_difficulty(generated):
    folder = generated.folder
    with zipfile.ZipFile(generated.zip_path) as z:
        names = sorted(z.namelist())
        assert all("/" not in n for n in names)  # files at the zip root
        assert {n: z.read(n) for n in names} == {n: (folder / n).read_bytes() for n in names}
    assert names == sorted(["Info.dat", "ExpertStandard.dat", "song.egg", "cover.png"])
    info = json.loads((folder / "Info.dat").read_text())
    assert info["_version"] == "2.1.0" and info["_songTimeOffset"] == 0 and info["_beatsPerMinute"] > 0
    assert info["_songFilename"] == "song.egg" and info["_coverImageFilename"] == "cover.png"
    entry = info["_difficultyBeatmapSets"][0]["_difficultyBeatmaps"][0]
    assert info["_difficultyBeatmapSets"][0]["_beatmapCharacteristicName"] == "Standard"
    assert entry["_difficulty"] == "Expert" and entry["_beatmapFilename"] == "ExpertStandard.dat"
    assert 0 <= entry["_beatmapColorSchemeIdx"] < len(info["_colorSchemes"])
    assert 0 <= entry["_environmentNameIdx"] < len(info["_environmentNames"])
    raw = (folder / "ExpertStandard.dat").read_bytes()
    assert raw.startswith(b'{"version":"3.3.0"')  # no whitespace after the colon (docs/formats.md §1.4)
    diff = json.loads(raw)
    for key in ("bpmEvents", "rotationEvents", "colorNotes", "bombNotes", "obstacles", "sliders", "burstSliders",
                "basicBeatmapEvents", "colorBoostBeatmapEvents", "lightColorEventBoxGroups",
                "lightRotationEventBoxGroups", "lightTranslationEventBoxGroups"):
        assert isinstance(diff[key], list), key
    # the clicks start 0.237 s in: a one-beat lead-in tempo at beat 0 puts them on whole beats from beat 1
    assert diff["bpmEvents"] == [{"b": 0.0, "m": m} if b == 0 else {"b": b, "m": m}
                                 for b, _, m in generated.tempo.segments]
    assert len(diff["bpmEvents"]) == 2 and diff["bpmEvents"][1] == {"b": 1.0, "m": generated.bpm}
    assert diff["useNormalEventsAsCompatibleEvents"] is True
    assert diff["colorNotes"] and all(set(n) == {"b", "x", "y", "c", "d", "a"} for n in diff["colorNotes"])
    assert all(set(n) == {"b", "x", "y"} for n in diff["bombNotes"])
    assert all(0 <= n["x"] <= 3 and 0 <= n["y"] <= 2 and n["c"] in (0, 1) and 0 <= n["d"] <= 8
               for n in diff["colorNotes"])
    assert (folder / "cover.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_song_egg_is_the_ogg_input_or_a_vorbis_encoding_of_other_formats(song, generated, tmp_path):
    assert (generated.folder / "song.egg").read_bytes() == (song / "clicks.ogg").read_bytes()
    placement, selection, p_ckpt, s_ckpt = tiny_models()
    gen = generate_level(song / "clicks.wav", placement, selection, p_ckpt, s_ckpt, beam_size=2, out_dir=tmp_path)
    info = sf.info(str(gen.folder / "song.egg"))
    assert (info.format, info.subtype) == ("OGG", "VORBIS")
    assert info.frames == sf.info(str(song / "clicks.wav")).frames and info.samplerate == SR
    assert len(gen.notes) > 0


def test_no_snap_keeps_exact_frame_times(song, tmp_path):
    placement, selection, p_ckpt, s_ckpt = tiny_models()
    gen = generate_level(song / "clicks.ogg", placement, selection, p_ckpt, s_ckpt, beam_size=2, snap=False,
                         out_dir=tmp_path, align_grid=False)  # 120 BPM from 0 s: every frame time is a short beat
    assert not gen.snapped.any()
    assert np.allclose(np.unique(gen.notes["time_s"]), gen.peak_frames / 100.0, atol=1e-9)
    back = read_level(gen.folder).get("Standard", "Expert").notes
    assert np.allclose(back["time_s"], gen.notes["time_s"], atol=1e-6)


def test_cached_and_full_decoding_give_the_same_level(song, tmp_path):
    placement, selection, p_ckpt, s_ckpt = tiny_models(seed=3)
    kw = dict(difficulty="Hard", beam_size=3, out_dir=tmp_path)
    a = generate_level(song / "clicks.ogg", placement, selection, p_ckpt, s_ckpt, use_cache=True, name="a", **kw)
    b = generate_level(song / "clicks.ogg", placement, selection, p_ckpt, s_ckpt, use_cache=False, name="b", **kw)
    assert np.array_equal(a.notes, b.notes) and a.score == pytest.approx(b.score, abs=1e-4)
    assert (tmp_path / "a" / "HardStandard.dat").read_bytes() == (tmp_path / "b" / "HardStandard.dat").read_bytes()


def test_temperature_sampling_is_seeded_and_differs_from_beam_search(song, tmp_path, generated):
    placement, selection, p_ckpt, s_ckpt = tiny_models()
    kw = dict(temperature=2.0, out_dir=tmp_path)
    a = generate_level(song / "clicks.ogg", placement, selection, p_ckpt, s_ckpt, seed=1, name="a", **kw)
    b = generate_level(song / "clicks.ogg", placement, selection, p_ckpt, s_ckpt, seed=1, name="b", **kw)
    c = generate_level(song / "clicks.ogg", placement, selection, p_ckpt, s_ckpt, seed=2, name="c", **kw)
    assert np.array_equal(a.notes, b.notes)
    assert np.array_equal(np.unique(a.notes["time_s"]), np.unique(generated.notes["time_s"]))  # same stage 1
    assert not np.array_equal(a.notes, c.notes)


def test_bad_inputs_are_named(song, tmp_path):
    placement, selection, p_ckpt, s_ckpt = tiny_models()
    with pytest.raises(MapkitError, match="unknown difficulty"):
        generate_level(song / "clicks.ogg", placement, selection, p_ckpt, s_ckpt, difficulty="Insane",
                       out_dir=tmp_path)
    with pytest.raises(MapkitError, match="does not exist"):
        generate_level(tmp_path / "nope.ogg", placement, selection, p_ckpt, s_ckpt, out_dir=tmp_path)
    with pytest.raises(MapkitError, match="vocabulary"):
        other = dict(s_ckpt, vocab=Vocabulary.from_counts({(1,) + (0,) * 11: 1}, 1).to_json())
        generate_level(song / "clicks.ogg", placement, selection, p_ckpt, other, out_dir=tmp_path)
    no_threshold = dict(p_ckpt, peak_picking=dict(p_ckpt["peak_picking"], threshold=None))
    with pytest.raises(MapkitError, match="threshold"):
        generate_level(song / "clicks.ogg", placement, selection, no_threshold, s_ckpt, out_dir=tmp_path)
    gen = generate_level(song / "clicks.ogg", placement, selection, no_threshold, s_ckpt, threshold=0.0,
                         beam_size=1, out_dir=tmp_path)
    assert len(gen.peak_frames) > 0
    (tmp_path / "empty.ogg").write_bytes(b"")
    with pytest.raises(MapkitError, match="empty file"):
        generate_level(tmp_path / "empty.ogg", placement, selection, p_ckpt, s_ckpt, out_dir=tmp_path)


# --------------------------------------------------------------------------- checkpoints and the command


def test_missing_checkpoints_are_named_with_the_commands_that_make_them(song, tmp_path):
    p, s = tmp_path / "runs" / "ddc" / "last.pt", tmp_path / "runs" / "transformer" / "last.pt"
    with pytest.raises(MapkitError) as e:
        generate(song / "clicks.ogg", placement=p, selection=s, out_dir=tmp_path)
    msg = str(e.value)
    assert str(p) in msg and str(s) in msg
    assert f"mapkit train ddc --out {p.parent}" in msg and f"mapkit train transformer --out {s.parent}" in msg
    s.parent.mkdir(parents=True)
    s.write_bytes(b"x")
    with pytest.raises(MapkitError) as e:
        generate(song / "clicks.ogg", placement=p, selection=s, out_dir=tmp_path)
    assert str(p) in str(e.value) and "transformer" not in str(e.value)
    r = CliRunner().invoke(main, ["generate", str(song / "clicks.ogg"), "--placement", str(p),
                                  "--selection", str(s), "--out", str(tmp_path)])
    assert r.exit_code == 1 and "mapkit train ddc" in r.output


def _save(path, model, kind, extras):
    ckpt = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "model_kind": kind,
            "stage": "ddc" if kind == "placement" else "transformer", "model_config": model.config.to_json(),
            "model": model.state_dict(), **extras}
    return save_checkpoint(path, ckpt)


def test_cli_generates_from_checkpoints(song, tmp_path, generated):
    placement, selection, p_ckpt, s_ckpt = tiny_models()
    p = _save(tmp_path / "ddc" / "last.pt", placement, "placement", p_ckpt)
    s = _save(tmp_path / "transformer" / "last.pt", selection, "selection", s_ckpt)
    r = CliRunner().invoke(main, ["generate", str(song / "clicks.ogg"), "--placement", str(p), "--selection",
                                  str(s), "--beam-size", "4", "--out", str(tmp_path / "gen")])
    assert r.exit_code == 0, r.output
    folder = tmp_path / "gen" / f"clicks{LEVEL_SUFFIX}"
    assert str(folder) in r.output and "BPM" in r.output
    back = read_level(folder).get("Standard", "Expert").notes
    assert np.array_equal(back, read_level(generated.folder).get("Standard", "Expert").notes)
    assert (tmp_path / "gen" / f"clicks{LEVEL_SUFFIX}.zip").is_file()
    # a checkpoint of the other stage in the wrong place is refused with its path
    r = CliRunner().invoke(main, ["generate", str(song / "clicks.ogg"), "--placement", str(s), "--selection",
                                  str(p), "--out", str(tmp_path / "gen")])
    assert r.exit_code == 1 and str(s) in r.output


def test_bench_prints_the_split_by_stage(song):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "generate.py"), "--song", str(song / "clicks.ogg"),
                          "--preset", "tiny", "--runs", "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for stage in ("features", "tempo", "stage1", "peaks", "stage2", "writing", "total"):
        assert stage in out.stdout, stage
    total = [line for line in out.stdout.splitlines() if line.strip().startswith("total")][0]
    assert math.isfinite(float(total.split()[1]))


def test_a_song_without_notes_is_written_with_a_warning_and_exit_2(tmp_path):
    placement, selection, p_ckpt, s_ckpt = tiny_models()
    p_ckpt = dict(p_ckpt, peak_picking=dict(p_ckpt["peak_picking"], threshold=0.999))  # above what it outputs
    p = _save(tmp_path / "ddc" / "last.pt", placement, "placement", p_ckpt)
    s = _save(tmp_path / "transformer" / "last.pt", selection, "selection", s_ckpt)
    sf.write(tmp_path / "blip.wav", np.full(1, 0.1, np.float32), SR)  # a one-sample song: one frame
    gen = generate(tmp_path / "blip.wav", placement=p, selection=s, out_dir=tmp_path / "lib")
    assert len(gen.notes) == 0 and len(gen.warnings) == 1 and gen.warnings[0].startswith("no notes found")
    assert "blip.wav" in gen.warnings[0]
    r = CliRunner().invoke(main, ["generate", str(tmp_path / "blip.wav"), "--placement", str(p),
                                  "--selection", str(s), "--out", str(tmp_path / "cli")])
    assert r.exit_code == 2, r.output
    assert "warning: no notes found" in r.stderr and "no notes found" not in r.stdout
    folder = tmp_path / "cli" / f"blip{LEVEL_SUFFIX}"
    assert str(folder) in r.stdout
    diff = read_level(folder).get("Standard", "Expert")
    assert diff is not None and diff.quarantine is None and len(diff.notes) == 0
    with zipfile.ZipFile(tmp_path / "cli" / f"blip{LEVEL_SUFFIX}.zip") as z:
        assert z.testzip() is None
    # a song with notes has no warning and exits 0 (test_cli_generates_from_checkpoints)


def test_song_name_from_tags_or_info_file_no_overwrite_without_force_and_short_beats(song, tmp_path):
    placement, selection, p_ckpt, s_ckpt = tiny_models()
    y = click_track(123.7, 6.0)  # beats of frame times at this tempo are long decimals unless rounded
    tagged = tmp_path / "track01.ogg"
    with sf.SoundFile(tagged, "w", SR, 1, format="OGG", subtype="VORBIS") as f:
        f.title, f.artist = "Chaos God", "Muldjord"
        f.write(y)
    kw = dict(beam_size=2, out_dir=tmp_path / "out", snap=False)
    gen = generate_level(tagged, placement, selection, p_ckpt, s_ckpt, **kw)
    info = json.loads((gen.folder / "Info.dat").read_text())
    assert (info["_songName"], info["_songAuthorName"]) == ("Chaos God", "Muldjord")
    assert gen.bpm != round(gen.bpm)
    beats = [n["b"] for n in json.loads((gen.folder / "ExpertStandard.dat").read_text())["colorNotes"]]
    assert beats and all(b == round(b, 9) and len(repr(b)) <= 14 for b in beats), beats
    assert set(frame_of(gen.notes["time_s"]).tolist()) == set(gen.peak_frames.tolist())  # same frames
    # an existing level is not replaced without force, and nothing is touched
    before = (gen.folder / "Info.dat").stat().st_mtime_ns
    with pytest.raises(MapkitError, match="already exists.*--force"):
        generate_level(tagged, placement, selection, p_ckpt, s_ckpt, **kw)
    assert (gen.folder / "Info.dat").stat().st_mtime_ns == before
    assert generate_level(tagged, placement, selection, p_ckpt, s_ckpt, force=True, **kw).folder == gen.folder
    # from a level folder: the source level's info file names the song
    level = tmp_path / "My Level"
    level.mkdir()
    (level / "song.ogg").write_bytes((song / "clicks.ogg").read_bytes())
    (level / "Info.dat").write_text(json.dumps({"_version": "2.0.0", "_songName": "Real Title",
                                                "_songAuthorName": "Real Artist", "_beatsPerMinute": 120,
                                                "_songFilename": "song.ogg", "_difficultyBeatmapSets": []}))
    gen = generate_level(level, placement, selection, p_ckpt, s_ckpt, **kw)
    info = json.loads((gen.folder / "Info.dat").read_text())
    assert (info["_songName"], info["_songAuthorName"]) == ("Real Title", "Real Artist")
    # the file name when there is nothing better
    gen = generate_level(song / "clicks.wav", placement, selection, p_ckpt, s_ckpt, **kw)
    assert json.loads((gen.folder / "Info.dat").read_text())["_songName"] == "clicks"


def test_default_decoding_samples_with_the_flow_constraint(song, tmp_path):
    from mapkit.preprocess.parity import parity_errors
    from mapkit.preprocess.quality import vision_blocked

    placement, selection, p_ckpt, s_ckpt = tiny_models()
    kw = dict(out_dir=tmp_path, seed=0, temperature=2.0)
    free = generate_level(song / "clicks.ogg", placement, selection, p_ckpt, s_ckpt, flow=False, name="free", **kw)
    kept = generate_level(song / "clicks.ogg", placement, selection, p_ckpt, s_ckpt, name="kept", **kw)

    def errors(notes):
        return sum(h["errors"] for h in parity_errors(notes).values())

    assert errors(free.notes) > 0 and free.flow_violations == 0  # nothing counted without the constraint
    assert errors(kept.notes) == kept.flow_violations == 0
    assert len(vision_blocked(kept.notes, "Expert")) == 0
    r = CliRunner().invoke(main, ["generate", str(song / "clicks.ogg"), "--beam-size", "2", "--top-p", "0.9"])
    assert r.exit_code == 64 and "--beam-size" in r.output


def test_a_stage_1_that_reads_the_beat_phase_generates_from_the_songs_own_beat(song, tmp_path):
    import dataclasses

    from mapkit.preprocess.beats import placement_envelope, song_beat_inputs
    from mapkit.preprocess.features import song_features
    from mapkit.runs.generate import _note_probabilities, _song_source
    from mapkit.train.checkpoints import PlacementSetup

    _, selection, p_ckpt, s_ckpt = tiny_models()
    torch.manual_seed(1)
    placement = PlacementModel(dataclasses.replace(PLACEMENT_PRESETS["tiny"], beat_periods=(0.5, 1.0, 2.0))).eval()
    level = generate_level(song / "clicks.ogg", placement, selection, p_ckpt, s_ckpt, difficulty="Expert",
                           out_dir=tmp_path, seed=0)
    assert len(level.notes) > 0
    setup = PlacementSetup.from_checkpoint(p_ckpt)
    feats = song_features(_song_source(song / "clicks.ogg"), setup.feature_settings)
    beat = song_beat_inputs(placement_envelope(feats.placement, setup.feature_settings), (0.5, 1.0, 2.0))
    probs = _note_probabilities(placement, setup, feats.placement, "Expert")
    from mapkit.train.ddc import predict_probabilities

    direct = predict_probabilities(placement, feats.placement, 3, setup.mean, setup.std,
                                   setup.feature_settings.silence_value, setup.window, beat=beat)
    assert np.array_equal(probs, direct)  # generation reads the phase of the song's own estimated beat
