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
