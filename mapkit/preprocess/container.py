"""A level as a container of files: a folder or a BeatSaver ``.zip`` (read without unpacking).

Names are looked up case-insensitively (``Info.dat``, ``info.dat``, ``INFO.DAT``),
because levels made on Windows do not agree on case. One rule for folders and
zips: the exact spelling asked for wins; otherwise, of the names that match
case-insensitively, the first in code-point order (``Info.dat`` before
``info.dat``). The info file is looked up as ``Info.dat`` (then legacy
``info.json``), so of ``Info.dat`` and ``info.dat`` side by side ``Info.dat``
is read, and the level is warned about the other.

Reading is bounded (:mod:`mapkit.preprocess.limits`): only regular files are
read ("not a regular file" for FIFOs, devices, sockets; a zip member stored as
a symbolic link too); JSON files are capped at ``max_json_bytes`` and audio
taken out of a zip at ``max_audio_bytes`` ("too large when decompressed"), each
read in blocks, never whole before the cap is checked.

Symbolic links inside a level folder are followed only when their target lies
inside the level folder itself; a link leaving it is refused ("symbolic link
leads outside the level folder"), so a level cannot make mapkit read
``/dev/zero`` or another level's files.

A zip member that cannot be read (encrypted, an unsupported compression
method, a bad CRC) raises :class:`~mapkit.errors.LevelError` naming
``archive.zip!member``: only what needs that member fails.
"""

from __future__ import annotations

import io
import os
import stat
import zipfile
from contextlib import contextmanager
from pathlib import Path

from mapkit.errors import LevelError, MapkitError
from mapkit.preprocess.jsonio import load_json_bytes
from mapkit.preprocess.limits import NOT_REGULAR, ReadLimits, open_regular, read_capped, read_limits, too_large

#: Info file names (lowercase), in order of preference (legacy v1 last).
INFO_NAMES = ("info.dat", "info.json")
#: The spellings the info file is looked up by (exact spelling first, then any case).
INFO_SPELLINGS = ("Info.dat", "info.json")

LINK_OUTSIDE_LEVEL = "symbolic link leads outside the level folder (not followed)"


def _zip_errors() -> tuple:
    import lzma
    import zlib

    return (OSError, EOFError, ValueError, RuntimeError, NotImplementedError, zipfile.BadZipFile,
            zipfile.LargeZipFile, zlib.error, lzma.LZMAError)


def _zip_reason(e: BaseException) -> str:
    """Why a zip member could not be read, in words."""
    text = str(e)
    if isinstance(e, RuntimeError) and "encrypted" in text:
        return "encrypted zip member (password required): cannot read"
    if isinstance(e, NotImplementedError):
        return f"unsupported zip compression method: {text}"
    if isinstance(e, zipfile.BadZipFile):
        return f"corrupt zip member: {text}"
    return f"cannot read: {text}"


def _is_zip_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


class LevelContainer:
    """Read-only view of the files of one level folder or ``.zip``.

    ``name`` is the song id: the folder's name, or the zip's name without ``.zip``.
    A zip is read from its root folder (:func:`zip_root`): where its shallowest
    info file sits, so a zip of ``Song/Info.dat`` or ``Pack/Song/Info.dat``
    reads like a zip of ``Info.dat``. macOS ``__MACOSX/`` sidecar entries are
    not part of the level. ``limits`` caps what is read (default:
    :func:`~mapkit.preprocess.limits.read_limits`).
    """

    def __init__(self, path, limits: ReadLimits | None = None, memo: bool = False):
        self.path = Path(path)
        #: with ``memo``, :meth:`read_bytes` keeps what it read while the container is open, so that
        #: one pass over a level (resume hash, reading, community hash) reads each file once
        self._memo: dict | None = {} if memo else None
        self.limits = read_limits() if limits is None else limits
        self.is_zip = self.path.suffix.lower() == ".zip" and not self.path.is_dir()
        self.name = self.path.stem if self.is_zip else self.path.name
        self._zip = self._zip_file = None
        if self.is_zip:
            self._open_zip()
            members = [i for i in self._zip.infolist() if not i.is_dir() and not _is_macos_sidecar(i.filename)]
            prefix = zip_root([i.filename for i in members])
            self._members = {i.filename[len(prefix):]: i for i in members if i.filename.startswith(prefix)}
        elif self.path.is_dir():
            self._members = None
            self._real_root = os.path.realpath(self.path)
        else:
            raise LevelError(self.path, "not a level folder or .zip file")

    def _open_zip(self):
        try:
            self._zip_file = open_regular(self.path)
        except MapkitError as e:
            raise LevelError(e.path, e.reason) from None
        try:
            self._zip = zipfile.ZipFile(self._zip_file)
        except _zip_errors() as e:
            self.close()
            raise LevelError(self.path, f"not a readable zip file: {e}") from None

    def close(self):
        if self._zip is not None:
            self._zip.close()
            self._zip = None
        if self._zip_file is not None:
            self._zip_file.close()
            self._zip_file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):  # picklable for worker processes: reopen lazily
        d = dict(self.__dict__)
        d["_zip"] = d["_zip_file"] = None
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        if self.is_zip:
            self._open_zip()

    def names(self) -> list[str]:
        """Relative names of all files (posix separators); links to folders are not entered."""
        if self._members is not None:
            return sorted(self._members)
        out = []
        for root, _dirs, files in os.walk(self.path):
            rel = Path(root).relative_to(self.path)
            out.extend((rel / f).as_posix() for f in files)
        return sorted(out)

    def find(self, name: str) -> str | None:
        """The real name of file ``name`` in this level, or None (the rule is in the module docstring)."""
        parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
        if not parts or ".." in parts or name.startswith(("/", "\\")):
            return None  # a name may not leave the level (``../``, absolute paths)
        rel = "/".join(parts)
        if self._members is None:
            if os.path.lexists(self.path / rel):  # a FIFO or a broken link is found, and refused when read
                return rel
        elif rel in self._members:
            return rel
        want = rel.lower()
        return next((n for n in self.names() if n.lower() == want), None)

    def _open_file(self, real: str):
        """Open the folder file ``real``: a regular file whose target stays inside the level folder."""
        where = self.describe(real)
        target = os.path.realpath(self.path / real)
        if os.path.commonpath([self._real_root, target]) != self._real_root:
            raise LevelError(where, LINK_OUTSIDE_LEVEL)
        try:
            return open_regular(target, describe=where)
        except MapkitError as e:
            raise LevelError(e.path, e.reason) from None

    def read_bytes(self, name: str, limit: int | None = None) -> bytes:
        """Bytes of file ``name`` (case-insensitive), at most ``limit`` bytes (default: the JSON cap).

        Raises
        ------
        LevelError
            Naming the file: missing, not a regular file, a link leaving the
            level, larger than ``limit``, or an unreadable zip member.
        """
        real = self.find(name)
        if real is None:
            raise LevelError(self.describe(name), "file not found")
        limit = self.limits.max_json_bytes if limit is None else int(limit)
        if self._memo is not None and (real, limit) in self._memo:
            return self._memo[(real, limit)]
        data = self._read_bytes(real, limit)
        if self._memo is not None:
            self._memo[(real, limit)] = data
        return data

    def _read_bytes(self, real: str, limit: int) -> bytes:
        where = self.describe(real)
        try:
            if self._members is None:
                with self._open_file(real) as f:
                    return read_capped(f, limit, where, decompressed=False)
            info = self._members[real]
            if _is_zip_symlink(info):
                raise LevelError(where, f"{NOT_REGULAR} (a symbolic link stored in the zip)")
            if info.file_size > limit:
                raise LevelError(where, too_large(limit))
            with self._zip.open(info) as f:
                return read_capped(f, limit, where, decompressed=True)
        except LevelError:
            raise
        except MapkitError as e:
            raise LevelError(e.path, e.reason) from None
        except _zip_errors() as e:
            raise LevelError(where, _zip_reason(e)) from None

    def open(self, name: str, limit: int | None = None):
        """A binary file object for ``name``: folder files are streamed, zip members read into memory.

        ``limit`` caps a zip member (default: the audio cap); see :meth:`read_bytes` for the errors.
        """
        real = self.find(name)
        if real is None:
            raise LevelError(self.describe(name), "file not found")
        if self._members is not None:
            return io.BytesIO(self.read_bytes(real, self.limits.max_audio_bytes if limit is None else limit))
        return self._open_file(real)

    def describe(self, name: str) -> str:
        """A path-like string naming ``name`` inside this level, for error messages."""
        return f"{self.path}/{name}" if not self.is_zip else f"{self.path}!{name}"

    def info_name(self) -> str | None:
        """Name of the info file (``Info.dat`` any case, else legacy ``info.json``), or None."""
        for n in INFO_SPELLINGS:
            real = self.find(n)
            if real is not None:
                return real
        return None

    def other_info_names(self) -> list[str]:
        """Names that match the info file's name in another case (``info.dat`` beside ``Info.dat``): not read."""
        chosen = self.info_name()
        if chosen is None:
            return []
        return [n for n in self.names() if n.lower() == chosen.lower() and n != chosen]

    def read_info_json(self):
        """The parsed info file; :class:`LevelError` when missing or unreadable.

        With ``memo`` it is parsed once while the container is open: callers share the object, so they
        must not change it.
        """
        name = self.info_name()
        if name is None:
            raise LevelError(self.path, "no Info.dat (or legacy info.json) in level")
        key = ("info json", name)
        if self._memo is not None and key in self._memo:
            return self._memo[key]
        info = load_json_bytes(self.read_bytes(name), self.describe(name), self.limits.max_json_bytes)
        if self._memo is not None:
            self._memo[key] = info
        return info

    def audio_name(self) -> str:
        """Name of the song's audio file, from the info file, found case-insensitively.

        v2 ``_songFilename``, v4 ``audio.songFilename``, legacy v1 ``difficultyLevels[0].audioPath``.
        """
        info = self.read_info_json()
        iname = self.describe(self.info_name())
        wanted = None
        if isinstance(info, dict):
            wanted = info.get("_songFilename")
            if wanted is None and isinstance(info.get("audio"), dict):
                wanted = info["audio"].get("songFilename")
            if wanted is None and isinstance(info.get("difficultyLevels"), list):
                for d in info["difficultyLevels"]:
                    if isinstance(d, dict) and d.get("audioPath"):
                        wanted = d["audioPath"]
                        break
        if not isinstance(wanted, str) or not wanted:
            raise LevelError(iname, "info file names no song file")
        real = self.find(wanted)
        if real is None:
            raise LevelError(self.describe(wanted), "audio file named by the info file is missing")
        return real


@contextmanager
def opened(level):
    """``level`` as an open :class:`LevelContainer`: a path is opened (and closed after); a container is used as is.

    Lets one caller open a level once (e.g. with ``memo=True``) and hand it to
    several readers that also accept a path.
    """
    if isinstance(level, LevelContainer):
        yield level
        return
    with LevelContainer(level) as container:
        yield container


def _is_macos_sidecar(member: str) -> bool:
    return member.split("/", 1)[0] == "__MACOSX"


def zip_root(members: list[str]) -> str:
    """The folder prefix (``""`` or ``"a/b/"``) a level zip is read from, given its file members.

    The folder of the shallowest info file (``info.dat`` before ``info.json``,
    then by name). Without any info file: the single top-level folder when
    every member not starting with a dot sits in one, else the zip's root.
    Dot-entries (``.DS_Store``) and ``__MACOSX/`` never decide the root.

    >>> zip_root(["Song/Info.dat", "Song/song.egg", "__MACOSX/Song/._Info.dat", ".DS_Store"])
    'Song/'
    >>> zip_root(["Info.dat", "Extra/info.dat"])
    ''
    """
    members = [m for m in members
               if not _is_macos_sidecar(m) and not any(part.startswith(".") for part in m.split("/"))]
    infos = [m for m in members if m.rsplit("/", 1)[-1].lower() in INFO_NAMES]
    if infos:
        best = min(infos, key=lambda m: (m.count("/"), INFO_NAMES.index(m.rsplit("/", 1)[-1].lower()), m))
        return best[: best.rfind("/") + 1]
    tops = {m.split("/", 1)[0] for m in members}
    if len(tops) == 1 and all("/" in m for m in members):
        return tops.pop() + "/"
    return ""

