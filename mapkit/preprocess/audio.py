"""Decode, downmix and resample song audio (DESIGN.md section 2).

Audio is decoded with soundfile (libsndfile: Ogg Vorbis ``.egg``/``.ogg``,
WAV, FLAC, MP3), mixed to mono by the mean of its channels and resampled with
soxr. Decoding runs in blocks into one preallocated mono buffer, so a
10-minute stereo song never holds its stereo samples in memory at once.

A file that cannot be used raises :class:`~mapkit.errors.AudioError` naming
the file and the reason, so a batch run can record it and go on:

- ``empty file (0 bytes)``
- ``not a readable audio file: <libsndfile message>`` (corrupt, unsupported codec)
- ``no samples`` (a valid header with zero frames)
- ``truncated: ...`` (fewer samples than the header declares, or a decode error mid-stream)
- ``non-finite samples (NaN or inf)`` (float WAV/FLAC can carry them)
- ``silent: all samples are zero``. Features of silence are well defined
  (every value is the silence value), but a song whose every sample is zero is
  almost always a broken download or a placeholder, and training on it
  teaches nothing, so it is rejected.

A single non-zero sample is legal: it gives ``T = 1`` frame.
"""

from __future__ import annotations

import hashlib
import io
import os
import re

import numpy as np

from mapkit.errors import AudioError

#: Frames decoded per soundfile call: large enough that call overhead vanishes,
#: small enough that the stereo block stays in cache-sized memory (~2 MB).
DECODE_BLOCK = 1 << 18


def _describe(file, name) -> str:
    if name is not None:
        return str(name)
    if isinstance(file, (str, os.PathLike)):
        return os.fspath(file)
    return str(getattr(file, "name", "<audio stream>"))


def _is_empty(file) -> bool:
    """True when ``file`` (path or seekable binary file object) has 0 bytes."""
    if isinstance(file, (str, os.PathLike)):
        return os.path.getsize(file) == 0
    try:
        pos = file.tell()
        end = file.seek(0, io.SEEK_END)
        file.seek(pos)
        return end - pos == 0
    except (OSError, AttributeError, ValueError):
        return False


_WAV_DATA_SHORT = re.compile(r"^data : (\d+) \(should be (\d+)\)", re.M)


def _truncation(extra_info: str) -> str | None:
    """Why libsndfile's header log says the file was cut short, or None.

    libsndfile opens a cut Ogg or WAV file without an error and silently
    reports the shorter length; its log (``SoundFile.extra_info``) says so.
    """
    if "without an End-Of-Stream flag" in extra_info or "lacks an end-of-stream bit" in extra_info:
        return "truncated: Ogg stream ends without its end-of-stream page"
    m = _WAV_DATA_SHORT.search(extra_info)
    if m:
        declared, present = int(m.group(1)), int(m.group(2))
        # 0 and 0xFFFFFFFF are "unknown length" markers of streaming writers, not truncation
        if present < declared and declared not in (0, 0xFFFFFFFF, 0x7FFFFFFF):
            return f"truncated: data chunk declares {declared} bytes, only {present} present"
    return None


def _downmix_into(block: np.ndarray, out: np.ndarray) -> None:
    """Mean of the channels of ``block`` [n, channels] written into ``out`` [n].

    Column sums, not ``block.mean(axis=1)``: the row-wise reduction over a
    2-column array is ~10x slower (DESIGN.md section 9).
    """
    channels = block.shape[1]
    if channels == 1:
        out[:] = block[:, 0]
        return
    np.add(block[:, 0], block[:, 1], out=out)
    for c in range(2, channels):
        out += block[:, c]
    out *= np.float32(1.0 / channels)


def decode_audio(file, name=None) -> tuple[np.ndarray, int]:
    """Decode an audio file to mono float32 samples.

    Parameters
    ----------
    file : str, os.PathLike or binary file object
        The audio file (Ogg Vorbis, WAV, FLAC, MP3, anything libsndfile reads).
    name : str, optional
        Name used in error messages (e.g. ``level.zip!song.egg``); default: the path.

    Returns
    -------
    y : np.ndarray [shape=(n,), dtype=float32]
        Mono samples, the mean of all channels (stereo: ``(L + R) * 0.5``).
    sample_rate : int
        The file's own sample rate in Hz.

    Raises
    ------
    AudioError
        When the file is empty, unreadable, truncated, has no samples,
        non-finite samples, or is entirely silent (see the module docstring).
    """
    import soundfile as sf

    where = _describe(file, name)
    try:
        if _is_empty(file):
            raise AudioError(where, "empty file (0 bytes)")
    except OSError as e:
        raise AudioError(where, f"cannot read: {e.strerror or e}") from None
    try:
        snd = sf.SoundFile(file)
    except sf.LibsndfileError as e:
        raise AudioError(where, f"not a readable audio file: {e.error_string}") from None
    except (RuntimeError, TypeError, OSError) as e:
        raise AudioError(where, f"not a readable audio file: {e}") from None
    with snd:
        sample_rate = int(snd.samplerate)
        channels = int(snd.channels)
        declared = int(snd.frames)
        if sample_rate <= 0 or channels <= 0:
            raise AudioError(where, f"invalid header: {sample_rate} Hz, {channels} channels")
        truncated = _truncation(snd.extra_info)
        if truncated:
            raise AudioError(where, truncated)
        if declared <= 0:
            raise AudioError(where, "no samples")
        y = np.empty(declared, dtype=np.float32)
        block = np.empty((min(DECODE_BLOCK, declared), channels), dtype=np.float32)
        n = 0
        try:
            while n < declared:
                got = snd.read(out=block[: min(len(block), declared - n)], dtype="float32")
                k = len(got)
                if k == 0:
                    break
                _downmix_into(got, y[n : n + k])
                n += k
        except (sf.LibsndfileError, RuntimeError) as e:
            raise AudioError(where, f"truncated: decode error after {n} of {declared} samples: {e}") from None
    if n < declared:
        raise AudioError(where, f"truncated: header declares {declared} samples, only {n} decoded")
    # min/max propagate NaN and reduce without a temporary array
    lo, hi = float(y.min()), float(y.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise AudioError(where, "non-finite samples (NaN or inf)")
    if lo == 0.0 and hi == 0.0:
        raise AudioError(where, "silent: all samples are zero")
    return y, sample_rate


def resample(y: np.ndarray, sr_in: int, sr_out: int, quality: str = "HQ") -> np.ndarray:
    """Resample mono ``y`` from ``sr_in`` to ``sr_out`` Hz with soxr.

    Parameters
    ----------
    y : np.ndarray [shape=(n,)]
        Mono samples.
    sr_in, sr_out : int
        Sample rates in Hz.
    quality : str
        soxr quality (``"HQ"`` by default; pinned in the feature settings,
        because the resampler moves features more than the STFT code does).

    Returns
    -------
    np.ndarray [shape=(round(n * sr_out / sr_in),), dtype=float32]
        ``y`` itself (as float32) when the rates are equal.
    """
    y = np.asarray(y, dtype=np.float32)
    if int(sr_in) == int(sr_out):
        return y
    import soxr

    return soxr.resample(y, int(sr_in), int(sr_out), quality=quality)


def audio_sha256(file) -> str:
    """Hex SHA-256 of the bytes of ``file`` (path, bytes, or binary file object).

    A file object is read from its current position to the end, then put back.
    """
    if isinstance(file, (bytes, bytearray, memoryview)):
        return hashlib.sha256(file).hexdigest()
    h = hashlib.sha256()
    if isinstance(file, (str, os.PathLike)):
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    pos = file.tell()
    for chunk in iter(lambda: file.read(1 << 20), b""):
        h.update(chunk)
    file.seek(pos)
    return h.hexdigest()


def open_source_audio(source):
    """Open the audio of one input song.

    Parameters
    ----------
    source : mapkit.preprocess.sources.Source
        A level (folder or ``.zip``: the audio file named by its info file) or a
        bare audio file.

    Returns
    -------
    file : binary file object
        Open at position 0; the caller closes it.
    name : str
        The audio file's path (``level.zip!song.egg`` inside a zip), for
        messages and the store's ``source`` attribute.
    data : bytes or None
        The file's bytes when they were read into memory (zip members), else None.

    Raises
    ------
    AudioError
        When the level names no audio file, the file is missing, is not a
        regular file, is a link leaving its level, is larger than the audio
        cap (zip members) or cannot be opened.
    """
    from mapkit.errors import MapkitError
    from mapkit.preprocess.limits import open_regular

    if source.kind == "audio":
        try:  # only a regular file: a FIFO or a device would block or never end
            return open_regular(source.path), str(source.path), None
        except MapkitError as e:
            raise AudioError(e.path, e.reason) from None
    from mapkit.preprocess.container import LevelContainer

    try:
        with LevelContainer(source.path) as level:
            audio = level.audio_name()
            name = level.describe(audio)
            if level.is_zip:  # read in blocks up to the audio cap ("too large when decompressed")
                data = level.read_bytes(audio, level.limits.max_audio_bytes)
                return io.BytesIO(data), name, data
            return level.open(audio), name, None
    except MapkitError as e:  # no info file, no song file named, missing, not a regular file, too large
        raise AudioError(e.path, e.reason) from None
    except OSError as e:
        raise AudioError(source.path, f"cannot open audio: {e.strerror or e}") from None
