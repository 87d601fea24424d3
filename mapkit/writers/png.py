"""A tiny dependency-free PNG writer (level covers for the demo set and generated levels).

Only what covers need: 8-bit grey, RGB or RGBA, no interlacing, filter 0 on
every row, zlib-compressed. The output is a deterministic function of the
pixels (no timestamps or other metadata chunks).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: PNG colour type by number of channels: grey, RGB, RGBA.
_COLOR_TYPES = {1: 0, 3: 2, 4: 6}


def _chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC-32 over type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(image) -> bytes:
    """Encode an 8-bit image as PNG bytes.

    Parameters
    ----------
    image : np.ndarray, uint8, shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)
        Grey, RGB or RGBA pixels, row 0 at the top.

    Returns
    -------
    bytes
        A complete PNG file.

    Raises
    ------
    ValueError
        The array is not uint8, is empty, or has an unsupported shape.
    """
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"PNG pixels must be uint8, got {img.dtype}")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in _COLOR_TYPES or img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"PNG image must be (H, W) or (H, W, 1|3|4) and non-empty, got shape {np.shape(image)}")
    height, width, channels = img.shape
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOR_TYPES[channels], 0, 0, 0)
    # each scanline starts with its filter type byte (0 = none)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), np.ascontiguousarray(img).reshape(height, -1)], axis=1)
    return (_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw.tobytes(), 9))
            + _chunk(b"IEND", b""))


def write_png(path, image) -> Path:
    """Write an 8-bit grey/RGB/RGBA image to ``path`` as PNG; returns the path.

    See :func:`png_bytes` for the accepted arrays.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> img = np.zeros((4, 6, 3), np.uint8); img[..., 0] = 255
    >>> p = write_png(os.path.join(tempfile.mkdtemp(), "red.png"), img)
    >>> p.read_bytes()[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
    """
    path = Path(path)
    path.write_bytes(png_bytes(image))
    return path
