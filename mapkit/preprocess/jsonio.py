"""Level files as bytes -> JSON, safely (docs/formats.md §1.1 and 1.12).

Gzip (magic ``1f 8b``; decompressed in bounded steps, at most the JSON cap of
:mod:`mapkit.preprocess.limits`), UTF-8 with or without BOM, UTF-16/32 with BOM (or
without, recognised by its zero bytes) are accepted. ``NaN``/``Infinity``
literals are rejected (Python's json would accept them), so a non-finite
number can never enter mapkit as a literal; a finite literal too large for a
float (``1e400``) reads as infinity, as in Python's json, and the level reader
drops or quarantines it.

Parsing uses ``orjson`` when it is installed (about twice as fast as Python's
json on level files) and Python's json otherwise; both give the same objects
and the same errors. orjson accepts a subset of what Python's json accepts,
and where it refuses a document (a ``1e400``, an integer beyond 64 bits, a
lone surrogate escape, deep nesting, any error) Python's json parses it again
and decides, so the result and any error message are Python's. Documents with 19
or more digits in a row go to Python's json directly, because orjson reads
integers beyond 64 bits as floats where Python keeps them exact.
"""

from __future__ import annotations

import json
import zlib

from mapkit.errors import LevelError
from mapkit.preprocess.limits import read_limits, too_large

try:
    import orjson
except ImportError:  # optional speed-up; Python's json gives the same results
    orjson = None

GZIP_MAGIC = b"\x1f\x8b"

# 19 digits in a row may be an integer outside 64 bits (-9223372036854775809), which orjson reads as
# a float where Python keeps it exact: such (rare) documents go to Python's json. Digits are mapped
# to "0" and everything else to " " first: a regex over 1 MB of numbers is 10x slower.
_LONG_DIGITS = b"0" * 19
_DIGITS_ONLY = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))


def _has_long_digit_run(payload: str | bytes) -> bool:
    """Whether ``payload`` holds 19 or more ASCII digits in a row."""
    if isinstance(payload, str):  # UTF-8 bytes hold the same ASCII digits
        payload = payload.encode("utf-8", "surrogatepass")
    return _LONG_DIGITS in payload.translate(_DIGITS_ONLY)


def _reject_constant(name):
    raise ValueError(f"non-finite number {name} in JSON")


def _gunzip(data: bytes, path, max_bytes: int) -> bytes:
    """``data`` decompressed when it starts with the gzip magic, else unchanged.

    Decompresses in bounded steps: :class:`LevelError` ``"too large when
    decompressed"`` as soon as the output passes ``max_bytes``, so a small
    gzip bomb never expands in memory. Concatenated gzip members are read in
    turn, as ``gzip.decompress`` does.
    """
    if data[:2] != GZIP_MAGIC:
        return data
    out, n, rest = [], 0, data
    while rest[:2] == GZIP_MAGIC:
        d = zlib.decompressobj(wbits=31)
        pending = rest
        try:
            while pending and not d.eof:
                chunk = d.decompress(pending, max_bytes + 1 - n)
                pending = d.unconsumed_tail
                out.append(chunk)
                n += len(chunk)
                if n > max_bytes:
                    raise LevelError(path, too_large(max_bytes))
        except zlib.error as e:
            raise LevelError(path, f"corrupt gzip data: {e}") from None
        if not d.eof:
            raise LevelError(path, "corrupt gzip data: the stream ends before its end marker")
        rest = d.unused_data
    if rest.strip(b"\0"):
        raise LevelError(path, "corrupt gzip data: bytes after the end of the gzip stream")
    return b"".join(out)


def _decode_marked(data: bytes) -> str | None:
    """Text of ``data`` when a BOM or zero bytes say its encoding, else None (plain UTF-8).

    Raises UnicodeDecodeError.
    """
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
    return None


def _text_or_utf8(data: bytes, path, max_bytes: int | None = None) -> str | bytes:
    """Gunzipped ``data`` as text, or as bytes when it is plain UTF-8 (not yet validated).

    Raises LevelError for corrupt gzip, gzip data decompressing to more than
    ``max_bytes`` (default: the JSON cap of :func:`~mapkit.preprocess.limits.read_limits`),
    an empty file or a wrong BOM-marked encoding.
    """
    data = _gunzip(data, path, read_limits().max_json_bytes if max_bytes is None else max_bytes)
    if not data or data.isspace():
        raise LevelError(path, "empty file")
    try:
        text = _decode_marked(data)
    except UnicodeDecodeError as e:
        raise LevelError(path, f"not valid UTF-8/UTF-16 text: {e}") from None
    return data if text is None else text


def decode_text(data: bytes, path="<bytes>", max_bytes: int | None = None) -> str:
    """Decode level-file bytes to text: gunzip if gzipped, then detect BOM/UTF-16/32, else UTF-8.

    Parameters
    ----------
    data : bytes
        A file's content.
    path : str
        Named in errors.
    max_bytes : int, optional
        Cap on gzip data decompressed (default: the JSON cap in force).

    Returns
    -------
    str

    Raises
    ------
    LevelError
        Corrupt gzip data, an empty file, or bytes that are not text in the detected encoding.
    """
    payload = _text_or_utf8(data, path, max_bytes)
    if isinstance(payload, str):
        return payload
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LevelError(path, f"not valid UTF-8/UTF-16 text: {e}") from None


def load_json_bytes(data: bytes, path="<bytes>", max_bytes: int | None = None):
    """Parse level-file bytes into Python objects, raising :class:`LevelError` naming ``path``.

    Parameters
    ----------
    data : bytes
        A file's content: JSON, possibly gzipped, UTF-8 (BOM optional) or UTF-16/32.
    path : str
        Named in errors.
    max_bytes : int, optional
        Cap on gzip data decompressed (default: the JSON cap in force,
        :func:`~mapkit.preprocess.limits.read_limits`).

    Returns
    -------
    object
        What Python's ``json.loads`` returns for the text, except that
        ``NaN``/``Infinity`` literals are refused.

    Raises
    ------
    LevelError
        ``"invalid JSON: ..."`` (Python's json's message), ``"empty file"``,
        ``"corrupt gzip data: ..."``, ``"too large when decompressed ..."`` or ``"not valid UTF-8/UTF-16 text: ..."``.

    Examples
    --------
    >>> load_json_bytes(b'{"_notes": [{"_time": 1.5}]}')
    {'_notes': [{'_time': 1.5}]}
    >>> load_json_bytes(b'[NaN]', "Expert.dat")
    Traceback (most recent call last):
    ...
    mapkit.errors.LevelError: Expert.dat: invalid JSON: non-finite number NaN in JSON
    """
    payload = _text_or_utf8(data, path, max_bytes)
    if orjson is not None:
        if not _has_long_digit_run(payload):
            try:
                return orjson.loads(payload)
            except orjson.JSONDecodeError:
                pass  # Python's json below accepts more (1e400, lone surrogates) and words the error
    if not isinstance(payload, str):
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError as e:
            raise LevelError(path, f"not valid UTF-8/UTF-16 text: {e}") from None
    try:
        return json.loads(payload, parse_constant=_reject_constant)
    except ValueError as e:  # JSONDecodeError is a ValueError
        raise LevelError(path, f"invalid JSON: {e}") from None
    except RecursionError:
        raise LevelError(path, "invalid JSON: nested too deeply") from None
