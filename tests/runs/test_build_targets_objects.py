"""The whole level in the store: build-targets writes every object kind; validate proves them; corruptions are caught."""

import json
import shutil

import h5py
import numpy as np
import pytest

from mapkit.runs.build_targets import build_targets
from mapkit.datasets.store import Store, data_checksum
from mapkit.datasets.validation import validate_store
from mapkit.runs.extract import extract
from mapkit.preprocess.frame_events import FRAME_EVENT_CHANNELS
from mapkit.preprocess.objects import ATTR_DROPS, ATTR_KEPT, ATTR_READ, EVENT_BOX_JSON, OBJECT_DTYPES, OBJECT_KINDS
from mapkit.settings import TargetSettings
from tests.objects_levels import SR, seconds, write_v2, write_v3, write_v4

T = 601  # 6 s at 8 kHz
LENIENT = TargetSettings(max_drop_fraction=1.0)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("objects")
    inputs = root / "inputs"
    n = (T - 1) * SR // 100
    write_v2(inputs / "v2", n, seed=1)
    write_v3(inputs / "v3", n, seed=2)
    write_v4(inputs / "v4", n, seed=3)
    store = root / "store"
    assert extract(inputs, store=store, jobs=1, progress=False).exit_code == 0
    report = build_targets(inputs, store=store, settings=LENIENT, jobs=1, progress=False)
    assert report.exit_code == 0, report.summary()
    return store


def group_of(store, song, name="Standard/Expert"):
    e = Store(store).index("targets")[song]
    return e.shard, f"{e.group}/{name}"


def read_group(store, song):
    shard, group = group_of(store, song)
    with h5py.File(shard, "r") as f:
        g = f[group]
        return {k: g[k][()] for k in g}, dict(g.attrs)


def test_store_holds_every_kind_and_validates(built):
    report = validate_store(built, progress=False)
    assert report.ok, report.summary()
    assert report.counts["objects"] > 0
    data, attrs = read_group(built, "v4")
    for kind in OBJECT_KINDS:
        assert data[kind].dtype == OBJECT_DTYPES[kind] and len(data[kind]), kind
    w = data["obstacles"]
    assert w[["time_s", "frame", "end_s", "end_frame"]].tolist() == [(3.0, 300, 4.5, 450), (5.0, 500, 6.0, 600)]
    arc = data["arcs"][0]
    assert (arc["frame"], arc["tail_frame"], arc["head_note"], arc["tail_note"]) == (100, 450, 0, 2)
    assert data["chains"]["head_note"].tolist() == [1]  # the blue note at beat 10
    assert data["njs_events"]["frame"].tolist() == [200, round(seconds(9) * 100)]
    fe = data["frame_events"]
    assert fe.shape == (T, len(FRAME_EVENT_CHANNELS)) and fe.dtype == np.uint8
    assert json.loads(attrs[ATTR_KEPT]) == {k: len(data[k]) for k in OBJECT_KINDS}
    assert json.loads(attrs[ATTR_DROPS])["light_events"] == {"bad_index": 1}
    assert json.loads(attrs[ATTR_READ])["light_events"] == 3
    groups = data["event_box_groups"]
    raw = data[EVENT_BOX_JSON].tobytes()
    texts = [json.loads(raw[s:s + n]) for s, n in zip(groups["json_start"], groups["json_length"])]
    assert [t["g"] for t in texts] == [7, 8] and texts[0]["e"][0]["l"] == [{"b": 0, "i": 0}]


def test_v2_and_v3_levels_in_the_store(built):
    data, attrs = read_group(built, "v2")
    assert data["obstacles"]["frame"].tolist() == [50, 150, 250]
    assert json.loads(attrs[ATTR_DROPS])["obstacles"] == {"modded": 1, "negative_duration": 1}
    data, attrs = read_group(built, "v3")
    assert data["rotation_events"][["frame", "rotation"]].tolist() == [(200, 15.0)]
    assert json.loads(attrs[ATTR_DROPS])["chains"] == {"out_of_range": 1, "reversed": 1}


def test_every_new_dataset_is_checksummed(built):
    shard, group = group_of(built, "v4")
    with h5py.File(shard, "r") as f:
        g = f[group]
        for name in OBJECT_KINDS + (EVENT_BOX_JSON, "frame_events"):
            assert int(g[name].attrs["crc32"]) == data_checksum(f"/{group}/{name}".replace("//", "/"), g[name][()])


@pytest.fixture
def store(built, tmp_path):
    dst = tmp_path / "store"
    shutil.copytree(built, dst)
    return dst


def _edit(store, song, name, change):
    shard, group = group_of(store, song)
    with h5py.File(shard, "r+") as f:
        ds = f[group][name]
        values = ds[()]
        change(values)
        ds[...] = values


def _set(field, i, value):
    def change(r):
        r[field][i] = value
    return change


def _swap(r):
    r[[0, 1]] = r[[1, 0]]


def _flip(fe):
    fe[10, 5] ^= 1


def _break_json(b):
    b[0] = ord("[")


CORRUPTIONS = [
    ("obstacles", _set("frame", 0, 301), "object_frames"),
    ("obstacles", _set("end_frame", 1, T + 1), "object_frames"),
    ("obstacles", _set("duration_s", 0, -1.5), "objects"),
    ("arcs", _set("x", 0, 9), "objects"),
    ("arcs", _set("tail_note", 0, 0), "objects"),
    ("chains", _set("slices", 0, 0), "objects"),
    ("light_events", _swap, "objects"),
    ("boost_events", _set("on", 0, 2), "objects"),
    ("rotation_events", _set("beat", 0, 3.5), "object_times"),
    ("njs_events", _set("delta", 0, np.nan), "objects"),
    ("event_box_groups", _set("json_length", 0, 3), "objects"),
    (EVENT_BOX_JSON, _break_json, "objects"),
    ("frame_events", _flip, "frame_events"),
]


@pytest.mark.parametrize("name, change, check", CORRUPTIONS, ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(CORRUPTIONS)])
def test_seeded_corruption_is_named_by_its_check_and_by_the_checksum(store, name, change, check):
    _edit(store, "v4", name, change)
    report = validate_store(store, progress=False, checksums=False)
    assert report.checks_failed() == {check}, report.summary()
    assert all("v4/Standard/Expert" in p["where"] for p in report.problems)
    report = validate_store(store, progress=False)
    assert "checksum" in report.checks_failed()
    assert any(p["check"] == "checksum" and name in p["message"] for p in report.problems)


def test_edited_count_attribute_is_named(store):
    shard, group = group_of(store, "v4")
    with h5py.File(shard, "r+") as f:
        kept = json.loads(f[group].attrs[ATTR_KEPT])
        kept["arcs"] += 1
        f[group].attrs[ATTR_KEPT] = json.dumps(kept)
    report = validate_store(store, progress=False, checksums=False)
    assert report.checks_failed() == {"object_counts"}, report.summary()
    assert "checksum" in validate_store(store, progress=False).checks_failed()


def test_frame_events_of_another_shape_is_named(store):
    shard, group = group_of(store, "v4")
    with h5py.File(shard, "r+") as f:
        fe = f[group]["frame_events"][()]
        del f[group]["frame_events"]
        f[group].create_dataset("frame_events", data=fe[:, :13])
    report = validate_store(store, progress=False, checksums=False)
    assert report.checks_failed() == {"frame_events"}, report.summary()
