"""Fitting the object model on a small store of synthetic levels with every kind; the event thresholds."""

import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from mapkit.cli import main
from mapkit.datasets.store import Store
from mapkit.errors import MapkitError
from mapkit.preprocess.frame_events import FRAME_EVENT_CHANNELS
from mapkit.preprocess.density import DENSITY_PERCENTILES
from mapkit.preprocess.object_decoding import GENERATED_KINDS, ObjectPriors
from mapkit.runs.build_targets import build_targets
from mapkit.runs.extract import extract
from mapkit.settings import TargetSettings
from mapkit.train.objects import (RATE_CAP_PERCENTILE, event_thresholds, fit_object_priors, load_object_priors,
                                  training_songs)
from tests.objects_levels import SR, write_v2, write_v3, write_v4

T = 601  # 6 s at 8 kHz


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("objects-store")
    n = (T - 1) * SR // 100
    for i, write in enumerate((write_v2, write_v3, write_v4)):
        write(root / "in" / f"v{i + 2}", n, seed=i)
    assert extract(root / "in", store=root / "store", jobs=1, progress=False).exit_code == 0
    report = build_targets(root / "in", store=root / "store", settings=TargetSettings(max_drop_fraction=1.0),
                           jobs=1, progress=False)
    assert report.exit_code == 0, report.summary()
    return root / "store"


def stored(store):
    """Every Expert level's object datasets and notes, read with h5py directly."""
    out = {}
    for song, e in Store(store).index("targets").items():
        with h5py.File(e.shard, "r") as f:
            g = f[f"{e.group}/Standard/Expert"]
            out[song] = {k: g[k][()] for k in (*GENERATED_KINDS, "notes")}
            out[song]["light_drops"] = sum(json.loads(g.attrs["objects_drops_json"])["light_events"].values())
    return out


def test_priors_count_and_collect_every_training_level(store, tmp_path):
    out = tmp_path / "priors.json"
    priors = fit_object_priors(store, out, val_fraction=0.0)
    assert load_object_priors(out) == priors and ObjectPriors.from_json(out.read_text()).hash == priors.hash
    table = priors.difficulties["Expert"]
    levels = stored(store)
    assert table["levels"] == 3 and table["minutes"] == pytest.approx(3 * T / 100 / 60)
    for kind in GENERATED_KINDS:
        n = sum(len(lv[kind]) for lv in levels.values())
        assert table["rates"][kind] == pytest.approx(n / table["minutes"]), kind
        rates = [len(lv[kind]) / (T / 100 / 60) for lv in levels.values()]
        assert table["max_rates"][kind] == pytest.approx(max(np.percentile(rates, RATE_CAP_PERCENTILE), np.mean(rates)))
    walls = sorted(tuple(float(w[f]) for f in ("x", "y", "width", "height", "duration_beats"))
                   for lv in levels.values() for w in lv["obstacles"])
    assert sorted(map(tuple, table["walls"])) == walls
    long = np.sort([w[4] for w in walls if w[4] >= 1 / 16])  # the shortest generated wall: 5th percentile of these
    assert len(long) and table["wall_min_beats"] == long[int(0.05 * (len(long) - 1))]
    lights = sorted((float(e["type"]), float(e["value"]), float(e["float_value"]))
                    for lv in levels.values() for e in lv["light_events"])
    assert sorted(map(tuple, table["lights"])) == lights  # float32 values, exact in float64
    arcs = [a for lv in levels.values() for a in lv["arcs"] if a["head_note"] >= 0 and a["tail_note"] >= 0]
    assert len(table["arcs"]) == len(arcs) > 0 and all(row[0] >= 1 for row in table["arcs"])
    assert all(row[4] == pytest.approx(float(a["tail_beat"] - a["beat"])) for row, a in zip(table["arcs"], arcs))
    chains = [c for lv in levels.values() for c in lv["chains"]]
    assert sorted(r[0] for r in table["chains"]) == sorted(float(c["slices"]) for c in chains)
    frames = sum(len(np.unique(lv["light_events"]["frame"])) for lv in levels.values())
    assert sum(table["lights_per_frame"]) == frames
    boosts = [b for lv in levels.values() for b in lv["boost_events"]]
    assert table["boost_on_share"] == pytest.approx(np.mean([b["on"] for b in boosts]))
    note_rates = [len(np.unique(lv["notes"]["frame"])) / (T / 100) for lv in levels.values()]
    assert table["note_density"] == pytest.approx(list(np.percentile(note_rates, DENSITY_PERCENTILES)), abs=1e-6)
    from mapkit.preprocess.quality import level_metrics

    for metric in ("distinct_states", "top_state_share"):  # the variety band, as evaluate measures levels
        values = [level_metrics(lv["notes"], "Expert", T / 100).values[metric] for lv in levels.values()]
        assert table["variety"][metric] == pytest.approx(list(np.percentile(values, DENSITY_PERCENTILES)), abs=1e-6)
    nps = [level_metrics(lv["notes"], "Expert", T / 100).values["nps_mean"] for lv in levels.values()]
    assert table["nps_band"] == pytest.approx(list(np.percentile(nps, DENSITY_PERCENTILES)), abs=1e-6)


def test_validation_songs_are_left_out_and_the_cli_writes_the_model(store, tmp_path):
    train = training_songs(Store(store), 0.5, 0)
    assert 0 < len(train) < 3
    priors = fit_object_priors(store, tmp_path / "half.json", val_fraction=0.5)
    assert priors.difficulties["Expert"]["levels"] == len(train)
    out = tmp_path / "cli.json"
    r = CliRunner().invoke(main, ["train", "objects", "--store", str(store), "--out", str(out), "--val-fraction",
                                  "0"])
    assert r.exit_code == 0, r.output
    assert "Expert: 3 levels" in r.output and json.loads(out.read_text())["kind"] == "object_priors"
    r = CliRunner().invoke(main, ["train", "objects", "--store", str(tmp_path / "nothing")])
    assert r.exit_code == 1 and "build-targets" in r.output
    with pytest.raises(MapkitError, match="unreadable object model"):
        load_object_priors(tmp_path / "missing.json")


def test_evaluate_reports_light_events_per_minute_of_stored_levels(store):
    from mapkit.runs.evaluate import evaluate_store

    report = evaluate_store(store, audio=False)
    levels = stored(store)
    assert levels["v4"]["light_drops"] == 1  # the lightshow's bad index: read, not kept
    for item in report.items:
        if item.difficulty == "Expert":
            n = len(levels[item.song_id]["light_events"]) + levels[item.song_id]["light_drops"]  # as read, as walls
            assert item.metrics.values["lights_per_min"] == pytest.approx(n / (T / 100 / 60)), item.song_id


def test_event_thresholds_are_validated_for_channels_with_objects():
    k = len(FRAME_EVENT_CHANNELS)
    truth = np.zeros((500, k), np.uint8)
    wall = FRAME_EVENT_CHANNELS.index("wall_start")
    truth[[100, 200, 300], wall] = 1
    probs = np.full((500, k), 0.05, np.float32)
    probs[[100, 200, 300], wall] = 0.7
    probs[[150, 250], wall] = 0.4  # false peaks below the true ones
    th = event_thresholds([probs], [truth], FRAME_EVENT_CHANNELS, min_gap_frames=5, smoothing=0, tolerance_frames=2)
    assert set(th) == {"wall_start"}  # no other onset channel has objects
    assert 0.4 < th["wall_start"] <= 0.7


def test_presence_counts_the_levels_with_a_kind_and_their_own_rate():
    from mapkit.preprocess.object_decoding import GENERATED_KINDS
    from mapkit.train.objects import presence

    def rows(arcs):
        return {"counts": {k: (arcs if k == "arcs" else 0) for k in GENERATED_KINDS}}

    levels = [(2.0, rows(0)), (3.0, rows(30)), (1.0, rows(0)), (4.0, rows(20))]
    seen = presence(levels)
    assert seen["arcs"]["share"] == pytest.approx(0.5)
    assert seen["arcs"]["rate"] == pytest.approx(50 / 7)  # the two levels with arcs: 50 arcs in 7 minutes
    assert seen["arcs"]["max_rate"] >= seen["arcs"]["rate"]
    assert seen["chains"] == {"share": 0.0, "rate": 0.0, "max_rate": 0.0}
