"""Writing song audio for levels: Ogg Vorbis (``song.egg``) with deterministic bytes.

Used by the demo set and by ``mapkit generate``. libsndfile picks a random
Ogg stream serial number for every file it writes; :func:`encode_ogg_vorbis`
replaces it with a given one (and redoes the page CRCs), so the same audio
and serial always give the same bytes.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np

# Ogg page CRC: polynomial 0x04C11DB7, not reflected, init 0, no final xor. zlib's CRC-32 is the
# reflected form of the same polynomial, so reflect bytes in and the 32-bit result out.
_REFLECT_BYTE = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def _ogg_crc(page: bytes) -> int:
    """CRC of one Ogg page (its CRC field must be zero)."""
    raw = ~zlib.crc32(page.translate(_REFLECT_BYTE), 0xFFFFFFFF) & 0xFFFFFFFF
    return int(f"{raw:032b}"[::-1], 2)


def set_ogg_serial(data: bytes, serial: int) -> bytes:
    """``data`` (one logical Ogg stream) with every page's serial number set to ``serial`` and CRCs redone."""
    buf = bytearray(data)
    pos = 0
    while pos < len(buf):
        if buf[pos:pos + 4] != b"OggS":
            raise ValueError(f"not an Ogg page at byte {pos}")
        n_segments = buf[pos + 26]
        end = pos + 27 + n_segments + sum(buf[pos + 27:pos + 27 + n_segments])
        struct.pack_into("<I", buf, pos + 14, serial)
        struct.pack_into("<I", buf, pos + 22, 0)
        struct.pack_into("<I", buf, pos + 22, _ogg_crc(bytes(buf[pos:end])))
        pos = end
    return bytes(buf)


def encode_ogg_vorbis(audio: np.ndarray, sample_rate: int, serial: int = 0, quality: float = 0.6) -> bytes:
    """Ogg Vorbis bytes of ``audio``, deterministic for a given ``serial``.

    Parameters
    ----------
    audio : np.ndarray [shape=(n, channels) or (n,)]
        Float samples in [-1, 1]; a 1-D array is mono.
    sample_rate : int
        Hz.
    serial : int
        Ogg stream serial number written into every page.
    quality : float in [0, 1]
        Vorbis quality (0.6 is about 190 kbit/s stereo).

    Returns
    -------
    bytes
        A complete Ogg Vorbis file.

    Notes
    -----
    Written in blocks of one second: a single ``soundfile.write`` of more than
    ~2M frames to Ogg crashes libsndfile (DESIGN.md section 9).
    """
    import soundfile as sf

    audio = np.asarray(audio)
    if audio.ndim == 1:
        audio = audio[:, None]
    buf = io.BytesIO()
    # libsndfile's compression level for Vorbis is 1 - quality
    with sf.SoundFile(buf, "w", samplerate=sample_rate, channels=audio.shape[1], format="OGG",
                      subtype="VORBIS", compression_level=1.0 - quality) as f:
        for i in range(0, len(audio), sample_rate):
            f.write(audio[i:i + sample_rate])
    return set_ogg_serial(buf.getvalue(), serial)
