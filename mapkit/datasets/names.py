"""Which names and texts the store can hold (docs/store.md, "Names").

A song id becomes an HDF5 group name (``/songs/<song_id>``,
``/levels/<song_id>``), and so do a level's characteristic and difficulty
names (``<Characteristic>/<Difficulty>``). HDF5 (through h5py) cannot hold
every string a file system or a JSON file can give: ``"."`` names the
parent group itself, ``/`` separates groups, a NUL silently cuts the name
short (``"a\\x00b"`` would be stored as ``"a"``, clashing with a song ``a``),
and a name that is not valid UTF-8 (a file name with the byte ``\\xe9`` from
a Latin-1 system, which Python holds as the surrogate ``\\udce9``) raises
``UnicodeEncodeError`` in the middle of a write.

mapkit keeps names unchanged (so every normal song id is its own group
name) and refuses the ones it cannot store, with a reason, as that item's
failure: :func:`name_problem`. The rule: a name is storable when it is not
empty, not ``.`` or ``..``, holds no ``/``, no control character (Unicode
category Cc: NUL, tab, newline, DEL, C1 controls) and is valid UTF-8. A song
whose id breaks it is reported "song id ... cannot be stored: ...; rename
the file or folder"; a difficulty whose characteristic name breaks it is
quarantined. Free texts stored as attributes (``source`` paths, file names
and versions read from JSON) are escaped instead (:func:`attr_text`).
"""

from __future__ import annotations

import unicodedata


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a group name in the store, or None when it can.

    >>> name_problem("My Song (Mapper)") is None
    True
    >>> name_problem(".")
    "is '.' or '..'"
    >>> name_problem("caf\\udce9")
    'is not valid UTF-8 (an undecodable byte in the file name)'
    >>> name_problem("a\\x00b")
    "holds the control character '\\\\x00'"
    """
    if not isinstance(name, str) or not name:
        return "is empty"
    if name in (".", ".."):
        return "is '.' or '..'"
    if "/" in name:
        return "holds '/'"
    for c in name:
        if unicodedata.category(c) == "Cc":
            return f"holds the control character {c!r}"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8 (an undecodable byte in the file name)"
    return None


def song_id_problem(song_id: str) -> str | None:
    """The failure reason of a song whose id cannot be stored (see :func:`name_problem`), or None."""
    problem = name_problem(song_id)
    if problem is None:
        return None
    return f"song id {song_id!r} cannot be stored: it {problem}; rename the file or folder"


def attr_text(text: str) -> str:
    """``text`` as an HDF5 string attribute can hold it: undecodable bytes and NUL written as escapes.

    Valid UTF-8 without NUL is returned unchanged.

    >>> attr_text("ok ✓"), attr_text("caf\\udce9"), attr_text("a\\x00b")
    ('ok ✓', 'caf\\\\udce9', 'a\\\\x00b')
    """
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\0", "\\x00")


def printable(text: str) -> str:
    """``text`` as any terminal or pipe can take it: bytes of undecodable file names as ``\\xNN``.

    >>> printable("caf\\udce9 ok ✓")
    'caf\\\\xe9 ok ✓'
    """
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def safe_attrs(attrs: dict) -> dict:
    """``attrs`` with every string value passed through :func:`attr_text`."""
    return {k: attr_text(v) if isinstance(v, str) else v for k, v in attrs.items()}


def plural(n: int, noun: str) -> str:
    """``n`` and ``noun`` (given in the plural), singular when ``n`` is 1.

    >>> plural(1, "songs"), plural(2, "songs"), plural(1, "items"), plural(0, "levels")
    ('1 song', '2 songs', '1 item', '0 levels')
    """
    if n == 1 and noun.endswith("s"):
        noun = noun[:-1]
    return f"{n} {noun}"
