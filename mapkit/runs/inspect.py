"""``mapkit inspect``: what mapkit reads from levels, for people (text) or tools (one JSON document per level).

Each level is read as build-targets reads it (:func:`mapkit.preprocess.levels.read_level`) and, when its
audio can be read, given build-targets' verdict on notes beyond the audio
(:func:`mapkit.preprocess.difficulty_targets.check_against_audio`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from mapkit.errors import LevelError
from mapkit.preprocess.levels import Level, read_level
from mapkit.preprocess.notes import BOMB
from mapkit.settings import TargetSettings



@dataclass
class InspectResult:
    """One inspected input: its ``level`` and rendered ``text``, or the ``error`` that made it unreadable."""

    path: str
    level: Level | None = None
    text: str = ""
    error: Exception | None = None


def format_level(level: Level) -> str:
    """A human-readable report of ``level``: info facts, then one block per difficulty."""
    bpm = f"{level.bpm:g}" if math.isfinite(level.bpm) else "invalid"
    offset = (f"{level.song_time_offset:g} s" if level.song_time_offset_error is None
              else f"invalid ({level.song_time_offset_error})")
    lines = [f"{level.song_id}  ({level.path})",
             f"  info {level.info_filename} v{level.info_version} | BPM {bpm} | audio {level.song_filename} | "
             f"song offset {offset} | characteristics: {', '.join(level.characteristics)}"]
    if level.quarantine:
        lines.append(f"  QUARANTINED: {level.quarantine}")
    lines.extend(f"  warning: {w}" for w in level.warnings)
    for d in level.difficulties:
        version = f"v{d.declared_version}" if d.declared_version else "no version"
        if d.sniffed_version:
            version += f" (keys: v{d.sniffed_version}{', MISMATCH' if d.version_mismatch else ''})"
        lines.append(f"  {d.characteristic}/{d.difficulty}  {d.filename}  {version}"
                     + (f"  NJS {d.njs:g}" if d.njs is not None else ""))
        if d.tempo is not None:
            lines.append(f"    tempo: {d.tempo.describe()}")
        if d.counts:
            c = d.counts
            kept_bombs = int((d.notes["color"] == BOMB).sum())
            lines.append(f"    read: notes {c['notes']}, bombs {c['bombs']}, obstacles {c['obstacles']}, "
                         f"arcs {c['arcs']}, chains {c['chains']} | kept: notes {len(d.notes) - kept_bombs}, "
                         f"bombs {kept_bombs}")
            drops = ", ".join(f"{r} {n}" for r, n in d.drops.items()) or "none"
            lines.append(f"    dropped: {drops}")
        if d.objects_read:
            from mapkit.preprocess.objects import format_objects
            lines.extend(format_objects(d.objects_read, d.objects, d.objects_drops))
        lines.append(f"    {'QUARANTINED: ' + d.quarantine if d.quarantine else 'ok'}")
        lines.extend(f"    warning: {w}" for w in d.warnings)
    return "\n".join(lines)


def expand_level_paths(path) -> list:
    """A level, or the levels in a folder of levels (so ``inspect levels/`` works)."""
    from mapkit.preprocess.sources import is_level_dir, discover, is_pack

    p = Path(path)
    if not p.exists():
        raise LevelError(p, "no such file or folder")
    if p.is_dir() and (not is_level_dir(p) or is_pack(p)):
        found = [s.path for s in discover(p, kinds=("level",))]
        if found:
            return found
    return [path]


def inspect_levels(paths, settings: TargetSettings = TargetSettings(), as_json: bool = False,
                   characteristic: str | None = "Standard"):
    """Read each level and render it: human text, or one JSON document with every note.

    Parameters
    ----------
    paths : iterable of str or Path
        Level folders or ``.zip`` files; a folder that is not itself a level
        stands for the levels found in it.
    settings : TargetSettings
    as_json : bool
        Render ``Level.to_json(notes=True)`` as one line of JSON instead of text.
    characteristic : str or None
        As in :func:`read_level`.

    When the level's audio is readable, every difficulty is also checked
    against it as build-targets checks it (notes beyond the audio's end are
    dropped and can quarantine the difficulty); otherwise a warning says so.

    Yields
    ------
    InspectResult
        One per level, in order; an unreadable level has ``error`` set (a
        :class:`~mapkit.errors.MapkitError` naming the file and the reason)
        and the next one is still read.
    """
    import json

    from mapkit.errors import MapkitError

    for path in paths:
        try:
            expanded = expand_level_paths(path)
        except MapkitError as err:
            yield InspectResult(str(path), error=err)
            continue
        for p in expanded:
            try:
                level = read_level(p, settings=settings, characteristic=characteristic)
            except MapkitError as err:
                yield InspectResult(str(p), error=err)
                continue
            from mapkit.preprocess.difficulty_targets import check_against_audio

            check_against_audio(level, p, settings)  # the verdict build-targets gives (notes beyond the audio)
            text = json.dumps(level.to_json(notes=True)) if as_json else format_level(level)
            yield InspectResult(str(p), level=level, text=text)
