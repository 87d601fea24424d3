"""Generate a level from a song with the two trained models (docs/design.md §7).

    song -> song_features (the code of ``mapkit extract``, float16 as stored)
         -> stage 1: per-frame note probabilities (``ddc.predict_probabilities``,
            the windows the threshold was validated with)
         -> peak picking (the checkpoint's threshold of the difficulty, smoothing, minimum gap)
         -> tempo map from the audio, note beats (optionally snapped to a 1/16 grid)
         -> stage 2: one state per peak by nucleus sampling (or beam search), cached keys/values,
            kept playable by the flow constraint (parity, vision blocks, collisions: mapkit/train/flow.py)
         -> walls, arcs, chains, lights: onsets from the stage-1 event head (``--targets events``), shapes
            from the object model (``mapkit train objects``) fitted to the notes (:func:`_level_objects`)
         (stage 1 to objects once per difficulty)
         -> a level folder (Info.dat v2.1.0 and v3.3.0 difficulties, or every file in v4;
            song.egg, cover.png) and its .zip

Timing. The level's tempo map is estimated from the audio
(:func:`~mapkit.preprocess.beats.estimate_tempo_map`: one tempo for a steady
song, changes only where the music's tempo really changes), ``_songTimeOffset``
0 and beat 0 at audio time 0 (BeatSaver rejects offsets). It is written as v3
``bpmEvents`` (Info ``_beatsPerMinute`` = the song's first tempo, after the lead-in) or, with ``--format
v4``, as the audio-data file's ``bpmData`` regions; for v4 the map used is the
one those regions define (:meth:`TempoMap.to_regions`, starts on whole
samples), so the notes' beats are exactly those of the file. A note at ``t``
seconds sits at beat ``tempo.beats(t)`` (the one beats <-> seconds rule,
:class:`~mapkit.preprocess.tempo.TempoMap`). With snapping, a beat is moved
to the nearest 1/16 beat of that map only when the note stays on its own
stage-1 frame (the snapped time rounds to the same frame,
:func:`~mapkit.preprocess.timebase.frame_of`), moves by at most
``tolerance_s`` and keeps the notes' order; otherwise it stays exact. Either
way every note's time rounds to exactly the frame stage 1 chose, and the
notes of :class:`GeneratedDifficulty` hold exactly the times the level plays
(``tempo.seconds(beat)``). The grid's whole beats lie on the music's beats
(``align_grid``, default): a one-beat lead-in tempo at beat 0 ends on the
song's estimated first beat, and each tempo change becomes a one-beat bridge
onto the next segment's beats (:func:`~mapkit.preprocess.beats.grid_lead_in`);
a constant-tempo song whose first beat is within 1/16 beat of audio time 0
keeps the plain map.

Difficulties. One run makes any set of difficulties (``"all"``: the five):
features, tempo, song.egg and cover once; stage 1 (conditioned on the
difficulty), its peak threshold, peaks and stage 2 per difficulty; one info
file lists every difficulty, one beatmap file each.

Stage-2 sources are built as in training: the normalised stage-2 feature row
of each token's frame (BOS on frame -1, EOS on frame T, i.e. the pad rows)
and the gaps to the previous/next note in seconds and beats from
:func:`~mapkit.preprocess.targets.token_sequence` (BOS at 0 s, EOS at the
end of the song), computed from the times and beats the level will hold.
"""

from __future__ import annotations

import hashlib
import io
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mapkit.writers.beatmap import difficulty_json, dumps, info_json_levels
from mapkit.errors import MapkitError
from mapkit.writers.files import write_level
from mapkit.preprocess.beats import (SNAP_DIVISIONS, estimate_tempo_map, grid_lead_in, placement_envelope,
                                     segment_beats, short_beats, snap_beats)
from mapkit.preprocess.notes import BOMB
from mapkit.preprocess.object_decoding import GENERATED_KINDS
from mapkit.preprocess.targets import notes_from_states
from mapkit.preprocess.tempo import TempoMap
from mapkit.preprocess.timebase import frame_time, song_end_beat
from mapkit.train.checkpoints import PlacementSetup, SelectionSetup
from mapkit.train.flow import FlowSettings
from mapkit.train.objects import DEFAULT_PRIORS

#: Where ``mapkit train ddc`` / ``mapkit train transformer`` write their last checkpoints by default.
DEFAULT_PLACEMENT = "mapkit-runs/ddc/last.pt"
DEFAULT_SELECTION = "mapkit-runs/transformer/last.pt"
#: Name of the generated level (folder and zip): ``<song id>-mapkit`` (:func:`default_level_name`).
LEVEL_SUFFIX = "-mapkit"
#: Audio file names (without extension, any case) that say nothing about the song: Beat Saber's song.egg,
#: Frets on Fire's song.ogg and guitar.ogg... A level generated from such a file is named after its folder.
GENERIC_AUDIO_STEMS = frozenset({"song", "audio", "music", "track", "guitar", "preview", "full"})
#: Output formats: v3 difficulties + Info v2.1.0, or Info/beatmaps/lightshows/audio data in v4.
FORMATS = ("v3", "v4")
#: Stage-2 decoding before the per-difficulty table: flow-constrained nucleus sampling at this temperature and
#: top-p (measured on held-out Expert levels: README "Stage-2 decoding"); still the temperature of every difficulty.
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 0.85
#: Default stage-2 sampling of each difficulty, ``difficulty -> (temperature, top_p)``: the one home of it
#: (README "Stage-2 decoding: variety and playable flow" has the measurement). Easier human levels use fewer
#: layouts (median distinct states: Easy 25, Normal 35, Hard 52, Expert 74, Expert+ 93), so the nucleus is
#: narrower for them; chosen with ``bench/variety.py`` on held-out songs other than the reference's three, for
#: the stage 2 with the copy head (which repeats earlier layouts, so it needs a wider nucleus than design 3 alone).
SAMPLING_BY_DIFFICULTY = {
    "Easy": (DEFAULT_TEMPERATURE, 0.8),
    "Normal": (DEFAULT_TEMPERATURE, 0.85),
    "Hard": (DEFAULT_TEMPERATURE, 0.9),
    "Expert": (DEFAULT_TEMPERATURE, 0.9),
    "ExpertPlus": (DEFAULT_TEMPERATURE, 0.9),
}
#: A default top-p moves by this much, at most this many times, to bring a level inside the object model's
#: variety band (distinct states, top-state share of the training levels: ``variety``); an explicit one does not.
VARIETY_STEP = 0.05
VARIETY_TRIES = 2
#: Times a level above the human band of notes per second is made again from fewer note times (each cut is
#: proportional; the notes a time holds change with it, so one cut can fall short).
NPS_TRIES = 2
#: ``temperature`` / ``top_p`` value of :func:`generate_level` meaning "the difficulty's default"
#: (:data:`SAMPLING_BY_DIFFICULTY`).
BY_DIFFICULTY = "by-difficulty"


# --------------------------------------------------------------------------- tempo and beats


# --------------------------------------------------------------------------- stage 2 input and output


# --------------------------------------------------------------------------- level files


def cover_image(selection: np.ndarray, size: int = 256) -> np.ndarray:
    """A cover drawn from the song itself: its stage-2 log-mel spectrogram, ``[size, size, 3]`` uint8.

    Time runs left to right, low bands at the bottom; values between the 5th
    and 99.5th percentile map onto a dark-blue -> magenta -> yellow ramp.
    """
    x = np.asarray(selection, dtype=np.float32)
    n_frames = x.shape[0]
    if n_frames == 0:
        return np.zeros((size, size, 3), np.uint8)
    # column i is the mean of its frames; a song shorter than the image repeats frames
    starts = np.floor(np.arange(size) * n_frames / size).astype(np.int64)
    counts = np.maximum(np.diff(np.append(starts, n_frames)), 1)
    img = (np.add.reduceat(x, starts, axis=0) / counts[:, None]).T  # [bands, size]
    img = img[np.linspace(x.shape[1] - 1, 0, size).round().astype(int)]  # low bands at the bottom
    lo, hi = np.percentile(img, [5, 99.5])
    v = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)[..., None]
    stops = np.array([[10, 10, 40], [180, 30, 140], [255, 220, 60]], dtype=np.float32)
    rgb = np.where(v < 0.5, stops[0] + (stops[1] - stops[0]) * (v * 2), stops[1] + (stops[2] - stops[1]) * (v * 2 - 1))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def song_egg(source) -> bytes:
    """Ogg Vorbis bytes of the song: the file itself when it already is Ogg Vorbis, else re-encoded.

    Copying keeps the audio bit for bit (no second lossy encoding, and the
    notes stay aligned to exactly the audio they were made from). Other
    formats are decoded with every channel and encoded in 1 s blocks
    (:func:`mapkit.writers.ogg.encode_ogg_vorbis`).
    """
    import soundfile as sf

    from mapkit.writers.ogg import encode_ogg_vorbis
    from mapkit.preprocess.audio import open_source_audio

    file, name, data = open_source_audio(source)
    with file:
        raw = data if data is not None else file.read()
    with sf.SoundFile(io.BytesIO(raw)) as snd:
        if snd.format == "OGG" and snd.subtype == "VORBIS":
            return raw
        audio = snd.read(dtype="float32", always_2d=True)
        rate = snd.samplerate
    serial = int.from_bytes(hashlib.sha256(raw).digest()[:4], "little")  # same song, same bytes
    return encode_ogg_vorbis(audio, rate, serial=serial)


# --------------------------------------------------------------------------- generation


@dataclass
class GeneratedDifficulty:
    """One difficulty :func:`generate_level` made.

    ``notes`` (NOTE_DTYPE, sorted) are exactly the notes written, with the
    time the level plays them at (``tempo.seconds(beat)``). ``peak_frames``
    are the stage-1 peaks above ``threshold`` (one state each), ``snapped``
    says which of them were moved onto the beat grid. ``objects`` maps an
    object kind to its records (``OBJECT_DTYPES[kind]``; empty: notes only).
    ``timings`` maps stage -> seconds: stage1, peaks, stage2.
    """

    difficulty: str
    filename: str
    threshold: float
    notes: np.ndarray
    peak_frames: np.ndarray
    snapped: np.ndarray
    score: float
    #: stage-2 picks that broke a flow rule because no state kept it
    flow_violations: int = 0
    objects: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    #: the checkpoint's threshold of the difficulty (``threshold`` differs when the density band moved it)
    validated_threshold: float | None = None
    #: how stage 2 decoded it (``"T 1, top-p 0.7"``, ``"beam 8"``; empty when not recorded)
    decoding: str = ""

    def summary(self, duration_s: float) -> str:
        """One line: difficulty, notes, bombs, notes per second, objects, snapped, threshold, stage-2 decoding."""
        n_bombs = int((self.notes["color"] == BOMB).sum())
        n_notes = len(self.notes) - n_bombs
        objects = "".join(f"{len(v)} {k.replace('_', ' ')}, " for k, v in self.objects.items())
        return (f"  {self.difficulty}: {self.filename}, {len(self.peak_frames)} note times, {n_notes} notes "
                f"({n_notes / max(duration_s, 1e-9):.2f}/s), {n_bombs} bombs, {objects}{int(self.snapped.sum())} "
                f"snapped to 1/{SNAP_DIVISIONS} beat, threshold {self.threshold:.3g}{self._moved()}"
                f"{f'; stage 2: {self.decoding}' if self.decoding else ''}")

    def _moved(self) -> str:
        v = self.validated_threshold
        return "" if v is None or v == self.threshold else f" (validated {v:.3g}; moved into the human density band)"


@dataclass
class GeneratedLevel:
    """What :func:`generate_level` made: one level folder with one or more difficulties.

    ``charts`` are the difficulties, easiest first (:class:`GeneratedDifficulty`);
    ``difficulty``, ``notes``, ``peak_frames``, ``snapped`` and ``score`` are
    those of the first (the only one when one was asked for). ``tempo`` is the
    level's tempo map, ``bpm`` the song's first tempo (the Info BPM). ``timings`` maps stage ->
    seconds (features, tempo, then stage1, peaks, stage2 summed over the
    difficulties, writing). ``warnings`` says what is off about a level that
    was still written (e.g. no notes found).
    """

    song_id: str
    folder: Path
    zip_path: Path
    tempo: TempoMap
    charts: list
    n_frames: int
    duration_s: float
    format: str = "v3"
    timings: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    #: what the level lacks by choice of the models (e.g. no objects: a checkpoint without events); exit code 0
    notices: list = field(default_factory=list)

    @property
    def bpm(self) -> float:
        """The song's first tempo, the map's ``base_bpm`` (Info ``_beatsPerMinute`` / ``audio.bpm``); a lead-in
        tempo before beat 1 is not it."""
        return self.tempo.base_bpm

    @property
    def flow_violations(self) -> int:
        """Stage-2 picks, over every difficulty, that broke a flow rule because no state kept it."""
        return sum(c.flow_violations for c in self.charts)

    @property
    def difficulties(self) -> list:
        return [c.difficulty for c in self.charts]

    difficulty = property(lambda self: self.charts[0].difficulty)
    notes = property(lambda self: self.charts[0].notes)
    peak_frames = property(lambda self: self.charts[0].peak_frames)
    snapped = property(lambda self: self.charts[0].snapped)
    score = property(lambda self: self.charts[0].score)
    #: walls, arcs, chains, light and boost events of the first difficulty: kind -> records (OBJECT_DTYPES)
    objects = property(lambda self: self.charts[0].objects)

    @property
    def exit_code(self) -> int:
        """0, or 2 when the level was written but something is off (:attr:`warnings`)."""
        return 2 if self.warnings else 0

    def summary(self) -> str:
        """Human-readable: where, format, tempo, time per stage; then one line per difficulty."""
        split = ", ".join(f"{k} {v:.2f} s" for k, v in self.timings.items())
        head = (f"{self.folder} (+ {self.zip_path.name}): {self.format}, {self.tempo.describe()}; "
                f"{self.duration_s:.1f} s of audio in {sum(self.timings.values()):.1f} s ({split})")
        return "\n".join([head] + [c.summary(self.duration_s) for c in self.charts])


def song_metadata(source) -> tuple[str, str]:
    """``(song name, artist)`` for the generated Info.dat.

    From the source level's info file (v2 ``_songName``/``_songAuthorName``,
    v4 ``song.title``/``song.author``) when generating from a level, else from
    the audio's tags (Vorbis comments, WAV/FLAC info: TITLE, ARTIST); the
    song's name (:func:`song_name`) and no artist when there are none.
    """
    title = author = ""
    try:
        if source.kind == "level":
            from mapkit.preprocess.container import LevelContainer

            with LevelContainer(source.path) as c:
                info = c.read_info_json()
            song = info.get("song") if isinstance(info.get("song"), dict) else {}
            title = info.get("_songName") or song.get("title") or info.get("songName") or ""
            author = info.get("_songAuthorName") or song.get("author") or info.get("authorName") or ""
        else:
            import soundfile as sf

            with sf.SoundFile(str(source.path)) as snd:
                title, author = snd.title or "", snd.artist or ""
    except (MapkitError, OSError, RuntimeError, ValueError, AttributeError):
        pass  # no usable metadata: the file name below
    return (str(title).strip() or song_name(source)), str(author).strip()


def song_name(source) -> str:
    """A name for a song ``source`` when nothing better is known: its song id (a level folder's or zip's
    name, an audio file's name without extension), except for an audio file whose name is generic
    (:data:`GENERIC_AUDIO_STEMS`, e.g. ``song.ogg``): then the name of the folder holding it, so
    ``songs/Feelings/song.ogg`` is ``Feelings`` (and songs of one collection no longer share one name)."""
    path = Path(source.path)
    if source.kind == "audio" and path.stem.lower() in GENERIC_AUDIO_STEMS:
        folder = path.resolve().parent.name
        if folder:
            return folder
    return source.song_id


def default_level_name(source) -> str:
    """The generated level's folder (and zip) name for a song ``source``: ``<song_name(source)>-mapkit``."""
    return f"{song_name(source)}{LEVEL_SUFFIX}"


def _refuse_overwrite(out_dir, level_name: str, force: bool):
    """Refuse (MapkitError) to replace an earlier generated level unless ``force``."""
    for path in (Path(out_dir) / level_name, Path(out_dir) / f"{level_name}.zip"):
        if path.exists() and not force:
            raise MapkitError(path, "already exists; give --force to replace it, or choose another --out")


def _song_source(song):
    """The one :class:`~mapkit.preprocess.sources.Source` of ``song`` (audio file, level folder or zip)."""
    from mapkit.preprocess.sources import discover

    path = Path(song)
    if not path.exists():
        raise MapkitError(path, "song does not exist")
    sources = discover(path)
    if len(sources) != 1:
        what = "no song" if not sources else f"{len(sources)} songs"
        raise MapkitError(path, f"expected one song (an audio file, a level folder or a .zip), found {what}")
    return sources[0]


def generate_level(song, placement_model, selection_model, placement_ckpt: dict, selection_ckpt: dict,
                   difficulty="Expert", beam_size: int | None = None,
                   temperature: float | str | None = BY_DIFFICULTY, snap: bool = True, out_dir="mapkit-generated",
                   threshold: float | None = None, seed: int = 0, use_cache: bool = True, name: str | None = None,
                   force: bool = False, top_p: float | str | None = BY_DIFFICULTY, top_k: int | None = None,
                   flow: bool = True, format: str = "v3", object_priors=None,
                   object_kinds=GENERATED_KINDS, align_grid: bool = True) -> GeneratedLevel:
    """Generate a level of ``song`` with loaded models: one or several difficulties in one folder.

    Parameters
    ----------
    song : path
        An audio file, a level folder or a ``.zip`` (anything ``mapkit extract`` reads).
    placement_model : PlacementModel
    selection_model : SelectionModel
    placement_ckpt, selection_ckpt : dict
        The models' checkpoints (:func:`mapkit.train.loop.load_checkpoint`):
        normalisation stats, feature settings, ``window`` and
        ``peak_picking`` (stage 1), ``vocab`` (stage 2).
    difficulty : str or sequence of str
        Easy, Normal, Hard, Expert or ExpertPlus (aliases like "Expert+"
        accepted), several of them, or ``"all"`` (the five). Written easiest first.
    beam_size : int, optional
        Decode stage 2 by beam search with this many beams (1 = greedy)
        instead of sampling; ``temperature``, ``top_p`` and ``top_k`` are then unused.
    temperature : float, optional
        Sampling temperature of stage 2 (None: beam search with ``beam_size`` or 8 beams;
        :data:`BY_DIFFICULTY`: each difficulty's from :data:`SAMPLING_BY_DIFFICULTY`).
    snap : bool
        Snap note beats to 1/16 beat within 10 ms (:func:`snap_beats`).
    out_dir : path
        The level is written to ``out_dir/<name>/`` and ``out_dir/<name>.zip``.
    threshold : float, optional
        Peak threshold for every difficulty, used as given. Without it each
        difficulty starts from the checkpoint's threshold (that of the
        difficulty when validated, else the single best one), moved as little
        as needed to bring its note times per second inside the human band of
        the object model (``note_density``, :mod:`mapkit.preprocess.density`).
    seed : int
        Seed of sampling.
    top_p, top_k : float, int, optional
        Sample only from the nucleus of mass ``top_p`` / the ``top_k`` most probable states (None: no cut;
        ``top_p`` :data:`BY_DIFFICULTY`: each difficulty's from :data:`SAMPLING_BY_DIFFICULTY`).
    flow : bool
        Keep the decoded states playable: no parity error, vision block or
        collision as ``mapkit evaluate`` counts them wherever a state avoids
        it (:class:`~mapkit.train.flow.FlowConstraint`); ``flow_violations``
        of the result counts the picks where none did.
    use_cache : bool
        Incremental decoding with cached keys/values (same result, faster).
    name : str, optional
        Level name (default: :func:`default_level_name`, ``<song id>-mapkit``).
    force : bool
        Replace an existing ``out_dir/<name>`` (else refused before any work).
    format : str
        ``"v3"`` (Info.dat v2.1.0 + v3.3.0 difficulties) or ``"v4"`` (Info 4.0.1,
        beatmaps 4.1.0, a lightshow per difficulty, audio data ``BPMInfo.dat``).
    object_priors : ObjectPriors, optional
        The object model (``mapkit train objects``); None: no walls, arcs, chains or lights (a notice says so).
    object_kinds : iterable of str
        The object kinds to make (:data:`~mapkit.preprocess.object_decoding.GENERATED_KINDS`; ``--no-walls``...
        remove some).
    align_grid : bool
        Put the map's whole beats on the music's beats with a one-beat lead-in tempo
        (:func:`~mapkit.preprocess.beats.grid_lead_in`); False: beat 0 at 0 s at the song's tempo.

    Returns
    -------
    GeneratedLevel
        A difficulty where stage 1 finds no note still gets its (empty)
        beatmap, with a "no notes found" entry in ``warnings``.

    Raises
    ------
    MapkitError
        Unreadable song (:class:`~mapkit.errors.AudioError`), checkpoints that
        do not fit together, an unknown difficulty or format.
    """
    from mapkit.preprocess.features import song_features

    difficulties = _difficulty_names(song, difficulty)
    if format not in FORMATS:
        raise MapkitError(song, f"unknown format {format!r}: choose one of {', '.join(FORMATS)}")
    p_setup, s_setup, thresholds = _checked_setups(song, difficulties, placement_ckpt, selection_ckpt,
                                                   selection_model, threshold)
    settings = p_setup.feature_settings
    timings = {}
    with _timed(timings, "features"):
        source = _song_source(song)
        level_name = name or default_level_name(source)
        _refuse_overwrite(out_dir, level_name, force)
        feats = song_features(source, settings)  # the code of mapkit extract, float16 as the store holds it
    with _timed(timings, "tempo"):
        tempo, egg, regions = _song_tempo(source, feats, settings, format, align_grid)
    sampling = beam_size is None and temperature is not None
    decoding = dict(beam_size=beam_size or 8, seed=seed, use_cache=use_cache, top_k=top_k,
                    flow=FlowSettings() if flow else None)
    charts, notices = [], []
    # the event head's probabilities come from stage 1's own forward passes when objects will be made
    events = bool(object_priors is not None and set(object_kinds) & set(GENERATED_KINDS)
                  and _has_event_head(placement_model, placement_ckpt))
    for difficulty in difficulties:
        own = {}
        band = None if threshold is not None else _band(object_priors, difficulty, "note_density")
        t, p = sampling_for(difficulty, temperature, top_p) if sampling else (None, None)
        variety = _prior(object_priors, difficulty, "variety") if _is_default(top_p) else None
        nps = _band(object_priors, difficulty, "nps_band") if band is not None else None
        th, *made, event_probs, used = _chart(placement_model, selection_model, p_setup, s_setup, feats, tempo,
                                              difficulty, thresholds[difficulty], snap, timings=own, density=band,
                                              events=events, variety=variety, nps=nps, temperature=t, top_p=p,
                                              **decoding)
        p, moved_from = used, (p if used != p else None)
        chart = GeneratedDifficulty(difficulty, _beatmap_filename(difficulty), th, *made, timings=own,
                                    validated_threshold=thresholds[difficulty],
                                    decoding=_decoding_text(t, p, top_k, decoding["beam_size"], moved_from))
        with _timed(own, "objects"):
            chart.objects, chart_notices = _level_objects(placement_model, p_setup, placement_ckpt, feats, difficulty,
                                                          chart.notes, tempo, object_priors, object_kinds, seed,
                                                          event_probs)
        notices += [n for n in chart_notices if n not in notices]
        charts.append(chart)
        for stage, seconds in own.items():
            timings[stage] = timings.get(stage, 0.0) + seconds
    with _timed(timings, "writing"):
        out_dir = Path(out_dir)
        if (out_dir / level_name).resolve() == Path(source.path).resolve():
            raise MapkitError(out_dir / level_name, "the generated level would replace the input song; choose --out")
        written = write_level(out_dir, level_name, _level_files(source, tempo, charts, feats, settings, format, egg,
                                                                regions))
    warnings = [f"no notes found for {c.difficulty}: stage 1 put no peak above the threshold {c.threshold:g} in "
                f"the {feats.duration_s:.2f} s of {source.path}; its beatmap was written without notes"
                for c in charts if len(c.peak_frames) == 0]
    return GeneratedLevel(song_id=source.song_id, folder=written["folder"], zip_path=written["zip"], tempo=tempo,
                          charts=charts, n_frames=feats.n_frames, duration_s=feats.duration_s, format=format,
                          timings=timings, warnings=warnings, notices=notices)


def sampling_for(difficulty: str, temperature=BY_DIFFICULTY, top_p=BY_DIFFICULTY) -> tuple:
    """``(temperature, top_p)`` of stage-2 sampling for ``difficulty``: each value given as is, each left at
    :data:`BY_DIFFICULTY` from :data:`SAMPLING_BY_DIFFICULTY` (a difficulty not in it: :data:`DEFAULT_TEMPERATURE`,
    :data:`DEFAULT_TOP_P`).

    >>> sampling_for("Easy")
    (1.0, 0.8)
    >>> sampling_for("Easy", top_p=0.9)
    (1.0, 0.9)
    """
    default_t, default_p = SAMPLING_BY_DIFFICULTY.get(difficulty, (DEFAULT_TEMPERATURE, DEFAULT_TOP_P))
    return (default_t if _is_default(temperature) else temperature, default_p if _is_default(top_p) else top_p)


def _decoding_text(temperature, top_p, top_k, beam_size: int, moved_from=None) -> str:
    """How stage 2 decoded a difficulty, for its summary line: ``"T 1, top-p 0.7"``, ``"beam 8"``, or with the
    table's top-p ``moved_from`` ``"T 1, top-p 0.75 (table 0.7, moved into the variety band)"``."""
    if temperature is None:
        return "greedy" if beam_size == 1 else f"beam {beam_size}"
    cuts = "".join(f", {name} {v:g}" for name, v in (("top-p", top_p), ("top-k", top_k)) if v is not None)
    moved = f" (table {moved_from:g}, moved into the variety band)" if moved_from is not None else ""
    return f"T {temperature:g}{cuts}{moved}"


def _difficulty_names(song, difficulty) -> list:
    """Canonical difficulty names, easiest first, each once: ``"all"`` is the five; MapkitError for unknown ones."""
    from mapkit.preprocess.difficulties import DIFFICULTIES, canonical_difficulty

    names = [difficulty] if isinstance(difficulty, str) else list(difficulty)
    if any(str(n).strip().lower() == "all" for n in names):
        return list(DIFFICULTIES)
    try:
        chosen = {canonical_difficulty(n) for n in names}
    except ValueError as e:
        raise MapkitError(song, str(e)) from None
    if not chosen:
        raise MapkitError(song, "no difficulty asked for")
    return [d for d in DIFFICULTIES if d in chosen]


def _beatmap_filename(difficulty: str) -> str:
    return f"{difficulty}Standard.dat"


def _chart(placement_model, selection_model, p_setup, s_setup, feats, tempo, difficulty: str, th: float,
           snap: bool, timings: dict, density=None, events: bool = False, variety=None, nps=None,
           **decoding) -> tuple:
    """One difficulty, stage 1 to stage 2: ``(threshold used, notes, peak frames, snapped, score, flow
    violations, event probabilities, top-p used)``; its stage times are added to ``timings``. With a
    ``density`` band (note times per second) the threshold moves from ``th`` as little as it can to bring the
    level inside it (:mod:`~mapkit.preprocess.density`); with a ``variety`` band the top-p moves
    (:func:`_varied_states`); with an ``nps`` band (colour notes per second) a level above it is made again
    from proportionally fewer note times (:func:`_fewer_note_times`, at most :data:`NPS_TRIES` times).
    ``events``: also the event head's ``[T, K]`` probabilities (same forward passes), else None."""
    from mapkit.preprocess.density import threshold_for_density

    with _timed(timings, "stage1"):
        probs = _note_probabilities(placement_model, p_setup, feats.placement, difficulty,
                                    classes="both" if events else False)
        probs, event_probs = probs if events else (probs, None)
    with _timed(timings, "peaks"):
        if density is not None:
            th = threshold_for_density(probs, th, density, feats.duration_s,
                                       p_setup.min_gap_frames, p_setup.smoothing)
        frames, beats, snapped = _note_beats(probs, th, p_setup, tempo, feats.duration_s, snap)
    with _timed(timings, "stage2"):
        def decode(top_p):
            return _note_states(selection_model, s_setup, feats, frames, beats, tempo, difficulty=difficulty,
                                **{**decoding, "top_p": top_p})

        top_p = decoding.get("top_p")
        (notes, score, violations), top_p = _varied_states(decode, top_p, variety, difficulty, feats.duration_s)
    for _ in range(NPS_TRIES):
        fewer = _fewer_note_times(probs, th, notes, len(frames), difficulty, feats.duration_s, nps, p_setup)
        if fewer is None:
            break
        with _timed(timings, "peaks"):
            th = fewer
            frames, beats, snapped = _note_beats(probs, th, p_setup, tempo, feats.duration_s, snap)
        with _timed(timings, "stage2"):
            notes, score, violations = decode(top_p)
    return th, notes, frames, snapped, score, violations, event_probs, top_p


def _fewer_note_times(probs, th: float, notes, n_times: int, difficulty: str, duration_s: float, nps,
                      p_setup) -> float | None:
    """The higher threshold that leaves ``high / nps_mean`` of the ``n_times`` note times, when the level's
    colour notes per second (``evaluate``'s ``nps_mean``) lie above the ``nps`` band's ``high``; else None.

    The density band holds note *times*; stage 2 then decides how many notes each holds, so a level with
    many double notes can leave the human band of notes per second. One proportional cut (``_chart``
    makes at most :data:`NPS_TRIES`)."""
    from mapkit.preprocess.density import threshold_for_density
    from mapkit.preprocess.quality import level_metrics

    if not nps or not n_times:
        return None
    rate = float(level_metrics(notes, difficulty, duration_s).values["nps_mean"])
    if not rate > nps[1]:
        return None
    target = n_times / max(duration_s, 1e-9) * nps[1] / rate
    moved = threshold_for_density(probs, th, (0.0, target), duration_s, p_setup.min_gap_frames, p_setup.smoothing)
    return moved if moved > th else None


def _variety_step(notes, difficulty: str, duration_s: float, band) -> int:
    """+1: too little variety for ``band`` (distinct states below it or the top state's share above it), -1:
    too much (the reverse), 0: inside it, no band, or both at once."""
    from mapkit.preprocess.quality import level_metrics

    if not band:
        return 0
    values = level_metrics(notes, difficulty, duration_s).values
    (d_low, d_high), (t_low, t_high) = (band.get(k) or (-np.inf, np.inf) for k in ("distinct_states",
                                                                                   "top_state_share"))
    few = values["distinct_states"] < d_low or values["top_state_share"] > t_high
    many = values["distinct_states"] > d_high or values["top_state_share"] < t_low
    return int(few) - int(many)


def _band_excess(notes, difficulty: str, duration_s: float, band) -> float:
    """How far a level lies outside the ``variety`` band: the sum over its metrics of the distance beyond the
    nearer edge, relative to that edge (0 inside)."""
    from mapkit.preprocess.quality import level_metrics

    values = level_metrics(notes, difficulty, duration_s).values
    total = 0.0
    for metric, (low, high) in band.items():
        v = float(values[metric])
        edge, beyond = (low, low - v) if v < low else (high, v - high)
        total += max(beyond, 0.0) / max(abs(edge), 1e-9)
    return total


def _varied_states(decode, top_p, band, difficulty: str, duration_s: float):
    """``(decode(p), p)``: stage 2 with ``top_p``, moved by :data:`VARIETY_STEP` (at most :data:`VARIETY_TRIES`
    times, one way) while the level lies outside the ``variety`` band of the object model; a move that
    overshoots (the other way out) keeps whichever of the two draws lies nearer the band (:func:`_band_excess`;
    the one before it on a tie). No band or no ``top_p``: one draw."""
    made = decode(top_p)
    if top_p is None or not band:
        return made, top_p
    step = _variety_step(made[0], difficulty, duration_s, band)
    for _ in range(VARIETY_TRIES if step else 0):
        p = round(min(max(top_p + step * VARIETY_STEP, VARIETY_STEP), 1.0), 6)
        if p == top_p:
            break
        again = decode(p)
        now = _variety_step(again[0], difficulty, duration_s, band)
        if now == -step:  # overshot: the draw that lies nearer the band
            if _band_excess(again[0], difficulty, duration_s, band) < _band_excess(made[0], difficulty, duration_s,
                                                                                    band):
                made, top_p = again, p
            break
        made, top_p = again, p
        if now == 0:
            break
    return made, top_p


def _has_event_head(placement_model, placement_ckpt: dict) -> bool:
    """Whether stage 1 was trained with ``--targets events`` (its class head predicts every event channel)."""
    from mapkit.preprocess.frame_events import FRAME_EVENT_CHANNELS

    return placement_ckpt.get("targets") == "events" and placement_model.config.n_classes == len(FRAME_EVENT_CHANNELS)


def _is_default(value) -> bool:
    return isinstance(value, str) and value == BY_DIFFICULTY


def _prior(priors, difficulty: str, key: str):
    """``key`` of the object model's entry for ``difficulty``, or None (no model, an older one without it, or
    the difficulty not fitted)."""
    return ((priors.difficulties.get(difficulty) or {}) if priors is not None else {}).get(key) or None


def _band(priors, difficulty: str, key: str):
    """A ``(low, high)`` human band of the object model (``note_density``: note times per second, ``nps_band``:
    colour notes per second), or None (no model or entry, or an empty band)."""
    band = _prior(priors, difficulty, key)
    return tuple(band) if band and band[1] > 0 else None


def _song_tempo(source, feats, settings, format: str, align_grid: bool = True):
    """The level's tempo map from the placement features (``align_grid``: with the lead-in that puts its whole
    beats on the music's), and the song.egg bytes and audio-data regions when ``format`` needs them (v4: the
    map is that of the regions, whose starts lie on whole samples of song.egg; they are written as made, so
    the level reads back with exactly this map); else ``(tempo, None, None)``."""
    envelope = placement_envelope(feats.placement, settings)
    tempo = estimate_tempo_map(envelope, settings.fps)
    if align_grid:
        tempo = grid_lead_in(tempo, segment_beats(envelope, tempo, settings.fps))
    if format != "v4":
        return tempo, None, None
    egg = song_egg(source)
    n_samples, rate = _audio_size(egg)
    regions = tempo.to_regions(n_samples, rate)
    return TempoMap.from_regions(tempo.base_bpm, regions, rate, n_samples), egg, regions


def _audio_size(egg: bytes) -> tuple[int, int]:
    """``(samples, sample rate)`` of Ogg Vorbis bytes."""
    import soundfile as sf

    info = sf.info(io.BytesIO(egg))
    return int(info.frames), int(info.samplerate)


@contextmanager
def _timed(timings: dict, stage: str):
    """Add the seconds the block takes to ``timings[stage]``."""
    clock = time.perf_counter()
    yield
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - clock


def _checked_setups(song, difficulties: list, placement_ckpt: dict, selection_ckpt: dict, selection_model,
                    threshold):
    """``(PlacementSetup, SelectionSetup, {difficulty: threshold})``; MapkitError when they do not fit."""
    p_setup = PlacementSetup.from_checkpoint(placement_ckpt)
    s_setup = SelectionSetup.from_checkpoint(selection_ckpt)
    if p_setup.feature_settings != s_setup.feature_settings:
        raise MapkitError(song, f"the checkpoints were trained on different features "
                                f"({p_setup.feature_settings.hash} vs {s_setup.feature_settings.hash})")
    if len(s_setup.vocab) != selection_model.config.vocab_size:
        raise MapkitError(song, f"the stage-2 vocabulary has {len(s_setup.vocab)} tokens, "
                                f"the model {selection_model.config.vocab_size}")
    thresholds = {d: p_setup.threshold_for(d) if threshold is None else float(threshold) for d in difficulties}
    if any(th is None for th in thresholds.values()):
        raise MapkitError(song, "the stage-1 checkpoint holds no validated threshold (trained without a "
                                "validation split); pass a threshold")
    return p_setup, s_setup, thresholds


def _note_probabilities(placement_model, p_setup: PlacementSetup, placement: np.ndarray, difficulty: str,
                        classes: bool = False):
    """Stage 1: the note probability of every frame (``classes``: every event channel's, ``[T, K]``), in the
    windows the threshold was validated with."""
    import torch

    from mapkit.preprocess.difficulties import DIFFICULTY_INDEX
    from mapkit.train.ddc import predict_probabilities, song_beat

    placement_model.eval()
    with torch.inference_mode():
        return predict_probabilities(placement_model, placement, DIFFICULTY_INDEX[difficulty], p_setup.mean,
                                     p_setup.std, p_setup.feature_settings.silence_value, window=p_setup.window,
                                     device=next(placement_model.parameters()).device, classes=classes,
                                     beat=song_beat(placement_model, placement, p_setup.feature_settings))


def _note_beats(probs, th: float, p_setup: PlacementSetup, tempo: TempoMap, duration_s: float, snap: bool):
    """Peaks inside the audio, as ``(frames, beats, snapped)``: beats of ``tempo`` (snapped to 1/16 of its grid
    where the note stays on its frame), written short, every one still on its frame."""
    from mapkit.preprocess.peaks import pick_peaks

    fps = p_setup.feature_settings.fps
    frames = pick_peaks(probs, th, p_setup.min_gap_frames, p_setup.smoothing)
    exact_s = frame_time(frames, fps)
    frames, exact_s = frames[exact_s < duration_s], exact_s[exact_s < duration_s]  # inside the audio
    exact_beats = tempo.beats(exact_s)
    if snap:
        beats, snapped = snap_beats(exact_beats, tempo, end_beat=tempo.beats(duration_s), fps=fps)
    else:
        beats, snapped = exact_beats, np.zeros(len(frames), dtype=bool)
    return frames, short_beats(beats, tempo), snapped  # 3.8, not 3.8002399999999996, on the same frames


def _note_states(selection_model, s_setup: SelectionSetup, feats, frames, beats, bpm: float, temperature=None,
                 beam_size: int = 8, seed: int = 0, use_cache: bool = True, top_p: float | None = None,
                 top_k: int | None = None, difficulty: str = "Expert", flow=None):
    """Stage 2: one state per note time; ``(notes, score, violations)``.

    Beam search, or sampling at ``temperature`` (with ``top_p``/``top_k``) when
    it is given; ``flow`` (:class:`~mapkit.train.flow.FlowSettings`, None: no
    rule) keeps the decoded states playable (:class:`~mapkit.train.flow.FlowConstraint`);
    ``violations`` counts the picks that broke a rule because no state kept it.
    """
    import torch

    from mapkit.datasets.schema import GAP_NAMES
    from mapkit.datasets.torch_datasets import selection_source
    from mapkit.preprocess.difficulties import DIFFICULTY_INDEX
    from mapkit.preprocess.targets import token_sequence
    from mapkit.train.decoding import beam_search, sample
    from mapkit.train.flow import FlowConstraint, vocab_features

    settings, T = s_setup.feature_settings, feats.n_frames
    tempo = bpm if isinstance(bpm, TempoMap) else TempoMap.constant(bpm)
    times = tempo.seconds(beats)
    seq = token_sequence(frames, np.zeros(len(frames), np.int32), times, beats, T,
                         end_beat=song_end_beat(tempo, T, settings.fps), fps=settings.fps)
    gaps = np.stack([getattr(seq, name) for name in GAP_NAMES], axis=1)
    src = torch.from_numpy(selection_source(feats.selection, seq.token_frames, gaps, s_setup.mean, s_setup.std,
                                            settings.selection_pad, selection_model.config.source_layout,
                                            DIFFICULTY_INDEX[difficulty]))
    constraint = None if flow is None else FlowConstraint(vocab_features(s_setup.vocab), times, difficulty, flow)
    with torch.inference_mode():
        if temperature is not None:
            hyp = sample(selection_model, src, None, len(frames), temperature=float(temperature), use_cache=use_cache,
                         generator=torch.Generator().manual_seed(int(seed)), window=s_setup.window, top_p=top_p,
                         top_k=top_k, constraint=constraint)
        else:
            hyp = beam_search(selection_model, src, None, len(frames), beam_size=int(beam_size), use_cache=use_cache,
                              window=s_setup.window, constraint=constraint)
    states = [s_setup.vocab.decode(t) for t in hyp.states.tolist()]
    return notes_from_states(times, beats, states), hyp.score, hyp.violations


def _level_objects(placement_model, p_setup: PlacementSetup, placement_ckpt: dict, feats, difficulty: str, notes,
                   tempo, priors, kinds, seed: int, event_probs=None) -> tuple[dict, list]:
    """Walls, arcs, chains and lights (:func:`~mapkit.preprocess.object_decoding.decode_objects`): ``(objects,
    notices)``. None without the stage-1 event head or the object model (a notice says how to get them).
    ``event_probs``: the event head's probabilities when stage 1 already computed them."""
    from mapkit.preprocess.frame_events import FRAME_EVENT_CHANNELS
    from mapkit.preprocess.object_decoding import decode_objects

    kinds = tuple(k for k in GENERATED_KINDS if k in set(kinds))
    if not kinds:
        return {}, []
    if not _has_event_head(placement_model, placement_ckpt):
        return {}, ["no walls, arcs, chains or lights: the stage-1 checkpoint has no event head; train it with "
                    "`mapkit train ddc --targets events` (and fit the object model with `mapkit train objects`)"]
    table = priors.for_difficulty(difficulty) if priors is not None else None
    if table is None and priors is not None:
        return {}, ["no walls, arcs, chains or lights: the object model has no fitted difficulty (fitted on a "
                    "store without training levels?); fit it again with `mapkit train objects --store STORE`"]
    if table is None:
        return {}, ["no walls, arcs, chains or lights: no object model; fit one with `mapkit train objects "
                    "--store STORE` and pass it with --objects"]
    probs = event_probs if event_probs is not None else _note_probabilities(
        placement_model, p_setup, feats.placement, difficulty, classes=True)
    thresholds = (placement_ckpt.get("event_peak_picking") or {}).get("thresholds") or {}
    objects = decode_objects(probs, FRAME_EVENT_CHANNELS, notes, table, thresholds, tempo, feats.duration_s,
                             p_setup.feature_settings.fps, seed=seed, kinds=kinds,
                             min_gap_frames=p_setup.min_gap_frames, smoothing=p_setup.smoothing)
    return objects, []


def _level_files(source, tempo: TempoMap, charts: list, feats, settings, format: str = "v3",
                 egg: bytes | None = None, regions=None) -> dict:
    """The files of the generated level: the info file listing every difficulty, a beatmap per difficulty
    (each with its chart's ``objects``: kind -> records), song.egg, cover.png; v4 also the audio-data file
    (``regions``, the ones ``tempo`` was made from; None: ``tempo.to_regions``) and a lightshow per difficulty."""
    from mapkit.writers.png import png_bytes

    title, author = song_metadata(source)
    egg = song_egg(source) if egg is None else egg
    beatmaps = [(c.difficulty, c.filename) for c in charts]
    if format == "v4":
        files = _v4_files(title, author, tempo, charts, feats.duration_s, egg, regions)
    else:
        files = {"Info.dat": dumps(info_json_levels(title, tempo.base_bpm, beatmaps, feats.duration_s, author=author),
                                   pretty=True)}
        files.update({c.filename: dumps(difficulty_json(c.notes, tempo, c.objects)) for c in charts})
    files["song.egg"] = egg
    files["cover.png"] = png_bytes(cover_image(settings.unpad("selection", feats.selection)))
    return files


def _v4_files(title: str, author: str, tempo: TempoMap, charts: list, duration_s: float, egg: bytes,
              regions=None) -> dict:
    """Info.dat v4, BPMInfo.dat (the tempo's regions over song.egg), and each difficulty's beatmap and lightshow."""
    from mapkit.writers import v4

    n_samples, rate = _audio_size(egg)
    regions = tempo.to_regions(n_samples, rate) if regions is None else regions
    files = {
        "Info.dat": dumps(v4.v4_info(title, tempo.base_bpm, [(c.difficulty, c.filename) for c in charts],
                                     duration_s, author=author), pretty=True),
        v4.AUDIO_DATA_FILENAME: dumps(v4.v4_audio_data(regions, n_samples, rate,
                                                       checksum=hashlib.sha1(egg).hexdigest()), pretty=True),
    }
    for c in charts:
        files[c.filename] = dumps(v4.v4_beatmap(c.notes, c.objects))
        files[v4.lightshow_filename(c.difficulty)] = dumps(v4.v4_lightshow(c.objects))
    return files


def missing_checkpoints(placement, selection) -> str | None:
    """None when both checkpoint files exist, else a message naming each missing one and how to make it."""
    lines = []
    for path, stage, default in ((placement, "ddc", DEFAULT_PLACEMENT), (selection, "transformer", DEFAULT_SELECTION)):
        if not Path(path).is_file():
            out = Path(path).parent
            how = f"mapkit train {stage}" + ("" if Path(path) == Path(default) else f" --out {out}")
            lines.append(f"  {path}: missing; make it with `{how}` (stage {'1' if stage == 'ddc' else '2'})")
    if not lines:
        return None
    return "\n".join(["generation needs both trained models:", *lines,
                      "  (first `mapkit extract` and `mapkit build-targets` your levels into the store; trained "
                      "into another --out? pass --placement OUT/last.pt and --selection OUT/last.pt)"])


def _check_device(device: str) -> None:
    """MapkitError naming ``--device`` when torch does not know the device or this machine lacks it."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as e:
        raise MapkitError(f"--device {device}", f"not a torch device ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MapkitError(f"--device {device}", "CUDA is not available on this machine (or this torch is CPU-only)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise MapkitError(f"--device {device}", "MPS is not available on this machine")


def generate(song, placement=DEFAULT_PLACEMENT, selection=DEFAULT_SELECTION, device: str = "cpu",
             threads: int | None = None, objects=DEFAULT_PRIORS, **kwargs) -> GeneratedLevel:
    """Load both checkpoints and generate a level of ``song`` (see :func:`generate_level`).

    Parameters
    ----------
    song : path
    placement, selection : path
        Checkpoints of ``mapkit train ddc`` and ``mapkit train transformer``.
    device : str
        Torch device of the models.
    threads : int, optional
        Torch CPU threads (``torch.set_num_threads``; 1 is fastest on small CPUs: decoding is a long
        chain of small steps); None leaves torch's setting.
    objects : path, optional
        The object model (``mapkit train objects``); None, or the default path when no file is there: no
        objects (a notice says so); another path that cannot be read: MapkitError.
    **kwargs
        Passed to :func:`generate_level` (difficulty, beam_size, temperature, snap, out_dir, ...).

    Raises
    ------
    MapkitError
        A checkpoint is missing (the message says which and the command that
        makes it) or unreadable, or any error of :func:`generate_level`.
    """
    message = missing_checkpoints(placement, selection)
    if message:
        missing = [str(p) for p in (placement, selection) if not Path(p).is_file()]
        raise MapkitError(", ".join(missing), message)
    import torch

    from mapkit.train.loop import load_checkpoint

    if threads is not None:
        torch.set_num_threads(int(threads))
    _check_device(device)
    p_model, p_ckpt = load_checkpoint(placement, device)
    s_model, s_ckpt = load_checkpoint(selection, device)
    if p_ckpt.get("model_kind") != "placement":
        raise MapkitError(placement, f"not a stage-1 (ddc) checkpoint: it holds a {p_ckpt.get('model_kind')} model")
    if s_ckpt.get("model_kind") != "selection":
        raise MapkitError(selection, f"not a stage-2 (transformer) checkpoint: it holds a "
                                     f"{s_ckpt.get('model_kind')} model")
    if objects is not None and (Path(objects).is_file() or Path(objects) != Path(DEFAULT_PRIORS)):
        from mapkit.train.objects import load_object_priors

        kwargs.setdefault("object_priors", load_object_priors(objects))  # a named file that is missing: an error
    return generate_level(song, p_model, s_model, p_ckpt, s_ckpt, **kwargs)
