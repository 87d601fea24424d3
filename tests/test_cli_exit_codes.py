"""Exit codes a script can tell apart: 0 ok, 1 could not proceed, 2 partial, 64 bad usage (issue 10)."""

import subprocess
import sys

import pytest
from click.testing import CliRunner

from mapkit.cli import EXIT_CODES, EXIT_USAGE, main

COMMANDS = [["extract"], ["inspect"], ["demo"], ["validate"], ["build-targets"], ["train"], ["train", "ddc"],
            ["train", "transformer"], ["generate"]]


@pytest.mark.parametrize("args", [
    ["extract"],                                   # missing argument
    ["extract", "x", "--jobs", "0"],               # out of range
    ["build-targets", "x", "--no-such-option"],    # unknown option
    ["validate", "--json", "extra-argument"],      # unexpected argument
    ["no-such-command"],                           # unknown command
    ["--bogus"],                                   # unknown option of the group
    ["train", "ddc", "--amp", "sometimes"],        # invalid choice, in a subgroup
    ["train", "nothing"],                          # unknown command of a subgroup
    ["generate", "song.ogg", "--beam-size", "x"],  # not an integer
])
def test_usage_errors_exit_64_not_2(args, tmp_path):
    r = CliRunner().invoke(main, args)
    assert r.exit_code == EXIT_USAGE == 64, r.output
    assert "Usage:" in r.output or "Error" in r.output


def test_a_usage_error_exits_64_from_the_installed_entry_point():
    """The real process (not only click's test runner) exits 64, with click's message on stderr."""
    r = subprocess.run([sys.executable, "-m", "mapkit", "extract", "--jobs", "0"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 64
    assert "Invalid value for '--jobs'" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("args", COMMANDS + [[]])
def test_every_help_lists_the_exit_codes(args):
    r = CliRunner().invoke(main, args + ["--help"])
    assert r.exit_code == 0
    assert "Exit codes:" in r.output
    for code in EXIT_CODES:
        assert f"\n  {code} " in r.output, (args, code)


def test_could_not_proceed_is_1_and_partial_is_2(tmp_path):
    from tests.test_cli_inspect import FIXTURES

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "Info.dat").write_text("{ broken")
    only_bad = CliRunner().invoke(main, ["inspect", str(bad)])
    assert only_bad.exit_code == 1  # nothing could be read
    partial = CliRunner().invoke(main, ["inspect", str(bad), str(FIXTURES / "werewolf howls")])
    assert partial.exit_code == 2   # finished, one item failed
    missing = CliRunner().invoke(main, ["extract", str(tmp_path / "nothing-here"), "--store", str(tmp_path / "s")])
    assert missing.exit_code == 1 and "error:" in missing.stderr


def test_a_full_disk_anywhere_is_one_line_and_exit_1(tmp_path, monkeypatch):
    """An OSError of the ground itself that no library code named still ends in one line, not a traceback."""
    import errno

    import mapkit.runs.extract

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "somewhere.tmp"))

    monkeypatch.setattr(mapkit.runs.extract, "extract", full)
    r = CliRunner().invoke(main, ["extract", str(tmp_path), "--store", str(tmp_path / "s")])
    assert r.exit_code == 1
    assert r.stderr.strip() == f"error: {tmp_path / 'somewhere.tmp'}: no space left on the disk"
