"""The store: a folder of HDF5 shards, its lock, its index and its statistics.

The layout is a public contract (docs/design.md §4)::

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
- **Checksums.** Every dataset carries ``crc32`` (:func:`data_checksum`) and
  every group of an item, and the shard's root, ``attrs_crc32``
  (:func:`attrs_checksum`), computed by the parent as it writes;
  ``mapkit validate`` verifies them.
- **Bad ground.** A store folder that cannot be made or written (a file in
  the way, read-only, immutable) is a :class:`~mapkit.errors.StoreError`
  naming the path and the reason. Disk space is reserved in the shard file
  before each item (:meth:`ShardWriter.reserve`), so HDF5 never meets a full
  disk (it would crash): the run stops with :class:`DiskFullError`, the store
  valid. The lock file and temporary files are opened with ``O_NOFOLLOW``
  (temporary files and shards with ``O_EXCL`` too): a planted link is never
  written through.
- **All or nothing.** ``build-targets --rebuild-vocab`` commits the new
  ``vocab.json``, its shards and the removal of the old shards through a
  journal (:meth:`Store.commit_rebuild`), finished by the next writer if killed.
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
import stat
import time
import zlib
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import mapkit
from mapkit.datasets.schema import (ATTRS_CHECKSUM, DATA_CHECKSUM, FEATURE_STAGES, FILE_ATTRS, FLUSHED, KIND_ROOTS,
                                    LOCK_FILE, PARTIAL_SUFFIX, REBUILD_JOURNAL, REPORTS_DIR, SHARD_PATTERN, STATS_FILE,
                                    VOCAB_FILE, shard_name, shard_number)
from mapkit.errors import DiskFullError, StoreError

#: Rows per HDF5 chunk along the time (first) axis.
CHUNK_ROWS = 1024

#: Disk space reserved in the shard file before each item (:meth:`ShardWriter.reserve`): ``DISK_FACTOR``
#: times the item's bytes plus ``DISK_MARGIN_BYTES`` for HDF5's own bytes. The unused reserve is trimmed
#: when the shard is committed.
DISK_FACTOR = 1.05
DISK_MARGIN_BYTES = 1 << 20



def checksum_start(path: str) -> int:
    """The CRC-32 state a checksum of the object at HDF5 path ``path`` (e.g. ``/songs/x/placement``) starts from.

    Binding the checksum to the path means a dataset moved or swapped to
    another song (with its attribute) no longer matches.
    """
    return zlib.crc32(path.encode("utf-8") + b"\0")


def checksum_update(crc: int, block) -> int:
    """Continue CRC-32 ``crc`` over the bytes of ``block`` (C order, its dtype's bytes as stored)."""
    raw = np.ascontiguousarray(block).reshape(-1).view(np.uint8)
    return zlib.crc32(raw, crc)


def data_checksum(path: str, array) -> int:
    """Checksum of a dataset: ``zlib.crc32(values, zlib.crc32(path + NUL))``.

    ``path`` is the dataset's absolute HDF5 path (``/songs/<song_id>/placement``);
    ``values`` are the bytes of the array in C order (row blocks concatenated
    give the same result, so a reader may stream it). Stored as the dataset's
    :data:`DATA_CHECKSUM` attribute.
    """
    return checksum_update(checksum_start(path), np.asarray(array))


def _attr_bytes(value) -> bytes:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")
    if isinstance(value, str):
        return b"s" + value.encode("utf-8", "surrogateescape")
    a = np.asarray(value)
    if a.dtype.kind == "O":  # arrays of strings
        return b"o" + repr(a.shape).encode() + b"\0".join(_attr_bytes(v) for v in a.ravel())
    return b"n" + a.dtype.str.encode() + repr(a.shape).encode() + a.tobytes()


def attrs_checksum(attrs, path: str) -> int:
    """Checksum of an HDF5 object's attributes (all but :data:`ATTRS_CHECKSUM` itself), as read back.

    CRC-32 started by :func:`checksum_start` of the object's path, over each
    attribute in name order: its name, NUL, its value (a string as ``s`` +
    UTF-8; a number or array as ``n`` + numpy dtype string + shape + bytes),
    NUL. A changed, added or removed attribute changes it.
    """
    crc = checksum_start(path)
    for name in sorted(k for k in attrs.keys() if k != ATTRS_CHECKSUM):
        crc = zlib.crc32(name.encode("utf-8") + b"\0" + _attr_bytes(attrs[name]) + b"\0", crc)
    return crc


def _seal_group_attrs(group):
    """Set :data:`ATTRS_CHECKSUM` on ``group`` and every group below it (after their attrs are written)."""
    import h5py

    groups = [group]
    group.visititems(lambda _name, obj: groups.append(obj) if isinstance(obj, h5py.Group) else None)
    for g in groups:
        g.attrs[ATTRS_CHECKSUM] = attrs_checksum(g.attrs, g.name)


def _free_bytes(directory) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def _disk_full(directory, free: int, need: int) -> DiskFullError:
    return DiskFullError(directory, f"disk full: {free / 2**20:.1f} MiB free, the next item needs "
                                    f"{need / 2**20:.1f} MiB; the store is left valid: free some space and run "
                                    "the same command again")


def make_folder(path) -> Path:
    """``mkdir -p path``, or a :class:`~mapkit.errors.StoreError` naming the path and why not."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise StoreError(path, "exists and is not a folder") from None
    except NotADirectoryError:
        parent = next((p for p in path.parents if p.exists()), None)
        raise StoreError(path, f"its parent {parent} is a file, not a folder") from None
    except OSError as e:
        raise StoreError(path, f"cannot create folder: {os_error_reason(e)}") from None
    return path


def utc_timestamp() -> str:
    """The current UTC time as ``YYYYmmddTHHMMSSZ`` (safe in file names)."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _fsync_dir(directory: Path):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def os_error_reason(e: OSError) -> str:
    """A short human reason for an OSError met on the store (without the path, which the caller names)."""
    reasons = {errno.ENOSPC: "no space left on the disk", errno.EDQUOT: "disk quota exceeded",
               errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
               errno.EPERM: "operation not permitted (immutable or not ours)",
               errno.ENOTDIR: "a parent of it is a file, not a folder",
               errno.ELOOP: "is a symbolic link (never followed for writing)", errno.EISDIR: "is a folder"}
    return reasons.get(e.errno) or (e.strerror or f"{type(e).__name__}: {e}")


def _open_new_file(path: Path, mode: int = 0o644) -> int:
    """Create ``path`` for writing with ``O_EXCL | O_NOFOLLOW``: a link there is never followed.

    A leftover of the same name (a killed run of the same pid, or a link
    planted there) is removed first: ``unlink`` removes a link, not its target.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags, mode)
    except FileExistsError:
        path.unlink()
        return os.open(path, flags, mode)


def write_json_atomic(path, obj) -> Path:
    """Write ``obj`` as JSON to ``path`` through a temporary file and a rename.

    A reader sees the old file or the new one, never a half-written one. The
    temporary file is created with ``O_EXCL | O_NOFOLLOW`` (a symbolic link in
    its place is never followed), and the rename replaces a link at ``path``
    itself, never its target. An OSError (full disk, read-only folder) becomes
    a :class:`~mapkit.errors.StoreError` naming ``path``; the old file stays.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with os.fdopen(_open_new_file(tmp), "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with suppress(OSError):
            tmp.unlink()
        raise StoreError(path, f"cannot write: {os_error_reason(e)}") from None
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
                 chunk_rows: int = CHUNK_ROWS, publish: bool = True):
        if max_items < 1 or max_bytes < 1 or chunk_rows < 1:
            raise ValueError("max_items, max_bytes and chunk_rows must be positive")
        self.directory = Path(directory)
        self.file_attrs = dict(file_attrs)
        self.max_items = int(max_items)
        self.max_bytes = int(max_bytes)
        self.chunk_rows = int(chunk_rows)
        self._file = None
        self._reserve_fd: int | None = None
        self._partial: Path | None = None
        self._final: Path | None = None
        self._items = 0
        self._bytes = 0
        #: Complete shards committed by this writer, in order.
        self.committed: list[Path] = []
        #: False: complete shards stay ``.partial`` (closed and fsynced) in :attr:`pending` as
        #: ``(partial, final)``, for the caller to publish all at once (:meth:`Store.commit_rebuild`).
        self.publish = publish
        self.pending: list[tuple[Path, Path]] = []

    def _next_number(self) -> int:
        numbers = [n for n in (shard_number(p.name) for p in self.directory.iterdir()) if n is not None]
        return max(numbers, default=0) + 1

    def _open(self):
        import h5py

        make_folder(self.directory)
        number = self._next_number()
        self._final = self.directory / shard_name(number)
        self._partial = self._final.with_name(self._final.name + PARTIAL_SUFFIX)
        # "x": HDF5 creates the file with O_CREAT | O_EXCL, so a link in its place is never followed
        try:
            self._file = h5py.File(self._partial, "x")
        except OSError as e:
            raise StoreError(self._partial, f"cannot create shard: {os_error_reason(e)}") from None
        for k, v in self.file_attrs.items():
            self._file.attrs[k] = v
        self._file.attrs["created"] = utc_timestamp()
        self._file.attrs[ATTRS_CHECKSUM] = attrs_checksum(self._file.attrs, "/")
        # a second descriptor, only to reserve disk space (:meth:`reserve`); O_NOFOLLOW: HDF5 just created it
        self._reserve_fd = os.open(self._partial, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._file.create_dataset(FLUSHED, shape=(0,), maxshape=(None,), chunks=(64,), dtype=h5py.string_dtype())
        self._items = 0
        self._bytes = 0

    def reserve(self, need: int):
        """Reserve ``need`` bytes of disk space for the next item, or raise :class:`DiskFullError`.

        HDF5 cannot recover from a full disk (it crashes the process), so it
        must never meet one: before each item the shard file is extended with
        ``posix_fallocate`` to HDF5's end of allocation plus ``need``
        (``DISK_FACTOR * item bytes + DISK_MARGIN_BYTES``). The blocks are then
        the file's, and HDF5 writes into them. When the disk has no room, the
        run stops here, before the item is begun; the shard in progress is
        left ``.partial`` (deleted by the next run), so the store stays valid.
        """
        try:
            os.posix_fallocate(self._reserve_fd, 0, int(self._file.id.get_filesize()) + need)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise _disk_full(self.directory, _free_bytes(self.directory), need) from None
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                return  # a file system without fallocate: only the check of free space at each shard's start
            raise StoreError(self._partial, f"cannot write: {os_error_reason(e)}") from None

    def write(self, item: ShardItem) -> Path:
        """Write ``item`` and flush; returns the path its shard will have once complete.

        Every dataset gets its checksum attribute (:data:`DATA_CHECKSUM`, see
        :func:`data_checksum`) and every group of the item its attributes'
        checksum (:data:`ATTRS_CHECKSUM`). Raises
        :class:`~mapkit.errors.StoreError` when the shard in progress already
        holds ``item.group``, and :class:`DiskFullError` (before writing
        anything) when the disk has no room for the item.
        """
        need = int(DISK_FACTOR * item.nbytes) + DISK_MARGIN_BYTES
        if self._file is None:
            make_folder(self.directory)
            free = _free_bytes(self.directory)
            if free < need:  # before HDF5 creates anything it would have to flush to a full disk
                raise _disk_full(self.directory, free, need)
            self._open()
        self.reserve(need)
        f = self._file
        if item.group in f:
            raise StoreError(self._partial, f"{item.group} written twice into one shard")
        try:
            self._write_item(f, item)
        except OSError as e:  # the shard in progress is abandoned by the caller (``with``): it never counts
            raise StoreError(self._partial, f"cannot write {item.group}: {os_error_reason(e)}") from None
        self._items += 1
        self._bytes += item.nbytes
        final = self._final
        if self._items >= self.max_items or self._bytes >= self.max_bytes:
            self._commit()
        return final

    def _write_item(self, f, item: ShardItem):
        g = f.create_group(item.group)
        for k, v in item.attrs.items():
            g.attrs[k] = v
        for name, array in item.datasets.items():
            array = np.asarray(array)
            chunks = None
            if array.ndim >= 1 and array.shape[0] > 0:
                chunks = (min(self.chunk_rows, array.shape[0]),) + array.shape[1:]
            ds = g.create_dataset(name, data=array, chunks=chunks)
            ds.attrs[DATA_CHECKSUM] = data_checksum(ds.name, array)
        for sub, attrs in item.subgroup_attrs.items():
            sg = g.require_group(sub)
            for k, v in attrs.items():
                sg.attrs[k] = v
        _seal_group_attrs(g)
        flushed = f[FLUSHED]  # the item is whole once this flush is done: a later run may adopt it
        flushed.resize((flushed.shape[0] + 1,))
        flushed[-1] = item.group
        f.flush()

    def _commit(self):
        if self._file is None:
            return
        import h5py

        try:
            del self._file[FLUSHED]  # complete: nothing left to adopt
            self._file.flush()
            self._file.close()
            self._file = None
            # opened for writing again, HDF5 trims the file to its end of allocation: the unused reserve goes
            h5py.File(self._partial, "r+").close()
            os.fsync(self._reserve_fd)
            self._close_reserve()
            if self.publish:
                os.replace(self._partial, self._final)
                _fsync_dir(self.directory)
        except OSError as e:
            raise StoreError(self._partial, f"cannot commit shard: {os_error_reason(e)}") from None
        if self.publish:
            self.committed.append(self._final)
        else:
            self.pending.append((self._partial, self._final))
        self._partial = self._final = None

    def close(self):
        """Commit the shard in progress (if any)."""
        self._commit()

    def abandon(self):
        """Close the shard in progress without committing it (it stays ``.partial``)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._close_reserve()

    def _close_reserve(self):
        if self._reserve_fd is not None:
            os.close(self._reserve_fd)
            self._reserve_fd = None

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
    """The attributes every shard file carries (docs/design.md §4).

    ``schema_version``, ``mapkit_version``, ``kind`` ("features" or "targets"),
    ``settings_json`` and ``settings_hash``; :class:`ShardWriter` adds ``created``.
    """
    if kind not in KIND_ROOTS:
        raise ValueError(f"unknown shard kind {kind!r}")
    values = {
        "schema_version": mapkit.SCHEMA_VERSION,
        "mapkit_version": mapkit.__version__,
        "kind": kind,
        "settings_json": settings.to_json(),
        "settings_hash": settings.hash,
    }
    # schema.FILE_ATTRS is the one list: a name added there without a value here fails at once (KeyError)
    return {name: values[name] for name in FILE_ATTRS if name != "created"}


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


def attrs_dict(attrs) -> dict:
    """HDF5 attributes as a dict of plain Python values (bytes decoded, numpy scalars as Python numbers)."""
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


def old_schema_message(version) -> str:
    """Why a shard of an earlier store schema is refused, and what to do."""
    return (f"written with store schema {version}, this mapkit ({mapkit.__version__}) reads schema "
            f"{mapkit.SCHEMA_VERSION}: re-run mapkit extract and build-targets into a new --store (or delete "
            "this store's features/, targets/, vocab.json and stats.json and re-run them)")


def old_schema(path, version) -> None:
    """Raise :class:`~mapkit.errors.StoreError` when ``version`` is an earlier schema than this mapkit's.

    A store of an earlier schema lacks what this mapkit relies on (e.g. the
    checksums of schema 2): it is refused as a whole, never half-read.
    """
    if isinstance(version, (int, np.integer)) and not isinstance(version, bool) and version < mapkit.SCHEMA_VERSION:
        raise StoreError(path, old_schema_message(int(version)))
def _read_whole_item(f, group: str) -> "ShardItem | None":
    """The item at ``group`` of an open shard, every dataset read in full, or None when any part fails to read."""
    try:
        g = f[group]
        datasets, subgroup_attrs = {}, {}

        def visit(name, obj):
            if hasattr(obj, "shape"):
                datasets[name] = obj[()]
                if int(obj.attrs[DATA_CHECKSUM]) != data_checksum(obj.name, datasets[name]):
                    raise ValueError(f"{obj.name}: checksum mismatch")  # torn or damaged: not adopted
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
    """A store folder (docs/design.md §4). Creating the object touches nothing on disk."""

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
        return self.root / REPORTS_DIR

    @property
    def vocab_path(self) -> Path:
        return self.root / VOCAB_FILE

    @property
    def stats_path(self) -> Path:
        return self.root / STATS_FILE

    @property
    def lock_path(self) -> Path:
        return self.root / LOCK_FILE

    def shard_dir(self, kind: str) -> Path:
        """``features/`` or ``targets/``."""
        if kind not in KIND_ROOTS:
            raise ValueError(f"unknown shard kind {kind!r}")
        return self.root / kind

    def create(self):
        """Create the store folders (idempotent).

        Raises :class:`~mapkit.errors.StoreError` naming the path and the
        reason when one cannot be made (a file in the way, a parent that is a
        file, a read-only or immutable folder).
        """
        for d in (self.root, self.features_dir, self.targets_dir, self.reports_dir):
            make_folder(d)

    def _open_lock_file(self) -> int:
        """The lock file's descriptor, opened without following a link (``O_NOFOLLOW``): never truncates a target."""
        path = self.lock_path
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise StoreError(path, "is a symbolic link; mapkit never follows it for writing: remove it") from None
            raise StoreError(path, f"cannot open the store's lock file: {os_error_reason(e)}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StoreError(path, "is not a regular file: remove it")
        return fd

    def writer_holding_lock(self) -> str | None:
        """The holder line of the run writing the store now (``pid N, mapkit extract, since T``), or None.

        Probes the lock with a shared, non-blocking ``flock`` and releases it
        at once; creates nothing and never follows a link.
        """
        try:
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None  # no lock file (never written), or not one we may read: nobody holds it
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    return _lock_holder(fd)
                return None
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    # --- the one-writer lock ---

    @contextmanager
    def lock(self, command: str):
        """Hold the store's exclusive lock for a writing run of ``command``.

        Non-blocking: raises :class:`~mapkit.errors.StoreError` naming the store
        and the holder's pid and command when another run holds it, or naming
        the path and the reason when the store cannot be written (the lock
        file is never followed if it is a link). On taking the lock, a
        committed ``--rebuild-vocab`` that was interrupted is finished and
        ``.partial`` shards left by a killed run are deleted.
        """
        self.create()
        fd = self._open_lock_file()
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
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()}, mapkit {command}, since {utc_timestamp()}\n".encode(), 0)
                self.finish_rebuild()  # a committed change first: its shards are partial files until published
                self.recovered = self.recover_partials()
            except OSError as e:
                raise StoreError(self.root, f"cannot write in the store: {os_error_reason(e)}") from None
            yield self
        finally:
            if held:  # a finished run leaves no holder behind to be misreported
                with suppress(OSError):
                    os.ftruncate(fd, 0)
            # Closing the descriptor releases the flock.
            os.close(fd)

    # --- an all-or-nothing change of vocab.json and the targets shards (build-targets --rebuild-vocab) ---

    @property
    def rebuild_journal_path(self) -> Path:
        return self.root / REBUILD_JOURNAL

    def commit_rebuild(self, vocab_document: dict | None, pending, obsolete):
        """Publish a new ``vocab.json`` with the shards encoded with it, and delete ``obsolete`` shards: all or nothing.

        ``pending`` are the ``(partial, final)`` shards of a
        ``ShardWriter(publish=False)``, complete and fsynced. The commit point
        is the atomic write of a journal (``STORE/.rebuild-vocab.json``) that
        lists the whole change; it is then applied (:meth:`finish_rebuild`).
        A run killed before the journal leaves the old vocabulary and shards
        (its partial shards are deleted by the next run); one killed after it
        is finished by the next run that takes the lock, before anything else.
        """
        rel = lambda p: os.path.relpath(p, self.root)  # noqa: E731 - the journal survives moving the store
        write_json_atomic(self.rebuild_journal_path, {
            "vocab": vocab_document, "publish": [[rel(a), rel(b)] for a, b in pending],
            "delete": [rel(p) for p in obsolete]})
        self.finish_rebuild()

    def finish_rebuild(self) -> bool:
        """Apply a committed ``--rebuild-vocab`` journal, if any (idempotent); True when there was one.

        Call only while holding the lock (:meth:`lock` does, before deleting partial shards).
        """
        path = self.rebuild_journal_path
        try:
            journal = json.loads(path.read_text(encoding="utf-8"))
            pending, obsolete = journal["publish"], journal["delete"]
        except FileNotFoundError:
            return False
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StoreError(path, f"unreadable journal of an interrupted --rebuild-vocab: {e}") from None
        if journal.get("vocab") is not None:
            write_json_atomic(self.vocab_path, journal["vocab"])
        try:
            for partial, final in pending:
                if (self.root / partial).exists():
                    os.replace(self.root / partial, self.root / final)
            _fsync_dir(self.targets_dir)
            for old in obsolete:
                (self.root / old).unlink(missing_ok=True)
            path.unlink()
        except OSError as e:
            raise StoreError(path, f"cannot finish an interrupted --rebuild-vocab: {os_error_reason(e)}") from None
        return True
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
                if p.name.endswith(PARTIAL_SUFFIX) and shard_number(p.name) is not None:
                    adopted += _adopt_partial(p)
                    p.unlink()
        return adopted

    # --- reading ---

    def shards(self, kind: str) -> list[Path]:
        """Complete shards of ``kind``, in shard-number order."""
        d = self.shard_dir(kind)
        if not d.is_dir():
            return []
        found = [(n, p) for p in d.iterdir()
                 if SHARD_PATTERN.match(p.name) and (n := shard_number(p.name)) is not None]
        return [p for _, p in sorted(found)]

    def index(self, kind: str) -> Index:
        """``{song_id: Entry}`` of ``kind`` ("features" or "targets"), from complete shards only.

        A song in several shards is taken from the highest-numbered one. A shard
        that cannot be opened, or has an unknown schema version or another
        kind, is listed in ``index.problems`` and skipped. A shard of an earlier
        schema raises :class:`~mapkit.errors.StoreError` (re-run extract and
        build-targets into a new store).
        """
        root_group = KIND_ROOTS[kind] if kind in KIND_ROOTS else None
        if root_group is None:
            raise ValueError(f"unknown shard kind {kind!r}")
        index = Index(kind)
        for path in self.shards(kind):
            try:
                with open_shard(path, features=(kind == "features")) as f:
                    file_attrs = attrs_dict(f.attrs)
                    old_schema(path, file_attrs.get("schema_version"))
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
                                                     attrs_dict(g.attrs), file_attrs)
            except StoreError:
                raise
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

    # --- the vocabulary ---

    def read_vocab_json(self, missing_ok: bool = False) -> dict | None:
        """The parsed ``vocab.json``; None when it is missing and ``missing_ok``.

        Raises :class:`~mapkit.errors.StoreError` naming the file when it is
        missing (``"no vocab.json: run mapkit build-targets first"``) or is not JSON.
        """
        try:
            return json.loads(self.vocab_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            if missing_ok:
                return None
            raise StoreError(self.vocab_path, "no vocab.json: run mapkit build-targets first") from None
        except (OSError, ValueError) as e:
            raise StoreError(self.vocab_path, f"unreadable vocabulary: {e}") from None

    def read_vocab(self, missing_ok: bool = False):
        """``vocab.json`` as a :class:`~mapkit.preprocess.targets.Vocabulary` (its hash checked), or None.

        None only when the file is missing and ``missing_ok``; any other
        problem is a :class:`~mapkit.errors.StoreError` naming the file.
        """
        from mapkit.preprocess.targets import Vocabulary

        document = self.read_vocab_json(missing_ok)
        if document is None:
            return None
        try:
            return Vocabulary.from_json(document)
        except (ValueError, KeyError, TypeError) as e:
            raise StoreError(self.vocab_path, f"unreadable vocabulary: {e}") from None

    def write_vocab(self, document: dict) -> Path:
        """Write ``vocab.json`` atomically (:func:`write_json_atomic`); ``document`` as made by build-targets."""
        return write_json_atomic(self.vocab_path, document)

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
