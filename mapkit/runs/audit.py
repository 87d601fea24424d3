"""``mapkit audit``: does every stored level fit its audio?

Per stored difficulty, from data already in the store (no audio decode):
the notes' frames (bombs left out) against the onset strength of the song's
stage-1 features (:mod:`mapkit.preprocess.alignment`): the best lag, how
clearly it stands out, and how much of the song the notes span. A difficulty
is flagged when (thresholds in :class:`AuditSettings`):

==============  =========================================================  ==========================
flag            when                                                       reason as printed
==============  =========================================================  ==========================
``few_notes``   fewer than ``min_note_frames`` (16) distinct note frames   ``only 9 note frames``
``no_peak``     peak strength below ``min_strength`` (4.5)                 ``no alignment peak (strength 3.2)``
``offset``      a clear peak more than ``offset_tolerance_frames`` (3)     ``offset +37 frames``
                frames from 0
``partial``     notes span less than ``min_coverage`` (0.5) of the song    ``covers 18 % of the song``
==============  =========================================================  ==========================

``no_peak`` and ``offset`` are not judged for ``few_notes`` levels, and
``offset`` not without a peak. Why these numbers: random note sets give a
strength below 4.2 whatever their size; maps aligned to
irregular hits 10 and more, to hits on a strict half-beat grid about 4.5
(lags a beat apart then correlate almost as well: tests/preprocess/
test_alignment.py); real human maps with their audio measured 5.2 to 11.8,
at lags -2 .. +1 frames (8 maps); a map spanning under half of its song is
a partial map or has the wrong (longer) audio. The lag is the tied
correlation peak nearest 0, read modulo half a beat with the stored tempo
map (:mod:`mapkit.preprocess.alignment`): a map offset by a multiple of half
a beat cannot be told from an aligned one and is not flagged (the folded
beats are stored as ``align_alias_beats``).

Results are stored as attributes of each difficulty group (``align_*``,
``audit_flags_json``...; docs/store.md) and the level group
(``audit_settings_hash``), so trainers can filter on them
(``mapkit train ... --exclude-flagged``). The store's shards are never
rewritten in place: an audited level is written again, with its new
attributes, into a new targets shard (newest wins, like ``build-targets``),
and targets shards whose every level has a newer copy are then deleted.
A level already audited with the same settings and features is not redone
(``force`` redoes it).
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mapkit.runs.runner import (ItemResult, RunInterrupted, RunReport, run_items, write_interrupted_report,
                                write_report)
from mapkit.datasets.store import ShardItem, ShardWriter, Store, open_shard
from mapkit.errors import StoreError
from mapkit.settings import Settings

COMMAND = "audit"

#: Levels per targets shard written by the audit.
DEFAULT_SHARD_LEVELS = 256

#: Flag codes, in the order reasons are listed.
FLAGS = ("few_notes", "no_peak", "offset", "partial")


@dataclass(frozen=True)
class AuditSettings(Settings):
    """Thresholds of the audit (module docstring); their hash is stored with every result."""

    KIND = "audit"

    #: Lags tried, in frames each way (100 = ±1 s).
    max_lag_frames: int = 100
    #: A clear peak further than this from lag 0 is an ``offset`` flag.
    offset_tolerance_frames: int = 3
    #: Below this peak strength (robust z-score) there is ``no_peak``.
    min_strength: float = 4.5
    #: Notes spanning less than this share of the song: ``partial``.
    min_coverage: float = 0.5
    #: Fewer distinct note frames than this: ``few_notes`` (too few to align).
    min_note_frames: int = 16
    #: Which FFT resolution of the placement features gives the onset (0: the finest).
    onset_column: int = 0
    #: Version of the alignment method: a change of the method changes the hash.
    method: str = "spectral flux, gaussian ranks, robust z, paired-t ties, half-beat folding v2"

    def __post_init__(self):
        if self.max_lag_frames < 1 or self.offset_tolerance_frames < 0 or self.min_note_frames < 1:
            raise ValueError("max_lag_frames and min_note_frames must be >= 1, offset_tolerance_frames >= 0")
        if not 0.0 <= self.min_coverage <= 1.0:
            raise ValueError(f"min_coverage must be in [0, 1], got {self.min_coverage}")


def audit_flags(alignment, settings: AuditSettings = AuditSettings()) -> tuple[list, list]:
    """The flags of one difficulty's :class:`~mapkit.preprocess.alignment.Alignment`, and their reasons.

    Returns ``(flags, reasons)``: two lists of equal length, flags in the
    order of :data:`FLAGS`, e.g. ``(["offset"], ["offset +37 frames"])``;
    both empty for a clean difficulty.
    """
    flags, reasons = [], []
    n = alignment.n_note_frames
    if n < settings.min_note_frames:
        flags.append("few_notes")
        reasons.append(f"only {n} note frame{'s' if n != 1 else ''}")
    elif alignment.strength < settings.min_strength:
        flags.append("no_peak")
        reasons.append(f"no alignment peak (strength {alignment.strength:.1f})")
    elif abs(alignment.lag_frames) > settings.offset_tolerance_frames:
        flags.append("offset")
        reasons.append(f"offset {alignment.lag_frames:+d} frames")
    if alignment.coverage < settings.min_coverage:
        flags.append("partial")
        reasons.append(f"covers {100 * alignment.coverage:.0f} % of the song")
    return flags, reasons


@dataclass
class DifficultyAudit:
    """The audit of one stored difficulty (one row of the report)."""

    song_id: str
    difficulty: str  # "<Characteristic>/<Difficulty>"
    lag_frames: int
    strength: float
    coverage: float
    n_note_frames: int
    flags: list
    reasons: list
    alias_beats: float = 0.0  # beats (multiple of 1/2) folded out of the peak lag (alignment.fold_lag)

    @property
    def name(self) -> str:
        return f"{self.song_id}/{self.difficulty}"

    def attrs(self, settings: AuditSettings) -> dict:
        """The difficulty-group attributes that store this result (docs/store.md)."""
        return {"align_lag_frames": int(self.lag_frames), "align_strength": float(self.strength),
                "align_coverage": float(self.coverage), "align_n_note_frames": int(self.n_note_frames),
                "align_alias_beats": float(self.alias_beats),
                "audit_flags_json": json.dumps(self.flags), "audit_reasons_json": json.dumps(self.reasons),
                "audit_settings_hash": settings.hash}

    @classmethod
    def from_attrs(cls, song_id: str, difficulty: str, attrs) -> "DifficultyAudit":
        return cls(song_id, difficulty, int(attrs["align_lag_frames"]), float(attrs["align_strength"]),
                   float(attrs["align_coverage"]), int(attrs["align_n_note_frames"]),
                   json.loads(_text(attrs["audit_flags_json"])), json.loads(_text(attrs["audit_reasons_json"])),
                   float(attrs.get("align_alias_beats", 0.0)))


def _nan_to_none(row: dict) -> dict:
    """A difficulty's result for JSON: undefined values (NaN: a level without notes) as null."""
    return {k: None if isinstance(v, float) and v != v else v for k, v in row.items()}


def _text(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


@dataclass(frozen=True)
class AuditTask:
    """One stored level to audit: where its targets and its song's features are."""

    song_id: str
    path: str  # the targets shard (names the item in reports)
    target_group: str
    feature_shard: str | None
    feature_group: str | None
    pad: int
    audited: bool  # already audited with these settings and features: read, do not redo


@dataclass
class LevelAudit:
    """Worker result: the audits of a level's difficulties and, when recomputed, the level to write again."""

    difficulties: list
    item: ShardItem | None = None


def note_frames(notes: np.ndarray) -> np.ndarray:
    """Frames of a stored ``notes`` array, bombs left out (bombs mark where not to cut, not the beat)."""
    from mapkit.preprocess.notes import BOMB

    notes = np.asarray(notes)
    return notes["frame"][notes["color"] != BOMB].astype(np.int64)


def stored_beat_frames(attrs, notes: np.ndarray, fps: int | None = None) -> float | None:
    """Beat period in frames of a stored difficulty at its colour notes (``tempo_map`` attribute), or None.

    :func:`mapkit.preprocess.alignment.beat_period_frames` of the stored
    tempo map; None when the attribute is empty or unreadable.
    """
    from mapkit.preprocess.alignment import beat_period_frames
    from mapkit.preprocess.notes import BOMB
    from mapkit.preprocess.tempo import TempoMap
    from mapkit.preprocess.timebase import FPS

    text = _text(attrs.get("tempo_map", ""))
    if not text:
        return None
    try:
        tempo = TempoMap.from_json(json.loads(text))
    except (ValueError, KeyError, TypeError):  # TempoError is a ValueError
        return None
    notes = np.asarray(notes)
    return beat_period_frames(tempo, notes["beat"][notes["color"] != BOMB], fps or FPS)


def _copy_group(group, prefix: str, datasets: dict, sub_attrs: dict):
    """Every dataset under ``group`` (paths relative to the level) and the attrs of every sub-group."""
    import h5py

    for name, obj in group.items():
        path = f"{prefix}{name}"
        if isinstance(obj, h5py.Dataset):
            datasets[path] = obj[()]
        else:
            sub_attrs[path] = dict(obj.attrs.items())
            _copy_group(obj, path + "/", datasets, sub_attrs)


def audit_level(task: AuditTask, settings: AuditSettings) -> LevelAudit:
    """Worker: audit every stored difficulty of one level (pure but for reading the store).

    Raises :class:`~mapkit.errors.StoreError` when the level's song has no
    features (run ``mapkit extract``) or its difficulty groups are unreadable.
    """
    from mapkit.preprocess.alignment import align_notes, onset_strength

    with open_shard(task.path, features=False) as f:
        level = f[task.target_group]
        names = json.loads(_text(level.attrs.get("difficulties_json", "[]")))
        if task.audited:
            return LevelAudit([DifficultyAudit.from_attrs(task.song_id, n, level[n].attrs) for n in names])
        if task.feature_shard is None:
            raise StoreError(task.path, f"{task.song_id}: no features stored for this song: run mapkit extract")
        with open_shard(task.feature_shard) as ff:
            placement = ff[task.feature_group]["placement"][:, settings.onset_column: settings.onset_column + 1, :]
        onset = onset_strength(placement, pad=task.pad, column=0)
        results = []
        for name in names:
            notes = level[name]["notes"][()]
            a = align_notes(note_frames(notes), onset, settings.max_lag_frames,
                            stored_beat_frames(level[name].attrs, notes))
            flags, reasons = audit_flags(a, settings)
            results.append(DifficultyAudit(task.song_id, name, a.lag_frames, a.strength, a.coverage,
                                           a.n_note_frames, flags, reasons, a.alias_beats))
        datasets, sub_attrs = {}, {}
        _copy_group(level, "", datasets, sub_attrs)
        attrs = dict(level.attrs.items())
    for r in results:
        sub_attrs[r.difficulty] = {**sub_attrs.get(r.difficulty, {}), **r.attrs(settings)}
    attrs["audit_settings_hash"] = settings.hash
    attrs["audit_flagged_json"] = json.dumps([r.difficulty for r in results if r.flags])
    item = ShardItem(group=task.target_group, datasets=datasets, attrs=attrs, subgroup_attrs=sub_attrs)
    return LevelAudit(results, item)


def audit_tasks(targets, features, settings: AuditSettings, force: bool = False) -> list[AuditTask]:
    """One task per stored level (sorted by song id); ``audited`` when its stored audit is current."""
    tasks = []
    for song_id, te in sorted(targets.items()):
        fe = features.get(song_id)
        current = (not force and te.attrs.get("audit_settings_hash") == settings.hash and fe is not None
                   and te.attrs.get("audio_sha256") == fe.attrs.get("audio_sha256"))
        pad = int(np.asarray(fe.attrs["pad_placement"]).ravel()[0]) if fe is not None else 0
        tasks.append(AuditTask(song_id, str(te.shard), te.group, None if fe is None else str(fe.shard),
                               None if fe is None else fe.group, pad, current))
    return tasks


@dataclass
class AuditReport:
    """The outcome of :func:`audit_store`: one :class:`DifficultyAudit` per stored difficulty."""

    run: RunReport
    settings: AuditSettings
    difficulties: list = field(default_factory=list)
    plot_path: Path | None = None

    @property
    def flagged(self) -> list:
        return [d for d in self.difficulties if d.flags]

    @property
    def exit_code(self) -> int:
        """0 every level audited (flagged or not); 2 some could not be audited (no features, unreadable)."""
        return self.run.exit_code

    def flag_counts(self) -> dict:
        return {f: sum(f in d.flags for d in self.difficulties) for f in FLAGS}

    def lag_summary(self) -> dict:
        """Lag distribution of the difficulties with a clear peak (not ``few_notes``/``no_peak``)."""
        lags = np.array([d.lag_frames for d in self.difficulties
                         if not {"few_notes", "no_peak"} & set(d.flags)], dtype=np.int64)
        if lags.size == 0:
            return {"n": 0}
        tol = self.settings.offset_tolerance_frames
        return {"n": int(lags.size), "median": float(np.median(lags)),
                "percentiles_5_25_75_95": [float(x) for x in np.percentile(lags, [5, 25, 75, 95])],
                "within_tolerance": float(np.mean(np.abs(lags) <= tol)),
                "counts": {str(k): int(v) for k, v in zip(*np.unique(lags, return_counts=True))}}

    def to_json(self) -> dict:
        return {"command": COMMAND, "settings": self.settings.to_dict(), "settings_hash": self.settings.hash,
                "report": None if self.run.report_path is None else str(self.run.report_path),
                "plot": None if self.plot_path is None else str(self.plot_path),
                "counts": self.run.counts, "exit_code": self.exit_code,
                "n_difficulties": len(self.difficulties), "n_flagged": len(self.flagged),
                "flags": self.flag_counts(), "lags": self.lag_summary(),
                "problems": [{"path": p, "reason": r} for p, r in self.run.problems],
                "failed": [asdict(r) for r in self.run.items if r.status == "failed"],
                "difficulties": [_nan_to_none(asdict(d)) for d in self.difficulties]}

    def table(self) -> str:
        """The flagged difficulties, one line each with the reasons, and a summary line."""
        rows = sorted(self.flagged, key=lambda d: d.name)
        width = max((len(d.name) for d in rows), default=10)
        lines = [f"{'level':<{width}}  {'lag':>5}  {'strength':>8}  {'cover':>5}  reason"] if rows else []
        for d in rows:
            lines.append(f"{d.name:<{width}}  {d.lag_frames:>+5d}  {d.strength:>8.1f}  {100 * d.coverage:>4.0f}%  "
                         + "; ".join(d.reasons))
        for r in self.run.items:
            if r.status == "failed":
                lines.append(f"{r.song_id}: not audited: {r.reason}")
        lag = self.lag_summary()
        lag_text = (f"; lag median {lag['median']:+.0f} frames, {100 * lag['within_tolerance']:.0f} % within "
                    f"±{self.settings.offset_tolerance_frames}") if lag["n"] else ""
        lines.append(f"audit: {len(self.difficulties)} difficulties, {len(self.flagged)} flagged"
                     + "".join(f", {n} {f}" for f, n in self.flag_counts().items() if n) + lag_text
                     + (f" (see {self.run.report_path})" if self.run.report_path else ""))
        return "\n".join(lines)


def remove_superseded_shards(store: Store, index) -> list[Path]:
    """Delete targets shards none of whose levels is the newest copy (call under the lock)."""
    live = {Path(e.shard) for e in index.values()}
    removed = []
    for path in index.shards:
        if Path(path) not in live:
            Path(path).unlink()
            removed.append(Path(path))
    return removed


def audit_store(store="./mapkit-data", settings: AuditSettings = AuditSettings(), jobs=None, force: bool = False,
                backend: str = "joblib", scheduler=None, progress: bool = True, plot=None,
                shard_levels: int = DEFAULT_SHARD_LEVELS) -> AuditReport:
    """Audit every stored difficulty against its audio; store the results; report and plot them.

    Parameters
    ----------
    store : path or Store
    settings : AuditSettings
        Thresholds (module docstring).
    jobs : int, optional
        Worker processes (default all cores; 1 = in this process).
    force : bool
        Audit again levels already audited with the same settings and features.
    backend : {"joblib", "dask"}
    scheduler : str, optional
        Dask scheduler address.
    progress : bool
        Progress bar on stderr.
    plot : path, optional
        PNG of the lag, strength and coverage distributions; default: next
        to the JSON report (``reports/audit-<time>-<pid>.png``).
    shard_levels : int
        Levels per new targets shard.

    Returns
    -------
    AuditReport
        Per difficulty: lag, strength, coverage, flags and reasons; the run
        report (written to ``STORE/reports/audit-*.json``) and the plot's path.

    Raises
    ------
    StoreError
        No store or no stored levels, or the store is locked by another run.
    """
    store = store if isinstance(store, Store) else Store(store)
    if not store.targets_dir.is_dir():
        raise StoreError(store.root, "no targets in this store: run mapkit build-targets first")
    with store.lock(COMMAND):
        targets, features = store.index("targets"), store.index("features")
        if not targets:
            raise StoreError(store.root, "no stored levels: run mapkit build-targets first")
        tasks = audit_tasks(targets, features, settings, force)
        writers: dict[str, ShardWriter] = {}
        audits: dict[str, list] = {}

        def write(task: AuditTask, value: LevelAudit) -> ItemResult:
            audits[task.song_id] = value.difficulties
            if value.item is not None:
                file_attrs = {k: v for k, v in targets[task.song_id].file_attrs.items() if k != "created"}
                key = json.dumps(file_attrs, sort_keys=True, default=str)
                if key not in writers:
                    writers[key] = ShardWriter(store.targets_dir, file_attrs, max_items=shard_levels)
                writers[key].write(value.item)
            flagged = [f"{d.difficulty}: {'; '.join(d.reasons)}" for d in value.difficulties if d.flags]
            status = "ok" if value.item is not None else "skipped"
            return ItemResult(task.song_id, task.path, status, " | ".join(flagged) or "clean")

        try:
            results = run_items(tasks, functools.partial(audit_level, settings=settings), write, jobs=jobs,
                                backend=backend, scheduler=scheduler, desc=COMMAND, progress=progress,
                                unit="level")
        except RunInterrupted as e:  # every audit written so far is complete and kept (finally)
            write_interrupted_report(store.reports_dir, COMMAND, e, settings,
                                     extra={"store": os.fspath(store.root), "force": force, "backend": backend})
            raise
        finally:
            for w in writers.values():
                w.close()
        index = store.index("targets")
        if not index.problems:
            remove_superseded_shards(store, index)
        difficulties = [d for t in tasks for d in audits.get(t.song_id, [])]
        report = AuditReport(RunReport(COMMAND, results, problems=index.problems), settings, difficulties)
        extra = {"store": os.fspath(store.root), "force": force, "backend": backend}
        write_report(store.reports_dir, report.run, settings, extra=extra)
        report.plot_path = Path(plot) if plot is not None else report.run.report_path.with_suffix(".png")
        plot_lags(report, report.plot_path)
        # the report file also holds every difficulty's result and the plot's path
        write_report_json(report, extra)
    return report


def write_report_json(report: AuditReport, extra: dict) -> Path:
    """Rewrite the run's JSON report with the audit's results added (same path)."""
    from mapkit.datasets.store import write_json_atomic

    path = report.run.report_path
    obj = json.loads(path.read_text(encoding="utf-8"))
    obj.update({**extra, **{k: v for k, v in report.to_json().items() if k not in ("counts", "exit_code")}})
    write_json_atomic(path, obj)
    return path


def plot_lags(report: AuditReport, path) -> Path:
    """PNG: histograms of the best lag (difficulties with a peak), the peak strength and the coverage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = report.settings
    d = report.difficulties
    peaked = [x.lag_frames for x in d if not {"few_notes", "no_peak"} & set(x.flags)]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ax = axes[0]
    ax.hist(peaked, bins=np.arange(-s.max_lag_frames - 0.5, s.max_lag_frames + 1.5, 1.0), color="tab:blue")
    ax.axvspan(-s.offset_tolerance_frames - 0.5, s.offset_tolerance_frames + 0.5, color="tab:green", alpha=0.2,
               label=f"±{s.offset_tolerance_frames} frames: aligned")
    ax.set(title=f"best lag ({len(peaked)} with a peak)", xlabel="lag (frames; + = notes late)", ylabel="difficulties")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.hist([x.strength for x in d if "few_notes" not in x.flags], bins=40, color="tab:orange")
    ax.axvline(s.min_strength, color="k", ls="--", label=f"no peak below {s.min_strength:g}")
    ax.set(title="peak strength (robust z)", xlabel="strength", ylabel="difficulties")
    ax.legend(fontsize=8)
    ax = axes[2]
    ax.hist([x.coverage for x in d], bins=np.linspace(0, 1, 21), color="tab:purple")
    ax.axvline(s.min_coverage, color="k", ls="--", label=f"partial below {s.min_coverage:g}")
    ax.set(title="share of the song the notes span", xlabel="coverage", ylabel="difficulties")
    ax.legend(fontsize=8)
    fig.suptitle(f"mapkit audit: {len(d)} difficulties, {len(report.flagged)} flagged")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
