"""Exact level reading for every Beat Saber format (docs/design.md §§1 and 3, docs/formats.md part 1).

:func:`read_level` reads a level folder or BeatSaver ``.zip`` (without
unpacking it) into a :class:`Level`: the info file's facts and, per
characteristic and difficulty named by the info file, a :class:`Difficulty`
holding its normalised notes, its :class:`~mapkit.preprocess.tempo.TempoMap`,
the counts of what was read and of what was dropped, by reason, and a
quarantine reason when it must not be used for training.

Formats
-------
- legacy v1: ``info.json`` with ``difficultyLevels[].jsonPath``; each
  difficulty file carries its own ``_beatsPerMinute`` (the base BPM of its beats);
- v2 (``_version`` 2.0.0-2.6.0): ``_notes``; tempo from events of type 100
  (BPM in ``_floatValue``); type-10 events are ambiguous (pre-1.18 BPM change
  or a light) and only flagged;
- v3 (3.0.0-3.3.0): ``colorNotes``/``bombNotes``; omitted fields default to 0;
  tempo from ``bpmEvents {b, m}``;
- v4 (4.0.0-4.1.0): objects index shared ``*Data`` arrays (an index out of
  range makes the file unreadable: corruption); tempo from the audio data
  file's ``bpmData`` regions (or 2.0.0 ``_regions``) named by the v4 info file.
  A v4 info file may point to v2/v3 beatmaps, which keep their own events.

The version is the declared ``_version``/``version`` and the one sniffed from
the keys; the keys decide how the file is parsed (they hold the data), and a
disagreement is flagged (``version_mismatch``).

Notes
-----
Every note becomes one ``NOTE_DTYPE`` record (time_s, beat, column, row,
color, direction), colour 0 red, 1 blue, 3 bomb (direction 0). Notes that
cannot be a training target are dropped and counted in ``Difficulty.drops``
by one stable reason key, checked in this order:

=====================  ==============================================================
``fake``               Noodle Extensions fake note (v2 ``_customData._fake``, v3 ``customData.fake*``)
``modded_data``        custom data that moves or animates the note (Noodle Extensions), whatever the info
                       file declares: v2 ``_customData`` with one of ``MODDED_NOTE_KEYS_V2``, v3
                       ``customData`` with one of ``MODDED_NOTE_KEYS_V3`` (the note is not where its
                       cell says; walls with such data are the objects' ``modded`` drops)
``missing_field``      a v1/v2 note without one of its fields (v3/v4 fields default to 0)
``bad_value``          a field that is not a number (strings must parse strictly: ``"1"`` ok), or a
                       note that is not a JSON object
``non_finite``         a number that is infinite or NaN (e.g. ``1e400`` in JSON)
``unknown_type``       ``_type`` not in {0, 1, 3} (v2) or colour ``c`` not in {0, 1} (v3/v4)
``fractional_position`` a non-integer column/row below 1000 in magnitude
``off_grid``           column not in 0-3 or row not in 0-2 (incl. Mapping Extensions +-1000 values)
``bad_direction``      a colour note's cut direction not an integer 0-8 (e.g. ME angles 1000-1360)
``negative_time``      the note's time in seconds is < 0
``duplicate``          a second note at the same beat in the same cell (the first is kept)
=====================  ==============================================================

Notes after the end of the audio are not known here (the audio is not read);
targets drop them.

Quarantine
----------
A difficulty is quarantined (``quarantine`` is its reason, the first that
applies) when its file is unreadable or corrupt, its tempo is invalid (a BPM
<= 0 or not finite, inconsistent regions), its info entry names an unknown
difficulty or repeats one, the info file says it requires Mapping Extensions
or Noodle Extensions, the level is quarantined, or more than
``settings.max_drop_fraction`` of its notes were dropped (e.g. notes carrying
Noodle placement data the info file does not declare: ``modded_data``). A
difficulty without notes is read as it is (``build-targets`` quarantines it).

A level is quarantined when its ``_songTimeOffset`` is non-zero and
``settings.song_offset == "quarantine"`` (the default). With ``"apply"`` the
offset is **added** to every note time (``t = tempo(beat) + offset``, so a
positive offset makes notes later; see :mod:`mapkit.preprocess.tempo`), and the
difficulty's tempo map includes it.

Examples
--------
>>> level = read_level("tests/fixtures/maps/JOURNEY", characteristic="all")  # doctest: +SKIP
>>> [(d.characteristic, d.difficulty, len(d.notes)) for d in level.difficulties]  # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from mapkit.errors import LevelError, TempoError
from mapkit.preprocess.container import LevelContainer, opened
from mapkit.preprocess.difficulties import canonical_difficulty
from mapkit.preprocess.jsonio import load_json_bytes
from mapkit.preprocess.notes import BOMB, N_COLUMNS, N_DIRECTIONS, N_ROWS, NOTE_DTYPE, sort_notes
from mapkit.preprocess.tempo import TempoMap
from mapkit.settings import TargetSettings

#: Drop reasons, in the order they are checked.
DROP_REASONS = ("fake", "modded_data", "missing_field", "bad_value", "non_finite", "unknown_type", "fractional_position",
                "off_grid", "bad_direction", "negative_time", "duplicate")

#: Note/wall custom data that moves, turns or animates the object (Noodle Extensions): the object is not
#: where its grid fields say. ``_cutDirection`` (v2) turns it to any angle, ``_flip`` moves its spawn.
#: ``_track``/``track`` alone is not counted: Chroma-only maps use tracks to animate colours (the
#: JOURNEY fixture does), and colour changes nothing a trainer learns.
MODDED_NOTE_KEYS_V2 = ("_position", "_animation", "_rotation", "_localRotation", "_cutDirection", "_flip")
MODDED_NOTE_KEYS_V3 = ("coordinates", "animation", "worldRotation", "localRotation", "flip")

#: Requirements that change what a note's fields mean: such difficulties are quarantined.
MODDED_REQUIREMENTS = ("mapping extensions", "noodle extensions")

_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_VERSION_RE = re.compile(r"\d+")
MISSING = object()


def _major(version) -> str | None:
    """Major version digit of a declared version (``"3.3.0 "`` and ``"v3"`` -> ``"3"``), or None."""
    if version is None:
        return None
    m = _VERSION_RE.search(str(version))
    return m.group(0) if m else None


def strict_number(value):
    """``(float, was_string)`` for a JSON number or a strictly numeric string; ``(None, ...)`` otherwise."""
    if isinstance(value, bool):
        return None, False
    if isinstance(value, (int, float)):
        try:
            return float(value), False
        except OverflowError:  # an integer beyond float range is as infinite as 1e400
            return (math.inf if value > 0 else -math.inf), False
    if isinstance(value, str) and _NUMBER_RE.fullmatch(value.strip()):
        return float(value), True
    return None, isinstance(value, str)


def as_list(doc: dict, key: str, where: str) -> list:
    """``doc[key]`` as a list; absent or null -> []; any other type is corruption."""
    value = doc.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise LevelError(where, f"{key!r} is not a list but {type(value).__name__}")
    return value


def as_dict(value) -> dict:
    return value if isinstance(value, dict) else {}


# --- note records --------------------------------------------------------------------------------

# What a note's ``type`` may be: any of red, blue, bomb (v1/v2 ``_type``), a colour (v3/v4 ``c``),
# or only a bomb (v3/v4 bomb arrays, whose type is BOMB by construction)
_ANY_TYPE, _COLOUR_TYPE, _BOMB_TYPE = 0, 1, 2

# Stand-ins for notes that are not JSON objects: their beat is not a number -> bad_value
_V2_NOT_AN_OBJECT = {"_time": None, "_lineIndex": 0, "_lineLayer": 0, "_type": 0, "_cutDirection": 0}
_V3_NOT_AN_OBJECT = {"b": None}

# How a raw field parsed (see number_column)
_NUMBER, _STRING, BAD, ABSENT = 0, 1, 2, 3


@dataclass
class _RawNotes:
    """A file's notes as columns of raw JSON values (``MISSING`` when absent), in file order.

    ``type`` is the v2 ``_type``, the v3/v4 colour ``c``, or BOMB for v3/v4
    bombs; ``fake`` flags Noodle Extensions fakes; ``kind`` says which types
    are allowed (``_ANY_TYPE``, ``_COLOUR_TYPE``, ``_BOMB_TYPE``).
    """

    beat: list = field(default_factory=list)
    x: list = field(default_factory=list)
    y: list = field(default_factory=list)
    type: list = field(default_factory=list)
    direction: list = field(default_factory=list)
    fake: list = field(default_factory=list)
    kind: list = field(default_factory=list)
    modded: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.beat)

    def extend(self, beat, x, y, type, direction, fake, kind: int, modded=False):
        """Append equally long columns; ``fake`` and ``modded`` are one bool for all of them or a list."""
        n = len(beat)
        self.modded += modded if isinstance(modded, list) else [modded] * n
        self.beat += beat
        self.x += x
        self.y += y
        self.type += type
        self.direction += direction
        self.fake += fake if isinstance(fake, list) else [fake] * n
        self.kind += [kind] * n


def _v2_notes(doc: dict, where: str) -> _RawNotes:
    notes = [n if isinstance(n, dict) else _V2_NOT_AN_OBJECT for n in as_list(doc, "_notes", where)]
    raw = _RawNotes()
    raw.extend(*([n.get(key, MISSING) for n in notes]
                 for key in ("_time", "_lineIndex", "_lineLayer", "_type", "_cutDirection")),
               fake=[isinstance(c := n.get("_customData"), dict) and c.get("_fake") is True for n in notes],
               kind=_ANY_TYPE, modded=[_has_modded_data(n.get("_customData"), MODDED_NOTE_KEYS_V2) for n in notes])
    return raw


def _has_modded_data(custom, keys) -> bool:
    """Whether a note's or wall's custom data holds one of ``keys`` (moving or animating it)."""
    return isinstance(custom, dict) and any(k in custom for k in keys)


def _v3_notes(doc: dict, where: str) -> _RawNotes:
    custom = as_dict(doc.get("customData"))
    raw = _RawNotes()
    for fake, color_key, bomb_key in ((False, "colorNotes", "bombNotes"), (True, "fakeColorNotes", "fakeBombNotes")):
        src = doc if not fake else custom
        colour = [n if isinstance(n, dict) else _V3_NOT_AN_OBJECT for n in as_list(src, color_key, where)]
        raw.extend(*([n.get(key, 0) for n in colour] for key in "bxycd"), fake=fake, kind=_COLOUR_TYPE,
                   modded=[_has_modded_data(n.get("customData"), MODDED_NOTE_KEYS_V3) for n in colour])
        bombs = [n if isinstance(n, dict) else _V3_NOT_AN_OBJECT for n in as_list(src, bomb_key, where)]
        raw.extend(*([n.get(key, 0) for n in bombs] for key in "bxy"), [BOMB] * len(bombs), [0] * len(bombs),
                   fake=fake, kind=_BOMB_TYPE,
                   modded=[_has_modded_data(n.get("customData"), MODDED_NOTE_KEYS_V3) for n in bombs])
    return raw


def _v4_index(obj: dict, key: str, data: list, array: str, k: int, where: str) -> dict:
    i = obj.get(key, 0)
    if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(data):
        raise LevelError(where, f"corrupt v4 index: {array}[{k}].{key} = {i!r}, "
                                f"but its data array has {len(data)} entries")
    entry = data[i]
    return entry if isinstance(entry, dict) else {}


def _v4_notes(doc: dict, where: str) -> _RawNotes:
    color_data = as_list(doc, "colorNotesData", where)
    bomb_data = as_list(doc, "bombNotesData", where)
    raw = _RawNotes()
    rows = []
    for k, n in enumerate(as_list(doc, "colorNotes", where)):
        n = as_dict(n)
        d = _v4_index(n, "i", color_data, "colorNotes", k, where)
        rows.append((n.get("b", 0), d.get("x", 0), d.get("y", 0), d.get("c", 0), d.get("d", 0)))
    if rows:
        raw.extend(*map(list, zip(*rows)), fake=False, kind=_COLOUR_TYPE)
    rows = []
    for k, n in enumerate(as_list(doc, "bombNotes", where)):
        n = as_dict(n)
        d = _v4_index(n, "i", bomb_data, "bombNotes", k, where)
        rows.append((n.get("b", 0), d.get("x", 0), d.get("y", 0), BOMB, 0))
    if rows:
        raw.extend(*map(list, zip(*rows)), fake=False, kind=_BOMB_TYPE)
    # the other objects are not targets, but their indices are checked: a bad one is corruption too
    checks = (("obstacles", (("i", "obstaclesData"),)),
              ("arcs", (("hi", "colorNotesData"), ("ti", "colorNotesData"), ("ai", "arcsData"))),
              ("chains", (("i", "colorNotesData"), ("ci", "chainsData"))))
    for array, keys in checks:
        for k, obj in enumerate(as_list(doc, array, where)):
            for key, data_name in keys:
                _v4_index(as_dict(obj), key, as_list(doc, data_name, where), array, k, where)
    return raw


def number_column(values: list) -> tuple[np.ndarray, np.ndarray]:
    """Raw JSON values -> (float64 values, how each parsed: ``_NUMBER``, ``_STRING``, ``BAD``, ``ABSENT``).

    Numbers (not bools) and strictly numeric strings (see :func:`strict_number`)
    are values; anything else is NaN with state ``BAD``, or ``ABSENT`` for ``MISSING``.
    """
    if set(map(type, values)) <= {int, float}:  # the usual case: plain JSON numbers
        try:
            return np.array(values, dtype=np.float64), np.zeros(len(values), dtype=np.int8)
        except OverflowError:  # an integer beyond float range: the exact per-value path below
            pass
    nums = np.full(len(values), np.nan)
    states = np.empty(len(values), dtype=np.int8)
    for i, v in enumerate(values):
        if v is MISSING:
            states[i] = ABSENT
            continue
        num, was_string = strict_number(v)
        if num is None:
            states[i] = BAD
        else:
            nums[i], states[i] = num, _STRING if was_string else _NUMBER
    return nums, states


def _is_integer(values: np.ndarray) -> np.ndarray:
    return np.floor(values) == values


def _is_bomb(kind: np.ndarray, typ: np.ndarray) -> np.ndarray:
    """Which notes are bombs: those of the bomb arrays, and v1/v2 notes whose ``_type`` parses to 3."""
    return (kind != _COLOUR_TYPE) & (typ == BOMB)


def _count_bombs(raw_notes: _RawNotes) -> int:
    """Bombs as read (dropped ones included)."""
    return int(_is_bomb(np.array(raw_notes.kind, dtype=np.int8), number_column(raw_notes.type)[0]).sum())


def normalise_notes(raw_notes: _RawNotes, tempo: TempoMap):
    """Raw note columns -> sorted ``NOTE_DTYPE`` array, drops by reason, count of numeric strings.

    Each note is dropped for the first reason of ``DROP_REASONS`` that applies
    to it (see the module docstring); the checks run on whole columns.

    Parameters
    ----------
    raw_notes : _RawNotes
        A file's notes, as read by ``_v2_notes``, ``_v3_notes`` or ``_v4_notes``.
    tempo : TempoMap
        Times the beats of these notes.

    Returns
    -------
    notes : np.ndarray of NOTE_DTYPE
        Kept notes, sorted by (time_s, column, row), no duplicates.
    drops : Counter
        reason -> count, only reasons that dropped notes (see the module docstring).
    n_strings : int
        How many numeric fields were given as strings (accepted, flagged),
        counted on notes whose fields are all present and numeric.
    """
    (beat, x, y, typ, direction), states = zip(*(
        number_column(c) for c in (raw_notes.beat, raw_notes.x, raw_notes.y, raw_notes.type, raw_notes.direction)))
    states = np.stack(states)
    fake = np.array(raw_notes.fake, dtype=bool)
    modded = np.array(raw_notes.modded, dtype=bool) if len(raw_notes.modded) == len(fake) else np.zeros_like(fake)
    kind = np.array(raw_notes.kind, dtype=np.int8)
    direction = np.where(_is_bomb(kind, typ), 0.0, direction)  # the game ignores a bomb's direction
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(beat) & np.isfinite(x) & np.isfinite(y) & np.isfinite(typ) & np.isfinite(direction)
        allowed = (((kind == _ANY_TYPE) & np.isin(typ, (0, 1, BOMB)))
                   | ((kind == _COLOUR_TYPE) & np.isin(typ, (0, 1)))
                   | ((kind == _BOMB_TYPE) & (typ == BOMB)))
        fractional = ~(_is_integer(x) & _is_integer(y))
        placement_ext = (np.abs(x) >= 1000) | (np.abs(y) >= 1000)  # Mapping Extensions precision placement
        on_grid = (x >= 0) & (x < N_COLUMNS) & (y >= 0) & (y < N_ROWS)
        good_direction = _is_integer(direction) & (direction >= 0) & (direction < N_DIRECTIONS)
    checks = (("fake", fake),
              ("modded_data", modded),
              ("missing_field", (states == ABSENT).any(axis=0)),
              ("bad_value", (states == BAD).any(axis=0)),
              ("non_finite", ~finite),
              ("unknown_type", ~allowed),
              ("off_grid", fractional & placement_ext),
              ("fractional_position", fractional),
              ("off_grid", ~on_grid),
              ("bad_direction", ~good_direction))
    drops: Counter = Counter()
    kept = np.ones(len(beat), dtype=bool)
    n_strings = 0
    for reason, dropped in checks:
        if reason == "non_finite":  # notes past the missing/bad checks: their string fields are counted
            n_strings = int((states[:, kept] == _STRING).sum())
        hit = dropped & kept
        if hit.any():
            drops[reason] += int(hit.sum())
            kept &= ~hit
    arr = np.zeros(int(kept.sum()), dtype=NOTE_DTYPE)
    arr["beat"], arr["column"], arr["row"] = beat[kept], x[kept], y[kept]
    arr["color"], arr["direction"] = typ[kept], direction[kept]
    arr["time_s"] = tempo.seconds(arr["beat"])
    negative = arr["time_s"] < 0
    if negative.any():
        drops["negative_time"] += int(negative.sum())
        arr = arr[~negative]
    arr = sort_notes(arr)  # stable: of duplicates, the first in file order comes first
    if len(arr) > 1:
        same = ((arr["beat"][1:] == arr["beat"][:-1]) & (arr["column"][1:] == arr["column"][:-1])
                & (arr["row"][1:] == arr["row"][:-1]))
        if same.any():
            drops["duplicate"] += int(same.sum())
            arr = arr[np.concatenate([[True], ~same])]
    return arr, drops, n_strings


# --- results ---------------------------------------------------------------------------------------

@dataclass
class Difficulty:
    """One difficulty of one characteristic, as read.

    ``notes`` holds only kept notes (``NOTE_DTYPE``, sorted by time, column,
    row; bombs included with color 3). ``counts`` are objects as read (notes =
    colour notes, including ones later dropped); ``drops`` maps reason -> count,
    so ``counts["notes"] + counts["bombs"] == len(notes) + sum(drops.values())``.
    ``tempo`` times this difficulty's notes. ``quarantine`` is None when usable.
    """

    characteristic: str
    difficulty: str
    filename: str | None
    declared_version: str | None = None
    sniffed_version: str | None = None
    version_mismatch: bool = False
    njs: float | None = None
    tempo: TempoMap | None = None
    notes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=NOTE_DTYPE))
    drops: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    quarantine: str | None = None
    warnings: list = field(default_factory=list)
    editor_bpm_changes: list = field(default_factory=list)
    requirements: list = field(default_factory=list)
    #: walls, arcs, chains, lighting, rotations, NJS events (mapkit.preprocess.objects): records by kind,
    #: objects read by kind, drops by kind {reason: n}; raw fields until normalised
    objects: dict = field(default_factory=dict)
    objects_read: dict = field(default_factory=dict)
    objects_drops: dict = field(default_factory=dict)
    raw_objects: dict | None = field(default=None, repr=False)

    @property
    def n_dropped(self) -> int:
        return int(sum(self.drops.values()))

    def to_json(self, notes: bool = True) -> dict:
        """Facts as plain JSON types; with ``notes`` the full note list (dicts in ``notes`` order)."""
        colors = self.notes["color"]
        d = {
            "characteristic": self.characteristic,
            "difficulty": self.difficulty,
            "filename": self.filename,
            "declared_version": self.declared_version,
            "sniffed_version": self.sniffed_version,
            "version_mismatch": self.version_mismatch,
            "njs": self.njs,
            "tempo": self.tempo.to_json() if self.tempo is not None else None,
            "counts": dict(self.counts),
            "kept": {"notes": int((colors != BOMB).sum()), "bombs": int((colors == BOMB).sum())},
            "drops": dict(self.drops),
            "quarantine": self.quarantine,
            "warnings": list(self.warnings),
            "editor_bpm_changes": list(self.editor_bpm_changes),
            "requirements": list(self.requirements),
        }
        d["objects_read"] = dict(self.objects_read)
        d["objects_kept"] = {k: len(v) for k, v in self.objects.items() if k in self.objects_read}
        d["objects_drops"] = dict(self.objects_drops)
        if notes:
            from mapkit.preprocess.objects import objects_to_json
            d["objects"] = objects_to_json(self.objects)
        if notes:
            d["notes"] = [
                {"time_s": float(n["time_s"]), "beat": float(n["beat"]), "column": int(n["column"]),
                 "row": int(n["row"]), "color": int(n["color"]), "direction": int(n["direction"])}
                for n in self.notes
            ]
        return d


@dataclass
class Level:
    """A level's info-file facts and its difficulties (those of the characteristic(s) asked for)."""

    song_id: str
    path: str
    info_version: str
    bpm: float
    song_filename: str | None
    song_time_offset: float
    editor_bpm_changes: list
    difficulties: list
    quarantine: str | None = None
    warnings: list = field(default_factory=list)
    info_filename: str | None = None
    characteristics: list = field(default_factory=list)
    #: why the info's song offset could not be read (then ``song_time_offset`` is 0 and the level quarantined)
    song_time_offset_error: str | None = None

    def get(self, characteristic: str, difficulty: str) -> Difficulty | None:
        """The difficulty ``characteristic``/``difficulty`` (names compared case-insensitively), or None."""
        want = difficulty.lower()
        try:
            want = canonical_difficulty(difficulty).lower()
        except ValueError:
            pass
        for d in self.difficulties:
            if d.characteristic.lower() == characteristic.lower() and d.difficulty.lower() == want:
                return d
        return None

    def to_json(self, notes: bool = True) -> dict:
        return {
            "song_id": self.song_id,
            "path": self.path,
            "info_filename": self.info_filename,
            "info_version": self.info_version,
            "bpm": self.bpm if math.isfinite(self.bpm) else None,
            "song_filename": self.song_filename,
            "song_time_offset": self.song_time_offset,
            "song_time_offset_error": self.song_time_offset_error,
            "characteristics": list(self.characteristics),
            "editor_bpm_changes": list(self.editor_bpm_changes),
            "quarantine": self.quarantine,
            "warnings": list(self.warnings),
            "difficulties": [d.to_json(notes=notes) for d in self.difficulties],
        }


# --- info file -------------------------------------------------------------------------------------

@dataclass
class _Entry:
    """One difficulty as listed by the info file."""

    characteristic: str
    difficulty: str
    filename: object
    njs: object
    requirements: list
    lightshow: object = None


def _requirements(*customs) -> list[str]:
    """The mod requirements of custom-data dicts; one written as a string instead of a list counts too."""
    out = []
    for c in customs:
        c = as_dict(c)
        for key in ("_requirements", "requirements"):
            reqs = c.get(key)
            if isinstance(reqs, str):
                out.append(reqs)
            elif isinstance(reqs, list):
                out.extend(str(r) for r in reqs)
    return out


def _info_entries(info: dict, major: str, where: str) -> list[_Entry]:
    entries = []
    if major == "1":
        for d in as_list(info, "difficultyLevels", where):
            d = as_dict(d)
            entries.append(_Entry(str(d.get("characteristic") or "Standard"), str(d.get("difficulty")),
                                  d.get("jsonPath"), None, _requirements(d.get("customData"))))
    elif major == "4":
        level_reqs = _requirements(info.get("customData"))
        for d in as_list(info, "difficultyBeatmaps", where):
            d = as_dict(d)
            entries.append(_Entry(str(d.get("characteristic", "Standard")), str(d.get("difficulty")),
                                  d.get("beatmapDataFilename"), d.get("noteJumpMovementSpeed"),
                                  level_reqs + _requirements(d.get("customData")), d.get("lightshowDataFilename")))
    else:
        level_reqs = _requirements(info.get("_customData"))
        for s in as_list(info, "_difficultyBeatmapSets", where):
            s = as_dict(s)
            name = str(s.get("_beatmapCharacteristicName", "Standard"))
            for d in as_list(s, "_difficultyBeatmaps", where):
                d = as_dict(d)
                entries.append(_Entry(name, str(d.get("_difficulty")), d.get("_beatmapFilename"),
                                      d.get("_noteJumpMovementSpeed"),
                                      level_reqs + _requirements(d.get("_customData"))))
    return entries


def _characteristic_names(entries: list[_Entry]) -> list[str]:
    """The distinct characteristic names of the info entries, in info-file order."""
    return list(dict.fromkeys(e.characteristic for e in entries))


def info_characteristics(path) -> list[str]:
    """The characteristics a level's info file lists (info-file order), reading only the info file.

    Parameters
    ----------
    path : str or Path
        A level folder or ``.zip``.

    Returns
    -------
    list of str
        Empty when the info file lists no difficulties.

    Raises
    ------
    LevelError
        No info file, or it is not a readable JSON object.
    """
    with LevelContainer(path) as container:
        info = container.read_info_json()
        where = container.describe(container.info_name())
        if not isinstance(info, dict):
            raise LevelError(where, f"info file is a JSON {type(info).__name__}, not an object")
        sniffed = _sniff_info(info)
        return _characteristic_names(_info_entries(info, sniffed, where)) if sniffed else []


def level_file_names(container: LevelContainer, characteristic: str | None = "Standard") -> list[str]:
    """The files :func:`read_level` reads for ``characteristic``: their real names, sorted, each once.

    The info file, the difficulty file of each listed difficulty of
    ``characteristic`` (``None``/``"all"``: of every one) that is in the
    level, and a v4 level's audio data file. Images, audio and files the info
    file does not name are not included. An unreadable info file gives just
    its own name (the level cannot be read anyway).
    """
    info_name = container.info_name()
    if info_name is None:
        return []
    names = {info_name}
    try:
        info = container.read_info_json()
    except LevelError:
        return [info_name]
    sniffed = _sniff_info(info) if isinstance(info, dict) else None
    if sniffed is None:
        return [info_name]
    want_all = characteristic is None or str(characteristic).lower() == "all"
    entries = [e for e in _info_entries(info, sniffed, container.describe(info_name))
               if want_all or e.characteristic.lower() == str(characteristic).lower()]
    wanted = [e.filename for e in entries] + [e.lightshow for e in entries if e.lightshow]
    if sniffed == "4":
        wanted.append(as_dict(info.get("audio")).get("audioDataFilename"))
    for name in wanted:
        real = container.find(name) if isinstance(name, str) and name else None
        if real is not None:
            names.add(real)
    return sorted(names)


def _sniff_info(info: dict) -> str | None:
    if "difficultyLevels" in info:
        return "1"
    if "_difficultyBeatmapSets" in info:
        return "2"
    if "difficultyBeatmaps" in info:
        return "4"
    return None


_V4_KEYS = ("colorNotesData", "bombNotesData", "obstaclesData", "arcsData", "chainsData", "njsEvents",
            "spawnRotations")
_V3_KEYS = ("burstSliders", "sliders", "bpmEvents", "rotationEvents", "basicBeatmapEvents",
            "colorBoostBeatmapEvents", "lightColorEventBoxGroups", "waypoints")
_V3_V4_KEYS = ("colorNotes", "bombNotes", "obstacles")


def _sniff_difficulty(doc: dict, legacy: bool, declared_major: str | None) -> str | None:
    """Format major from the keys (docs/formats.md §1.7); ``None`` when the keys say nothing."""
    if any(k in doc for k in _V4_KEYS):
        return "4"
    if any(k in doc for k in _V3_KEYS):
        return "3"
    if any(k in doc for k in _V3_V4_KEYS):
        # v3 and v4 share these names; a v4 object holds an index "i", a v3 one its fields
        for k in _V3_V4_KEYS:
            for obj in doc[k] if isinstance(doc.get(k), list) else ():
                if isinstance(obj, dict) and ({"x", "y", "c", "d", "w", "h"} & obj.keys()):
                    return "3"
                if isinstance(obj, dict) and "i" in obj:
                    return "4"
        return declared_major if declared_major in ("3", "4") else "3"
    if any(k in doc for k in ("_notes", "_events", "_obstacles")):
        return "1" if legacy else "2"
    return None


def _finite_number(value, what: str, where: str) -> float:
    num, _ = strict_number(value)
    if num is None or not math.isfinite(num):
        raise LevelError(where, f"{what} is not a finite number: {value!r}")
    return num


def _read_regions(container: LevelContainer, name: str, base_bpm: float) -> TempoMap:
    """Tempo map of a v4 level from its audio data file (``bpmData`` or 2.0.0 ``_regions``)."""
    where = container.describe(name)
    doc = load_json_bytes(container.read_bytes(name), where)
    if not isinstance(doc, dict):
        raise LevelError(where, "audio data file is not a JSON object")
    if "_regions" in doc:
        regions = [(r.get("_startSampleIndex", 0), r.get("_endSampleIndex", 0), r.get("_startBeat", 0),
                    r.get("_endBeat", 0)) for r in map(as_dict, as_list(doc, "_regions", where))]
        rate, n_samples = doc.get("_songFrequency", 0), doc.get("_songSampleCount")
    else:
        regions = [(r.get("si", 0), r.get("ei", 0), r.get("sb", 0), r.get("eb", 0))
                   for r in map(as_dict, as_list(doc, "bpmData", where))]
        rate, n_samples = doc.get("songFrequency", 0), doc.get("songSampleCount")
    n_samples, _ = strict_number(n_samples)  # the audio's end: the last region's tempo holds after it
    n_samples = n_samples if n_samples is not None and math.isfinite(n_samples) else None
    try:
        return TempoMap.from_regions(base_bpm, regions, rate, n_samples)
    except TempoError as e:
        raise LevelError(where, f"invalid tempo: {e}") from None


# --- one difficulty file -------------------------------------------------------------------------

def _editor_bpm_changes(doc: dict, major: str) -> list[dict]:
    """Editor-only BPM changes (they do not move notes), for reports."""
    out = []
    if major == "3":
        for c in map(as_dict, as_list(as_dict(doc.get("customData")), "BPMChanges", "-")):
            out.append({"beat": c.get("b"), "bpm": c.get("m"), "source": "customData.BPMChanges"})
        return out
    custom = as_dict(doc.get("_customData"))
    sources = ((custom, "_BPMChanges", "_BPM", "_customData._BPMChanges"),
               (custom, "_bpmChanges", "_bpm", "_customData._bpmChanges"),
               (doc, "_BPMChanges", "_BPM", "_BPMChanges"))
    for where, key, bpm_key, name in sources:
        value = where.get(key)
        if isinstance(value, list):
            for c in map(as_dict, value):
                out.append({"beat": c.get("_time"), "bpm": c.get(bpm_key), "source": name})
    return out


def _read_difficulty(container, entry: _Entry, diff: Difficulty, level_bpm: float, legacy: bool,
                     regions_tempo, warnings: list) -> list:
    """Fill ``diff`` from its file; raises LevelError/TempoError when it is unreadable. Returns raw notes."""
    if not isinstance(entry.filename, str) or not entry.filename:
        raise LevelError(container.describe(container.info_name()),
                         f"info entry {entry.characteristic}/{entry.difficulty} names no beatmap file")
    where = container.describe(entry.filename)
    doc = load_json_bytes(container.read_bytes(entry.filename), where)
    if not isinstance(doc, dict):
        raise LevelError(where, f"difficulty file is a JSON {type(doc).__name__}, not an object")
    sniffed = _difficulty_version(doc, diff, legacy, where, warnings)
    if sniffed in ("1", "2"):
        raw = _v2_notes(doc, where)
        obstacles, arcs, chains = (len(as_list(doc, k, where)) for k in ("_obstacles", "_sliders", "_chains"))
        tempo = _v2_tempo(doc, diff, level_bpm, sniffed, where, warnings)
    elif sniffed == "3":
        raw = _v3_notes(doc, where)
        obstacles, arcs, chains = (len(as_list(doc, k, where)) for k in ("obstacles", "sliders", "burstSliders"))
        events = [as_dict(e) for e in as_list(doc, "bpmEvents", where)]
        tempo_events = [(e.get("b", 0), e.get("m", 0)) for e in events]
        tempo = TempoMap.from_bpm_events(level_bpm, tempo_events) if tempo_events else TempoMap.constant(level_bpm)
    else:
        raw = _v4_notes(doc, where)
        obstacles, arcs, chains = (len(as_list(doc, k, where)) for k in ("obstacles", "arcs", "chains"))
        if isinstance(regions_tempo, Exception):
            raise regions_tempo
        tempo = regions_tempo if regions_tempo is not None else TempoMap.constant(level_bpm)
        if as_list(doc, "bpmEvents", where):
            warnings.append("v4 beatmap has bpmEvents (deprecated): ignored, the audio data regions time it")
    warnings.extend(tempo.warnings)
    diff.tempo = tempo
    diff.raw_objects = _raw_objects(container, entry, doc, sniffed, where, warnings)
    diff.editor_bpm_changes = _editor_bpm_changes(doc, "3" if sniffed in ("3", "4") else "2")
    if diff.editor_bpm_changes:
        warnings.append(f"{len(diff.editor_bpm_changes)} editor-only BPM changes reported, not applied")
    n_bombs = _count_bombs(raw)
    diff.counts = {"notes": len(raw) - n_bombs, "bombs": n_bombs, "obstacles": obstacles, "arcs": arcs,
                   "chains": chains}
    return raw


def _difficulty_version(doc: dict, diff: Difficulty, legacy: bool, where: str, warnings: list) -> str:
    """The major version a difficulty file is read as ("1" to "4"): its keys first, else what it declares.

    Sets ``diff.declared_version``, ``sniffed_version`` and ``version_mismatch``;
    raises LevelError when neither keys nor declaration tell.
    """
    declared = doc.get("_version", doc.get("version"))
    diff.declared_version = None if declared is None else str(declared)
    declared_major = _major(declared)
    if declared is not None and (not isinstance(declared, str) or not re.fullmatch(r"\d+\.\d+\.\d+", declared)):
        warnings.append(f"unusual version string {declared!r}, read as major {declared_major}")
    sniffed = _sniff_difficulty(doc, legacy, declared_major)
    if sniffed is None:
        sniffed = declared_major if declared_major in ("2", "3", "4") else None
        if sniffed is None and legacy:
            sniffed = "1"
    if sniffed is None:
        raise LevelError(where, f"cannot tell the format version (declared {declared!r}, no known keys)")
    diff.sniffed_version = sniffed
    # 1 and 2 share one shape; a legacy level's v2-declared file is still timed by its own BPM
    same = declared_major == sniffed or {declared_major, sniffed} == {"1", "2"}
    diff.version_mismatch = declared_major is not None and not same
    if diff.version_mismatch:
        warnings.append(f"declared version {declared!r} but the keys say v{sniffed}; read as v{sniffed}")
    return sniffed


def _v2_tempo(doc: dict, diff: Difficulty, level_bpm: float, sniffed: str, where: str, warnings: list) -> TempoMap:
    """The tempo map of a v1/v2 difficulty file: its base BPM (a v1 file's own) and its type-100 BPM events.

    A v1 file also gives ``diff.njs`` when the info entry did not.
    """
    base = level_bpm
    if sniffed == "1":
        base = _v1_base_bpm(doc, level_bpm, where, warnings)
        if diff.njs is None and doc.get("_noteJumpSpeed") is not None:
            diff.njs = strict_number(doc.get("_noteJumpSpeed"))[0]
    # thousands of light events: their types are gathered in one pass, only BPM events visited
    events = [e for e in as_list(doc, "_events", where) if isinstance(e, dict)]
    etypes = [e.get("_type") for e in events]
    if not set(map(type, etypes)) <= {int}:  # floats, numeric strings, junk: parsed strictly
        etypes = [strict_number(t)[0] for t in etypes]
    n_type10 = etypes.count(10)
    tempo_events = []
    for e in (events[i] for i, t in enumerate(etypes) if t == 100) if 100 in etypes else ():
        if "_floatValue" not in e:
            raise TempoError(f"type-100 (BPM) event at beat {e.get('_time')!r} has no _floatValue")
        tempo_events.append((e.get("_time", 0), e.get("_floatValue")))
    if n_type10:
        warnings.append(f"{n_type10} type-10 events (a BPM change before game 1.18, a light after): not applied")
    return TempoMap.from_bpm_events(base, tempo_events) if tempo_events else TempoMap.constant(base)


def _v1_base_bpm(doc: dict, level_bpm: float, where: str, warnings: list) -> float:
    """A legacy (v1) file's own ``_beatsPerMinute`` (else the info BPM); warns of a non-zero ``_shuffle``."""
    base = level_bpm
    if "_beatsPerMinute" in doc:
        base = _finite_number(doc["_beatsPerMinute"], "_beatsPerMinute", where)
        if base != level_bpm:
            warnings.append(f"difficulty BPM {base:g} differs from info BPM {level_bpm:g}; "
                            f"the difficulty's own BPM times its beats")
    else:
        warnings.append("legacy difficulty file has no _beatsPerMinute; info BPM used")
    if strict_number(doc.get("_shuffle", 0))[0] not in (0, None):
        warnings.append(f"_shuffle {doc.get('_shuffle')!r} is non-zero (deprecated swing, ignored)")
    return base


def _raw_objects(container, entry: _Entry, doc: dict, sniffed: str, where: str, warnings: list) -> dict:
    """Walls, arcs, chains, events of the file (and of a v4 beatmap's lightshow file), raw."""
    from mapkit.preprocess.objects import read_raw_objects

    lightshow, lwhere = None, ""
    if sniffed == "4" and isinstance(entry.lightshow, str) and entry.lightshow:
        lwhere = container.describe(entry.lightshow)
        try:
            lightshow = load_json_bytes(container.read_bytes(entry.lightshow), lwhere)
            if not isinstance(lightshow, dict):
                raise LevelError(lwhere, "lightshow file is not a JSON object")
        except LevelError as err:  # lighting is lost, the gameplay is not
            warnings.append(f"lightshow unreadable, no lighting read: {err.path}: {err.reason}")
            lightshow = None
    return read_raw_objects(doc, sniffed, where, lightshow, lwhere, warnings)


def _modded(requirements: list[str]) -> str | None:
    for r in requirements:
        for mod in MODDED_REQUIREMENTS:
            if r.strip().lower().startswith(mod):
                return r
    return None


# --- the level -------------------------------------------------------------------------------------

def read_level(path, settings: TargetSettings = TargetSettings(), characteristic: str | None = "Standard") -> Level:
    """Read one level (folder or ``.zip``) exactly; see the module docstring for every rule.

    Parameters
    ----------
    path : str, Path or LevelContainer
        A level folder or a BeatSaver ``.zip`` (or one already opened).
    settings : TargetSettings
        ``song_offset`` ("quarantine" or "apply") and ``max_drop_fraction``.
    characteristic : str or None
        Which characteristic to read (case-insensitive), ``None`` or ``"all"`` for every one.

    Returns
    -------
    Level
        Its ``difficulties`` are in info-file order. A broken difficulty file
        is recorded on its difficulty (``quarantine="unreadable: ..."``).

    Raises
    ------
    LevelError
        The level itself is unreadable: not a folder or zip, no info file,
        invalid info JSON, no difficulty list, a base BPM that is not a
        finite number > 0.
    """
    with opened(path) as container:
        return _read_level(container, settings, characteristic)


def _read_level(container: LevelContainer, settings: TargetSettings, characteristic) -> Level:
    """Read the opened level: its info file, then each chosen difficulty (rules: :func:`read_level`)."""
    warnings: list[str] = []
    info, info_name, sniffed, info_version = _read_info(container, warnings)
    iwhere = container.describe(info_name)
    legacy = sniffed == "1"
    bpm, song_filename = _level_bpm_and_song(container, info, sniffed, iwhere, warnings)
    offset, offset_error, quarantine = _song_time_offset(info, settings, warnings)
    applied_offset = offset if (offset and settings.song_offset == "apply") else 0.0

    audio_data = as_dict(info.get("audio")).get("audioDataFilename") if sniffed == "4" else None
    entries = _info_entries(info, sniffed, iwhere)
    all_chars = _characteristic_names(entries)
    want_all = characteristic is None or str(characteristic).lower() == "all"
    chosen = [e for e in entries if want_all or e.characteristic.lower() == str(characteristic).lower()]
    difficulties, editor_changes = _read_difficulties(container, chosen, audio_data, bpm, legacy, applied_offset,
                                                      quarantine, settings)
    if not want_all and not chosen:
        warnings.append(f"no {characteristic} difficulties (level has: {', '.join(all_chars) or 'none'})")

    return Level(
        song_id=container.name,
        path=str(container.path),
        info_version=info_version,
        bpm=bpm,
        song_filename=song_filename,
        song_time_offset=offset,
        editor_bpm_changes=editor_changes,
        difficulties=difficulties,
        quarantine=quarantine,
        warnings=warnings,
        info_filename=info_name,
        characteristics=all_chars,
        song_time_offset_error=offset_error,
    )


def _read_info(container: LevelContainer, warnings: list) -> tuple[dict, str, str, str]:
    """The info file: ``(info JSON object, its file name, sniffed major version, version as recorded)``.

    Raises LevelError when it is not a JSON object or lists no difficulties.
    """
    info = container.read_info_json()
    info_name = container.info_name()
    iwhere = container.describe(info_name)
    if not isinstance(info, dict):
        raise LevelError(iwhere, f"info file is a JSON {type(info).__name__}, not an object")
    declared = info.get("_version", info.get("version"))
    sniffed = _sniff_info(info)
    if sniffed is None:
        raise LevelError(iwhere, "info file lists no difficulties (no _difficultyBeatmapSets, "
                                 "difficultyBeatmaps or difficultyLevels)")
    if declared is not None and _major(declared) != sniffed:
        warnings.append(f"info declares version {declared!r} but its keys say v{sniffed}; read as v{sniffed}")
    info_version = str(declared) if declared is not None else sniffed
    others = container.other_info_names()
    if others:
        warnings.append(f"info files differing only in case: {', '.join([info_name] + others)}; "
                        f"{info_name} is read (exact spelling Info.dat first, then code-point order)")
    return info, info_name, sniffed, info_version


def _level_bpm_and_song(container: LevelContainer, info: dict, sniffed: str, iwhere: str,
                        warnings: list) -> tuple[float, str | None]:
    """``(base BPM, song file name or None)`` of the info file.

    An invalid BPM raises LevelError, but in a legacy (v1) level, whose
    difficulty files carry their own BPM, it is NaN with a warning.
    """
    legacy = sniffed == "1"
    audio = as_dict(info.get("audio"))
    if sniffed == "4":
        if audio.get("bpm") is None:
            raise LevelError(iwhere, "v4 info has no audio.bpm")
        bpm_value, song_filename = audio.get("bpm"), audio.get("songFilename")
    elif legacy:
        bpm_value = info.get("beatsPerMinute")
        song_filename = next((d.get("audioPath") for d in map(as_dict, as_list(info, "difficultyLevels", iwhere))
                              if d.get("audioPath")), None)
    else:
        bpm_value, song_filename = info.get("_beatsPerMinute"), info.get("_songFilename")
    try:
        bpm = TempoMap.constant(_finite_number(bpm_value, "BPM", iwhere)).base_bpm
    except TempoError:
        if not legacy:
            raise LevelError(iwhere, f"invalid BPM {bpm_value!r}: must be a finite number > 0") from None
        bpm = math.nan  # legacy v1: each difficulty file carries its own BPM
        warnings.append(f"info BPM {bpm_value!r} is invalid; legacy difficulties use their own BPM")
    except LevelError:
        if not legacy:
            raise
        bpm = math.nan
        warnings.append(f"info BPM {bpm_value!r} is invalid; legacy difficulties use their own BPM")
    if song_filename is not None and not isinstance(song_filename, str):
        song_filename = None
    if song_filename is None:
        warnings.append("info file names no song file")
    elif container.find(song_filename) is None:
        warnings.append(f"song file {song_filename!r} named by the info file is not in the level")
    return bpm, song_filename


def _song_time_offset(info: dict, settings: TargetSettings,
                      warnings: list) -> tuple[float, str | None, str | None]:
    """``(_songTimeOffset in seconds, why it is invalid or None, the level's quarantine reason or None)``.

    Warns of a non-zero ``_shuffle`` too.

    An offset that is not a finite number reads as 0 and quarantines the
    level; a non-zero one does too unless ``settings.song_offset`` is "apply".
    """
    quarantine = offset_error = None
    offset = strict_number(info.get("_songTimeOffset", 0))[0]
    if offset is None or not math.isfinite(offset):
        offset_error = f"{info.get('_songTimeOffset')!r} is not a finite number"
        quarantine = f"_songTimeOffset {offset_error}"
        offset = 0.0
    elif offset != 0:
        if settings.song_offset == "quarantine":
            quarantine = (f"non-zero _songTimeOffset {offset:g} s (not applied; "
                          f"--song-offset apply adds it to every note time)")
        else:
            warnings.append(f"_songTimeOffset {offset:g} s applied: added to every note time")
    shuffle = strict_number(info.get("_shuffle", 0))[0]
    if shuffle not in (0, None):
        warnings.append(f"_shuffle {shuffle:g} is non-zero (deprecated swing, ignored)")
    return offset, offset_error, quarantine


def _new_difficulty(entry: _Entry) -> tuple[Difficulty, str | None]:
    """The unread Difficulty of an info entry and why its name is not a known difficulty (or None)."""
    try:
        name = canonical_difficulty(entry.difficulty)
        bad_name = None
    except ValueError as err:
        name, bad_name = entry.difficulty, str(err)
    filename = entry.filename if isinstance(entry.filename, str) else None
    njs = strict_number(entry.njs)[0] if entry.njs is not None else None
    diff = Difficulty(entry.characteristic, name, filename, njs=njs, warnings=[],
                      requirements=list(entry.requirements))
    return diff, bad_name


def _read_difficulties(container: LevelContainer, chosen: list, audio_data, bpm: float, legacy: bool,
                       applied_offset: float, level_quarantine: str | None,
                       settings: TargetSettings) -> tuple[list, list]:
    """``(the Difficulty of each chosen entry in order, the editor-only BPM changes of them all)``.

    A broken file quarantines its difficulty only; a v4 level's audio data
    file is read once, for the first difficulty that needs it.
    """
    difficulties, seen, editor_changes = [], set(), []
    regions_tempo = None
    for entry in chosen:
        diff, bad_name = _new_difficulty(entry)
        key = (entry.characteristic.lower(), diff.difficulty)
        if key in seen:  # a repeat is never read: listing one file 3000 times costs 3000 lookups, no parse
            diff.quarantine = (f"duplicate difficulty: {entry.characteristic}/{diff.difficulty} "
                               f"listed twice in the info file")
            difficulties.append(diff)
            continue
        seen.add(key)
        try:
            if audio_data and regions_tempo is None:
                try:
                    regions_tempo = _read_regions(container, audio_data, bpm)
                except LevelError as err:  # only v4 beatmaps need it: remembered, raised for them
                    regions_tempo = err
            raw = _read_difficulty(container, entry, diff, bpm, legacy, regions_tempo, diff.warnings)
            _normalise_difficulty(diff, raw, applied_offset)
        except LevelError as err:
            diff.quarantine = f"unreadable: {err.path}: {err.reason}"
        except TempoError as err:
            diff.quarantine = f"invalid tempo: {err}"
        _settle_quarantine(diff, entry, bad_name, level_quarantine, settings)
        editor_changes.extend({"characteristic": diff.characteristic, "difficulty": diff.difficulty, **c}
                              for c in diff.editor_bpm_changes)
        difficulties.append(diff)
    return difficulties, editor_changes


def _normalise_difficulty(diff: Difficulty, raw: list, applied_offset: float) -> None:
    """Shift the tempo by an applied song offset, then normalise the raw notes and the other objects."""
    if applied_offset:
        diff.tempo = diff.tempo.shifted(applied_offset)
    diff.notes, drops, n_strings = normalise_notes(raw, diff.tempo)
    diff.drops = {r: drops[r] for r in DROP_REASONS if drops.get(r)}
    _normalise_objects(diff)
    if n_strings:
        diff.warnings.append(f"{n_strings} numeric fields written as strings (parsed strictly)")


def _settle_quarantine(diff: Difficulty, entry: _Entry, bad_name: str | None, level_quarantine: str | None,
                       settings: TargetSettings) -> None:
    """Quarantine a read difficulty for the first reason that holds, in this order.

    Unknown difficulty name, a modded requirement, the level's own
    quarantine, more dropped notes than ``settings.max_drop_fraction``, then
    the objects' rules; an unquarantined one without notes gets a warning.
    """
    modded = _modded(entry.requirements)
    n_read = diff.counts.get("notes", 0) + diff.counts.get("bombs", 0)
    if diff.quarantine is None:
        if bad_name:
            diff.quarantine = bad_name
        elif modded:
            diff.quarantine = f"requires {modded}"
        elif level_quarantine:
            diff.quarantine = f"level quarantined: {level_quarantine}"
        elif n_read and diff.n_dropped / n_read > settings.max_drop_fraction:
            detail = ", ".join(f"{r} {c}" for r, c in diff.drops.items())
            diff.quarantine = (f"dropped {diff.n_dropped} of {n_read} notes "
                               f"({100 * diff.n_dropped / n_read:.1f}% > {100 * settings.max_drop_fraction:g}%): "
                               f"{detail}")
        else:
            diff.quarantine = _objects_quarantine(diff, settings)
    if diff.quarantine is None and n_read == 0:
        diff.warnings.append("no notes")


def _normalise_objects(diff: Difficulty) -> None:
    from mapkit.preprocess.objects import normalise_objects

    if diff.raw_objects is not None:
        diff.objects, diff.objects_read, diff.objects_drops = normalise_objects(diff.raw_objects, diff.tempo)
        diff.raw_objects = None


def _objects_quarantine(diff: Difficulty, settings: TargetSettings) -> str | None:
    from mapkit.preprocess.objects import quarantine_reason

    return quarantine_reason(diff.objects_read, diff.objects_drops, settings.max_drop_fraction)
