"""Training both stages on a tiny real store: they learn, resume exactly, refuse mismatches, run under DDP."""

import datetime
import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mapkit.cli import main
from mapkit.datasets.torch_datasets import PlacementDataset, SelectionDataset, read_vocab
from mapkit.datasets.store import Store
from mapkit.train.checkpoints import PlacementSetup
from mapkit.train.ddc import DDCStage, ddc_config, predict_probabilities, train_ddc
from mapkit.errors import TrainingError
from mapkit.train.loop import (DIST_TIMEOUT_ENV, EpochSampler, RunOptions, dist_timeout,
                               load_checkpoint, lr_factor, read_checkpoint, read_metrics, save_checkpoint)
from mapkit.train.models import PLACEMENT_PRESETS
from mapkit.preprocess.peaks import onset_f1
from mapkit.train.reference import stage1_report
from mapkit.train.transformer import train_transformer, transformer_config, unigram_perplexity
from tests.tiny_store import VAL_SONG, build_tiny_store

QUIET = RunOptions(progress=False, device="cpu")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_tiny_store(tmp_path_factory.mktemp("tiny"))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- pieces ----------------------------------------------------------------------------------------


def test_epoch_sampler_deals_disjoint_equal_shares_and_skips():
    shares = [EpochSampler(10, seed=2, rank=r, world_size=3) for r in range(3)]
    for s in shares:
        s.set_epoch(4)
    idx = [s.indices() for s in shares]
    assert [len(i) for i in idx] == [4, 4, 4]  # padded by wrapping to equal shares
    assert set(sum(idx, [])) == set(range(10))
    one = EpochSampler(10, seed=2)
    one.set_epoch(4)
    full = one.indices()
    one.set_epoch(4, skip=3)
    assert one.indices() == full[3:] and len(one) == 7
    one.set_epoch(5)
    assert one.indices() != full and sorted(one.indices()) == list(range(10))


def test_lr_warms_up_then_decays_to_the_floor():
    f = [lr_factor(s, 10, 110, 0.1) for s in range(120)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(f[:10], f[1:10]))
    assert all(a >= b for a, b in zip(f[10:110], f[11:110]))
    assert f[110] == pytest.approx(0.1) and f[119] == pytest.approx(0.1)


class CentreRow(torch.nn.Module):
    """A stand-in model whose logit for a frame is band 0 of the frame's own (centre) row."""

    def __init__(self):
        super().__init__()
        self.config = PLACEMENT_PRESETS["tiny"]

    def forward(self, x, difficulty):
        return x[:, 7:-7, 0, 0]


@pytest.mark.parametrize("n_frames", [37, 100, 250, 1001])
def test_whole_song_prediction_covers_every_frame_once_in_place(n_frames):
    rng = np.random.default_rng(n_frames)
    raw = rng.normal(-5, 3, size=(n_frames + 14, 3, 80)).astype(np.float16)
    mean, std = np.full((3, 80), -5.0, np.float32), np.full((3, 80), 2.0, np.float32)
    p = predict_probabilities(CentreRow(), raw, 3, mean, std, silence=-23.0, window=100, batch_size=3)
    expected = 1 / (1 + np.exp(-(raw[7:-7, 0, 0].astype(np.float32) + 5) / 2))
    assert p.shape == (n_frames,)
    np.testing.assert_allclose(p, expected, rtol=1e-5)


class WindowPosition(CentreRow):
    """A stand-in whose logit for a frame is its position in the window it was predicted in, over 20."""

    def forward(self, x, difficulty):
        return torch.arange(x.shape[1] - 14, dtype=torch.float32).expand(x.shape[0], -1) / 20


@pytest.mark.parametrize("n_frames", [37, 100, 130, 250, 1001])
@pytest.mark.parametrize("margin", [0, 25])
def test_overlapping_prediction_windows_keep_frames_away_from_inner_edges(n_frames, margin):
    raw = np.zeros((n_frames + 14, 3, 80), dtype=np.float16)
    p = predict_probabilities(WindowPosition(), raw, 3, np.zeros((3, 80), np.float32), np.ones((3, 80), np.float32),
                              silence=-23.0, window=100, batch_size=2, margin=margin)
    position = np.round(20 * np.log(p / (1 - p))).astype(int)  # the frame's place in its window
    assert p.shape == (n_frames,) and position.min() >= 0 and position.max() <= 99
    inner = np.arange(n_frames) >= margin  # frames with margin frames of song before them
    inner &= np.arange(n_frames) < n_frames - margin
    assert np.all(position[inner] >= margin) and np.all(position[inner] <= 99 - margin)
    if margin == 0 and n_frames >= 250:
        assert position[100] == 0  # tiled windows: frame 100 starts the second window cold
    with pytest.raises(ValueError, match="margin"):
        predict_probabilities(WindowPosition(), raw, 3, np.zeros((3, 80), np.float32),
                              np.ones((3, 80), np.float32), silence=-23.0, window=100, margin=50)


# --- stage 1 ---------------------------------------------------------------------------------------


def chance_f1(true_frames_list, lengths, trials=20):
    """F1 of random onsets at the true density (the same count per level, uniform frames)."""
    rng = np.random.default_rng(0)
    scores = []
    for _ in range(trials):
        matched = n_pred = n_true = 0
        for true, T in zip(true_frames_list, lengths):
            pred = np.sort(rng.choice(T, size=len(true), replace=False))
            p, r, _ = onset_f1(pred, true)
            matched += p * len(pred)
            n_pred += len(pred)
            n_true += len(true)
        precision, recall = matched / n_pred, matched / n_true
        scores.append(2 * precision * recall / (precision + recall) if matched else 0.0)
    return float(np.mean(scores))


def test_ddc_learns_onsets_far_above_chance(store, tmp_path, capsys):
    out = tmp_path / "ddc"
    result = CliRunner().invoke(main, ["train", "ddc", "--store", str(store), "--out", str(out), "--preset", "tiny",
                                       "--max-steps", "40", "--eval-every", "20", "--batch-size", "8",
                                       "--val-song", VAL_SONG,
                                       "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    model, ckpt = load_checkpoint(out / "last.pt")
    f1 = ckpt["metrics"]["f1"]
    val = PlacementDataset(store, [VAL_SONG], jitter=False)
    truths = [np.flatnonzero(val.level_classes(i) > 0) for i in range(len(val.levels))]
    chance = chance_f1(truths, [lv.n_frames for lv in val.levels])
    assert chance < 0.3
    assert f1 > max(0.6, chance + 0.35), (f1, chance)
    # the checkpoint holds what generation needs, and the threshold is the validated one
    assert ckpt["val_songs"] == [VAL_SONG] and VAL_SONG not in ckpt["train_songs"]
    assert ckpt["peak_picking"]["threshold"] == ckpt["metrics"]["threshold"]
    # one threshold per validated difficulty, round-tripping into generation's setup and a resumed stage
    thresholds = ckpt["peak_picking"]["thresholds"]
    assert set(thresholds) == {"Normal", "Expert"}  # the validation song's levels
    assert all(thresholds[d] == ckpt["metrics"][f"threshold_{d}"] for d in thresholds)
    assert all(0 <= ckpt["metrics"][f"f1_{d}"] <= 1 for d in thresholds)
    assert 0 <= ckpt["metrics"]["f1_single_threshold"] <= 1
    setup = PlacementSetup.from_checkpoint(ckpt)
    assert setup.threshold_for("Expert") == thresholds["Expert"]
    assert setup.threshold_for("Easy") == ckpt["peak_picking"]["threshold"]  # not validated: the single best
    stage = DDCStage(Store(store), ddc_config("tiny"))
    stage.restore(ckpt)
    assert stage.thresholds == thresholds and stage.checkpoint_extras()["peak_picking"]["thresholds"] == thresholds
    old = dict(ckpt, peak_picking={k: v for k, v in ckpt["peak_picking"].items() if k != "thresholds"})
    assert PlacementSetup.from_checkpoint(old).threshold_for("Expert") == ckpt["peak_picking"]["threshold"]
    # the reference report repeats validation exactly, per difficulty, and scores the tuned flux baseline
    report = stage1_report(store, out / "last.pt", tolerances=(2, 5))
    assert report["model"]["all"]["f1@2"] == pytest.approx(ckpt["metrics"]["f1"])
    for d in thresholds:
        assert report["model"][d]["f1@2"] == pytest.approx(ckpt["metrics"][f"f1_{d}"])
        assert report["model"][d]["f1@5"] >= report["model"][d]["f1@2"]
        assert report["baseline"][d]["levels"] == report["model"][d]["levels"] > 0
        assert set(report["baseline_settings"][d]) == {"threshold", "shift"}
    assert report["baseline"]["all"]["f1@2"] > 0.5  # the demo's hits are sharp onsets
    assert report["model_realigned"] == report["model"]  # never audited: no lag to move the notes by
    assert report["baseline_realigned"] == report["baseline"]
    assert report["thresholds"] == {d: ckpt["peak_picking"]["thresholds"][d] for d in thresholds}
    retuned = stage1_report(store, out / "last.pt", tolerances=(2,), baseline=False, thresholds="train")
    assert set(retuned["thresholds"]) == set(thresholds) and 0.0 <= retuned["model"]["all"]["f1@2"] <= 1.0
    with pytest.raises(ValueError, match="thresholds"):
        stage1_report(store, out / "last.pt", thresholds="held-out")
    spec = importlib.util.spec_from_file_location("bench_onsets", Path(__file__).parents[2] / "bench" / "onsets.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--store", str(store), "--checkpoint", str(out / "last.pt"), "--no-baseline"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[-1].split() == ["all", str(report["model"]["all"]["levels"]),
                                 f"{report['model']['all']['f1@2']:.3f}", f"{report['model']['all']['f1@5']:.3f}"]
    assert ckpt["stats"]["placement"]["mean"] is not None and ckpt["window"] == 100
    assert ckpt["feature_settings_hash"] == json.loads((store / "stats.json").read_text())["settings_hash"]
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records if r["split"] == "val"] == [20, 40]
    assert any(r["split"] == "train" for r in records)
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "best.pt").exists()
    assert "f1" in result.output and str(out / "last.pt") in result.output


# --- stage 2 ---------------------------------------------------------------------------------------


def test_transformer_beats_the_unigram_baseline(store, tmp_path):
    config = transformer_config("tiny", max_steps=120, eval_every=60, batch_size=2, val_songs=(VAL_SONG,),
                                epochs=None)
    result = train_transformer(store, tmp_path / "tf", config, QUIET)
    train = SelectionDataset(store, result.train_songs, jitter=False)
    val = SelectionDataset(store, result.val_songs, jitter=False)
    baseline = unigram_perplexity([train[i]["tokens"] for i in range(len(train))],
                                  [val[i]["tokens"] for i in range(len(val))], len(read_vocab(store)))
    ppl = result.metrics["perplexity"]
    assert ppl < 0.8 * baseline, (ppl, baseline)
    assert 0 < result.metrics["accuracy"] <= 1
    _, ckpt = load_checkpoint(result.last)
    assert ckpt["vocab"] == read_vocab(store).to_json() and ckpt["vocab_hash"] == ckpt["vocab"]["hash"]
    # it listens on this real-shaped store too: the demo's drums name the colours (measured +0.68 on 38 tokens)
    ablation = {r["mode"]: r["loss"] for r in read_metrics(result.metrics_path) if r["split"] == "ablation"}
    assert ablation["real"] == pytest.approx(result.metrics["loss"])
    assert ablation["shuffle"] > ablation["real"] + 0.2


# --- resume ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["ddc", "ddc_augmented", "transformer"])
def test_resume_reproduces_the_uninterrupted_run(store, tmp_path, stage):
    if stage.startswith("ddc"):  # dropout on, so the restored RNG matters
        augment = dict(gain_db=6.0, mel_shift_bins=2, widen_frames=1) if stage == "ddc_augmented" else {}
        config = ddc_config("tiny", max_steps=12, eval_every=5, checkpoint_every=4, val_songs=(VAL_SONG,),
                            batch_size=8, model=replace(PLACEMENT_PRESETS["tiny"], dropout=0.3), **augment)
        train = train_ddc
    else:
        config = transformer_config("tiny", max_steps=12, eval_every=5, checkpoint_every=4, batch_size=2,
                                    val_songs=(VAL_SONG,))
        train = train_transformer
    whole = train(store, tmp_path / "whole", config, QUIET)
    first = train(store, tmp_path / "parts", config, replace(QUIET, stop_at=7))  # mid-epoch, between checkpoints
    assert first.step == 7 and first.stopped_early
    halfway = read_checkpoint(first.last)["model"]
    second = train(store, tmp_path / "parts", config, replace(QUIET, resume=True))
    assert second.step == 12 and not second.stopped_early
    a, b = read_checkpoint(whole.last), read_checkpoint(second.last)
    assert not same_weights(halfway, b["model"])
    assert same_weights(a["model"], b["model"])
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    assert all(torch.equal(a["optimizer"]["state"][k]["exp_avg"], b["optimizer"]["state"][k]["exp_avg"])
               for k in a["optimizer"]["state"])
    steps = [r["step"] for r in read_metrics(tmp_path / "parts" / "metrics.jsonl") if r["split"] == "train"]
    assert steps == sorted(steps)  # one history, no steps logged twice


def test_resume_is_refused_for_another_store_or_config(store, tmp_path):
    config = ddc_config("tiny", max_steps=3, val_songs=(VAL_SONG,))
    out = tmp_path / "ddc"
    with pytest.raises(TrainingError, match="no checkpoint"):
        train_ddc(store, out, config, replace(QUIET, resume=True))
    train_ddc(store, out, config, QUIET)
    with pytest.raises(TrainingError, match="lr"):
        train_ddc(store, out, replace(config, lr=0.5), replace(QUIET, resume=True))
    ckpt = read_checkpoint(out / "last.pt")
    ckpt["feature_settings_hash"] = "0000000000000000"
    save_checkpoint(out / "last.pt", ckpt)
    result = CliRunner().invoke(main, ["train", "ddc", "--store", str(store), "--out", str(out), "--preset", "tiny",
                                       "--max-steps", "6", "--val-song", VAL_SONG, "--resume", "--no-progress"])
    assert result.exit_code == 1
    assert "feature_settings_hash 0000000000000000 (checkpoint)" in result.output
    # a longer run of the same config is allowed: max_steps may change
    ckpt["feature_settings_hash"] = json.loads((store / "stats.json").read_text())["settings_hash"]
    save_checkpoint(out / "last.pt", ckpt)
    assert train_ddc(store, out, replace(config, max_steps=5), replace(QUIET, resume=True)).step == 5


@pytest.mark.parametrize("stage", ["ddc", "transformer"])
def test_only_stage_2_resumes_are_refused_for_another_vocabulary(store, tmp_path, stage):
    if stage == "ddc":
        config, train = ddc_config("tiny", max_steps=2, val_songs=(VAL_SONG,)), train_ddc
    else:
        config, train = transformer_config("tiny", max_steps=2, batch_size=2, val_songs=(VAL_SONG,)), train_transformer
    out = tmp_path / stage
    train(store, out, config, QUIET)
    ckpt = read_checkpoint(out / "last.pt")
    ckpt["vocab_hash"] = "1111111111111111"  # as if vocab.json was rebuilt since
    save_checkpoint(out / "last.pt", ckpt)
    if stage == "ddc":  # stage 1 never reads the vocabulary
        assert train(store, out, replace(config, max_steps=3), replace(QUIET, resume=True)).step == 3
    else:
        with pytest.raises(TrainingError, match="vocab_hash 1111111111111111"):
            train(store, out, replace(config, max_steps=3), replace(QUIET, resume=True))


def test_ddp_timeout_is_generous_and_configurable(monkeypatch):
    monkeypatch.delenv(DIST_TIMEOUT_ENV, raising=False)
    assert dist_timeout() == datetime.timedelta(hours=2)
    monkeypatch.setenv(DIST_TIMEOUT_ENV, "30")
    assert dist_timeout() == datetime.timedelta(minutes=30)
    for bad in ("soon", "0", "-5", "nan"):
        monkeypatch.setenv(DIST_TIMEOUT_ENV, bad)
        with pytest.raises(ValueError, match=DIST_TIMEOUT_ENV):
            dist_timeout()


# --- DDP -------------------------------------------------------------------------------------------


def test_two_process_gloo_run_keeps_the_ranks_identical(store, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "mapkit",
         "train", "transformer", "--store", str(store), "--out", str(out), "--preset", "tiny", "--max-steps", "4",
         "--batch-size", "1", "--val-song", VAL_SONG, "--device", "cpu", "--no-progress"],
        capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    end = [r for r in read_metrics(out / "metrics.jsonl") if r["split"] == "end"][-1]
    digests = end["rank_parameter_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    ckpt = read_checkpoint(out / "last.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2 and ckpt["step"] == 4
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])  # dropout streams differ per rank


def test_an_explicit_step_budget_is_not_cut_short_by_the_presets_epochs():
    from mapkit.train.ddc import ddc_config
    from mapkit.train.transformer import transformer_config

    for make in (ddc_config, transformer_config):
        assert make("tiny").epochs is not None
        assert make("tiny", max_steps=300).epochs is None
        both = make("tiny", max_steps=300, epochs=2)
        assert (both.max_steps, both.epochs) == (300, 2)


def test_onsets_and_event_probabilities_come_from_the_same_forward_passes():
    import dataclasses

    from mapkit.preprocess.frame_events import N_FRAME_EVENT_CHANNELS
    from mapkit.train.models import PlacementModel

    torch.manual_seed(0)
    model = PlacementModel(dataclasses.replace(PLACEMENT_PRESETS["tiny"], n_classes=N_FRAME_EVENT_CHANNELS)).eval()
    raw = np.random.default_rng(1).normal(-5, 3, size=(250 + 2 * model.config.context, 3, 80)).astype(np.float16)
    mean, std = np.full((3, 80), -5.0, np.float32), np.full((3, 80), 2.0, np.float32)
    args = (model, raw, 2, mean, std, -23.0)
    onsets, classes = predict_probabilities(*args, window=100, classes="both")
    assert onsets.shape == (250,) and classes.shape == (250, N_FRAME_EVENT_CHANNELS)
    np.testing.assert_array_equal(onsets, predict_probabilities(*args, window=100))
    np.testing.assert_array_equal(classes, predict_probabilities(*args, window=100, classes=True))
    assert not np.allclose(onsets, classes[:, 0])  # two heads, two different answers


def test_beat_phase_model_trains_reads_the_phase_and_reports(store, tmp_path):
    out = tmp_path / "beat"
    result = CliRunner().invoke(main, ["train", "ddc", "--store", str(store), "--out", str(out), "--preset", "tiny",
                                       "--max-steps", "6", "--eval-every", "6", "--val-song", VAL_SONG,
                                       "--beat-phase", "--realign", "--gain-db", "3", "--mel-shift", "1",
                                       "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    model, ckpt = load_checkpoint(out / "last.pt", "cpu")
    config = json.loads(ckpt["train_config"])
    assert (config["realign"], config["gain_db"], config["mel_shift_bins"]) == (True, 3.0, 1)
    assert model.config.beat_periods == (0.5, 1.0, 2.0) and model.config.beat_inputs == 6
    setup = PlacementSetup.from_checkpoint(ckpt, out / "last.pt")
    ds = PlacementDataset(store, [VAL_SONG], stats=ckpt["stats"], jitter=False, beat_periods=model.config.beat_periods,
                          feature_settings=setup.feature_settings)
    item = ds[0]
    assert item["beat"].shape == (ds.window, 6)
    n = int(item["mask"].sum())
    assert np.allclose(item["beat"][:n].numpy(), ds.level_beat(0)[:n], atol=1e-5)
    raw = ds.level_features(0) * ds.std + ds.mean
    args = (model, raw, 0, ds.mean, ds.std, float(ds.silence), setup.window)
    with pytest.raises(ValueError, match="beat phase"):
        predict_probabilities(*args)
    model.eval()
    with_phase = predict_probabilities(*args, beat=ds.level_beat(0))
    shifted = predict_probabilities(*args, beat=np.roll(ds.level_beat(0), 13, axis=0))
    assert with_phase.shape == (ds.levels[0].n_frames,) and not np.allclose(with_phase, shifted)
    ds.close()
    report = stage1_report(store, out / "last.pt", baseline=False)
    assert report["model"]["all"]["levels"] >= 1


def test_the_log_holds_cpu_seconds_beside_wall_seconds(store, tmp_path):
    config = ddc_config("tiny", max_steps=4, log_every=2, eval_every=4, val_songs=(VAL_SONG,))
    train_ddc(store, tmp_path / "run", config, QUIET)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if r.get("split") in ("train", "end")]
    cpu = [r["cpu_s"] for r in timed]
    assert len(timed) == 3 and cpu[0] > 0 and cpu == sorted(cpu)
    assert all(r["cpu_s"] <= 2.5 * r["elapsed_s"] + 0.5 for r in timed)  # one thread: CPU cannot outrun wall time by far
