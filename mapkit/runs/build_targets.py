"""``mapkit build-targets``: levels -> per-frame classes and token sequences in the store's HDF5 shards.

One run (:func:`build_targets`):

1. find the levels of the input folder (level folders and ``.zip`` files;
   :func:`mapkit.preprocess.sources.discover`);
2. take the store's lock; read the feature index (every level needs its song's
   features: their ``n_frames`` is T) and the targets index;
3. refuse to mix: stored targets made with other settings or another
   characteristic selection, or encoded with another vocabulary than
   ``vocab.json`` (:class:`~mapkit.errors.StoreError`);
4. **workers** read each level (:func:`mapkit.preprocess.levels.read_level`)
   and compute everything but tokens (:func:`difficulty_targets`): notes on
   frames, notes beyond the audio dropped, quarantine, the 12-cell state of
   every note-bearing frame;
5. **the parent** takes the vocabulary from ``vocab.json``, or, when there is
   none (or ``rebuild_vocab``), counts the states of the levels of the
   *training* songs (this run's and the stored ones it does not rewrite;
   :func:`training_songs`: the trainer's split, so that states seen only in
   validation songs get no token), keeps the top ``settings.vocab_size`` and
   writes ``vocab.json`` with the split it was counted over; then it encodes every
   level and writes it into new targets shards (:func:`level_item`). With a
   known vocabulary, levels are written as they arrive; otherwise the worker
   results wait in an unnamed temporary file in the store (bounded memory);
6. write the run's report: one item per level/characteristic/difficulty.

Layout (docs/design.md §4, docs/store.md), per level group
``/levels/<song_id>`` and per difficulty group ``<Characteristic>/<Difficulty>``:

=================  =============  ===================================================
``frame_class``    [T] uint8      0 empty, 1 red, 2 blue, 3 red+blue, 4 bombs only
``notes``          [N] records    ``STORED_NOTE_DTYPE``: time_s, beat, frame, column,
                                  row, color (0 red, 1 blue, 3 bomb), direction
``states``         [n, 12] uint8  the grid state of each note-bearing frame
``tokens``         [n+2] int32    BOS, one token per state (UNK when unseen), EOS
``token_frames``   [n+2] int32    -1 (BOS), the state frames, T (EOS)
``gap_prev_s`` ... [n+2] float32  gap_prev_s, gap_next_s, gap_prev_beats, gap_next_beats
=================  =============  ===================================================

A state's time and beat (for its gaps) are those of the earliest note on its
frame. A note at ``t`` s sits on frame ``frame_of(t)`` = round(t * 100);
notes whose frame is outside [0, T) are dropped and counted (reason
``beyond_audio``); a difficulty losing more than ``settings.max_drop_fraction``
of its notes that way is quarantined ("notes beyond audio: wrong audio or
offset?"). Quarantined difficulties are not written; they are listed in the
level's ``quarantined_json`` attr and reported. A level is written even when
none of its difficulties is usable (a level group without difficulty groups),
so that a newer reading always replaces an older one.

Resume: a level is skipped when the targets index holds it with the same
characteristic selection, settings hash, level files hash
(:func:`level_files_sha256`), features audio SHA-256 and features settings
hash, and with the current vocabulary; ``force`` redoes it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pickle
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from mapkit.datasets.level_attrs import (holds_difficulties, listed_difficulties, listed_quarantine, same_selection,
                                         stored_difficulties)
from mapkit.datasets.names import name_problem, plural, safe_attrs, song_id_problem
from mapkit.datasets.schema import KIND_ROOTS, LEVEL_DATASETS, UNK
from mapkit.datasets.split import grouping_record, song_groups
from mapkit.datasets.store import ShardItem, ShardWriter, Store, os_error_reason, shard_file_attrs
from mapkit.datasets.vocab import (check_vocab, count_state_array, empty_vocabulary_reason, load_vocab,
                                   stored_state_counts, training_songs, unk_summary, vocab_bound, vocab_document)
from mapkit.errors import MapkitError, StoreError
from mapkit.preprocess.difficulty_targets import DifficultyTargets, difficulty_targets, no_notes_reason
from mapkit.preprocess.frame_events import FRAME_EVENTS, frame_events
from mapkit.preprocess.objects import OBJECT_DATASETS
from mapkit.preprocess.targets import Vocabulary, frame_class, token_sequence
from mapkit.preprocess.timebase import FPS
from mapkit.runs.runner import (DEFAULT_ITEM_TIMEOUT_S, ItemResult, RunInterrupted, RunReport, SourceItem,
                                check_scheduler, run_items, signals_stop_the_run, write_interrupted_report,
                                write_report)
from mapkit.settings import FeatureSettings, TargetSettings

COMMAND = "build-targets"

#: Levels per targets shard: a kill loses at most this many levels' work.
DEFAULT_SHARD_LEVELS = 256
#: Bytes of target data per shard (whichever limit comes first).
DEFAULT_SHARD_BYTES = 1 << 30


NO_FEATURES = "no features (run mapkit extract first)"


# --- pure functions: one difficulty ---------------------------------------------------------------


# --- one level: worker side -----------------------------------------------------------------------

def level_files_sha256(path, characteristic: str | None = "Standard") -> str:
    """SHA-256 identifying a level's content for resuming: the files reading it reads.

    Those of :func:`~mapkit.preprocess.levels.level_file_names`: the info
    file, the difficulty files of ``characteristic`` and a v4 audio data file,
    in sorted name order; each contributes its name, its length and its
    bytes, or (a file that cannot be read: not a regular file, too large, a
    bad zip member) its name and the reason, so that only the difficulty that
    needs it fails. Files no info file names are never opened; the audio and
    images are not included (the audio is identified by the features'
    ``audio_sha256``).
    """
    from mapkit.errors import LevelError
    from mapkit.preprocess.container import opened
    from mapkit.preprocess.levels import level_file_names

    h = hashlib.sha256()
    with opened(path) as c:
        for name in level_file_names(c, characteristic):
            tag = name.encode("utf-8", "surrogateescape") + b"\0"
            try:
                data = c.read_bytes(name)
            except LevelError as e:
                h.update(tag + b"unreadable\0" + e.reason.encode("utf-8", "backslashreplace") + b"\0")
                continue
            h.update(tag + str(len(data)).encode() + b"\0")
            h.update(data)
    return h.hexdigest()


@dataclass(frozen=True)
class TargetTask(SourceItem):
    """One level to process, with the facts of its song's features.

    ``known_level_sha256`` is the stored level's files hash when everything
    else about the stored copy matches (the worker skips the level when its
    files hash equal), else None.
    """

    source: object  # mapkit.preprocess.sources.Source
    n_frames: int
    audio_sha256: str
    features_settings_hash: str
    known_level_sha256: str | None = None


@dataclass(frozen=True)
class AlreadyPresent:
    """Worker result: the stored level has the same files hash; nothing computed."""

    level_sha256: str


@dataclass
class LevelTargets:
    """Worker result: one level's targets (without tokens) and its facts."""

    song_id: str
    source: str
    level_sha256: str
    info_version: str
    info_bpm: float
    song_time_offset: float
    n_frames: int
    audio_sha256: str
    features_settings_hash: str
    difficulties: list
    #: ``[(item name, reason)]`` of what is quarantined: difficulties, or the level itself
    quarantined: list
    warnings: list
    #: the community level hash (:mod:`mapkit.preprocess.levelhash`), the join key of ``--metadata``
    level_hash: str = ""
    #: why the info file looks automapped (:mod:`mapkit.preprocess.automap`); empty when it does not
    automap_evidence: list = field(default_factory=list)


def targets_one(task: TargetTask, settings: TargetSettings, characteristic) -> AlreadyPresent | LevelTargets:
    """Worker: :class:`AlreadyPresent` when the level files are the stored ones, else the level's targets."""
    from mapkit.preprocess.container import LevelContainer

    # one container for the resume hash, the reading and the community hash: each file is read once
    with LevelContainer(task.path, memo=True) as container:
        level_sha = level_files_sha256(container, characteristic)
        if task.known_level_sha256 is not None and level_sha == task.known_level_sha256:
            return AlreadyPresent(level_sha)
        return _level_targets(task, container, level_sha, settings, characteristic)


def _level_targets(task: TargetTask, container, level_sha: str, settings: TargetSettings,
                   characteristic) -> LevelTargets:
    """The targets of a level whose files changed (or were never stored), read from its open ``container``."""
    from mapkit.preprocess.automap import automap_evidence
    from mapkit.preprocess.levelhash import level_hash_and_info
    from mapkit.preprocess.levels import read_level

    level = read_level(container, settings=settings, characteristic=characteristic)
    community_hash, info, hash_problem = level_hash_and_info(container)
    if hash_problem is not None:
        level.warnings.append(f"no level hash: {hash_problem.path}: {hash_problem.reason}")
    diffs, quarantined = [], []
    names = report_names(task.song_id, level.difficulties)
    for d, item_name in zip(level.difficulties, names):
        dt = difficulty_targets(d, task.n_frames, level.bpm, settings)
        if dt.quarantine is None:
            dt.quarantine = no_notes_reason(d)
        if dt.quarantine is None:
            problem = next((f"{what} name {n!r} {p}" for what, n in (("characteristic", dt.characteristic),
                                                                     ("difficulty", dt.difficulty))
                            if (p := name_problem(n))), None)
            if problem:
                dt.quarantine = f"cannot be stored as an HDF5 group: {problem}"
        if dt.quarantine is not None:
            quarantined.append((item_name, dt.quarantine))
            dt = dataclasses.replace(dt, notes=dt.notes[:0], state_frames=dt.state_frames[:0],
                                     states=dt.states[:0], state_times_s=dt.state_times_s[:0],
                                     state_beats=dt.state_beats[:0], objects={})
        diffs.append(dt)
    if not level.difficulties:
        want = "any" if _is_all(characteristic) else characteristic
        quarantined.append((task.song_id, f"no {want} difficulties (level has: "
                                          f"{', '.join(level.characteristics) or 'none'})"))
    return LevelTargets(
        song_id=task.song_id, source=task.path, level_sha256=level_sha, info_version=level.info_version,
        info_bpm=float(level.bpm), song_time_offset=float(level.song_time_offset), n_frames=task.n_frames,
        audio_sha256=task.audio_sha256, features_settings_hash=task.features_settings_hash,
        difficulties=diffs, quarantined=quarantined, warnings=list(level.warnings), level_hash=community_hash,
        automap_evidence=automap_evidence(info))


def _is_all(characteristic) -> bool:
    return characteristic is None or str(characteristic).lower() == "all"


def unreadable_level_reason(path) -> str | None:
    """Why the level at ``path`` cannot be read at all (no or broken info file), or None.

    A level without features is usually one that ``extract`` could not read
    either: its own problem is the reason to report, not the missing features.
    """
    from mapkit.preprocess.container import LevelContainer

    try:
        with LevelContainer(path) as c:
            c.read_info_json()
    except MapkitError as e:
        return e.reason
    return None


def characteristic_selection(characteristic) -> str:
    """The selection as stored: ``"all"``, or the characteristic name as given."""
    return "all" if _is_all(characteristic) else str(characteristic)


# --- one level: parent side -----------------------------------------------------------------------

def count_states(level: LevelTargets, counts: Counter) -> int:
    """Add the states of the usable difficulties of ``level`` to ``counts`` (keyed by the state's 12 bytes).

    Returns the number of difficulties that had states.
    """
    n = 0
    for d in level.difficulties:
        if d.quarantine is None and len(d.states):
            count_state_array(d.states, counts)
            n += 1
    return n


def difficulty_datasets(d: DifficultyTargets, n_frames: int, vocab: Vocabulary, fps: int = FPS) -> dict:
    """The datasets of one usable difficulty, encoded with ``vocab`` (see the module docstring)."""
    tokens = vocab.encode(d.states)
    seq = token_sequence(d.state_frames, tokens, d.state_times_s, d.state_beats, n_frames, d.end_beat, fps)
    return {
        "frame_class": frame_class(d.notes["frame"], d.notes["color"], n_frames),
        "notes": d.notes,
        "states": np.ascontiguousarray(d.states, dtype=np.uint8),
        "tokens": seq.tokens,
        "token_frames": seq.token_frames,
        "gap_prev_s": seq.gap_prev_s,
        "gap_next_s": seq.gap_next_s,
        "gap_prev_beats": seq.gap_prev_beats,
        "gap_next_beats": seq.gap_next_beats,
        **{name: d.objects[name] for name in OBJECT_DATASETS},
        FRAME_EVENTS: frame_events(d.notes, d.objects, n_frames),
    }


def level_item(level: LevelTargets, vocab: Vocabulary, selection: str, fps: int = FPS, metadata=None) -> ShardItem:
    """The shard item of one level: its usable difficulties encoded with ``vocab``, and all its attrs.

    ``metadata`` (:class:`mapkit.preprocess.metadata.Metadata`, optional) adds
    the BeatSaver attrs of the level's hash when it holds them.
    """
    datasets, sub_attrs, written, n_states = {}, {}, [], 0
    for d in level.difficulties:
        if d.quarantine is not None:
            continue
        arrays = difficulty_datasets(d, level.n_frames, vocab, fps)
        for name in LEVEL_DATASETS:
            datasets[f"{d.name}/{name}"] = arrays[name]
        sub_attrs[d.name] = {**safe_attrs(d.attrs), "vocab_hash": vocab.hash,
                             "n_unk": int((arrays["tokens"] == UNK).sum()),
                             "features_settings_hash": level.features_settings_hash,
                             "audio_sha256": level.audio_sha256}
        written.append(d.name)
        n_states += len(d.states)
    attrs = {
        "song_id": level.song_id,
        "source": level.source,
        "info_version": level.info_version,
        "info_bpm": float(level.info_bpm),
        "song_time_offset": float(level.song_time_offset),
        "level_sha256": level.level_sha256,
        "characteristic": selection,
        "n_frames": int(level.n_frames),
        "audio_sha256": level.audio_sha256,
        "features_settings_hash": level.features_settings_hash,
        "vocab_hash": vocab.hash,
        "n_states": int(n_states),
        "difficulties_json": json.dumps(written),
        "quarantined_json": json.dumps([list(q) for q in level.quarantined]),
        "warnings_json": json.dumps(level.warnings),
        "level_hash": level.level_hash,
    }
    attrs.update(level_flags(level, metadata))
    return ShardItem(group=f"{KIND_ROOTS['targets']}/{level.song_id}", datasets=datasets, attrs=safe_attrs(attrs),
                     subgroup_attrs=sub_attrs)


def level_flags(level: LevelTargets, metadata=None) -> dict:
    """``automapped`` (bool), ``automap_evidence_json`` and, when ``metadata`` knows the level's hash, its
    BeatSaver attrs (:func:`mapkit.preprocess.metadata.metadata_attrs`). BeatSaver's flag counts as evidence."""
    evidence = list(level.automap_evidence)
    joined = metadata.get(level.level_hash) if metadata is not None else None
    out = dict(joined or {})
    if joined and joined["bs_automapper"]:
        evidence.append(f"BeatSaver map {joined['bs_id']}: automapper (declaredAi {joined['bs_declared_ai']})")
    out.update(automapped=bool(evidence), automap_evidence_json=json.dumps(evidence))
    return out


def report_names(song_id: str, difficulties) -> list[str]:
    """The report item name of each difficulty: ``song_id/Characteristic/Difficulty``, unique.

    A difficulty listed again by the info file is named
    ``song_id/Characteristic/Difficulty (listed again, #k)`` for its k-th
    listing, so that each entry is reported on its own.

    >>> from types import SimpleNamespace as D
    >>> report_names("s", [D(characteristic="Standard", difficulty="Expert")] * 3)
    ['s/Standard/Expert', 's/Standard/Expert (listed again, #2)', 's/Standard/Expert (listed again, #3)']
    """
    seen: Counter = Counter()
    out = []
    for d in difficulties:
        name = f"{song_id}/{d.characteristic}/{d.difficulty}"
        seen[name] += 1
        out.append(name if seen[name] == 1 else f"{name} (listed again, #{seen[name]})")
    return out
def item_unk_counts(item: ShardItem) -> tuple[int, int]:
    """``(UNK state tokens, state tokens)`` of a level's shard item (the ``n_unk``/``n_states`` attrs)."""
    n_unk = sum(int(a.get("n_unk", 0)) for a in item.subgroup_attrs.values())
    n_states = sum(int(a.get("n_states", 0)) for a in item.subgroup_attrs.values())
    return n_unk, n_states


def level_results(level: LevelTargets) -> list[ItemResult]:
    """One report item per difficulty (:func:`report_names`), and one per level-wide problem."""
    out = []
    quarantined = dict(level.quarantined)
    for d, name in zip(level.difficulties, report_names(level.song_id, level.difficulties)):
        if name in quarantined:
            out.append(ItemResult(name, level.source, "quarantined", quarantined.pop(name)))
        else:
            kept, read = d.attrs["n_kept"], d.attrs["n_read"]
            out.append(ItemResult(name, level.source, "ok", f"{kept} of {read} notes kept, {d.attrs['n_states']} "
                                                            f"states, {d.attrs['collisions']} collisions"))
    out.extend(ItemResult(name, level.source, "quarantined", reason) for name, reason in quarantined.items())
    return out


def intact_levels(entries) -> set:
    """Song ids of the stored levels (targets :class:`Entry` objects) that hold what they list.

    A level is intact when its ``difficulties_json`` reads and every
    difficulty group it lists is there with every dataset. Only intact levels
    may be skipped as "already present": a level whose group was deleted, or
    whose list is garbage, is built again (what validate would call missing is
    restored). Each shard is opened once.
    """
    import h5py

    from mapkit.datasets.store import open_shard

    by_shard: dict = {}
    for e in entries:
        by_shard.setdefault(e.shard, []).append(e)
    intact = set()
    for shard, shard_entries in by_shard.items():
        try:
            f = open_shard(shard, features=False)
        except OSError:
            continue
        with f:
            for e in shard_entries:
                names = listed_difficulties(e.attrs.get("difficulties_json", ""))
                if names is None or listed_quarantine(e.attrs.get("quarantined_json", "")) is None:
                    continue
                g = f[e.group]
                if all(isinstance(g.get(name), h5py.Group) and all(k in g[name] for k in LEVEL_DATASETS)
                       for name in names):
                    intact.add(e.song_id)
    return intact


def stored_level_results(entry, source: str) -> list[ItemResult]:
    """Report items of a level skipped because it is stored: its difficulties, and what was quarantined."""
    out = [ItemResult(f"{entry.song_id}/{name}", source, "skipped", "already present (same level, audio and settings)")
           for name in stored_difficulties(entry)]
    out += [ItemResult(name, source, "quarantined", reason)
            for name, reason in listed_quarantine(entry.attrs.get("quarantined_json", "[]")) or []]
    if not out:
        out.append(ItemResult(entry.song_id, source, "skipped", "already present (same level, audio and settings)"))
    return out


def reencode_stored(entry, vocab: Vocabulary) -> ShardItem:
    """A stored level re-encoded with ``vocab`` from its stored ``states`` (everything else copied)."""
    from mapkit.datasets.store import open_shard

    datasets, sub_attrs = {}, {}
    with open_shard(entry.shard, features=False) as f:
        g = f[entry.group]
        attrs = {k: v for k, v in g.attrs.items()}
        for name in stored_difficulties(entry):
            dg = g[name]
            arrays = {k: dg[k][()] for k in LEVEL_DATASETS}
            tokens = arrays["tokens"].copy()
            tokens[1:-1] = vocab.encode(arrays["states"])
            arrays["tokens"] = tokens
            for k in LEVEL_DATASETS:
                datasets[f"{name}/{k}"] = arrays[k]
            sub_attrs[name] = {**{k: v for k, v in dg.attrs.items()}, "vocab_hash": vocab.hash,
                               "n_unk": int((tokens == UNK).sum())}
    attrs["vocab_hash"] = vocab.hash
    return ShardItem(group=entry.group, datasets=datasets, attrs=attrs, subgroup_attrs=sub_attrs)


# --- store checks -----------------------------------------------------------------------------------

def check_settings(index, settings: TargetSettings, store_root) -> None:
    """Refuse stored targets made with other settings (``vocab_size`` aside: see :func:`check_vocab`)."""
    same_but_vocab = dataclasses.replace(settings, vocab_size=0)
    for h in sorted(index.settings_hashes):
        if h == settings.hash:
            continue
        entry = next(e for e in index.values() if e.settings_hash == h)
        try:
            stored = TargetSettings.from_json(str(entry.file_attrs.get("settings_json", "")))
        except (ValueError, TypeError):
            stored = None
        if stored is not None and dataclasses.replace(stored, vocab_size=0) == same_but_vocab:
            continue
        raise StoreError(store_root, f"store holds targets made with other settings (hash {h}; this run: "
                                     f"{settings.hash}); use another --store or delete "
                                     f"{os.path.join(str(store_root), 'targets')} and vocab.json to rebuild")


def check_selection(index, selection: str, store_root) -> None:
    """Refuse stored targets built with another characteristic selection.

    A level is stored as one group holding the difficulties of one selection;
    a run with another selection would replace them (newest wins), so a store
    keeps one selection. Use ``all`` to have every characteristic. Level
    groups without difficulty groups hold nothing of their selection and do
    not count: a run that found nothing cannot pin the store to its selection.
    """
    others = sorted({str(e.attrs.get("characteristic", "")) for e in index.values()
                     if holds_difficulties(e) and not same_selection(e, selection)})
    if others:
        raise StoreError(store_root, f"store holds targets built with --characteristic {', '.join(others)}, this run "
                                     f"asks for {selection}; use the same one, another --store, or delete "
                                     f"{os.path.join(str(store_root), 'targets')} and vocab.json to rebuild")


def check_characteristic_present(sources, characteristic, input_dir) -> None:
    """Refuse a characteristic that no level of the run has (a typo would otherwise quarantine every level).

    Reads only info files, stopping at the first level that lists
    ``characteristic``; ``"all"`` always passes, and so does a run where no
    info file is readable (each level is then reported on its own).

    Raises
    ------
    MapkitError
        Naming ``input_dir`` and the characteristics the levels do have.
    """
    from mapkit.preprocess.levels import info_characteristics

    if _is_all(characteristic):
        return
    want = str(characteristic).lower()
    found, n_read = [], 0
    for s in sources:
        try:
            names = info_characteristics(s.path)
        except MapkitError:
            continue
        n_read += 1
        if any(c.lower() == want for c in names):
            return
        found.extend(c for c in names if c not in found)
    if n_read:
        raise MapkitError(input_dir, f"no level has {characteristic} difficulties (the levels have: "
                                     f"{', '.join(found) or 'none'}); nothing written. Use --characteristic "
                                     f"with one of those, or all")


def _features_fps(entry, cache: dict) -> int | None:
    s = str(entry.file_attrs.get("settings_json", ""))
    if s not in cache:
        try:
            cache[s] = FeatureSettings.from_json(s).fps
        except (ValueError, TypeError):
            cache[s] = None
    return cache[s]


# --- the run ----------------------------------------------------------------------------------------

def _plan_tasks(sources, features, targets, settings: TargetSettings, selection: str, vocab, intact: set,
                force: bool):
    """What each source needs before any work: ``(early, tasks, task_pos)``.

    ``early`` maps a source's index to its results when it fails before any
    work (a bad song id, no features, features at another frame rate);
    ``tasks`` are the :class:`TargetTask` of the others, ``task_pos`` their
    source indices. A task knows its stored level's files hash when
    everything else about the stored copy matches (the worker then skips it).
    """
    early: dict[int, list[ItemResult]] = {}  # source index -> results decided before any work
    tasks, task_pos, fps_cache = [], [], {}
    for i, s in enumerate(sources):
        problem = song_id_problem(s.song_id)
        if problem is not None:  # "." (from "..zip"), control characters, undecodable bytes
            early[i] = [ItemResult(s.song_id, str(s.path), "failed", problem)]
            continue
        f = features.get(s.song_id)
        if f is None or "n_frames" not in f.attrs:
            reason = unreadable_level_reason(s.path) or NO_FEATURES
            early[i] = [ItemResult(s.song_id, str(s.path), "failed", reason)]
            continue
        ffps = _features_fps(f, fps_cache)
        if ffps != settings.fps:
            early[i] = [ItemResult(s.song_id, str(s.path), "failed",
                                   f"features made at {ffps} frames per second, targets at {settings.fps}")]
            continue
        audio_sha, fhash = str(f.attrs.get("audio_sha256", "")), f.settings_hash
        known = None
        t = targets.get(s.song_id)
        if (not force and vocab is not None and t is not None and t.song_id in intact
                and t.settings_hash == settings.hash
                and same_selection(t, selection)
                and t.attrs.get("audio_sha256") == audio_sha and t.attrs.get("features_settings_hash") == fhash
                and (t.file_attrs.get("vocab_hash") == vocab.hash or not vocab_bound(t))):
            known = str(t.attrs.get("level_sha256"))
        tasks.append(TargetTask(s, int(f.attrs["n_frames"]), audio_sha, fhash, known))
        task_pos.append(i)
    return early, tasks, task_pos


def _ordered_items(n_sources: int, early: dict, task_pos: list, per_task: dict, ran: list) -> list[ItemResult]:
    """The report's items in the order of the sources: early results, else a task's results (or its summary)."""
    items: list[ItemResult] = []
    pos_of_task = {i: k for k, i in enumerate(task_pos)}
    for i in range(n_sources):
        if i in early:
            items.extend(early[i])
        else:
            k = pos_of_task[i]
            items.extend(per_task.get(k) or [ran[k]])
    return items


def _count_training_states(spool, spooled: list, tasks: list, kept_stored: list, train: set):
    """Count the states of the training songs' levels: those spooled by this run and the stored ones it keeps.

    Returns ``(counts, levels counted, difficulties counted)``.
    """
    n_counted = 0
    counts = Counter()
    n_difficulties = 0
    for _k, offset in spooled:
        if tasks[_k].song_id in train:
            spool.seek(offset)
            n = count_states(pickle.load(spool), counts)
            n_counted += n > 0
            n_difficulties += n
    for e in kept_stored:
        if e.song_id in train:
            n = stored_state_counts(e, counts)
            n_counted += n > 0
            n_difficulties += n
    return counts, n_counted, n_difficulties


@dataclass
class _TargetsRun:
    """One run's state under the store lock: its tasks, the indexes read at the start, what each task
    gave (``per_task``), which levels it writes and the UNK totals of what it wrote.

    :meth:`write_as_computed` writes levels as they arrive (a known vocabulary);
    :meth:`spool_count_write` computes every level first, then counts the
    vocabulary over the training songs and writes them.
    """

    store: Store
    tasks: list
    features: object  # the features index
    targets: object  # the targets index, as it was before this run
    settings: TargetSettings
    selection: str
    meta: object
    ignored: list
    input_dir: object
    shard_levels: int
    shard_bytes: int
    rebuild_vocab: bool
    split: tuple  # (val_fraction, seed, val_songs): the trainer's split the vocabulary is counted over
    unk_skip: set  # validation songs: their levels hold unseen states by design
    progress: bool = True
    per_task: dict = field(default_factory=dict)  # task position -> its ItemResults
    written_ids: set = field(default_factory=set)
    unk: list = field(default_factory=lambda: [0, 0])  # UNK state tokens, state tokens written

    def __post_init__(self):
        self.task_of = {t.song_id: k for k, t in enumerate(self.tasks)}
        self.file_attrs = shard_file_attrs("targets", self.settings)

    def new_writer(self, vocab: Vocabulary) -> ShardWriter:
        return ShardWriter(self.store.targets_dir, {**self.file_attrs, "vocab_hash": vocab.hash},
                           max_items=self.shard_levels, max_bytes=self.shard_bytes)

    def record(self, task, value) -> ItemResult:
        """Keep a task's per-difficulty results; its one-line summary for the runner."""
        if isinstance(value, AlreadyPresent):
            results = stored_level_results(self.targets[task.song_id], task.path)
        else:
            results = level_results(value)
        self.per_task[self.task_of[task.song_id]] = results
        bad = [r for r in results if r.status in ("failed", "quarantined")]
        status = bad[0].status if bad else results[0].status
        return ItemResult(task.song_id, task.path, status, bad[0].reason if bad else "")

    def write_item(self, writer: ShardWriter, item: ShardItem) -> None:
        writer.write(item)
        if item.attrs["song_id"] not in self.unk_skip:
            n_unk, n_states = item_unk_counts(item)
            self.unk[0] += n_unk
            self.unk[1] += n_states

    def encoded(self, level: LevelTargets, vocab: Vocabulary) -> ShardItem:
        return level_item(level, vocab, self.selection, self.settings.fps, self.meta)

    def write_as_computed(self, run_all, vocab: Vocabulary) -> list[ItemResult]:
        """Run every task, encoding and writing each level as it arrives; the runner's results."""
        writer = self.new_writer(vocab)

        def write(task, value) -> ItemResult:
            summary = self.record(task, value)
            if isinstance(value, LevelTargets):
                self.write_item(writer, self.encoded(value, vocab))
                self.written_ids.add(task.song_id)
            return summary

        with writer:
            try:
                return run_all(write=write)
            except RunInterrupted as e:
                writer.close()  # every level written so far is complete: keep them
                write_interrupted_report(self.store.reports_dir, COMMAND, e, self.settings, self.ignored,
                                         self.where())
                raise

    def spool_count_write(self, run_all) -> tuple[list[ItemResult], Vocabulary]:
        """Run every task, spooling the levels to an unnamed temporary file in the store (bounded memory);
        then count the vocabulary and write them. The runner's results and the vocabulary."""
        with tempfile.TemporaryFile(dir=self.store.root, prefix=".build-targets-spool-") as spool:
            spooled: list[tuple[int, int]] = []  # (task position, file offset)
            n_states = [0]  # states of the levels to write: an empty vocabulary would make them UNK

            def collect(task, value) -> ItemResult:
                summary = self.record(task, value)
                if isinstance(value, LevelTargets):
                    n_states[0] += sum(len(d.states) for d in value.difficulties if d.quarantine is None)
                    spooled.append((self.task_of[task.song_id], spool.tell()))
                    try:
                        pickle.dump(value, spool, protocol=pickle.HIGHEST_PROTOCOL)
                    except OSError as e:  # e.g. a full disk: the run stops, nothing was written yet
                        raise StoreError(self.store.root, f"cannot spool levels: {os_error_reason(e)}") from None
                    self.written_ids.add(task.song_id)
                return summary

            try:
                ran = run_all(write=collect)
            except RunInterrupted as e:
                self.report_unwritten(e, spooled, counting=False)
                raise
            # run_items handles signals only while it runs: from here on a signal stops the run at once
            # (a partial shard is abandoned), for library callers as for the CLI
            with signals_stop_the_run():
                try:
                    return ran, self.count_and_write(spool, spooled, n_states[0])
                except RunInterrupted as e:  # counting or writing: committed shards stay, the partial one goes
                    self.report_unwritten(e, spooled, counting=True)
                    raise

    def count_and_write(self, spool, spooled: list, n_states: int) -> Vocabulary:
        """Count the vocabulary over the training songs (writing ``vocab.json``), then write the spooled
        levels (and, rebuilding, re-encode the stored ones); the vocabulary."""
        # stored levels this run does not rewrite count too, and (rebuild) are re-encoded
        kept_stored = [e for sid, e in sorted(self.targets.items()) if sid not in self.written_ids]
        vocab, document = self.counted_vocabulary(spool, spooled, kept_stored, n_states)
        if document is not None and not self.rebuild_vocab:
            self.store.write_vocab(document)
        from mapkit.progress import progress_bar

        # --rebuild-vocab: the new shards stay partial files until vocab.json and they are published
        # together, and the old shards deleted, in one commit (Store.commit_rebuild)
        writer = self.new_writer(vocab)
        writer.publish = not self.rebuild_vocab
        n_write = len(spooled) + (len(kept_stored) if self.rebuild_vocab else 0)
        with writer, progress_bar(total=n_write, desc=f"{COMMAND} write", unit="level",
                                  file=sys.stderr, disable=not self.progress) as bar:
            for _k, offset in spooled:
                spool.seek(offset)
                self.write_item(writer, self.encoded(pickle.load(spool), vocab))
                bar.update(1)
            if self.rebuild_vocab:
                for e in kept_stored:
                    self.write_item(writer, reencode_stored(e, vocab))
                    bar.update(1)
        if self.rebuild_vocab:
            # every level the old shards held is now in a newer shard, encoded with the new vocabulary
            self.store.commit_rebuild(document, writer.pending, self.targets.shards)
        return vocab

    def counted_vocabulary(self, spool, spooled: list, kept_stored: list, n_states: int):
        """``(vocabulary, vocab.json document or None)`` counted over the training songs' levels.

        Raises when the count is empty but levels hold states (every state would be UNK), or when, without
        ``rebuild_vocab``, kept stored levels were encoded with another vocabulary."""
        val_fraction, seed, val_songs = self.split
        # the songs the trainer will split: features and targets (after this run)
        split_ids = set(self.features) & (set(self.targets) | self.written_ids)
        groups = song_groups(self.features)
        train, val = training_songs(split_ids, val_fraction, seed, val_songs, groups)
        train = set(train)
        spooled.sort()
        counts, n_counted, n_difficulties = _count_training_states(spool, spooled, self.tasks, kept_stored, train)
        vocab = Vocabulary.from_counts(counts, self.settings.vocab_size)
        if self.rebuild_vocab:
            n_states += sum(int(e.attrs.get("n_states", 0)) for e in kept_stored)
        if not counts and n_states:
            raise MapkitError(self.store.root, empty_vocabulary_reason(
                split_ids, train, val, val_songs is not None, n_states))
        self.unk_skip.update(val)
        if not self.rebuild_vocab:
            stale = sorted({str(e.file_attrs.get("vocab_hash")) for e in kept_stored if vocab_bound(e)}
                           - {vocab.hash})
            if stale:
                raise StoreError(self.store.vocab_path,
                                 f"no vocab.json, and the vocabulary counted now (hash {vocab.hash}) is "
                                 f"not the one of the stored targets (hash {', '.join(stale)}); add "
                                 f"--rebuild-vocab to re-encode every stored level")
        # an empty vocabulary would turn every later level into UNK: never saved
        document = vocab_document(vocab, counts, self.settings, n_counted, n_difficulties=n_difficulties,
                                  counted_songs=train, val_songs=val,
                                  val_fraction=None if val_songs is not None else val_fraction, seed=seed,
                                  grouping=grouping_record(groups, split_ids)) if counts else None
        return vocab, document

    def where(self) -> dict:
        """The input and the store, as every report of the run names them."""
        return {"input": os.fspath(self.input_dir), "store": os.fspath(self.store.root)}

    def report_unwritten(self, interrupted: RunInterrupted, spooled: list, counting: bool) -> None:
        """The report of a run without a known vocabulary that a signal stopped: while it computed the
        levels (``counting`` False: ``interrupted.results`` are the levels handled) or after (counting the
        vocabulary, writing the levels: every level was handled).

        What counts as written is what the store's committed shards now hold that they did not before (a
        partial shard is abandoned; a ``--rebuild-vocab`` run commits nothing until it is whole). The report
        lists those levels and every difficulty that failed or was quarantined, and says how many computed
        levels were not written."""
        now, before, tasks = self.store.index("targets"), self.targets, self.tasks
        spooled_tasks = {k for k, _ in spooled}
        written = {k for k in spooled_tasks if tasks[k].song_id in now
                   and (tasks[k].song_id not in before
                        or now[tasks[k].song_id].shard != before[tasks[k].song_id].shard)}
        handled = [r for k in sorted(self.per_task) for r in self.per_task[k]]
        listed = [r for k in sorted(self.per_task) for r in self.per_task[k]
                  if k in written or r.status in ("failed", "quarantined")]
        if counting:
            interrupted.results, interrupted.n_items = handled, len(tasks)
        phase = "counting the vocabulary or writing" if counting else "computing the levels"
        detail = (f"stopped while {phase}: {plural(len(written), 'levels')} written, "
                  f"{len(spooled_tasks) - len(written)} computed and not written")
        write_interrupted_report(self.store.reports_dir, COMMAND, interrupted, self.settings, self.ignored,
                                 self.where(), results=listed, detail=detail)


def build_targets(input_dir, store="./mapkit-data", settings: TargetSettings = TargetSettings(),
                  characteristic="Standard", jobs=None, force: bool = False, rebuild_vocab: bool = False,
                  val_fraction: float = 0.1, val_songs=None, seed: int = 0,
                  backend: str = "joblib", scheduler=None, progress: bool = True,
                  shard_levels: int = DEFAULT_SHARD_LEVELS, shard_bytes: int = DEFAULT_SHARD_BYTES,
                  item_timeout: float | None = DEFAULT_ITEM_TIMEOUT_S, metadata=None) -> RunReport:
    """Build the targets of every level under ``input_dir`` into ``store``.

    Checks and plans under the store's lock, then hands the writing to
    :class:`_TargetsRun` (as levels arrive, or after counting the vocabulary
    from a spool), in the order of the module docstring's steps.

    Parameters
    ----------
    input_dir : path
        A folder of level folders and/or ``.zip`` files (or one of them).
    store : path or Store
        The store; its features must already hold the levels' songs (``mapkit extract``).
    settings : TargetSettings
        ``fps``, ``song_offset``, ``max_drop_fraction``, ``vocab_size``.
    characteristic : str
        Which characteristic to read (``"Standard"``), or ``"all"``.
    jobs : int, optional
        Worker processes; default all cores; 1 = in this process.
    force : bool
        Redo levels already stored with the same files, audio and settings.
    rebuild_vocab : bool
        Count the states again over the training songs' levels (this run's and
        the stored ones), write a new ``vocab.json`` and re-encode every stored
        level (implies ``force``).
    val_fraction, val_songs, seed
        The trainer's split (``mapkit train --val-fraction/--val-song/--seed``,
        :func:`training_songs` over the songs with features and targets):
        when the vocabulary is counted, only the levels of training songs are;
        validation songs' levels are written all the same (their unseen states
        are UNK). Unused when ``vocab.json`` is kept.
    backend : {"joblib", "dask"}
    scheduler : str, optional
        Dask scheduler address (backend "dask").
    progress : bool
        tqdm progress bars on stderr.
    shard_levels, shard_bytes : int
        When a shard is full and committed.
    item_timeout : float or None
        Seconds one level may take before it fails with "timed out after N s"; None: no limit.
    metadata : path, optional
        A JSON-lines file of BeatSaver map documents
        (:mod:`mapkit.preprocess.metadata`), joined on the level hash into the
        attrs of every level this run writes (stored levels that are skipped
        keep theirs: add ``force`` to join it to them).

    Returns
    -------
    RunReport
        One item per level/characteristic/difficulty (``song_id/Standard/Expert``)
        or per level for level-wide outcomes: ``ok``, ``skipped`` (already
        present), ``quarantined`` (with the reason; not written) or ``failed``
        (unreadable level, no features). Exit code 0, or 2 when something
        was quarantined or failed.

    Raises
    ------
    MapkitError
        No levels in ``input_dir``, duplicate song ids, no level has a
        difficulty of ``characteristic``, or a ``val_songs`` song has no
        features (nothing is written).
    StoreError
        The store is locked, holds targets of other settings or of another
        characteristic selection, or its
        ``vocab.json`` is not the vocabulary of its targets (or of another
        ``vocab_size``) and ``rebuild_vocab`` is not set.
    RunInterrupted
        SIGINT or SIGTERM: with a known vocabulary the levels written so far
        are committed and a report of them is written (``interrupted`` in its
        JSON). Without a known vocabulary every level is computed before any is
        written: stopped in that pass, no level is written and the report lists
        only the levels that failed or were quarantined; stopped later (counting
        or writing), it also lists the levels its committed shards hold and says
        how many computed ones were not written. Running again finishes the job.
    """
    from mapkit.preprocess.sources import discover

    if backend == "dask":
        check_scheduler(scheduler)  # before anything is created
    store = store if isinstance(store, Store) else Store(store)
    ignored: list = []
    sources = discover(os.path.abspath(input_dir), kinds=("level",), ignored=ignored)
    if not sources:
        raise MapkitError(input_dir, "no levels found (level folders or .zip files with an info file)")
    selection = characteristic_selection(characteristic)
    check_characteristic_present(sources, characteristic, input_dir)
    meta = _read_metadata(metadata)
    force = force or rebuild_vocab
    with store.lock(COMMAND):
        features = store.index("features")
        targets = store.index("targets")
        if val_songs is not None:
            unknown = sorted(set(val_songs) - set(features))
            if unknown:
                raise MapkitError(store.root, f"validation songs without features in the store: {', '.join(unknown)}")
        check_settings(targets, settings, store.root)
        check_selection(targets, selection, store.root)
        loaded = None if rebuild_vocab else load_vocab(store)
        vocab = None
        if loaded is not None:
            vocab = loaded[0]
            check_vocab(targets, vocab, loaded[1], settings, store)

        intact = intact_levels(targets[s.song_id] for s in sources if s.song_id in targets) if not force else set()
        early, tasks, task_pos = _plan_tasks(sources, features, targets, settings, selection, vocab, intact, force)
        run = _TargetsRun(store=store, tasks=tasks, features=features, targets=targets, settings=settings,
                          selection=selection, meta=meta, ignored=ignored, input_dir=input_dir,
                          shard_levels=shard_levels, shard_bytes=shard_bytes, rebuild_vocab=rebuild_vocab,
                          split=(val_fraction, seed, val_songs),
                          unk_skip=set(loaded[1].get("val_songs") or ()) if loaded is not None else set(),
                          progress=progress)
        work = functools.partial(targets_one, settings=settings, characteristic=characteristic)
        run_all = functools.partial(run_items, tasks, work, jobs=jobs, backend=backend, scheduler=scheduler,
                                    desc=COMMAND, progress=progress, unit="level", time_limit=item_timeout)
        if vocab is not None:
            ran = run.write_as_computed(run_all, vocab)
        else:
            ran, vocab = run.spool_count_write(run_all)

        items = _ordered_items(len(sources), early, task_pos, run.per_task, ran)
        index = store.index("targets")
        report = RunReport(COMMAND, items, problems=index.problems, ignored=ignored)
        if store.recovered:  # flushed by a killed run, adopted when the lock was taken: not recomputed
            report.notes.append(f"recovered {plural(len(store.recovered), 'items')} flushed by an interrupted run")
        line = unk_summary(*run.unk)
        if line:
            report.notes.append(line)
        write_report(store.reports_dir, report, settings,
                     extra={**run.where(), "force": force,
                            "rebuild_vocab": rebuild_vocab, "characteristic": selection, "backend": backend,
                            "vocab_hash": vocab.hash, "vocab_tokens": len(vocab), "stored_levels": len(index),
                            "unk_tokens": run.unk[0], "state_tokens": run.unk[1],
                            "metadata": None if meta is None else {"file": meta.path, "maps": meta.n_maps,
                                                                   "bad_lines": len(meta.bad_lines)}})
    return report


def _read_metadata(metadata):
    """The BeatSaver metadata of ``metadata`` (a path), or None; warns on stderr about bad lines."""
    if metadata is None:
        return None
    from mapkit.preprocess.metadata import read_metadata

    meta = read_metadata(metadata)
    if meta.warning():
        print(f"warning: {meta.warning()}", file=sys.stderr)
    return meta
