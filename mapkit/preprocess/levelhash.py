"""The level hash the community uses (SongCore, BeatSaver, player data: ``custom_level_<HASH>``).

SongCore (``SongCore/Utilities/Hashing.cs``, ``GetCustomLevelHash``) hashes
with SHA-1, in this order:

1. the info file's text, as UTF-8 (it reads the file as text: a UTF-8 BOM is
   dropped, UTF-16 is re-encoded as UTF-8; plain UTF-8 is its bytes as they are);
2. v2 (and v1) info: the bytes of each difficulty file named by the info file
   (``_beatmapFilename``, v1 ``jsonPath``), set by set, in info order, over
   every characteristic (not only the one mapkit reads);
   v4 info: the audio data file (``audio.audioDataFilename``) first, then for
   each difficulty in info order its ``beatmapDataFilename`` and its
   ``lightshowDataFilename``;
3. a named file that does not exist is left out; a file named twice counts twice.

It is written in lower-case hex here (BeatSaver's API gives lower case;
SongCore upper case); compare case-insensitively. A gzip-compressed info file
is hashed as its raw bytes (SongCore never meets one in custom levels).
"""

from __future__ import annotations

import hashlib

from mapkit.errors import LevelError
from mapkit.preprocess.container import opened
from mapkit.preprocess.jsonio import decode_text


def _info_text_bytes(data: bytes) -> bytes:
    """The info file as SongCore hashes it: its text re-encoded as UTF-8 (BOM dropped)."""
    if data[:2] == b"\x1f\x8b":
        return data
    if data[:3] == b"\xef\xbb\xbf" or data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return decode_text(data).encode("utf-8")
    return data


def hashed_files(info: dict) -> list[str]:
    """The files after the info file that make up the hash, in order (names as the info file writes them)."""
    out: list = []
    if not isinstance(info, dict):
        return out
    if isinstance(info.get("difficultyBeatmaps"), list):  # v4
        audio = info.get("audio") if isinstance(info.get("audio"), dict) else {}
        out.append(audio.get("audioDataFilename"))
        for d in info["difficultyBeatmaps"]:
            if isinstance(d, dict):
                out += [d.get("beatmapDataFilename"), d.get("lightshowDataFilename")]
    elif isinstance(info.get("difficultyLevels"), list):  # v1
        out += [d.get("jsonPath") for d in info["difficultyLevels"] if isinstance(d, dict)]
    else:
        for s in info.get("_difficultyBeatmapSets") or []:
            for d in (s.get("_difficultyBeatmaps") or []) if isinstance(s, dict) else []:
                if isinstance(d, dict):
                    out.append(d.get("_beatmapFilename"))
    return [n for n in out if isinstance(n, str) and n]


def level_hash(path) -> str:
    """The community level hash of a level folder or ``.zip`` (lower-case hex SHA-1; see the module docstring).

    Raises
    ------
    LevelError
        No info file, an info file that is not JSON, or a file of the hash that cannot be read.
    """
    digest, _info, problem = level_hash_and_info(path)
    if problem is not None:
        raise problem
    return digest


def level_hash_and_info(path):
    """``(level hash or "", parsed info file, LevelError or None)`` of a level folder or ``.zip`` (or open container).

    A difficulty file that exists but cannot be read (a FIFO, an encrypted or
    corrupt zip member, too large) leaves the hash unknown (``""``) and is
    returned as the third value, so that the level's other facts still count.

    Raises
    ------
    LevelError
        No info file, or an info file that is not JSON.
    """
    with opened(path) as c:
        info = c.read_info_json()  # the usual "no Info.dat" error; parsed once in a memo container
        h = hashlib.sha1(_info_text_bytes(c.read_bytes(c.info_name())))
        try:
            for f in hashed_files(info):
                if c.find(f) is not None:
                    h.update(c.read_bytes(f))
        except LevelError as e:
            return "", info, e
        return h.hexdigest(), info, None
