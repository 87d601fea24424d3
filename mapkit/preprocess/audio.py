"""Decode, downmix and resample song audio (docs/design.md §2).

Audio is decoded with soundfile (libsndfile: WAV, FLAC, MP3, Ogg) except Ogg
Vorbis (``.egg``/``.ogg``, nearly every level's song), which FFmpeg's decoder
(PyAV) decodes about 1.8x faster than libsndfile/libvorbis (1.2x faster than
stb_vorbis), within about 1e-6 of libvorbis; where FFmpeg fails or decodes
fewer samples than the stream declares, libsndfile decodes the file and
judges it. It is mixed to mono by the mean of its channels and resampled with
soxr. Decoding runs in blocks into one preallocated mono buffer, so a
10-minute stereo song never holds its stereo samples in memory at once.

A file that cannot be used raises :class:`~mapkit.errors.AudioError` naming
the file and the reason, so a batch run can record it and go on:

- ``empty file (0 bytes)``
- ``not a readable audio file: <libsndfile message>`` (corrupt, unsupported codec)
- ``a Git LFS pointer, not audio: fetch the real file (git lfs pull)`` (the
  file is the small text pointer a repository cloned without Git LFS holds)
- ``no samples`` (a valid header with zero frames)
- ``truncated: ...`` (samples are missing: fewer decoded than the header
  declares, a decode error mid-stream, a WAV data chunk or an Ogg page cut short)
- ``corrupt: ...`` (an Ogg page fails its checksum: its samples would be lost;
  an Ogg Vorbis stream declares more samples than its packets can hold)
- ``non-finite samples (NaN or inf)`` (float WAV/FLAC can carry them)
- ``silent: all samples are zero``. Features of silence are well defined
  (every value is the silence value), but a song whose every sample is zero is
  almost always a broken download or a placeholder, and training on it
  teaches nothing, so it is rejected.

A single non-zero sample is legal: it gives ``T = 1`` frame. An Ogg file
whose last page lacks the end-of-stream flag but that decodes to its full
declared length is accepted: the flag is what some writers leave out, not a
sign of missing samples; an :class:`AudioNote` warning says so (``mapkit
extract`` puts it in the song's report line).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
import zlib

import numpy as np

from mapkit.errors import AudioError

#: Frames decoded per soundfile call: large enough that call overhead vanishes,
#: small enough that the stereo block stays in cache-sized memory (~2 MB).
DECODE_BLOCK = 1 << 18

#: Samples per block taken from FFmpeg's FIFO: each planar channel (256 KB) stays in L2 cache
#: while it is summed (1 << 18 measured ~2 % slower on the whole decode).
FIFO_BLOCK = 1 << 16

#: Samples an Ogg Vorbis stream that ends cleanly (every page whole, checksums right) may decode short of
#: its last granule position: some encoders write a final position a little past the audio (one real
#: song: 63 samples, 1.4 ms; libvorbis, libsndfile and FFmpeg all decode the same shorter length). Less
#: than one packet of the common 2048-sample long block; a stream missing pages or packets falls far
#: below it, and a stream cut inside a page is caught before decoding.
VORBIS_END_SLACK = 1024

#: Samples of libsndfile's first output buffer (about 6 minutes at 44.1 kHz, 64 MiB); it doubles as the song
#: goes on, up to the declared length, so a header's claim alone never allocates memory.
FIRST_BUFFER = 1 << 24


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


#: First line of a Git LFS pointer file (a file format marker): what a repository
#: cloned without ``git lfs`` holds in place of a large file.
LFS_POINTER_MARKER = b"version https://git-lfs.github.com/spec/v1"


def _is_lfs_pointer(file) -> bool:
    """True when ``file`` (path or seekable binary file object) starts with a Git LFS pointer's first line."""
    try:
        if isinstance(file, (str, os.PathLike)):
            with open(file, "rb") as f:
                head = f.read(len(LFS_POINTER_MARKER))
        else:
            pos = file.tell()
            file.seek(0)
            head = file.read(len(LFS_POINTER_MARKER))
            file.seek(pos)
    except (OSError, AttributeError, ValueError):
        return False
    return head == LFS_POINTER_MARKER


def _unreadable(file, message: str) -> str:
    """The reason for a file libsndfile cannot open: a Git LFS pointer is named as such."""
    if _is_lfs_pointer(file):
        return "a Git LFS pointer, not audio: fetch the real file (git lfs pull)"
    return f"not a readable audio file: {message.rstrip('. ')}"


_WAV_DATA_SHORT = re.compile(r"^data : (\d+) \(should be (\d+)\)", re.M)

#: Ogg page header: capture pattern, version, flags, granule, serial, sequence, CRC, segment count.
_OGG_HEADER = 27
_OGG_BOS = 0x02
_OGG_EOS = 0x04


def _truncation(extra_info: str) -> str | None:
    """Why libsndfile's header log says a WAV file was cut short, or None.

    libsndfile opens a cut WAV file without an error and silently reports the
    shorter length; its log (``SoundFile.extra_info``) says so. (Ogg files are
    judged by their pages instead: :func:`ogg_stream_state`.)
    """
    m = _WAV_DATA_SHORT.search(extra_info)
    if m:
        declared, present = int(m.group(1)), int(m.group(2))
        # 0 and 0xFFFFFFFF are "unknown length" markers of streaming writers, not truncation
        if present < declared and declared not in (0, 0xFFFFFFFF, 0x7FFFFFFF):
            return f"truncated: data chunk declares {declared} bytes, only {present} present"
    return None


# Ogg page CRC: polynomial 0x04C11DB7, not reflected, init 0, no final xor. zlib's CRC-32 is the
# reflected form of the same polynomial, so reflect bytes in and the 32-bit result out.
_REFLECT_BYTE = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def ogg_page_crc(page) -> int:
    """Ogg CRC of one page (bytes or memoryview), its CRC field (bytes 22-25) taken as zero.

    Reading checks pages with it and writing (:mod:`mapkit.writers.ogg`) seals them: zlib's reflected
    CRC-32 runs over the bit-reflected bytes in three pieces, the four CRC bytes as zeros, without
    zeroing a copy of the page.
    """
    reflected = bytes(page).translate(_REFLECT_BYTE)
    crc = zlib.crc32(reflected[:22], 0xFFFFFFFF)
    crc = zlib.crc32(reflected[26:], zlib.crc32(b"\0\0\0\0", crc))
    return int(f"{~crc & 0xFFFFFFFF:032b}"[::-1], 2)


def ogg_stream_state(data: bytes) -> tuple[str | None, str | None]:
    """Whether an Ogg file ends inside a page, and whether its last page is flagged end-of-stream.

    Walks the page headers (27 bytes, then the segment table whose lacing
    values sum to the body length) from the start of ``data`` and checks each
    page's CRC, as libogg does before it hands a page to the decoder.

    Parameters
    ----------
    data : bytes
        The whole file.

    Returns
    -------
    problem : str or None
        ``"truncated: ..."`` when the file ends inside a page (a page header or
        body is cut short), ``"corrupt: ..."`` when a page fails its checksum:
        that page's samples are missing. None otherwise,
        also when ``data`` is not an Ogg file (no page at byte 0).
    note : str or None
        When the file is whole but its last page lacks the end-of-stream flag
        (some writers never set it; the game plays such files), or when bytes
        that are not a page follow the last page. Neither loses samples: the
        decoded length is checked against the declared one separately.
    """
    n, pos, last_flags, view = len(data), 0, None, memoryview(data)
    while pos < n:
        if data[pos:pos + 4] != b"OggS":
            if last_flags is not None and b"OggS".startswith(data[pos:pos + 4]):  # cut inside "OggS"
                return f"truncated: Ogg stream ends inside the header of the page at byte {pos}", None
            if last_flags is None:
                return None, None  # not Ogg: libsndfile judges it
            return None, f"{n - pos} bytes after the last Ogg page (byte {pos}) are not a page; ignored"
        if pos + _OGG_HEADER > n or pos + _OGG_HEADER + data[pos + 26] > n:
            return f"truncated: Ogg stream ends inside the header of the page at byte {pos}", None
        segments = data[pos + _OGG_HEADER: pos + _OGG_HEADER + data[pos + 26]]
        end = pos + _OGG_HEADER + len(segments) + sum(segments)
        if end > n:
            return f"truncated: the Ogg page at byte {pos} is cut short ({n - pos} of its {end - pos} bytes)", None
        if ogg_page_crc(view[pos:end]) != int.from_bytes(data[pos + 22: pos + 26], "little"):
            return f"corrupt: the Ogg page at byte {pos} fails its checksum (its samples would be lost)", None
        last_flags, pos = data[pos + 5], end
    if last_flags is not None and not last_flags & _OGG_EOS:
        return None, "Ogg stream ends without its end-of-stream flag (every declared sample decoded)"
    return None, None


def _ogg_bytes(file, where: str) -> bytes | None:
    """The whole file when it starts like an Ogg file, else None; a file object is put back where it was.

    Read in blocks up to the audio cap (``MAPKIT_MAX_AUDIO_BYTES``, as for audio in a zip): a loose
    song file is held in memory whole, so a huge one is refused ("too large") rather than read.
    """
    if isinstance(file, (str, os.PathLike)):
        with open(file, "rb") as f:
            return _capped_ogg(f, where)
    pos = file.tell()
    try:
        return _capped_ogg(file, where)
    finally:
        file.seek(pos)


def _capped_ogg(f, where: str) -> bytes | None:
    from mapkit.errors import MapkitError
    from mapkit.preprocess.limits import read_capped, read_limits

    start = f.tell()
    if f.read(4) != b"OggS":
        return None
    f.seek(start)
    try:
        return read_capped(f, read_limits().max_audio_bytes, where, decompressed=False)
    except MapkitError as e:
        raise AudioError(e.path, e.reason) from None


class AudioNote(UserWarning):
    """Something unusual about a song that was nevertheless decoded in full (issued with :mod:`warnings`)."""


def _downmix_into(block: np.ndarray, out: np.ndarray) -> None:
    """Mean of the channels of ``block`` [n, channels] written into ``out`` [n].

    Column sums, not ``block.mean(axis=1)``: the row-wise reduction over a
    2-column array is ~10x slower (docs/design.md §10).
    """
    channels = block.shape[1]
    if channels == 1:
        out[:] = block[:, 0]
        return
    np.add(block[:, 0], block[:, 1], out=out)
    for c in range(2, channels):
        out += block[:, c]
    out *= np.float32(1.0 / channels)


def _is_vorbis(data: bytes) -> bool:
    """True when the first packet of the Ogg file ``data`` is a Vorbis identification header."""
    body = _OGG_HEADER + data[26] if len(data) > 26 else len(data)
    return data[body: body + 7] == b"\x01vorbis"


def ogg_logical_streams(data: bytes) -> int:
    """Number of logical streams begun in the Ogg file ``data`` (pages flagged beginning-of-stream).

    A Beat Saber song is one; a chained file (several files' bytes one after
    another) has more, each restarting its granule positions.
    """
    n, pos, streams = len(data), 0, 0
    while pos + _OGG_HEADER <= n and data[pos:pos + 4] == b"OggS":
        streams += bool(data[pos + 5] & _OGG_BOS)
        segments = data[pos + _OGG_HEADER: pos + _OGG_HEADER + data[pos + 26]]
        pos += _OGG_HEADER + len(segments) + sum(segments)
    return streams


def vorbis_length(data: bytes) -> tuple[int, int]:
    """Samples an Ogg Vorbis file declares, and the most its packets can hold.

    Parameters
    ----------
    data : bytes
        A whole Ogg file whose first packet is a Vorbis identification header
        (its pages already checked by :func:`ogg_stream_state`).

    Returns
    -------
    declared : int
        The granule position of the last page that has one (-1 means none):
        the number of samples per channel of the stream, 0 when no page has one.
    capacity : int
        Packets (lacing values below 255) times half the long block size of
        the identification header: a Vorbis packet never decodes to more
        samples, so a larger ``declared`` is a lie.
    """
    n, pos, declared, packets = len(data), 0, 0, 0
    while pos + _OGG_HEADER <= n and data[pos:pos + 4] == b"OggS":
        segments = data[pos + _OGG_HEADER: pos + _OGG_HEADER + data[pos + 26]]
        granule = int.from_bytes(data[pos + 6: pos + 14], "little", signed=True)
        if granule != -1:
            declared = granule
        packets += len(segments) - segments.count(255)
        pos += _OGG_HEADER + len(segments) + sum(segments)
    ident = _OGG_HEADER + data[26]
    long_block = 1 << (data[ident + 28] >> 4) if len(data) > ident + 28 else 0
    return max(declared, 0), packets * (long_block // 2)


def _add_planes(frame, out: np.ndarray) -> None:
    """Sum of the channels of a planar float32 PyAV frame written into ``out`` (its first ``len(out)`` samples)."""
    k, planes = len(out), frame.planes
    if len(planes) == 1:
        out[:] = np.frombuffer(planes[0], dtype=np.float32, count=k)
        return
    np.add(np.frombuffer(planes[0], dtype=np.float32, count=k), np.frombuffer(planes[1], dtype=np.float32, count=k),
           out=out)
    for plane in planes[2:]:
        out += np.frombuffer(plane, dtype=np.float32, count=k)
    out *= np.float32(1.0 / len(planes))


def _decode_vorbis(data: bytes, where: str) -> tuple[np.ndarray, int, int, int] | None:
    """Ogg Vorbis through FFmpeg's decoder (PyAV): ``(mono samples, decoded, declared, sample rate)``.

    About 1.3x faster than stb_vorbis and 1.8x faster than libsndfile/libvorbis,
    samples within about 1e-6 of libvorbis's. Missing samples are found before
    this: pages cut short or failing their checksum (:func:`ogg_stream_state`);
    a declared length no packets could hold is refused before any buffer is
    made for it (:func:`vorbis_length`).

    None (libsndfile then decodes the file and judges it, with its own errors)
    when ``data`` is not Vorbis, FFmpeg cannot open it, or FFmpeg and the
    stream disagree: a decode error, or fewer samples than the last page's
    granule position declares. FFmpeg trims the end of a stream whose audio
    fits in its first page wrongly (e.g. 3968 of 4096 samples), and the
    reference decoder, not FFmpeg, decides whether a file is truncated.
    """
    if not _is_vorbis(data):
        return None
    try:
        import av
    except ImportError:  # optional at run time: libsndfile reads the same files, slower
        return None
    declared, capacity = vorbis_length(data)
    if declared > capacity:
        raise AudioError(where, f"corrupt: the last Ogg page declares {declared} samples, "
                                f"more than its packets can hold ({capacity})")
    try:
        with av.open(io.BytesIO(data), format="ogg") as container:
            return _decode_ffmpeg_vorbis(av, container, declared, where)
    except (av.FFmpegError, OSError, ValueError):
        return None


def _decode_ffmpeg_vorbis(av, container, declared: int, where: str) -> tuple[np.ndarray, int, int, int] | None:
    """The first audio stream of an open PyAV ``container`` decoded into mono samples; see :func:`_decode_vorbis`."""
    streams = container.streams.audio
    # FFmpeg's Vorbis decoder gives planar float32 ("fltp"); anything else goes to libsndfile
    if declared <= 0 or not streams or streams[0].codec_context.name != "vorbis" \
            or streams[0].codec_context.format.name != "fltp":
        return None
    stream = streams[0]
    stream.codec_context.thread_count = 1  # one thread per worker process
    sample_rate, channels = int(stream.codec_context.sample_rate), int(stream.codec_context.channels)
    if sample_rate <= 0 or channels <= 0:
        raise AudioError(where, f"invalid header: {sample_rate} Hz, {channels} channels")
    y = np.empty(declared, dtype=np.float32)
    n = 0
    # FFmpeg's frames are short (~700 samples): a FIFO joins them into blocks (one C call per frame),
    # so the per-block numpy work runs ~100x less often
    fifo = av.AudioFifo()
    for frame in container.decode(stream):
        frame.pts = None  # the FIFO checks timestamps for gaps; the sample count is checked instead
        fifo.write(frame)
        while fifo.samples >= FIFO_BLOCK or (fifo.samples and n + fifo.samples >= declared):
            block = fifo.read(min(FIFO_BLOCK, fifo.samples))
            k = min(block.samples, declared - n)
            _add_planes(block, y[n: n + k])
            n += k
            if n >= declared:
                return y, n, declared, sample_rate
    return None


def _decode_sndfile(file, where: str) -> tuple[np.ndarray, int, int, int]:
    """libsndfile: ``(mono samples, decoded count, declared count, sample rate)``; errors as AudioError."""
    import soundfile as sf

    try:
        snd = sf.SoundFile(file)
    except sf.LibsndfileError as e:
        raise AudioError(where, _unreadable(file, e.error_string)) from None
    except (RuntimeError, TypeError, OSError) as e:
        raise AudioError(where, _unreadable(file, str(e))) from None
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
        # a header may declare any length (a FLAC's 36-bit count: 256 GiB of samples): the buffer grows
        # with what is decoded, never past the declared length
        y = np.empty(min(declared, FIRST_BUFFER), dtype=np.float32)
        block = np.empty((min(DECODE_BLOCK, declared), channels), dtype=np.float32)
        n = 0
        try:
            while n < declared:
                got = snd.read(out=block[: min(len(block), declared - n)], dtype="float32")
                k = len(got)
                if k == 0:
                    break
                if n + k > len(y):
                    y = _grown(y, n, min(declared, max(2 * len(y), n + k)))
                _downmix_into(got, y[n : n + k])
                n += k
        except (sf.LibsndfileError, RuntimeError) as e:
            raise AudioError(where, f"truncated: decode error after {n} of {declared} samples: {e}") from None
    return y, n, declared, sample_rate


def _grown(y: np.ndarray, n: int, size: int) -> np.ndarray:
    """A buffer of ``size`` samples holding the first ``n`` of ``y``."""
    out = np.empty(size, dtype=y.dtype)
    out[:n] = y[:n]
    return out


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
    where = _describe(file, name)
    try:
        if _is_empty(file):
            raise AudioError(where, "empty file (0 bytes)")
    except OSError as e:
        raise AudioError(where, f"cannot read: {e.strerror or e}") from None
    try:
        ogg = _ogg_bytes(file, where)
    except OSError as e:
        raise AudioError(where, f"cannot read: {e.strerror or e}") from None
    truncated, note = ogg_stream_state(ogg) if ogg is not None else (None, None)
    if truncated:
        raise AudioError(where, truncated)
    streams = ogg_logical_streams(ogg) if ogg is not None else 1
    if streams > 1:  # each restarts its granule positions: no decoder here reads the whole of it
        raise AudioError(where, f"chained Ogg file ({streams} logical streams one after another): not supported")
    decoded = _decode_vorbis(ogg, where) if ogg is not None else None
    if decoded is None:
        y, n, declared, sample_rate = _decode_sndfile(file, where)
        if ogg is not None and _is_vorbis(ogg):  # libsndfile may count only what it could decode
            declared = max(declared, vorbis_length(ogg)[0])
    else:
        y, n, declared, sample_rate = decoded
    slack = VORBIS_END_SLACK if ogg is not None and _is_vorbis(ogg) else 0
    if n < declared - slack:
        raise AudioError(where, f"truncated: header declares {declared} samples, only {n} decoded")
    y = y[:n]  # a buffer sized for the declared length: never its undecoded tail
    # min/max propagate NaN and reduce without a temporary array
    lo, hi = float(y.min()), float(y.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise AudioError(where, "non-finite samples (NaN or inf)")
    if lo == 0.0 and hi == 0.0:
        raise AudioError(where, "silent: all samples are zero")
    if note:  # only now: a file that fails later is reported by its failure alone
        warnings.warn(AudioNote(f"{where}: {note}"), stacklevel=2)
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
