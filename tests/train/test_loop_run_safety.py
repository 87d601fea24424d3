"""A training run never silently destroys or loses work: folders, signals, resume settings, logs, curves."""

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace

import pytest
from click.testing import CliRunner

from mapkit.cli import main
from mapkit.train.ddc import DDCStage, ddc_config, train_ddc
from mapkit.train.loop import (RunOptions, best_step, eval_interval, fit, plotted_metrics, read_checkpoint,
                               read_metrics)
from tests.tiny_store import VAL_SONG, build_tiny_store

QUIET = RunOptions(progress=False, device="cpu")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_tiny_store(tmp_path_factory.mktemp("tiny"), n_levels=3, duration_s=6.0)


def cli(*args):
    return CliRunner().invoke(main, ["train", *args])


def test_a_second_run_into_the_same_folder_is_refused_unless_resume_or_overwrite(store, tmp_path):
    out = tmp_path / "ddc"
    args = ["ddc", "--store", str(store), "--out", str(out), "--preset", "tiny", "--max-steps", "4",
            "--eval-every", "100", "--val-song", VAL_SONG, "--device", "cpu", "--no-progress"]
    assert cli(*args).exit_code == 0
    best = (out / "best.pt").read_bytes()
    log = (out / "metrics.jsonl").read_text()
    again = cli(*args)
    assert again.exit_code == 1
    assert "not empty" in again.output and "--resume" in again.output and "--overwrite" in again.output
    assert (out / "best.pt").read_bytes() == best and (out / "metrics.jsonl").read_text() == log
    both = cli(*args, "--overwrite", "--resume")
    assert both.exit_code == 64 and "give one of them" in both.output  # bad usage, not a failed run
    over = cli(*args, "--overwrite", "--max-steps", "2")
    assert over.exit_code == 0, over.output
    assert read_checkpoint(out / "last.pt")["step"] == 2
    assert max(r["step"] for r in read_metrics(out / "metrics.jsonl")) == 2  # the old history is gone


class SignalledStage(DDCStage):
    """Stage 1 that sends itself ``signum`` during the loss of step ``at`` (as a Ctrl-C would arrive)."""

    def __init__(self, store, config, signum, at):
        super().__init__(store, config)
        self.signum, self.at, self.calls = signum, at, 0

    def loss(self, model, batch, device):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), self.signum)
        return super().loss(model, batch, device)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_last_pt_at_once_and_the_run_resumes(store, tmp_path, signum):
    from mapkit.datasets.store import Store

    out = tmp_path / "ddc"
    config = ddc_config("tiny", max_steps=500, checkpoint_every=1000, eval_every=1000, val_songs=(VAL_SONG,))
    previous = signal.getsignal(signum)
    result = fit(SignalledStage(Store(store), config, signum, at=3), Store(store), out, config, QUIET)
    assert signal.getsignal(signum) == previous  # handlers restored
    assert result.interrupted == signal.Signals(signum).name and result.step == 3 and result.stopped_early
    assert read_checkpoint(out / "last.pt")["step"] == 3
    # there are validation songs, the signal only came before the first validation
    assert "validation: none yet (stopped before the first validation)" in result.summary()
    resumed = train_ddc(store, out, replace(config, max_steps=5), replace(QUIET, resume=True))
    assert resumed.step == 5 and resumed.interrupted is None
    assert "validation: none" not in resumed.summary()  # it validated when done


def test_ctrl_c_on_the_command_line_saves_and_says_how_to_go_on(store, tmp_path):
    out = tmp_path / "ddc"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # its own process group, signalled as a whole as a terminal's Ctrl-C is: the DataLoader worker gets it too
    proc = subprocess.Popen([sys.executable, "-m", "mapkit", "train", "ddc", "--store", str(store), "--out", str(out),
                             "--preset", "tiny", "--max-steps", "100000", "--log-every", "1", "--val-song", VAL_SONG,
                             "--workers", "1", "--device", "cpu", "--no-progress"], stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        import time

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (
                (out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().count("\n") >= 2):
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted by SIGINT" in err and "--resume" in err and "Traceback" not in err
    assert read_checkpoint(out / "last.pt")["step"] >= 2


def test_resume_takes_the_checkpoints_settings_and_only_resumable_changes(store, tmp_path):
    out = tmp_path / "ddc"
    base = ["ddc", "--store", str(store), "--out", str(out), "--device", "cpu", "--no-progress"]
    first = cli(*base, "--preset", "tiny", "--max-steps", "3", "--batch-size", "4", "--val-song", VAL_SONG)
    assert first.exit_code == 0, first.output
    # the help's own example: no --preset, no split, only a longer budget
    more = cli(*base, "--resume", "--max-steps", "5")
    assert more.exit_code == 0, more.output
    ckpt = read_checkpoint(out / "last.pt")
    cfg = json.loads(ckpt["train_config"])
    assert ckpt["step"] == 5 and cfg["batch_size"] == 4 and cfg["val_songs"] == [VAL_SONG] and cfg["max_steps"] == 5
    refused = cli(*base, "--resume", "--max-steps", "6", "--lr", "0.5")
    assert refused.exit_code == 1
    assert "--lr cannot change" in refused.output and len(refused.output.strip().splitlines()) == 1
    model = cli(*base, "--resume", "--max-steps", "6", "--preset", "default")
    assert model.exit_code == 1 and "--preset cannot change" in model.output
    assert cli(*base, "--resume", "--max-steps", "6", "--preset", "tiny").exit_code == 0
    missing = cli("ddc", "--store", str(store), "--out", str(tmp_path / "none"), "--resume")
    assert missing.exit_code == 1 and "no checkpoint to resume" in missing.output


def test_leftover_temporaries_are_cleaned_and_a_torn_log_line_does_not_stop_resume(store, tmp_path):
    out = tmp_path / "ddc"
    config = ddc_config("tiny", max_steps=3, val_songs=(VAL_SONG,))
    train_ddc(store, out, config, QUIET)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = out / f".last.pt.{dead}.tmp"
    stale.write_bytes(b"half a checkpoint")
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"split": "train", "step": 4, "lo')  # killed mid-line
    result = train_ddc(store, out, replace(config, max_steps=5), replace(QUIET, resume=True))
    assert result.step == 5 and not stale.exists()
    records = read_metrics(out / "metrics.jsonl")
    assert all(isinstance(r, dict) for r in records) and max(r["step"] for r in records) == 5
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line)  # the torn line was dropped from the log


def test_validation_cadence_scales_with_the_run_and_curves_mark_the_best(store, tmp_path):
    assert eval_interval(None, 300) == 15 and eval_interval(None, 7) == 1 and eval_interval(40, 300) == 40
    out = tmp_path / "ddc"
    result = train_ddc(store, out, ddc_config("tiny", max_steps=30, batch_size=2, val_songs=(VAL_SONG,)), QUIET)
    records = read_metrics(out / "metrics.jsonl")
    val_steps = [r["step"] for r in records if r["split"] == "val"]
    assert val_steps == list(range(2, 31, 2))  # ceil(30 / 20) = every 2 steps, evenly spaced
    best = best_step(records, "f1", maximize=True)
    assert read_checkpoint(result.best)["step"] == best
    plotted = plotted_metrics(records)  # not the thresholds; the loss is drawn with the training loss
    assert {"f1", "precision", "recall"} <= set(plotted) and "loss" not in plotted
    assert not [k for k in plotted if "threshold_" in k or k == "threshold"]
    assert all(k in ("f1", "precision", "recall") or k.startswith("f1_") for k in plotted)
    tf = [{"split": "val", "step": 1, "loss": 2.0, "perplexity": 9.0, "accuracy": 0.4, "tokens": 102}]
    assert plotted_metrics(tf) == ["accuracy", "perplexity"]  # a token count is not a metric
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_unknown_difficulty_names_are_listed():
    result = cli("ddc", "--difficulty", "Insane")
    assert result.exit_code == 64 and "Easy, Normal, Hard, Expert, ExpertPlus" in result.output  # usage error
    result = CliRunner().invoke(main, ["generate", "song.ogg", "--difficulty", "Insane"])
    assert result.exit_code == 64 and "ExpertPlus" in result.output


def test_help_shows_every_training_default():
    for stage in ("ddc", "transformer"):
        text = CliRunner().invoke(main, ["train", stage, "--help"]).output
        entries = [" ".join(e.split()) for e in text.split("\n  -")]  # one entry per option, lines joined
        for option in ("-max-steps", "-batch-size", "-lr", "-warmup-steps", "-eval-every", "-checkpoint-every",
                       "-log-every", "-grad-clip", "-epochs"):
            entry = next(e for e in entries if e.startswith(option + " "))
            assert "default:" in entry, entry
        assert "--preset tiny:" in text
