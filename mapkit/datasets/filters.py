"""Which levels a trainer keeps: filters on the stored level attributes (no torch, no features read).

``mapkit train ... --exclude-automapped`` leaves out levels whose
``automapped`` attr is true (rules in :mod:`mapkit.preprocess.automap`, or
BeatSaver's flag joined by ``build-targets --metadata``); ``--min-score S``
keeps only levels whose BeatSaver ``bs_score`` is at least ``S`` (a level
without a joined score is left out: its score is unknown). A level is one
song id of the store, so a filter removes songs before the split.
"""

from __future__ import annotations

import math


def exclusion_reason(attrs: dict, min_score: float | None = None, exclude_automapped: bool | None = None
                     ) -> str | None:
    """Why the level with these attrs is left out, or None when it is kept."""
    if exclude_automapped and bool(attrs.get("automapped", False)):
        return "automapped"
    if min_score is not None:
        score = attrs.get("bs_score")
        try:
            score = float(score)
        except (TypeError, ValueError):
            score = math.nan
        if math.isnan(score):
            return "no BeatSaver score (build-targets --metadata)"
        if score < min_score:
            return f"BeatSaver score {score:.3f} < {min_score:g}"
    return None


def filter_songs(targets_index, song_ids, min_score: float | None = None, exclude_automapped: bool | None = None
                 ) -> tuple[set, dict]:
    """``(kept song ids, {left-out song id: reason})`` of ``song_ids`` by their stored level attrs.

    ``targets_index`` is ``Store.index("targets")``; songs absent from it are kept
    (they have no level to judge and the trainer ignores them anyway).
    """
    kept, excluded = set(), {}
    for sid in song_ids:
        e = targets_index.get(sid)
        reason = exclusion_reason(e.attrs, min_score, exclude_automapped) if e is not None else None
        if reason is None:
            kept.add(sid)
        else:
            excluded[sid] = reason
    return kept, excluded
