"""mapkit generate with walls, arcs, chains and lights: the v3 round trip, the switches, the event-less checkpoint."""

import dataclasses
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from mapkit.cli import main
from mapkit.preprocess.frame_events import FRAME_EVENT_CHANNELS
from mapkit.preprocess.levels import read_level
from mapkit.preprocess.object_decoding import GENERATED_KINDS, ONSET_CHANNELS, ObjectPriors
from mapkit.preprocess.objects import OBJECT_KINDS, PLACED_FIELDS, normalise_objects, read_raw_objects
from mapkit.runs.evaluate import evaluate_generated
from mapkit.runs.generate import LEVEL_SUFFIX, generate_level
from mapkit.train.models import PLACEMENT_PRESETS, PlacementModel
from mapkit.writers.beatmap import difficulty_json, dumps
from tests.preprocess.test_beats import click_track
from tests.preprocess.test_object_decoding import PRIORS, TEMPO, decode, notes_every_half_second
from tests.runs.test_generate import SR, _save, tiny_models

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def comparable(records):
    """The fields a level file holds (frames and note links are set by build-targets)."""
    names = [f for f in records.dtype.names if f not in PLACED_FIELDS]
    return records[names]


def assert_same_objects(written: dict, back: dict):
    for kind, records in written.items():
        got = back[kind]
        assert len(got) == len(records), kind
        for name in comparable(records).dtype.names:
            assert np.allclose(got[name].astype(np.float64), records[name].astype(np.float64), atol=1e-6), (kind, name)


def test_every_decoded_object_survives_the_v3_file():
    notes = notes_every_half_second(row=2)
    objects = decode(notes)
    doc = json.loads(dumps(difficulty_json(notes, 120.0, objects)))
    assert {k: len(doc[k]) for k in ("obstacles", "sliders", "burstSliders", "basicBeatmapEvents",
                                     "colorBoostBeatmapEvents")} == {
        "obstacles": len(objects["obstacles"]), "sliders": len(objects["arcs"]), "burstSliders": len(objects["chains"]),
        "basicBeatmapEvents": len(objects["light_events"]), "colorBoostBeatmapEvents": len(objects["boost_events"])}
    assert all(isinstance(b["o"], bool) for b in doc["colorBoostBeatmapEvents"])
    records, read, drops = normalise_objects(read_raw_objects(doc, "3", "test.dat"), TEMPO)
    assert not any(drops.values())
    assert_same_objects(objects, records)


def event_models(seed=0):
    """The tiny models of test_generate with a stage 1 that has the event head and validated thresholds."""
    placement, selection, p_ckpt, s_ckpt = tiny_models(seed)
    torch.manual_seed(seed)
    config = dataclasses.replace(PLACEMENT_PRESETS["tiny"], n_classes=len(FRAME_EVENT_CHANNELS))
    events = PlacementModel(config).eval()
    events.load_state_dict(placement.state_dict(), strict=False)  # the same note head
    thresholds = {c: 0.0 for c in ONSET_CHANNELS.values()}
    p_ckpt = {**p_ckpt, "targets": "events", "event_peak_picking": {"thresholds": thresholds}}
    return events, selection, p_ckpt, s_ckpt


@pytest.fixture(scope="module")
def song(tmp_path_factory):
    d = tmp_path_factory.mktemp("songs")
    sf.write(d / "clicks.ogg", click_track(120.0, 8.0), SR, format="OGG", subtype="VORBIS")
    return d / "clicks.ogg"


def test_generated_objects_are_written_and_read_back_by_mapkit(song, tmp_path):
    placement, selection, p_ckpt, s_ckpt = event_models()
    priors = ObjectPriors({"Expert": PRIORS})
    # default decoding (sampling); seed 2 gives this untrained stage 2 a note with a cut direction for a chain
    gen = generate_level(song, placement, selection, p_ckpt, s_ckpt, difficulty="Hard",
                         out_dir=tmp_path, object_priors=priors, seed=2)
    assert set(gen.objects) == set(GENERATED_KINDS) and gen.notices == [] and gen.exit_code == 0
    assert all(len(gen.objects[k]) for k in GENERATED_KINDS)
    back = read_level(gen.folder).get("Standard", "Hard")
    assert_same_objects(gen.objects, back.objects)
    assert {k: len(back.objects[k]) for k in OBJECT_KINDS if k not in GENERATED_KINDS} == {
        k: 0 for k in OBJECT_KINDS if k not in GENERATED_KINDS}
    assert np.array_equal(back.notes["beat"], gen.notes["beat"])
    for w in gen.objects["obstacles"]:  # no wall over a note of the level
        hit = gen.notes[(gen.notes["time_s"] >= w["time_s"] - 0.15) & (gen.notes["time_s"] <= w["end_s"] + 0.15)]
        assert not ((hit["column"] >= w["x"]) & (hit["column"] < w["x"] + w["width"]) & (hit["row"] >= w["y"])
                    & (hit["row"] < w["y"] + w["height"])).any()
    report = evaluate_generated(gen)  # what the player gets, read from the folder
    assert report.items[0].metrics.values["lights_per_min"] == pytest.approx(
        len(gen.objects["light_events"]) * 60 / report.items[0].metrics.values["duration_s"])
    assert report.items[0].metrics.values["walls_per_min"] > 0
    again = generate_level(song, placement, selection, p_ckpt, s_ckpt, difficulty="Hard",
                           out_dir=tmp_path / "again", object_priors=priors, seed=2)
    assert all(np.array_equal(gen.objects[k], again.objects[k]) for k in GENERATED_KINDS)


def test_cli_switches_remove_kinds_and_an_event_less_checkpoint_warns(song, tmp_path):
    placement, selection, p_ckpt, s_ckpt = event_models()
    p = _save(tmp_path / "ddc.pt", placement, "placement", p_ckpt)
    s = _save(tmp_path / "tr.pt", selection, "selection", s_ckpt)
    priors = tmp_path / "priors.json"
    priors.write_text(ObjectPriors({"Expert": PRIORS}).to_json())
    base = ["generate", str(song), "--placement", str(p), "--selection", str(s), "--beam-size", "2",
            "--objects", str(priors)]
    r = CliRunner().invoke(main, base + ["--out", str(tmp_path / "a"), "--no-walls", "--no-lights"])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "a" / f"clicks{LEVEL_SUFFIX}" / "ExpertStandard.dat").read_text())
    assert doc["obstacles"] == doc["basicBeatmapEvents"] == doc["colorBoostBeatmapEvents"] == []
    r = CliRunner().invoke(main, base + ["--out", str(tmp_path / "b"), "--no-arcs", "--no-chains"])
    doc = json.loads((tmp_path / "b" / f"clicks{LEVEL_SUFFIX}" / "ExpertStandard.dat").read_text())
    assert r.exit_code == 0 and doc["sliders"] == doc["burstSliders"] == [] and doc["basicBeatmapEvents"]
    r = CliRunner().invoke(main, base[:-1] + [str(tmp_path / "missing.json"), "--out", str(tmp_path / "c")])
    assert r.exit_code == 1 and "missing.json" in r.output
    plain, _, plain_ckpt, _ = tiny_models()
    p2 = _save(tmp_path / "plain.pt", plain, "placement", plain_ckpt)
    r = CliRunner().invoke(main, base[:2] + ["--placement", str(p2), "--selection", str(s), "--objects", str(priors),
                                             "--out", str(tmp_path / "d")])
    assert r.exit_code == 0 and "--targets events" in r.output, r.output
    doc = json.loads((tmp_path / "d" / f"clicks{LEVEL_SUFFIX}" / "ExpertStandard.dat").read_text())
    assert doc["obstacles"] == doc["sliders"] == doc["basicBeatmapEvents"] == []


def test_each_difficulty_is_brought_into_its_human_density_band(song, tmp_path):
    placement, selection, p_ckpt, s_ckpt = event_models()
    bands = {"Easy": [0.5, 1.0], "Expert": [1.5, 2.0]}  # at the validated threshold: 2.75 and 2.6 a second
    priors = ObjectPriors({d: {**PRIORS, "note_density": band} for d, band in bands.items()})
    gen = generate_level(song, placement, selection, p_ckpt, s_ckpt, difficulty=["Easy", "Expert"],
                         out_dir=tmp_path, object_priors=priors)
    for chart in gen.charts:
        low, high = bands[chart.difficulty]
        assert low <= len(chart.peak_frames) / gen.duration_s <= high, chart.difficulty
    easy = gen.charts[0]
    assert easy.threshold != easy.validated_threshold and "human density band" in gen.summary()
    fixed = generate_level(song, placement, selection, p_ckpt, s_ckpt, difficulty=["Easy", "Expert"],
                           out_dir=tmp_path / "fixed", object_priors=priors, threshold=0.3)
    assert [c.threshold for c in fixed.charts] == [0.3, 0.3]  # a threshold the user gives is kept


def test_an_empty_object_model_and_a_device_torch_lacks_are_named(song, tmp_path):
    placement, selection, p_ckpt, s_ckpt = event_models()
    p = _save(tmp_path / "ddc.pt", placement, "placement", p_ckpt)
    s = _save(tmp_path / "tr.pt", selection, "selection", s_ckpt)
    empty = tmp_path / "empty.json"
    empty.write_text(ObjectPriors({}).to_json())
    base = ["generate", str(song), "--placement", str(p), "--selection", str(s)]
    r = CliRunner().invoke(main, base + ["--objects", str(empty), "--out", str(tmp_path / "a")])
    assert r.exit_code == 0 and "no fitted difficulty" in r.output, r.output
    for device in ("banana", "cuda:0" if not torch.cuda.is_available() else "banana"):
        r = CliRunner().invoke(main, base + ["--device", device, "--out", str(tmp_path / "b")])
        assert r.exit_code == 1 and f"--device {device}" in r.output and "Traceback" not in r.output, r.output
        assert not (tmp_path / "b").exists()


def test_a_level_above_the_human_notes_per_second_gets_fewer_note_times(song, tmp_path):
    from mapkit.preprocess.quality import level_metrics

    placement, selection, p_ckpt, s_ckpt = event_models()
    wide = {**PRIORS, "note_density": [0.1, 100.0]}
    kw = dict(difficulty="Expert", out_dir=tmp_path, seed=0)
    level = generate_level(song, placement, selection, p_ckpt, s_ckpt, object_priors=ObjectPriors({"Expert": wide}),
                           name="free", **kw)
    free, seconds = level.charts[0], level.duration_s
    nps = level_metrics(free.notes, "Expert", seconds).values["nps_mean"]
    high = nps / 2  # half the notes per second the level has without the band
    capped = generate_level(song, placement, selection, p_ckpt, s_ckpt, name="capped",
                            object_priors=ObjectPriors({"Expert": {**wide, "nps_band": [0.0, high]}}), **kw).charts[0]
    assert capped.threshold > free.threshold
    assert len(capped.peak_frames) <= len(free.peak_frames) * high / nps  # the times cut in proportion
    assert level_metrics(capped.notes, "Expert", seconds).values["nps_mean"] < nps
    inside = generate_level(song, placement, selection, p_ckpt, s_ckpt, name="inside",
                            object_priors=ObjectPriors({"Expert": {**wide, "nps_band": [0.0, 2 * nps]}}),
                            **kw).charts[0]
    assert inside.threshold == free.threshold and np.array_equal(inside.notes, free.notes)  # in band: one pass
