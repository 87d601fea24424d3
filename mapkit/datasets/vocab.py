"""The vocabulary's lifecycle: counted over the training split, checked against the stored targets, recorded.

``vocab.json`` is read and written through :meth:`mapkit.datasets.store.Store.read_vocab` and
:meth:`~mapkit.datasets.store.Store.write_vocab`; this module says what goes into it (:func:`vocab_document`),
which songs it may be counted over (:func:`training_songs`, the trainer's split), when a store's
targets and its vocabulary disagree (:func:`check_vocab`), and when a trainer's validation songs
were counted (:func:`vocabulary_leak`). No torch: counting a vocabulary never imports it.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from mapkit.datasets.level_attrs import stored_difficulties
from mapkit.datasets.store import Store
from mapkit.errors import StoreError
from mapkit.preprocess.targets import Vocabulary
from mapkit.settings import TargetSettings


#: Share of UNK state tokens above which build-targets and validate advise ``--rebuild-vocab``: levels added
#: after the vocabulary was counted, or a vocabulary counted over too few songs, lose that much of their notes.
UNK_WARN_SHARE = 0.05


def count_state_array(states: np.ndarray, counts: Counter) -> None:
    # each row's 12 bytes as one key: ~20x faster than np.unique(axis=0); states hold 0..19, so uint8 is exact
    rows = np.ascontiguousarray(states, dtype=np.uint8)
    counts.update(rows.view(f"V{rows.shape[1]}").ravel().tolist())


def unk_summary(n_unk: int, n_states: int, threshold: float = UNK_WARN_SHARE) -> str | None:
    """The summary line about UNK tokens of a run's levels, or None when they hold no state.

    Above ``threshold`` it says what it costs and that ``--rebuild-vocab`` fixes it.

    >>> unk_summary(3, 100)
    "UNK: 3 of 100 note states (3.0%) of this run's training-split levels are outside the vocabulary"
    """
    if n_states <= 0:
        return None
    share = n_unk / n_states
    line = (f"UNK: {n_unk} of {n_states} note states ({100 * share:.1f}%) of this run's training-split levels "
            f"are outside the vocabulary")
    if share > threshold:
        line += (f"; above {100 * threshold:g}%: the model cannot learn or generate them. Re-count the vocabulary "
                 f"over the training songs with --rebuild-vocab")
    return line


def stored_state_counts(entry, counts: Counter) -> int:
    """Add the stored ``states`` of a stored level to ``counts``; returns the number of difficulties with states."""
    from mapkit.datasets.store import open_shard

    n = 0
    with open_shard(entry.shard, features=False) as f:
        g = f[entry.group]
        for name in stored_difficulties(entry):
            states = g[name]["states"][()]
            if len(states):
                count_state_array(states, counts)
                n += 1
    return n


def load_vocab(store: Store) -> tuple[Vocabulary, dict] | None:
    """``(vocabulary, its JSON)`` from ``vocab.json``, or None when there is none."""
    document = store.read_vocab_json(missing_ok=True)
    if document is None:
        return None
    try:
        return Vocabulary.from_json(document), document
    except (ValueError, KeyError, TypeError) as e:
        raise StoreError(store.vocab_path, f"unreadable vocabulary: {e}") from None


def vocab_bound(entry) -> bool:
    """Whether a stored level's tokens depend on the vocabulary: it has at least one state.

    A level without states (zero notes, or nothing usable) is ``[BOS, EOS]``
    under every vocabulary, so it never conflicts with one.
    """
    return int(entry.attrs.get("n_states", 1)) > 0


def check_vocab(index, vocab: Vocabulary, vocab_json: dict, settings: TargetSettings, store: Store) -> None:
    """Refuse a ``vocab.json`` that is not the vocabulary of the stored targets, or of another size setting."""
    stored_size = vocab_json.get("vocab_size")
    if stored_size is not None and int(stored_size) != settings.vocab_size:
        raise StoreError(store.vocab_path, f"vocabulary built with vocab size {stored_size}, this run asks for "
                                           f"{settings.vocab_size}; add --rebuild-vocab to rebuild it and "
                                           f"re-encode every stored level")
    others = sorted({str(e.file_attrs.get("vocab_hash")) for e in index.values() if vocab_bound(e)} - {vocab.hash})
    if others:
        raise StoreError(store.vocab_path, f"vocab.json (hash {vocab.hash}) is not the vocabulary of the stored "
                                           f"targets (hash {', '.join(others)}); add --rebuild-vocab to re-encode "
                                           f"every stored level with a new vocabulary")


#: ``vocab.json``'s ``counted_over`` when only the training split's levels were counted.
COUNTED_OVER_TRAINING = "training split"


def training_songs(song_ids, val_fraction: float = 0.1, seed: int = 0, val_songs=None, groups=None
                   ) -> tuple[list, list]:
    """The trainer's ``(train, validation)`` split of ``song_ids``, for counting the vocabulary.

    The same rule as ``mapkit train`` (:func:`mapkit.datasets.split.split_by_song`,
    by song group; torch is not imported): pass the songs the trainer splits
    (those with both features and targets) and their ``groups`` so that its
    set-dependent fallback (never an empty validation split) picks the same
    group. Explicit ``val_songs`` absent from ``song_ids`` are validation
    songs all the same (never counted) instead of an error.

    Parameters
    ----------
    song_ids : iterable of str
    val_fraction : float in [0, 1)
    seed : int
        The trainer's ``--seed``.
    val_songs : iterable of str, optional
        Explicit validation songs (override ``val_fraction``; their groups go with them).
    groups : dict, optional
        ``song_id -> group_id`` (:func:`mapkit.datasets.split.song_groups`).

    Returns
    -------
    train, val : list of str, sorted
        ``val`` holds only songs of ``song_ids``.
    """
    from mapkit.datasets.split import split_by_song

    ids = set(song_ids)
    named = None if val_songs is None else set(val_songs)
    train, val = split_by_song(ids | (named or set()), val_fraction, seed, named, groups)
    return train, [s for s in val if s in ids]


def empty_vocabulary_reason(split_ids, train, val, named: bool, n_states: int) -> str:
    """Why no vocabulary can be counted, and what to do (build-targets then writes nothing).

    The vocabulary is counted over the training songs' levels only; with few
    songs the training split can hold no usable level (every song hashed into
    validation, or the training songs' levels quarantined). Every state would
    then be UNK and no ``vocab.json`` could be written.
    """
    shown = ", ".join(sorted(val)[:5]) + (" ..." if len(val) > 5 else "")
    how = ("name fewer songs with --val-song" if named else
           "name the validation songs with --val-song (the same for mapkit train), or lower --val-fraction")
    return (f"no vocabulary can be counted: the training split ({len(train)} of {len(split_ids)} songs) holds no "
            f"usable level, so all {n_states} note states would be UNK (validation songs: {shown or 'none'}); "
            f"nothing was written. {how[0].upper() + how[1:]}, or add more songs")


def vocab_document(vocab: Vocabulary, counts: Counter, settings: TargetSettings, n_levels: int,
                   n_difficulties: int = 0, counted_songs=(), val_songs=(), val_fraction: float | None = 0.1,
                   seed: int = 0, grouping: dict | None = None) -> dict:
    """The content of ``vocab.json``: the vocabulary, and what it was counted over.

    ``n_levels`` is the number of level groups (songs) whose states were
    counted, ``n_difficulties`` the number of their difficulties that had
    states, ``n_state_frames`` the states counted.

    ``counted_over`` is ``"training split"``; ``counted_songs`` the songs whose
    levels were counted, ``val_songs`` the validation songs left out,
    ``val_fraction`` (None when the validation songs were named) and ``seed``
    the split's settings: :func:`vocabulary_leak` compares a trainer's split with them.
    ``grouping`` is the song grouping the split used
    (:func:`mapkit.datasets.split.grouping_record`: hash, counts, shared groups).
    """
    total = int(sum(counts.values()))
    covered = int(sum(vocab.counts))
    return {**vocab.to_json(), "vocab_size": settings.vocab_size, "n_levels": int(n_levels),
            "n_difficulties": int(n_difficulties),
            "n_state_frames": total, "n_distinct_states": len(counts),
            "coverage": covered / total if total else 1.0, "targets_settings_hash": settings.hash,
            "counted_over": COUNTED_OVER_TRAINING, "val_fraction": val_fraction, "seed": int(seed),
            "val_songs": sorted(val_songs), "counted_songs": sorted(counted_songs), "grouping": grouping}


def vocabulary_leak(vocab_json: dict, val_songs, max_named: int = 10, groups=None) -> str | None:
    """A warning when states of validation songs (or of their groups) were counted into the vocabulary, else None.

    Parameters
    ----------
    vocab_json : dict
        The content of ``vocab.json``.
    val_songs : iterable of str
        The trainer's validation songs.
    max_named : int
        How many of the leaked songs the message names.
    groups : dict, optional
        ``song_id -> group_id``: a validation song also leaks when another
        song of its group (another encode of the same recording) was counted.

    Returns
    -------
    str or None
        Names the validation songs whose levels (or whose group's levels)
        were counted (their rare states have tokens, so validation perplexity
        looks better than it is), or says that the vocabulary does not record
        what it was counted over (built before the count left validation songs
        out); None when there is no leak or no validation song.
    """
    val = sorted(set(val_songs))
    if not val:
        return None
    fix = "; rebuild it with the trainer's split: mapkit build-targets --rebuild-vocab with the same " \
          "--val-fraction/--val-song/--seed"
    if vocab_json.get("counted_over") != COUNTED_OVER_TRAINING or "counted_songs" not in vocab_json:
        return "vocab.json does not record which songs it was counted over (it may hold states of validation " \
               "songs, making validation perplexity look better than it is)" + fix
    counted = set(vocab_json["counted_songs"])  # once: a set per validation song was quadratic
    groups = groups or {}
    counted_groups = {str(groups.get(s) or s) for s in counted}
    leaked = [s for s in val if s in counted or str(groups.get(s) or s) in counted_groups]
    if not leaked:
        return None
    more = f" and {len(leaked) - max_named} more" if len(leaked) > max_named else ""
    return (f"{len(leaked)} of the {len(val)} validation songs were counted into vocab.json, or share a group "
            f"with a counted song (validation perplexity looks better than it is): "
            f"{', '.join(leaked[:max_named])}{more}" + fix)
