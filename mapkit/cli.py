"""The ``mapkit`` command line: thin click commands over library functions.

Each command parses its arguments and calls one function of the library that
does the work (and can be called from Python). Heavy libraries (librosa,
torch) are imported inside the commands, so ``mapkit --help`` starts fast.

Exit codes: 0 success; 1 failure (unreadable input, validation failed, bad
usage of the store); 2 the run finished but skipped or quarantined some items
(details in the store's ``reports/``).
"""

from __future__ import annotations

import sys

import click

from mapkit import __version__

DEFAULT_STORE = "./mapkit-data"

store_option = click.option(
    "--store",
    type=click.Path(file_okay=False),
    default=DEFAULT_STORE,
    envvar="MAPKIT_STORE",
    show_default=True,
    help="Store folder (or set MAPKIT_STORE).",
)


def fail(message: str, code: int = 1):
    """Print ``message`` to stderr and exit with ``code``."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="mapkit")
def main():
    """mapkit: Beat Saber levels -> aligned training tensors in HDF5 -> a two-stage level generator.

    \b
    Typical run:
      mapkit extract CustomLevels/          # audio -> features/
      mapkit build-targets CustomLevels/    # levels -> targets/ + vocab.json
      mapkit validate                       # prove every invariant
      mapkit train ddc && mapkit train transformer
      mapkit generate song.ogg
    """


# --- commands: each below is one function of the library ---
