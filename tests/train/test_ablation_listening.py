"""Stage 2 listens: on a store where only the audio says which column a note is in, it must use the audio."""

import importlib.util
import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mapkit.cli import main
from mapkit.datasets.torch_datasets import SelectionDataset
from mapkit.train.ablation import AblatedSelection, ablated_source
from mapkit.errors import TrainingError
from mapkit.train.loop import load_checkpoint, read_checkpoint, read_metrics, save_checkpoint
from mapkit.train.models import SELECTION_PRESETS, SelectionConfig, SelectionModel
from tests.tone_store import VAL_SONGS, build_tone_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tone_store(tmp_path_factory):
    return build_tone_store(tmp_path_factory.mktemp("tones"))


@pytest.fixture(scope="module")
def tone_run(tone_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("tone-run")
    args = ["train", "transformer", "--store", str(tone_store), "--out", str(out), "--preset", "tiny",
            "--max-steps", "150", "--eval-every", "75", "--checkpoint-every", "150", "--device", "cpu",
            "--no-progress"] + [a for song in VAL_SONGS for a in ("--val-song", song)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    _, ckpt = load_checkpoint(out / "last.pt")
    return SimpleNamespace(output=result.output, last=out / "last.pt", metrics_path=out / "metrics.jsonl",
                           metrics=ckpt["metrics"])


def test_the_model_uses_the_audio_and_the_run_reports_the_ablation(tone_run):
    records = read_metrics(tone_run.metrics_path)
    ablation = {r["mode"]: r for r in records if r["split"] == "ablation"}
    assert set(ablation) == {"real", "zeros", "shuffle", "other", "gaps"}
    assert all(r["step"] == 150 and r["tokens"] == ablation["real"]["tokens"] > 80 for r in ablation.values())
    real = ablation["real"]
    assert real["accuracy"] == pytest.approx(tone_run.metrics["accuracy"])  # the final model, same levels
    # the column is a pure function of the tone: listening gets nearly all of them, chance is 1/4
    assert real["accuracy"] > 0.9
    for mode in ("zeros", "shuffle", "other"):
        assert ablation[mode]["accuracy"] < 0.5, mode
        assert ablation[mode]["loss"] > real["loss"] + 1.0, mode
    assert ablation["gaps"]["accuracy"] > 0.9  # the tone store's gaps are all equal: the timing says nothing
    assert records[-1]["split"] == "end"  # the ablation is written before the run's last record
    line = next(t for t in tone_run.output.splitlines() if t.startswith("audio ablation"))
    assert f"real {real['loss']:.4g}" in line and "zeros" in line and "other" in line


def test_ablated_sources_replace_only_the_mel_part():
    rng = np.random.default_rng(0)
    src = rng.standard_normal((6, 7)).astype(np.float32)
    other = rng.standard_normal((4, 7)).astype(np.float32)
    assert np.array_equal(ablated_source(src, 5, "real"), src)
    for mode in ("zeros", "shuffle", "other"):
        out = ablated_source(src, 5, mode, np.random.default_rng(1), other)
        assert np.array_equal(out[:, 5:], src[:, 5:]), mode  # the gaps stay
        assert not np.array_equal(out[:, :5], src[:, :5]), mode
    timing = ablated_source(src, 5, "gaps", np.random.default_rng(1))
    assert np.array_equal(timing[:, :5], src[:, :5]) and not np.array_equal(timing[:, 5:], src[:, 5:])
    assert sorted(map(tuple, timing[:, 5:])) == sorted(map(tuple, src[:, 5:]))
    assert not ablated_source(src, 5, "zeros")[:, :5].any()
    shuffled = ablated_source(src, 5, "shuffle", np.random.default_rng(1))
    assert sorted(map(tuple, shuffled[:, :5])) == sorted(map(tuple, src[:, :5]))  # the same rows, reordered
    assert np.array_equal(ablated_source(src, 5, "other", other=other)[:, :5], other[[0, 1, 2, 3, 0, 1], :5])
    with pytest.raises(ValueError, match="unknown ablation"):
        ablated_source(src, 5, "noise")


def test_other_song_ablation_pairs_levels_of_different_songs(tone_store):
    ds = SelectionDataset(tone_store, VAL_SONGS, jitter=False)
    ablated = AblatedSelection(ds, "other", 100)
    assert [ds.levels[p].song_id for p in ablated.partner] == list(reversed(VAL_SONGS))
    one_song = SelectionDataset(tone_store, VAL_SONGS[:1], jitter=False)
    with pytest.raises(ValueError, match="two songs"):
        AblatedSelection(one_song, "other", 100)
    ds.close()
    one_song.close()


def test_a_stage_2_checkpoint_of_the_old_design_is_refused(tone_run, tmp_path):
    ckpt = read_checkpoint(tone_run.last)
    old = json.loads(ckpt["model_config"])
    del old["design"]  # a checkpoint written before the decoder read its note's audio
    ckpt["model_config"] = json.dumps(old)
    save_checkpoint(tmp_path / "old.pt", ckpt)
    with pytest.raises(TrainingError, match="design 1.*train it again"):
        load_checkpoint(tmp_path / "old.pt")
    with pytest.raises(ValueError, match="design 1"):
        SelectionConfig.from_dict(old)
    design_2 = dict(old, design=2)  # the decoder read its note's audio, but one mel row and no difficulty
    for key in ("audio_offsets", "beat_periods", "n_difficulties"):
        design_2.pop(key)
    ckpt["model_config"] = json.dumps(design_2)
    save_checkpoint(tmp_path / "design2.pt", ckpt)
    with pytest.raises(TrainingError, match="design 2.*difficulty.*train it again"):
        load_checkpoint(tmp_path / "design2.pt")
    model, _ = load_checkpoint(tone_run.last)
    assert model.config.design == 3
    assert torch.is_tensor(model.note_proj.weight) and torch.is_tensor(model.own_note_proj.weight)


def test_a_checkpoint_round_trips_the_source_layout_and_the_weights(tone_run):
    model, ckpt = load_checkpoint(tone_run.last)
    tiny = SELECTION_PRESETS["tiny"]
    assert model.config == replace(tiny, vocab_size=model.config.vocab_size)  # tuples again, not JSON lists
    assert model.config.source_layout == tiny.source_layout and model.config.attention_dropout == 0.0
    again = SelectionModel(SelectionConfig.from_json(ckpt["model_config"]))
    again.load_state_dict(model.state_dict())
    src = torch.rand(1, 6, tiny.src_dim)  # gaps >= 0
    tokens = torch.tensor([[1, 4, 5, 6, 7]])
    model.eval(), again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(src, None, tokens), model(src, None, tokens), rtol=0, atol=0)


def test_checkpoint_ablation_repeats_the_runs_figures(tone_run, tone_store):
    from mapkit.train.ablation import checkpoint_ablation

    logged = {r["mode"]: r for r in read_metrics(tone_run.metrics_path) if r["split"] == "ablation"}
    again = checkpoint_ablation(tone_store, tone_run.last)
    assert set(again) == set(logged)
    for mode, metrics in again.items():
        assert metrics["loss"] == pytest.approx(logged[mode]["loss"], rel=1e-5), mode
        assert metrics["accuracy"] == logged[mode]["accuracy"], mode
    with pytest.raises(TrainingError, match="no Standard level"):
        checkpoint_ablation(tone_store, tone_run.last, songs=["no-such-song"])


def test_bench_script_prints_the_ablation_table_and_refuses_a_stage_1_checkpoint(tone_run, tone_store, tmp_path,
                                                                                capsys):
    path = Path(__file__).resolve().parents[2] / "bench" / "ablation.py"
    spec = importlib.util.spec_from_file_location("bench_ablation", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--store", str(tone_store), "--checkpoint", str(tone_run.last), "--json"]) == 0
    logged = {r["mode"]: r for r in read_metrics(tone_run.metrics_path) if r["split"] == "ablation"}
    printed = json.loads(capsys.readouterr().out)
    assert printed["ablation"]["zeros"]["accuracy"] == logged["zeros"]["accuracy"]
    # 4 equally likely columns: no n-gram model of the tokens does much better than chance
    assert printed["baselines"]["tokens"] == logged["real"]["tokens"]
    assert printed["baselines"]["bigram"]["accuracy"] < 0.5 < logged["real"]["accuracy"]
    assert bench.main(["--store", str(tone_store), "--checkpoint", str(tone_run.last), "--modes", "zeros"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["audio", "loss"]
    assert [t.split()[0] for t in table[1:]] == ["real", "zeros", "unigram", "bigram"]
    save_checkpoint(tmp_path / "ddc.pt", dict(read_checkpoint(tone_run.last), stage="ddc"))
    assert bench.main(["--store", str(tone_store), "--checkpoint", str(tmp_path / "ddc.pt")]) == 1
    err = capsys.readouterr().err
    assert "not a stage-2" in err and str(tmp_path / "ddc.pt") in err
