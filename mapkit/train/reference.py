"""Stage-1 figures for a reference run: onset F1 per difficulty, next to a tuned spectral-flux baseline.

:func:`stage1_report` predicts every level of the held-out songs with a
``mapkit train ddc`` checkpoint, picks peaks exactly as generation does (the
checkpoint's threshold of each difficulty, smoothing and minimum gap) and
matches them one to one with the human notes at several tolerances (2
frames = +-20 ms, 5 = +-50 ms). The baseline is the onset strength of the
audio (:func:`mapkit.preprocess.beats.onset_envelope`, librosa's spectral flux, of
the 2048-point stage-1 spectrogram), divided by its 99th percentile per
song, with a threshold and a constant shift in frames tuned per difficulty
on the *training* songs (the F1 at the smallest tolerance decides).
Both are scored against the human notes as mapped and against them moved
onto the audio by each level's ``mapkit audit`` lag; the model's thresholds
can be re-tuned on the training songs too (``thresholds="train"``).
``bench/onsets.py`` prints the tables.
"""

from __future__ import annotations

import json

import numpy as np

#: Shifts (frames) tried for the baseline: a detector's onsets come a little late or early.
BASELINE_SHIFTS = tuple(range(-4, 5))


def _placement(dataset, level) -> np.ndarray:
    """The raw padded placement features of ``level`` (as stage-1 validation reads them)."""
    return dataset._handles.get(level.feature_shard, features=True)[level.feature_group]["placement"][:]


def _level_truths(dataset) -> list:
    return [np.flatnonzero(dataset.level_classes(i) > 0) for i in range(len(dataset.levels))]


def normalised_flux(placement: np.ndarray, pad: int, column: int) -> np.ndarray:
    """Onset strength ``[T]`` of a song's padded placement features, divided by its 99th percentile, clipped to 1."""
    from mapkit.preprocess.beats import onset_envelope

    rows = np.asarray(placement, dtype=np.float32)
    env = onset_envelope(rows[pad: rows.shape[0] - pad, column])
    scale = float(np.percentile(env, 99)) if env.size else 0.0
    return np.clip(env / scale, 0.0, 1.0) if scale > 0 else env


def f1_at(peaks_list, truths, tolerance: int) -> float:
    """Micro-averaged onset F1 of predicted frames against true frames at ``tolerance`` frames."""
    from mapkit.preprocess.peaks import f1_from_counts, onset_counts

    totals = np.zeros(3, dtype=np.int64)
    for p, t in zip(peaks_list, truths):
        totals += onset_counts(p, t, tolerance)
    return float(f1_from_counts(*totals)[2])


def tune_baseline(envelopes, truths, min_gap_frames: int, tolerance: int, thresholds=None,
                  shifts=BASELINE_SHIFTS) -> tuple[float, int, float]:
    """``(threshold, shift, f1)`` of the best peak picking of ``envelopes`` against ``truths``."""
    from mapkit.preprocess.peaks import DEFAULT_THRESHOLDS, pick_peaks

    best = (float("nan"), 0, -1.0)
    for th in DEFAULT_THRESHOLDS if thresholds is None else thresholds:
        peaks = [pick_peaks(e, th, min_gap_frames) for e in envelopes]
        for shift in shifts:
            f1 = f1_at([p + shift for p in peaks], truths, tolerance)
            if f1 > best[2]:
                best = (float(th), int(shift), f1)
    return best


def stage1_report(store, checkpoint, songs=None, train_songs=None, tolerances=(2, 5), device="cpu",
                  baseline: bool = True, thresholds: str = "checkpoint") -> dict:
    """Onset F1 per difficulty of a stage-1 checkpoint and of the tuned baseline on held-out songs.

    Every figure is given twice: against the human notes as mapped, and against
    them moved onto the audio by each level's ``mapkit audit`` lag (``*_realigned``;
    identical for levels never audited). A map whose notes sit 20-30 ms before
    its audio cannot be matched at +-20 ms by any detector that follows the audio.

    Parameters
    ----------
    store : Store or path
    checkpoint : path
        ``mapkit train ddc`` ``best.pt`` or ``last.pt``.
    songs, train_songs : iterable of str, optional
        Held-out songs (default: the checkpoint's validation songs) and the
        songs the baseline is tuned on (default: its training songs).
    tolerances : tuple of int
        Matching tolerances in frames (2 = +-20 ms at 100 fps).
    device : str
    baseline : bool
        Also tune and score the spectral-flux baseline.
    thresholds : str
        "checkpoint": the model's peak thresholds as its run validated them (on its
        validation songs, which are the default held-out songs); "train": re-tuned
        per difficulty on the training songs, as the baseline is (no held-out level
        touches a setting).

    Returns
    -------
    dict
        ``{"model": {difficulty: {"levels": n, "f1@<tol>": f1, ...}, "all": {...}},
        "model_realigned": {...}, "baseline": {...}, "baseline_realigned": {...},
        "baseline_settings": {difficulty: {"threshold", "shift"}}, "thresholds": {difficulty: threshold}}``.
    """
    from mapkit.datasets.torch_datasets import PlacementDataset
    from mapkit.train.checkpoints import PlacementSetup
    from mapkit.errors import TrainingError
    from mapkit.train.loop import load_checkpoint
    from mapkit.preprocess.difficulties import DIFFICULTIES
    from mapkit.preprocess.peaks import pick_peaks

    if thresholds not in ("checkpoint", "train"):
        raise ValueError(f"thresholds must be 'checkpoint' or 'train', got {thresholds!r}")
    model, ckpt = load_checkpoint(checkpoint, device)
    if ckpt.get("stage") != "ddc":
        raise TrainingError(checkpoint, f"a {ckpt.get('stage')} checkpoint, not a stage-1 (ddc) one")
    setup = PlacementSetup.from_checkpoint(ckpt, checkpoint)
    songs = list(ckpt["val_songs"] if songs is None else songs)
    kw = dict(stats=ckpt["stats"], window=setup.window, context=model.config.context, jitter=False,
              feature_settings=setup.feature_settings, **_level_filters(ckpt))
    held_out = PlacementDataset(store, songs, **kw)
    if not held_out.levels:
        raise TrainingError(checkpoint, f"no level in the songs {songs}")
    names = [DIFFICULTIES[level.difficulty_index] for level in held_out.levels]
    truths = _level_truths(held_out)
    moved = [_moved(t, level) for t, level in zip(truths, held_out.levels)]
    probs = _probabilities(model, held_out, setup, device)
    if thresholds == "train":
        chosen = _train_thresholds(model, store, ckpt, train_songs, setup, kw, device)
    else:
        chosen = {name: setup.threshold_for(name) for name in names}
        if None in chosen.values():
            raise TrainingError(checkpoint, "the checkpoint holds no validated threshold")
    predicted = [pick_peaks(p, chosen[name], setup.min_gap_frames, setup.smoothing) for p, name in zip(probs, names)]
    out = {"model": _by_difficulty(predicted, truths, names, tolerances),
           "model_realigned": _by_difficulty(predicted, moved, names, tolerances),
           "thresholds": {name: float(chosen[name]) for name in dict.fromkeys(names)}}
    if baseline:
        out.update(_baseline(store, ckpt, train_songs, held_out, (truths, moved), names, setup, tolerances, kw))
    held_out.close()
    return out


def _moved(truth: np.ndarray, level) -> np.ndarray:
    """A level's note frames moved onto the audio by its audit lag (those still inside the song)."""
    frames = truth - level.lag_frames
    return frames[(frames >= 0) & (frames < level.n_frames)]


def _probabilities(model, dataset, setup, device) -> list:
    """Stage 1's per-frame probabilities of every level of ``dataset``, predicted as generation does."""
    from mapkit.train.ddc import predict_probabilities, song_beat

    out = []
    for level in dataset.levels:
        raw = _placement(dataset, level)
        out.append(predict_probabilities(model, raw, level.difficulty_index, dataset.mean, dataset.std,
                                         float(dataset.silence), setup.window, device=device,
                                         beat=song_beat(model, raw, setup.feature_settings)))
    return out


def _train_thresholds(model, store, ckpt, train_songs, setup, kw, device) -> dict:
    """The model's F1-best threshold per difficulty on the training songs (their notes as the run trained on)."""
    from mapkit.datasets.torch_datasets import PlacementDataset
    from mapkit.preprocess.difficulties import DIFFICULTIES
    from mapkit.preprocess.peaks import best_thresholds_by_group

    config = json.loads(ckpt["train_config"])
    train = PlacementDataset(store, list(ckpt["train_songs"] if train_songs is None else train_songs),
                             realign=bool(config.get("realign")), **kw)
    probs = _probabilities(model, train, setup, device)
    names = [DIFFICULTIES[lv.difficulty_index] for lv in train.levels]
    best = best_thresholds_by_group(probs, _level_truths(train), names, min_gap_frames=setup.min_gap_frames,
                                    smoothing=setup.smoothing,
                                    tolerance_frames=int(ckpt["peak_picking"].get("tolerance_frames", 2)))
    train.close()
    return {name: th for name, (th, _f1) in best.items()}


def _level_filters(ckpt) -> dict:
    """The level filters of the checkpoint's run, so a report scores the levels its validation scored."""
    config = json.loads(ckpt["train_config"])
    return dict(characteristic=config.get("characteristic", "Standard"), difficulties=config.get("difficulties"),
                exclude_flagged=bool(config.get("exclude_flagged")))


def _by_difficulty(predicted, truths, names, tolerances) -> dict:
    from mapkit.preprocess.difficulties import DIFFICULTIES

    table = {}
    for name in [d for d in DIFFICULTIES if d in names] + ["all"]:
        idx = [i for i, n in enumerate(names) if name in (n, "all")]
        table[name] = {"levels": len(idx)}
        for tol in tolerances:
            table[name][f"f1@{tol}"] = f1_at([predicted[i] for i in idx], [truths[i] for i in idx], tol)
    return table


def _baseline(store, ckpt, train_songs, held_out, truths, names, setup, tolerances, kw) -> dict:
    """The flux baseline, tuned per difficulty on the training songs, scored against both ``truths`` (as mapped,
    moved by the audit lag)."""
    from mapkit.datasets.torch_datasets import PlacementDataset
    from mapkit.preprocess.difficulties import DIFFICULTIES
    from mapkit.preprocess.peaks import pick_peaks

    settings = setup.feature_settings
    pad, column = settings.placement_pad, len(settings.placement_n_ffts) // 2
    train = PlacementDataset(store, list(ckpt["train_songs"] if train_songs is None else train_songs), **kw)
    train_names = [DIFFICULTIES[lv.difficulty_index] for lv in train.levels]
    train_env = [normalised_flux(_placement(train, lv), pad, column) for lv in train.levels]
    train_truths = _level_truths(train)
    train.close()
    chosen = {}
    for name in dict.fromkeys(names):
        idx = [i for i, n in enumerate(train_names) if n == name] or list(range(len(train_names)))
        th, shift, _ = tune_baseline([train_env[i] for i in idx], [train_truths[i] for i in idx],
                                     setup.min_gap_frames, min(tolerances))
        chosen[name] = {"threshold": th, "shift": shift}
    predicted = [pick_peaks(normalised_flux(_placement(held_out, lv), pad, column), chosen[n]["threshold"],
                            setup.min_gap_frames) + chosen[n]["shift"] for lv, n in zip(held_out.levels, names)]
    as_mapped, moved = truths
    return {"baseline": _by_difficulty(predicted, as_mapped, names, tolerances),
            "baseline_realigned": _by_difficulty(predicted, moved, names, tolerances), "baseline_settings": chosen}


def ngram_baselines(train_tokens, val_tokens, vocab_size: int) -> dict:
    """Perplexity and accuracy of unigram and bigram models of the training tokens on the validation tokens.

    The baselines a stage-2 model must beat. Targets are every token after
    BOS (states and EOS), each predicted from the token before it.

    - unigram: ``p(b) = (c(b) + 1) / (N + V')``, add-one over the ``V'``
      tokens that can be targets (all but PAD and BOS);
    - bigram, Witten-Bell interpolated with that unigram:
      ``p(b | a) = (c(a, b) + u(a) p(b)) / (c(a) + u(a))`` with ``u(a)`` the
      number of distinct tokens seen after ``a`` (the unigram alone when
      ``a`` was never seen);
    - accuracy: how often the most probable token is the target.

    Parameters
    ----------
    train_tokens, val_tokens : iterable of int arrays
        Token sequences ``[BOS, ..., EOS]``.
    vocab_size : int

    Returns
    -------
    dict
        ``{"unigram": {"perplexity", "accuracy"}, "bigram": {...}, "tokens": n}``.
    """
    from mapkit.preprocess.targets import BOS, PAD

    V = int(vocab_size)
    uni = np.zeros(V, dtype=np.float64)
    pairs = np.zeros((V, V), dtype=np.float64)
    for t in train_tokens:
        t = np.asarray(t, dtype=np.int64)
        np.add.at(uni, t[1:], 1.0)
        np.add.at(pairs, (t[:-1], t[1:]), 1.0)
    can_follow = np.ones(V, dtype=bool)
    can_follow[[PAD, BOS]] = False
    p_uni = np.where(can_follow, uni + 1.0, 0.0)
    p_uni /= p_uni.sum()
    seen = pairs.sum(axis=1, keepdims=True)
    types = (pairs > 0).sum(axis=1, keepdims=True).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_bi = np.where(seen > 0, (pairs + types * p_uni[None, :]) / (seen + types), p_uni[None, :])
    nll = {"unigram": 0.0, "bigram": 0.0}
    hits = {"unigram": 0, "bigram": 0}
    n = 0
    best_uni = int(np.argmax(p_uni))
    best_bi = np.argmax(p_bi, axis=1)
    for t in val_tokens:
        t = np.asarray(t, dtype=np.int64)
        prev, nxt = t[:-1], t[1:]
        nll["unigram"] -= float(np.log(p_uni[nxt]).sum())
        nll["bigram"] -= float(np.log(p_bi[prev, nxt]).sum())
        hits["unigram"] += int((nxt == best_uni).sum())
        hits["bigram"] += int((best_bi[prev] == nxt).sum())
        n += len(nxt)
    out = {k: {"perplexity": float(np.exp(nll[k] / max(n, 1))), "accuracy": hits[k] / max(n, 1)} for k in nll}
    out["tokens"] = n
    return out


def stage2_baselines(store, checkpoint, songs=None) -> dict:
    """:func:`ngram_baselines` for a stage-2 checkpoint: counted on its training songs, scored on ``songs``.

    The validation tokens are those its validation reads (each level cut to
    the run's ``max_tokens`` from the start), so the figures sit next to the
    model's ``perplexity`` and ``accuracy``. ``songs`` defaults to the
    checkpoint's validation songs.
    """
    from mapkit.datasets.torch_datasets import SelectionDataset
    from mapkit.preprocess.targets import Vocabulary
    from mapkit.errors import TrainingError
    from mapkit.train.loop import read_checkpoint
    from mapkit.train.transformer import TransformerConfig

    ckpt = read_checkpoint(checkpoint)
    if ckpt.get("stage") != "transformer":
        raise TrainingError(checkpoint, f"a {ckpt.get('stage')} checkpoint, not a stage-2 (transformer) one")
    config = TransformerConfig.from_json(ckpt["train_config"])
    kw = dict(stats=ckpt["stats"], jitter=False, **_level_filters(ckpt))
    train = SelectionDataset(store, ckpt["train_songs"], **kw)
    val = SelectionDataset(store, list(ckpt["val_songs"] if songs is None else songs), max_tokens=config.max_tokens,
                           **kw)
    try:
        train_tokens = [train.read_level(i)["tokens"] for i in range(len(train))]
        val_tokens = [val[i]["tokens"].numpy() for i in range(len(val))]
    finally:
        train.close()
        val.close()
    return ngram_baselines(train_tokens, val_tokens, len(Vocabulary.from_json(ckpt["vocab"])))


__all__ = ["BASELINE_SHIFTS", "f1_at", "ngram_baselines", "normalised_flux", "stage1_report", "stage2_baselines",
           "tune_baseline"]
