"""Find the songs in an input folder (DESIGN.md sections 2 and 8).

An input folder holds level folders and/or BeatSaver ``.zip`` files, or bare
audio files. Sub-folders that are not levels are searched too (symlink loops
are detected, not followed twice). The song id is the level folder's name,
the zip's name without ``.zip``, or the audio file's name without extension;
two inputs with one song id are an error naming both paths.
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
    """One input song. ``kind`` is ``"level"`` (folder or .zip with an info file) or ``"audio"``."""

    song_id: str
    path: str
    kind: str


def _is_level_dir(path: Path) -> bool:
    try:
        names = {n.lower() for n in os.listdir(path)}
    except OSError:
        return False
    return any(n in names for n in INFO_NAMES)


def discover(input_dir, kinds=("level", "audio")) -> list[Source]:
    """All songs under ``input_dir``, sorted by song id.

    A single level folder, ``.zip`` or audio file may be given instead of a folder.
    Raises :class:`MapkitError` when ``input_dir`` does not exist or two inputs
    share a song id.
    """
    root = Path(input_dir)
    if not root.exists():
        raise MapkitError(root, "input does not exist")
    found: dict[str, Source] = {}

    def add(src: Source):
        if src.kind not in kinds:
            return
        other = found.get(src.song_id)
        if other is not None:
            raise MapkitError(src.path, f"duplicate song id {src.song_id!r}: also {other.path}")
        found[src.song_id] = src

    def classify(p: Path):
        if p.is_dir():
            return "level" if _is_level_dir(p) else "dir"
        suffix = p.suffix.lower()
        if suffix == ".zip":
            return "level"
        if suffix in AUDIO_EXTENSIONS:
            return "audio"
        return None

    def song_id(p: Path, kind: str) -> str:
        return p.name if (kind == "level" and p.is_dir()) else p.stem

    kind = classify(root)
    if kind in ("level", "audio"):
        add(Source(song_id(root, kind), str(root), kind))
        return list(found.values())

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
                k = classify(p)
            except OSError:
                continue
            if k == "dir":
                stack.append(p)
            elif k is not None:
                add(Source(song_id(p, k), str(p), k))
    return sorted(found.values(), key=lambda s: s.song_id)
