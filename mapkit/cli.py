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


@main.command("extract")
@click.argument("input_dir", metavar="INPUT", type=click.Path())
@store_option
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
              help="Worker processes (default: all cores; 1 = no pool).")
@click.option("--force", is_flag=True, help="Recompute songs already stored with the same audio and settings.")
@click.option("--backend", type=click.Choice(["joblib", "dask"]), default="joblib", show_default=True,
              help="Where the per-song work runs.")
@click.option("--scheduler", metavar="ADDRESS", default=None,
              help="Dask scheduler address, e.g. tcp://10.0.0.5:8786 (--backend dask; "
                   "default: a local cluster of --jobs workers).")
@click.option("--shard-songs", type=click.IntRange(min=1), default=64, show_default=True,
              help="Songs per HDF5 shard (a killed run loses at most one shard in progress).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def extract_command(input_dir, store, jobs, force, backend, scheduler, shard_songs, no_progress):
    """Audio -> padded log-mel features of both stages in the store's HDF5 shards.

    INPUT is a folder of level folders and/or .zip files (the audio is found
    through each info file), or a folder of bare audio files (.egg .ogg .wav
    .flac .mp3). Songs already stored with the same audio and settings are
    skipped, so an interrupted run is finished by running it again. A song
    that cannot be read is reported (STORE/reports/) and skipped; the exit
    code is then 2. stats.json (per-band mean/std) is updated at the end.

    \b
    Example:
      mapkit extract ~/BeatSaber/CustomLevels --store data/ --jobs 8
      mapkit extract songs/ --backend dask --scheduler tcp://10.0.0.5:8786
    """
    from mapkit.errors import MapkitError
    from mapkit.extract import extract

    try:
        report = extract(input_dir, store=store, jobs=jobs, force=force, backend=backend, scheduler=scheduler,
                         progress=not no_progress, shard_songs=shard_songs)
    except MapkitError as e:
        fail(str(e))
    click.echo(report.summary(), err=True)
    sys.exit(report.exit_code)


@main.command("inspect")
@click.argument("levels", metavar="LEVEL...", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True,
              help="One JSON document per level (one line each), with the full normalised note list.")
@click.option("--characteristic", default="Standard", show_default=True,
              help="Characteristic to read (case-insensitive), or 'all'.")
@click.option("--song-offset", type=click.Choice(["quarantine", "apply"]), default="quarantine", show_default=True,
              help="A non-zero _songTimeOffset quarantines the level, or is added to every note time.")
def inspect_command(levels, as_json, characteristic, song_offset):
    """Show what mapkit reads from levels: versions, tempo, notes, drops, quarantine.

    Each LEVEL is a level folder, a BeatSaver .zip, or a folder of levels.
    Per level: info version, BPM, audio file, and per characteristic and
    difficulty: file version (declared and from the keys), tempo map, note
    and bomb counts, notes dropped by reason, quarantine reason. An
    unreadable level is reported on stderr (file and reason), the others
    are still shown, and the exit code is 1.

    \b
    Example:
      mapkit inspect tests/fixtures/maps/JOURNEY --characteristic all
      mapkit inspect ~/BeatSaber/CustomLevels/ --json > levels.jsonl
    """
    from mapkit.preprocess.levels import inspect_levels
    from mapkit.settings import TargetSettings

    settings = TargetSettings(song_offset=song_offset)
    failed = 0
    for result in inspect_levels(levels, settings=settings, as_json=as_json, characteristic=characteristic):
        if result.error is not None:
            failed += 1
            click.echo(f"error: {result.error}", err=True)
        else:
            click.echo(result.text)
    sys.exit(1 if failed else 0)


@main.command("demo")
@click.argument("out_dir", metavar="DIR", type=click.Path(file_okay=False))
@click.option("--levels", "n_levels", type=click.IntRange(min=1), default=6, show_default=True,
              help="Number of generated levels (cycling v2, v3, v4 formats).")
@click.option("--duration", "duration_s", type=click.FloatRange(min=4.0), default=30.0, show_default=True,
              help="Length of each rendered song in seconds.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same bytes.")
@click.option("--no-songs", is_flag=True, help="Do not copy the Debian fretsonfire songs into DIR/songs.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def demo_command(out_dir, n_levels, duration_s, seed, no_songs, no_progress):
    """Write a deterministic demo set: real-format levels with matching audio, plus real songs.

    DIR/levels/ gets levels in the v2, v3 and v4 formats (with tempo changes;
    one as a BeatSaver .zip), each with a song.egg rendered from its notes: a
    drum hit exactly on every note over soft chords. When Debian's
    fretsonfire-songs packages are installed, two real songs are copied to
    DIR/songs/ for extract and generate. Prints what was written and the
    next commands.

    \b
    Example:
      mapkit demo demo/
      mapkit extract demo/levels && mapkit build-targets demo/levels
      mapkit demo small/ --levels 3 --duration 10 --seed 1 --no-songs
    """
    from mapkit.demo import make_demo, quickstart_text

    try:
        demo = make_demo(out_dir, n_levels=n_levels, duration_s=duration_s, seed=seed,
                         include_fretsonfire=not no_songs, progress=not no_progress)
    except (OSError, ValueError) as e:
        fail(f"{out_dir}: {e}")
    click.echo(quickstart_text(demo))


@main.command("validate")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON document on stdout.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def validate_command(store, as_json, no_progress):
    """Check every length, alignment and vocabulary invariant of a store.

    Per song: feature rows = T + pads in both stages, T from the sample
    count, pad rows = silence, features finite, band sums and stats.json
    consistent. Per level: target length T, note frames = round(t * 100)
    in [0, T), frame classes agree with the notes, tokens inside the
    vocabulary with BOS/EOS in place, token frames strictly increasing,
    gaps finite, tempo map monotone and finite. Per store: every shard
    readable, one settings hash, the vocabulary hash. Every failure names
    the song or level, the check and the numbers. Streams: memory does not
    grow with the store. Exit code 0 when clean, 1 when any check fails.

    \b
    Example:
      mapkit validate --store data/
      mapkit validate --store data/ --json > validation.json
    """
    import json

    from mapkit.datasets.validation import validate_store

    report = validate_store(store, progress=not no_progress and not as_json)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=1))
    else:
        click.echo(report.summary())
    sys.exit(report.exit_code)


@main.command("build-targets")
@click.argument("input_dir", metavar="INPUT", type=click.Path())
@store_option
@click.option("--characteristic", default="Standard", show_default=True,
              help="Characteristic to read (case-insensitive), or 'all'.")
@click.option("--vocab-size", type=click.IntRange(min=1), default=2000, show_default=True,
              help="States in the vocabulary (top K by count); the rest become UNK.")
@click.option("--rebuild-vocab", is_flag=True,
              help="Count states again over these and all stored levels, write a new vocab.json and "
                   "re-encode every stored level (implies --force).")
@click.option("--song-offset", type=click.Choice(["quarantine", "apply"]), default="quarantine", show_default=True,
              help="A non-zero _songTimeOffset quarantines the level, or is added to every note time.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
              help="Worker processes (default: all cores; 1 = no pool).")
@click.option("--force", is_flag=True, help="Redo levels already stored with the same files, audio and settings.")
@click.option("--backend", type=click.Choice(["joblib", "dask"]), default="joblib", show_default=True,
              help="Where the per-level work runs.")
@click.option("--scheduler", metavar="ADDRESS", default=None,
              help="Dask scheduler address, e.g. tcp://10.0.0.5:8786 (--backend dask; "
                   "default: a local cluster of --jobs workers).")
@click.option("--shard-levels", type=click.IntRange(min=1), default=256, show_default=True,
              help="Levels per HDF5 shard (a killed run loses at most one shard in progress).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def build_targets_command(input_dir, store, characteristic, vocab_size, rebuild_vocab, song_offset, jobs, force,
                          backend, scheduler, shard_levels, no_progress):
    """Levels -> per-frame classes and state-token sequences in the store's HDF5 shards.

    INPUT is a folder of level folders and/or .zip files (the same folder as
    for extract: every level needs its song's features, so run extract
    first). Per characteristic and difficulty: notes on frames round(t*100),
    frame_class [T], notes, tokens with their frames and gaps. The first run
    counts the states and writes vocab.json; later runs encode with it (unseen
    states become UNK). Levels already stored with the same files, audio and
    settings are skipped. Quarantined difficulties and unreadable levels are
    reported (STORE/reports/) and the exit code is then 2.

    \b
    Example:
      mapkit extract CustomLevels/ && mapkit build-targets CustomLevels/
      mapkit build-targets CustomLevels/ --characteristic all --vocab-size 4000 --rebuild-vocab
    """
    from mapkit.build_targets import build_targets
    from mapkit.errors import MapkitError
    from mapkit.settings import TargetSettings

    settings = TargetSettings(song_offset=song_offset, vocab_size=vocab_size)
    try:
        report = build_targets(input_dir, store=store, settings=settings, characteristic=characteristic, jobs=jobs,
                               force=force, rebuild_vocab=rebuild_vocab, backend=backend, scheduler=scheduler,
                               progress=not no_progress, shard_levels=shard_levels)
    except MapkitError as e:
        fail(str(e))
    click.echo(report.summary(unit="items"), err=True)
    sys.exit(report.exit_code)
