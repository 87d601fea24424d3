"""``mapkit validate``: prove every length, alignment and vocabulary invariant of a store (DESIGN.md section 5).

:func:`validate_store` reads a store the way every mapkit reader does (only
complete ``shard-NNNNN.h5`` files; of several copies of a song, the one in the
highest-numbered shard) and checks:

=====================  =========================================================================
check                  what it proves
=====================  =========================================================================
``store``              the store folder exists
``shard_readable``     every complete shard opens, and every stored song/level in it reads
``shard_attrs``        schema version, shard kind, settings JSON whose hash is ``settings_hash``
``settings_hash``      one settings hash across all shards of a kind; levels made from the
                       stored features' settings hash
``foreign_file``       nothing else in ``features/`` or ``targets/`` (a ``.partial`` file is
                       only a warning: a killed run left it, readers ignore it)
``song_attrs``         every song attribute of DESIGN.md section 8 is present
``frame_count``        ``T = 1 + floor(n_samples * 100 / sample_rate)`` and ``duration_s``
``padding``            pad widths equal the settings
``feature_rows``       placement ``[T + 14, 3, 80]``, selection ``[T + 2, 100]``, float16
``pad_values``         every pad row holds the silence value ``ln(log_floor)``
``features_finite``    no NaN or infinity in the features
``band_sums``          the stored per-song band sums agree with the stored arrays
``stats``              ``stats.json`` agrees with the stored band sums and with the arrays
``vocab``              ``vocab.json`` reads and its hash matches its states
``vocab_hash``         every targets shard and level names the hash of ``vocab.json``
``target_song``        every level has the features of its song, from the same audio
``target_length``      ``frame_class`` has T frames, T of the song's features
``note_frames``        every note's frame is ``round(time_s * 100)`` and lies in [0, T)
``notes``              notes finite and sorted by (time, column, row)
``frame_class``        ``frame_class`` equals the class recomputed from ``notes``
``tokens``             ``0 <= token < len(vocab)``; BOS first, EOS last, neither in between;
                       tokens equal the vocabulary's encoding of ``states``
``token_frames``       BOS on frame -1, EOS on T, the notes' frames in between, strictly
                       increasing
``gaps``               gap arrays have the tokens' length and are finite
``tempo_map``          the tempo map reads, is finite and strictly increasing, and times
                       every note's beat to its ``time_s``
=====================  =========================================================================

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
from mapkit.datasets.store import (FEATURE_STAGES, KIND_ROOTS, PARTIAL_SUFFIX, SHARD_PATTERN, Entry, Store,
                                   _attrs_dict, _shard_number, feature_stats)
from mapkit.preprocess.timebase import frame_of, n_frames as count_frames
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

#: Song attributes of DESIGN.md section 8 (plus the band sums stats.json is made from).
SONG_ATTRS = ("n_frames", "pad_placement", "pad_selection", "sample_rate", "n_samples", "duration_s",
              "audio_sha256", "source") + tuple(f"{s}_{k}" for s in FEATURE_STAGES for k in ("band_sum", "band_sumsq"))

#: Datasets of a level (DESIGN.md section 8 and the targets layout).
LEVEL_DATASETS = ("frame_class", "notes", "tokens", "token_frames", "gap_prev_s", "gap_next_s",
                  "gap_prev_beats", "gap_next_beats")
GAP_NAMES = LEVEL_DATASETS[4:]
#: Attributes of a level that are checked.
LEVEL_ATTRS = ("n_frames", "audio_sha256", "features_settings_hash", "vocab_hash", "tempo_map")

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
        Same shape; things a reader copes with (leftover ``.partial`` shards,
        levels without features). They do not make the store invalid.
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
        lines = [f"store {self.store}: {c.get('feature_shards', 0)} feature shards, "
                 f"{c.get('songs', 0)} songs; {c.get('target_shards', 0)} target shards, "
                 f"{c.get('levels', 0)} levels, {c.get('notes', 0)} notes"]
        if c.get("superseded"):
            lines.append(f"  {c['superseded']} superseded copies ignored (newest shard wins)")
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


def _scan_shards(store: Store, kind: str, report: ValidationReport) -> list[_Shard]:
    """First pass over the shards of ``kind``: open each, check its file attrs, list its items."""
    d = store.shard_dir(kind)
    if not d.is_dir():
        return []
    for p in sorted(d.iterdir()):
        if SHARD_PATTERN.match(p.name):
            continue
        if p.name.endswith(PARTIAL_SUFFIX) and _shard_number(p.name) is not None:
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
                attrs = _attrs_dict(f.attrs)
                ids = list(f[root].keys()) if root in f else []
        except Exception as e:  # noqa: BLE001 - truncated, half-written or foreign: reported, never crashed on
            report.add("shard_readable", where, f"cannot read shard: {type(e).__name__}: {e}",
                       size_bytes=path.stat().st_size)
            continue
        if attrs.get("schema_version") != mapkit.SCHEMA_VERSION:
            report.add("shard_attrs", where, f"schema version {attrs.get('schema_version')!r}, expected "
                                             f"{mapkit.SCHEMA_VERSION}", schema_version=attrs.get("schema_version"))
            continue
        if attrs.get("kind") != kind:
            report.add("shard_attrs", where, f"shard kind {attrs.get('kind')!r} in {kind}/")
            continue
        settings = _settings_of(kind, attrs, report, where)
        shards.append(_Shard(path, _shard_number(path.name), attrs, settings, ids))
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


def scan_features(ds, pad: tuple, n_frames: int, silence, block_rows: int = BLOCK_ROWS) -> _Scan:
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

    Returns
    -------
    _Scan
        Counts and first rows of non-finite values and of pad rows that are
        not all silence; float64 per-band sums of ``y``, ``y**2`` and ``|y|``
        over the song frames (band axes = ``ds.shape[1:]``).
    """
    lo, hi = int(pad[0]), int(pad[0]) + int(n_frames)
    silence = np.asarray(silence, dtype=ds.dtype)
    bands = tuple(ds.shape[1:])
    out = _Scan(sum=np.zeros(bands), sum_sq=np.zeros(bands), sum_abs=np.zeros(bands))
    for start in range(0, ds.shape[0], block_rows):
        block = np.asarray(ds[start:start + block_rows])
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
                totals: _FeatureTotals, block_rows: int):
    """Every features check of one song group; returns ``(T, audio_sha256)`` or None."""
    attrs = _attrs_dict(g.attrs)
    missing = [k for k in SONG_ATTRS if k not in attrs]
    if missing:
        report.add("song_attrs", where, f"missing attributes {missing}", missing=missing)
        totals.arrays_complete = False
        return None
    T = int(attrs["n_frames"])
    n, sr = int(attrs["n_samples"]), int(attrs["sample_rate"])
    expected_T = count_frames(n, sr, settings.fps) if sr > 0 and n >= 0 else None
    if expected_T != T:
        report.add("frame_count", where, f"n_frames {T} but 1 + floor({n} * {settings.fps} / {sr}) = {expected_T}",
                   n_frames=T, n_samples=n, sample_rate=sr, expected=expected_T)
    if sr > 0 and not math.isclose(float(attrs["duration_s"]), n / sr, rel_tol=1e-9, abs_tol=1e-9):
        report.add("frame_count", where, f"duration_s {attrs['duration_s']} but n_samples / sample_rate = {n / sr}",
                   duration_s=attrs["duration_s"], expected=n / sr)
    pads = {"placement": (settings.placement_pad, settings.placement_pad),
            "selection": (settings.selection_pad, settings.selection_pad)}
    shapes = {"placement": (len(settings.placement_n_ffts), settings.placement_n_mels),
              "selection": (settings.selection_n_mels,)}
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
        if stage not in g:
            report.add("feature_rows", where, f"no {stage} dataset")
            totals.arrays_complete = False
            continue
        ds = g[stage]
        pad = pads[stage]
        expected_shape = (T + pad[0] + pad[1],) + shapes[stage]
        if tuple(ds.shape) != expected_shape or ds.dtype != np.float16:
            report.add("feature_rows", where, f"{stage} is {list(ds.shape)} {ds.dtype}, expected T + pads = "
                                              f"{list(expected_shape)} float16 (T = {T}, pads {list(pad)})",
                       shape=tuple(ds.shape), expected=expected_shape, n_frames=T, pad=pad)
            totals.arrays_complete = False
            continue
        scan = scan_features(ds, pad, T, settings.silence_value, block_rows)
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
            continue
        tol_sum, tol_sq = float16_sum_tolerances(scan.sum_abs, scan.sum_sq, T)
        a = totals.array[stage]
        a["sum"] = a["sum"] + scan.sum
        a["sum_sq"] = a["sum_sq"] + scan.sum_sq
        a["tol_sum"] = a["tol_sum"] + tol_sum
        a["tol_sq"] = a["tol_sq"] + tol_sq
        for key, arr_sum, tol in (("band_sum", scan.sum, tol_sum), ("band_sumsq", scan.sum_sq, tol_sq)):
            stored = np.asarray(attrs[f"{stage}_{key}"], np.float64)
            if stored.shape != arr_sum.shape:
                report.add("band_sums", where, f"{stage}_{key} has shape {list(stored.shape)}, the bands "
                                               f"{list(arr_sum.shape)}")
                continue
            excess = np.abs(stored - arr_sum) - tol
            if not np.all(excess <= 0):  # NaN in the stored sums fails too
                k = _worst(excess)
                report.add("band_sums", where, f"{stage}_{key} band {list(k)}: stored {stored[k]:.6g}, the array "
                                               f"sums to {arr_sum[k]:.6g} (float16 tolerance {tol[k]:.3g})",
                           band=k, stored=float(stored[k]), from_array=float(arr_sum[k]), tolerance=float(tol[k]))
    return T, str(attrs["audio_sha256"])


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
    from mapkit.preprocess.targets import Vocabulary

    where = str(store.vocab_path)
    try:
        return Vocabulary.from_json(json.loads(store.vocab_path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        report.add("vocab", where, "no vocab.json, but the store holds targets")
    except Exception as e:  # noqa: BLE001 - any unreadable vocabulary is a finding
        report.add("vocab", where, f"unreadable: {type(e).__name__}: {e}")
    return None


def _walk_levels(song_group):
    """``(characteristic/difficulty, group)`` of every level under a song's group (two levels deep)."""
    import h5py

    for characteristic, cg in song_group.items():
        if not isinstance(cg, h5py.Group):
            continue
        for difficulty, dg in cg.items():
            if isinstance(dg, h5py.Group):
                yield f"{characteristic}/{difficulty}", dg


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
        T and audio SHA-256 of the song's stored features, or None when it has none.
    vocab : Vocabulary or None
    vocab_hash, features_hash : str or None
        Hash of ``vocab.json`` and settings hash of the feature shards.
    fps : int
    report : ValidationReport
    shard_vocab_hash : str, optional
        The ``vocab_hash`` of the level's shard.

    A level without states (``[BOS, EOS]``) is the same under every
    vocabulary, so only levels with states must name the hash of ``vocab.json``.
    """
    from mapkit.preprocess.targets import BOS, EOS, frame_class
    from mapkit.preprocess.tempo import TempoMap

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
    if song is None:
        report.warn("target_song", where, "no features stored for this song: lengths not cross-checked")
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

    fc = dg["frame_class"][()]
    if fc.shape != (T,):
        report.add("target_length", where, f"frame_class has {fc.shape[0] if fc.ndim else 0} frames, expected "
                                           f"T = {T}", length=int(fc.shape[0]) if fc.ndim else 0, n_frames=T)
    notes = dg["notes"][()]
    n_notes = len(notes)
    names = set(notes.dtype.names or ())
    if not {"time_s", "beat", "frame", "column", "row", "color", "direction"} <= names:
        report.add("notes", where, f"notes have fields {sorted(names)}, not the stored note record")
        return n_notes
    times = notes["time_s"].astype(np.float64)
    frames = notes["frame"].astype(np.int64)
    if not (np.all(np.isfinite(times)) and np.all(np.isfinite(notes["beat"]))):
        report.add("notes", where, f"{int((~np.isfinite(times)).sum() + (~np.isfinite(notes['beat'])).sum())} "
                                   "non-finite note times or beats")
        return n_notes
    order = np.lexsort((notes["row"], notes["column"], times))
    if not np.array_equal(order, np.arange(n_notes)):
        first = int(np.flatnonzero(order != np.arange(n_notes))[0])
        report.add("notes", where, f"notes not sorted by (time, column, row), first out of place at index {first}",
                   index=first)
    expected_frames = frame_of(times, fps) if n_notes else np.zeros(0, np.int64)
    wrong = np.flatnonzero(frames != expected_frames)
    if wrong.size:
        i = int(wrong[0])
        report.add("note_frames", where, f"{wrong.size} notes off their frame; note {i} at {times[i]:.6f} s is on "
                                         f"frame {frames[i]}, round(t * {fps}) = {expected_frames[i]}",
                   count=int(wrong.size), index=i, time_s=float(times[i]), frame=int(frames[i]),
                   expected=int(expected_frames[i]))
    outside = np.flatnonzero((frames < 0) | (frames >= T))
    if outside.size:
        i = int(outside[0])
        report.add("note_frames", where, f"{outside.size} notes outside [0, {T}); note {i} on frame {frames[i]}",
                   count=int(outside.size), index=i, frame=int(frames[i]), n_frames=T)
    elif fc.shape == (T,):
        recomputed = frame_class(frames, notes["color"], T)
        diff = np.flatnonzero(recomputed != fc)
        if diff.size:
            f = int(diff[0])
            report.add("frame_class", where, f"{diff.size} frames disagree with the notes; frame {f} holds class "
                                             f"{int(fc[f])}, its notes give {int(recomputed[f])}",
                       count=int(diff.size), frame=f, stored=int(fc[f]), from_notes=int(recomputed[f]))

    # --- tokens
    tokens = dg["tokens"][()].astype(np.int64)
    token_frames = dg["token_frames"][()].astype(np.int64)
    n_tok = len(tokens)
    if n_tok < 2 or tokens[0] != BOS or tokens[-1] != EOS:
        report.add("tokens", where, f"tokens must start with BOS {BOS} and end with EOS {EOS}, got "
                                    f"{tokens[:1].tolist()} ... {tokens[-1:].tolist()}", length=n_tok)
    elif np.any(np.isin(tokens[1:-1], (0, BOS, EOS))):
        i = 1 + int(np.flatnonzero(np.isin(tokens[1:-1], (0, BOS, EOS)))[0])
        report.add("tokens", where, f"PAD/BOS/EOS token {int(tokens[i])} inside the sequence at {i}", index=i)
    if vocab is not None:
        bad = np.flatnonzero((tokens < 0) | (tokens >= len(vocab)))
        if bad.size:
            i = int(bad[0])
            report.add("tokens", where, f"{bad.size} tokens outside [0, {len(vocab)}); token {i} is {int(tokens[i])}",
                       count=int(bad.size), index=i, token=int(tokens[i]), vocab_size=len(vocab))
        elif "states" in dg and n_tok >= 2:
            states = dg["states"][()]
            if states.shape != (n_tok - 2, 12):
                report.add("tokens", where, f"states {list(states.shape)}, expected [{n_tok - 2}, 12]")
            else:
                enc = vocab.encode(states)
                diff = np.flatnonzero(enc != tokens[1:-1])
                if diff.size:
                    i = int(diff[0])
                    report.add("tokens", where, f"{diff.size} tokens are not their state's token; token {i + 1} is "
                                                f"{int(tokens[i + 1])}, the vocabulary gives {int(enc[i])}",
                               count=int(diff.size), index=i + 1, stored=int(tokens[i + 1]), expected=int(enc[i]))
    if vocab_hash is not None and n_tok > 2:
        for what, h in (("level", attrs.get("vocab_hash")), ("shard", shard_vocab_hash)):
            if h is not None and str(h) != vocab_hash:
                report.add("vocab_hash", where, f"{what} vocab_hash {h}, vocab.json has {vocab_hash}",
                           stored=str(h), expected=vocab_hash)
    if token_frames.shape != tokens.shape:
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
        note_frames = np.unique(frames)
        if n_tok >= 2 and not np.array_equal(token_frames[1:-1], note_frames):
            report.add("token_frames", where, f"{n_tok - 2} state tokens for {len(note_frames)} note frames, or "
                                              "on other frames than the notes",
                       states=n_tok - 2, note_frames=int(len(note_frames)))
    for name in GAP_NAMES:
        gap = dg[name][()]
        if gap.shape != tokens.shape:
            report.add("gaps", where, f"{name} has {len(gap)} values for {n_tok} tokens")
        elif not np.all(np.isfinite(gap)):
            i = int(np.flatnonzero(~np.isfinite(gap))[0])
            report.add("gaps", where, f"{name} non-finite at token {i}: {gap[i]}", index=i)

    # --- tempo
    try:
        tempo = TempoMap.from_json(json.loads(str(attrs["tempo_map"])))
    except KeyError:
        report.add("tempo_map", where, "no tempo_map attribute")
        return n_notes
    except Exception as e:  # noqa: BLE001 - non-finite, non-monotone or unparseable: all findings
        report.add("tempo_map", where, f"invalid tempo map: {type(e).__name__}: {e}")
        return n_notes
    if n_notes:
        dt = np.abs(tempo.seconds(notes["beat"].astype(np.float64)) - times)
        if dt.max() > NOTE_TIME_ATOL:
            i = int(np.argmax(dt))
            report.add("tempo_map", where, f"note {i} at beat {float(notes['beat'][i]):.6g} is timed "
                                           f"{float(tempo.seconds(notes['beat'][i])):.6f} s by the tempo map, "
                                           f"stored at {times[i]:.6f} s", index=i, seconds_from_tempo=float(
                                               tempo.seconds(notes['beat'][i])), time_s=float(times[i]))
    return n_notes


# --- the store ---------------------------------------------------------------------------------------


def _one_hash(shards: list[_Shard], key: str):
    hashes = Counter(str(s.attrs.get(key)) for s in shards if s.attrs.get(key) is not None)
    return hashes.most_common(1)[0][0] if hashes else None


def validate_store(store, progress: bool = True, block_rows: int = BLOCK_ROWS) -> ValidationReport:
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
    import h5py
    from tqdm import tqdm

    store = store if isinstance(store, Store) else Store(store)
    report = ValidationReport(str(store.root))
    report.counts.update({"feature_shards": 0, "target_shards": 0, "songs": 0, "levels": 0, "notes": 0,
                          "superseded": 0, "partial_files": 0})
    if not store.root.is_dir():
        report.add("store", str(store.root), "no such store folder")
        report.counts.update(problems=report.n_problems, warnings=0)
        return report

    feature_shards = _scan_shards(store, "features", report)
    target_shards = _scan_shards(store, "targets", report)
    report.counts["feature_shards"] = len(feature_shards)
    report.counts["target_shards"] = len(target_shards)
    songs_at = _winners(feature_shards, "features", report)
    levels_at = _winners(target_shards, "targets", report)
    features_hash = _one_hash([songs_at[i] for i in songs_at], "settings_hash")

    bar = tqdm(total=len(songs_at) + len(levels_at), desc="validate", unit="song", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    try:
        # Features, shard by shard, each song once (its newest copy).
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
                                            totals, block_rows)
                    except Exception as e:  # noqa: BLE001 - a damaged song is a finding, the rest goes on
                        report.add("shard_readable", where, f"cannot read song: {type(e).__name__}: {e}")
                        totals.arrays_complete = False
                        facts = None
                    if facts is not None:
                        song_facts[song_id] = facts
                    report.counts["songs"] += 1
                    bar.update(1)
        if feature_shards or store.stats_path.exists():
            _check_stats(store, totals, features_hash, report)

        # Targets.
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
                            for name, dg in _walk_levels(f[KIND_ROOTS["targets"]][song_id]):
                                where = f"level {song_id}/{name} ({shard.path.name})"
                                try:
                                    report.counts["notes"] += check_level(
                                        dg, where, song_facts.get(song_id), vocab, vocab_hash, features_hash,
                                        fps, report, shard_vocab_hash=shard.attrs.get("vocab_hash"))
                                except Exception as e:  # noqa: BLE001 - a damaged level is a finding
                                    report.add("shard_readable", where, f"cannot read level: {type(e).__name__}: {e}")
                                report.counts["levels"] += 1
                        except Exception as e:  # noqa: BLE001
                            report.add("shard_readable", f"song {song_id} ({shard.path.name})",
                                       f"cannot read levels: {type(e).__name__}: {e}")
                        bar.update(1)
        elif store.vocab_path.exists():
            _load_vocab(store, report)  # still a finding when unreadable
    finally:
        bar.close()
    report.counts["problems"] = report.n_problems
    report.counts["warnings"] = len(report.warnings)
    return report
