"""``mapkit extract``: songs -> padded log-mel features in the store's HDF5 shards.

One run (:func:`extract`):

1. find the songs of the input folder (:func:`mapkit.preprocess.sources.discover`;
   duplicate song ids stop the run);
2. take the store's lock (a second run on the same store stops here);
3. read the index of the complete feature shards. Songs already stored with
   the same audio SHA-256 and the same settings hash are skipped (the worker
   hashes the audio file, which is cheap, and computes nothing else);
   ``force=True`` computes and stores them again (the new copy, in a newer
   shard, wins: see :mod:`mapkit.datasets.store`);
4. compute features in workers (:func:`mapkit.preprocess.features.song_features`),
   with each song's Chromaprint fingerprint from the samples already decoded
   (:mod:`mapkit.preprocess.fingerprint`), and write them in this process
   into new shards, each song with its ``group_id``
   (:class:`mapkit.datasets.groups.GroupAssigner`: the songs it matches by
   identical audio or fingerprint, among the stored ones and those written
   before it);
5. when a new song joined two groups, store the absorbed group's songs again
   (newer shard) with the surviving group id;
6. recompute ``stats.json`` from the stored songs and write the run's report
   (its ``grouping`` says which songs matched which, and how).

Settings are never mixed: when the store already holds features made with
other settings (another settings hash), the run refuses with a
:class:`~mapkit.errors.StoreError`, ``force`` included; use another store, or
delete ``STORE/features`` to rebuild it with the new settings.

Each song is stored as group ``/songs/<song_id>`` of a feature shard, with the
datasets ``placement`` [T+14, 3, 80] and ``selection`` [T+2, 100] (float16,
time first) and the attrs of docs/design.md §4, plus ``<stage>_band_sum``
and ``<stage>_band_sumsq`` (float64 per-band sums over the song's T unpadded
frames) from which ``stats.json`` is computed.
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mapkit.datasets.groups import GroupAssigner
from mapkit.datasets.names import plural, safe_attrs
from mapkit.runs.runner import (DEFAULT_ITEM_TIMEOUT_S, ItemResult, RunInterrupted, RunReport, SourceItem,
                                    check_scheduler, run_items, write_interrupted_report, write_report)
from mapkit.datasets.schema import ATTRS_CHECKSUM, FEATURE_STAGES, KIND_ROOTS, SONG_FINGERPRINT
from mapkit.datasets.store import ShardItem, ShardWriter, Store, shard_file_attrs
from mapkit.errors import MapkitError, StoreError
from mapkit.settings import FeatureSettings

COMMAND = "extract"

#: Songs per feature shard: a kill loses at most this many songs' work.
DEFAULT_SHARD_SONGS = 64
#: Bytes of feature data per shard (whichever limit comes first).
DEFAULT_SHARD_BYTES = 1 << 30


@dataclass(frozen=True)
class ExtractTask(SourceItem):
    """One song to extract; ``known_sha256`` is the audio hash already stored (skip if equal)."""

    source: object  # mapkit.preprocess.sources.Source
    known_sha256: str | None = None


@dataclass(frozen=True)
class AlreadyPresent:
    """Worker result: the stored song has the same audio hash; nothing computed."""

    audio_sha256: str


def _source_sha256(source) -> str:
    from mapkit.preprocess.audio import audio_sha256, open_source_audio

    f, _name, data = open_source_audio(source)
    with f:
        return audio_sha256(data if data is not None else f)


def extract_one(task: ExtractTask, settings: FeatureSettings):
    """Worker: :class:`AlreadyPresent` when the audio hash is the stored one, else the song's features."""
    from mapkit.datasets.names import song_id_problem
    from mapkit.preprocess.features import song_features

    problem = song_id_problem(task.song_id)
    if problem is not None:  # "." (from "..zip"), control characters, undecodable bytes: never reach HDF5
        raise MapkitError(task.path, problem)
    if task.known_sha256 is not None and _source_sha256(task.source) == task.known_sha256:
        return AlreadyPresent(task.known_sha256)
    return song_features(task.source, settings, fingerprint=True)


def feature_item(song, group_id: str | None = None) -> ShardItem:
    """The shard item of one song's features (docs/design.md §4).

    ``song`` is a :class:`mapkit.preprocess.features.SongFeatures`;
    ``group_id`` its group (:mod:`mapkit.datasets.groups`; default: its song id).
    Its Chromaprint fingerprint, when there is one, is the dataset ``chromaprint``.
    """
    attrs = {
        "n_frames": int(song.n_frames),
        "pad_placement": np.asarray(song.pad_placement, dtype=np.int64),
        "pad_selection": np.asarray(song.pad_selection, dtype=np.int64),
        "sample_rate": int(song.sample_rate),
        "n_samples": int(song.n_samples),
        "duration_s": float(song.duration_s),
        "audio_sha256": str(song.audio_sha256),
        "source": str(song.source),
        "group_id": str(group_id or song.song_id),
        "chromaprint_error": str(song.chromaprint_error),
    }
    for stage in FEATURE_STAGES:
        sums = song.band_sums[stage]
        if int(sums["count"]) != int(song.n_frames):
            raise StoreError(song.source, f"{stage} band sums over {sums['count']} frames, expected {song.n_frames}")
        attrs[f"{stage}_band_sum"] = np.asarray(sums["sum"], dtype=np.float64)
        attrs[f"{stage}_band_sumsq"] = np.asarray(sums["sum_sq"], dtype=np.float64)
    datasets = {"placement": np.asarray(song.placement, dtype=np.float16),
                "selection": np.asarray(song.selection, dtype=np.float16)}
    if song.chromaprint is not None:
        datasets[SONG_FINGERPRINT] = np.asarray(song.chromaprint, dtype=np.uint32)
    return ShardItem(group=f"{KIND_ROOTS['features']}/{song.song_id}", datasets=datasets,
                     attrs=safe_attrs(attrs))


def stored_groups(index) -> dict:
    """``song_id -> (group_id, audio_sha256, fingerprint or None)`` of the stored songs (reads every fingerprint)."""
    from mapkit.datasets.store import open_shard

    out = {}
    by_shard: dict = {}
    for sid, e in index.items():
        by_shard.setdefault(e.shard, []).append(e)
    for shard, entries in by_shard.items():
        with open_shard(shard) as f:
            for e in entries:
                g = f[e.group]
                fp = g[SONG_FINGERPRINT][()] if SONG_FINGERPRINT in g else None
                out[e.song_id] = (str(e.attrs.get("group_id") or e.song_id), str(e.attrs.get("audio_sha256", "")), fp)
    return out


def regrouped_item(entry, group_id: str) -> ShardItem:
    """A stored song copied unchanged but for its ``group_id`` (for a newer shard: newest wins)."""
    from mapkit.datasets.store import open_shard

    with open_shard(entry.shard) as f:
        g = f[entry.group]
        datasets = {name: g[name][()] for name in g}
        attrs = {k: v for k, v in g.attrs.items() if k != ATTRS_CHECKSUM}  # the writer seals them again
    attrs["group_id"] = group_id
    return ShardItem(group=entry.group, datasets=datasets, attrs=attrs)


def grouping_note(problems: set) -> str | None:
    """The warning when some songs have no fingerprint: they are grouped by identical audio only."""
    if not problems:
        return None
    return ("songs without an acoustic fingerprint are grouped only with byte-identical audio (same SHA-256), "
            "so other encodes of one song may end up on both sides of the train/validation split: "
            + "; ".join(sorted(problems)))


def check_settings(index, settings: FeatureSettings, store_root) -> None:
    """Refuse a store whose stored features were made with other settings."""
    others = sorted(h for h in index.settings_hashes if h != settings.hash)
    if others:
        raise StoreError(store_root, f"store holds features made with other settings (hash {', '.join(others)}; "
                                     f"this run: {settings.hash}); use another --store or delete "
                                     f"{Path(store_root) / 'features'} to rebuild")


def extract(input_dir, store="./mapkit-data", settings: FeatureSettings = FeatureSettings(), jobs=None,
            force: bool = False, backend: str = "joblib", scheduler=None, progress: bool = True,
            shard_songs: int = DEFAULT_SHARD_SONGS, shard_bytes: int = DEFAULT_SHARD_BYTES,
            item_timeout: float | None = DEFAULT_ITEM_TIMEOUT_S) -> RunReport:
    """Extract the features of every song under ``input_dir`` into ``store``.

    Parameters
    ----------
    input_dir : path
        A folder of level folders and/or ``.zip`` files, or of bare audio files
        (or one of them).
    store : path or Store
        The store folder (created when missing).
    settings : FeatureSettings
    jobs : int, optional
        Worker processes; default all cores; 1 = in this process.
    force : bool
        Recompute songs that are already stored with the same audio and settings.
    backend : {"joblib", "dask"}
    scheduler : str, optional
        Dask scheduler address (backend "dask").
    progress : bool
        tqdm progress bar on stderr.
    shard_songs, shard_bytes : int
        When a shard is full and committed.
    item_timeout : float or None
        Seconds one song may take before it fails with "timed out after N s"
        (:func:`~mapkit.runs.runner.run_items`); None: no limit.

    Returns
    -------
    RunReport
        Every song with its status (``ok``, ``skipped`` = already present,
        ``failed`` with the reason), the report's path and the exit code
        (0 all stored, 2 some failed).

    Raises
    ------
    MapkitError
        The run could not proceed: input missing or without songs, duplicate song ids.
    StoreError
        The store is locked by another run, or holds features of other settings.
    RunInterrupted
        SIGINT or SIGTERM: the songs written so far are committed (and
        ``stats.json`` updated), the song in progress is not recorded, and a
        report of the songs handled is written (``interrupted`` in its JSON);
        running again finishes the job.
    """
    from mapkit.preprocess.sources import discover

    if backend == "dask":
        check_scheduler(scheduler)  # before anything is created
    store = store if isinstance(store, Store) else Store(store)
    ignored: list = []
    sources = discover(os.path.abspath(input_dir), ignored=ignored)
    if not sources:  # most likely the wrong folder: say so rather than "0 songs, all fine"
        raise MapkitError(input_dir, "no songs found (level folders, .zip files or audio files)")
    with store.lock(COMMAND):
        index = store.index("features")
        check_settings(index, settings, store.root)
        tasks = [ExtractTask(s, None if force or s.song_id not in index else
                             str(index[s.song_id].attrs.get("audio_sha256")))
                 for s in sources]
        new_writer = functools.partial(_features_writer, store, settings, shard_songs, shard_bytes)
        writer = new_writer()

        stored = stored_groups(index)
        groups = _RunGroups(stored)
        redone = {t.song_id for t in tasks} if force else set()
        unprinted = sorted(sid for sid, (_g, _sha, fp) in stored.items() if fp is None and sid not in redone)
        try:
            with writer:
                try:
                    results = run_items(tasks, functools.partial(extract_one, settings=settings),
                                        functools.partial(groups.write, writer), jobs=jobs,
                                        backend=backend, scheduler=scheduler, desc=COMMAND, progress=progress,
                                        time_limit=item_timeout)
                except RunInterrupted as e:
                    writer.close()  # every song written so far is complete: keep them
                    groups.regroup_stored(store, new_writer)  # and the groups they joined stay joined
                    store.write_feature_stats()
                    write_interrupted_report(store.reports_dir, COMMAND, e, settings, ignored,
                                             {"input": os.fspath(input_dir), "store": os.fspath(store.root)})
                    raise
        except StoreError:  # e.g. a full disk: the shards committed so far stay, and stats.json describes them
            if writer.committed:
                store.write_feature_stats()
            raise
        regroup = groups.regroup_stored(store, new_writer)
        note = _fingerprint_warning(groups.no_fingerprint, unprinted)
        if note:
            print(f"warning: {note}", file=sys.stderr)
        index = store.index("features")
        store.write_feature_stats(index)
        report = RunReport(COMMAND, results, problems=index.problems, ignored=ignored)
        if store.recovered:  # flushed by a killed run, adopted when the lock was taken: not recomputed
            report.notes.append(f"recovered {plural(len(store.recovered), 'items')} flushed by an interrupted run")
        write_report(store.reports_dir, report, settings,
                     extra={"input": os.fspath(input_dir), "store": os.fspath(store.root), "force": force,
                            "backend": backend, "stored_songs": len(index),
                            "grouping": _grouping_record(groups.assigner, groups.no_fingerprint, note, regroup)})
    return report


class _RunGroups:
    """The groups of one run's songs: assigned as each song is written, and stored songs written
    again when a new song joined their group to another (:mod:`mapkit.datasets.groups`)."""

    def __init__(self, stored: dict):
        self.assigner = GroupAssigner(stored)
        #: ``song_id -> group_id`` of every song this run wrote (regrouped ones included).
        self.written: dict = {}
        #: Why songs of this run have no fingerprint (Chromaprint errors).
        self.no_fingerprint: set = set()

    def write(self, writer: ShardWriter, task: ExtractTask, value) -> ItemResult:
        """Write one song's features with its group (the ``write`` of :func:`~mapkit.runs.runner.run_items`)."""
        if isinstance(value, AlreadyPresent):
            return ItemResult(task.song_id, task.path, "skipped", "already present (same audio and settings)")
        group = self.assigner.assign(value.song_id, value.audio_sha256, value.chromaprint)
        if value.chromaprint_error:
            self.no_fingerprint.add(value.chromaprint_error)
        writer.write(feature_item(value, group))
        self.written[value.song_id] = group
        notes = list(value.notes) + ([] if group == value.song_id else [f"group {group}"])
        return ItemResult(task.song_id, task.path, "ok", "; ".join(notes))

    def regroup_stored(self, store: Store, new_writer) -> dict:
        """A new song joined two groups: store the absorbed group's songs again with the new id.

        ``new_writer()`` makes the writer of the new shard; returns ``{song_id: new group_id}``.
        """
        regroup = self.assigner.relabelled(self.written)
        if regroup:
            stored_now = store.index("features")
            with new_writer() as rewriter:
                for sid, group in sorted(regroup.items()):
                    rewriter.write(regrouped_item(stored_now[sid], group))
                    self.written[sid] = group
        return regroup


def _features_writer(store: Store, settings: FeatureSettings, shard_songs: int, shard_bytes: int) -> ShardWriter:
    """A writer of new features shards into ``store``."""
    return ShardWriter(store.features_dir, shard_file_attrs("features", settings),
                       max_items=shard_songs, max_bytes=shard_bytes)


def _fingerprint_warning(no_fingerprint: set, unprinted: list) -> str | None:
    """The run's warning that songs were grouped without fingerprints, or None.

    ``no_fingerprint`` holds why this run's songs had none; ``unprinted`` the
    stored songs (sorted ids) extracted before fingerprints, not redone.
    """
    note = grouping_note(no_fingerprint)
    if unprinted:
        old = (f"{len(unprinted)} stored songs have no fingerprint (e.g. {unprinted[0]}): they match other "
               f"songs only by identical audio; extract them again with --force to fingerprint them")
        note = f"{note}; {old}" if note else old
    return note


def _grouping_record(assigner: GroupAssigner, no_fingerprint: set, note: str | None, regroup: dict) -> dict:
    """The run report's ``grouping``: the method, the warning, the songs regrouped and every match found."""
    return {"method": "audio_sha256 only" if no_fingerprint else "chromaprint+audio_sha256",
            "warning": note, "regrouped": regroup,
            "matches": {sid: [[o, "same audio" if isinstance(m, str) else
                               f"offset {m.offset_s:+.2f} s, {100 * m.share:.1f}% agree"]
                              for o, m in found]
                        for sid, found in assigner.matches.items() if found}}
