"""How much one input file may be, so that no input can make a run read without bound.

Every file of an input is read through these limits (docs/design.md §2;
README "Reliability"):

- **regular files only**: a FIFO, a device (``/dev/zero``), a socket or a
  folder where a file is expected is refused with ``"not a regular file"``
  before a single byte is read (it is opened with ``O_NONBLOCK``, so even
  opening a FIFO cannot block);
- **size caps**: a file, zip member or gzip stream that is, or decompresses
  to, more than its cap is refused with ``"too large when decompressed"``
  (``"too large"`` for a plain file), reading at most cap + 1 bytes of it.
  JSON files (info, difficulty, audio data) are capped at
  ``max_json_bytes``, song audio taken out of a zip at ``max_audio_bytes``.
  An Ogg song read from a folder is held whole (page checks, FFmpeg), so
  ``mapkit.preprocess.audio`` caps it at ``max_audio_bytes`` too; other
  audio read from a folder is streamed to the decoder.

The caps are a :class:`ReadLimits` settings object; :func:`read_limits`
gives the one in force, taken from the environment variables
``MAPKIT_MAX_JSON_BYTES`` and ``MAPKIT_MAX_AUDIO_BYTES`` (bytes) when they
are set, so worker processes see the same caps as the command that started
them. They do not change what is computed from a readable file, so they are
not part of the feature or target settings hashes.
"""

from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass

from mapkit.errors import MapkitError
from mapkit.settings import Settings

#: Default cap on a JSON file (info, difficulty, audio data), decompressed: 64 MiB.
DEFAULT_MAX_JSON_BYTES = 64 << 20
#: Default cap on a song's audio file taken out of a zip: 512 MiB.
DEFAULT_MAX_AUDIO_BYTES = 512 << 20

ENV_MAX_JSON = "MAPKIT_MAX_JSON_BYTES"
ENV_MAX_AUDIO = "MAPKIT_MAX_AUDIO_BYTES"

NOT_REGULAR = "not a regular file"

_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # POSIX: opening a FIFO without a writer must not wait


@dataclass(frozen=True)
class ReadLimits(Settings):
    """Caps on what one input file may expand to, in bytes (see the module docstring)."""

    KIND = "read_limits"

    max_json_bytes: int = DEFAULT_MAX_JSON_BYTES
    max_audio_bytes: int = DEFAULT_MAX_AUDIO_BYTES

    def __post_init__(self):
        for name in ("max_json_bytes", "max_audio_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _env_bytes(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or not text.strip():
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise MapkitError(name, f"environment variable must be a positive number of bytes, got {text!r}")
    return value


def read_limits() -> ReadLimits:
    """The caps in force: the defaults, or ``MAPKIT_MAX_JSON_BYTES``/``MAPKIT_MAX_AUDIO_BYTES`` when set.

    Raises
    ------
    MapkitError
        A variable is set to something that is not a positive integer.
    """
    return ReadLimits(_env_bytes(ENV_MAX_JSON, DEFAULT_MAX_JSON_BYTES),
                      _env_bytes(ENV_MAX_AUDIO, DEFAULT_MAX_AUDIO_BYTES))


def too_large(limit: int, decompressed: bool = True) -> str:
    """The reason given for a file over ``limit`` bytes."""
    env = "" if limit is None else f" (more than {limit} bytes; see {ENV_MAX_JSON}/{ENV_MAX_AUDIO})"
    return ("too large when decompressed" if decompressed else "too large") + env


def open_regular(path, describe=None):
    """Open ``path`` for reading in binary mode, refusing anything that is not a regular file.

    The file is opened with ``O_NONBLOCK`` (a FIFO without a writer cannot
    block the open) and checked with ``fstat`` on the open descriptor (what
    was opened is what was checked); the flag is then cleared.

    Parameters
    ----------
    path : str or os.PathLike
    describe : str, optional
        The name used in errors (default ``path``).

    Returns
    -------
    io.BufferedReader

    Raises
    ------
    MapkitError
        ``"not a regular file"`` (FIFO, device, socket, folder) or ``"cannot
        open: <reason>"``.
    """
    where = os.fspath(path) if describe is None else describe
    try:  # a socket cannot even be opened: say what it is rather than "no such device"
        mode = os.stat(path).st_mode
    except OSError as e:
        raise MapkitError(where, f"cannot open: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        raise MapkitError(where, f"{NOT_REGULAR} ({_kind(mode)})")
    try:
        fd = os.open(path, os.O_RDONLY | _NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except IsADirectoryError:
        raise MapkitError(where, NOT_REGULAR + " (a folder)") from None
    except OSError as e:
        raise MapkitError(where, f"cannot open: {e.strerror or e}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise MapkitError(where, f"{NOT_REGULAR} ({_kind(mode)})")
        if _NONBLOCK:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a file"


def read_capped(f, limit: int, where: str, decompressed: bool) -> bytes:
    """At most ``limit`` bytes of the binary stream ``f``; :class:`MapkitError` when it holds more.

    Reads at most ``limit + 1`` bytes, in blocks, whatever the stream claims,
    into one growing buffer (no list of blocks joined at the end: a 500 MB
    song is held once, not twice).
    """
    out = io.BytesIO()
    n = 0
    while True:
        block = f.read(min(1 << 20, limit + 1 - n))
        if not block:
            return out.getvalue()
        out.write(block)
        n += len(block)
        if n > limit:
            raise MapkitError(where, too_large(limit, decompressed))
