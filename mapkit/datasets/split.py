"""The train/validation split, by song group, without torch.

Both ``mapkit train`` and ``mapkit build-targets`` (which counts the
vocabulary over the training split only) split the store's songs with
:func:`split_by_song`. Importing this module costs nothing beyond the
standard library: counting a vocabulary never imports torch.

Songs are split **by group**, never by song id alone: every song carries a
``group_id`` (song attr of the features, set by ``mapkit extract``; see
:mod:`mapkit.datasets.groups`), and all songs of one group (the same
recording in several encodes or cuts, or the same audio file under two
names) land on the same side. A song without a ``group_id`` (stored before
grouping existed) is its own group, whose id is its song id, so such stores
split exactly as before.
"""

from __future__ import annotations

import hashlib
import json


def song_unit(song_id: str, seed: int = 0) -> float:
    """A number in [0, 1) fixed by ``song_id`` (or a group id) and ``seed`` (SHA-256), the same on every machine."""
    digest = hashlib.sha256(f"{seed}:{song_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def split_by_song(song_ids, val_fraction: float = 0.1, seed: int = 0, val_songs=None, groups=None
                  ) -> tuple[list, list]:
    """Split songs into ``(train, validation)`` lists, deterministically, whole groups at a time.

    A group is in validation when ``song_unit(group_id, seed) < val_fraction``,
    so adding songs to a store never moves an existing song to the other
    side (unless a new song joins two groups into one). When that leaves
    validation empty although ``val_fraction > 0`` and there are at least two
    groups, the group with the smallest unit value goes to validation: a split
    asked for is never silently empty.

    Parameters
    ----------
    song_ids : iterable of str
    val_fraction : float in [0, 1)
    seed : int
    val_songs : iterable of str, optional
        Explicit validation songs; when given, ``val_fraction`` is ignored and
        every song of a named song's group is in validation too. Songs named
        here but absent from ``song_ids`` raise ``ValueError``.
    groups : dict, optional
        ``song_id -> group_id``; a song missing from it is its own group
        (its group id is its song id). None: every song is its own group.

    Returns
    -------
    train, val : list of str, sorted
    """
    ids = sorted(set(song_ids))
    groups = groups or {}
    group_of = {s: str(groups.get(s) or s) for s in ids}
    if val_songs is not None:
        named = set(val_songs)
        missing = sorted(named - set(ids))
        if missing:
            raise ValueError(f"validation songs not in the store: {', '.join(missing)}")
        val_groups = {group_of[s] for s in named}
    else:
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
        all_groups = sorted(set(group_of.values()))
        units = {g: song_unit(g, seed) for g in all_groups}
        val_groups = {g for g in all_groups if units[g] < val_fraction}
        if not val_groups and val_fraction > 0 and len(all_groups) >= 2:
            val_groups = {min(all_groups, key=lambda g: (units[g], g))}
    return ([s for s in ids if group_of[s] not in val_groups],
            [s for s in ids if group_of[s] in val_groups])


def song_groups(features_index) -> dict:
    """``song_id -> group_id`` of the stored songs (the ``group_id`` song attr, else the song id).

    ``features_index`` is ``Store.index("features")`` (or any mapping of song
    id to an object with ``attrs``).
    """
    return {sid: str(e.attrs.get("group_id") or sid) for sid, e in features_index.items()}


def grouping_record(groups: dict, song_ids) -> dict:
    """What a split used, for ``vocab.json`` and checkpoints: the grouping of ``song_ids``.

    Returns
    -------
    dict
        ``hash`` (SHA-256, 16 hex digits, of the sorted ``[song_id, group_id]``
        pairs as JSON), ``n_songs``, ``n_groups`` and ``shared`` (each group
        holding more than one of the songs: ``{group_id: [song ids]}``).
    """
    pairs = sorted((s, str(groups.get(s) or s)) for s in set(song_ids))
    members: dict = {}
    for s, g in pairs:
        members.setdefault(g, []).append(s)
    digest = hashlib.sha256(json.dumps(pairs, separators=(",", ":")).encode("utf-8")).hexdigest()[:16]
    return {"hash": digest, "n_songs": len(pairs), "n_groups": len(members),
            "shared": {g: m for g, m in sorted(members.items()) if len(m) > 1}}
