import subprocess
import sys

from click.testing import CliRunner

import mapkit
from mapkit.cli import main


def test_version():
    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0
    assert mapkit.__version__ in r.output


def test_help_lists_every_command_with_a_summary():
    r = CliRunner().invoke(main, ["--help"])
    assert r.exit_code == 0
    for name, cmd in main.commands.items():
        assert name in r.output
        assert cmd.get_short_help_str(), f"{name} has no one-line summary"
        sub = CliRunner().invoke(main, [name, "--help"])
        assert sub.exit_code == 0, name
        assert "Example" in sub.output, f"{name} --help shows no example"


def test_help_does_not_import_heavy_libraries():
    code = "import sys; from mapkit.cli import main; import mapkit.cli;" \
           "print('torch' in sys.modules, 'librosa' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False False"


def test_help_summaries_are_whole_lines():
    """Every command (and train's subcommands) has a short_help of one line under 60 characters: no '...'."""
    groups = [(main, CliRunner().invoke(main, ["--help"]).output)]
    groups.append((main.commands["train"], CliRunner().invoke(main, ["train", "--help"]).output))
    for group, output in groups:
        commands = output.split("Commands:")[1]
        assert "..." not in commands, commands
        for name, cmd in group.commands.items():
            assert cmd.short_help and len(cmd.short_help) < 60 and "\n" not in cmd.short_help, name
            assert f"{name}  " in output and cmd.short_help in output, name
