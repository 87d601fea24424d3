"""The whole level for training: frame_events windows, the object stream, and `train ddc --targets events`."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mapkit.cli import main
from mapkit.datasets.object_stream import ObjectStreamDataset
from mapkit.datasets.torch_datasets import PlacementDataset
from mapkit.preprocess.frame_events import FRAME_EVENT_CHANNELS, STREAM_KINDS
from mapkit.train.ddc import DDCStage, ddc_config
from mapkit.train.events import channel_counts, channel_metrics, event_pos_weights
from mapkit.train.loop import load_checkpoint
from mapkit.datasets.store import Store
from tests.tiny_store import VAL_SONG, build_tiny_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_tiny_store(tmp_path_factory.mktemp("tiny-events"))


def test_placement_windows_carry_the_frame_events_of_their_frames(store):
    ds = PlacementDataset(store, window=64, jitter=False, frame_events=True)
    plain = PlacementDataset(store, window=64, jitter=False)
    try:
        item = ds[3]
        assert "frame_events" not in plain[3]
        fe = item["frame_events"]
        assert fe.shape == (64, len(FRAME_EVENT_CHANNELS)) and fe.dtype == torch.float32
        li, start = int(item["level"]), int(item["start"])
        stored = ds.level_frame_events(li)[start:start + 64]
        assert np.array_equal(fe.numpy(), stored.astype(np.float32))
        # the note channels agree with frame_class: red/blue/bomb frames are the classes' frames
        classes = item["frame_class"].numpy()
        assert np.array_equal(fe[:, :3].sum(1).numpy() > 0, classes > 0)
        frac = ds.event_fractions()
        assert frac.shape == (len(FRAME_EVENT_CHANNELS),) and frac[0] > 0 and frac[3] == 0  # no walls in the demo
    finally:
        ds.close()
        plain.close()


def test_object_stream_items_are_time_ordered_and_index_the_records(store):
    ds = ObjectStreamDataset(store)
    try:
        item = ds[0]
        assert torch.all(item["time_s"][1:] >= item["time_s"][:-1])
        notes, objects = ds.records(0)
        kinds = item["kind"].numpy()
        n_notes = int((kinds == STREAM_KINDS.index("notes")).sum())
        n_lights = int((kinds == STREAM_KINDS.index("light_events")).sum())
        assert n_notes == len(notes) and n_lights == len(objects["light_events"]) > 0
        for k, i, t in zip(kinds.tolist(), item["index"].tolist(), item["time_s"].tolist()):
            records = notes if STREAM_KINDS[k] == "notes" else objects[STREAM_KINDS[k]]
            assert records["time_s"][i] == t
        assert item["src"].shape == (len(kinds), 100) and torch.isfinite(item["src"]).all()
        only_lights = ObjectStreamDataset(store, kinds=["light_events"])[0]
        assert set(only_lights["kind"].tolist()) == {STREAM_KINDS.index("light_events")}
        with pytest.raises(ValueError, match="unknown kinds"):
            ObjectStreamDataset(store, kinds=["walls"])
    finally:
        ds.close()


def test_channel_metrics_by_hand():
    truth = np.zeros((10, len(FRAME_EVENT_CHANNELS)), np.uint8)
    probs = np.zeros_like(truth, dtype=np.float32)
    truth[[1, 2, 3], 0] = 1
    probs[[2, 3, 4], 0] = 0.9  # 2 tp, 1 fp, 1 fn -> F1 2/3
    probs[5, 1] = 0.7           # a false positive on a channel with no truth: F1 0, not in the mean
    m = channel_metrics(channel_counts(probs, truth))
    assert m["f1_event_red_note"] == pytest.approx(2 / 3) and m["f1_event_blue_note"] == 0.0
    assert m["f1_event_bomb"] == 1.0 and m["f1_events"] == pytest.approx(2 / 3)
    assert event_pos_weights([0.5, 0.0, 1e-6]).tolist() == [1.0, 1.0, 1000.0]


def test_train_ddc_targets_events_reports_per_channel_f1(store, tmp_path):
    out = tmp_path / "ddc-events"
    result = CliRunner().invoke(main, ["train", "ddc", "--store", str(store), "--out", str(out), "--preset", "tiny",
                                       "--targets", "events", "--max-steps", "40", "--eval-every", "20",
                                       "--batch-size", "8", "--val-song", VAL_SONG, "--device", "cpu",
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    model, ckpt = load_checkpoint(out / "last.pt")
    metrics = ckpt["metrics"]
    assert all(0 <= metrics[f"f1_event_{c}"] <= 1 for c in FRAME_EVENT_CHANNELS)
    assert ckpt["targets"] == "events" and len(ckpt["event_pos_weight"]) == len(FRAME_EVENT_CHANNELS)
    assert model.config.n_classes == len(FRAME_EVENT_CHANNELS)
    # the note channels are learned from the demo's loud hits, far above guessing "yes" on every frame
    val = PlacementDataset(store, [VAL_SONG], jitter=False)
    truth = np.concatenate([val.level_frame_events(i) for i in range(len(val.levels))])
    val.close()
    for k, name in enumerate(("red_note", "blue_note")):
        p = truth[:, k].mean()
        all_yes = 2 * p / (1 + p)
        assert metrics[f"f1_event_{name}"] > 3 * all_yes, (name, metrics[f"f1_event_{name}"], all_yes)
    assert metrics["f1"] > 0.5  # the onset head still learns notes for generation
    stage = DDCStage(Store(store), ddc_config("tiny", targets="events"))
    stage.restore(ckpt)
    assert stage.event_pos_weight == ckpt["event_pos_weight"]
    with pytest.raises(ValueError, match="targets must be one of"):
        ddc_config("tiny", targets="walls")
