"""``mapkit evaluate``: objective quality of levels, placed among human levels of the same difficulty.

The metrics are pure functions (:mod:`mapkit.preprocess.quality`,
:mod:`mapkit.preprocess.parity`, the audio alignment of
:mod:`mapkit.preprocess.alignment`); this module reads levels (folders,
``.zip`` files, or a store's targets), runs the metrics, places them in a
human baseline (:mod:`mapkit.preprocess.baseline`) and renders the results:
a table per difficulty, JSON, and plots. Definitions: docs/evaluate.md.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mapkit.errors import MapkitError, UsageError
from mapkit.preprocess.alignment import beat_period_frames
from mapkit.preprocess.baseline import BAND, Baseline, outside_band
from mapkit.preprocess.difficulties import DIFFICULTIES, canonical_difficulty
from mapkit.preprocess.notes import BOMB
from mapkit.preprocess.objects import ATTR_READ
from mapkit.preprocess.quality import METRICS, EvaluateSettings, LevelMetrics, level_metrics
from mapkit.preprocess.timebase import frame_of


@dataclass
class EvaluatedDifficulty:
    """The metrics of one difficulty of one level, and where they stand among human levels.

    ``duration_source`` says where the song length came from: ``"audio"``
    (decoded features), ``"audio header"``, ``"store"`` (the stored
    ``n_frames``) or ``"notes"`` (no audio: the last note's time).
    ``percentiles`` maps metric -> human percentile (with a baseline);
    ``flagged`` lists the metrics outside the human 5-95 % band.
    ``onset`` is the audio's onset strength per frame when it was computed (for plots).
    """

    song_id: str
    path: str
    characteristic: str
    difficulty: str
    notes: np.ndarray
    metrics: LevelMetrics
    duration_source: str
    percentiles: dict = field(default_factory=dict)
    flagged: list = field(default_factory=list)
    onset: np.ndarray | None = None
    warnings: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.song_id}/{self.characteristic}/{self.difficulty}"

    def to_json(self) -> dict:
        return {"song_id": self.song_id, "path": self.path, "characteristic": self.characteristic,
                "difficulty": self.difficulty, "duration_source": self.duration_source,
                "values": {k: _json_number(v) for k, v in self.metrics.values.items()},
                "percentiles": {k: _json_number(v) for k, v in self.percentiles.items()},
                "flagged": list(self.flagged), "details": self.metrics.details, "warnings": list(self.warnings)}


@dataclass
class EvaluateReport:
    """What one run evaluated (``items``) and what it could not (``failures``: (path, reason))."""

    items: list = field(default_factory=list)
    failures: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    baseline: str | None = None
    settings: EvaluateSettings = field(default_factory=EvaluateSettings)

    @property
    def exit_code(self) -> int:
        """0 all evaluated, 2 some level or difficulty failed or was skipped, 1 nothing evaluated."""
        if not self.items:
            return 1
        return 2 if self.failures else 0

    def to_json(self) -> dict:
        return {"settings": json.loads(self.settings.to_json()), "settings_hash": self.settings.hash,
                "baseline": self.baseline, "levels": [i.to_json() for i in self.items],
                "failures": [{"path": p, "reason": r} for p, r in self.failures], "warnings": list(self.warnings)}


def _json_number(v):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


# --------------------------------------------------------------------------- inputs


def load_baseline(path) -> Baseline:
    """Read a baseline JSON file; :class:`MapkitError` naming the file and the reason when it is not one."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        return Baseline.from_json(doc)
    except OSError as e:
        raise MapkitError(path, f"cannot read baseline: {e.strerror or e}") from None
    except (ValueError, AttributeError, TypeError) as e:
        raise MapkitError(path, f"not a valid baseline: {e}") from None


def audio_features(path):
    """Stage-1 features of a level's song, computed exactly as ``mapkit extract`` does (one decode)."""
    from mapkit.preprocess.features import song_features
    from mapkit.preprocess.sources import discover

    sources = discover(Path(path), kinds=("level",))
    if len(sources) != 1:
        raise MapkitError(path, "not one level")
    return song_features(sources[0])


def header_duration(path) -> float | None:
    """The song's length from its audio file's header (no decode), or None when there is no readable audio."""
    import soundfile as sf

    from mapkit.preprocess.container import LevelContainer

    try:
        with LevelContainer(path) as c:
            with c.open(c.audio_name()) as f:
                info = sf.info(f)
        return float(info.frames) / info.samplerate if info.samplerate > 0 and info.frames > 0 else None
    except Exception:  # noqa: BLE001 - any unreadable audio just means "unknown length"
        return None


def _alignment_values(notes: np.ndarray, onset: np.ndarray, fps: int, beat_frames: float | None = None) -> dict:
    """The audit's alignment of the colour notes against the onset strength, as metric values.

    ``beat_frames`` (the level's beat period) lets the lag be read modulo half
    a beat, as the audit does. All four are NaN when no colour note lies inside the song.
    """
    from mapkit.preprocess.alignment import align_notes

    colour = notes[notes["color"] != BOMB]
    a = align_notes(frame_of(colour["time_s"], fps), onset, beat_frames=beat_frames)
    if a.n_note_frames == 0:
        return dict.fromkeys(("align_lag_ms", "align_strength", "align_coverage", "align_correlation"), math.nan)
    return {"align_lag_ms": 1000.0 * a.lag_frames / fps, "align_strength": float(a.strength),
            "align_coverage": float(a.coverage), "align_correlation": a.peak_correlation}


def _wanted(difficulty: str, difficulties) -> bool:
    return not difficulties or difficulty in difficulties


def _level_paths(paths, failures: list) -> list:
    """Each path, or the levels in it when it is a folder of levels (as ``inspect``); missing ones -> failures."""
    from mapkit.runs.inspect import expand_level_paths

    out = []
    for p in paths:
        try:
            out.extend(expand_level_paths(p))
        except MapkitError as e:
            failures.append((e.path, e.reason))
    return out


# --------------------------------------------------------------------------- running


def evaluate_levels(paths, reference=None, baseline: Baseline | None = None, difficulties=None,
                    characteristic: str = "Standard", audio: bool = True,
                    settings: EvaluateSettings = EvaluateSettings(), progress: bool = False) -> EvaluateReport:
    """Evaluate every difficulty of each level (folder or ``.zip``).

    Parameters
    ----------
    paths : iterable of path
        Levels, or folders of levels.
    reference : path, optional
        A level whose difficulties are the onset reference (same characteristic and difficulty).
    baseline : Baseline, optional
        Human percentiles: adds ``percentiles`` and ``flagged`` to each result.
    difficulties : iterable of str, optional
        Only these difficulties (any alias); default all.
    characteristic : str
    audio : bool
        Decode each level's song for the alignment metrics and its exact length
        (about 1 s per song); without, the length comes from the audio file's header.
    settings : EvaluateSettings
    progress : bool

    Returns
    -------
    EvaluateReport
        An unreadable level or reference, or an unusable difficulty, is listed in
        ``failures`` with its reason and the run goes on.
    """
    from tqdm import tqdm

    from mapkit.preprocess.difficulty_targets import check_against_audio
    from mapkit.preprocess.levels import read_level
    from mapkit.settings import TargetSettings

    wanted = {canonical_difficulty(d) for d in difficulties or ()}
    report = EvaluateReport(settings=settings)
    ref_level = None
    if reference is not None:
        try:
            ref_level = read_level(reference, characteristic=characteristic)
        except MapkitError as e:
            report.failures.append((e.path, f"reference unreadable: {e.reason}"))
    level_paths = _level_paths(paths, report.failures)
    for path in tqdm(level_paths, desc="evaluate", unit="level", disable=not progress):
        try:
            level = read_level(path, characteristic=characteristic)
        except MapkitError as e:
            report.failures.append((e.path, e.reason))
            continue
        chosen = [d for d in level.difficulties if _wanted(d.difficulty, wanted)]
        if not chosen:
            continue
        duration, source, onset, warnings = _song_length(path, audio, settings)
        # the audio checks of build-targets: a level measures the same from its folder and from the store
        check_against_audio(level, path, TargetSettings(fps=settings.fps),
                            round(duration * settings.fps) if source == "audio" else None)
        for d in chosen:
            if d.quarantine:
                report.failures.append((f"{path}: {d.characteristic}/{d.difficulty}", f"not evaluated: {d.quarantine}"))
                continue
            item_warnings = list(warnings)
            length, length_source = duration, source
            if length is None:
                length = float(d.notes["time_s"].max()) if len(d.notes) else 0.0
                length_source = "notes"
            ref_notes = None
            if ref_level is not None:
                ref = ref_level.get(d.characteristic, d.difficulty)
                if ref is None or ref.quarantine:
                    item_warnings.append(f"reference has no usable {d.characteristic}/{d.difficulty}: no onset metrics")
                else:
                    ref_notes = ref.notes
            m = level_metrics(d.notes, d.difficulty, length, _with_lights(d.counts, d.objects_read), ref_notes,
                              settings)
            if onset is not None:
                beat = beat_period_frames(d.tempo, d.notes["beat"][d.notes["color"] != BOMB], settings.fps)
                m.values.update(_alignment_values(d.notes, onset, settings.fps, beat))
            item = EvaluatedDifficulty(level.song_id, str(path), d.characteristic, d.difficulty, d.notes, m,
                                       length_source, onset=onset, warnings=item_warnings)
            report.items.append(_place(item, baseline))
    return report


def _with_lights(counts: dict | None, objects_read: dict | None) -> dict | None:
    """``counts`` plus ``light_events`` as read (from ``objects_read``, the store's ``objects_read_json``; left
    out when not known)."""
    if counts is None or not objects_read or "light_events" not in objects_read:
        return counts
    return {**counts, "light_events": int(objects_read["light_events"])}


def _song_length(path, audio: bool, settings: EvaluateSettings):
    """(length in s or None, its source, onset strength or None, warnings) of a level's song."""
    if audio:
        try:
            from mapkit.preprocess.alignment import onset_strength

            feats = audio_features(path)
            return feats.n_frames / settings.fps, "audio", onset_strength(feats.placement), []
        except MapkitError as e:
            warning = f"audio not used ({e}); no alignment metrics"
            length = header_duration(path)
            return length, ("audio header" if length is not None else None), None, [warning]
    length = header_duration(path)
    return length, ("audio header" if length is not None else None), None, []


def _place(item: EvaluatedDifficulty, baseline: Baseline | None) -> EvaluatedDifficulty:
    if baseline is not None:
        item.percentiles = baseline.ranks(item.difficulty, item.metrics.values)
        item.flagged = [k for k, r in item.percentiles.items() if outside_band(r)]
        if item.difficulty not in baseline.tables:
            item.warnings.append(f"the baseline has no {item.difficulty} levels")
        short = baseline.short_level_warning(item.difficulty, item.percentiles)
        if short:
            item.warnings.append(short)
    return item


def evaluate_store(store, difficulties=None, characteristic: str = "Standard",
                   settings: EvaluateSettings = EvaluateSettings(), progress: bool = False,
                   audio: bool = True) -> EvaluateReport:
    """Evaluate the stored targets of a store (its human levels) from their ``notes`` datasets.

    The song length is the stored ``n_frames / fps``; walls, arcs and chains
    per minute come from ``counts_json``. With ``audio``, the alignment
    metrics use the onset strength of the song's stored stage-1 features
    (no decode). A shard or level that cannot be read is listed in ``failures``.
    """
    from tqdm import tqdm

    from mapkit.datasets.store import Store, open_shard

    wanted = {canonical_difficulty(d) for d in difficulties or ()}
    st = Store(store)
    if not st.targets_dir.is_dir():
        raise MapkitError(store, "no targets/ in the store (run mapkit build-targets first)")
    index = st.index("targets")
    report = EvaluateReport(settings=settings)
    report.failures.extend(index.problems)
    features = st.index("features") if audio else {}
    by_shard: dict = {}
    for entry in index.values():
        by_shard.setdefault(entry.shard, []).append(entry)
    bar = tqdm(total=len(index), desc="evaluate", unit="level", disable=not progress)
    for shard, entries in sorted(by_shard.items()):
        try:
            f = open_shard(shard, features=False)
        except OSError as e:
            report.failures.append((str(shard), f"unreadable shard: {e}"))
            bar.update(len(entries))
            continue
        with f:
            for entry in entries:
                try:
                    onset = _stored_onset(features.get(entry.song_id)) if audio else None
                    report.items.extend(_stored_level(f[entry.group], entry, wanted, characteristic, settings, onset))
                except (KeyError, OSError, ValueError) as e:
                    report.failures.append((f"{shard}:{entry.group}", f"unreadable level: {e}"))
                bar.update(1)
    bar.close()
    return report


def _stored_onset(feature_entry):
    """Onset strength of a song from its stored placement features, or None when the store has none."""
    from mapkit.datasets.store import open_shard
    from mapkit.preprocess.alignment import onset_strength

    if feature_entry is None:
        return None
    with open_shard(feature_entry.shard) as f:
        g = f[feature_entry.group]
        return onset_strength(g["placement"][:], pad=int(np.asarray(g.attrs["pad_placement"])[0]))


def _stored_level(group, entry, wanted, characteristic: str, settings: EvaluateSettings, onset=None) -> list:
    out = []
    for char_name, char_group in group.items():
        if characteristic.lower() != "all" and char_name.lower() != characteristic.lower():
            continue
        for diff_name, g in char_group.items():
            if not _wanted(diff_name, wanted) or "notes" not in g:
                continue
            notes = g["notes"][:]
            n_frames = int(g.attrs.get("n_frames", entry.attrs.get("n_frames", 0)))
            counts = json.loads(g.attrs.get("counts_json", "null") or "null")
            counts = _with_lights(counts, json.loads(g.attrs.get(ATTR_READ, "null") or "null"))
            m = level_metrics(notes, diff_name, n_frames / settings.fps, counts, None, settings)
            if onset is not None:
                from mapkit.runs.audit import stored_beat_frames

                beat = stored_beat_frames(g.attrs, notes, settings.fps)
                m.values.update(_alignment_values(notes, onset, settings.fps, beat))
            out.append(EvaluatedDifficulty(entry.song_id, f"{entry.shard}:{g.name}", char_name, diff_name, notes, m,
                                           "store", onset=onset))
    return out


def save_baseline(report: EvaluateReport, out, source: str = "") -> Baseline:
    """Percentiles of every metric per difficulty over the report's levels, written to ``out`` (JSON)."""
    from mapkit.datasets.store import write_json_atomic

    baseline = Baseline.from_values(((i.difficulty, i.metrics.values) for i in report.items),
                                    report.settings.hash, source)
    write_json_atomic(out, baseline.to_json())
    return baseline


# --------------------------------------------------------------------------- output


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if float(v).is_integer() and abs(v) < 1e9:
        return str(int(v))
    return f"{v:.3g}" if abs(v) >= 100 else f"{v:.3f}"


def format_table(report: EvaluateReport, column_width: int = 22) -> str:
    """One table per difficulty: a row per metric, a column per evaluated level.

    With a baseline each value is followed by its human percentile, and ``!``
    when it lies outside the human 5-95 % band.
    """
    blocks = []
    order = {d: i for i, d in enumerate(DIFFICULTIES)}
    diffs = sorted({i.difficulty for i in report.items}, key=lambda d: (order.get(d, 99), d))
    for difficulty in diffs:
        items = [i for i in report.items if i.difficulty == difficulty]
        names = [i.song_id if len({j.characteristic for j in items}) == 1 else f"{i.song_id} {i.characteristic}"
                 for i in items]
        label_w = max(len(m.label) for m in METRICS) + 4
        lines = [f"== {difficulty} ({len(items)} level{'s' if len(items) != 1 else ''}) ==",
                 " " * label_w + "".join(n[:column_width - 2].ljust(column_width) for n in names)]
        group = None
        for m in METRICS:
            if not any(m.name in i.metrics.values for i in items):
                continue
            if m.group != group:
                group = m.group
                lines.append(f"[{group}]")
            cells = []
            for i in items:
                cell = _fmt(i.metrics.values.get(m.name))
                rank = i.percentiles.get(m.name)
                if rank is not None and math.isfinite(rank):
                    cell += f" ({rank:.0f}%{'!' if m.name in i.flagged else ''})"
                cells.append(cell.ljust(column_width))
            lines.append(f"  {m.label}".ljust(label_w) + "".join(cells))
        for i in items:
            lines.extend(f"  warning ({i.song_id}): {w}" for w in i.warnings)
        blocks.append("\n".join(lines))
    if report.baseline:
        blocks.append(f"(n%) human percentile from {report.baseline}; ! outside the human "
                      f"{BAND[0]:g}-{BAND[1]:g} % band")
    return "\n\n".join(blocks)


def _plot_density(ax, item: EvaluatedDifficulty, length: float, settings: EvaluateSettings):
    """Colour notes per second in a sliding window, and the audio's smoothed onset strength when known."""
    notes = item.notes
    t = notes["time_s"][notes["color"] != BOMB]
    w = settings.density_window_s
    grid = np.arange(0.0, length, 0.25)
    density = (np.searchsorted(t, grid + w / 2) - np.searchsorted(t, grid - w / 2)) / w
    ax.plot(grid, density, color="tab:blue", label=f"notes per second ({w:g} s window)")
    ax.set_ylabel("notes / s")
    ax.set_xlim(0, length)
    if item.onset is not None and len(item.onset):
        ax2 = ax.twinx()
        k = max(1, int(settings.fps * w))
        smooth = np.convolve(item.onset, np.ones(k) / k, mode="same")
        ax2.plot(np.arange(len(smooth)) / settings.fps, smooth, color="tab:orange", alpha=0.7,
                 label="audio onset strength")
        ax2.set_ylabel("onset strength")
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left")
    ax.set_title(f"{item.name}: density")


def _plot_swings(ax, item: EvaluatedDifficulty, length: float):
    """Each hand's swings on a timeline (dark forehand, light backhand), parity errors, bomb resets, vision blocks."""
    st = item.metrics.states
    for h, y in ((0, 1), (1, 0)):
        mine = st.swings[st.swings["hand"] == h]
        ax.scatter(mine["start_s"], np.full(len(mine), y), s=40, c=np.where(mine["parity"] > 0, "0.3", "0.7"),
                   marker="|")
        err = mine[mine["error"]]
        ax.scatter(err["start_s"], np.full(len(err), y), s=60, c="red", marker="x",
                   label="parity error" if h == 0 else None)
        br = mine[mine["bomb_reset"]]
        ax.scatter(br["start_s"], np.full(len(br), y), s=40, edgecolors="black", marker="o", facecolors="none",
                   label="bomb reset" if h == 0 else None)
    vb = item.metrics.vision_blocked
    if vb is not None and len(vb):
        ax.scatter(item.notes["time_s"][vb], np.full(len(vb), 0.5), s=20, c="purple", marker="v",
                   label="vision block")
    ax.set_yticks([0, 0.5, 1], ["right", "", "left"])
    ax.set_ylim(-0.5, 1.5)
    ax.set_xlim(0, length)
    ax.set_xlabel("time (s)")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("swings (dark: forehand, light: backhand)")


def _plot_percentiles(ax, item: EvaluatedDifficulty):
    """The human percentile of each metric as a bar (red outside the band), or a note without a baseline."""
    ranks = [(m.label, item.percentiles[m.name]) for m in METRICS
             if m.name in item.percentiles and math.isfinite(item.percentiles[m.name])]
    if not ranks:
        ax.text(0.5, 0.5, "no baseline (--baseline FILE) for percentiles", ha="center", va="center")
        ax.set_axis_off()
        return
    labels, r = zip(*ranks)
    colours = ["tab:red" if outside_band(x) else "tab:green" for x in r]
    ax.barh(range(len(r)), r, color=colours)
    ax.scatter(r, range(len(r)), c=colours, s=12, zorder=3)  # a value at the 0th percentile has no bar
    ax.set_yticks(range(len(r)), labels, fontsize=6)
    for edge in BAND:
        ax.axvline(edge, color="0.5", ls="--")
    ax.set_xlim(0, 100)
    ax.invert_yaxis()
    ax.set_xlabel("human percentile (same difficulty)")


def plot_item(item: EvaluatedDifficulty, out_dir, settings: EvaluateSettings = EvaluateSettings()) -> Path:
    """One PNG ``<song>-<Characteristic>-<Difficulty>.png`` in ``out_dir``: note density over time (against
    the audio's onset strength when known), the swings with parity errors, bomb resets and vision blocks
    on a timeline, and the metric percentiles as a bar chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    notes = item.notes
    length = max(item.metrics.values.get("duration_s", 0.0), float(notes["time_s"].max()) if len(notes) else 0.0, 1.0)
    fig, axes = plt.subplots(3, 1, figsize=(12, 9), gridspec_kw={"height_ratios": [2, 1, 2]})
    _plot_density(axes[0], item, length, settings)
    _plot_swings(axes[1], item, length)
    _plot_percentiles(axes[2], item)
    fig.tight_layout()
    name = f"{item.song_id}-{item.characteristic}-{item.difficulty}"
    path = out_dir / ("".join(c if c.isalnum() or c in "-_." else "_" for c in name) + ".png")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def evaluate(levels=(), store=None, reference=None, baseline=None, save_baseline_to=None, difficulties=None,
             characteristic: str = "Standard", audio: bool = True, plot_dir=None,
             settings: EvaluateSettings = EvaluateSettings(), progress: bool = False) -> EvaluateReport:
    """The whole of ``mapkit evaluate``: levels (or a store's targets) -> metrics, percentiles, baseline, plots.

    Parameters
    ----------
    levels : iterable of path
        Level folders, ``.zip`` files or folders of levels (not with ``store``).
    store : path, optional
        Evaluate the store's stored targets (human levels) instead.
    reference : path, optional
        Onset reference level (see :func:`evaluate_levels`).
    baseline : path, optional
        A baseline JSON file (``--save-baseline``): adds human percentiles and flags.
    save_baseline_to : path, optional
        Write the percentiles of the evaluated levels to this JSON file.
    difficulties, characteristic, audio, settings, progress
        See :func:`evaluate_levels`.
    plot_dir : path, optional
        One PNG per evaluated difficulty (:func:`plot_item`).

    Raises
    ------
    MapkitError
        An unreadable baseline, a store without targets; :class:`~mapkit.errors.UsageError` for bad usage
        (levels and a store, neither, an unknown difficulty).
    """
    levels = list(levels)
    if store is not None and levels:
        raise UsageError(store, "give LEVEL... or --store, not both")
    if store is None and not levels:
        raise UsageError(".", "nothing to evaluate: give LEVEL... or --store")
    try:
        wanted = [canonical_difficulty(d) for d in difficulties or ()]
    except ValueError as e:
        raise UsageError("--difficulty", str(e)) from None
    base = load_baseline(baseline) if baseline is not None else None
    if store is not None:
        report = evaluate_store(store, wanted, characteristic, settings, progress, audio)
        for item in report.items:
            _place(item, base)
    else:
        report = evaluate_levels(levels, reference, base, wanted, characteristic, audio, settings, progress)
    if base is not None:
        report.baseline = str(baseline)
        if base.settings_hash != settings.hash:
            report.warnings.append(f"the baseline {baseline} was made with other metric settings "
                                   f"({base.settings_hash}, now {settings.hash}): percentiles may not compare")
    if save_baseline_to is not None:
        if not report.items:
            raise MapkitError(save_baseline_to, "no levels evaluated: baseline not written")
        save_baseline(report, save_baseline_to, source=str(store if store is not None else ", ".join(map(str, levels))))
    if plot_dir is not None:
        for item in report.items:
            plot_item(item, plot_dir, settings)
    return report


def evaluate_generated(level, baseline: Baseline | None = None, baseline_path=None,
                       settings: EvaluateSettings = EvaluateSettings()) -> EvaluateReport:
    """The metrics of a level ``mapkit generate`` wrote (a :class:`~mapkit.runs.generate.GeneratedLevel`).

    The written level folder is read back with the level reader and its
    song decoded, so what is measured is exactly what a player gets.
    """
    report = evaluate_levels([level.folder], baseline=baseline, difficulties=list(level.difficulties), audio=True,
                             settings=settings)
    report.baseline = str(baseline_path) if baseline is not None else None
    return report
