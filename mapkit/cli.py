"""The ``mapkit`` command line: thin click commands over library functions.

Each command parses its arguments and calls one function of the library that
does the work (and can be called from Python). Heavy libraries (librosa,
torch) are imported inside the commands, so ``mapkit --help`` starts fast.

Exit codes (:data:`EXIT_CODES`, the same for every command, listed in every
``--help``): 0 success; 1 the run could not proceed (unreadable input, a store
on bad ground, a locked store) or validation failed; 2 the run finished but
skipped, failed or quarantined some items (details in the store's
``reports/``); 64 bad usage of the command line (unknown option, missing or
invalid argument: sysexits' ``EX_USAGE``), so a script can tell a typo from a
partial run; 130 or 143 (128 + the signal) stopped by Ctrl-C or SIGTERM
(``extract`` and ``build-targets`` then print one line and keep what they wrote;
``train`` saves ``last.pt`` first).
"""

from __future__ import annotations

import errno
import sys
from contextlib import contextmanager

import click

from mapkit import __version__

DEFAULT_STORE = "./mapkit-data"

#: Exit codes of every command.
EXIT_OK, EXIT_FAILED, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2, 64
EXIT_CODES = {EXIT_OK: "success",
              EXIT_FAILED: "could not proceed, or validation failed (message on stderr)",
              EXIT_PARTIAL: "finished, but some items failed or were quarantined (see STORE/reports/)",
              EXIT_USAGE: "bad usage: unknown option, missing or invalid argument",
              128 + 2: "stopped by Ctrl-C (SIGINT); extract and build-targets keep what they wrote",
              128 + 15: "stopped by SIGTERM; likewise"}


#: OSErrors that say the disk or folder cannot be written, whatever the file: reported in one line.
_GROUND_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


@contextmanager
def _usage_exit_code():
    """Give click's usage errors (exit 2 by default) :data:`EXIT_USAGE` instead: 2 means a partial run here."""
    try:
        yield
    except click.UsageError as e:
        e.exit_code = EXIT_USAGE
        raise


def _format_exit_codes(formatter):
    with formatter.section("Exit codes"):
        formatter.write_dl([(str(code), what) for code, what in EXIT_CODES.items()])


class MapkitCommand(click.Command):
    """A command whose ``--help`` ends with the exit codes."""

    def format_epilog(self, ctx, formatter):
        super().format_epilog(ctx, formatter)
        _format_exit_codes(formatter)


class MapkitGroup(click.Group):
    """The ``mapkit`` group: usage errors exit :data:`EXIT_USAGE`; every ``--help`` lists the exit codes."""

    command_class = MapkitCommand
    group_class = type  # subgroups (``train``) are MapkitGroups too

    def make_context(self, info_name, args, parent=None, **extra):
        with _usage_exit_code():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx):
        with _usage_exit_code():
            try:
                return super().invoke(ctx)
            except OSError as e:
                # the ground itself fails (full disk, read-only, not ours) somewhere not named: one line, exit 1
                if e.errno not in _GROUND_ERRNOS:
                    raise
                from mapkit.datasets.store import os_error_reason

                fail(f"{e.filename}: {os_error_reason(e)}" if e.filename else os_error_reason(e))

    def format_epilog(self, ctx, formatter):
        super().format_epilog(ctx, formatter)
        _format_exit_codes(formatter)

store_option = click.option(
    "--store",
    type=click.Path(),  # a file there is the library's error (exit 1, naming it), not a usage error
    default=DEFAULT_STORE,
    envvar="MAPKIT_STORE",
    show_default=True,
    help="Store folder (or set MAPKIT_STORE).",
)


def parallel_options(unit: str, force_help: str):
    """The options of a batch command over input songs: --jobs, --force, --backend, --scheduler."""
    options = [
        click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
                     help="Worker processes (default: all cores; 1 = no pool)."),
        click.option("--force", is_flag=True, help=force_help),
        click.option("--backend", type=click.Choice(["joblib", "dask"]), default="joblib", show_default=True,
                     help=f"Where the per-{unit} work runs."),
        click.option("--scheduler", metavar="ADDRESS", default=None,
                     help="Dask scheduler address, e.g. tcp://10.0.0.5:8786 (--backend dask; "
                          "default: a local cluster of --jobs workers)."),
    ]

    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


item_timeout_option = click.option(
    "--item-timeout", type=click.FloatRange(min=0, min_open=True), default=600.0, show_default=True,
    metavar="SECONDS",
    help="Time limit of one item: past it, it fails with 'timed out after N s' and the run goes on.")


def interrupted(e) -> None:
    """Print the one line of a run stopped by SIGINT/SIGTERM and exit with 128 + the signal number."""
    from mapkit.runs.runner import INTERRUPTED_MESSAGE

    report = getattr(e, "report_path", None)
    click.echo(INTERRUPTED_MESSAGE + (f" (see {report})" if report else ""), err=True)
    sys.exit(e.exit_code)


def warn_ignored(report) -> None:
    """One stderr line per input entry a run skipped on purpose (links leaving the input, stray info files)."""
    from mapkit.datasets.names import printable

    for path, reason in report.ignored:
        click.echo(printable(f"ignored: {path}: {reason}"), err=True)


def fail_error(e) -> None:
    """Print a :class:`~mapkit.errors.MapkitError` and exit: 64 for a UsageError, else 1."""
    from mapkit.errors import UsageError

    fail(str(e), EXIT_USAGE if isinstance(e, UsageError) else EXIT_FAILED)


def fail(message: str, code: int = 1):
    """Print ``message`` to stderr and exit with ``code``."""
    from mapkit.datasets.names import printable

    click.echo(printable(f"error: {message}"), err=True)
    sys.exit(code)


@click.group(cls=MapkitGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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


@main.command("extract", short_help="Audio -> log-mel features of both stages.")
@click.argument("input_dir", metavar="INPUT", type=click.Path())
@store_option
@parallel_options("song", "Recompute songs already stored with the same audio and settings.")
@click.option("--shard-songs", type=click.IntRange(min=1), default=64, show_default=True,
              help="Songs per HDF5 shard (a killed run loses at most one shard in progress).")
@item_timeout_option
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def extract_command(input_dir, store, jobs, force, backend, scheduler, shard_songs, item_timeout, no_progress):
    """Audio -> padded log-mel features of both stages in the store's HDF5 shards.

    INPUT is a folder of level folders and/or .zip files (the audio is found
    through each info file), or a folder of bare audio files (.egg .ogg .wav
    .flac .mp3). Songs already stored with the same audio and settings are
    skipped, so an interrupted run is finished by running it again. A song
    that cannot be read is reported (STORE/reports/) and skipped; the exit
    code is then 2. stats.json (per-band mean/std) is updated at the end.
    Each song is fingerprinted (Chromaprint) and given a group_id shared with
    its other encodes and copies; training splits by group (docs/store.md).

    Only regular files are read; links below INPUT are followed only inside
    it; a zip member or gzip file may expand to at most 512 MiB (audio) or
    64 MiB (JSON): set MAPKIT_MAX_AUDIO_BYTES / MAPKIT_MAX_JSON_BYTES to
    change that. Ctrl-C or SIGTERM stops the run, keeping the songs written
    (exit code 130 or 143); run the command again to finish.

    \b
    Example:
      mapkit extract ~/BeatSaber/CustomLevels --store data/ --jobs 8
      mapkit extract songs/ --backend dask --scheduler tcp://10.0.0.5:8786
    """
    from mapkit.runs.runner import RunInterrupted, signals_stop_the_run
    from mapkit.errors import MapkitError
    from mapkit.runs.extract import extract

    try:
        with signals_stop_the_run():
            report = extract(input_dir, store=store, jobs=jobs, force=force, backend=backend, scheduler=scheduler,
                             progress=not no_progress, shard_songs=shard_songs, item_timeout=item_timeout)
    except MapkitError as e:
        fail(str(e))
    except RunInterrupted as e:
        interrupted(e)
    warn_ignored(report)
    click.echo(report.summary(), err=True)
    sys.exit(report.exit_code)


@main.command("inspect", short_help="Show what mapkit reads from levels.")
@click.argument("levels", metavar="LEVEL...", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True,
              help="One JSON document per level (one line each), with the full normalised note list and every "
                   "wall, arc, chain and event.")
@click.option("--characteristic", default="Standard", show_default=True,
              help="Characteristic to read (case-insensitive), or 'all'.")
@click.option("--song-offset", type=click.Choice(["quarantine", "apply"]), default="quarantine", show_default=True,
              help="A non-zero _songTimeOffset quarantines the level, or is added to every note time.")
def inspect_command(levels, as_json, characteristic, song_offset):
    """Show what mapkit reads from levels: versions, tempo, notes, drops, quarantine.

    Each LEVEL is a level folder, a BeatSaver .zip, or a folder of levels.
    Per level: info version, BPM, audio file, and per characteristic and
    difficulty: file version (declared and from the keys), tempo map, note
    and bomb counts, notes dropped by reason, then per object kind (walls,
    arcs, chains, light/boost/rotation/NJS events, event-box groups) read,
    kept and dropped by reason, and the quarantine reason. An
    unreadable level is reported on stderr (file and reason), the others
    are still shown, and the exit code is 2 (1 when no level could be read).

    \b
    Example:
      mapkit inspect tests/fixtures/maps/JOURNEY --characteristic all
      mapkit inspect ~/BeatSaber/CustomLevels/ --json > levels.jsonl
    """
    from mapkit.datasets.names import printable
    from mapkit.runs.inspect import inspect_levels
    from mapkit.settings import TargetSettings

    settings = TargetSettings(song_offset=song_offset)
    failed = shown = 0
    for result in inspect_levels(levels, settings=settings, as_json=as_json, characteristic=characteristic):
        if result.error is not None:
            failed += 1
            click.echo(printable(f"error: {result.error}"), err=True)
        else:
            shown += 1
            click.echo(printable(result.text))
    sys.exit(EXIT_OK if not failed else EXIT_PARTIAL if shown else EXIT_FAILED)


@main.command("demo", short_help="Write a deterministic demo set of levels.")
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
    from mapkit.runs.demo import make_demo, quickstart_text

    try:
        demo = make_demo(out_dir, n_levels=n_levels, duration_s=duration_s, seed=seed,
                         include_fretsonfire=not no_songs, progress=not no_progress)
    except (OSError, ValueError) as e:
        fail(f"{out_dir}: {e}")
    click.echo(quickstart_text(demo))


@main.command("validate", short_help="Check every invariant of a store.")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON document on stdout.")
@click.option("--quick", is_flag=True, help="Skip the checksums of the stored bytes (every other check runs).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def validate_command(store, as_json, quick, no_progress):
    """Check every length, alignment and vocabulary invariant of a store.

    Per song: feature rows = T + pads in both stages, T from the sample
    count, pad rows = silence, features finite, band sums and stats.json
    consistent. Per level: its song's features stored, target length T,
    the contract's dtypes, notes on the grid and on frames round(t * 100)
    in [0, T); frame classes, states, tokens (vocabulary encoding, BOS/EOS
    in place), token frames and gaps equal to those recomputed from the
    notes; tempo map finite, monotone, continuous and timing the notes.
    Per store: every shard readable, one settings hash, the vocabulary
    hash, no targets without features; a folder without shards is not a
    store. Checksums: every dataset's bytes and
    every group's attributes are what the writer wrote (moved, reordered or
    edited data fails; --quick skips this). Structure: no group, dataset or
    difficulty the contract does not name, none missing that a level lists.
    Every failure names the song or level, the check and the numbers.
    Warns (exit code unchanged) when more than 5 % of the stored levels' note
    states are UNK (validation songs aside): --rebuild-vocab fixes it.
    Streams: memory does not grow with the store. Exit code 0 when clean, 1
    when any check fails or a run is writing the store.

    \b
    Example:
      mapkit validate --store data/
      mapkit validate --store data/ --quick
      mapkit validate --store data/ --json > validation.json
    """
    import json

    from mapkit.datasets.validation import validate_store

    report = validate_store(store, progress=not no_progress and not as_json, checksums=not quick)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=1))
    else:
        click.echo(report.summary())
    sys.exit(report.exit_code)


@main.command("build-targets", short_help="Levels -> per-frame classes and tokens.")
@click.argument("input_dir", metavar="INPUT", type=click.Path())
@store_option
@click.option("--characteristic", default="Standard", show_default=True,
              help="Characteristic to read (case-insensitive), or 'all'.")
@click.option("--vocab-size", type=click.IntRange(min=1), default=2000, show_default=True,
              help="States in the vocabulary (top K by count); the rest become UNK.")
@click.option("--rebuild-vocab", is_flag=True,
              help="Count states again over the training songs' levels (these and the stored ones), write a new "
                   "vocab.json and re-encode every stored level (implies --force).")
@click.option("--val-fraction", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.1, show_default=True,
              help="The split mapkit train will use: the vocabulary is counted over the training songs only "
                   "(give train the same --val-fraction/--val-song/--seed).")
@click.option("--val-song", "val_songs", multiple=True,
              help="Validation song id, not counted into the vocabulary (repeatable; overrides --val-fraction).")
@click.option("--seed", type=int, default=0, show_default=True, help="The split's seed (mapkit train --seed).")
@click.option("--song-offset", type=click.Choice(["quarantine", "apply"]), default="quarantine", show_default=True,
              help="A non-zero _songTimeOffset quarantines the level, or is added to every note time.")
@parallel_options("level", "Redo levels already stored with the same files, audio and settings.")
@click.option("--shard-levels", type=click.IntRange(min=1), default=256, show_default=True,
              help="Levels per HDF5 shard (a killed run loses at most one shard in progress).")
@item_timeout_option
@click.option("--metadata", type=click.Path(dir_okay=False), default=None,
              help="JSON-lines file of BeatSaver map documents (hash, stats, automapper, ranked, tags; .gz ok), "
                   "joined on the level hash into the written levels' attrs (bs_score, bs_automapper...).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def build_targets_command(input_dir, store, characteristic, vocab_size, rebuild_vocab, val_fraction, val_songs, seed,
                          song_offset, jobs, force, backend, scheduler, shard_levels, item_timeout, metadata,
                          no_progress):
    """Levels -> per-frame classes and state-token sequences in the store's HDF5 shards.

    INPUT is a folder of level folders and/or .zip files (the same folder as
    for extract: every level needs its song's features, so run extract
    first). Per characteristic and difficulty: notes on frames round(t*100),
    frame_class [T], notes, tokens with their frames and gaps. The first run
    counts the states of the training songs' levels (the split mapkit train
    makes with the same --val-fraction/--val-song/--seed) and writes
    vocab.json; later runs encode with it (unseen states become UNK). Levels
    already stored with the same files, audio and settings are skipped.
    Quarantined difficulties and unreadable levels are reported
    (STORE/reports/, and by reason on stderr) and the exit code is then 2.
    The summary gives the share of UNK states (above 5 %: --rebuild-vocab).
    A first run whose training split holds no level (e.g. every song held
    out for validation) is refused, exit 1, nothing written. Inputs are read as by
    extract (regular files only, links inside INPUT, size caps); Ctrl-C or
    SIGTERM stops the run (exit code 130 or 143); run it again to finish.

    \b
    Example:
      mapkit extract CustomLevels/ && mapkit build-targets CustomLevels/
      mapkit build-targets CustomLevels/ --characteristic all --vocab-size 4000 --rebuild-vocab
      mapkit build-targets CustomLevels/ --metadata beatsaver-maps.jsonl --force
    """
    from mapkit.runs.build_targets import build_targets
    from mapkit.runs.runner import RunInterrupted, signals_stop_the_run
    from mapkit.errors import MapkitError
    from mapkit.settings import TargetSettings

    settings = TargetSettings(song_offset=song_offset, vocab_size=vocab_size)
    try:
        with signals_stop_the_run():
            report = build_targets(input_dir, store=store, settings=settings, characteristic=characteristic, jobs=jobs,
                                   force=force, rebuild_vocab=rebuild_vocab, val_fraction=val_fraction,
                                   val_songs=tuple(val_songs) or None, seed=seed, backend=backend,
                                   scheduler=scheduler, progress=not no_progress, shard_levels=shard_levels,
                                   item_timeout=item_timeout, metadata=metadata)
    except MapkitError as e:
        fail(str(e))
    except RunInterrupted as e:
        interrupted(e)
    warn_ignored(report)
    click.echo(report.summary(unit="items"), err=True)
    sys.exit(report.exit_code)


@main.command("audit", short_help="Check every stored level against its audio.")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print the full report (every difficulty) as JSON on stdout.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="PNG of the lag, strength and coverage distributions [default: next to the JSON report "
                   "in STORE/reports/].")
@parallel_options("level", "Audit again levels already audited with the same settings and features.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def audit_command(store, as_json, plot, jobs, force, backend, scheduler, no_progress):
    """Check every stored difficulty against its audio: offset, alignment peak, coverage.

    Cross-correlates each difficulty's notes with the onset strength of its
    song's stored features over lags of +-1 s and flags: offset (a clear
    peak more than 3 frames from 0: "offset +37 frames"), no_peak (peak
    strength below 4.5: notes unrelated to the audio), partial (notes span
    under 50 % of the song), few_notes (under 16 note frames). Results
    are stored as difficulty attributes (align_lag_frames, align_strength,
    align_coverage, audit_flags_json) for `mapkit train --exclude-flagged`;
    prints the flagged levels, writes STORE/reports/audit-*.json and a PNG.
    Levels already audited with the same settings are not redone. Exit code
    0 when every level was audited (flagged or not), 2 when some could not
    be (e.g. no features), 1 when the audit could not run, 130/143 when
    Ctrl-C or SIGTERM stopped it (the audits written so far are kept, and
    its report says how many levels were left).

    \b
    Example:
      mapkit audit --store data/
      mapkit audit --store data/ --json > audit.json
      mapkit audit --store data/ --plot lags.png --jobs 8
    """
    import json

    from mapkit.runs.audit import audit_store
    from mapkit.runs.runner import RunInterrupted, signals_stop_the_run
    from mapkit.errors import MapkitError

    try:
        with signals_stop_the_run():
            report = audit_store(store, jobs=jobs, force=force, backend=backend, scheduler=scheduler,
                                 progress=not no_progress and not as_json, plot=plot)
    except MapkitError as e:
        fail(str(e))
    except RunInterrupted as e:
        interrupted(e)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=1))
    else:
        click.echo(report.table())
        click.echo(f"plot: {report.plot_path}", err=True)
    sys.exit(report.exit_code)


@main.command("stats", short_help="What is in the corpus: counts and a figure sheet.")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print the whole JSON document on stdout.")
@click.option("--png", type=click.Path(dir_okay=False), default=None,
              help="Figure sheet PNG [default: STORE/reports/stats-<time>-<pid>.png].")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes reading targets shards in parallel.")
def stats_command(store, as_json, png, jobs):
    """What is in my corpus? Counts and distributions from the store's attributes.

    Levels by format version, characteristic and difficulty; songs by length
    and sample rate; BPM and tempo changes; notes per second per difficulty;
    notes, bombs, obstacles, arcs and chains per difficulty; quarantine,
    failure and drop reasons; audit flags; same-song groups, duplicate and
    automapped levels (when stored); UNK share per split. Reads attributes
    only (never features), so it is fast. Writes the JSON document and a
    PNG figure sheet to STORE/reports/ (--png to choose the PNG). Exit
    code 0, or 1 when there is no store.

    \b
    Example:
      mapkit stats --store data/
      mapkit stats --store data/ --json > corpus.json
      mapkit stats --store data/ --png corpus.png
    """
    import json
    import os

    from mapkit.datasets.store import Store, utc_timestamp, write_json_atomic
    from mapkit.errors import MapkitError
    from mapkit.runs.stats import corpus_stats, stats_text

    s = Store(store)
    stem = s.reports_dir / f"stats-{utc_timestamp()}-{os.getpid()}"
    try:
        doc = corpus_stats(s, png=png or f"{stem}.png", jobs=jobs)
        s.reports_dir.mkdir(parents=True, exist_ok=True)
        doc["report"] = str(write_json_atomic(f"{stem}.json", doc))
    except MapkitError as e:
        fail(str(e))
    except OSError as e:
        fail(f"{store}: cannot write the report: {e}")
    if as_json:
        click.echo(json.dumps(doc, indent=1))
    else:
        click.echo(stats_text(doc))
        click.echo(f"report: {doc['report']}; figures: {doc['png']}", err=True)


# --- train: stage 1 (ddc) and stage 2 (transformer) ---


def _preset_value(stage: str, field: str):
    """``(default preset's value, tiny preset's value)`` of a config field (``model.x`` for the model's)."""
    if stage == "ddc":
        from mapkit.train.ddc import ddc_config as config_fn
    else:
        from mapkit.train.transformer import transformer_config as config_fn
    values = []
    for preset in ("default", "tiny"):
        obj = config_fn(preset)
        for part in field.split("."):
            obj = getattr(obj, part)
        values.append(obj)
    return tuple(values)


def _show(value) -> str:
    if value is None:
        return "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


class PresetOption(click.Option):
    """An option whose default comes from the --preset; --help shows both presets' values.

    The values are read from the stage's config functions when help is shown
    (so ``mapkit --help`` does not import torch). ``auto`` documents a value
    that the run derives (e.g. ``eval_every``).
    """

    def __init__(self, *args, field: str, auto: str | None = None, **kwargs):
        self.preset_field, self.auto = field, auto
        super().__init__(*args, **kwargs)

    def get_help_record(self, ctx):
        record = super().get_help_record(ctx)
        if record is None:
            return None
        default, tiny = _preset_value(ctx.command.name, self.preset_field)
        if default is None and self.auto:
            shown = self.auto
        elif default == tiny:
            shown = _show(default)
        else:
            shown = f"{_show(default)}; --preset tiny: {_show(tiny)}"
        return record[0], f"{record[1]}  [default: {shown}]"


def _preset_option(*decls, field: str, auto: str | None = None, **kwargs):
    return click.option(*decls, cls=PresetOption, field=field, auto=auto, default=None, **kwargs)


def _difficulty_names(ctx, param, values):
    """--difficulty: canonical names (aliases like Expert+ accepted); a usage error lists the valid ones."""
    from mapkit.preprocess.difficulties import DIFFICULTIES, canonical_difficulty

    try:
        if isinstance(values, str):
            return canonical_difficulty(values)
        return tuple(canonical_difficulty(v) for v in values)
    except ValueError as e:
        raise click.BadParameter(f"{e}; the names are {', '.join(DIFFICULTIES)} (Expert+ also accepted)") from None


def _generate_difficulties(ctx, param, values):
    """generate --difficulty: canonical names, or 'all' kept as it is; a usage error lists the valid ones."""
    if any(str(v).strip().lower() == "all" for v in values):
        return ("all",)
    return _difficulty_names(ctx, param, values)


def _train_options(f):
    """The options both `mapkit train` stages share (applied bottom-up, so listed in reverse)."""
    options = [
        click.option("--no-progress", is_flag=True, help="No progress bar."),
        click.option("--recompute/--no-recompute", default=True, show_default=True,
                     help="Transformer: recompute each layer's activations in the backward pass (same "
                          "gradients, ~1/3 more compute, a fraction of the memory)."),
        click.option("--stop-at", type=click.IntRange(min=1), default=None,
                     help="Stop after this step (checkpointing) as if interrupted; go on later with --resume."),
        click.option("--overwrite", is_flag=True,
                     help="Start afresh in an OUT that holds an earlier run, deleting its checkpoints and logs "
                          "(without it, a non-empty OUT is refused)."),
        click.option("--resume", is_flag=True,
                     help="Continue from OUT/last.pt exactly where it stopped, with its settings; only "
                          "--max-steps, --epochs, --eval-every, --checkpoint-every, --log-every may change."),
        click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
                     help="DataLoader worker processes (each opens its own HDF5 handles)."),
        click.option("--amp", type=click.Choice(["auto", "off", "bf16", "fp16"]), default="auto",
                     show_default=True, help="Mixed precision (auto: on with CUDA)."),
        click.option("--device", default="auto", show_default=True,
                     help="auto (CUDA when present, else CPU), cpu, cuda, cuda:1..."),
        _preset_option("--log-every", field="log_every", type=click.IntRange(min=1),
                       help="Steps between train-loss logs."),
        _preset_option("--eval-every", field="eval_every", type=click.IntRange(min=1),
                       auto="auto: 20 validations per run", help="Steps between validations."),
        _preset_option("--checkpoint-every", field="checkpoint_every", type=click.IntRange(min=1),
                       help="Steps between checkpoints (OUT/last.pt; also written at the end, and on Ctrl-C)."),
        click.option("--difficulty", "difficulties", multiple=True, callback=_difficulty_names,
                     help="Train on these difficulties only: Easy, Normal, Hard, Expert, ExpertPlus "
                          "(repeatable; default all)."),
        click.option("--exclude-flagged", is_flag=True,
                     help="Leave out difficulties flagged by `mapkit audit` (offset, no alignment peak, partial...)."),
        click.option("--exclude-automapped", is_flag=True, default=None,
                     help="Leave out levels flagged automapped (info-file rules or BeatSaver's flag)."),
        click.option("--min-score", type=click.FloatRange(0.0, 1.0), default=None,
                     help="Keep only levels whose BeatSaver score (build-targets --metadata) is at least this."),
        click.option("--characteristic", default="Standard", show_default=True, help="Characteristic to train on."),
        click.option("--val-song", "val_songs", multiple=True,
                     help="Validation song id (repeatable; overrides --val-fraction)."),
        click.option("--val-fraction", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.1,
                     show_default=True, help="Songs held out for validation (by a hash of the song id)."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split and of training."),
        _preset_option("--grad-clip", field="grad_clip", type=click.FloatRange(min=0.0, min_open=True),
                       help="Gradient clipping by global norm."),
        _preset_option("--warmup-steps", field="warmup_steps", type=click.IntRange(min=0),
                       help="Linear learning-rate warm-up."),
        _preset_option("--lr", field="lr", type=click.FloatRange(min=0.0, min_open=True), help="Peak learning rate."),
        _preset_option("--batch-size", field="batch_size", type=click.IntRange(min=1),
                       help="Items per step and process."),
        _preset_option("--epochs", field="epochs", type=click.IntRange(min=1),
                       help="Stop after this many epochs (whichever of --epochs/--max-steps comes first; with only "
                            "--max-steps, epochs are unlimited)."),
        _preset_option("--max-steps", field="max_steps", type=click.IntRange(min=1),
                       help="Stop after this many steps."),
        click.option("--preset", type=click.Choice(["tiny", "default"]), default="default", show_default=True,
                     help="Model size: default (stage 1: DDC's C-LSTM, bidirectional; stage 2: the 6+6-layer "
                          "transformer) or tiny (tests, CPU)."),
        store_option,
    ]
    for option in options:
        f = option(f)
    return f


def _train_config_kwargs(kw: dict) -> dict:
    """Config overrides from the shared options (None = the preset's value)."""
    return dict(max_steps=kw["max_steps"], epochs=kw["epochs"], batch_size=kw["batch_size"], lr=kw["lr"],
                warmup_steps=kw["warmup_steps"], grad_clip=kw["grad_clip"], seed=kw["seed"],
                val_fraction=kw["val_fraction"], val_songs=tuple(kw["val_songs"]) or None,
                characteristic=kw["characteristic"], difficulties=tuple(kw["difficulties"]) or None,
                exclude_flagged=kw["exclude_flagged"],
                min_score=kw["min_score"], exclude_automapped=kw["exclude_automapped"] or None,
                checkpoint_every=kw["checkpoint_every"], eval_every=kw["eval_every"], log_every=kw["log_every"])


#: Exit code of a training run stopped by a signal after saving last.pt: 128 + the signal number, as a shell does.
SIGNAL_EXIT = {"SIGINT": 130, "SIGTERM": 143}


def _explicit(ctx, names) -> set:
    """The parameters of ``names`` given on the command line or by an environment variable."""
    from click.core import ParameterSource

    return {n for n in names if ctx.get_parameter_source(n) in (ParameterSource.COMMANDLINE,
                                                                   ParameterSource.ENVIRONMENT)}


#: Options that choose the model: a resumed run keeps its checkpoint's model.
MODEL_OPTIONS = ("preset", "d_model", "n_layers", "n_heads", "d_ff", "dropout", "copy_head", "beat_phase")


def _resume_config(config_fn, out, kw: dict, config_overrides: dict):
    """--resume: the checkpoint's config, with only the options given on the command line changed."""
    import dataclasses

    from mapkit.errors import TrainingError
    from mapkit.train.loop import resumed_config

    given = _explicit(click.get_current_context(), list(kw) + list(config_overrides))
    fresh = config_fn(kw["preset"], **config_overrides, **_train_config_kwargs(kw))
    fields = {f.name for f in dataclasses.fields(fresh)}
    changes = {name: getattr(fresh, name) for name in given if name in fields}
    model_given = sorted(given & set(MODEL_OPTIONS))
    if model_given and resumed_config(out, type(fresh), {}).model != fresh.model:
        names = ", ".join("--" + k.replace("_", "-") for k in model_given)
        raise TrainingError(out, f"a resumed run keeps its model: {names} cannot change; train from scratch "
                                 f"in another --out to change it")
    return resumed_config(out, type(fresh), changes)


def _run_training(train_fn, config_fn, out, kw: dict, **config_overrides):
    from mapkit.errors import MapkitError
    from mapkit.train.loop import RunOptions

    options = RunOptions(device=kw["device"], amp=kw["amp"], num_workers=kw["workers"], resume=kw["resume"],
                         progress=not kw["no_progress"], stop_at=kw["stop_at"], overwrite=kw["overwrite"],
                         recompute=kw["recompute"])
    if kw["resume"] and kw["overwrite"]:
        fail("--resume continues the run in OUT, --overwrite deletes it: give one of them", EXIT_USAGE)
    try:
        if kw["resume"]:
            config = _resume_config(config_fn, out, kw, config_overrides)
        else:
            config = config_fn(kw["preset"], **config_overrides, **_train_config_kwargs(kw))
        result = train_fn(kw["store"], out, config, options)
    except MapkitError as e:
        fail(str(e))
    except ValueError as e:
        fail(f"bad training settings: {e}")
    summary = result.summary()
    if summary:
        click.echo(summary)
    if result.interrupted:
        click.echo(result.interruption(), err=True)
        sys.exit(SIGNAL_EXIT.get(result.interrupted, 1))


@main.group("train", short_help="Train ddc, transformer or objects (the models).")
def train_group():
    """Train the two models on a store: `ddc` (stage 1), then `transformer` (stage 2); `objects` fits the
    object model of generate (walls, arcs, chains, lights; counting, seconds).

    Both split the store's songs into training and validation (a song is
    never in both), log to OUT/metrics.jsonl, plot OUT/curves.png, and
    write OUT/last.pt (every --checkpoint-every steps and at the end) and
    OUT/best.pt. On several GPUs run them under torchrun.

    An OUT that holds an earlier run is refused: --resume continues it,
    --overwrite deletes it. Ctrl-C (or SIGTERM) finishes the step, saves
    OUT/last.pt and exits with 130 (143); a second Ctrl-C stops at once.

    \b
    Example:
      mapkit train ddc --store data/ --max-steps 20000
      torchrun --nproc_per_node 4 -m mapkit train transformer --store data/
    """


@train_group.command("ddc", short_help="Stage 1: on which frames notes go.")
@_train_options
@click.option("--out", type=click.Path(file_okay=False), default="mapkit-runs/ddc", show_default=True,
              help="Folder of checkpoints, metrics.jsonl and curves.png.")
@_preset_option("--window", field="window", type=click.IntRange(min=1), help="Output frames per training item.")
@_preset_option("--pos-weight", field="pos_weight", type=click.FloatRange(min=0.0, min_open=True),
                auto="empty/note frame ratio of the training split", help="Weight of note frames in the loss.")
@_preset_option("--smoothing", field="smoothing", type=click.IntRange(min=0),
                help="Odd smoothing window (frames) before peak picking.")
@_preset_option("--min-gap", "min_gap_frames", field="min_gap_frames", type=click.IntRange(min=1),
                help="Minimum frames between picked peaks.")
@click.option("--targets", type=click.Choice(["notes", "events"]), default="notes", show_default=True,
              help="notes: where notes go; events: also every frame_events channel (walls, arcs, chains, "
                   "lights...), with per-channel F1 in validation.")
@click.option("--realign", is_flag=True, default=None,
              help="Move each level's targets onto the audio by its `mapkit audit` lag (a map 20 ms early "
                   "trains and validates on the onsets it means). Levels never audited are unchanged.")
@_preset_option("--gain-db", field="gain_db", type=click.FloatRange(min=0.0),
                help="Training augmentation: a random gain of up to +-this many dB per window (0 = off).")
@_preset_option("--mel-shift", "mel_shift_bins", field="mel_shift_bins", type=click.IntRange(min=0),
                help="Training augmentation: a random shift of up to +-this many mel bins per window (0 = off).")
@click.option("--beat-phase/--no-beat-phase", default=None,
              help="Feed the model every frame's phase in the half beat, beat and two beats, from the song's "
                   "estimated tempo and first beat (default: the preset's; on in default, off in tiny).")
def train_ddc_command(out, window, pos_weight, smoothing, min_gap_frames, targets, realign, beat_phase, gain_db,
                      mel_shift_bins, **kw):
    """Stage 1: the C-LSTM that says on which frames notes go.

    Trains on windows of placement features (+-7 context frames) with the
    difficulty as input. Validation: onset precision/recall/F1 at +-20 ms
    after peak picking; the F1-best threshold of each difficulty (and the
    best single one) is saved in the checkpoint for `mapkit generate`.

    \b
    Example:
      mapkit train ddc --store data/ --out mapkit-runs/ddc --max-steps 20000
      mapkit train ddc --preset tiny --max-steps 300 --device cpu
      mapkit train ddc --resume --max-steps 40000
      mapkit train ddc --targets events --out mapkit-runs/ddc-events
      mapkit train ddc --exclude-flagged --realign   (after mapkit audit)
    """
    from mapkit.train.ddc import ddc_config, train_ddc

    _run_training(train_ddc, ddc_config, out, kw, window=window, pos_weight=pos_weight, smoothing=smoothing,
                  min_gap_frames=min_gap_frames, targets=targets, realign=realign, beat_phase=beat_phase,
                  gain_db=gain_db, mel_shift_bins=mel_shift_bins)


@train_group.command("objects", short_help="The object model of generate: walls, arcs, chains, lights.")
@store_option
@click.option("--out", type=click.Path(dir_okay=False), default="mapkit-runs/objects/priors.json", show_default=True,
              help="The object model (JSON) for mapkit generate --objects.")
@click.option("--val-fraction", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.1, show_default=True,
              help="The split of mapkit train (give the same): validation songs are left out.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split.")
def train_objects_command(store, out, val_fraction, seed):
    """Fit the object model of `mapkit generate` on the store's training songs.

    Per difficulty: walls, arcs, chains, light and boost events per minute,
    and the empirical distributions generation draws from (wall shapes and
    durations; which same-colour note an arc joins, its multipliers and
    mid-anchor; chain slices, squish and length; light types and values,
    events per frame). Counting only: seconds. Generation places objects
    where the stage-1 event head (`mapkit train ddc --targets events`) says.

    \b
    Example:
      mapkit train objects --store data/
      mapkit train objects --store data/ --val-fraction 0.2 --out runs/objects.json
    """
    from mapkit.errors import MapkitError
    from mapkit.train.objects import fit_object_priors

    try:
        priors = fit_object_priors(store, out, val_fraction=val_fraction, seed=seed, progress=True)
    except MapkitError as e:
        fail(str(e))
    for difficulty, table in priors.difficulties.items():
        rates = ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in table["rates"].items())
        click.echo(f"{difficulty}: {table['levels']} levels, {table['minutes']:.1f} min; per minute: {rates}")
    click.echo(f"wrote {out} (hash {priors.hash})")


@train_group.command("transformer", short_help="Stage 2: which notes go on them.")
@_train_options
@click.option("--out", type=click.Path(file_okay=False), default="mapkit-runs/transformer", show_default=True,
              help="Folder of checkpoints, metrics.jsonl and curves.png.")
@_preset_option("--d-model", field="model.d_model", type=click.IntRange(min=1), help="Model width.")
@_preset_option("--layers", "n_layers", field="model.n_encoder_layers", type=click.IntRange(min=1),
                help="Encoder and decoder layers each.")
@_preset_option("--heads", "n_heads", field="model.n_heads", type=click.IntRange(min=1), help="Attention heads.")
@_preset_option("--d-ff", field="model.d_ff", type=click.IntRange(min=1),
                help="Feed-forward width (4 x --d-model when that is given).")
@_preset_option("--dropout", field="model.dropout", type=click.FloatRange(0.0, 1.0, max_open=True),
                help="Dropout of the residual, feed-forward and input layers (none on the attention weights).")
@_preset_option("--max-tokens", field="max_tokens", type=click.IntRange(min=2),
                help="Longer levels are cropped to a random window of this many tokens.")
@click.option("--copy-head/--no-copy-head", default=None,
              help="Copy the state of an earlier note that sounds alike [default: on].")
def train_transformer_command(out, d_model, n_layers, n_heads, d_ff, dropout, max_tokens, copy_head, **kw):
    """Stage 2: the encoder-decoder that says which notes go on each note frame.

    Encoder over per-note stage-2 features and gaps, causal decoder over
    state tokens that also reads the encoder output of the note it
    predicts, label smoothing 0.1. Validation: token accuracy and
    perplexity; at the end, metrics.jsonl gets the audio ablation (the
    same figures with the audio zeroed, shuffled, or another song's).
    The vocabulary is saved in the checkpoint.

    \b
    Example:
      mapkit train transformer --store data/ --max-steps 100000
      mapkit train transformer --preset tiny --max-steps 300 --device cpu
      mapkit train transformer --d-model 256 --layers 4 --heads 4
      mapkit train transformer --no-copy-head     # design 3 without the copy head
    """
    from mapkit.train.transformer import train_transformer, transformer_config

    _run_training(train_transformer, transformer_config, out, kw, d_model=d_model, n_layers=n_layers,
                  n_heads=n_heads, d_ff=d_ff, dropout=dropout, max_tokens=max_tokens, copy_head=copy_head)


# --- generate: both models -> a playable level ---


@main.command("generate", short_help="Generate a playable level for a song.")
@click.argument("song", type=click.Path())
@click.option("--placement", type=click.Path(dir_okay=False), default="mapkit-runs/ddc/last.pt", show_default=True,
              help="Stage-1 checkpoint (mapkit train ddc).")
@click.option("--selection", type=click.Path(dir_okay=False), default="mapkit-runs/transformer/last.pt",
              show_default=True, help="Stage-2 checkpoint (mapkit train transformer).")
@click.option("--difficulty", "difficulties", multiple=True, default=("Expert",), show_default=True,
              callback=_generate_difficulties,
              help="Easy, Normal, Hard, Expert or ExpertPlus (conditions stage 1; names the difficulty file); "
                   "repeatable, or 'all' for the five: one level, one info file, one beatmap each.")
@click.option("--format", "level_format", type=click.Choice(["v3", "v4"]), default="v3", show_default=True,
              help="v3: Info.dat v2.1.0 + v3.3.0 beatmaps (tempo as bpmEvents); v4: Info 4.0.1, beatmaps 4.1.0, "
                   "a lightshow per difficulty and BPMInfo.dat (tempo as bpmData regions).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="mapkit-generated", show_default=True,
              help="Folder for the level folder <song>-mapkit/ and its .zip.")
@click.option("--beam-size", type=click.IntRange(min=1), default=None,
              help="Decode stage 2 by beam search with this many beams (1 = greedy) instead of sampling "
                   "(beams collapse onto a few layouts).")
@click.option("--temperature", type=click.FloatRange(min=0.0, min_open=True), default=None,
              help="Sampling temperature of stage 2 [default: 1.0 for every difficulty].")
@click.option("--top-p", type=click.FloatRange(0.0, 1.0, min_open=True), default=None,
              help="Sample from the nucleus: the most probable states holding this much probability [default: by "
                   "difficulty, Easy 0.8, Normal 0.85, Hard to Expert+ 0.9, moved into the object model's variety "
                   "band; README \"Stage-2 decoding\"]. Given: used as is for every difficulty.")
@click.option("--top-k", type=click.IntRange(min=1), default=None,
              help="Sample only from the K most probable states [default: no limit].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sampling.")
@click.option("--no-flow", is_flag=True,
              help="Do not keep the flow playable (by default stage 2 never picks a state that makes a parity "
                   "error, a vision block or a collision as mapkit evaluate counts them, unless no state avoids it).")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=None,
              help="Note threshold of the peak picking, used as given (default: the checkpoint's validated one "
                   "for the difficulty, moved into the human note-density band of the object model).")
@click.option("--no-snap", is_flag=True, help="Keep exact note times instead of snapping to 1/16 beat within 10 ms.")
@click.option("--no-align-grid", is_flag=True,
              help="Write the estimated tempo map as it is: the song's tempo from 0 s, changes on its whole beats "
                   "(by default a one-beat lead-in tempo, and a one-beat bridge at each change, put the map's "
                   "whole beats on the music's estimated beats).")
@click.option("--device", default="cpu", show_default=True, help="Torch device of the models (cpu, cuda...).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Torch CPU threads. 1 is fastest on small CPUs: decoding is a long chain of small steps.")
@click.option("--evaluate", "evaluate_level", is_flag=True,
              help="Print the generated level's metrics (as mapkit evaluate does).")
@click.option("--baseline", type=click.Path(dir_okay=False), default=None,
              help="With --evaluate: human baseline JSON (mapkit evaluate --save-baseline) for percentiles.")
@click.option("--force", is_flag=True, help="Replace an earlier generated level of the same name in OUT.")
@click.option("--objects", type=click.Path(dir_okay=False), default="mapkit-runs/objects/priors.json",
              show_default=True, help="Object model (mapkit train objects); without it, or with a stage 1 trained "
                                      "without --targets events, the level has notes only.")
@click.option("--no-walls", is_flag=True, help="No walls.")
@click.option("--no-arcs", is_flag=True, help="No arcs.")
@click.option("--no-chains", is_flag=True, help="No chains.")
@click.option("--no-lights", is_flag=True, help="No light or colour-boost events.")
def generate_command(song, placement, selection, difficulties, level_format, out_dir, beam_size, temperature, top_p,
                     top_k, seed, no_flow, threshold, no_snap, no_align_grid, device, threads, evaluate_level,
                     baseline, force, objects, no_walls, no_arcs, no_chains, no_lights):
    """Generate a playable level for SONG with the two trained models.

    SONG is an audio file (.ogg/.egg, .wav, .flac, .mp3), a level folder or a
    .zip. Writes OUT/<song>-mapkit/ (Info.dat v2.1.0, a <Difficulty>Standard.dat
    v3.3.0 per difficulty, song.egg, cover.png; with --format v4 the v4 files)
    and OUT/<song>-mapkit.zip for Beat Saber or BeatSaver. The tempo map is
    estimated from the audio (one BPM unless the music's tempo changes; a
    one-beat lead-in tempo puts its whole beats on the music's); note
    times come from stage-1 peaks, notes from stage 2 by nucleus sampling
    (temperature 1.0, top-p by difficulty: narrower for easier ones; or
    --beam-size), never breaking swing parity, vision or collision rules
    where a state avoids it; walls, arcs, chains and
    lights from the stage-1 event head (--targets events) and the object
    model (--objects, mapkit train objects), each kind switched off by its
    --no-* flag (a missing model or event head: notes only, with a warning,
    exit code 0). Features and tempo are computed once for all difficulties.
    The song name and
    artist come from the source level's info file or the audio's tags. An
    existing OUT/<song>-mapkit is not replaced without --force. Exit code 2: the level
    was written but something is off (e.g. no notes found; said on stderr).
    Checkpoints are loaded with pickle: load only checkpoints you trust.

    \b
    Example:
      mapkit generate song.ogg
      mapkit generate song.ogg --difficulty Hard --out levels/ --seed 3
      mapkit generate song.ogg --difficulty all --format v4
      mapkit generate song.ogg --difficulty Hard --difficulty Expert+
      mapkit generate song.ogg --temperature 0.8 --top-p 0.95 --no-snap
      mapkit generate song.ogg --beam-size 4
      mapkit generate song.ogg --evaluate --baseline human.json
      mapkit generate song.ogg --objects runs/objects.json --no-chains --no-lights
    """
    from mapkit.errors import MapkitError
    from mapkit.preprocess.object_decoding import OBJECT_SWITCHES
    from mapkit.runs.generate import generate

    if beam_size is not None and (temperature, top_p, top_k) != (None, None, None):
        fail("--beam-size decodes by beam search; --temperature, --top-p and --top-k are sampling options: "
             "give one or the other", EXIT_USAGE)
    # an option left out keeps generate's per-difficulty default (SAMPLING_BY_DIFFICULTY)
    sampling = {} if beam_size is not None else {k: v for k, v in dict(
        temperature=temperature, top_p=top_p, top_k=top_k).items() if v is not None}
    off = {"walls": no_walls, "arcs": no_arcs, "chains": no_chains, "lights": no_lights}
    kinds = [k for switch, ks in OBJECT_SWITCHES.items() if not off[switch] for k in ks]
    try:
        human = None
        if baseline is not None:
            from mapkit.runs.evaluate import load_baseline

            human = load_baseline(baseline)  # before generating: a bad file fails fast
        level = generate(song, placement=placement, selection=selection, device=device, difficulty=difficulties,
                         format=level_format, beam_size=beam_size, seed=seed, threshold=threshold, flow=not no_flow,
                         snap=not no_snap, align_grid=not no_align_grid, out_dir=out_dir, force=force,
                         threads=threads, objects=objects,
                         object_kinds=kinds, **sampling)
    except MapkitError as e:
        fail(str(e))
    click.echo(level.summary())
    if level.flow_violations:
        click.echo(f"note: {level.flow_violations} stage-2 picks break a flow rule (parity, vision or collision): "
                   f"no layout of the vocabulary avoided it there", err=True)
    if evaluate_level or baseline is not None:
        from mapkit.runs.evaluate import evaluate_generated, format_table

        click.echo(format_table(evaluate_generated(level, human, baseline)))
    for warning in level.notices + level.warnings:
        click.echo(f"warning: {warning}", err=True)
    sys.exit(level.exit_code)


# --- evaluate: objective metrics of levels against human baselines ---


@main.command("evaluate", short_help="Objective metrics of levels, placed among human levels.")
@click.argument("levels", metavar="[LEVEL]...", nargs=-1, type=click.Path())
@click.option("--reference", type=click.Path(), default=None,
              help="A level whose same difficulty is the onset reference: onset precision/recall/F1 at +-20 and "
                   "+-50 ms.")
@click.option("--baseline", type=click.Path(dir_okay=False), default=None,
              help="Human baseline JSON (--save-baseline): each metric's human percentile, ! outside 5-95 %.")
@click.option("--store", type=click.Path(file_okay=False), default=None,
              help="Evaluate the human levels stored in this store's targets/ (instead of LEVEL...).")
@click.option("--save-baseline", "save_baseline_to", type=click.Path(dir_okay=False), default=None,
              help="Write per-difficulty percentiles of every metric over the evaluated levels to this JSON file.")
@click.option("--difficulty", "difficulties", multiple=True,
              help="Only this difficulty (repeatable; default all).")
@click.option("--characteristic", default="Standard", show_default=True,
              help="Characteristic to evaluate ('all' for every one).")
@click.option("--json", "as_json", is_flag=True, help="Every figure as one JSON document on stdout.")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False), default=None,
              help="Write one PNG per evaluated difficulty into this folder.")
@click.option("--no-audio", is_flag=True,
              help="No alignment metrics: do not decode the songs (their length comes from the audio header), "
                   "nor read a store's features.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def evaluate_command(levels, reference, baseline, store, save_baseline_to, difficulties, characteristic, as_json,
                     plot_dir, no_audio, no_progress):
    """Measure levels (generated or human): timing, density, flow and parity, variety, difficulty.

    Every metric is defined in docs/evaluate.md. LEVEL is a level folder, a
    .zip or a folder of levels. With --baseline each value gets its
    percentile among human levels of the same difficulty; build one from a
    store of human levels with --store S --save-baseline FILE. The songs
    are decoded (about 1 s each; from a store, its stage-1 features are
    read) for the alignment of notes to the audio unless --no-audio. Exit codes: 0 all evaluated, 1 nothing could be
    evaluated, 2 some levels or difficulties could not be (listed on
    stderr), 64 bad usage (LEVEL and --store, neither, an unknown difficulty).

    \b
    Example:
      mapkit evaluate "CustomLevels/1a2b (Song - Mapper)"
      mapkit evaluate --store data/ --save-baseline human.json
      mapkit evaluate mapkit-generated/song-mapkit --baseline human.json --plot plots/
      mapkit evaluate generated/ --reference "CustomLevels/1a2b (Song - Mapper)" --difficulty Expert --json
    """
    import json as json_module

    from mapkit.errors import MapkitError
    from mapkit.runs.evaluate import evaluate, format_table

    try:
        report = evaluate(levels, store=store, reference=reference, baseline=baseline,
                          save_baseline_to=save_baseline_to, difficulties=difficulties,
                          characteristic=characteristic, audio=not no_audio, plot_dir=plot_dir,
                          progress=not no_progress)
    except MapkitError as e:
        fail_error(e)
    if as_json:
        click.echo(json_module.dumps(report.to_json(), allow_nan=False))
    elif report.items:
        click.echo(format_table(report))
    for path, reason in report.failures:
        click.echo(f"error: {path}: {reason}", err=True)
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    if save_baseline_to and report.items:
        click.echo(f"baseline of {len(report.items)} difficulties written to {save_baseline_to}", err=True)
    sys.exit(report.exit_code)
