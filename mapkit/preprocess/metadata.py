"""Map metadata in BeatSaver's API format, joined to levels on the level hash.

``mapkit build-targets ... --metadata FILE`` reads a JSON-lines file (one map
per line, as the community's dumps of BeatSaver's ``/maps`` API offer them;
a ``.gz`` file is read compressed). Each line is a map document like::

    {"id": "2144", "stats": {"upvotes": 18422, "downvotes": 297, "score": 0.9591},
     "automapper": false, "declaredAi": "None", "ranked": false, "blRanked": false,
     "tags": ["dance-style", "pop"], "versions": [{"hash": "89cf8bb07afb3c59ae7b5ac00337d62261c36fb4"}]}

Every version's ``hash`` (and a top-level ``hash``, as some dumps flatten
them) is a join key, compared case-insensitively with the level's
``level_hash`` (:mod:`mapkit.preprocess.levelhash`). A joined level gets the
level attrs of :func:`metadata_attrs`. Lines that are not JSON objects are
skipped and counted (the first few are named); a missing file stops the run.
"""

from __future__ import annotations

import gzip
import json
import math
import os
from dataclasses import dataclass, field

from mapkit.errors import MapkitError

#: How many bad lines a warning names.
NAMED_BAD_LINES = 3


@dataclass
class Metadata:
    """Map documents by lower-case level hash, and what could not be read."""

    path: str
    by_hash: dict = field(default_factory=dict)
    n_maps: int = 0
    bad_lines: list = field(default_factory=list)  # (line number, reason)

    def get(self, level_hash: str) -> dict | None:
        return self.by_hash.get(str(level_hash).lower()) if level_hash else None

    def warning(self) -> str | None:
        """A message naming the skipped lines, or None when every line was read."""
        if not self.bad_lines:
            return None
        named = "; ".join(f"line {n}: {r}" for n, r in self.bad_lines[:NAMED_BAD_LINES])
        return f"{self.path}: {len(self.bad_lines)} lines skipped ({named})"


def _number(value) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) else math.nan


def metadata_attrs(doc: dict) -> dict:
    """The level attrs of one BeatSaver map document.

    ``bs_id`` (str), ``bs_upvotes``, ``bs_downvotes`` (int, -1 when absent),
    ``bs_score`` (float in [0, 1], NaN when absent), ``bs_automapper``
    (bool: ``automapper`` true or ``declaredAi`` other than ``"None"``),
    ``bs_declared_ai`` (str), ``bs_ranked`` (bool: ``ranked``, ``blRanked`` or
    ``ssRanked``), ``bs_tags_json`` (JSON list of str).
    """
    stats = doc.get("stats") if isinstance(doc.get("stats"), dict) else {}
    declared = str(doc.get("declaredAi") or "None")
    tags = doc.get("tags") if isinstance(doc.get("tags"), list) else []

    def count(key):
        x = _number(stats.get(key))
        return int(x) if not math.isnan(x) else -1

    return {
        "bs_id": str(doc.get("id", "")),
        "bs_upvotes": count("upvotes"),
        "bs_downvotes": count("downvotes"),
        "bs_score": _number(stats.get("score")),
        "bs_automapper": bool(doc.get("automapper") is True or declared.lower() != "none"),
        "bs_declared_ai": declared,
        "bs_ranked": bool(doc.get("ranked") is True or doc.get("blRanked") is True or doc.get("ssRanked") is True),
        "bs_tags_json": json.dumps([str(t) for t in tags]),
    }


def read_metadata(path) -> Metadata:
    """Read a JSON-lines file of BeatSaver map documents (see the module docstring).

    Raises
    ------
    MapkitError
        The file is missing or unreadable.
    """
    meta = Metadata(os.fspath(path))
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)
                except ValueError as e:
                    meta.bad_lines.append((n, f"not JSON: {e}"))
                    continue
                if not isinstance(doc, dict):
                    meta.bad_lines.append((n, f"a JSON {type(doc).__name__}, not a map document"))
                    continue
                versions = doc.get("versions") if isinstance(doc.get("versions"), list) else []
                hashes = [v.get("hash") for v in versions if isinstance(v, dict)] + [doc.get("hash")]
                hashes = [h.lower() for h in hashes if isinstance(h, str) and h]
                if not hashes:
                    meta.bad_lines.append((n, "no level hash (versions[].hash)"))
                    continue
                attrs = metadata_attrs(doc)
                for h in hashes:
                    meta.by_hash[h] = attrs
                meta.n_maps += 1
    except (OSError, EOFError) as e:
        raise MapkitError(path, f"cannot read metadata: {e}") from None
    return meta
