"""``mapkit stats``: what is in my corpus? One JSON document and one PNG figure sheet.

Everything comes from attributes (and ``vocab.json``, ``reports/``), never
from feature or target arrays, so a store of ten thousand levels is
described in seconds (:func:`corpus_stats`). What it counts:

- levels by info version, difficulty file format version (declared),
  characteristic and difficulty;
- songs by length and sample rate;
- the info BPM of each level and the tempo changes of each difficulty
  (segments of its ``tempo_map`` minus one);
- notes per second per difficulty (``n_notes`` over the song's length),
  notes, bombs, obstacles, arcs and chains per difficulty (as read);
- quarantined difficulties by reason (``quarantined_json`` of stored levels),
  notes dropped by reason (``drops_json``), and the failed items of the
  newest ``extract`` and ``build-targets`` reports by reason;
- ``mapkit audit`` flags (``audit_flags_json``; difficulties never audited
  are counted apart);
- same-song groups (song attr ``group_id``), automapped levels (level attr
  ``automapped``) and duplicate levels (level attr ``level_hash``), when the
  store has them;
- the share of UNK tokens per split (training / validation songs as recorded
  in ``vocab.json``, else the trainer's default split).

Speed: the attributes of each complete shard are read once and kept as a
summary in ``STORE/cache/stats/<kind>-shard-NNNNN.json`` (complete shards
are never rewritten; a summary is used only while its shard has the same
size and modification time, and removed with its shard). HDF5 attribute
reads cost tens of microseconds each, so a first run reads a few hundred
levels per second per process (``jobs``); later runs read the summaries
(thousands of levels per second).

Reasons are grouped after replacing numbers with ``N`` (``"dropped 12 of 300
notes"`` and ``"dropped 7 of 90 notes"`` are one reason) and cutting
``"unreadable: <file>: ..."`` to ``"unreadable"``.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np

from mapkit.datasets.schema import KIND_ROOTS
from mapkit.datasets.store import Store, open_shard
from mapkit.errors import StoreError
from mapkit.preprocess.timebase import FPS

#: Difficulty attributes read per stored difficulty (and nothing else).
DIFFICULTY_ATTRS = ("declared_version", "n_notes", "n_bombs", "counts_json", "drops_json", "n_states", "n_unk",
                    "tempo_map", "audit_flags_json", "align_lag_frames")
#: Level attributes read per stored level.
LEVEL_ATTRS = ("info_version", "info_bpm", "difficulties_json", "quarantined_json", "automapped", "level_hash")
#: Song attributes read per stored song.
SONG_ATTRS = ("duration_s", "n_frames", "sample_rate", "group_id")
#: Canonical difficulty order (for tables and the box plot).
DIFFICULTY_ORDER = ("Easy", "Normal", "Hard", "Expert", "ExpertPlus")
#: Version of the per-shard summaries in ``STORE/cache/stats/``: a new version ignores older files.
CACHE_VERSION = 1


def _text(v):
    return v.decode("utf-8") if isinstance(v, bytes) else v


def _read(attrs, names) -> dict:
    out = {}
    for name in names:
        if name in attrs:
            v = _text(attrs[name])
            out[name] = v.item() if isinstance(v, np.generic) else v
    return out


def read_shard(path, kind: str) -> dict:
    """The attributes stats needs of every item of one complete shard.

    Returns ``{"problem": None or reason, "items": {song_id: record}}``. A
    song record holds the :data:`SONG_ATTRS` it has; a level record the
    :data:`LEVEL_ATTRS` it has and ``difficulties``: ``[{"name":
    "<Characteristic>/<Difficulty>", **the DIFFICULTY_ATTRS it has}]``. A
    shard of another schema version or kind, or unreadable, has a
    ``problem`` and no items (the rule of :meth:`Store.index`).
    """
    import mapkit

    items = {}
    try:
        with open_shard(path, features=(kind == "features")) as f:
            if f.attrs.get("schema_version") != mapkit.SCHEMA_VERSION:
                return {"problem": f"schema version {f.attrs.get('schema_version')!r}, "
                                   f"expected {mapkit.SCHEMA_VERSION}", "items": {}}
            if _text(f.attrs.get("kind")) != kind:
                return {"problem": f"shard kind {_text(f.attrs.get('kind'))!r}, expected {kind!r}", "items": {}}
            root = KIND_ROOTS[kind]
            for song_id, g in (f[root].items() if root in f else ()):
                if kind == "features":
                    items[song_id] = _read(g.attrs, SONG_ATTRS)
                    continue
                level = _read(g.attrs, LEVEL_ATTRS)
                names = json.loads(level.get("difficulties_json", "[]"))
                level["difficulties"] = [{"name": n, **_read(g[n].attrs, DIFFICULTY_ATTRS)} for n in names if n in g]
                items[song_id] = level
    except Exception as e:  # noqa: BLE001 - an unreadable shard is reported, as Store.index does
        return {"problem": f"unreadable shard: {type(e).__name__}: {e}", "items": {}}
    return {"problem": None, "items": items}


def cached_shard(store: Store, path: Path, kind: str) -> dict:
    """:func:`read_shard`, through a summary file in ``STORE/cache/stats/`` (valid while the shard is unchanged).

    Complete shards are never rewritten, so a summary keyed by the shard's
    name, size and modification time stays valid; a run that cannot write
    the cache (read-only store) just reads the shard.
    """
    from mapkit.datasets.store import write_json_atomic

    st = path.stat()
    key = {"version": CACHE_VERSION, "kind": kind, "name": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    cache = store.root / "cache" / "stats" / f"{kind}-{path.name}.json"
    try:
        doc = json.loads(cache.read_text(encoding="utf-8"))
        if doc.get("key") == key:
            return doc["summary"]
    except (OSError, ValueError, KeyError):
        pass
    summary_ = read_shard(path, kind)
    if summary_["problem"] is None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(cache, {"key": key, "summary": summary_})
        except OSError:
            pass
    return summary_


def _remove_stale_cache(store: Store, kind: str, shards) -> None:
    """Delete the summaries of shards that are gone (superseded shards deleted by audit or --rebuild-vocab)."""
    live = {f"{kind}-{p.name}.json" for p in shards}
    folder = store.root / "cache" / "stats"
    if folder.is_dir():
        for p in folder.glob(f"{kind}-shard-*.json"):
            if p.name not in live:
                p.unlink(missing_ok=True)


def newest_items(store: Store, kind: str, jobs: int = 1) -> tuple[dict, list]:
    """``({song_id: record}, problems)`` over the complete shards of ``kind``, the newest shard winning.

    The same rule as :meth:`Store.index` (shards in number order, later ones
    overwrite earlier ones, unreadable ones listed in ``problems``), reading
    only the attributes stats needs, through :func:`cached_shard`.
    """
    shards = store.shards(kind)
    if jobs > 1 and len(shards) > 1:
        from joblib import Parallel, delayed

        parts = Parallel(n_jobs=jobs)(delayed(cached_shard)(store, p, kind) for p in shards)
    else:
        parts = [cached_shard(store, p, kind) for p in shards]
    _remove_stale_cache(store, kind, shards)
    items, problems = {}, []
    for path, part in zip(shards, parts):
        if part["problem"] is not None:
            problems.append({"path": str(path), "reason": part["problem"]})
        items.update(part["items"])
    return items, problems


def reason_kind(reason: str) -> str:
    """A reason with its numbers replaced by ``N`` (and ``unreadable: <file>...`` cut to ``unreadable``)."""
    reason = str(reason)
    if reason.startswith("unreadable"):
        return "unreadable"
    return re.sub(r"[-+]?\d+(?:\.\d+)?", "N", reason)[:100]


def summary(values) -> dict:
    """``n``, ``min``, ``q1``, ``median``, ``q3``, ``max`` and ``mean`` of ``values`` (only ``n`` when empty)."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return {"n": 0}
    q = np.percentile(v, [0, 25, 50, 75, 100])
    return {"n": int(v.size), "min": float(q[0]), "q1": float(q[1]), "median": float(q[2]), "q3": float(q[3]),
            "max": float(q[4]), "mean": float(v.mean())}


def histogram(values, edges) -> dict:
    """``{"edges": [...], "counts": [...]}``; values outside the edges go to the first/last bin."""
    v = np.clip(np.asarray(list(values), dtype=np.float64), edges[0], edges[-1])
    counts, _ = np.histogram(v, bins=edges)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def _counter(values) -> dict:
    return dict(sorted(Counter(values).items(), key=lambda kv: (-kv[1], str(kv[0]))))


def newest_report_failures(reports_dir: Path) -> dict:
    """Failed and quarantined items of the newest ``extract`` and ``build-targets`` reports, by reason kind.

    Failed items (a song or level that could not be read at all) are stored
    nowhere else; quarantined ones are also in the levels' ``quarantined_json``.
    """
    out = {}
    for command in ("extract", "build-targets"):
        reports = sorted(Path(reports_dir).glob(f"{command}-*.json")) if Path(reports_dir).is_dir() else []
        if not reports:
            continue
        try:
            doc = json.loads(reports[-1].read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        items = doc.get("items", [])
        out[command] = {"report": reports[-1].name,
                        "failed": _counter(reason_kind(i.get("reason", "")) for i in items
                                           if i.get("status") == "failed"),
                        "quarantined": _counter(reason_kind(i.get("reason", "")) for i in items
                                                if i.get("status") == "quarantined")}
    return out


def _split(store: Store, song_ids) -> tuple[set, set, str]:
    """Training and validation songs: those recorded in ``vocab.json``, else the trainer's default split."""
    try:
        vocab = store.read_vocab_json(missing_ok=True) or {}
    except StoreError:
        vocab = {}
    if "counted_songs" in vocab and "val_songs" in vocab:
        return set(vocab["counted_songs"]), set(vocab["val_songs"]), "vocab.json"
    from mapkit.datasets.vocab import training_songs

    train, val = training_songs(song_ids)
    return set(train), set(val), "default split (val fraction 0.1, seed 0)"


def corpus_stats(store="./mapkit-data", png=None, jobs: int = 1) -> dict:
    """Describe a store from its attributes: the JSON document of ``mapkit stats`` (module docstring).

    Parameters
    ----------
    store : path or Store
    png : path, optional
        Also draw the figure sheet (:func:`plot_stats`) into this PNG.
    jobs : int
        Processes reading targets shards in parallel (1: in this process).

    Returns
    -------
    dict
        Counts and distributions; ``seconds`` is the time taken and
        ``levels_per_second`` the reading speed.

    Raises
    ------
    StoreError
        When the folder holds no store (no features and no targets).
    """
    t0 = time.perf_counter()
    store = store if isinstance(store, Store) else Store(store)
    if not store.features_dir.is_dir() and not store.targets_dir.is_dir():
        raise StoreError(store.root, "no store here (no features/ or targets/): run mapkit extract first")
    features, feature_problems = newest_items(store, "features", jobs)
    targets, target_problems = newest_items(store, "targets", jobs)
    levels = [{"song_id": sid, **rec} for sid, rec in sorted(targets.items())]
    duration = {sid: float(r.get("duration_s", r.get("n_frames", 0) / FPS)) for sid, r in features.items()}
    diffs = [(lv, d) for lv in levels for d in lv["difficulties"]]
    out = {"store": str(store.root), "n_songs": len(features), "n_levels": len(targets),
           "n_difficulties": len(diffs),
           "songs_without_levels": len(set(features) - set(targets)),
           "levels_without_features": len(set(targets) - set(features)),
           "problems": feature_problems + target_problems}
    out["levels"] = _level_counts(levels, diffs)
    out["songs"] = _song_counts(features, duration)
    out["tempo"] = _tempo_counts(levels, diffs)
    out["density"] = _density(diffs, duration)
    out["quarantine"] = _quarantine(levels, diffs, store)
    out["audit"] = _audit(diffs)
    out["duplicates"] = _duplicates(features, levels)
    out["unk"] = _unk(store, levels, set(features) & set(targets))
    out["seconds"] = round(time.perf_counter() - t0, 3)
    out["levels_per_second"] = round(len(levels) / max(out["seconds"], 1e-9), 1)
    if png is not None:
        out["png"] = str(plot_stats(out, png))
    return out


def _level_counts(levels, diffs) -> dict:
    return {"by_info_version": _counter(str(lv.get("info_version", "?")) for lv in levels),
            "by_format_version": _counter(str(d.get("declared_version") or "none declared") for _, d in diffs),
            "by_characteristic": _counter(d["name"].split("/")[0] for _, d in diffs),
            "by_difficulty": {k: v for k, v in sorted(Counter(d["name"].split("/")[-1] for _, d in diffs).items(),
                                                      key=lambda kv: _difficulty_rank(kv[0]))}}


def _difficulty_rank(name: str) -> tuple:
    return (DIFFICULTY_ORDER.index(name) if name in DIFFICULTY_ORDER else len(DIFFICULTY_ORDER), name)


def _song_counts(features, duration) -> dict:
    minutes = [s / 60.0 for s in duration.values()]
    return {"duration_s": summary(duration.values()),
            "duration_min_histogram": histogram(minutes, np.arange(0, 10.5, 0.5)),
            "by_sample_rate": _counter(int(r.get("sample_rate", 0)) for r in features.values())}


def _tempo_changes(d) -> int | None:
    try:
        return max(len(json.loads(d["tempo_map"]).get("segments", [])) - 1, 0)
    except (KeyError, ValueError, AttributeError):
        return None


def _tempo_counts(levels, diffs) -> dict:
    bpms = [float(lv["info_bpm"]) for lv in levels if np.isfinite(lv.get("info_bpm", np.nan))]
    changes = [c for _, d in diffs if (c := _tempo_changes(d)) is not None]
    return {"info_bpm": summary(bpms), "info_bpm_histogram": histogram(bpms, np.arange(0, 410, 10)),
            "tempo_changes_per_difficulty": _counter(changes),
            "difficulties_with_tempo_changes": int(sum(c > 0 for c in changes))}


def _density(diffs, duration) -> dict:
    per_difficulty: dict[str, list] = {}
    for lv, d in diffs:
        seconds = duration.get(lv["song_id"]) or d.get("n_frames", 0) / FPS
        if seconds > 0 and "n_notes" in d:
            per_difficulty.setdefault(d["name"].split("/")[-1], []).append(d["n_notes"] / seconds)
    objects = {}
    for key in ("notes", "bombs", "obstacles", "arcs", "chains"):
        values = []
        for _, d in diffs:
            try:
                values.append(json.loads(d["counts_json"])[key])
            except (KeyError, ValueError):
                pass
        objects[key] = summary(values)
    return {"notes_per_second": {k: summary(v) for k, v in sorted(per_difficulty.items(),
                                                                   key=lambda kv: _difficulty_rank(kv[0]))},
            "per_difficulty_as_read": objects,
            "notes_kept": summary(d.get("n_notes", 0) for _, d in diffs),
            "bombs_kept": summary(d.get("n_bombs", 0) for _, d in diffs)}


def _quarantine(levels, diffs, store: Store) -> dict:
    quarantined = [reason for lv in levels for _item, reason in json.loads(lv.get("quarantined_json", "[]"))]
    drops = Counter()
    for _, d in diffs:
        try:
            drops.update(json.loads(d.get("drops_json", "{}")))
        except ValueError:
            pass
    return {"quarantined_difficulties": len(quarantined),
            "quarantine_reasons": _counter(reason_kind(r) for r in quarantined),
            "dropped_notes_by_reason": dict(drops.most_common()),
            "newest_reports": newest_report_failures(store.reports_dir)}


def _audit(diffs) -> dict:
    flags, lags, audited = Counter(), [], 0
    for _, d in diffs:
        if "audit_flags_json" not in d:
            continue
        audited += 1
        found = json.loads(d["audit_flags_json"])
        flags.update(found if found else ["clean"])
        if "align_lag_frames" in d and not {"few_notes", "no_peak"} & set(found):
            lags.append(int(d["align_lag_frames"]))
    return {"audited": audited, "not_audited": len(diffs) - audited, "flags": dict(flags.most_common()),
            "lag_frames": summary(lags)}


def _truthy(value) -> bool:
    """An attribute read defensively as a flag: numbers and booleans as such, text "1"/"true"/"yes"."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def _duplicates(features, levels) -> dict:
    groups = Counter(str(r["group_id"]) for r in features.values() if "group_id" in r)
    hashes = Counter(str(lv["level_hash"]) for lv in levels if "level_hash" in lv)
    automapped = [_truthy(lv["automapped"]) for lv in levels if "automapped" in lv]
    return {"songs_with_group_id": int(sum(groups.values())), "song_groups": len(groups),
            "groups_with_several_songs": int(sum(n > 1 for n in groups.values())),
            "songs_in_shared_groups": int(sum(n for n in groups.values() if n > 1)),
            "levels_with_level_hash": int(sum(hashes.values())),
            "duplicate_level_copies": int(sum(n - 1 for n in hashes.values() if n > 1)),
            "levels_with_automapped_flag": len(automapped), "automapped": int(sum(automapped))}


def _unk(store: Store, levels, split_ids) -> dict:
    train, val, source = _split(store, sorted(split_ids))
    out = {"split_from": source}
    totals = {name: {"songs": set(), "states": 0, "unk": 0} for name in ("train", "validation", "other")}
    for lv in levels:
        sid = lv["song_id"]
        t = totals["train" if sid in train else "validation" if sid in val else "other"]
        t["songs"].add(sid)
        t["states"] += sum(int(d.get("n_states", 0)) for d in lv["difficulties"])
        t["unk"] += sum(int(d.get("n_unk", 0)) for d in lv["difficulties"])
    for name, t in totals.items():
        out[name] = {"songs": len(t["songs"]), "states": t["states"], "unk": t["unk"],
                     "unk_share": (t["unk"] / t["states"]) if t["states"] else None}
    return out


def plot_stats(stats: dict, path) -> Path:
    """The figure sheet of :func:`corpus_stats`: twelve panels in one PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 4, figsize=(18, 12))
    fig.subplots_adjust(left=0.04, right=0.99, top=0.93, bottom=0.08, hspace=0.45, wspace=0.45)
    ax = iter(axes.ravel())
    _bar(next(ax), stats["levels"]["by_format_version"], "difficulties by format version")
    _bar(next(ax), stats["levels"]["by_characteristic"], "difficulties by characteristic")
    _bar(next(ax), stats["levels"]["by_difficulty"], "difficulties by difficulty", sort=False)
    _hist(next(ax), stats["songs"]["duration_min_histogram"], "songs by length", "minutes")
    _bar(next(ax), {f"{k / 1000:g} kHz": v for k, v in stats["songs"]["by_sample_rate"].items()},
         "songs by sample rate")
    _hist(next(ax), stats["tempo"]["info_bpm_histogram"], "levels by info BPM", "BPM")
    _bar(next(ax), {str(k): v for k, v in sorted(stats["tempo"]["tempo_changes_per_difficulty"].items(),
                                                 key=lambda kv: int(kv[0]))},
         "tempo changes per difficulty", sort=False)
    _box(next(ax), stats["density"]["notes_per_second"], "notes per second")
    _bar(next(ax), {k: v.get("mean", 0.0) for k, v in stats["density"]["per_difficulty_as_read"].items()},
         "mean objects per difficulty (as read)", sort=False)
    reasons = Counter(stats["quarantine"]["quarantine_reasons"])
    for name, command in stats["quarantine"]["newest_reports"].items():
        reasons.update({f"{name} failed: {k}": v for k, v in command["failed"].items()})
    reasons.update({f"drop: {k}": v for k, v in stats["quarantine"]["dropped_notes_by_reason"].items()})
    _barh(next(ax), dict(reasons.most_common(10)), "quarantine, failure and drop reasons")
    audit = dict(stats["audit"]["flags"])
    if stats["audit"]["not_audited"]:
        audit["not audited"] = stats["audit"]["not_audited"]
    _bar(next(ax), audit, "audit flags (difficulties)")
    _text_panel(next(ax), stats)
    fig.suptitle(f"mapkit stats: {stats['n_songs']} songs, {stats['n_levels']} levels, "
                 f"{stats['n_difficulties']} difficulties ({stats['store']})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _bar(ax, counts: dict, title: str, sort: bool = True):
    items = list(counts.items())
    if sort:
        items = sorted(items, key=lambda kv: -kv[1])[:12]
    ax.bar([str(k) for k, _ in items], [v for _, v in items], color="tab:blue")
    ax.set_title(title)
    ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    if not items:
        ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)


def _barh(ax, counts: dict, title: str):
    items = list(counts.items())[::-1]
    ax.barh(range(len(items)), [v for _, v in items], color="tab:red", alpha=0.35)
    for i, (k, v) in enumerate(items):  # labels inside the panel: long reasons would overlap the next one
        ax.text(0, i, f" {_short(k, 48)} ({v})", va="center", ha="left", fontsize=7)
    ax.set_yticks([])
    ax.set_title(title)
    if not items:
        ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)


def _short(label, width: int = 32) -> str:
    label = str(label)
    return label if len(label) <= width else label[: width - 1] + "…"


def _hist(ax, hist: dict, title: str, xlabel: str):
    edges = np.asarray(hist["edges"])
    ax.bar(edges[:-1], hist["counts"], width=np.diff(edges), align="edge", color="tab:green")
    ax.set(title=title, xlabel=xlabel)


def _box(ax, per_difficulty: dict, title: str):
    names = [k for k, v in per_difficulty.items() if v.get("n")]
    stats = [{"label": k, "whislo": v["min"], "q1": v["q1"], "med": v["median"], "q3": v["q3"], "whishi": v["max"],
              "fliers": []} for k, v in per_difficulty.items() if v.get("n")]
    if stats:
        ax.bxp(stats, showfliers=False)
    ax.set(title=title, ylabel="notes / s (min, quartiles, max)")
    ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    if not names:
        ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)


def _percent(share) -> str:
    return "n/a" if share is None else f"{100 * share:.2f} %"


def _text_panel(ax, stats: dict):
    dup, unk = stats["duplicates"], stats["unk"]

    lines = [f"same-song groups: {dup['song_groups']} ({dup['groups_with_several_songs']} with several songs)"
             if dup["songs_with_group_id"] else "same-song groups: not computed",
             f"duplicate level copies: {dup['duplicate_level_copies']}"
             if dup["levels_with_level_hash"] else "level hashes: not stored",
             f"automapped levels: {dup['automapped']} of {dup['levels_with_automapped_flag']}"
             if dup["levels_with_automapped_flag"] else "automap flags: not stored",
             "",
             f"UNK share ({unk['split_from']}):",
             f"  train {_percent(unk['train']['unk_share'])} of {unk['train']['states']} states",
             f"  validation {_percent(unk['validation']['unk_share'])} of {unk['validation']['states']} states",
             "",
             f"songs without levels: {stats['songs_without_levels']}",
             f"read in {stats['seconds']:.2f} s"]
    ax.axis("off")
    ax.set_title("groups, duplicates, UNK")
    ax.text(0.0, 1.0, "\n".join(lines), va="top", family="monospace", fontsize=9, transform=ax.transAxes)


def stats_text(stats: dict) -> str:
    """A short human summary of :func:`corpus_stats` (what ``mapkit stats`` prints)."""

    def top(counts: dict, n: int = 6) -> str:
        return ", ".join(f"{k} {v}" for k, v in list(counts.items())[:n]) or "none"

    dur, bpm = stats["songs"]["duration_s"], stats["tempo"]["info_bpm"]
    lines = [f"store {stats['store']}: {stats['n_songs']} songs, {stats['n_levels']} levels, "
             f"{stats['n_difficulties']} difficulties",
             f"difficulties by format version: {top(stats['levels']['by_format_version'])}",
             f"by characteristic: {top(stats['levels']['by_characteristic'])}",
             f"by difficulty: {top(stats['levels']['by_difficulty'])}",
             f"songs: {top({f'{k / 1000:g} kHz': v for k, v in stats['songs']['by_sample_rate'].items()})}"
             + (f"; length median {dur['median'] / 60:.1f} min ({dur['min']:.0f}-{dur['max']:.0f} s)"
                if dur["n"] else ""),
             (f"info BPM median {bpm['median']:g} ({bpm['min']:g}-{bpm['max']:g}); " if bpm["n"] else "")
             + f"{stats['tempo']['difficulties_with_tempo_changes']} difficulties with tempo changes"]
    nps = stats["density"]["notes_per_second"]
    if nps:
        lines.append("notes/s median: " + ", ".join(f"{k} {v['median']:.2f}" for k, v in nps.items()))
    q = stats["quarantine"]
    lines.append(f"quarantined difficulties: {q['quarantined_difficulties']} ({top(q['quarantine_reasons'], 4)})")
    if q["dropped_notes_by_reason"]:
        lines.append(f"dropped notes: {top(q['dropped_notes_by_reason'], 4)}")
    for command, r in q["newest_reports"].items():
        if r["failed"]:
            lines.append(f"{command} failed ({r['report']}): {top(r['failed'], 4)}")
    a = stats["audit"]
    lag = a["lag_frames"]
    lines.append(f"audit: {a['audited']} audited ({top(a['flags'])}), {a['not_audited']} not audited"
                 + (f"; lag median {lag['median']:+.0f} frames ({lag['min']:+.0f} .. {lag['max']:+.0f})"
                    if lag["n"] else ""))
    dup = stats["duplicates"]
    lines.append(f"same-song groups: {dup['song_groups']} ({dup['groups_with_several_songs']} with several songs); "
                 f"duplicate level copies: {dup['duplicate_level_copies']}; automapped: {dup['automapped']}"
                 if dup["songs_with_group_id"] or dup["levels_with_level_hash"] or dup["levels_with_automapped_flag"]
                 else "same-song groups, level hashes, automap flags: not stored")
    unk = stats["unk"]
    lines.append(f"UNK share ({unk['split_from']}): "
                 + ", ".join(f"{k} {_percent(unk[k]['unk_share'])}" for k in ("train", "validation")))
    lines.append(f"read {stats['n_levels']} levels in {stats['seconds']:.2f} s ({stats['levels_per_second']:g} levels/s)")
    return "\n".join(lines)
