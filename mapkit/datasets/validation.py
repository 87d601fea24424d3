"""``mapkit validate``: prove every length, alignment and vocabulary invariant of a store (docs/design.md §5).

:func:`validate_store` reads a store the way every mapkit reader does (only
complete ``shard-NNNNN.h5`` files; of several copies of a song, the one in the
highest-numbered shard) and checks:

============================  =========================================================================
check                         what it proves
============================  =========================================================================
``store``                     the store folder exists and holds a store (feature or target shards: an
                              empty folder, or one whose runs wrote nothing, is not a valid store), no
                              run is writing it (``store is being written by pid N``: its shard in
                              progress is not a leftover), and no committed ``--rebuild-vocab`` is
                              waiting to be finished
``checksum``                  every dataset's ``crc32`` and every group's ``attrs_crc32`` (the shard's
                              root, songs, levels, characteristics, difficulties) are those of the bytes
                              and attributes as stored (:func:`~mapkit.datasets.store.data_checksum`,
                              :func:`~mapkit.datasets.store.attrs_checksum`; bound to the object's path,
                              so moved or swapped data fails too). Skipped by ``checksums=False``
                              (``--quick``)
``structure``                 nothing the contract does not name: the shard root holds only
                              ``songs``/``levels``; a song only ``placement``, ``selection`` and
                              (optionally) ``chromaprint``; a level
                              only characteristic groups of difficulty groups, each only the level
                              datasets; datasets only ``crc32``; every difficulty group listed in
                              ``difficulties_json`` exists and no other does
``level_attrs``               ``difficulties_json`` and ``quarantined_json`` read as what they list
``shard_readable``            every complete shard opens, and every stored song/level in it reads
``shard_attrs``               schema version, shard kind, settings JSON whose hash is ``settings_hash``
``settings_hash``             one settings hash across all shards of a kind; levels made from the
                              stored features' settings hash
``foreign_file``              nothing else in ``features/`` or ``targets/`` (a ``.partial`` file is
                              only a warning: a killed run left it, readers ignore it)
``song_attrs``                every song attribute of docs/design.md §4 is present
``frame_count``               ``T = 1 + floor(n_samples * 100 / sample_rate)`` and ``duration_s``
``padding``                   pad widths equal the settings
``feature_rows``              placement ``[T + 14, 3, 80]``, selection ``[T + 2, 100]``
``dtypes``                    the dtypes of the public contract (docs/design.md §4): features float16;
                              ``frame_class``/``states`` uint8, ``notes`` the stored note record,
                              ``tokens``/``token_frames`` int32, gaps float32. Values are never cast
                              before they are checked (a token stored as 7.5 is not read as 7)
``pad_values``                every pad row holds the silence value ``ln(log_floor)``
``features_finite``           no NaN or infinity in the features
``band_sums``                 the stored per-song band sums agree with the stored arrays
``stats``                     ``stats.json`` agrees with the stored band sums and with the arrays
``vocab``                     ``vocab.json`` reads and its hash matches its states
``vocab_hash``                every targets shard and level names the hash of ``vocab.json``
``targets_without_features``  every level has readable stored features of its song, and a store
                              with target shards has feature shards (build-targets never writes a
                              level without them: no legitimate store has one)
``target_song``               every level's features come from the same audio
``target_length``             ``frame_class`` has T frames, T of the song's features (the level's and
                              each difficulty's ``n_frames`` too)
``note_frames``               every note's frame is ``round(time_s * 100)`` and lies in [0, T)
``notes``                     notes finite, integer fields whole numbers, sorted by (time, column, row)
``note_grid``                 column 0-3, row 0-2, colour 0/1/3, direction 0-8 (bombs 0)
``frame_class``               ``frame_class`` equals the class recomputed from ``notes``
``states``                    ``states`` equal the 12-cell states recomputed from ``notes``
                              (``note_states``, grouped by the notes' frames)
``tokens``                    ``0 <= token < len(vocab)``, whole numbers; BOS first, EOS last, neither
                              in between; tokens equal the vocabulary's encoding (UNK where unseen)
                              of the states the notes give
``token_frames``              BOS on frame -1, EOS on T, the notes' frames in between, strictly
                              increasing
``gaps``                      gap arrays have the tokens' length, are finite, and equal
                              ``token_sequence`` recomputed from the notes' ``time_s``/``beat`` (earliest
                              note of each frame), T and ``end_beat`` within float32 rounding
                              (:data:`GAP_RTOL`); the ``end_beat`` attribute is the tempo map's beat
                              of frame T - 1
``objects``                   walls, arcs, chains, lighting, rotation and NJS events (schema 3), with
                              ``object_frames``, ``object_times``, ``object_counts`` and ``frame_events``:
                              the checks of :mod:`mapkit.datasets.object_validation`
``tempo_map``                 the tempo map reads, is finite, strictly increasing and continuous
                              (:class:`~mapkit.preprocess.tempo.TempoMap` refuses any other), and
                              times every note's beat to its ``time_s``
============================  =========================================================================

Warning (not a failure) ``unk_share``: more than
:data:`~mapkit.datasets.vocab.UNK_WARN_SHARE` (5 %) of the note states of the stored levels are UNK
(levels of the validation songs that ``vocab.json`` names are left out: their unseen states are
expected). Typical causes: levels added
after ``vocab.json`` was counted, or a vocabulary counted over too few songs): the models can neither
learn nor generate them; ``mapkit build-targets --rebuild-vocab`` re-counts the vocabulary.

Everything derived from a level's notes (frame classes, states, the tokens' states, gaps) is
recomputed only once the notes are sound (finite, sorted, on the grid, on their
frames in [0, T)) and, for the gaps, once the tempo map times them: a broken
note is reported once, not again by every array made from it.

Streaming: songs are checked one at a time and feature arrays in blocks of
``block_rows`` rows, so memory does not grow with the store (only the song ids
and, per song, its T and audio hash are kept, to cross-check the targets).

Float16 tolerance of ``band_sums`` and ``stats``: the stored sums are computed
from the float32 features before the cast to float16. Rounding to float16
moves a value ``x`` to ``y`` with ``|x - y| <= u |x|`` (``u = 2**-11``, unit
roundoff, normal range) or ``<= 2**-25`` (subnormal range), so over a band
``|sum x - sum y| <= u/(1-u) * sum|y| + n * 2**-25`` and
``|sum x**2 - sum y**2| <= u(2+u)/(1-u)**2 * sum y**2 + n * 2**-24``. These
bounds (times 1.01, for float64 summation) are the tolerances: a sound store
always passes them, and a changed value of more than one float16 step fails.
``stats.json`` against the stored band sums: the same float64 numbers summed in
another order, so ``1e-9`` relative.
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import mapkit
from mapkit.datasets.object_validation import check_objects
from mapkit.datasets.schema import (ATTRS_CHECKSUM, DATA_CHECKSUM, FEATURE_DTYPE, FEATURE_STAGES, GAP_NAMES,
                                    KIND_ROOTS, LEVEL_DATASETS, LEVEL_DTYPES, NOTE_FIELDS, PARTIAL_SUFFIX, SHARD_PATTERN,
                                    SONG_ATTRS, SONG_DATASETS, SONG_FINGERPRINT, shard_number)
from mapkit.datasets.store import (Entry, Store, attrs_checksum, attrs_dict, checksum_start, checksum_update,
                                   feature_stats, old_schema_message)
from mapkit.errors import StoreError
from mapkit.preprocess.timebase import frame_of, frame_time, n_frames as count_frames, song_end_beat
from mapkit.settings import FeatureSettings, TargetSettings

#: Rows of a feature array read at once (placement: 4096 x 3 x 80 float16 = 1.9 MB).
BLOCK_ROWS = 4096

#: Problems kept with their details; beyond this only the per-check counts grow.
MAX_PROBLEMS = 1000

#: Float16 unit roundoff and the largest rounding error in its subnormal range.
F16_U = 2.0 ** -11
F16_SUBNORMAL_ERR = 2.0 ** -25


#: Relative tolerance between stats.json and the stats recomputed from the stored float64 sums.
STATS_RTOL = 1e-9

#: Attributes of a level that are checked.
LEVEL_ATTRS = ("n_frames", "audio_sha256", "features_settings_hash", "vocab_hash", "tempo_map", "end_beat")

#: Stored gaps against the gaps recomputed from the notes: build-targets rounds a float64 difference to
#: float32 once (the recomputation does the same, so a sound store agrees exactly); the tolerance allows
#: float32 rounding of the times themselves, ``GAP_RTOL * (|gap| + song length)`` in the gap's unit
#: (seconds or beats): 3e-6 s on a 6 s song, 3e-4 s on 10 minutes. A gap floored to whole seconds or
#: replaced by another number is far outside it.
GAP_RTOL = 4 * float(np.finfo(np.float32).eps)
#: ``end_beat`` attribute against the tempo map's beat of the last frame (the same float64 computation).
END_BEAT_RTOL = 1e-9

#: |beat -> seconds - time_s| allowed for a stored note (float64 arithmetic on the same numbers).
NOTE_TIME_ATOL = 1e-6


@dataclass
class ValidationReport:
    """What :func:`validate_store` found.

    Attributes
    ----------
    store : str
    problems : list of dict
        Failed checks, at most :data:`MAX_PROBLEMS` kept: ``{"check", "where",
        "message", "numbers"}``; ``where`` names the shard, song or level
        (``song_id/Characteristic/Difficulty``), ``numbers`` the values involved.
    warnings : list of dict
        Same shape; things a reader copes with (leftover ``.partial`` shards).
        They do not make the store invalid.
    counts : dict
        Shards, songs, levels, notes and superseded copies seen; ``problems``
        and ``warnings`` totals; ``by_check``: problems per check.
    """

    store: str
    problems: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    n_problems: int = 0
    by_check: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        """True when no check failed."""
        return self.n_problems == 0

    @property
    def exit_code(self) -> int:
        """0 when clean, 1 when any check failed."""
        return 0 if self.ok else 1

    def add(self, check: str, where: str, message: str, **numbers):
        """Record a failed ``check`` at ``where``."""
        self.n_problems += 1
        self.by_check[check] += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append({"check": check, "where": where, "message": message,
                                  "numbers": _plain(numbers)})

    def warn(self, check: str, where: str, message: str, **numbers):
        """Record a warning (not a failure)."""
        if len(self.warnings) < MAX_PROBLEMS:
            self.warnings.append({"check": check, "where": where, "message": message,
                                  "numbers": _plain(numbers)})

    def checks_failed(self) -> set:
        """Names of the checks that failed at least once."""
        return set(self.by_check)

    def to_json(self) -> dict:
        """The report as a JSON-ready dict (``mapkit validate --json``)."""
        return {"store": self.store, "ok": self.ok, "mapkit_version": mapkit.__version__,
                "schema_version": mapkit.SCHEMA_VERSION, "counts": self.counts,
                "problems_by_check": dict(sorted(self.by_check.items())),
                "problems": self.problems, "problems_shown": len(self.problems),
                "warnings": self.warnings}

    def summary(self) -> str:
        """Human-readable: counts, one line per problem (up to :data:`MAX_PROBLEMS`), the verdict."""
        c = self.counts
        from mapkit.datasets.names import plural

        lines = [f"store {self.store}: {plural(c.get('feature_shards', 0), 'feature shards')}, "
                 f"{plural(c.get('songs', 0), 'songs')}; {plural(c.get('target_shards', 0), 'target shards')}, "
                 f"{plural(c.get('levels', 0), 'levels')}, {plural(c.get('notes', 0), 'notes')}"]
        if c.get("superseded"):
            lines.append(f"  {plural(c['superseded'], 'superseded copies')} ignored (newest shard wins)")
        for w in self.warnings:
            lines.append(f"  warning [{w['check']}] {w['where']}: {w['message']}")
        for p in self.problems:
            lines.append(f"  FAIL [{p['check']}] {p['where']}: {p['message']}")
        if self.n_problems > len(self.problems):
            lines.append(f"  ... and {self.n_problems - len(self.problems)} more problems (see --json counts)")
        if self.ok:
            lines.append("valid: every check passed")
        else:
            per = ", ".join(f"{k} {v}" for k, v in sorted(self.by_check.items()))
            lines.append(f"INVALID: {self.n_problems} problem{'s' if self.n_problems != 1 else ''} ({per})")
        return "\n".join(lines)


def _plain(obj):
    """numpy scalars/arrays -> JSON-ready Python values."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)  # JSON has no NaN/Infinity
    return obj


def _worst(excess: np.ndarray) -> tuple:
    """Index (plain ints) of the largest excess over a tolerance; NaN counts as the largest."""
    flat = int(np.argmax(np.where(np.isnan(excess), np.inf, excess)))
    return tuple(int(i) for i in np.unravel_index(flat, excess.shape))


# --- shards ------------------------------------------------------------------------------------------


@dataclass
class _Shard:
    """A complete shard read in the first pass: its attrs, settings and item ids."""

    path: Path
    number: int
    attrs: dict
    settings: object
    ids: list


def _settings_of(kind: str, attrs: dict, report: ValidationReport, where: str):
    """The shard's settings from ``settings_json``; checks its hash. None when unusable."""
    cls = FeatureSettings if kind == "features" else TargetSettings
    try:
        settings = cls.from_json(str(attrs["settings_json"]))
    except Exception as e:  # noqa: BLE001 - any bad settings JSON is a finding
        report.add("shard_attrs", where, f"settings_json unreadable: {type(e).__name__}: {e}")
        return None
    if settings.hash != attrs.get("settings_hash"):
        report.add("shard_attrs", where, f"settings_hash {attrs.get('settings_hash')!r} is not the hash "
                                         f"of its settings_json ({settings.hash})",
                   stored=attrs.get("settings_hash"), computed=settings.hash)
    return settings


def _scan_shards(store: Store, kind: str, report: ValidationReport, checksums: bool = True) -> list[_Shard]:
    """First pass over the shards of ``kind``: open each, check its file attrs, list its items."""
    d = store.shard_dir(kind)
    if not d.is_dir():
        return []
    for p in sorted(d.iterdir()):
        if SHARD_PATTERN.match(p.name):
            continue
        if p.name.endswith(PARTIAL_SUFFIX) and shard_number(p.name) is not None:
            report.warn("foreign_file", str(p), "incomplete shard left by a killed run (ignored by readers; "
                                                "the next writing run deletes it)")
            report.counts["partial_files"] = report.counts.get("partial_files", 0) + 1
        else:
            report.add("foreign_file", str(p), f"not a shard of this store: {p.name!r} in {kind}/")
    import h5py

    shards = []
    root = KIND_ROOTS[kind]
    for path in store.shards(kind):
        where = str(path)
        try:
            with h5py.File(path, "r") as f:
                attrs = attrs_dict(f.attrs)
                ids = list(f[root].keys()) if root in f else []
                if attrs.get("schema_version") == mapkit.SCHEMA_VERSION:
                    if checksums:
                        _check_attrs_checksum(f, where, report)
                    _check_members(f, (root,), where, report, datasets=False)
                    if root in f and isinstance(f[root], h5py.Group):
                        _check_members(f[root], None, where, report, datasets=False)
                        ids = [i for i in ids if isinstance(f[root][i], h5py.Group)]
        except Exception as e:  # noqa: BLE001 - truncated, half-written or foreign: reported, never crashed on
            report.add("shard_readable", where, f"cannot read shard: {type(e).__name__}: {e}",
                       size_bytes=path.stat().st_size)
            continue
        version = attrs.get("schema_version")
        if version != mapkit.SCHEMA_VERSION:
            older = isinstance(version, int) and not isinstance(version, bool) and version < mapkit.SCHEMA_VERSION
            report.add("shard_attrs", where, old_schema_message(version) if older else
                       f"schema version {version!r}, expected {mapkit.SCHEMA_VERSION}", schema_version=version)
            continue
        if attrs.get("kind") != kind:
            report.add("shard_attrs", where, f"shard kind {attrs.get('kind')!r} in {kind}/")
            continue
        settings = _settings_of(kind, attrs, report, where)
        shards.append(_Shard(path, shard_number(path.name), attrs, settings, ids))
    return shards


def _winners(shards: list[_Shard], kind: str, report: ValidationReport) -> dict:
    """``{item_id: shard}``: of several copies, the one in the highest-numbered shard (newest wins).

    Also checks that the shards holding these copies (the live shards) share
    one settings hash. Shards holding only superseded copies are dead bytes
    that no reader sees (e.g. targets before ``--rebuild-vocab``): not checked.
    """
    out = {}
    for s in shards:  # ascending shard number
        for i in s.ids:
            if i in out:
                report.counts["superseded"] = report.counts.get("superseded", 0) + 1
            out[i] = s
    live = {id(s): s for s in out.values()}.values()
    hashes = Counter(str(s.attrs.get("settings_hash")) for s in live)
    if len(hashes) > 1:
        common = hashes.most_common(1)[0][0]
        for s in live:
            h = str(s.attrs.get("settings_hash"))
            if h != common:
                report.add("settings_hash", str(s.path), f"{kind} settings hash {h} differs from {common} of "
                                                         f"the other shards", hash=h, expected=common)
    return out


# --- features ----------------------------------------------------------------------------------------


@dataclass
class _Scan:
    """What one streaming pass over a padded feature array found."""

    nonfinite: int = 0
    first_nonfinite_row: int = -1
    bad_pad: int = 0
    first_bad_pad_row: int = -1
    sum: np.ndarray | None = None
    sum_sq: np.ndarray | None = None
    sum_abs: np.ndarray | None = None
    crc: int | None = None


def scan_features(ds, pad: tuple, n_frames: int, silence, block_rows: int = BLOCK_ROWS, crc: int | None = None
                  ) -> _Scan:
    """Stream a padded feature array in blocks of rows: non-finite values, pad rows, band sums.

    Parameters
    ----------
    ds : h5py.Dataset or np.ndarray
        ``[pad[0] + n_frames + pad[1], ...]``, time first.
    pad : (int, int)
        Pad rows before and after the ``n_frames`` song frames.
    n_frames : int
    silence : float
        The pad value; compared exactly in the array's dtype.
    block_rows : int
    crc : int, optional
        A checksum state (:func:`~mapkit.datasets.store.checksum_start`) to
        continue over the array's bytes; None: no checksum.

    Returns
    -------
    _Scan
        Counts and first rows of non-finite values and of pad rows that are
        not all silence; float64 per-band sums of ``y``, ``y**2`` and ``|y|``
        over the song frames (band axes = ``ds.shape[1:]``); the checksum
        (``crc``) when one was started.
    """
    lo, hi = int(pad[0]), int(pad[0]) + int(n_frames)
    silence = np.asarray(silence, dtype=ds.dtype)
    bands = tuple(ds.shape[1:])
    out = _Scan(sum=np.zeros(bands), sum_sq=np.zeros(bands), sum_abs=np.zeros(bands), crc=crc)
    for start in range(0, ds.shape[0], block_rows):
        block = np.asarray(ds[start:start + block_rows])
        if out.crc is not None:
            out.crc = checksum_update(out.crc, block)
        flat = block.reshape(len(block), -1)
        rows = np.arange(start, start + len(block))
        finite = np.isfinite(flat)
        bad_rows = ~finite.all(axis=1)
        if bad_rows.any():
            out.nonfinite += int((~finite).sum())
            if out.first_nonfinite_row < 0:
                out.first_nonfinite_row = int(rows[bad_rows][0])
        in_pad = (rows < lo) | (rows >= hi)
        if in_pad.any():
            not_silent = (flat[in_pad] != silence).any(axis=1)
            if not_silent.any():
                out.bad_pad += int(not_silent.sum())
                if out.first_bad_pad_row < 0:
                    out.first_bad_pad_row = int(rows[in_pad][not_silent][0])
        # float16 -> float32 is exact; sums and products accumulate in float64
        body = flat[~in_pad].astype(np.float32)
        if len(body):
            out.sum += body.sum(axis=0, dtype=np.float64).reshape(bands)
            out.sum_sq += np.einsum("ti,ti->i", body, body, dtype=np.float64).reshape(bands)
            out.sum_abs += np.abs(body).sum(axis=0, dtype=np.float64).reshape(bands)
    return out


def float16_sum_tolerances(sum_abs, sum_sq, count):
    """Largest possible gap between sums over float32 values and over their float16 roundings.

    Returns ``(tol_sum, tol_sum_sq)`` for per-band sums of ``y`` and ``y**2``
    over ``count`` float16 values ``y`` whose sums of ``|y|`` and ``y**2`` are
    given (see the module docstring), widened by 1 % for float64 summation.
    """
    u = F16_U
    tol_sum = (u / (1 - u) * np.asarray(sum_abs) + count * F16_SUBNORMAL_ERR) * 1.01 + 1e-9
    tol_sq = (u * (2 + u) / (1 - u) ** 2 * np.asarray(sum_sq) + count * 2 * F16_SUBNORMAL_ERR) * 1.01 + 1e-9
    return tol_sum, tol_sq


# --- checksums and structure ----------------------------------------------------------------------


def _check_attrs_checksum(obj, where: str, report: ValidationReport):
    """The object's :data:`ATTRS_CHECKSUM` is the checksum of its other attributes (a changed attr fails)."""
    stored = obj.attrs.get(ATTRS_CHECKSUM)
    name = obj.name if obj.name != "/" else "the shard file"
    if stored is None:
        report.add("checksum", where, f"{name} has no {ATTRS_CHECKSUM} attribute")
        return
    computed = attrs_checksum(obj.attrs, obj.name)
    if int(stored) != computed:
        report.add("checksum", where, f"the attributes of {name} changed after they were written "
                                      f"({ATTRS_CHECKSUM} {int(stored)}, they give {computed})",
                   object=obj.name, stored=int(stored), computed=computed)


def _check_data_checksum(ds, computed, where: str, report: ValidationReport):
    """``ds``'s :data:`DATA_CHECKSUM` attribute equals ``computed`` (its values' checksum; None: compute it)."""
    extra = sorted(k for k in ds.attrs.keys() if k != DATA_CHECKSUM)
    if extra:
        report.add("structure", where, f"{ds.name} has unknown attributes {extra}", object=ds.name, unknown=extra)
    stored = ds.attrs.get(DATA_CHECKSUM)
    if stored is None:
        report.add("checksum", where, f"{ds.name} has no {DATA_CHECKSUM} attribute")
        return
    if computed is None:
        computed = checksum_update(checksum_start(ds.name), ds[()])
    if int(stored) != computed:
        report.add("checksum", where, f"{ds.name}: its values changed after they were written ({DATA_CHECKSUM} "
                                      f"{int(stored)}, the values give {computed}: moved, reordered or edited)",
                   object=ds.name, stored=int(stored), computed=computed)


def _check_members(g, allowed, where: str, report: ValidationReport, datasets: bool = True):
    """``g`` holds no member outside ``allowed`` (datasets, or groups when ``datasets`` is False)."""
    import h5py

    kind = h5py.Dataset if datasets else h5py.Group
    unknown = sorted(k for k, v in g.items()
                     if (allowed is not None and k not in allowed) or not isinstance(v, kind))
    if unknown:
        report.add("structure", where, f"{g.name} holds unknown members {unknown} (the store contract "
                                       f"allows {'datasets ' + ', '.join(allowed) if datasets else 'groups'} there)",
                   object=g.name, unknown=unknown)


class _FeatureTotals:
    """Store-wide sums for the stats check: from the stored band sums and from the arrays."""

    def __init__(self):
        self.n_songs = 0
        self.n_frames = 0
        self.attr = {s: {"band_sum": 0.0, "band_sumsq": 0.0} for s in FEATURE_STAGES}
        self.array = {s: {"sum": 0.0, "sum_sq": 0.0, "tol_sum": 0.0, "tol_sq": 0.0} for s in FEATURE_STAGES}
        #: False once a song's arrays could not be summed: the stats-vs-arrays comparison is then skipped.
        self.arrays_complete = True


def _check_song(g, song_id: str, where: str, settings: FeatureSettings, report: ValidationReport,
                totals: _FeatureTotals, block_rows: int, checksums: bool = True):
    """Every features check of one song group; returns ``(T, audio_sha256)`` or None."""
    _check_members(g, SONG_DATASETS, where, report)
    if checksums:
        _check_attrs_checksum(g, where, report)
    _check_fingerprint(g, where, report, checksums)
    attrs = attrs_dict(g.attrs)
    missing = [k for k in SONG_ATTRS if k not in attrs]
    if missing:
        report.add("song_attrs", where, f"missing attributes {missing}", missing=missing)
        totals.arrays_complete = False
        return None
    T = _check_song_frames(attrs, where, settings, report)
    pads = {"placement": (settings.placement_pad, settings.placement_pad),
            "selection": (settings.selection_pad, settings.selection_pad)}
    for stage in FEATURE_STAGES:
        stored_pad = tuple(int(x) for x in np.ravel(attrs[f"pad_{stage}"]))
        if stored_pad != pads[stage]:
            report.add("padding", where, f"pad_{stage} {list(stored_pad)}, settings say {list(pads[stage])}",
                       stored=stored_pad, expected=pads[stage])
    totals.n_songs += 1
    totals.n_frames += T
    for stage in FEATURE_STAGES:
        totals.attr[stage]["band_sum"] = totals.attr[stage]["band_sum"] + np.asarray(attrs[f"{stage}_band_sum"],
                                                                                    np.float64)
        totals.attr[stage]["band_sumsq"] = totals.attr[stage]["band_sumsq"] + np.asarray(
            attrs[f"{stage}_band_sumsq"], np.float64)
        _check_stage_array(g, stage, attrs, T, pads[stage], where, settings, report, totals, block_rows, checksums)
    return T, str(attrs["audio_sha256"])


def _check_song_frames(attrs: dict, where: str, settings: FeatureSettings, report: ValidationReport) -> int:
    """A song's ``n_frames`` T follows the frame rule from ``n_samples`` and ``sample_rate``, and
    ``duration_s`` = n_samples / sample_rate; returns T as stored."""
    T = int(attrs["n_frames"])
    n, sr = int(attrs["n_samples"]), int(attrs["sample_rate"])
    expected_T = count_frames(n, sr, settings.fps) if sr > 0 and n >= 0 else None
    if expected_T != T:
        report.add("frame_count", where, f"n_frames {T} but 1 + floor({n} * {settings.fps} / {sr}) = {expected_T}",
                   n_frames=T, n_samples=n, sample_rate=sr, expected=expected_T)
    if sr > 0 and not math.isclose(float(attrs["duration_s"]), n / sr, rel_tol=1e-9, abs_tol=1e-9):
        report.add("frame_count", where, f"duration_s {attrs['duration_s']} but n_samples / sample_rate = {n / sr}",
                   duration_s=attrs["duration_s"], expected=n / sr)
    return T


def _check_stage_array(g, stage: str, attrs: dict, T: int, pad: tuple, where: str, settings: FeatureSettings,
                       report: ValidationReport, totals: _FeatureTotals, block_rows: int, checksums: bool):
    """One stage's features array: present, float16, T + pads rows, finite, silent pads, its checksum, and
    its sums (added to ``totals``) agreeing with the song's stored band sums."""
    shapes = {"placement": (len(settings.placement_n_ffts), settings.placement_n_mels),
              "selection": (settings.selection_n_mels,)}
    if stage not in g:
        report.add("feature_rows", where, f"no {stage} dataset")
        totals.arrays_complete = False
        return
    ds = g[stage]
    expected_shape = (T + pad[0] + pad[1],) + shapes[stage]
    if ds.dtype != FEATURE_DTYPE:
        report.add("dtypes", where, f"{stage} is {ds.dtype}, the store contract says {FEATURE_DTYPE}",
                   dataset=stage, dtype=str(ds.dtype), expected=str(FEATURE_DTYPE))
        if ds.dtype.kind != "f":  # values are read as floats only when they are floats
            totals.arrays_complete = False
            return
    if tuple(ds.shape) != expected_shape:
        report.add("feature_rows", where, f"{stage} is {list(ds.shape)}, expected T + pads = "
                                          f"{list(expected_shape)} (T = {T}, pads {list(pad)})",
                   shape=tuple(ds.shape), expected=expected_shape, n_frames=T, pad=pad)
        totals.arrays_complete = False
        return
    scan = scan_features(ds, pad, T, settings.silence_value, block_rows,
                         crc=checksum_start(ds.name) if checksums else None)
    if checksums:
        _check_data_checksum(ds, scan.crc, where, report)
    if scan.nonfinite:
        report.add("features_finite", where, f"{stage}: {scan.nonfinite} non-finite values, first in row "
                                             f"{scan.first_nonfinite_row}",
                   count=scan.nonfinite, first_row=scan.first_nonfinite_row)
        totals.arrays_complete = False
    if scan.bad_pad:
        report.add("pad_values", where, f"{stage}: {scan.bad_pad} pad rows are not the silence value "
                                        f"{settings.silence_value:.4f}, first row {scan.first_bad_pad_row}",
                   rows=scan.bad_pad, first_row=scan.first_bad_pad_row, silence=settings.silence_value)
    if scan.nonfinite:
        return
    tol_sum, tol_sq = float16_sum_tolerances(scan.sum_abs, scan.sum_sq, T)
    a = totals.array[stage]
    a["sum"] = a["sum"] + scan.sum
    a["sum_sq"] = a["sum_sq"] + scan.sum_sq
    a["tol_sum"] = a["tol_sum"] + tol_sum
    a["tol_sq"] = a["tol_sq"] + tol_sq
    for key, arr_sum, tol in (("band_sum", scan.sum, tol_sum), ("band_sumsq", scan.sum_sq, tol_sq)):
        _check_band_sums(f"{stage}_{key}", np.asarray(attrs[f"{stage}_{key}"], np.float64), arr_sum, tol, where,
                         report)


def _check_band_sums(name: str, stored: np.ndarray, arr_sum: np.ndarray, tol: np.ndarray, where: str,
                     report: ValidationReport):
    """A stored band-sum attribute ``name`` equals the array's sums within the float16 tolerance ``tol``."""
    if stored.shape != arr_sum.shape:
        report.add("band_sums", where, f"{name} has shape {list(stored.shape)}, the bands {list(arr_sum.shape)}")
        return
    excess = np.abs(stored - arr_sum) - tol
    if not np.all(excess <= 0):  # NaN in the stored sums fails too
        k = _worst(excess)
        report.add("band_sums", where, f"{name} band {list(k)}: stored {stored[k]:.6g}, the array "
                                       f"sums to {arr_sum[k]:.6g} (float16 tolerance {tol[k]:.3g})",
                   band=k, stored=float(stored[k]), from_array=float(arr_sum[k]), tolerance=float(tol[k]))


def _check_fingerprint(g, where: str, report: ValidationReport, checksums: bool = True):
    """A song's optional ``chromaprint`` dataset is one-dimensional uint32 (and its checksum holds)."""
    if SONG_FINGERPRINT not in g:
        return
    ds = g[SONG_FINGERPRINT]
    if ds.dtype != np.uint32 or ds.ndim != 1:
        report.add("dtypes", where, f"{SONG_FINGERPRINT} is {ds.dtype} {list(ds.shape)}, the store contract says "
                                    f"uint32 [m]", dataset=SONG_FINGERPRINT, dtype=str(ds.dtype))
    elif checksums:
        _check_data_checksum(ds, None, where, report)


def _check_stats(store: Store, totals: _FeatureTotals, settings_hash, report: ValidationReport):
    """``stats.json`` against the stored per-song sums and against the arrays."""
    where = str(store.stats_path)
    try:
        stats = json.loads(store.stats_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if totals.n_songs:
            report.add("stats", where, "no stats.json, but the store holds features")
        return
    except (OSError, ValueError) as e:
        report.add("stats", where, f"unreadable: {type(e).__name__}: {e}")
        return
    if not isinstance(stats, dict):
        report.add("stats", where, "not a JSON object")
        return
    for key, expected in (("n_songs", totals.n_songs), ("n_frames", totals.n_frames),
                          ("settings_hash", settings_hash if totals.n_songs else None)):
        if stats.get(key) != expected:
            report.add("stats", where, f"{key} is {stats.get(key)!r}, the stored songs give {expected!r}",
                       stored=stats.get(key), expected=expected)
    if not totals.n_songs or totals.n_frames <= 0:
        return
    # One aggregate entry: feature_stats computes mean/std exactly as the writer does.
    agg = {"n_frames": totals.n_frames}
    for stage in FEATURE_STAGES:
        agg[f"{stage}_band_sum"] = totals.attr[stage]["band_sum"]
        agg[f"{stage}_band_sumsq"] = totals.attr[stage]["band_sumsq"]
    try:
        expected = feature_stats([Entry("*", store.stats_path, "", agg, {"settings_hash": settings_hash})])
    except ValueError as e:
        report.add("stats", where, f"stored band sums give no finite statistics: {e}")
        return
    N = totals.n_frames
    for stage in FEATURE_STAGES:
        s = stats.get(stage) or {}
        try:
            mean = np.asarray(s.get("mean"), dtype=np.float64)
            std = np.asarray(s.get("std"), dtype=np.float64)
        except (TypeError, ValueError):
            report.add("stats", where, f"{stage} mean/std are not numbers")
            continue
        exp_mean = np.asarray(expected[stage]["mean"])
        exp_std = np.asarray(expected[stage]["std"])
        if mean.shape != exp_mean.shape or std.shape != exp_std.shape:
            report.add("stats", where, f"{stage} mean/std shapes {list(mean.shape)}/{list(std.shape)}, the bands "
                                       f"are {list(exp_mean.shape)}")
            continue
        for name, got, want in (("mean", mean, exp_mean), ("std", std, exp_std)):
            err = np.abs(got - want) - STATS_RTOL * np.maximum(1.0, np.abs(want))
            if not np.all(err <= 0):
                k = _worst(err)
                report.add("stats", where, f"{stage} {name} band {list(k)}: {got[k]:.9g} in stats.json, the "
                                           f"stored band sums give {want[k]:.9g}",
                           band=k, stored=float(got[k]), expected=float(want[k]))
        if not totals.arrays_complete:
            continue
        a = totals.array[stage]
        arr_mean = a["sum"] / N
        tol_mean = a["tol_sum"] / N + 1e-9
        arr_var = a["sum_sq"] / N - arr_mean ** 2
        tol_var = a["tol_sq"] / N + (2 * np.abs(arr_mean) + tol_mean) * tol_mean + 1e-9
        for name, got, want, tol in (("mean", mean, arr_mean, tol_mean), ("variance", std ** 2, arr_var, tol_var)):
            err = np.abs(got - want) - tol
            if not np.all(err <= 0):
                k = _worst(err)
                report.add("stats", where, f"{stage} {name} band {list(k)}: {got[k]:.6g} in stats.json, the "
                                           f"stored arrays give {want[k]:.6g} (float16 tolerance {tol[k]:.3g})",
                           band=k, stored=float(got[k]), from_arrays=float(want[k]), tolerance=float(tol[k]))


# --- targets -----------------------------------------------------------------------------------------


def _load_vocab(store: Store, report: ValidationReport):
    """The store's Vocabulary, or None (reported) when it is missing or unreadable."""
    where = str(store.vocab_path)
    try:
        vocab = store.read_vocab(missing_ok=True)
    except StoreError as e:
        report.add("vocab", where, f"unreadable: {e.reason}")
        return None
    if vocab is None:
        report.add("vocab", where, "no vocab.json, but the store holds targets")
    return vocab


def check_level_group(lg, where: str, song, report: ValidationReport, checksums: bool = True):
    """The level group itself: its members, its attrs' checksums, ``difficulties_json``, its T and audio.

    Every difficulty group listed in ``difficulties_json`` exists and no
    other does; the level's ``n_frames`` and ``audio_sha256`` are those of
    its song's features (``song``: ``(T, audio_sha256)`` or None).
    """
    import h5py

    from mapkit.datasets.level_attrs import listed_difficulties, listed_quarantine

    _check_members(lg, None, where, report, datasets=False)
    groups = [lg] + [cg for cg in lg.values() if isinstance(cg, h5py.Group)]
    for cg in groups[1:]:
        _check_members(cg, None, where, report, datasets=False)
    if checksums:
        for g in groups:
            _check_attrs_checksum(g, where, report)
    raw = lg.attrs.get("difficulties_json")
    listed = listed_difficulties(raw) if raw is not None else None
    present = {name for name, _ in _walk_levels(lg)}
    if listed is None:
        report.add("level_attrs", where, f"difficulties_json is not a JSON list of Characteristic/Difficulty "
                                         f"names: {str(raw)[:80]!r}")
    else:
        for name in sorted(set(listed) - present):
            report.add("structure", where, f"difficulty group {name} is listed in difficulties_json but missing "
                                           "(mapkit build-targets restores it)", missing=name)
        for name in sorted(present - set(listed)):
            report.add("structure", where, f"difficulty group {name} is not listed in difficulties_json",
                       unknown=name)
    raw_q = lg.attrs.get("quarantined_json")
    if raw_q is None or listed_quarantine(raw_q) is None:
        report.add("level_attrs", where, f"quarantined_json is not a JSON list of [item, reason] pairs: "
                                         f"{str(raw_q)[:80]!r}")
    if song is not None:
        T = lg.attrs.get("n_frames")
        if T is None or int(T) != song[0]:
            report.add("target_length", where, f"level n_frames {T}, the song's features have T = {song[0]}",
                       n_frames=None if T is None else int(T), features_n_frames=song[0])
        audio = lg.attrs.get("audio_sha256")
        audio = audio.decode() if isinstance(audio, bytes) else audio
        if audio is not None and str(audio) != song[1]:
            report.add("target_song", where, "level made from other audio than the stored features "
                                             f"(audio_sha256 {str(audio)[:12]}... vs {song[1][:12]}...)")


def _walk_levels(song_group):
    """``(characteristic/difficulty, group)`` of every level under a song's group (two levels deep)."""
    import h5py

    for characteristic, cg in song_group.items():
        if not isinstance(cg, h5py.Group):
            continue
        for difficulty, dg in cg.items():
            if isinstance(dg, h5py.Group):
                yield f"{characteristic}/{difficulty}", dg


def _integral(values: np.ndarray, name: str, where: str, check: str, report: ValidationReport):
    """``values`` as int64 when they are whole numbers (reported under ``check`` otherwise: None).

    Integer arrays pass as they are; any other dtype only when every value is
    finite and whole, so a cast never hides a fraction (a token stored as 7.5).
    """
    values = np.asarray(values)
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    if values.dtype.kind in "fb":
        as_float = values.astype(np.float64)
        whole = np.isfinite(as_float) & (np.floor(as_float) == as_float)
        if np.all(whole):
            return as_float.astype(np.int64)
        i = int(np.flatnonzero(~whole.ravel())[0])
        report.add(check, where, f"{name} holds {int((~whole).sum())} values that are not whole numbers; value {i} "
                                 f"is {as_float.ravel()[i]!r}", count=int((~whole).sum()), index=i,
                   value=float(as_float.ravel()[i]))
    else:
        report.add(check, where, f"{name} is {values.dtype}, not numbers")
    return None


def _check_dtypes(dg, where: str, report: ValidationReport):
    """Every level dataset has the dtype of the public contract (docs/design.md §4)."""
    for name, expected in LEVEL_DTYPES.items():
        dtype = dg[name].dtype
        if dtype != expected:
            report.add("dtypes", where, f"{name} is {dtype}, the store contract says {expected}",
                       dataset=name, dtype=str(dtype), expected=str(expected))


def _check_note_grid(notes: dict, where: str, report: ValidationReport) -> bool:
    """Columns 0-3, rows 0-2, colour 0/1/3, direction 0-8 (bombs 0); True when every note is on the grid."""
    from mapkit.preprocess.notes import BLUE, BOMB, N_COLUMNS, N_DIRECTIONS, N_ROWS, RED

    col, row, color, direction = (notes[k] for k in ("column", "row", "color", "direction"))
    bomb = color == BOMB
    rules = (("column", col, (col < 0) | (col >= N_COLUMNS), f"0..{N_COLUMNS - 1}"),
             ("row", row, (row < 0) | (row >= N_ROWS), f"0..{N_ROWS - 1}"),
             ("color", color, ~np.isin(color, (RED, BLUE, BOMB)), f"{RED} red, {BLUE} blue or {BOMB} bomb"),
             ("direction", direction, np.where(bomb, direction != 0, (direction < 0) | (direction >= N_DIRECTIONS)),
              f"0..{N_DIRECTIONS - 1} (bombs 0)"))
    ok = True
    for field_name, values, bad, allowed in rules:
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            report.add("note_grid", where, f"{int(bad.sum())} notes with {field_name} outside {allowed}; note {i} has "
                                           f"{field_name} {int(values[i])}", field=field_name, count=int(bad.sum()),
                       index=i, value=int(values[i]))
            ok = False
    return ok


def _first_difference(stored: np.ndarray, expected: np.ndarray, tol=None):
    """Index of the first element where ``stored`` and ``expected`` differ (beyond ``tol``), and the count."""
    if tol is None:
        bad = stored != expected
    else:
        bad = ~(np.abs(stored.astype(np.float64) - expected) <= tol)  # NaN differs
    if bad.ndim > 1:
        bad_rows = bad.any(axis=tuple(range(1, bad.ndim)))
        return (int(np.flatnonzero(bad_rows)[0]) if bad_rows.any() else None), int(bad_rows.sum())
    return (int(np.flatnonzero(bad)[0]) if bad.any() else None), int(bad.sum())


def check_level(dg, where: str, song, vocab, vocab_hash, features_hash, fps: int, report: ValidationReport,
                shard_vocab_hash=None) -> int:
    """Every targets check of one level group; returns its number of notes.

    Parameters
    ----------
    dg : h5py.Group
        ``/levels/<song_id>/<Characteristic>/<Difficulty>``.
    where : str
        ``song_id/Characteristic/Difficulty``, used to name problems.
    song : (int, str) or None
        T and audio SHA-256 of the song's stored features, or None when it has
        none (a failure: ``targets_without_features``).
    vocab : Vocabulary or None
    vocab_hash, features_hash : str or None
        Hash of ``vocab.json`` and settings hash of the feature shards.
    fps : int
    report : ValidationReport
    shard_vocab_hash : str, optional
        The ``vocab_hash`` of the level's shard.

    Everything derived from the notes (``frame_class``, ``states``, the
    tokens' states, the gaps) is recomputed from ``notes`` with the same pure
    functions ``build-targets`` uses, once the notes themselves are sound
    (finite, sorted, on the grid and on their frames in [0, T)); otherwise only
    the notes are reported, not every array derived from them.

    A level without states (``[BOS, EOS]``) is the same under every
    vocabulary, so only levels with states must name the hash of ``vocab.json``.
    """
    # only the attributes checked (a level has many): reading each costs
    attrs = {k: v.decode() if isinstance(v, bytes) else v
             for k in LEVEL_ATTRS if (v := dg.attrs.get(k)) is not None}
    missing = [k for k in LEVEL_DATASETS if k not in dg]
    if missing:
        report.add("shard_readable", where, f"level without datasets {missing}", missing=missing)
        return 0
    if "n_frames" not in attrs:
        report.add("target_length", where, "no n_frames attribute")
        return 0
    T = int(attrs["n_frames"])
    _check_level_song(attrs, T, song, features_hash, where, report)
    _check_dtypes(dg, where, report)
    n_notes, notes, notes_sound = _check_notes(dg, T, fps, where, report)
    if notes is None:
        return n_notes
    state_frames, states, expected_states = _check_states(dg, notes, notes_sound, where, report)
    raw_tokens = _check_tokens(dg, states, expected_states, vocab, vocab_hash, attrs, shard_vocab_hash, where, report)
    _check_token_frames(dg, raw_tokens, state_frames, T, where, report)
    tempo = _check_tempo_map(attrs, notes, where, report)
    _check_gaps(dg, raw_tokens, tempo, notes, notes_sound, state_frames, attrs, T, fps, where, report)
    return n_notes


def _check_level_song(attrs: dict, T: int, song, features_hash, where: str, report: ValidationReport):
    """The level's T, audio and feature settings against its song's stored features."""
    if song is None:
        report.add("targets_without_features", where, "no readable features stored for this song: a level is "
                                                      "unusable without them and its T and audio cannot be "
                                                      "cross-checked (run mapkit extract on its audio)")
    else:
        if T != song[0]:
            report.add("target_length", where, f"n_frames {T}, the song's features have T = {song[0]}",
                       n_frames=T, features_n_frames=song[0])
        if attrs.get("audio_sha256") is not None and str(attrs["audio_sha256"]) != song[1]:
            report.add("target_song", where, "made from other audio than the stored features "
                                             f"(audio_sha256 {str(attrs['audio_sha256'])[:12]}... vs {song[1][:12]}...)")
    if features_hash is not None and attrs.get("features_settings_hash") not in (None, features_hash):
        report.add("settings_hash", where, f"features_settings_hash {attrs['features_settings_hash']} but the "
                                           f"feature shards have {features_hash}",
                   stored=attrs["features_settings_hash"], expected=features_hash)


def _check_notes(dg, T: int, fps: int, where: str, report: ValidationReport):
    """``frame_class``'s length and the notes: fields, finite, sorted, on the grid, on their frames in [0, T), and
    the frame classes they give. Returns ``(n_notes, notes or None, sound)``: the notes as a dict of float64
    times/beats and int64 fields (None when they cannot be read as numbers), sound when every note check passed."""
    from mapkit.preprocess.targets import frame_class

    fc = dg["frame_class"][()]
    if fc.shape != (T,):
        report.add("target_length", where, f"frame_class has {fc.shape[0] if fc.ndim else 0} frames, expected "
                                           f"T = {T}", length=int(fc.shape[0]) if fc.ndim else 0, n_frames=T)
    raw_notes = dg["notes"][()]
    n_notes = len(raw_notes)
    names = set(raw_notes.dtype.names or ())
    if not set(NOTE_FIELDS) <= names:
        report.add("notes", where, f"notes have fields {sorted(names)}, not the stored note record")
        return n_notes, None, False
    notes = {k: raw_notes[k].astype(np.float64) for k in ("time_s", "beat")}
    for k in NOTE_FIELDS[2:]:
        notes[k] = _integral(raw_notes[k], f"notes field {k}", where, "notes", report)
        if notes[k] is None:
            return n_notes, None, False
    times, frames = notes["time_s"], notes["frame"]
    if not (np.all(np.isfinite(times)) and np.all(np.isfinite(notes["beat"]))):
        report.add("notes", where, f"{int((~np.isfinite(times)).sum() + (~np.isfinite(notes['beat'])).sum())} "
                                   "non-finite note times or beats")
        return n_notes, None, False
    order = np.lexsort((notes["row"], notes["column"], times))
    notes_sound = np.array_equal(order, np.arange(n_notes))
    if not notes_sound:
        first = int(np.flatnonzero(order != np.arange(n_notes))[0])
        report.add("notes", where, f"notes not sorted by (time, column, row), first out of place at index {first}",
                   index=first)
    notes_sound &= _check_note_grid(notes, where, report)
    expected_frames = frame_of(times, fps) if n_notes else np.zeros(0, np.int64)
    wrong = np.flatnonzero(frames != expected_frames)
    if wrong.size:
        notes_sound = False
        i = int(wrong[0])
        report.add("note_frames", where, f"{wrong.size} notes off their frame; note {i} at {times[i]:.6f} s is on "
                                         f"frame {frames[i]}, round(t * {fps}) = {expected_frames[i]}",
                   count=int(wrong.size), index=i, time_s=float(times[i]), frame=int(frames[i]),
                   expected=int(expected_frames[i]))
    outside = np.flatnonzero((frames < 0) | (frames >= T))
    if outside.size:
        notes_sound = False
        i = int(outside[0])
        report.add("note_frames", where, f"{outside.size} notes outside [0, {T}); note {i} on frame {frames[i]}",
                   count=int(outside.size), index=i, frame=int(frames[i]), n_frames=T)
    if notes_sound and fc.shape == (T,):
        recomputed = frame_class(frames, notes["color"], T)
        diff = np.flatnonzero(recomputed != fc)
        if diff.size:
            f = int(diff[0])
            report.add("frame_class", where, f"{diff.size} frames disagree with the notes; frame {f} holds class "
                                             f"{fc[f]}, its notes give {int(recomputed[f])}",
                       count=int(diff.size), frame=f, stored=fc[f].item(), from_notes=int(recomputed[f]))
    return n_notes, notes, notes_sound


def _check_states(dg, notes: dict, notes_sound: bool, where: str, report: ValidationReport):
    """``states`` against the 12-cell grids the sound notes give, grouped by their frames.

    Returns ``(state_frames, stored states or None, states from the notes or None)``.
    """
    from mapkit.preprocess.targets import note_states

    frames = notes["frame"]
    state_frames = np.unique(frames)
    states = _integral(dg["states"][()], "states", where, "states", report)
    expected_states = None
    if notes_sound:
        state_frames, expected_states, _ = note_states(frames, notes["column"], notes["row"], notes["color"],
                                                       notes["direction"])
        if states is not None:
            if states.shape != expected_states.shape:
                report.add("states", where, f"states {list(states.shape)}, the notes give "
                                            f"{list(expected_states.shape)} ({len(state_frames)} note frames)",
                           shape=states.shape, expected=expected_states.shape)
            else:
                i, count = _first_difference(states, expected_states)
                if i is not None:
                    cell = int(np.flatnonzero(states[i] != expected_states[i])[0])
                    report.add("states", where, f"{count} states differ from their notes; state {i} (frame "
                                                f"{int(state_frames[i])}) cell {cell} holds {int(states[i, cell])}, "
                                                f"the notes give {int(expected_states[i, cell])}",
                               count=count, index=i, frame=int(state_frames[i]), cell=cell,
                               stored=int(states[i, cell]), from_notes=int(expected_states[i, cell]))
    return state_frames, states, expected_states


def _check_tokens(dg, states, expected_states, vocab, vocab_hash, attrs: dict, shard_vocab_hash, where: str,
                  report: ValidationReport):
    """Tokens: whole numbers, BOS first, EOS last, no special token between, the vocabulary's encoding of the
    states (those the notes give, else the stored ones), the vocabulary hash named. Returns the raw tokens."""
    from mapkit.preprocess.targets import BOS, EOS, PAD

    raw_tokens = dg["tokens"][()]
    n_tok = len(raw_tokens)
    tokens = _integral(raw_tokens, "tokens", where, "tokens", report)
    if tokens is not None:
        if n_tok < 2 or tokens[0] != BOS or tokens[-1] != EOS:
            report.add("tokens", where, f"tokens must start with BOS {BOS} and end with EOS {EOS}, got "
                                        f"{tokens[:1].tolist()} ... {tokens[-1:].tolist()}", length=n_tok)
        elif np.any(np.isin(tokens[1:-1], (PAD, BOS, EOS))):
            i = 1 + int(np.flatnonzero(np.isin(tokens[1:-1], (PAD, BOS, EOS)))[0])
            report.add("tokens", where, f"PAD/BOS/EOS token {int(tokens[i])} inside the sequence at {i}", index=i)
    if tokens is not None and vocab is not None:
        bad = np.flatnonzero((tokens < 0) | (tokens >= len(vocab)))
        # the tokens are the vocabulary's encoding of the states the notes give (of the stored ones when the
        # notes cannot give them): a stored state and its token changed together are still caught
        truth = expected_states if expected_states is not None else states
        if bad.size:
            i = int(bad[0])
            report.add("tokens", where, f"{bad.size} tokens outside [0, {len(vocab)}); token {i} is {int(tokens[i])}",
                       count=int(bad.size), index=i, token=int(tokens[i]), vocab_size=len(vocab))
        elif truth is not None and n_tok >= 2:
            if truth.shape != (n_tok - 2, 12):
                report.add("tokens", where, f"{n_tok - 2} state tokens for {len(truth)} states",
                           tokens=n_tok - 2, states=len(truth))
            else:
                enc = vocab.encode(truth)
                i, count = _first_difference(tokens[1:-1], enc)
                if i is not None:
                    report.add("tokens", where, f"{count} tokens are not their state's token; token {i + 1} is "
                                                f"{int(tokens[i + 1])}, the vocabulary gives {int(enc[i])}",
                               count=count, index=i + 1, stored=int(tokens[i + 1]), expected=int(enc[i]))
    if vocab_hash is not None and n_tok > 2:
        for what, h in (("level", attrs.get("vocab_hash")), ("shard", shard_vocab_hash)):
            if h is not None and str(h) != vocab_hash:
                report.add("vocab_hash", where, f"{what} vocab_hash {h}, vocab.json has {vocab_hash}",
                           stored=str(h), expected=vocab_hash)
    return raw_tokens


def _check_token_frames(dg, raw_tokens, state_frames, T: int, where: str, report: ValidationReport):
    """Token frames: one per token, strictly increasing, BOS on -1, EOS on T, the notes' frames between."""
    n_tok = len(raw_tokens)
    token_frames = _integral(dg["token_frames"][()], "token_frames", where, "token_frames", report)
    if token_frames is None:
        return
    if token_frames.shape != raw_tokens.shape:
        report.add("token_frames", where, f"{len(token_frames)} token frames for {n_tok} tokens")
    else:
        steps = np.diff(token_frames)
        if steps.size and steps.min() <= 0:
            i = int(np.flatnonzero(steps <= 0)[0])
            report.add("token_frames", where, f"not strictly increasing: frame {int(token_frames[i])} then "
                                              f"{int(token_frames[i + 1])} at token {i + 1}", index=i + 1)
        if n_tok >= 2 and (token_frames[0] != -1 or token_frames[-1] != T):
            report.add("token_frames", where, f"BOS on frame {int(token_frames[0])} and EOS on "
                                              f"{int(token_frames[-1])}, expected -1 and T = {T}")
        if n_tok >= 2 and not np.array_equal(token_frames[1:-1], state_frames):
            report.add("token_frames", where, f"{n_tok - 2} state tokens for {len(state_frames)} note frames, or "
                                              "on other frames than the notes",
                       states=n_tok - 2, note_frames=int(len(state_frames)))


def _check_tempo_map(attrs: dict, notes: dict, where: str, report: ValidationReport):
    """The tempo map reads and times every note's beat to its ``time_s``; None when it does not."""
    from mapkit.preprocess.tempo import TempoMap

    n_notes, times = len(notes["time_s"]), notes["time_s"]
    tempo = None
    try:
        tempo = TempoMap.from_json(json.loads(str(attrs["tempo_map"])))
    except KeyError:
        report.add("tempo_map", where, "no tempo_map attribute")
    except Exception as e:  # noqa: BLE001 - non-finite, discontinuous, non-monotone or unparseable: all findings
        report.add("tempo_map", where, f"invalid tempo map: {type(e).__name__}: {e}")
    if tempo is not None and n_notes:
        from_tempo = tempo.seconds(notes["beat"])
        dt = np.abs(from_tempo - times)
        if dt.max() > NOTE_TIME_ATOL:
            i = int(np.argmax(dt))
            report.add("tempo_map", where, f"note {i} at beat {notes['beat'][i]:.6g} is timed {from_tempo[i]:.6f} s "
                                           f"by the tempo map, stored at {times[i]:.6f} s", index=i,
                       seconds_from_tempo=float(from_tempo[i]), time_s=float(times[i]))
            tempo = None  # a map that does not time the notes cannot time the song's end either
    return tempo


def _check_gaps(dg, raw_tokens, tempo, notes: dict, notes_sound: bool, state_frames, attrs: dict, T: int, fps: int,
               where: str, report: ValidationReport):
    """Gaps: one per token, finite, and :func:`token_sequence` recomputed from the notes, T and ``end_beat``
    (the tempo map's beat of frame T - 1), within float32 rounding (:data:`GAP_RTOL`)."""
    from mapkit.preprocess.targets import token_sequence

    n_tok, times, frames = len(raw_tokens), notes["time_s"], notes["frame"]
    gaps_sound = True
    for name in GAP_NAMES:
        gap = dg[name][()]
        if gap.shape != raw_tokens.shape:
            report.add("gaps", where, f"{name} has {len(gap)} values for {n_tok} tokens")
            gaps_sound = False
        elif not np.all(np.isfinite(gap)):
            i = int(np.flatnonzero(~np.isfinite(gap))[0])
            report.add("gaps", where, f"{name} non-finite at token {i}: {gap[i]}", index=i)
            gaps_sound = False
    if tempo is None or not notes_sound:
        return
    end_beat = song_end_beat(tempo, T, fps)  # as build-targets computes it
    stored_end = attrs.get("end_beat")
    if stored_end is None or not abs(float(stored_end) - end_beat) <= END_BEAT_RTOL * max(1.0, abs(end_beat)):
        report.add("gaps", where, f"end_beat attribute {stored_end}, the tempo map gives {end_beat!r} at the last "
                                  f"frame {T - 1}", stored=stored_end, expected=end_beat)
    if not gaps_sound:
        return
    first = np.searchsorted(frames, state_frames, side="left")  # sorted notes: the earliest note of each frame
    expected_gaps = token_sequence(state_frames, np.zeros(len(state_frames), np.int32), times[first],
                                   notes["beat"][first], T, end_beat, fps)
    length = {"s": frame_time(T - 1, fps), "beats": abs(end_beat)}
    for name in GAP_NAMES:
        gap = dg[name][()]
        want = getattr(expected_gaps, name).astype(np.float64)
        if gap.shape != want.shape:
            continue  # the token count is already wrong (token_frames names it)
        tol = GAP_RTOL * (np.abs(want) + length[name.rsplit("_", 1)[1]])
        i, count = _first_difference(gap, want, tol)
        if i is not None:
            report.add("gaps", where, f"{name}: {count} gaps differ from the notes' times; token {i} holds "
                                      f"{float(gap[i])!r}, the notes give {float(want[i])!r}",
                       gap=name, count=count, index=i, stored=float(gap[i]), from_notes=float(want[i]))



# --- the store ---------------------------------------------------------------------------------------


def _check_level_objects(dg, where: str, fps: int, report: ValidationReport) -> int:
    """Walls, arcs, chains, events and frame_events of one level group (mapkit.datasets.object_validation)."""
    from mapkit.preprocess.tempo import TempoMap

    if any(k not in dg for k in LEVEL_DATASETS) or dg.attrs.get("n_frames") is None:
        return 0  # check_level reported it
    try:
        raw = dg.attrs["tempo_map"]
        tempo = TempoMap.from_json(json.loads(raw.decode() if isinstance(raw, bytes) else str(raw)))
    except Exception:  # noqa: BLE001 - check_level reports a broken tempo map
        tempo = None
    notes = dg["notes"][()]
    if tempo is not None and len(notes) and notes.dtype.names and {"beat", "time_s"} <= set(notes.dtype.names):
        with np.errstate(invalid="ignore"):
            if not np.all(np.abs(tempo.seconds(notes["beat"]) - notes["time_s"]) <= NOTE_TIME_ATOL):
                tempo = None  # a map that does not time the notes: check_level reports it, once
    return check_objects(dg, where, int(dg.attrs["n_frames"]), tempo, report, fps)


class _UnkTotals:
    """UNK state tokens over the stored levels but the vocabulary's validation songs (``unk_share`` warning)."""

    def __init__(self, store: Store):
        self.unk = self.states = 0
        self.worst = (0.0, "", 0, 0)  # share, level, UNK, states
        try:
            self.val_songs = set((store.read_vocab_json(missing_ok=True) or {}).get("val_songs") or ())
        except (StoreError, AttributeError, TypeError):
            self.val_songs = set()

    def add(self, dg, level: str):
        from mapkit.preprocess.targets import UNK

        if level.split("/", 1)[0] in self.val_songs:
            return
        tokens = np.asarray(dg["tokens"][()])
        if tokens.ndim != 1 or len(tokens) <= 2:
            return
        n_unk, n = int((tokens[1:-1] == UNK).sum()), len(tokens) - 2
        self.unk += n_unk
        self.states += n
        if n_unk / n > self.worst[0]:
            self.worst = (n_unk / n, level, n_unk, n)

    def warn(self, report: ValidationReport, where: str):
        from mapkit.datasets.vocab import UNK_WARN_SHARE

        share = self.unk / self.states if self.states else 0.0
        report.counts["unk_share"] = round(share, 6)
        if share > UNK_WARN_SHARE:
            level = self.worst[1]
            report.warn("unk_share", where, f"{self.unk} of {self.states} note states ({100 * share:.1f}%) are UNK, "
                                            f"above {100 * UNK_WARN_SHARE:g}% (most: {level}, {self.worst[2]} of "
                                            f"{self.worst[3]}); the models can neither learn nor generate them: "
                                            f"mapkit build-targets --rebuild-vocab re-counts the vocabulary",
                        unk=self.unk, states=self.states, share=share)


def _one_hash(shards: list[_Shard], key: str):
    hashes = Counter(str(s.attrs.get(key)) for s in shards if s.attrs.get(key) is not None)
    return hashes.most_common(1)[0][0] if hashes else None


def validate_store(store, progress: bool = True, block_rows: int = BLOCK_ROWS, checksums: bool = True
                   ) -> ValidationReport:
    """Check every invariant of a store (see the module docstring for the list of checks).

    Never raises on bad data: a truncated, half-written or foreign shard, a
    song or level that cannot be read, and every broken invariant become
    problems of the report, naming the shard, song or level, the check and the
    numbers involved.

    Parameters
    ----------
    store : path or Store
    progress : bool
        tqdm progress bar over songs and levels on stderr.
    block_rows : int
        Rows of a feature array read at once.
    checksums : bool
        Verify every dataset's and group's checksum (``mapkit validate
        --quick``: False, skipping only the ``checksum`` check).

    Returns
    -------
    ValidationReport
        ``.ok`` when every check passed.

    Examples
    --------
    >>> report = validate_store("mapkit-data", progress=False)  # doctest: +SKIP
    >>> report.ok, report.counts["songs"]  # doctest: +SKIP
    (True, 100)
    """
    from mapkit.progress import progress_bar

    store = store if isinstance(store, Store) else Store(store)
    report = ValidationReport(str(store.root))
    report.counts.update({"feature_shards": 0, "target_shards": 0, "songs": 0, "levels": 0, "notes": 0, "objects": 0,
                          "superseded": 0, "partial_files": 0})
    if _store_not_ready(store, report):
        report.counts.update(problems=report.n_problems, warnings=0)
        return report

    feature_shards = _scan_shards(store, "features", report, checksums)
    target_shards = _scan_shards(store, "targets", report, checksums)
    if not feature_shards and not target_shards and not report.n_problems:
        report.add("store", str(store.root), "no store here: no feature or target shards (run mapkit extract and "
                                             "mapkit build-targets into this --store first)")
    report.counts["feature_shards"] = len(feature_shards)
    report.counts["target_shards"] = len(target_shards)
    songs_at = _winners(feature_shards, "features", report)
    levels_at = _winners(target_shards, "targets", report)
    features_hash = _one_hash([songs_at[i] for i in songs_at], "settings_hash")

    bar = progress_bar(total=len(songs_at) + len(levels_at), desc="validate", unit="song", file=sys.stderr,
                       disable=not progress, dynamic_ncols=True)
    try:
        totals, song_facts = _check_features(feature_shards, songs_at, report, bar, block_rows, checksums)
        if feature_shards or store.stats_path.exists():
            _check_stats(store, totals, features_hash, report)

        _check_targets(store, target_shards, levels_at, songs_at, song_facts, features_hash, report, bar, checksums)
    finally:
        bar.close()
    report.counts["problems"] = report.n_problems
    report.counts["warnings"] = len(report.warnings)
    return report


def _store_not_ready(store: Store, report: ValidationReport) -> bool:
    """True (reported) when there is no store folder, a run is writing it, or a --rebuild-vocab is half done."""
    if not store.root.is_dir():
        report.add("store", str(store.root), "not a folder" if store.root.exists() else "no such store folder")
        return True
    holder = store.writer_holding_lock()
    if holder is not None:  # its shard in progress is not a killed run's leftover: check once it has finished
        report.add("store", str(store.root), f"store is being written by {holder}; validate it when that run "
                                             "has finished")
        return True
    if store.rebuild_journal_path.exists():  # vocab.json and the targets are between two states
        report.add("store", str(store.rebuild_journal_path), "a committed build-targets --rebuild-vocab was "
                                                             "interrupted before it finished: the next mapkit "
                                                             "extract or build-targets on this store finishes it")
        return True
    return False


def _check_features(feature_shards, songs_at: dict, report: ValidationReport, bar, block_rows: int, checksums: bool):
    """Every song, shard by shard, each once (its newest copy); ``(totals for the stats, {song_id: (T, audio)})``."""
    import h5py

    totals = _FeatureTotals()
    song_facts = {}  # song_id -> (T, audio_sha256): what the targets are checked against
    for shard in feature_shards:
        mine = [i for i in shard.ids if songs_at[i] is shard]
        if not mine:
            continue
        settings = shard.settings or FeatureSettings()
        try:
            f = h5py.File(shard.path, "r", rdcc_nbytes=0)
        except Exception as e:  # noqa: BLE001 - it opened in the first pass; report if it no longer does
            report.add("shard_readable", str(shard.path), f"cannot read shard: {type(e).__name__}: {e}")
            bar.update(len(mine))
            continue
        with f:
            for song_id in mine:
                where = f"song {song_id} ({shard.path.name})"
                try:
                    facts = _check_song(f[KIND_ROOTS["features"]][song_id], song_id, where, settings, report,
                                        totals, block_rows, checksums)
                except Exception as e:  # noqa: BLE001 - a damaged song is a finding, the rest goes on
                    report.add("shard_readable", where, f"cannot read song: {type(e).__name__}: {e}")
                    totals.arrays_complete = False
                    facts = None
                if facts is not None:
                    song_facts[song_id] = facts
                report.counts["songs"] += 1
                bar.update(1)
    return totals, song_facts


def _check_targets(store: Store, target_shards, levels_at: dict, songs_at: dict, song_facts: dict, features_hash,
                   report: ValidationReport, bar, checksums: bool):
    """Every level, shard by shard, each once (its newest copy), against its song's facts and the vocabulary."""
    import h5py

    if target_shards and not songs_at:
        report.add("targets_without_features", str(store.shard_dir("features")),
                   f"{len(target_shards)} target shards with {len(levels_at)} levels but no readable feature "
                   "shards: the targets cannot be used or cross-checked (run mapkit extract)",
                   target_shards=len(target_shards), levels=len(levels_at))
    unk = _UnkTotals(store)
    if target_shards:
        vocab = _load_vocab(store, report)
        vocab_hash = vocab.hash if vocab is not None else None
        for shard in target_shards:
            mine = [i for i in shard.ids if levels_at[i] is shard]
            if not mine:
                continue
            fps = shard.settings.fps if shard.settings is not None else TargetSettings().fps
            try:
                f = h5py.File(shard.path, "r")
            except Exception as e:  # noqa: BLE001
                report.add("shard_readable", str(shard.path), f"cannot read shard: {type(e).__name__}: {e}")
                bar.update(len(mine))
                continue
            with f:
                for song_id in mine:
                    try:
                        lg = f[KIND_ROOTS["targets"]][song_id]
                        check_level_group(lg, f"level {song_id} ({shard.path.name})", song_facts.get(song_id),
                                          report, checksums)
                        for name, dg in _walk_levels(lg):
                            where = f"level {song_id}/{name} ({shard.path.name})"
                            try:
                                _check_members(dg, LEVEL_DATASETS, where, report)
                                if checksums:
                                    _check_attrs_checksum(dg, where, report)
                                    for ds_name in LEVEL_DATASETS:
                                        if ds_name in dg:
                                            _check_data_checksum(dg[ds_name], None, where, report)
                                report.counts["notes"] += check_level(
                                    dg, where, song_facts.get(song_id), vocab, vocab_hash, features_hash,
                                    fps, report, shard_vocab_hash=shard.attrs.get("vocab_hash"))
                                report.counts["objects"] += _check_level_objects(dg, where, fps, report)
                                unk.add(dg, f"{song_id}/{name}")
                            except Exception as e:  # noqa: BLE001 - a damaged level is a finding
                                report.add("shard_readable", where, f"cannot read level: {type(e).__name__}: {e}")
                            report.counts["levels"] += 1
                    except Exception as e:  # noqa: BLE001
                        report.add("shard_readable", f"song {song_id} ({shard.path.name})",
                                   f"cannot read levels: {type(e).__name__}: {e}")
                    bar.update(1)
    elif store.vocab_path.exists():
        _load_vocab(store, report)  # still a finding when unreadable
    unk.warn(report, str(store.root))
