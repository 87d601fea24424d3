"""A song's beats from its audio: onset envelope, global tempo, tempo map, beats snapped to its grid. Pure numpy.

``mapkit generate`` times the notes it places with these (docs/design.md §7):
the global tempo (:func:`estimate_tempo` of :func:`onset_envelope`, octave
settled by a prior on the tempi human maps use), a tempo map that changes
only where the music's tempo really does (:func:`estimate_tempo_map`:
:func:`local_tempi`, :func:`tempo_changes` with hysteresis and a minimum
segment length, :func:`tempo_support`), beat 0 at audio time 0 and a
one-beat lead-in that puts the whole beats on the music's (:func:`grid_lead_in`), beats
optionally moved onto the map's 1/16 grid where the note stays on its frame
(:func:`snap_beats`), and written with the fewest decimals that keep it
there (:func:`short_beats`).

Why numpy and not librosa's beat tracker (``librosa.beat.beat_track``, the
same dynamic-programming tracker on the same onset envelope): its numba
compilation costs 15-77 s per process on the 2-core build machine
(``librosa.feature.tempo``, ``tempogram``: 14 s) against 0.1 s for a
3-minute song here, and generation must make a whole level in 30 s.
"""

from __future__ import annotations

import math

import numpy as np

from mapkit.preprocess.tempo import TempoMap
from mapkit.preprocess.timebase import FPS, frame_of

#: Grid divisions per beat of snapping, and how far (s) a note may move onto the grid.
SNAP_DIVISIONS = 16
SNAP_TOLERANCE_S = 0.010
#: Tempo search range and prior: log-normal around 140 BPM, one octave wide (librosa: 120 BPM). 140 is where the
#: octave errors against 81 human maps were fewest (docs/design.md §7): 120 read 16 of them at half tempo.
MIN_BPM, MAX_BPM, PRIOR_BPM, PRIOR_OCTAVES = 60.0, 240.0, 140.0, 1.0
#: Local tempo windows (s) and hop (s); a tempo change needs this relative size and this many seconds.
LOCAL_WINDOW_S, LOCAL_HOP_S, LOCAL_BAND = 8.0, 1.0, 1.3
CHANGE_THRESHOLD, MIN_SEGMENT_S = 0.03, 12.0
#: A changed segment must be this much more periodic at its new tempo than at the old one (:func:`tempo_support`).
CHANGE_SUPPORT = 1.3


def onset_envelope(log_mel: np.ndarray, top_db: float = 80.0) -> np.ndarray:
    """Spectral flux of a natural-log mel spectrogram: the onset strength of every frame.

    Parameters
    ----------
    log_mel : np.ndarray [shape=(T, n_mels)]
        ``ln(mel power + floor)``, time first (e.g. one FFT size of the placement features).
    top_db : float
        Values more than ``top_db`` below the maximum are raised to it (as
        ``librosa.power_to_db``), so near-silence does not make onsets.

    Returns
    -------
    np.ndarray [shape=(T,), dtype=float32]
        ``mean_over_bands(max(0, dB[t] - dB[t-1]))``, 0 on frame 0 (librosa's
        ``onset_strength`` with lag 1 and no max filter).
    """
    db = np.asarray(log_mel, dtype=np.float32) * np.float32(10.0 / math.log(10.0))
    if db.shape[0] == 0:
        return np.zeros(0, np.float32)
    db = np.maximum(db, db.max() - np.float32(top_db))
    flux = np.maximum(np.diff(db, axis=0), 0.0).mean(axis=1)
    return np.concatenate([[0.0], flux]).astype(np.float32)


def _periodicity(magnitude: np.ndarray, n_fft: int, bpms: np.ndarray, fps: float, harmonics: int = 4) -> np.ndarray:
    """Sum over harmonics h of ``|X(h * bpm / 60)| / h``, ``X`` the zero-padded spectrum of the envelope.

    ``magnitude`` is ``|rfft(x, n_fft)|``; each frequency is read at its nearest
    bin (``fps / n_fft`` Hz apart: 0.0057 BPM for 2**20 points at 100 fps).
    """
    out = np.zeros(len(bpms))
    for h in range(1, harmonics + 1):
        bins = np.rint(h * np.asarray(bpms, np.float64) / 60.0 * n_fft / fps).astype(np.int64)
        out += magnitude[np.minimum(bins, len(magnitude) - 1)] / h
    return out


def estimate_tempo(envelope: np.ndarray, fps: float = FPS, min_bpm: float = MIN_BPM, max_bpm: float = MAX_BPM,
                   prior_bpm: float = PRIOR_BPM, default: float = PRIOR_BPM, prior_octaves: float = PRIOR_OCTAVES) -> float:
    """Global tempo (BPM) of a song from its onset envelope.

    Two steps, both numpy (librosa's beat tracker costs 15-77 s of numba
    compilation per process on the build machine):

    1. coarse: the autocorrelation of the envelope (local mean removed)
       summed at lags ``k * 60 * fps / bpm`` for ``k = 1..4`` (a comb that
       rewards the beat and its multiples), weighted by a log-normal prior of
       ``prior_octaves`` around ``prior_bpm`` (140: the tempo range of human
       maps, which settles half/double tempo), on a 0.1 BPM grid;
    2. fine: around the coarse value (+-1 %), the whole-song Fourier
       magnitude of the envelope at the beat frequency and its first 4
       harmonics, on a 0.01 BPM grid: far finer than the frame rate allows
       for lags. An integer BPM is preferred when its score is within 0.5 %
       of the best (most songs are produced at integer tempi).

    Parameters
    ----------
    envelope : np.ndarray [T]
        Onset strength per frame (:func:`onset_envelope`).
    fps : float
        Frames per second of the envelope.
    min_bpm, max_bpm : float
        Search range.
    prior_bpm : float
        Centre of the prior (settles octave ambiguity).
    default : float
        Returned when the envelope is too short (< 4 beats at ``min_bpm``) or flat.
    prior_octaves : float
        Width (standard deviation, octaves) of the prior; ``inf``: flat.

    Returns
    -------
    float
        BPM rounded to 0.01.
    """
    x = np.asarray(envelope, dtype=np.float64)
    max_lag = 60.0 * fps / min_bpm
    if len(x) < 4 * max_lag or not np.any(x > 0):
        return float(default)
    width = int(fps)  # 1 s moving average: removes loudness swells, keeps beat-rate periodicity
    x = x - np.convolve(x, np.ones(width) / width, mode="same")
    n_fft = 1 << int(np.ceil(np.log2(2 * len(x))))
    spec = np.fft.rfft(x, n_fft)
    ac = np.fft.irfft(spec * np.conj(spec), n_fft)[: int(4 * max_lag) + 2]
    if ac[0] <= 0:
        return float(default)
    ac = ac / ac[0]
    bpms = np.arange(min_bpm, max_bpm + 1e-9, 0.1)
    lags = 60.0 * fps / bpms
    comb = sum(np.interp(k * lags, np.arange(len(ac)), ac) for k in range(1, 5))
    prior = np.exp(-0.5 * (np.log2(bpms / prior_bpm) / prior_octaves) ** 2)
    coarse = float(bpms[np.argmax(np.maximum(comb, 0) * prior)])
    n_fine = max(1 << 20, 1 << int(np.ceil(np.log2(len(x)))))
    magnitude = np.abs(np.fft.rfft(x, n_fine))
    fine = np.round(np.arange(coarse * 0.99, coarse * 1.01, 0.01), 2)
    score = _periodicity(magnitude, n_fine, fine, fps)
    best = float(fine[np.argmax(score)])
    integer = float(round(best))
    if abs(integer - best) <= coarse * 0.01:
        if _periodicity(magnitude, n_fine, np.array([integer]), fps)[0] >= 0.995 * score.max():
            return integer
    return round(best, 2)


#: Beat periods (in beats) whose phase stage 1 can take as input (``PlacementConfig.beat_periods``).
BEAT_INPUT_PERIODS = (0.5, 1.0, 2.0)


def beat_offset(envelope: np.ndarray, bpm: float, fps: float = FPS, step: float = 0.25) -> float:
    """Frame of the song's first beat in ``[0, period)``: the phase whose beats hold the most onset strength.

    For every candidate phase (``step`` frames apart) the envelope is read,
    linearly interpolated, at the frames ``phase + k * period`` of the whole
    song (``period = 60 * fps / bpm``) and averaged; the best mean wins.

    >>> env = np.zeros(1000, np.float32); env[25::50] = 1.0      # a hit every 0.5 s from 0.25 s at 100 fps
    >>> beat_offset(env, 120.0)
    25.0
    """
    x = np.asarray(envelope, dtype=np.float64)
    period = 60.0 * fps / float(bpm)
    if x.size < 2 or not period > 0:
        return 0.0
    phases = np.arange(0.0, period, step)
    beats = np.arange(0.0, x.size - 1, period)
    frames = phases[:, None] + beats[None, :]
    inside = frames <= x.size - 1
    values = np.interp(np.where(inside, frames, 0.0), np.arange(x.size), x)
    score = (values * inside).sum(axis=1) / np.maximum(inside.sum(axis=1), 1)
    return float(phases[int(np.argmax(score))])


def beat_inputs(n_frames: int, bpm: float, offset_frames: float, periods=BEAT_INPUT_PERIODS,
                fps: float = FPS) -> np.ndarray:
    """Per frame, ``sin`` and ``cos`` of ``2 pi beat / P`` for each period ``P`` (beats): ``[T, 2 len(periods)]``.

    ``beat = (frame - offset_frames) * bpm / (60 fps)``: beat 0 at ``offset_frames``.

    >>> beat_inputs(3, 60.0, 0.0, (1.0,), fps=4).round(3).tolist()   # a beat is 4 frames
    [[0.0, 1.0], [1.0, 0.0], [0.0, -1.0]]
    """
    beat = (np.arange(int(n_frames), dtype=np.float64) - offset_frames) * float(bpm) / (60.0 * fps)
    angles = 2.0 * np.pi * beat[:, None] / np.asarray(periods, dtype=np.float64)[None, :]
    out = np.empty((int(n_frames), 2 * len(periods)), dtype=np.float32)
    out[:, 0::2], out[:, 1::2] = np.sin(angles), np.cos(angles)
    return out


def placement_envelope(placement: np.ndarray, settings) -> np.ndarray:
    """:func:`onset_envelope` ``[T]`` of a song's padded placement features (``[T + 2 pad, n_ffts, n_mels]``).

    The middle FFT size (2048 at the defaults: librosa's onset resolution) of the
    song frames; ``settings`` is the store's :class:`~mapkit.settings.FeatureSettings`.
    """
    column = len(settings.placement_n_ffts) // 2
    return onset_envelope(settings.unpad("placement", placement)[:, column])


def song_beat_grid(envelope: np.ndarray, fps: float = FPS) -> tuple[float, float]:
    """``(bpm, first beat frame)`` of a song from its onset envelope.

    :func:`estimate_tempo`, then :func:`beat_offset`.
    """
    bpm = estimate_tempo(envelope, fps)
    return bpm, beat_offset(envelope, bpm, fps)


def song_beat_inputs(envelope: np.ndarray, periods=BEAT_INPUT_PERIODS, fps: float = FPS) -> np.ndarray:
    """:func:`beat_inputs` of a whole song on its :func:`song_beat_grid`.

    What stage 1 reads with ``PlacementConfig.beat_periods`` in training, validation and generation alike.
    """
    if not len(periods):
        return np.zeros((len(envelope), 0), dtype=np.float32)
    return beat_inputs(len(envelope), *song_beat_grid(envelope, fps), periods, fps)


def local_tempi(envelope: np.ndarray, bpm: float, fps: float = FPS, window_s: float = LOCAL_WINDOW_S,
                hop_s: float = LOCAL_HOP_S, step_bpm: float = 0.25,
                band: float = LOCAL_BAND) -> tuple[np.ndarray, np.ndarray]:
    """The tempo of every stretch of a song, within a band around its global tempo.

    For windows of ``window_s`` seconds every ``hop_s`` seconds (Hann
    weighted, the window's mean removed), the autocorrelation ``ac`` of the
    onset envelope is read at lags ``k * 60 * fps / b`` for ``k = 1..4``
    (linear interpolation) and the local tempo is the ``b`` of the largest
    ``sum_k ac(k * 60 * fps / b)`` on a ``step_bpm`` grid from
    ``bpm / band`` to ``bpm * band``. The band (1.3) keeps every window in
    the global tempo's octave and away from the 3:4 and 4:3 ratios that
    triplet feels and half-time sections produce (no half/double, no
    metre flips). A window whose best lies on the band's edge (the truth is
    outside) or that has no onsets says nothing: its tempo is ``bpm``.

    Parameters
    ----------
    envelope : np.ndarray [T]
        Onset strength per frame (:func:`onset_envelope`).
    bpm : float
        The song's global tempo (:func:`estimate_tempo`).
    fps : float
        Frames per second of the envelope.
    window_s, hop_s : float
        Window length and hop, seconds.
    step_bpm : float
        Resolution of the tempo grid.
    band : float
        Largest ratio to ``bpm`` searched (> 1).

    Returns
    -------
    centres : np.ndarray [n] float64
        Each window's centre, seconds (``(start + window / 2) / fps``).
    tempi : np.ndarray [n] float64
        Each window's tempo (``bpm`` for a window with no onsets). Empty when
        the envelope is shorter than one window.
    """
    x = np.asarray(envelope, dtype=np.float64)
    width, hop = int(round(window_s * fps)), max(1, int(round(hop_s * fps)))
    if len(x) < width or width < 2:
        return np.zeros(0), np.zeros(0)
    starts = np.arange(0, len(x) - width + 1, hop)
    frames = x[starts[:, None] + np.arange(width)]
    frames = (frames - frames.mean(axis=1, keepdims=True)) * np.hanning(width)
    n_fft = 1 << int(np.ceil(np.log2(2 * width)))
    spec = np.fft.rfft(frames, n_fft, axis=1)
    ac = np.fft.irfft(spec * np.conj(spec), n_fft, axis=1)[:, :width]
    grid = np.arange(bpm / band, bpm * band + 1e-9, step_bpm)
    comb = np.zeros((len(starts), len(grid)))
    for k in range(1, 5):
        lags = k * 60.0 * fps / grid
        lo = np.minimum(np.floor(lags).astype(np.int64), width - 2)
        frac = np.clip(lags - lo, 0.0, 1.0)
        comb += ac[:, lo] * (1 - frac) + ac[:, lo + 1] * frac
    best = np.argmax(comb, axis=1)
    tempi = np.where((ac[:, 0] > 0) & (best > 0) & (best < len(grid) - 1), grid[best], bpm)
    return (starts + width / 2) / fps, tempi


def tempo_changes(centres: np.ndarray, tempi: np.ndarray, bpm: float, threshold: float = CHANGE_THRESHOLD,
                  min_segment_s: float = MIN_SEGMENT_S) -> list[tuple[float, float]]:
    """Where a song's tempo really changes: ``[(second, local bpm), ...]``, empty for a steady song.

    Hysteresis over the local tempi (:func:`local_tempi`, first smoothed by a
    running median of 5 windows): starting from ``bpm``, a change is made
    only when a run of windows lasting at least ``min_segment_s`` all differ
    from the tempo in force by more than ``threshold`` (relative,
    ``|ln(local / current)| > ln(1 + threshold)``) and agree with the run's
    median within ``threshold``. The new tempo is the run's (smoothed) median;
    the change is placed at the centre of the run's first window, moved back
    over every directly preceding window whose unsmoothed tempo is nearer (in
    log) to the new tempo than to the old one: where the evidence crosses
    over. Isolated windows (a fill, a break) never change the tempo.

    Parameters
    ----------
    centres, tempi : np.ndarray [n]
        Window centres (seconds, increasing) and their tempi.
    bpm : float
        The tempo in force at the start.
    threshold : float
        Smallest relative change that counts (0.03: 3 %).
    min_segment_s : float
        Shortest run of changed windows, seconds.

    Returns
    -------
    list of (float, float)
        ``(start second, bpm)`` of each new tempo, increasing in time.
    """
    n = len(tempi)
    if n == 0:
        return []
    log_t = np.log(np.asarray(tempi, np.float64))
    smooth = np.array([np.median(log_t[max(0, i - 2): i + 3]) for i in range(n)])
    hop = float(np.median(np.diff(centres))) if n > 1 else 1.0
    need = max(1, int(math.ceil(min_segment_s / hop)))
    band = math.log1p(threshold)
    changes, current, i = [], math.log(bpm), 0
    while i < n:
        j = i
        while j < n and abs(smooth[j] - current) > band and abs(smooth[j] - np.median(smooth[i:j + 1])) <= band:
            j += 1
        if j - i >= need:
            new = float(np.median(smooth[i:j]))
            start = i
            while start > 0 and abs(log_t[start - 1] - new) < abs(log_t[start - 1] - current):
                start -= 1
            changes.append((float(centres[start]), float(math.exp(new))))
            current, i = new, j
        else:
            i = max(i + 1, j)
    return changes


def estimate_tempo_map(envelope: np.ndarray, fps: float = FPS, bpm: float | None = None,
                       threshold: float = CHANGE_THRESHOLD, min_segment_s: float = MIN_SEGMENT_S) -> TempoMap:
    """A song's tempo map from its onset envelope: constant unless the tempo really changes.

    1. the global tempo ``bpm`` (:func:`estimate_tempo`, octave settled by its prior);
    2. the local tempi (:func:`local_tempi`) and the changes they prove
       (:func:`tempo_changes`, hysteresis and a minimum segment length); a
       first change within ``min_segment_s`` of the start becomes the
       song's first tempo instead;
    3. each segment's tempo refined on its own stretch of the envelope by
       :func:`estimate_tempo` within +-``threshold`` of its local value (flat
       prior); a steady song keeps the global tempo;
    4. each change is put on the whole beat of the tempo in force nearest to
       its time (``bpmEvents`` at whole beats, as mappers place them);
       changes closer than ``min_segment_s`` to the previous one, whose
       refined tempo is within ``threshold`` of the tempo in force, or whose
       segment is not clearly more periodic at the new tempo than at the old
       one (:func:`tempo_support` below :data:`CHANGE_SUPPORT`) are dropped.

    Beat 0 is at 0 s (BeatSaver rejects offsets), so the grid's phase is that
    of audio time 0; :func:`grid_lead_in` moves the whole beats onto the music.

    Parameters
    ----------
    envelope : np.ndarray [T]
        Onset strength per frame (:func:`onset_envelope`).
    fps : float
        Frames per second of the envelope.
    bpm : float, optional
        Global tempo, if already known.
    threshold, min_segment_s : float
        As in :func:`tempo_changes`.

    Returns
    -------
    TempoMap
        ``TempoMap.constant(bpm)`` for a steady song, else
        ``TempoMap.from_bpm_events(first bpm, [(beat, bpm), ...])``.
    """
    x = np.asarray(envelope, dtype=np.float64)
    bpm = estimate_tempo(x, fps) if bpm is None else float(bpm)
    centres, tempi = local_tempi(x, bpm, fps)
    changes = tempo_changes(centres, tempi, bpm, threshold, min_segment_s)
    local = [bpm] + [m for _, m in changes]
    if changes and changes[0][0] < min_segment_s:  # the song starts at the new tempo: no short first segment
        local, changes = [changes[0][1]] + local[2:], changes[1:]
    if not changes:
        return TempoMap.constant(bpm if local[0] == bpm else _refine(x, local[0], fps, threshold))
    bounds = [0.0] + [t for t, _ in changes] + [len(x) / fps]
    refined = [_refine(x[int(bounds[k] * fps): int(bounds[k + 1] * fps)], m, fps, threshold)
               for k, m in enumerate(local)]
    tempo, events = TempoMap.constant(refined[0]), []
    for k, ((t, _), m) in enumerate(zip(changes, refined[1:]), start=1):
        beat = float(round(tempo.beats(t)))
        old = tempo.bpm_at(beat)
        if abs(math.log(m / old)) <= math.log1p(threshold) or beat <= 0 or \
                (events and tempo.seconds(beat) - tempo.seconds(events[-1][0]) < min_segment_s) or \
                tempo_support(x[int(bounds[k] * fps): int(bounds[k + 1] * fps)], m, old, fps) < CHANGE_SUPPORT:
            continue
        events.append((beat, m))
        tempo = TempoMap.from_bpm_events(refined[0], events)
    return tempo


def _refine(envelope: np.ndarray, bpm: float, fps: float, threshold: float) -> float:
    """:func:`estimate_tempo` of a stretch within ``bpm`` ×/÷ ``1 + threshold``, flat prior (``bpm`` rounded when too short)."""
    return estimate_tempo(envelope, fps, bpm / (1 + threshold), bpm * (1 + threshold), prior_bpm=bpm,
                          prior_octaves=math.inf, default=round(bpm, 2))


def tempo_support(envelope: np.ndarray, new_bpm: float, old_bpm: float, fps: float = FPS) -> float:
    """How much more periodic a stretch of onset envelope is at ``new_bpm`` than at ``old_bpm``.

    ``P(new) / P(old)`` with ``P(b) = sum_{h=1..4} |X(h * b / 60)| / h``, ``X``
    the Fourier transform of the envelope (1 s moving average removed,
    zero-padded to at least 2**16 points; the periodicity of
    :func:`estimate_tempo`'s fine step). 0 for an empty or flat stretch.
    """
    x = np.asarray(envelope, dtype=np.float64)
    if len(x) < 2 or not np.any(x > 0):
        return 0.0
    width = min(int(fps), len(x))
    x = x - np.convolve(x, np.ones(width) / width, mode="same")
    n_fft = max(1 << 16, 1 << int(np.ceil(np.log2(len(x)))))
    p = _periodicity(np.abs(np.fft.rfft(x, n_fft)), n_fft, np.array([new_bpm, old_bpm]), fps)
    return float(p[0] / p[1]) if p[1] > 0 else math.inf


#: A first beat within this fraction of a beat of audio time 0 keeps beat 0 at 0 s (:func:`grid_lead_in`).
LEAD_IN_TOLERANCE = 1.0 / 16


def segment_beats(envelope: np.ndarray, tempo: TempoMap, fps: float = FPS) -> list[float]:
    """Per segment of ``tempo``, the seconds of one of the music's beats in it (:func:`beat_offset` on the
    segment's own stretch of the envelope, at its tempo): the phases :func:`grid_lead_in` aligns the grid to."""
    x = np.asarray(envelope, dtype=np.float64)
    segments = tempo.segments
    bounds = [frame_of(sec, fps) for _, sec, _ in segments] + [len(x)]
    out = []
    for k, (_, second, bpm) in enumerate(segments):
        start, stop = min(bounds[k], len(x)), max(min(bounds[k + 1], len(x)), min(bounds[k], len(x)) + 2)
        out.append(start / fps + beat_offset(x[start:stop], bpm, fps) / fps)
    return out


def grid_lead_in(tempo: TempoMap, music_beats_s, tolerance: float = LEAD_IN_TOLERANCE) -> TempoMap:
    """``tempo`` with its whole beats moved onto the music: one-beat bridge tempi before each segment.

    ``music_beats_s[k]`` is the time of one of the music's beats in segment
    ``k`` (:func:`segment_beats`). Beat 0 stays at 0 s (BeatSaver rejects
    offsets) and beat 1 falls on the first segment's music beat (or one period
    later, when that is under half a period from 0 s, so the lead-in's tempo
    stays within 2/3 to 2 times the song's). Each later tempo change becomes
    a whole-beat bridge: from the whole beat nearest the change, one beat at the
    tempo that reaches the segment's next music beat at least half a beat later,
    then the segment's tempo. So every segment's music beats fall on whole
    beats. A song whose first music beat is within ``tolerance`` beats of 0 s
    and whose tempo is constant (its audio cut to start on a beat, as mappers
    are told to) is left as it is. The Info BPM (``base_bpm``) stays the song's
    first tempo; the lead-in is a ``bpmEvents`` entry at beat 0.

    >>> m = grid_lead_in(TempoMap.constant(120.0), [0.3])    # 120 BPM, the music's beats at 0.3, 0.8, 1.3 s...
    >>> [round(m.beats(t), 6) for t in (0.3, 0.8, 1.3)], m.base_bpm, m.segments[0][2]
    ([1.0, 2.0, 3.0], 120.0, 200.0)
    >>> grid_lead_in(TempoMap.constant(120.0), [0.02]).segments    # 1/25 beat from 0 s: left as it is
    [(0.0, 0.0, 120.0)]
    """
    segments = tempo.segments
    first_bpm = segments[0][2]
    period = 60.0 / first_bpm
    phase = float(music_beats_s[0]) % period
    if len(segments) == 1 and min(phase, period - phase) < tolerance * period:
        return tempo
    lead_s = phase if phase >= period / 2 else phase + period
    events = [(0.0, 60.0 / lead_s), (1.0, first_bpm)]
    for (_, second, bpm), beat_s in zip(segments[1:], music_beats_s[1:]):
        grid = TempoMap.from_bpm_events(tempo.base_bpm, events)
        start = float(round(grid.beats(second)))  # the bridge starts on the whole beat nearest the change
        if start <= events[-1][0]:
            continue
        start_s, old_period, new_period = grid.seconds(start), 60.0 / events[-1][1], 60.0 / bpm
        target = float(beat_s) + math.ceil((start_s + old_period / 2 - float(beat_s)) / new_period) * new_period
        events += [(start, 60.0 / (target - start_s)), (start + 1.0, bpm)]
    return TempoMap.from_bpm_events(tempo.base_bpm, events)


def _tempo_map(tempo) -> TempoMap:
    """``tempo`` as a :class:`TempoMap`: a map as it is, a number as ``TempoMap.constant(tempo)``."""
    return tempo if isinstance(tempo, TempoMap) else TempoMap.constant(tempo)


def snap_beats(beats, tempo, divisions: int = SNAP_DIVISIONS, tolerance_s: float = SNAP_TOLERANCE_S,
               end_beat: float = math.inf, fps: int = FPS) -> tuple[np.ndarray, np.ndarray]:
    """Move beats onto a ``1/divisions`` grid where that keeps each note on its own frame.

    The grid is that of the tempo map's beats: ``k / divisions`` for whole
    ``k`` (a tempo change at a whole beat starts a new run of grid lines, as
    it does in an editor). A beat is snapped only when all of these hold:

    - the note stays on its frame: ``frame_of(seconds(snapped)) ==
      frame_of(seconds(exact))`` (:func:`~mapkit.preprocess.timebase.frame_of`,
      seconds by ``tempo``), so every note's time still rounds to exactly
      the frame stage 1 chose;
    - it moves by at most ``tolerance_s``;
    - the order stays strict: the snapped beat stays above the previous
      output beat and below the next beat's exact value (and below
      ``end_beat``), so no two notes ever merge.

    Parameters
    ----------
    beats : np.ndarray [n]
        Exact beats, strictly increasing, >= 0.
    tempo : float or TempoMap
        The tempo map of the beats (a number: that constant BPM, beat 0 at 0 s).
    divisions : int
        Grid lines per beat (16: 1/16 beat).
    tolerance_s : float
        Largest move, in seconds.
    end_beat : float
        Snapped beats must stay below this (the end of the song).
    fps : int
        Frame rate of the frames notes must stay on.

    Returns
    -------
    beats : np.ndarray [n] float64
        Snapped or exact beats, strictly increasing.
    snapped : np.ndarray [n] bool
        Which beats were moved onto the grid.
    """
    exact = np.asarray(beats, dtype=np.float64)
    if exact.size and (np.any(np.diff(exact) <= 0) or exact[0] < 0):
        raise ValueError("beats must be >= 0 and strictly increasing")
    tempo = _tempo_map(tempo)
    grid = np.floor(exact * divisions + 0.5) / divisions  # half up: beats are >= 0
    exact_s, grid_s = tempo.seconds(exact), tempo.seconds(grid)
    close = (np.abs(grid_s - exact_s) <= tolerance_s) & (frame_of(grid_s, fps) == frame_of(exact_s, fps))
    out = exact.copy()
    snapped = np.zeros(len(exact), dtype=bool)
    previous = -math.inf
    for i in range(len(exact)):
        upper = exact[i + 1] if i + 1 < len(exact) else end_beat
        if close[i] and previous < grid[i] < upper:
            out[i] = grid[i]
            snapped[i] = True
        previous = out[i]
    return out, snapped


def short_beats(beats, tempo) -> np.ndarray:
    """``beats`` each with the fewest decimals (3 to 9) that keep its note on the same frame.

    Written files then read ``3.8`` rather than ``3.8002399999999996``, and
    every note still plays on exactly the frame it had
    (``frame_of(tempo.seconds(beat))``; a number ``tempo`` is a constant BPM).

    >>> short_beats([3.8002399999999996, 0.5], 120.0).tolist()
    [3.8, 0.5]
    """
    beats = np.asarray(beats, dtype=np.float64)
    seconds = _tempo_map(tempo).seconds
    out, frames = beats.copy(), frame_of(seconds(beats))
    todo = np.ones(len(beats), dtype=bool)
    for decimals in range(3, 10):
        short = np.round(beats, decimals)
        keep = todo & (frame_of(seconds(short)) == frames)
        out[keep] = short[keep]
        todo &= ~keep
    return out
