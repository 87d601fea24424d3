"""The traps a new user meets in the first hour: silent all-UNK stores, invisible UNK shares, empty stores,
summaries that do not say why items failed, plurals."""

import json
import shutil

import pytest
from click.testing import CliRunner

from mapkit.runs.build_targets import build_targets
from mapkit.cli import main
from mapkit.datasets.names import plural
from mapkit.runs.runner import ItemResult, RunReport
from mapkit.datasets.store import Store
from mapkit.datasets.validation import validate_store
from mapkit.runs.demo import make_demo
from mapkit.runs.extract import extract


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    demo = make_demo(root / "demo", n_levels=2, duration_s=6.0, include_fretsonfire=False, progress=False)
    store = root / "features-only"
    assert extract(demo.levels_dir, store=store, jobs=1, progress=False).exit_code == 0
    return demo, store


def fresh_store(demo, tmp_path):
    """A copy of the store with features and no targets."""
    shutil.copytree(demo[1], tmp_path / "store")
    return tmp_path / "store"


def song_ids(store):
    return sorted(Store(store).index("features"))


def test_build_targets_refuses_a_training_split_without_levels(demo, tmp_path):
    store = fresh_store(demo, tmp_path)
    args = ["build-targets", str(demo[0].levels_dir), "--store", str(store), "--jobs", "1", "--no-progress"]
    for sid in song_ids(store):
        args += ["--val-song", sid]  # every song held out: nothing left to count the vocabulary over
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "no vocabulary can be counted" in result.output and "UNK" in result.output
    assert "--val-song" in result.output and "more songs" in result.output
    assert not (store / "vocab.json").exists() and Store(store).shards("targets") == []
    # with a training song, the same run writes targets and a vocabulary
    ok = CliRunner().invoke(main, args[:-2])
    assert ok.exit_code == 0, ok.output
    assert (store / "vocab.json").exists() and len(Store(store).index("targets")) == 2
    vocab = json.loads((store / "vocab.json").read_text())
    assert vocab["n_levels"] == len(vocab["counted_songs"]) == 1  # counts what it says: songs counted
    counted = vocab["counted_songs"][0]
    entry = Store(store).index("targets")[counted]
    assert vocab["n_difficulties"] == len(json.loads(entry.attrs["difficulties_json"])) >= 1


def test_the_unk_share_is_printed_and_validate_warns_above_the_threshold(demo, tmp_path):
    store = fresh_store(demo, tmp_path)
    result = CliRunner().invoke(main, ["build-targets", str(demo[0].levels_dir), "--store", str(store), "--jobs", "1",
                                       "--no-progress", "--vocab-size", "2", "--val-fraction", "0"])
    assert result.exit_code == 0, result.output
    unk = [line for line in result.output.splitlines() if line.startswith("UNK:")]
    assert len(unk) == 1 and "--rebuild-vocab" in unk[0], result.output
    n_unk, n_states = (int(x) for x in unk[0].split()[1::2][:2])
    assert 0 < n_unk < n_states and n_unk / n_states > 0.05
    report = validate_store(store, progress=False)
    assert report.ok  # UNK tokens are a warning, not an invalid store
    warning = [w for w in report.warnings if w["check"] == "unk_share"]
    assert len(warning) == 1 and "--rebuild-vocab" in warning[0]["message"]
    assert warning[0]["numbers"]["unk"] == n_unk and warning[0]["numbers"]["states"] == n_states
    assert "warning [unk_share]" in CliRunner().invoke(main, ["validate", "--store", str(store)]).output
    # a full vocabulary: no warning, and the summary says 0 UNK
    again = CliRunner().invoke(main, ["build-targets", str(demo[0].levels_dir), "--store", str(store), "--jobs", "1",
                                      "--no-progress", "--rebuild-vocab", "--val-fraction", "0"])
    assert again.exit_code == 0 and f"UNK: 0 of {n_states} note states (0.0%)" in again.output
    assert not [w for w in validate_store(store, progress=False).warnings if w["check"] == "unk_share"]


def test_an_empty_folder_is_not_a_valid_store(tmp_path):
    (tmp_path / "empty").mkdir()
    for root in (tmp_path / "empty", tmp_path / "created"):
        if root.name == "created":
            Store(root).create()  # the folders a run makes before its items all fail
        report = validate_store(root, progress=False)
        assert not report.ok and report.checks_failed() == {"store"}
        assert "no store here" in report.summary() and "valid: every check passed" not in report.summary()
    assert CliRunner().invoke(main, ["validate", "--store", str(tmp_path / "empty")]).exit_code == 1


def test_the_summary_says_why_items_failed_with_counts_and_examples(demo, tmp_path):
    store = tmp_path / "store"  # no features: every level fails the same way
    report = build_targets(demo[0].levels_dir, store=store, jobs=1, progress=False)
    lines = report.summary(unit="items").splitlines()
    assert lines[0].startswith("build-targets: 2 items: 0 written, 2 failed")
    assert lines[1].startswith("  failed \u00d72: no features (run mapkit extract first): ")
    assert all(sid in lines[1] for sid in song_ids(demo[1]))
    items = [ItemResult(f"s{i}", "p", "quarantined", f"notes beyond audio ({i} of 9 notes)") for i in range(5)]
    items.append(ItemResult("x", "p", "ok"))
    text = RunReport("build-targets", items).summary(unit="items")
    # reasons that differ only in their numbers share a line with the range of each number
    assert "quarantined \u00d75: notes beyond audio (0\u20134 of 9 notes): s0, s1, s2 and 2 more" in text
    assert RunReport("extract", items[-1:]).summary().startswith("extract: 1 song: 1 written")


def test_plurals():
    assert [plural(n, "songs") for n in (0, 1, 2)] == ["0 songs", "1 song", "2 songs"]
    assert plural(1, "items") == "1 item" and plural(1, "unreadable shards") == "1 unreadable shard"


@pytest.mark.parametrize("command", ["extract", "build-targets"])
def test_an_unreachable_dask_scheduler_is_one_line_and_creates_nothing(demo, tmp_path, command):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = tmp_path / "store"
    result = CliRunner().invoke(main, [command, str(demo[0].levels_dir), "--store", str(store), "--backend", "dask",
                                       "--scheduler", f"tcp://127.0.0.1:{port}", "--no-progress"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"tcp://127.0.0.1:{port}" in lines[0] and "unreachable within" in lines[0]
    assert not store.exists()


def test_inspect_gives_the_verdict_build_targets_gives_when_the_audio_is_present(demo, tmp_path):
    import numpy as np
    import soundfile as sf

    from mapkit.preprocess.container import LevelContainer

    src = sorted(p for p in demo[0].levels_dir.iterdir() if p.is_dir())[0]
    level = tmp_path / "levels" / src.name
    shutil.copytree(src, level)
    with LevelContainer(level) as c:
        audio = level / c.audio_name()
    noise = np.random.default_rng(0).standard_normal(8000 * 2).astype(np.float32) * 0.1
    sf.write(str(audio), noise, 8000, format="WAV")  # 2 s: most notes lie beyond it
    result = CliRunner().invoke(main, ["inspect", str(level)])
    assert result.exit_code == 0, result.output
    verdicts = [line.strip() for line in result.output.splitlines() if line.startswith("    ") and
                (line.strip() == "ok" or line.strip().startswith("QUARANTINED"))]
    assert verdicts and all("notes beyond audio" in v for v in verdicts), result.output
    assert "beyond_audio" in result.output
    store = tmp_path / "store"
    assert extract(level.parent, store=store, jobs=1, progress=False).exit_code == 0
    report = build_targets(level.parent, store=store, jobs=1, progress=False, val_fraction=0.0)
    assert [r.status for r in report.items] == ["quarantined"] * len(verdicts)
    assert all("notes beyond audio" in r.reason for r in report.items)


def test_progress_bars_write_plain_lines_when_not_on_a_terminal():
    import io

    from mapkit.progress import progress_bar

    log = io.StringIO()  # a redirected stderr: not a terminal
    with progress_bar(total=5000, desc="work", file=log, interval_s=3600) as bar:
        for _ in range(5000):
            bar.update(1)
            bar.set_postfix(loss=0.5, refresh=False)
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert len(lines) == 2 and lines[0].startswith("work:   0%") and "5000/5000" in lines[-1]


def test_a_redirected_command_log_holds_few_progress_lines(demo, tmp_path):
    store = fresh_store(demo, tmp_path)  # CliRunner's stderr is not a terminal, as a redirected log
    result = CliRunner().invoke(main, ["build-targets", str(demo[0].levels_dir), "--store", str(store), "--jobs", "1"])
    assert result.exit_code == 0, result.output
    assert "\r" not in result.output and len(result.output.splitlines()) <= 8, result.output
