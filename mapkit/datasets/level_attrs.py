"""The JSON attributes of a stored level group, read back: which difficulties it holds, what was quarantined.

A garbage value (a damaged store) reads as None: ``mapkit validate`` names it and
``mapkit build-targets`` builds the level again.
"""

from __future__ import annotations

import json

from mapkit.errors import StoreError


def listed_difficulties(value):
    """The ``Characteristic/Difficulty`` names of a level's ``difficulties_json`` attribute, or None when garbage.

    Anything but a JSON list of strings with one ``/`` each is garbage (a
    damaged store: ``mapkit validate`` names it, build-targets redoes the level).
    """
    try:
        names = json.loads(value.decode() if isinstance(value, bytes) else str(value))
    except (ValueError, TypeError, UnicodeDecodeError):
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) and n.count("/") == 1 for n in names):
        return None
    return names


def listed_quarantine(value):
    """The ``[item, reason]`` pairs of a level's ``quarantined_json`` attribute, or None when garbage."""
    try:
        pairs = json.loads(value.decode() if isinstance(value, bytes) else str(value))
    except (ValueError, TypeError, UnicodeDecodeError):
        return None
    if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p)
                                              for p in pairs):
        return None
    return pairs


def stored_difficulties(entry) -> list:
    """The difficulty groups a stored level lists; a StoreError naming it when the list is garbage."""
    names = listed_difficulties(entry.attrs.get("difficulties_json", ""))
    if names is None:
        raise StoreError(entry.shard, f"stored level {entry.song_id} is damaged (difficulties_json is not a list "
                                      "of difficulties): run mapkit build-targets on its level to rebuild it")
    return names


def holds_difficulties(entry) -> bool:
    """Whether a stored level group holds at least one difficulty group (a missing list counts as holding)."""
    try:
        return bool(json.loads(entry.attrs.get("difficulties_json", '["?"]')))
    except ValueError:
        return True


def same_selection(entry, selection: str) -> bool:
    """Whether a stored level was built with the characteristic selection ``selection`` (case-insensitive)."""
    return str(entry.attrs.get("characteristic", "")).lower() == selection.lower()
