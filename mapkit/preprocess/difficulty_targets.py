"""Targets of one difficulty, all but its tokens: notes on frames, drops, quarantine, states (docs/design.md §3).

``mapkit build-targets`` computes these in its workers; ``mapkit inspect``
applies the same verdict when it can read the level's audio
(:func:`check_against_audio`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from mapkit.errors import MapkitError
from mapkit.preprocess.notes import BOMB, STORED_NOTE_DTYPE
from mapkit.preprocess.objects import BEYOND_AUDIO, place_difficulty_objects
from mapkit.preprocess.targets import note_states
from mapkit.preprocess.timebase import FPS, frame_of, frame_time, song_end_beat
from mapkit.settings import TargetSettings





@dataclass
class DifficultyTargets:
    """Everything about one difficulty except its tokens (which need the vocabulary).

    ``notes`` are the kept notes (``STORED_NOTE_DTYPE``, sorted by time, column,
    row); ``state_frames``/``states`` the note-bearing frames and their 12-cell
    states; ``state_times_s``/``state_beats`` the time and beat of the earliest
    note of each state; ``drops`` every drop by reason, those of level reading
    plus ``beyond_audio``; ``quarantine`` the reason not to use it, or None
    (then the arrays are empty). ``attrs`` are the level-reading facts stored
    as attributes of the difficulty group.
    """

    characteristic: str
    difficulty: str
    quarantine: str | None
    notes: np.ndarray
    state_frames: np.ndarray
    states: np.ndarray
    state_times_s: np.ndarray
    state_beats: np.ndarray
    end_beat: float
    collisions: int
    drops: dict
    attrs: dict = field(default_factory=dict)
    #: walls, arcs, chains, events placed on frames (mapkit.preprocess.objects.place_objects)
    objects: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        """``Characteristic/Difficulty``: the group path under the level, and the report item name."""
        return f"{self.characteristic}/{self.difficulty}"


def inside_audio(notes: np.ndarray, n_frames: int, fps: int = FPS) -> np.ndarray:
    """Which notes build-targets keeps: those whose frame ``frame_of(time_s)`` lies in ``[0, T)`` (a bool mask)."""
    if not len(notes):
        return np.zeros(0, dtype=bool)
    frames = frame_of(np.asarray(notes["time_s"], dtype=np.float64), fps)
    return (frames >= 0) & (frames < n_frames)


def place_notes(notes: np.ndarray, n_frames: int, fps: int = FPS):
    """Put notes on frames: ``(kept STORED_NOTE_DTYPE array, beyond_audio count)``.

    Parameters
    ----------
    notes : np.ndarray of NOTE_DTYPE
        Sorted by (time_s, column, row).
    n_frames : int
        T of the song.
    fps : int

    Returns
    -------
    stored : np.ndarray of STORED_NOTE_DTYPE
        The notes whose frame ``frame_of(time_s)`` lies in [0, T), in the same order.
    n_beyond : int
        How many were dropped (frame < 0 or >= T).
    """
    frames = frame_of(np.asarray(notes["time_s"], dtype=np.float64), fps) if len(notes) else np.zeros(0, np.int64)
    inside = inside_audio(notes, n_frames, fps)
    kept = notes[inside]
    out = np.zeros(len(kept), dtype=STORED_NOTE_DTYPE)
    for name in kept.dtype.names:
        out[name] = kept[name]
    out["frame"] = frames[inside]
    return out, int((~inside).sum())


def _jsonable(value):
    return json.dumps(value, sort_keys=True, default=str)


def difficulty_targets(diff, n_frames: int, info_bpm: float, settings: TargetSettings = TargetSettings()
                       ) -> DifficultyTargets:
    """Targets of one difficulty as read by :func:`~mapkit.preprocess.levels.read_level`, on a song of T frames.

    Parameters
    ----------
    diff : mapkit.preprocess.levels.Difficulty
    n_frames : int
        T, from the song's features.
    info_bpm : float
        The info file's BPM (stored as an attribute).
    settings : TargetSettings
        ``fps`` and ``max_drop_fraction``.

    Returns
    -------
    DifficultyTargets
        Quarantined (with empty arrays) when reading quarantined it, when more
        than ``max_drop_fraction`` of its notes lie beyond the audio ("notes
        beyond audio: wrong audio or offset?"), or when all its drops together
        pass that fraction.
    """
    n_read = int(diff.counts.get("notes", 0) + diff.counts.get("bombs", 0))
    notes, drops, quarantine = _placed_notes(diff, n_frames, n_read, settings)
    objects, object_attrs, object_quarantine = place_difficulty_objects(diff, n_frames, notes, settings)
    quarantine = quarantine or object_quarantine
    if quarantine is not None:
        notes = np.zeros(0, STORED_NOTE_DTYPE)
        objects = {}
    state_frames, states, collisions = note_states(notes["frame"], notes["column"], notes["row"],
                                                   notes["color"], notes["direction"])
    # notes are sorted by time, so the first note of each frame is its earliest
    first = np.searchsorted(notes["frame"], state_frames, side="left") if len(notes) else np.zeros(0, np.int64)
    tempo = diff.tempo
    end_beat = song_end_beat(tempo, n_frames, settings.fps) if tempo is not None else 0.0
    attrs = {**_difficulty_attrs(diff, n_frames, info_bpm, notes, n_read, drops),
             "collisions": int(collisions),
             "n_states": int(len(state_frames)),
             "end_beat": end_beat,
             "warnings_json": _jsonable(list(diff.warnings)),
             **object_attrs}
    return DifficultyTargets(
        characteristic=diff.characteristic, difficulty=diff.difficulty, quarantine=quarantine, notes=notes,
        state_frames=state_frames, states=states,
        state_times_s=np.asarray(notes["time_s"][first], np.float64),
        state_beats=np.asarray(notes["beat"][first], np.float64),
        end_beat=end_beat, collisions=int(collisions), drops=drops, attrs=attrs, objects=objects)


def _placed_notes(diff, n_frames: int, n_read: int, settings: TargetSettings) -> tuple[np.ndarray, dict, str | None]:
    """``(stored notes on the T frames, drops by reason, quarantine reason or None)`` of a difficulty.

    Nothing is placed for a difficulty already quarantined. Notes beyond the
    audio are dropped as :data:`BEYOND_AUDIO`; when they, or all drops
    together, pass ``settings.max_drop_fraction`` of the ``n_read`` notes,
    the difficulty is quarantined.
    """
    drops = dict(diff.drops)
    quarantine = diff.quarantine
    notes = np.zeros(0, STORED_NOTE_DTYPE)
    if quarantine is None:
        notes, n_beyond = place_notes(diff.notes, n_frames, settings.fps)
        if n_beyond:
            drops[BEYOND_AUDIO] = n_beyond
        n_dropped = int(sum(drops.values()))
        end_s = frame_time(n_frames - 1, settings.fps)
        limit = f"{100 * settings.max_drop_fraction:g}%"
        if n_read and n_beyond / n_read > settings.max_drop_fraction:
            quarantine = (f"notes beyond audio: wrong audio or offset? ({n_beyond} of {n_read} notes "
                          f"({100 * n_beyond / n_read:.1f}% > {limit}) after the last frame at {end_s:.2f} s)")
        elif n_read and n_dropped / n_read > settings.max_drop_fraction:
            detail = ", ".join(f"{r} {c}" for r, c in drops.items())
            quarantine = (f"dropped {n_dropped} of {n_read} notes ({100 * n_dropped / n_read:.1f}% > {limit}): "
                          f"{detail}")
    return notes, drops, quarantine


def _difficulty_attrs(diff, n_frames: int, info_bpm: float, notes: np.ndarray, n_read: int, drops: dict) -> dict:
    """The attributes of a difficulty group that describe its file, tempo and notes (docs/store.md)."""
    tempo = diff.tempo
    colors = notes["color"]
    return {
        "characteristic": diff.characteristic,
        "difficulty": diff.difficulty,
        "filename": diff.filename or "",
        "info_bpm": float(info_bpm),
        "tempo_map": _jsonable(tempo.to_json()) if tempo is not None else "",
        "njs": float(diff.njs) if diff.njs is not None else math.nan,
        "declared_version": diff.declared_version or "",
        "sniffed_version": diff.sniffed_version or "",
        "version_mismatch": bool(diff.version_mismatch),
        "n_frames": int(n_frames),
        "n_kept": int(len(notes)),
        "n_notes": int((colors != BOMB).sum()),
        "n_bombs": int((colors == BOMB).sum()),
        "n_read": n_read,
        "n_dropped": int(sum(drops.values())),
        "counts_json": _jsonable(diff.counts),
        "drops_json": _jsonable(drops),
    }


def audio_frame_count(path, fps: int = FPS) -> tuple[int | None, str | None]:
    """``(T, None)`` of the level's audio from its header (no decoding), or ``(None, why not)``.

    T is :func:`~mapkit.preprocess.timebase.n_frames` of the declared sample
    count: what ``mapkit extract`` stores for a sound file.
    """
    import soundfile as sf

    from mapkit.preprocess.container import LevelContainer
    from mapkit.preprocess.timebase import n_frames

    try:
        with LevelContainer(path) as c:
            name = c.audio_name()
            with c.open(name) as f:
                info = sf.info(f)
    except MapkitError as e:
        return None, e.reason
    except (OSError, RuntimeError, ValueError) as e:  # soundfile cannot read the header
        return None, f"unreadable audio: {e}"
    if info.frames <= 0 or info.samplerate <= 0:
        return None, "the audio declares no samples"
    return n_frames(int(info.frames), int(info.samplerate), fps), None


def no_notes_reason(diff) -> str | None:
    """``"no notes"`` (``"no notes (only N bombs)"``) for a difficulty without colour notes, else None.

    Such a difficulty is not a training target: every frame would be negative,
    which teaches nothing and flatters frame accuracy. Only build-targets
    quarantines it; ``inspect`` and ``evaluate`` read it as it is.
    """
    if int(diff.counts.get("notes", 0)) > 0:
        return None
    n_bombs = int(diff.counts.get("bombs", 0))
    return "no notes" + (f" (only {n_bombs} bombs)" if n_bombs else "")


def check_against_audio(level, path, settings: TargetSettings = TargetSettings(),
                        n_frames: int | None = None) -> int | None:
    """Apply build-targets' audio checks to a read level in place (``mapkit inspect``, ``mapkit evaluate``).

    When the song's length is known (``n_frames``, e.g. from its decoded
    features, else from the audio file's header), every difficulty gets the
    verdict build-targets would give it on a song of that many frames
    (:func:`difficulty_targets`): the notes beyond the audio are removed from
    ``notes`` and counted in ``drops``, and the difficulty is quarantined past
    ``max_drop_fraction``; so a level read from its folder holds the notes the
    store would hold. Otherwise a level warning says the notes were not
    checked against the audio. Returns T, or None.
    """
    T = n_frames
    if T is None:
        T, why = audio_frame_count(path, settings.fps)
    if T is None:
        named = level.song_filename and any(level.song_filename in w for w in level.warnings)
        if not named:  # a missing song file is already a warning of the level
            level.warnings.append(f"notes not checked against the audio ({why})")
        return None
    for d in level.difficulties:
        if d.quarantine is None:
            dt = difficulty_targets(d, T, level.bpm, settings)
            d.notes = d.notes[inside_audio(d.notes, T, settings.fps)]
            d.drops = dt.drops
            d.quarantine = dt.quarantine
    return T
