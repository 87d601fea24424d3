"""Log-mel features of both stages on the one frame grid (docs/design.md §§1, 2, 10).

Every feature frame ``f`` is the Hann-windowed FFT centred on ``t = f / 100`` s,
i.e. on sample ``f * hop`` of the signal at the stage's sample rate, with
zeros outside the signal: exactly what a centred STFT (``librosa.stft(...,
center=True, pad_mode="constant")``) gives. A song has ``T = n_frames(n, sr)``
frames, counted from its ORIGINAL sample count and rate; after resampling, a
centred STFT could give one frame more or less, so frames are computed on the
grid ``0 .. T-1`` directly instead of cropping an STFT.

Speed without losing exactness (docs/design.md §10): frames are processed in
blocks of about 2 MB (cache-sized), in float32, with ``scipy.fft``; the mel projection is a few dense products, each over
the band of FFT bins its group of filters touches (:func:`mel_bands`), read
straight from the squared spectrum (no transposed copies); the log, the band
sums and the rounding to float16 happen on each block while it is in cache
(no float32 copy of the whole song's features). The result
equals ``log(librosa.feature.melspectrogram(...) + 1e-10)`` within about 0.02
(see tests/preprocess/test_features.py for the bound that is enforced).

Value: ``ln(mel power + log_floor)``; padding rows hold ``ln(log_floor)``, the
value of digital silence.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field

import numpy as np

from mapkit.errors import AudioError
from mapkit.preprocess.audio import AudioNote, audio_sha256, decode_audio, open_source_audio, resample
from mapkit.preprocess.timebase import n_frames as count_frames
from mapkit.settings import FeatureSettings

#: Bytes of windowed frames per FFT block: fits in L2/L3 cache.
BLOCK_BYTES = 2 << 20


# --- mel filters (Slaney), same numbers as librosa.filters.mel(htk=False, norm="slaney") ---
# Reimplemented (a few lines) because importing librosa costs ~1.3 s in every
# worker process; tests prove equality with librosa.

_F_SP = 200.0 / 3  # Hz per mel in the linear part
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0


def hz_to_mel(hz):
    """Slaney mel scale: linear below 1 kHz, logarithmic above (librosa ``htk=False``)."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / _F_SP
    log_part = hz >= _MIN_LOG_HZ
    return np.where(log_part, _MIN_LOG_MEL + np.log(np.maximum(hz, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP, mel)


def mel_to_hz(mel):
    """Inverse of :func:`hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    hz = _F_SP * mel
    log_part = mel >= _MIN_LOG_MEL
    return np.where(log_part, _MIN_LOG_HZ * np.exp(_LOGSTEP * (mel - _MIN_LOG_MEL)), hz)


def mel_filters(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Slaney-normalised triangular mel filters from 0 Hz to ``sr / 2``.

    Parameters
    ----------
    sr : int
        Sample rate in Hz.
    n_fft : int
        FFT size; the filters cover its ``1 + n_fft // 2`` bins.
    n_mels : int
        Number of mel bands.

    Returns
    -------
    np.ndarray [shape=(n_mels, 1 + n_fft // 2), dtype=float32]
        Equal to ``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels)``.
    """
    fft_freqs = np.fft.rfftfreq(n_fft, d=1.0 / sr)
    edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2.0), n_mels + 2))
    widths = np.diff(edges)
    ramps = np.subtract.outer(edges, fft_freqs)
    weights = np.zeros((n_mels, len(fft_freqs)), dtype=np.float32)
    for i in range(n_mels):
        rising = -ramps[i] / widths[i]
        falling = ramps[i + 2] / widths[i + 1]
        weights[i] = np.maximum(0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2 : n_mels + 2] - edges[:n_mels]))[:, np.newaxis]
    return weights


#: Cost of one more band product, in multiply-adds per frame (call overhead and
#: small-matrix inefficiency of BLAS); chosen by measurement, see :func:`mel_bands`.
BAND_OVERHEAD = 256


def mel_bands(weights: np.ndarray, overhead: float = BAND_OVERHEAD) -> list[tuple[int, int, int, int]]:
    """Consecutive filters grouped so that each group multiplies only the FFT bins it touches.

    Parameters
    ----------
    weights : np.ndarray [shape=(n_mels, n_bins)]
        Filters (e.g. :func:`mel_filters`).
    overhead : float
        Cost charged per group, in multiply-adds per frame.

    Returns
    -------
    list of (m0, m1, b0, b1)
        Groups in filter order: filters ``m0 .. m1-1`` are zero outside bins
        ``b0 .. b1-1``. The grouping minimises
        ``sum((m1 - m0) * (b1 - b0) + overhead)`` (dynamic programming over
        the split points); together the groups cover every filter once.
    """
    n = len(weights)
    nonzero = [np.flatnonzero(w) for w in weights]
    lo = [int(z[0]) if len(z) else 0 for z in nonzero]
    hi = [int(z[-1]) + 1 if len(z) else 0 for z in nonzero]
    best, split = [0.0] + [np.inf] * n, [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):
            cost = best[i] + (j - i) * (max(hi[i:j]) - min(lo[i:j])) + overhead
            if cost < best[j]:
                best[j], split[j] = cost, i
    groups, j = [], n
    while j > 0:
        i = split[j]
        groups.append((i, j, min(lo[i:j]), max(hi[i:j])))
        j = i
    return groups[::-1]


@functools.lru_cache(maxsize=16)
def _mel_products(sr: int, n_fft: int, n_mels: int) -> tuple:
    """Per band of :func:`mel_bands`: ``(m0, m1, c0, c1, w)`` for ``sq[:, c0:c1] @ w -> mel[:, m0:m1]``.

    ``sq`` is the interleaved ``re^2, im^2`` view of the spectrum, so each
    weight appears twice (for ``re^2`` and ``im^2`` of its bin): the sum
    ``re^2 + im^2`` happens inside the product, not as a pass of its own.
    """
    weights = mel_filters(sr, n_fft, n_mels)
    products = []
    for m0, m1, b0, b1 in mel_bands(weights):
        w = np.ascontiguousarray(np.repeat(weights[m0:m1, b0:b1], 2, axis=1).T)
        w.flags.writeable = False
        products.append((m0, m1, 2 * b0, 2 * b1, w))
    return tuple(products)


@functools.lru_cache(maxsize=16)
def hann_window(n_fft: int) -> np.ndarray:
    """Periodic Hann window (``scipy.signal.get_window("hann", n_fft)``), float32."""
    k = np.arange(n_fft, dtype=np.float64)
    window = (0.5 - 0.5 * np.cos(2.0 * np.pi * k / n_fft)).astype(np.float32)
    window.flags.writeable = False  # cached and shared
    return window


def _segment(y: np.ndarray, start: int, stop: int) -> np.ndarray:
    """``y[start:stop]`` with zeros where the range leaves the signal (a view when inside)."""
    if start >= 0 and stop <= len(y):
        return y[start:stop]
    seg = np.zeros(stop - start, dtype=np.float32)
    lo, hi = max(start, 0), min(stop, len(y))
    if hi > lo:
        seg[lo - start : hi - start] = y[lo:hi]
    return seg


def log_mel(
    y: np.ndarray,
    sr: int,
    n_fft: int,
    hop: int,
    n_mels: int,
    n_frames: int,
    log_floor: float = 1e-10,
    out: np.ndarray | None = None,
    sums: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Log-mel power of centred Hann frames on the grid ``f * hop``, ``f = 0 .. n_frames-1``.

    Frame ``f`` covers samples ``[f*hop - n_fft//2, f*hop + n_fft//2)``, zeros
    outside ``y``. With ``n_frames = 1 + len(y) // hop`` this is
    ``log(librosa.feature.melspectrogram(y=y, sr=sr, n_fft=n_fft,
    hop_length=hop, n_mels=n_mels) + log_floor).T``; any other ``n_frames``
    crops the grid or extends it with the frames that lie further on it.

    Parameters
    ----------
    y : np.ndarray [shape=(n,), dtype=float32]
        Mono signal at ``sr``.
    sr : int
        Sample rate of ``y`` in Hz (for the mel filters).
    n_fft : int
        FFT and window size (even).
    hop : int
        Samples between frame centres.
    n_mels : int
        Mel bands (Slaney filters, 0 Hz to ``sr / 2``).
    n_frames : int
        Number of frames to compute.
    log_floor : float
        Added to the mel power before the natural log.
    out : np.ndarray [shape=(n_frames, n_mels)], optional
        Where to write (may be a strided view, e.g. one FFT-size column of the
        placement array). Any float dtype: the float32 values are rounded to
        it block by block (float16 for the store, without a float32 copy of
        the whole song).
    sums : (np.ndarray, np.ndarray) [shape=(n_mels,), dtype=float64], optional
        The sum and the sum of squares over frames of the float32 values
        (before any rounding to ``out``'s dtype) are added to these.

    Returns
    -------
    np.ndarray [shape=(n_frames, n_mels)]
        ``out`` when given, else a new float32 array.
    """
    import scipy.fft

    y = np.asarray(y, dtype=np.float32)
    if out is None:
        out = np.empty((n_frames, n_mels), dtype=np.float32)
    if n_fft % 2 or n_fft <= 0 or hop <= 0:
        raise ValueError(f"need an even n_fft > 0 and hop > 0, got n_fft={n_fft}, hop={hop}")
    if out.shape != (n_frames, n_mels):
        raise ValueError(f"out has shape {out.shape}, need {(n_frames, n_mels)}")
    window = hann_window(n_fft)
    products = _mel_products(int(sr), int(n_fft), int(n_mels))
    half = n_fft // 2
    block = max(1, BLOCK_BYTES // (n_fft * 4))
    # buffers reused by every block: no page faults from fresh multi-MB arrays
    frames = np.zeros((block, n_fft), dtype=np.float32)
    mel = np.empty((block, n_mels), dtype=np.float32)
    ones, scratch = np.ones(block, dtype=np.float32), np.empty((block, n_mels), dtype=np.float32)
    # every n_fft-sample window of y, made once: a block inside the signal is a strided slice of it
    inside = np.lib.stride_tricks.sliding_window_view(y, n_fft) if len(y) >= n_fft else None
    for f0 in range(0, n_frames, block):
        f1 = min(n_frames, f0 + block)
        k = f1 - f0
        start, stop = f0 * hop - half, (f1 - 1) * hop + n_fft - half
        if inside is not None and start >= 0 and stop <= len(y):
            view = inside[start : stop - n_fft + 1 : hop]
        else:  # the block reaches past an end of the signal: a zero-padded copy of its samples
            view = np.lib.stride_tricks.sliding_window_view(_segment(y, start, stop), n_fft)[::hop]
        np.multiply(view, window, out=frames[:k])
        # Always the whole block (a short last block leaves older frames in the rest, ignored): BLAS
        # rounds a row differently with the number of rows, so a frame's value must not depend on k.
        spec = scipy.fft.rfft(frames, axis=-1, overwrite_x=True)
        # |X|^2 = re^2 + im^2: square the interleaved float32 view in place; the products sum the pairs
        sq = spec.view(np.float32)
        np.square(sq, out=sq)
        for m0, m1, c0, c1, w in products:
            np.matmul(sq[:, c0:c1], w, out=mel[:, m0:m1])
        # the log, the sums and the rounding on the block while it is in cache (out may be a strided view)
        np.add(mel[:k], np.float32(log_floor), out=mel[:k])
        if sums is None and out.dtype == np.float32:
            np.log(mel[:k], out=out[f0:f1])
            continue
        np.log(mel[:k], out=mel[:k])
        if sums is not None:
            _add_sums(mel[:k], sums, ones[:k], scratch[:k])
        out[f0:f1] = mel[:k]
    return out


def _add_sums(block: np.ndarray, sums: tuple[np.ndarray, np.ndarray], ones: np.ndarray, scratch: np.ndarray) -> None:
    """Add the column sums and sums of squares of ``block`` [k, n_mels] to the float64 ``sums``.

    Each block's sums are BLAS products with a row of ones, in float32 (at
    most a few hundred frames: relative error ~1e-6, far below float16
    storage's 5e-4), accumulated over blocks in float64. ``ones`` [k] and
    ``scratch`` [k, n_mels] are float32 work arrays.
    """
    total, total_sq = sums
    np.add(total, ones @ block, out=total)
    np.square(block, out=scratch)
    np.add(total_sq, ones @ scratch, out=total_sq)


def placement_features(y: np.ndarray, sr: int, settings: FeatureSettings = FeatureSettings(), pad: bool = True,
                       dtype=np.float32, sums: dict | None = None) -> np.ndarray:
    """Stage-1 features: multi-resolution log-mel, time first.

    Parameters
    ----------
    y : np.ndarray [shape=(n,)]
        Mono signal (as from :func:`~mapkit.preprocess.audio.decode_audio`).
    sr : int
        Its sample rate; resampled (soxr) to ``settings.placement_sample_rate`` if different.
    settings : FeatureSettings
    pad : bool
        Add ``settings.placement_pad`` rows of the silence value on each side.
    dtype : numpy float dtype
        Of the result (float16 for the store: rounded block by block).
    sums : dict, optional
        Filled with :func:`band_sums` of the unpadded frames' float32 values
        (before rounding to ``dtype``), computed block by block on the way.

    Returns
    -------
    np.ndarray [shape=(T + 2*pad, len(n_ffts), n_mels), dtype=dtype]
        ``T = n_frames(len(y), sr)`` of the ORIGINAL signal. Row ``pad + f``
        is frame ``f`` (centred on ``f / fps`` s); column ``i`` is FFT size
        ``settings.placement_n_ffts[i]``.
    """
    T = count_frames(len(y), sr, settings.fps)
    p = settings.placement_pad if pad else 0
    target_sr = settings.placement_sample_rate
    y_stage = resample(y, sr, target_sr, settings.resample_quality)
    n_ffts = settings.placement_n_ffts
    out = np.empty((T + 2 * p, len(n_ffts), settings.placement_n_mels), dtype=dtype)
    out[:p] = settings.silence_value
    out[p + T :] = settings.silence_value
    acc = np.zeros((2, len(n_ffts), settings.placement_n_mels))
    for i, n_fft in enumerate(n_ffts):
        log_mel(y_stage, target_sr, n_fft, settings.placement_hop, settings.placement_n_mels, T,
                settings.log_floor, out=out[p : p + T, i, :], sums=None if sums is None else (acc[0, i], acc[1, i]))
    if sums is not None:
        sums.update(sum=acc[0], sum_sq=acc[1], count=T)
    return out


def selection_features(y: np.ndarray, sr: int, settings: FeatureSettings = FeatureSettings(), pad: bool = True,
                       dtype=np.float32, sums: dict | None = None) -> np.ndarray:
    """Stage-2 features: one log-mel, time first.

    Parameters
    ----------
    y : np.ndarray [shape=(n,)]
        Mono signal.
    sr : int
        Its sample rate; resampled (soxr) to ``settings.selection_sample_rate``.
    settings : FeatureSettings
    pad : bool
        Add ``settings.selection_pad`` rows of the silence value on each side.
    dtype, sums
        As in :func:`placement_features`.

    Returns
    -------
    np.ndarray [shape=(T + 2*pad, n_mels), dtype=dtype]
        ``T = n_frames(len(y), sr)`` of the ORIGINAL signal; row ``pad + f`` is frame ``f``.
    """
    T = count_frames(len(y), sr, settings.fps)
    p = settings.selection_pad if pad else 0
    target_sr = settings.selection_sample_rate
    y_stage = resample(y, sr, target_sr, settings.resample_quality)
    out = np.empty((T + 2 * p, settings.selection_n_mels), dtype=dtype)
    out[:p] = settings.silence_value
    out[p + T :] = settings.silence_value
    acc = np.zeros((2, settings.selection_n_mels))
    log_mel(y_stage, target_sr, settings.selection_n_fft, settings.selection_hop, settings.selection_n_mels, T,
            settings.log_floor, out=out[p : p + T], sums=None if sums is None else (acc[0], acc[1]))
    if sums is not None:
        sums.update(sum=acc[0], sum_sq=acc[1], count=T)
    return out


def band_sums(features: np.ndarray) -> dict:
    """Per-band sums over the time axis (axis 0) for store-wide mean/std.

    Returns
    -------
    dict
        ``sum`` and ``sum_sq`` (float64, shape ``features.shape[1:]``) and
        ``count`` (int, number of frames).
    """
    x = np.asarray(features, dtype=np.float32)
    return {
        "sum": x.sum(axis=0, dtype=np.float64),
        "sum_sq": np.einsum("t...,t...->...", x, x, dtype=np.float64) if x.size else np.zeros(x.shape[1:]),
        "count": int(x.shape[0]),
    }


@dataclass
class SongFeatures:
    """Everything the store keeps of one song (docs/design.md §4).

    ``placement`` [T+14, 3, 80] and ``selection`` [T+2, 100] are float16,
    padded with the silence value. ``band_sums`` maps ``"placement"`` and
    ``"selection"`` to :func:`band_sums` over the UNPADDED frames (computed
    from the float32 values before the float16 cast).
    """

    song_id: str
    source: str
    placement: np.ndarray
    selection: np.ndarray
    n_frames: int
    sample_rate: int
    n_samples: int
    duration_s: float
    audio_sha256: str
    pad_placement: tuple = (7, 7)
    pad_selection: tuple = (1, 1)
    band_sums: dict = field(default_factory=dict)
    #: :class:`~mapkit.preprocess.audio.AudioNote` messages of the decode (e.g. no end-of-stream flag)
    notes: tuple = ()
    #: Chromaprint raw fingerprint (uint32), None when not asked for or not computable
    chromaprint: np.ndarray | None = None
    #: why there is no fingerprint ("" when there is one or none was asked for)
    chromaprint_error: str = ""


def song_features(source, settings: FeatureSettings = FeatureSettings(), fingerprint: bool = False) -> SongFeatures:
    """Decode one song and compute both stages: the per-song work of ``mapkit extract``.

    Parameters
    ----------
    source : mapkit.preprocess.sources.Source
        A level (its info file names the audio) or a bare audio file.
    settings : FeatureSettings
    fingerprint : bool
        Also compute the song's Chromaprint fingerprint from the decoded
        samples (no second decode; :func:`mapkit.preprocess.fingerprint.fingerprint`).
        When libchromaprint is missing, ``chromaprint`` is None and
        ``chromaprint_error`` says why; the features are computed all the same.

    Returns
    -------
    SongFeatures

    Raises
    ------
    AudioError
        Missing, unreadable, truncated, empty or silent audio, with the file and reason.
    """
    file, name, data = open_source_audio(source)
    with file, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AudioNote)
        sha = audio_sha256(data if data is not None else file)
        y, sr = decode_audio(file, name)
    notes = tuple(str(w.message) for w in caught if issubclass(w.category, AudioNote))
    for w in caught:  # anything else goes on as if not caught
        if not issubclass(w.category, AudioNote):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    n = len(y)
    T = count_frames(n, sr, settings.fps)
    sums = {"placement": {}, "selection": {}}  # filled block by block, from the float32 values
    placement = placement_features(y, sr, settings, dtype=np.float16, sums=sums["placement"])
    selection = selection_features(y, sr, settings, dtype=np.float16, sums=sums["selection"])
    chroma, chroma_error = _song_fingerprint(y, sr) if fingerprint else (None, "")
    del y
    pp, ps = settings.placement_pad, settings.selection_pad
    if not (np.isfinite(sums["placement"]["sum"]).all() and np.isfinite(sums["selection"]["sum"]).all()):
        raise AudioError(name, "features are not finite")  # cannot happen for finite audio; guard the store
    return SongFeatures(
        song_id=source.song_id,
        source=name,
        placement=placement,
        selection=selection,
        n_frames=T,
        sample_rate=int(sr),
        n_samples=n,
        duration_s=n / sr,
        audio_sha256=sha,
        pad_placement=(pp, pp),
        pad_selection=(ps, ps),
        band_sums=sums,
        notes=notes,
        chromaprint=chroma,
        chromaprint_error=chroma_error,
    )


def _song_fingerprint(y: np.ndarray, sr: int):
    """``(fingerprint or None, reason "" or why not)``: a missing library never fails the song."""
    from mapkit.preprocess.fingerprint import fingerprint

    try:
        return fingerprint(y, sr), ""
    except RuntimeError as e:
        return None, str(e)
