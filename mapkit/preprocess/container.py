"""A level as a container of files: a folder or a BeatSaver ``.zip`` (read without unpacking).

Names are looked up case-insensitively (``Info.dat``, ``info.dat``, ``INFO.DAT``),
because levels made on Windows do not agree on case.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

from mapkit.errors import LevelError
from mapkit.preprocess.jsonio import load_json_bytes

#: Info file names, in order of preference (legacy v1 last).
INFO_NAMES = ("info.dat", "info.json")


class LevelContainer:
    """Read-only view of the files of one level folder or ``.zip``.

    ``name`` is the song id: the folder's name, or the zip's name without ``.zip``.
    A zip is read from its root folder (:func:`zip_root`): where its shallowest
    info file sits, so a zip of ``Song/Info.dat`` or ``Pack/Song/Info.dat``
    reads like a zip of ``Info.dat``. macOS ``__MACOSX/`` sidecar entries are
    not part of the level.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.is_zip = self.path.is_file() and self.path.suffix.lower() == ".zip"
        self.name = self.path.stem if self.is_zip else self.path.name
        self._zip = None
        if self.is_zip:
            try:
                self._zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError) as e:
                raise LevelError(self.path, f"not a readable zip file: {e}") from None
            members = [m for m in self._zip.namelist() if not m.endswith("/") and not _is_macos_sidecar(m)]
            prefix = zip_root(members)
            self._members = {m[len(prefix):]: m for m in members if m.startswith(prefix)}
        elif self.path.is_dir():
            self._members = None
        else:
            raise LevelError(self.path, "not a level folder or .zip file")

    def close(self):
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):  # picklable for worker processes: reopen lazily
        d = dict(self.__dict__)
        d["_zip"] = None
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        if self.is_zip:
            self._zip = zipfile.ZipFile(self.path)

    def names(self) -> list[str]:
        """Relative names of all files (posix separators)."""
        if self._members is not None:
            return sorted(self._members)
        out = []
        for root, _dirs, files in os.walk(self.path):
            rel = Path(root).relative_to(self.path)
            out.extend((rel / f).as_posix() for f in files)
        return sorted(out)

    def find(self, name: str) -> str | None:
        """The real name of file ``name`` in this level, matched case-insensitively, or None."""
        parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
        if not parts or ".." in parts or name.startswith(("/", "\\")):
            return None  # a name may not leave the level (``../``, absolute paths)
        rel = "/".join(parts)
        want = rel.lower()
        if self._members is None and (self.path / rel).is_file():
            return rel
        for n in self.names():
            if n.lower() == want:
                return n
        return None

    def read_bytes(self, name: str) -> bytes:
        """Bytes of file ``name`` (case-insensitive); :class:`LevelError` naming it when missing."""
        real = self.find(name)
        if real is None:
            raise LevelError(self.describe(name), "file not found")
        try:
            if self._members is not None:
                return self._zip.read(self._members[real])
            return (self.path / real).read_bytes()
        except (OSError, zipfile.BadZipFile, zlib_error()) as e:
            raise LevelError(self.describe(real), f"cannot read: {e}") from None

    def open(self, name: str):
        """A binary file object for ``name`` (zip members are read into memory)."""
        real = self.find(name)
        if real is None:
            raise LevelError(self.describe(name), "file not found")
        if self._members is not None:
            return io.BytesIO(self.read_bytes(real))
        return open(self.path / real, "rb")

    def describe(self, name: str) -> str:
        """A path-like string naming ``name`` inside this level, for error messages."""
        return f"{self.path}/{name}" if not self.is_zip else f"{self.path}!{name}"

    def info_name(self) -> str | None:
        """Name of the info file (``Info.dat`` any case, else legacy ``info.json``), or None."""
        for n in INFO_NAMES:
            real = self.find(n)
            if real is not None:
                return real
        return None

    def read_info_json(self):
        """The parsed info file; :class:`LevelError` when missing or unreadable."""
        name = self.info_name()
        if name is None:
            raise LevelError(self.path, "no Info.dat (or legacy info.json) in level")
        return load_json_bytes(self.read_bytes(name), self.describe(name))

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


def zlib_error():
    import zlib

    return zlib.error
