"""The store: a folder of HDF5 shards, its lock, its index and its statistics.

The layout is a public contract (DESIGN.md section 8)::

    STORE/
      .lock                      held (flock) by the one run that writes the store
      features/shard-NNNNN.h5    /songs/<song_id>/...
      targets/shard-NNNNN.h5     /levels/<song_id>/...
      vocab.json, stats.json
      reports/                   one JSON report per run

Reliability rules, in one place:

- **One writer.** A run that writes holds an exclusive, non-blocking ``flock``
  on ``STORE/.lock`` for its whole duration (:meth:`Store.lock`); a second run
  fails at once with a :class:`~mapkit.errors.StoreError` naming the store and
  the pid and command of the holder. The kernel drops the lock when the holder
  dies, even by SIGKILL, so there are no stale locks.
- **Commit by rename.** A shard is written as ``shard-NNNNN.h5.partial``,
  flushed after every item, and renamed to ``shard-NNNNN.h5`` (after fsync)
  only when it is full or the run ends (:class:`ShardWriter`). Only complete
  shards are ever read. A ``.partial`` shard lists the items it has flushed
  (dataset ``/.flushed``, dropped on commit); when the next run takes the
  lock, the flushed items of a killed run's ``.partial`` that read back
  whole are adopted into a new complete shard, and the ``.partial`` is
  deleted (:meth:`Store.recover_partials`): a kill loses at most the item in
  progress.
- **Newest wins.** Shard numbers only grow. When a song is stored in several
  shards (``--force`` writes a new copy, it never rewrites a complete shard),
  the copy in the highest-numbered shard is the song; older copies are ignored
  by :meth:`Store.index` (and by every mapkit reader) and stay on disk as dead
  bytes. Readers using plain h5py must apply the same rule.
- **Readers never crash on a bad shard.** :meth:`Store.index` opens every
  complete shard read-only; one that cannot be read is listed in
  ``index.problems`` and its songs are absent from the index.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import time
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import mapkit
from mapkit.errors import StoreError

#: Kind of shard -> its folder in the store and the top-level group of its items.
KIND_ROOTS = {"features": "songs", "targets": "levels"}

#: Rows per HDF5 chunk along the time (first) axis.
CHUNK_ROWS = 1024

SHARD_PATTERN = re.compile(r"^shard-(\d{5,})\.h5$")
PARTIAL_SUFFIX = ".partial"
#: Dataset of a ``.partial`` shard naming the items flushed so far (deleted when the shard is committed).
FLUSHED = ".flushed"

#: Feature stages and the names of the per-song band statistics stored as attrs
#: of each song group: ``<stage>_band_sum``, ``<stage>_band_sumsq`` (float64,
#: the per-band sums over the song's T unpadded frames; the count is ``n_frames``).
FEATURE_STAGES = ("placement", "selection")


def utc_timestamp() -> str:
    """The current UTC time as ``YYYYmmddTHHMMSSZ`` (safe in file names)."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def shard_name(number: int) -> str:
    """File name of complete shard ``number``: ``shard-00003.h5``."""
    return f"shard-{number:05d}.h5"


def _shard_number(name: str) -> int | None:
    m = SHARD_PATTERN.match(name[: -len(PARTIAL_SUFFIX)] if name.endswith(PARTIAL_SUFFIX) else name)
    return int(m.group(1)) if m else None


def _fsync_dir(directory: Path):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path, obj) -> Path:
    """Write ``obj`` as JSON to ``path`` through a temporary file and a rename.

    A reader sees the old file or the new one, never a half-written one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


@dataclass
class ShardItem:
    """One item to write into a shard: a song's features, or a song's levels.

    Parameters
    ----------
    group : str
        Path of the item's group in the file, e.g. ``"songs/<song_id>"``.
    datasets : dict[str, np.ndarray]
        Dataset paths relative to ``group`` (may contain ``/`` for sub-groups,
        e.g. ``"Standard/Expert/frame_class"``) and their arrays, written as
        given (dtype included), time-first.
    attrs : dict
        Attributes of the item's group.
    subgroup_attrs : dict[str, dict]
        Attributes of sub-groups, by path relative to ``group``.
    """

    group: str
    datasets: dict
    attrs: dict = field(default_factory=dict)
    subgroup_attrs: dict = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return int(sum(np.asarray(a).nbytes for a in self.datasets.values()))


class ShardWriter:
    """Writes items into numbered shards of one folder, committing each by rename.

    Items go into ``shard-NNNNN.h5.partial`` (created at the first item), the
    file is flushed after every item, and it is renamed to ``shard-NNNNN.h5``
    after an fsync when it holds ``max_items`` items or ``max_bytes`` bytes of
    data, and on :meth:`close`. The next shard takes a number above every
    shard and partial file in the folder, so a number is never reused while its
    file exists. Only one ShardWriter may write a folder at a time: hold
    :meth:`Store.lock`.

    Datasets are stored uncompressed and, when they have rows, chunked along
    the first (time) axis in chunks of at most ``chunk_rows`` rows.

    Parameters
    ----------
    directory : path
        Folder of the shards (``STORE/features`` or ``STORE/targets``).
    file_attrs : dict
        Attributes written to every shard file (schema version, settings...;
        see :func:`shard_file_attrs`).
    max_items, max_bytes : int
        When a shard is full and committed.
    chunk_rows : int
        Rows per chunk along time.
    """

    def __init__(self, directory, file_attrs: dict, max_items: int = 64, max_bytes: int = 1 << 30,
                 chunk_rows: int = CHUNK_ROWS):
        if max_items < 1 or max_bytes < 1 or chunk_rows < 1:
            raise ValueError("max_items, max_bytes and chunk_rows must be positive")
        self.directory = Path(directory)
        self.file_attrs = dict(file_attrs)
        self.max_items = int(max_items)
        self.max_bytes = int(max_bytes)
        self.chunk_rows = int(chunk_rows)
        self._file = None
        self._partial: Path | None = None
        self._final: Path | None = None
        self._items = 0
        self._bytes = 0
        #: Complete shards committed by this writer, in order.
        self.committed: list[Path] = []

    def _next_number(self) -> int:
        numbers = [n for n in (_shard_number(p.name) for p in self.directory.iterdir()) if n is not None]
        return max(numbers, default=0) + 1

    def _open(self):
        import h5py

        self.directory.mkdir(parents=True, exist_ok=True)
        number = self._next_number()
        self._final = self.directory / shard_name(number)
        self._partial = self._final.with_name(self._final.name + PARTIAL_SUFFIX)
        self._file = h5py.File(self._partial, "w")
        for k, v in self.file_attrs.items():
            self._file.attrs[k] = v
        self._file.attrs["created"] = utc_timestamp()
        self._file.create_dataset(FLUSHED, shape=(0,), maxshape=(None,), chunks=(64,), dtype=h5py.string_dtype())
        self._items = 0
        self._bytes = 0

    def write(self, item: ShardItem) -> Path:
        """Write ``item`` and flush; returns the path its shard will have once complete.

        Raises :class:`~mapkit.errors.StoreError` when the shard in progress
        already holds ``item.group``.
        """
        if self._file is None:
            self._open()
        f = self._file
        if item.group in f:
            raise StoreError(self._partial, f"{item.group} written twice into one shard")
        g = f.create_group(item.group)
        for k, v in item.attrs.items():
            g.attrs[k] = v
        for name, array in item.datasets.items():
            array = np.asarray(array)
            chunks = None
            if array.ndim >= 1 and array.shape[0] > 0:
                chunks = (min(self.chunk_rows, array.shape[0]),) + array.shape[1:]
            g.create_dataset(name, data=array, chunks=chunks)
        for sub, attrs in item.subgroup_attrs.items():
            sg = g.require_group(sub)
            for k, v in attrs.items():
                sg.attrs[k] = v
        flushed = f[FLUSHED]  # the item is whole once this flush is done: a later run may adopt it
        flushed.resize((flushed.shape[0] + 1,))
        flushed[-1] = item.group
        f.flush()
        self._items += 1
        self._bytes += item.nbytes
        final = self._final
        if self._items >= self.max_items or self._bytes >= self.max_bytes:
            self._commit()
        return final

    def _commit(self):
        if self._file is None:
            return
        del self._file[FLUSHED]
        self._file.flush()
        self._file.close()
        self._file = None
        with open(self._partial, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(self._partial, self._final)
        _fsync_dir(self.directory)
        self.committed.append(self._final)
        self._partial = self._final = None

    def close(self):
        """Commit the shard in progress (if any)."""
        self._commit()

    def abandon(self):
        """Close the shard in progress without committing it (it stays ``.partial``)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        # On an error the partial shard is left for the next run to delete: a
        # half-done shard never counts, whatever went wrong.
        if exc_type is None:
            self.close()
        else:
            self.abandon()


def shard_file_attrs(kind: str, settings) -> dict:
    """The attributes every shard file carries (DESIGN.md section 8).

    ``schema_version``, ``mapkit_version``, ``kind`` ("features" or "targets"),
    ``settings_json`` and ``settings_hash``; :class:`ShardWriter` adds ``created``.
    """
    if kind not in KIND_ROOTS:
        raise ValueError(f"unknown shard kind {kind!r}")
    return {
        "schema_version": mapkit.SCHEMA_VERSION,
        "mapkit_version": mapkit.__version__,
        "kind": kind,
        "settings_json": settings.to_json(),
        "settings_hash": settings.hash,
    }


@dataclass(frozen=True)
class Entry:
    """Where one song lives in the store.

    ``attrs`` are the attributes of the song's group; ``file_attrs`` those of
    its shard (settings hash, schema version...).
    """

    song_id: str
    shard: Path
    group: str
    attrs: dict
    file_attrs: dict

    @property
    def settings_hash(self) -> str:
        return str(self.file_attrs.get("settings_hash", ""))


class Index(dict):
    """``{song_id: Entry}`` over the complete shards of one kind, newest shard winning.

    ``problems`` lists ``(shard path, reason)`` for every shard that could not
    be read; ``shards`` the shards read; ``settings_hashes`` the distinct
    settings hashes of the songs in the index.
    """

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.problems: list[tuple[str, str]] = []
        self.shards: list[Path] = []

    @property
    def settings_hashes(self) -> set:
        return {e.settings_hash for e in self.values()}


def _attrs_dict(attrs) -> dict:
    out = {}
    for k, v in attrs.items():
        if isinstance(v, bytes):
            v = v.decode("utf-8")
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


def open_shard(path, features: bool = True):
    """Open a complete shard read-only; for features with the chunk cache off (``rdcc_nbytes=0``).

    Random windows of features are read once each: a chunk cache only costs memory.
    """
    import h5py

    if features:
        return h5py.File(path, "r", rdcc_nbytes=0)
    return h5py.File(path, "r")


def _lock_holder(fd, wait_s: float = 2.0) -> str:
    """The holder line of a lock file whose flock another run holds.

    The holder writes its line just after taking the lock, so an empty file
    means "just started": read again for up to ``wait_s`` seconds.
    """
    deadline = time.monotonic() + wait_s
    while True:
        holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        if holder or time.monotonic() > deadline:
            return holder or "unknown"
        time.sleep(0.02)


def _read_whole_item(f, group: str) -> "ShardItem | None":
    """The item at ``group`` of an open shard, every dataset read in full, or None when any part fails to read."""
    try:
        g = f[group]
        datasets, subgroup_attrs = {}, {}

        def visit(name, obj):
            if hasattr(obj, "shape"):
                datasets[name] = obj[()]
            else:
                subgroup_attrs[name] = dict(obj.attrs.items())  # as stored: dtypes kept

        g.visititems(visit)
        item = ShardItem(group, datasets, dict(g.attrs.items()), subgroup_attrs)
    except Exception:  # noqa: BLE001 - a damaged item is simply not adopted
        return None
    n = item.attrs.get("n_frames")
    for name, rows in (("placement", "pad_placement"), ("selection", "pad_selection")):
        if name in datasets and rows in item.attrs:  # features: the row count fixes the length
            if datasets[name].shape[0] != int(n) + int(np.sum(item.attrs[rows])):
                return None
    return item


def _adopt_partial(partial: Path) -> list[str]:
    """Copy the whole flushed items of ``partial`` into a new complete shard beside it; their groups."""
    import h5py

    try:
        with h5py.File(partial, "r") as f:
            file_attrs = {k: v for k, v in f.attrs.items() if k != "created"}
            listed = [x.decode() if isinstance(x, bytes) else str(x) for x in f[FLUSHED][()]]
            items = [item for item in (_read_whole_item(f, g) for g in dict.fromkeys(listed)) if item is not None]
    except Exception:  # noqa: BLE001 - unreadable, or written before items were listed: nothing to adopt
        return []
    if items:
        with ShardWriter(partial.parent, file_attrs, max_items=len(items) + 1, max_bytes=1 << 62) as writer:
            for item in items:
                writer.write(item)
    return [item.group for item in items]


class Store:
    """A store folder (DESIGN.md section 8). Creating the object touches nothing on disk."""

    def __init__(self, root):
        self.root = Path(root)
        #: Groups adopted from a killed run's ``.partial`` shards when the lock was taken.
        self.recovered: list[str] = []

    @property
    def features_dir(self) -> Path:
        return self.root / "features"

    @property
    def targets_dir(self) -> Path:
        return self.root / "targets"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def vocab_path(self) -> Path:
        return self.root / "vocab.json"

    @property
    def stats_path(self) -> Path:
        return self.root / "stats.json"

    @property
    def lock_path(self) -> Path:
        return self.root / ".lock"

    def shard_dir(self, kind: str) -> Path:
        """``features/`` or ``targets/``."""
        if kind not in KIND_ROOTS:
            raise ValueError(f"unknown shard kind {kind!r}")
        return self.root / kind

    def create(self):
        """Create the store folders (idempotent)."""
        for d in (self.root, self.features_dir, self.targets_dir, self.reports_dir):
            d.mkdir(parents=True, exist_ok=True)

    # --- the one-writer lock ---

    @contextmanager
    def lock(self, command: str):
        """Hold the store's exclusive lock for a writing run of ``command``.

        Non-blocking: raises :class:`~mapkit.errors.StoreError` naming the store
        and the holder's pid and command when another run holds it. On taking
        the lock, ``.partial`` shards left by a killed run are deleted.
        """
        self.create()
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        held = False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                raise StoreError(self.root, f"store is in use by another run ({_lock_holder(fd)}); "
                                            f"wait for it to finish or use another --store") from None
            held = True
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}, mapkit {command}, since {utc_timestamp()}\n".encode(), 0)
            self.recovered = self.recover_partials()
            yield self
        finally:
            if held:  # a finished run leaves no holder behind to be misreported
                os.ftruncate(fd, 0)
            # Closing the descriptor releases the flock.
            os.close(fd)

    def recover_partials(self) -> list[str]:
        """Adopt the whole items of leftover ``.partial`` shards, then delete them (call only holding the lock).

        A killed run's ``.partial`` shard holds the items it flushed (listed in
        its ``/.flushed`` dataset), perhaps followed by one half-written item.
        Every listed item that reads back whole (:func:`_read_whole_item`) is
        written into a new complete shard with the same file attributes
        (numbered above every shard, so it is the newest copy); the rest is
        dropped with the ``.partial`` file. Returns the groups adopted.
        """
        adopted = []
        for kind in KIND_ROOTS:
            d = self.shard_dir(kind)
            if not d.is_dir():
                continue
            for p in sorted(d.iterdir()):
                if p.name.endswith(PARTIAL_SUFFIX) and _shard_number(p.name) is not None:
                    adopted += _adopt_partial(p)
                    p.unlink()
        return adopted

    def remove_partials(self) -> list[Path]:
        """Delete leftover ``.partial`` shards (call only while holding the lock)."""
        removed = []
        for kind in KIND_ROOTS:
            d = self.shard_dir(kind)
            if d.is_dir():
                for p in d.iterdir():
                    if p.name.endswith(PARTIAL_SUFFIX) and _shard_number(p.name) is not None:
                        p.unlink()
                        removed.append(p)
        return removed

    # --- reading ---

    def shards(self, kind: str) -> list[Path]:
        """Complete shards of ``kind``, in shard-number order."""
        d = self.shard_dir(kind)
        if not d.is_dir():
            return []
        found = [(n, p) for p in d.iterdir()
                 if SHARD_PATTERN.match(p.name) and (n := _shard_number(p.name)) is not None]
        return [p for _, p in sorted(found)]

    def index(self, kind: str) -> Index:
        """``{song_id: Entry}`` of ``kind`` ("features" or "targets"), from complete shards only.

        A song in several shards is taken from the highest-numbered one. A shard
        that cannot be opened, or has another schema version or kind, is listed
        in ``index.problems`` and skipped.
        """
        root_group = KIND_ROOTS[kind] if kind in KIND_ROOTS else None
        if root_group is None:
            raise ValueError(f"unknown shard kind {kind!r}")
        index = Index(kind)
        for path in self.shards(kind):
            try:
                with open_shard(path, features=(kind == "features")) as f:
                    file_attrs = _attrs_dict(f.attrs)
                    if file_attrs.get("schema_version") != mapkit.SCHEMA_VERSION:
                        index.problems.append((str(path), f"schema version {file_attrs.get('schema_version')!r}, "
                                                          f"expected {mapkit.SCHEMA_VERSION}"))
                        continue
                    if file_attrs.get("kind") != kind:
                        index.problems.append((str(path), f"shard kind {file_attrs.get('kind')!r}, expected {kind!r}"))
                        continue
                    entries = {}
                    if root_group in f:
                        for song_id, g in f[root_group].items():
                            entries[song_id] = Entry(song_id, path, g.name.lstrip("/"),
                                                     _attrs_dict(g.attrs), file_attrs)
            except Exception as e:  # noqa: BLE001 - any unreadable shard is reported, never crashed on
                index.problems.append((str(path), f"unreadable shard: {type(e).__name__}: {e}"))
                continue
            index.shards.append(path)
            index.update(entries)  # later (higher-numbered) shards win
        return index

    # --- statistics ---

    def write_feature_stats(self, index: Index | None = None) -> dict:
        """Recompute ``stats.json`` from the per-song band sums of the songs in the index.

        For each stage, the per-band mean and (population) std over all
        unpadded frames of all stored songs, from the float64 attrs
        ``<stage>_band_sum`` and ``<stage>_band_sumsq`` and the count
        ``n_frames`` of each song. Written atomically; returns the dict.
        Because it is recomputed from the stored songs, it always describes
        exactly the songs a reader of the index sees.
        """
        if index is None:
            index = self.index("features")
        stats = feature_stats(index.values())
        write_json_atomic(self.stats_path, stats)
        return stats

    def read_stats(self) -> dict:
        """The parsed ``stats.json``; :class:`StoreError` when missing."""
        try:
            return json.loads(self.stats_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StoreError(self.stats_path, "no stats.json: run mapkit extract first") from None


def feature_stats(entries) -> dict:
    """Per-band mean and std of each stage over ``entries`` (feature :class:`Entry` objects).

    Returns ``{"settings_hash", "n_songs", "n_frames", "schema_version",
    "<stage>": {"mean": nested list, "std": nested list}}``; mean and std are
    None for an empty store. Raises :class:`StoreError` when the entries mix
    settings hashes.
    """
    entries = list(entries)
    hashes = sorted({e.settings_hash for e in entries})
    if len(hashes) > 1:
        raise StoreError(entries[0].shard.parent, f"songs with several settings hashes {hashes}")
    out = {"schema_version": mapkit.SCHEMA_VERSION, "settings_hash": hashes[0] if hashes else None,
           "n_songs": len(entries), "n_frames": int(sum(int(e.attrs["n_frames"]) for e in entries))}
    for stage in FEATURE_STAGES:
        if not entries:
            out[stage] = {"mean": None, "std": None}
            continue
        total = sum(np.asarray(e.attrs[f"{stage}_band_sum"], dtype=np.float64) for e in entries)
        total_sq = sum(np.asarray(e.attrs[f"{stage}_band_sumsq"], dtype=np.float64) for e in entries)
        n = out["n_frames"]
        mean = total / n
        # E[x^2] - E[x]^2 in float64: values are log-mels of magnitude < 100, so no cancellation worth fearing.
        std = np.sqrt(np.maximum(total_sq / n - mean * mean, 0.0))
        out[stage] = {"mean": _finite_list(mean), "std": _finite_list(std)}
    return out


def _finite_list(a: np.ndarray):
    if not np.all(np.isfinite(a)):
        raise ValueError("non-finite feature statistics")
    return [[float(x) for x in row] for row in a] if a.ndim == 2 else [float(x) for x in a]
