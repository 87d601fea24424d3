"""Writing song audio for levels: Ogg Vorbis (``song.egg``) with deterministic bytes.

Used by the demo set and by ``mapkit generate``. libsndfile picks a random
Ogg stream serial number for every file it writes; :func:`encode_ogg_vorbis`
replaces it with a given one (and redoes the page CRCs), so the same audio
and serial always give the same bytes.
"""

from __future__ import annotations

import io
import struct

import numpy as np

from mapkit.preprocess.audio import ogg_page_crc


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
        struct.pack_into("<I", buf, pos + 22, ogg_page_crc(bytes(buf[pos:end])))
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
    ~2M frames to Ogg crashes libsndfile (docs/design.md §10).
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
