"""Tempo maps: beats <-> seconds for one difficulty file (docs/design.md §1, docs/formats.md §1.8).

A :class:`TempoMap` is an immutable, continuous, strictly increasing,
piecewise-linear function from beats to seconds. It is a list of segments
``(beat, second, bpm)``: from ``beat`` on, time runs from ``second`` at
``bpm`` beats per minute until the next segment starts. The first segment
also extends backwards (beats before it run at its tempo).

Where the segments come from:

- a constant tempo: the base BPM (v2 ``_beatsPerMinute``, v4 ``audio.bpm``,
  legacy v1 the difficulty file's own ``_beatsPerMinute``), beat 0 at 0 s;
- real tempo events (v2 events of type 100 with the BPM in ``_floatValue``,
  v3 ``bpmEvents {b, m}``): the base BPM until the first event, then the
  event's BPM from its beat on (:meth:`TempoMap.from_bpm_events`);
- v4 audio-data regions ``bpmData {si, ei, sb, eb}`` (2.0.0 audio data:
  ``_regions``): sample ``si..ei`` spans beats ``sb..eb``
  (:meth:`TempoMap.from_regions`).

Editor-only BPM changes (``_BPMChanges`` and friends) never build a tempo
map: they do not move notes in the game.

``_songTimeOffset`` sign convention (used only when a level is read with
``song_offset="apply"``): the offset in seconds is **added** to every note
time, ``t = seconds_from_tempo(beat) + offset``; a positive offset makes
notes later in the audio. :meth:`TempoMap.shifted` builds that map, so
``tempo.seconds(beat)`` is always the time of a note of that difficulty.

Worked examples (docs/design.md §1):

>>> TempoMap.from_bpm_events(120, [(16, 240)]).seconds(20)
9.0
>>> TempoMap.constant(120).seconds(20)   # the same change, editor-only
10.0
>>> TempoMap.from_regions(120, [(0, 441000, 0, 20), (441000, 882000, 20, 60)], 44100).seconds(30)
12.5
"""

from __future__ import annotations

import math

import numpy as np

from mapkit.errors import TempoError



#: Continuity tolerance of a segment's start second, relative to ``max(1 s, |second|)``: the
#: constructors compute each start from the previous segment (regions: from sample counts, which
#: agree to a few float64 roundings), so a sound map is far inside it and a real jump far outside.
CONTINUITY_RTOL = 1e-9
#: A region tempo this close (relative) to the base BPM is the base BPM (:meth:`TempoMap.from_regions`): the
#: float noise of ``(eb - sb) / (ei - si)``, far below any tempo a mapper sets.
REGION_BPM_RTOL = 1e-12


def _check_bpm(bpm, what: str) -> float:
    try:
        value = float(bpm)
    except (TypeError, ValueError):
        raise TempoError(f"{what} is not a number: {bpm!r}") from None
    if isinstance(bpm, bool) or not math.isfinite(value) or value <= 0:
        raise TempoError(f"{what} must be a finite number > 0, got {bpm!r}")
    return value


class TempoMap:
    """Immutable piecewise-linear map between beats and seconds.

    Build it with :meth:`constant`, :meth:`from_bpm_events`,
    :meth:`from_regions` or :meth:`from_json`; the constructor takes already
    validated segments.

    Parameters
    ----------
    base_bpm : float > 0
        The info file's BPM (legacy v1: the difficulty file's BPM).
    segments : sequence of (beat, second, bpm)
        Sorted by beat, strictly increasing in beat and second, continuous:
        each ``second`` equals the previous segment's ``second + (beat -
        previous beat) * 60 / previous bpm`` within :data:`CONTINUITY_RTOL`.

    Raises
    ------
    TempoError
        Non-finite values, a BPM <= 0, segments not strictly increasing, or a
        discontinuity (the message names the segment, its beat and both seconds).
    source : str
        Where the tempo came from: ``"constant"``, ``"bpm_events"``, ``"regions"``.
    warnings : sequence of str
        What was noticed while building (unsorted or duplicate events, ...).
    offset_s : float
        The song-time offset already included in ``second`` (0 unless applied).
    """

    __slots__ = ("_base_bpm", "_beat", "_second", "_bpm", "_source", "_warnings", "_offset_s")

    def __init__(self, base_bpm, segments, source: str = "constant", warnings=(), offset_s: float = 0.0):
        base = _check_bpm(base_bpm, "base BPM")
        seg = np.asarray(segments, dtype=np.float64).reshape(-1, 3)
        if len(seg) == 0:
            raise TempoError("a tempo map needs at least one segment")
        if not np.all(np.isfinite(seg)):
            raise TempoError("tempo map segments must be finite")
        if np.any(seg[:, 2] <= 0):
            raise TempoError("tempo map segments need BPM > 0")
        if np.any(np.diff(seg[:, 0]) <= 0) or np.any(np.diff(seg[:, 1]) <= 0):
            raise TempoError("tempo map segments must be strictly increasing in beat and second")
        # continuity: each segment starts where the previous one has got to by its beat
        expected = seg[:-1, 1] + (seg[1:, 0] - seg[:-1, 0]) * 60.0 / seg[:-1, 2]
        jump = np.abs(seg[1:, 1] - expected)
        bad = np.flatnonzero(jump > CONTINUITY_RTOL * np.maximum(1.0, np.abs(expected)))
        if bad.size:
            k = int(bad[0]) + 1
            raise TempoError(f"tempo map is not continuous: segment {k} starts at beat {seg[k, 0]:g} on "
                             f"{seg[k, 1]:.9g} s, but segment {k - 1} ({seg[k - 1, 2]:g} BPM from beat "
                             f"{seg[k - 1, 0]:g} at {seg[k - 1, 1]:.9g} s) reaches that beat at "
                             f"{expected[k - 1]:.9g} s")
        object.__setattr__(self, "_base_bpm", base)
        for name, col in (("_beat", 0), ("_second", 1), ("_bpm", 2)):
            arr = seg[:, col].copy()
            arr.flags.writeable = False
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "_source", str(source))
        object.__setattr__(self, "_warnings", tuple(warnings))
        object.__setattr__(self, "_offset_s", float(offset_s))

    def __setattr__(self, name, value):
        raise AttributeError("TempoMap is immutable")

    # --- constructors -------------------------------------------------------------------------

    @classmethod
    def constant(cls, bpm: float) -> "TempoMap":
        """A constant tempo: ``t = beat * 60 / bpm``.

        Raises
        ------
        TempoError
            ``bpm`` is not a finite number > 0.
        """
        bpm = _check_bpm(bpm, "BPM")
        return cls(bpm, [(0.0, 0.0, bpm)], source="constant")

    @classmethod
    def from_bpm_events(cls, base_bpm, events, source: str = "bpm_events") -> "TempoMap":
        """Tempo from real tempo-change events (v2 type 100, v3 ``bpmEvents``).

        The tempo is ``base_bpm`` from beat 0 until the first event; from an
        event at beat ``b`` with BPM ``m`` on, it is ``m``; beats are read in
        the tempo in force (docs/formats.md §1.8, rule 2).

        Handling of bad input, each recorded in :attr:`warnings`:
        unsorted events are sorted (stably); of several events at one beat the
        last one in file order wins; an event before beat 0 sets the tempo from
        beat 0; an event that does not change the tempo is merged away.

        Parameters
        ----------
        base_bpm : float > 0
        events : iterable of (beat, bpm)
        source : str

        Raises
        ------
        TempoError
            ``base_bpm`` or an event's BPM is <= 0 or not finite, or an event's
            beat is not finite. A level with such an event cannot be timed.
        """
        base = _check_bpm(base_bpm, "base BPM")
        warnings = []
        parsed = []
        for k, ev in enumerate(events):
            beat, bpm = ev
            try:
                b = float(beat)
            except (TypeError, ValueError):
                raise TempoError(f"tempo event {k}: beat is not a number: {beat!r}") from None
            if isinstance(beat, bool) or not math.isfinite(b):
                raise TempoError(f"tempo event {k}: beat must be finite, got {beat!r}")
            parsed.append((b, _check_bpm(bpm, f"tempo event {k} (beat {b:g}) BPM")))
        if any(parsed[i][0] > parsed[i + 1][0] for i in range(len(parsed) - 1)):
            warnings.append("tempo events were not sorted by beat; sorted")
        order = sorted(range(len(parsed)), key=lambda i: parsed[i][0])
        by_beat: dict[float, float] = {}
        for i in order:
            b, m = parsed[i]
            b = max(b, 0.0)
            if b in by_beat:
                warnings.append(f"several tempo events at beat {b:g}; the last one ({m:g} BPM) wins")
            if parsed[i][0] < 0:
                warnings.append(f"tempo event before beat 0 (beat {parsed[i][0]:g}) applies from beat 0")
            by_beat[b] = m
        segments = [(0.0, 0.0, base)]
        for b, m in sorted(by_beat.items()):
            b0, s0, m0 = segments[-1]
            s = s0 + (b - b0) * 60.0 / m0
            if b == b0 or s == s0:  # same instant (s == s0: beats too close for float seconds)
                segments[-1] = (b0, s0, m)
            elif m != m0:
                segments.append((b, s, m))
        return cls(base, segments, source=source, warnings=warnings)

    @classmethod
    def from_regions(cls, base_bpm, regions, sample_rate, n_samples=None) -> "TempoMap":
        """Tempo from audio-data regions (v4 ``bpmData``, 2.0.0 ``_regions``).

        A region ``(si, ei, sb, eb)`` says samples ``si..ei`` span beats
        ``sb..eb``; inside it ``t = (si + (b - sb) / (eb - sb) * (ei - si)) / sample_rate``
        and its tempo is ``(eb - sb) / ((ei - si) / sample_rate) * 60``; a
        tempo within :data:`REGION_BPM_RTOL` of ``base_bpm`` is ``base_bpm``
        (sample counts and float beats cannot say it more exactly).
        Between two regions the map runs linearly from the end of one to the
        start of the next (continuity). After the last region, and between
        beat 0 and a first region that starts later, the tempo is ``base_bpm``
        (docs/formats.md §1.8 rule 3: outside all regions, the base BPM), anchored at
        the region boundary so the map stays continuous; except that a last
        region reaching ``n_samples`` (the audio's end) keeps its tempo after
        it: no audio is left there, so the base BPM would only add a segment
        no note can use.
        Regions are sorted by start sample.

        Parameters
        ----------
        base_bpm : float > 0
        regions : iterable of (si, ei, sb, eb)
        sample_rate : float > 0
            The audio data file's ``songFrequency``.
        n_samples : int, optional
            The audio's samples (``songSampleCount``); None: unknown.

        Raises
        ------
        TempoError
            A region with ``ei <= si`` or ``eb <= sb`` or non-finite values;
            overlapping regions; a gap that spans samples but no beats (or the
            reverse); a sample rate <= 0.
        """
        base = _check_bpm(base_bpm, "base BPM")
        sr = _check_bpm(sample_rate, "sample rate (songFrequency)")
        warnings = []
        regs = []
        for k, r in enumerate(regions):
            try:
                si, ei, sb, eb = (float(v) for v in r)
            except (TypeError, ValueError):
                raise TempoError(f"tempo region {k} is not four numbers: {r!r}") from None
            if not all(math.isfinite(v) for v in (si, ei, sb, eb)):
                raise TempoError(f"tempo region {k} has non-finite values: {r!r}")
            if ei <= si or eb <= sb:
                raise TempoError(f"tempo region {k} needs ei > si and eb > sb, got {r!r}")
            regs.append((si, ei, sb, eb))
        if not regs:
            return cls(base, [(0.0, 0.0, base)], source="regions", warnings=["no tempo regions; base BPM"])
        if any(regs[i][0] > regs[i + 1][0] for i in range(len(regs) - 1)):
            warnings.append("tempo regions were not sorted; sorted by start sample")
            regs.sort()
        segments = []
        for k, (si, ei, sb, eb) in enumerate(regs):
            s_start, s_end = si / sr, ei / sr
            if segments:
                pb, ps = prev_end
                if sb < pb or s_start < ps:
                    raise TempoError(f"tempo regions {k - 1} and {k} overlap")
                if (sb > pb) != (s_start > ps):
                    raise TempoError(f"gap between tempo regions {k - 1} and {k} spans samples but not beats, or the reverse")
                if sb > pb:  # a gap: bridge it linearly
                    segments.append((pb, ps, (sb - pb) / (s_start - ps) * 60.0))
            bpm = (eb - sb) / (s_end - s_start) * 60.0
            segments.append((sb, s_start, base if math.isclose(bpm, base, rel_tol=REGION_BPM_RTOL) else bpm))
            prev_end = (eb, s_end)
        # a count of 0 or less says nothing (hand-made files): unknown, the base BPM after the last region
        if n_samples is None or n_samples <= 0 or regs[-1][1] < float(n_samples):
            segments.append((prev_end[0], prev_end[1], base))
        first_beat, first_second, _ = segments[0]
        if first_beat > 0:  # beats 0..sb of the first region: base BPM, anchored at the region's start
            segments.insert(0, (0.0, first_second - first_beat * 60.0 / base, base))
        merged = [segments[0]]
        for seg in segments[1:]:
            if not math.isclose(seg[2], merged[-1][2], rel_tol=1e-12):
                merged.append(seg)
        return cls(base, merged, source="regions", warnings=warnings)

    @classmethod
    def from_json(cls, d: dict) -> "TempoMap":
        """Inverse of :meth:`to_json`."""
        segs = [(s["beat"], s["second"], s["bpm"]) for s in d["segments"]]
        return cls(d["base_bpm"], segs, source=d.get("source", "constant"),
                   warnings=d.get("warnings", ()), offset_s=d.get("offset_s", 0.0))

    # --- derived maps ---------------------------------------------------------------------------

    def shifted(self, offset_s: float) -> "TempoMap":
        """The same map with every time moved by ``offset_s`` seconds (``_songTimeOffset``, added)."""
        off = float(offset_s)
        if not math.isfinite(off):
            raise TempoError(f"song time offset must be finite, got {offset_s!r}")
        segs = np.stack([self._beat, self._second + off, self._bpm], axis=1)
        return TempoMap(self._base_bpm, segs, self._source, self._warnings, self._offset_s + off)

    # --- conversion ------------------------------------------------------------------------------

    def seconds(self, beats):
        """Seconds of ``beats`` (scalar -> float, array -> float64 array). THE beats -> seconds rule."""
        b = np.asarray(beats, dtype=np.float64)
        k = np.clip(np.searchsorted(self._beat, b, side="right") - 1, 0, None)
        t = self._second[k] + (b - self._beat[k]) * 60.0 / self._bpm[k]
        return float(t) if t.ndim == 0 else t

    def beats(self, seconds):
        """Beats at ``seconds`` (scalar -> float, array -> float64 array); inverse of :meth:`seconds`."""
        t = np.asarray(seconds, dtype=np.float64)
        k = np.clip(np.searchsorted(self._second, t, side="right") - 1, 0, None)
        b = self._beat[k] + (t - self._second[k]) * self._bpm[k] / 60.0
        return float(b) if b.ndim == 0 else b

    def bpm_at(self, beats):
        """Tempo in force at ``beats`` (scalar -> float, array -> float64 array)."""
        b = np.asarray(beats, dtype=np.float64)
        k = np.clip(np.searchsorted(self._beat, b, side="right") - 1, 0, None)
        m = self._bpm[k]
        return float(m) if m.ndim == 0 else m

    def to_regions(self, n_samples: int, sample_rate: float) -> list[tuple[int, int, float, float]]:
        """v4 audio-data regions ``(si, ei, sb, eb)`` (``bpmData``) that realise this map over the audio.

        One region per segment that starts inside the audio: ``si`` is the
        sample of the segment's start, ``round(second * sample_rate)``; ``ei``
        the next region's ``si`` (the last: ``n_samples``); ``sb`` the
        segment's beat and ``eb`` the next segment's beat (the last: the beat
        at ``n_samples / sample_rate``, not rounded: a rounded end beat gives
        the last region a tempo a hair off its segment's).
        :meth:`from_regions` of the result (with ``n_samples``) is this map up
        to the sample rounding of the starts (at most half a sample) within
        the audio, and a map made that way gives its own regions back.

        Raises
        ------
        TempoError
            A map with a song offset or not starting at beat 0 on 0 s, or no audio (``n_samples < 1``).
        """
        sr = _check_bpm(sample_rate, "sample rate")
        if self._offset_s != 0 or self._beat[0] != 0 or self._second[0] != 0:
            raise TempoError("only a map with beat 0 at 0 s and no song offset has audio-data regions")
        if int(n_samples) < 1:
            raise TempoError(f"audio-data regions need at least one sample, got {n_samples!r}")
        n = int(n_samples)
        starts = [(int(round(s * sr)), float(b)) for b, s in zip(self._beat, self._second)]
        starts = [(si, b) for si, b in starts if si < n]
        regions = []
        for k, (si, sb) in enumerate(starts):
            if k + 1 < len(starts):
                ei, eb = starts[k + 1]
            else:
                ei, eb = n, self.beats(n / sr)
            if ei > si and eb > sb:
                regions.append((si, ei, sb, float(eb)))
        return regions

    # --- properties and serialisation ----------------------------------------------------------

    @property
    def base_bpm(self) -> float:
        return self._base_bpm

    @property
    def source(self) -> str:
        return self._source

    @property
    def warnings(self) -> tuple:
        return self._warnings

    @property
    def offset_s(self) -> float:
        return self._offset_s

    @property
    def segments(self) -> list[tuple[float, float, float]]:
        """``[(beat, second, bpm), ...]``."""
        return [(float(b), float(s), float(m)) for b, s, m in zip(self._beat, self._second, self._bpm)]

    @property
    def is_constant(self) -> bool:
        """True when one tempo (the base BPM) holds everywhere."""
        return len(self._bpm) == 1 and self._bpm[0] == self._base_bpm

    def to_json(self) -> dict:
        """``{"base_bpm", "source", "offset_s", "segments": [{"beat", "second", "bpm"}, ...], "warnings"}``."""
        return {
            "base_bpm": self._base_bpm,
            "source": self._source,
            "offset_s": self._offset_s,
            "segments": [{"beat": b, "second": s, "bpm": m} for b, s, m in self.segments],
            "warnings": list(self._warnings),
        }

    def __eq__(self, other):
        if not isinstance(other, TempoMap):
            return NotImplemented
        return (self._base_bpm == other._base_bpm and self._offset_s == other._offset_s
                and np.array_equal(self._beat, other._beat) and np.array_equal(self._second, other._second)
                and np.array_equal(self._bpm, other._bpm))

    def __hash__(self):
        return hash((self._base_bpm, self._offset_s, self._beat.tobytes(), self._second.tobytes(), self._bpm.tobytes()))

    def __repr__(self):
        if self.is_constant:
            return f"TempoMap.constant({self._base_bpm:g})"
        return f"TempoMap(base_bpm={self._base_bpm:g}, source={self._source!r}, segments={self.segments})"

    def describe(self) -> str:
        """One human line: ``"185 BPM constant"`` or ``"120 BPM; from beat 16 (8 s): 240 BPM"``."""
        head = f"{self._base_bpm:g} BPM"
        if self.is_constant and self._offset_s == 0:
            return head + " constant"
        parts = [head]
        if self._offset_s:
            parts.append(f"song offset {self._offset_s:+g} s applied")
        for b, s, m in self.segments:
            if b == 0 and s == self._offset_s and m == self._base_bpm:
                continue
            parts.append(f"from beat {b:g} ({s:.3f} s): {m:g} BPM")
        return f"{'; '.join(parts)} [{self._source}]"
