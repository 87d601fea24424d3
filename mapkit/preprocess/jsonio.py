"""Level files as bytes -> JSON, safely (formats.md 1.1 and 1.12).

Gzip (magic ``1f 8b``), UTF-8 with or without BOM, UTF-16/32 with BOM are
accepted. ``NaN``/``Infinity`` literals are rejected (Python's json would
accept them), so a non-finite number can never enter mapkit through JSON.
"""

from __future__ import annotations

import gzip
import json
import zlib

from mapkit.errors import LevelError

GZIP_MAGIC = b"\x1f\x8b"


def _reject_constant(name):
    raise ValueError(f"non-finite number {name} in JSON")


def decode_text(data: bytes, path="<bytes>") -> str:
    """Decode level-file bytes to text: gunzip if gzipped, then detect BOM/UTF-16/32, else UTF-8."""
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise LevelError(path, f"corrupt gzip data: {e}") from None
    if not data.strip():
        raise LevelError(path, "empty file")
    try:
        if data[:3] == b"\xef\xbb\xbf":
            return data[3:].decode("utf-8")
        if data[:4] in (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff"):
            return data.decode("utf-32")
        if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
            return data.decode("utf-16")
        # UTF-16 without BOM: every other byte of ASCII JSON is zero
        if len(data) >= 4 and data[1] == 0 and data[3] == 0 and data[0] != 0:
            return data.decode("utf-16-le")
        if len(data) >= 4 and data[0] == 0 and data[2] == 0 and data[1] != 0:
            return data.decode("utf-16-be")
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LevelError(path, f"not valid UTF-8/UTF-16 text: {e}") from None


def load_json_bytes(data: bytes, path="<bytes>"):
    """Parse level-file bytes into Python objects, raising :class:`LevelError` naming ``path``."""
    text = decode_text(data, path)
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError as e:  # JSONDecodeError is a ValueError
        raise LevelError(path, f"invalid JSON: {e}") from None
