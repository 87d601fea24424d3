"""Find the songs in an input folder (docs/design.md §§2 and 4).

An input folder holds level folders and/or BeatSaver ``.zip`` files, or bare
audio files. The song id is the level folder's name, the zip's name without
``.zip``, or the audio file's name without extension; two inputs with one song
id are an error naming both paths.

Which folder is what:

- a folder with an info file (``Info.dat``/``info.json``, any case) is a level;
- below the input folder, a folder WITHOUT an info file that directly holds
  audio files is a *broken* level (an unfinished download or a level whose
  info file was lost): it is yielded as a level, so that ``extract`` and
  ``build-targets`` report it on its own ("no Info.dat (or legacy info.json)
  in level") instead of taking its ``song.egg`` as a bare song called "song";
  it is not searched further;
- a folder with an info file that holds no audio file but does hold level
  folders or ``.zip`` files is a *pack* whose info file is stray (a copy left
  in the wrong place): it is searched like any folder, and its info file is
  reported as ignored, so that it cannot hide the levels below it; this holds
  for the input folder itself too;
- any other folder is searched (symlink loops are detected, not followed twice);
- bare audio files are those directly in the input folder itself (or an audio
  file given as the input). Nested folders of bare audio (``songs/artist/x.ogg``
  with the input ``songs/``) are therefore read as broken levels named by
  their folder (``artist``): point at the folder that holds the audio files
  (``songs/artist/``) to read them as bare songs. A level folder cannot be told
  from a folder of songs without its info file, and one rule keeps every
  broken level visible.

Symbolic links: a link found below the input folder is followed only when
its target lies inside the input folder (a link to a sibling level is fine; a
link to ``/``, to ``/dev/zero`` or to another disk is not). A link leaving the
input folder is not followed, and is reported as ignored with its target. The
input folder (or file) named on the command line is itself always followed.
What is found is not opened here: a FIFO named ``x.ogg`` is a song, and
reading it fails with "not a regular file" (:mod:`mapkit.preprocess.limits`).

:func:`discover` takes an ``ignored`` list to which it appends ``(path,
reason)`` for every entry it skipped on purpose (links leaving the input,
stray info files); batch commands put them in their reports.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mapkit.errors import MapkitError
from mapkit.preprocess.container import INFO_NAMES

AUDIO_EXTENSIONS = (".egg", ".ogg", ".wav", ".flac", ".mp3")


@dataclass(frozen=True)
class Source:
    """One input song. ``kind`` is ``"level"`` (a level folder or .zip, possibly broken) or ``"audio"``."""

    song_id: str
    path: str
    kind: str


def _lower_names(path: Path) -> set[str]:
    try:
        return {n.lower() for n in os.listdir(path)}
    except OSError:
        return set()


def is_level_dir(path: Path) -> bool:
    return any(n in _lower_names(path) for n in INFO_NAMES)


def _holds_audio(names: set[str]) -> bool:
    return any(os.path.splitext(n)[1] in AUDIO_EXTENSIONS for n in names)


def _inside(root_real: str, path) -> bool:
    """Whether ``path`` (resolved through every link) lies inside the folder ``root_real``."""
    real = os.path.realpath(path)
    return os.path.commonpath([root_real, real]) == root_real


def _holds_levels(path: Path) -> bool:
    """Whether the folder ``path`` directly holds a level folder or a ``.zip`` file."""
    try:
        entries = list(os.scandir(path))
    except OSError:
        return False
    for e in entries:
        try:
            if e.name.lower().endswith(".zip") and not e.is_dir():
                return True
            if e.is_dir() and is_level_dir(Path(e.path)):
                return True
        except OSError:
            continue
    return False


def is_pack(path) -> bool:
    """Whether ``path`` is a pack folder with a stray info file: an info file, no audio, level folders or zips."""
    p = Path(path)
    names = _lower_names(p)
    return any(n in names for n in INFO_NAMES) and not _holds_audio(names) and _holds_levels(p)


def discover(input_dir, kinds=("level", "audio"), ignored: list | None = None) -> list[Source]:
    """All songs under ``input_dir``, sorted by song id (the rules are in the module docstring).

    Parameters
    ----------
    input_dir : path
        A folder, or a single level folder, ``.zip`` or audio file.
    kinds : tuple of str
        Which kinds to return: ``"level"`` (level folders, broken level
        folders, zips) and/or ``"audio"`` (bare audio files).
    ignored : list, optional
        When given, ``(path, reason)`` is appended for each entry skipped on
        purpose: a symbolic link leading outside the input folder, a stray
        info file in a pack folder.

    Returns
    -------
    list of Source

    Raises
    ------
    MapkitError
        ``input_dir`` does not exist, or two inputs share a song id (naming both paths).
    """
    root = Path(input_dir)
    if not root.exists():
        raise MapkitError(root, "input does not exist")
    found: dict[str, Source] = {}
    ignored = [] if ignored is None else ignored
    kind = _classify(root, ignored, top=True)
    if kind in ("level", "audio"):
        _add_source(found, Source(_song_id(root, kind), str(root), kind), kinds)
        return list(found.values())
    for p, k in _walk(root, ignored):
        _add_source(found, Source(_song_id(p, k), str(p), k), kinds)
    return sorted(found.values(), key=lambda s: s.song_id)


def _add_source(found: dict, src: Source, kinds) -> None:
    """Add ``src`` to ``found`` (``song_id -> Source``) when its kind is wanted; a second song id raises."""
    if src.kind not in kinds:
        return
    other = found.get(src.song_id)
    if other is not None:
        raise MapkitError(src.path, f"duplicate song id {src.song_id!r}: also {other.path}")
    found[src.song_id] = src


def _classify(p: Path, ignored: list, top: bool = False) -> str | None:
    """What ``p`` is: "level", "audio", "dir" (a folder to search) or None (anything else).

    ``top``: ``p`` is the input itself, where audio without an info file is a
    folder of bare songs. A stray info file in a pack is added to ``ignored``.
    """
    if p.is_dir():
        names = _lower_names(p)
        holds_audio = _holds_audio(names)
        if any(n in names for n in INFO_NAMES):
            if is_pack(p):
                info = next(n for n in sorted(os.listdir(p)) if n.lower() in INFO_NAMES)
                ignored.append((str(p / info), "stray info file ignored: its folder holds no audio but "
                                               "holds level folders or .zip files, so it is searched as a pack"))
                return "dir"
            return "level"
        # below the input folder, audio without an info file is a broken level, not bare songs
        return "level" if (not top and holds_audio) else "dir"
    suffix = p.suffix.lower()
    if suffix == ".zip":
        return "level"
    if suffix in AUDIO_EXTENSIONS:
        return "audio"
    return None


def _song_id(p: Path, kind: str) -> str:
    """A level folder's name, else the file name without its extension."""
    return p.name if (kind == "level" and p.is_dir()) else p.stem


def _walk(root: Path, ignored: list):
    """Yield ``(path, kind)`` of every level and audio file in the folder ``root``, searched depth-first.

    Each folder is searched once (symbolic link loops end); a link leading
    outside ``root`` is not followed but added to ``ignored``; entries that
    cannot be read are skipped.
    """
    root_real = os.path.realpath(root)
    seen = set()
    stack = [root]
    while stack:
        d = stack.pop()
        real = os.path.realpath(d)
        if real in seen:  # symlink loop or second link to one folder
            continue
        seen.add(real)
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            p = Path(e.path)
            try:
                if e.is_symlink() and not _inside(root_real, p):
                    ignored.append((str(p), f"symbolic link to {os.path.realpath(p)} leads outside the input "
                                            f"folder: not followed"))
                    continue
                if e.is_dir() and os.path.realpath(p) in seen:
                    continue  # a link back to the input folder or to a folder already searched
                k = _classify(p, ignored)
            except OSError:
                continue
            if k == "dir":
                stack.append(p)
            elif k is not None:
                yield p, k
