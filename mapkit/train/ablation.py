"""Does stage 2 listen? Validation with the audio (or the timing) of its source replaced (issue 15).

A model conditioned on the music must do worse when the music is taken
away. :func:`audio_ablation` evaluates one model on the same validation
levels several times, each time with the audio part of every source vector
(:func:`~mapkit.datasets.torch_datasets.selection_source`: the mel rows
around each note) replaced; the timing (gaps, beat phase) and the
difficulty are left as they are, except in ``gaps``:

- ``real``: unchanged (the reference);
- ``zeros``: all audio set to 0, the training mean after normalisation;
- ``shuffle``: the level's own audio vectors in a random order (the same
  song's sound, at the wrong notes);
- ``other``: the audio vectors of a level of another validation song,
  repeated or cut to this level's length (needs at least two validation songs);
- ``gaps``: the audio kept, the level's timing vectors (gaps and beat
  phases) in a random order instead: does the model use the timing?

The training run writes the result into ``metrics.jsonl`` at its end (one
record per mode, ``"split": "ablation"``); :func:`checkpoint_ablation` and
``bench/ablation.py`` compute it for any stage-2 checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch

#: The replacements :func:`audio_ablation` knows, after ``real``.
ABLATIONS = ("zeros", "shuffle", "other", "gaps")


def ablated_source(src: np.ndarray, n_audio: int, mode: str, rng: np.random.Generator | None = None,
                   other: np.ndarray | None = None) -> np.ndarray:
    """A copy of one level's source ``[S, n_audio + ...]`` with its audio part (or, ``gaps``, the rest) replaced.

    Parameters
    ----------
    src : np.ndarray [S, n_audio + ...]
        The audio (normalised mel rows), then the timing and the difficulty (kept).
    n_audio : int
        Length of the audio part (``SelectionConfig.audio_dim``).
    mode : {"real", "zeros", "shuffle", "other", "gaps"}
    rng : np.random.Generator
        The permutation of ``shuffle`` and ``gaps``.
    other : np.ndarray [S', >= n_audio]
        For ``other``: the source whose audio replaces this one's, tiled to ``S`` rows.
    """
    out = np.array(src, dtype=np.float32, copy=True)
    if mode == "real":
        return out
    if mode == "zeros":
        out[:, :n_audio] = 0.0
    elif mode == "shuffle":
        out[:, :n_audio] = out[(rng or np.random.default_rng(0)).permutation(len(out)), :n_audio]
    elif mode == "other":
        if other is None or len(other) == 0:
            raise ValueError("ablation 'other' needs another level's source")
        out[:, :n_audio] = np.resize(np.asarray(other, dtype=np.float32)[:, :n_audio], (len(out), n_audio))
    elif mode == "gaps":
        out[:, n_audio:] = out[(rng or np.random.default_rng(0)).permutation(len(out)), n_audio:]
    else:
        raise ValueError(f"unknown ablation {mode!r}; choose from real, {', '.join(ABLATIONS)}")
    return out


class AblatedSelection(torch.utils.data.Dataset):
    """A :class:`~mapkit.datasets.torch_datasets.SelectionDataset` whose items' sources are ablated.

    ``other`` pairs level ``i`` with the next level (cyclically) of another
    song; ``shuffle`` draws its permutation from ``(seed, i)``, so the
    ablation is the same on every run.
    """

    def __init__(self, dataset, mode: str, n_audio: int, seed: int = 0):
        if mode not in ("real",) + ABLATIONS:
            raise ValueError(f"unknown ablation {mode!r}; choose from real, {', '.join(ABLATIONS)}")
        self.dataset, self.mode, self.n_audio, self.seed = dataset, mode, int(n_audio), int(seed)
        songs = [level.song_id for level in dataset.levels]
        self.partner = [next((j % len(songs) for j in range(i + 1, i + len(songs))
                              if songs[j % len(songs)] != songs[i]), None) for i in range(len(songs))]
        if mode == "other" and any(p is None for p in self.partner):
            raise ValueError("ablation 'other' needs levels of at least two songs")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        other = self.dataset[self.partner[index]]["src"].numpy() if self.mode == "other" else None
        rng = np.random.default_rng([self.seed, index])
        item["src"] = torch.from_numpy(ablated_source(item["src"].numpy(), self.n_audio, self.mode, rng, other))
        return item


def audio_ablation(evaluate, dataset, n_audio: int, modes=ABLATIONS, seed: int = 0) -> dict:
    """Validation metrics with the real audio and with each ablation in ``modes``.

    Parameters
    ----------
    evaluate : callable
        ``evaluate(dataset) -> dict`` of metrics (e.g. ``loss``, ``perplexity``, ``accuracy``).
    dataset : SelectionDataset
        The validation levels.
    n_audio : int
        Length of the audio part of a source vector (``SelectionConfig.audio_dim``).
    modes : iterable of str
        Ablations to run; ``other`` is skipped (not an error) when the levels are all of one song.

    Returns
    -------
    dict
        ``{"real": metrics, mode: metrics, ...}``.
    """
    single_song = len({level.song_id for level in dataset.levels}) < 2
    out = {"real": evaluate(dataset)}
    for mode in modes:
        if mode == "other" and single_song:
            continue
        out[mode] = evaluate(AblatedSelection(dataset, mode, n_audio, seed))
    return out


def ablation_summary(metrics_path) -> str | None:
    """One line for the user: validation loss with the real audio and each ablation of the run's last record.

    None when ``metrics.jsonl`` holds no ablation (stage 1, no validation
    songs, a run stopped early).
    """
    from mapkit.train.loop import read_metrics

    records = [r for r in read_metrics(metrics_path) if r.get("split") == "ablation"]
    if not records:
        return None
    last = [r for r in records if r["step"] == records[-1]["step"]]
    real = next((r for r in last if r["mode"] == "real"), None)
    if real is None:
        return None
    parts = [f"real {real['loss']:.4g}"] + [f"{r['mode']} {r['loss']:.4g} ({r['loss'] - real['loss']:+.3g})"
                                            for r in last if r["mode"] != "real"]
    return "audio ablation, validation loss: " + ", ".join(parts)


def checkpoint_ablation(store, checkpoint, songs=None, modes=ABLATIONS, device="cpu") -> dict:
    """:func:`audio_ablation` of a stage-2 checkpoint on ``songs`` of ``store``.

    Parameters
    ----------
    store : Store or path
        The store the checkpoint was trained on (same feature, target and vocabulary hashes).
    checkpoint : path
        ``best.pt`` or ``last.pt`` of ``mapkit train transformer``.
    songs : iterable of str, optional
        Default: the checkpoint's validation songs.
    modes : iterable of str
    device : str

    Returns
    -------
    dict
        ``{"real": metrics, mode: metrics, ...}``, metrics as in validation
        (``loss``, ``perplexity``, ``accuracy``, ``tokens``).

    Raises
    ------
    TrainingError
        Not a stage-2 checkpoint, another store, or no level in ``songs``.
    """
    import contextlib

    from mapkit.datasets.store import Store
    from mapkit.datasets.torch_datasets import SelectionDataset
    from mapkit.errors import TrainingError
    from mapkit.train.loop import check_fingerprint, load_checkpoint, store_fingerprint
    from mapkit.train.transformer import TransformerConfig, TransformerStage

    store = store if isinstance(store, Store) else Store(store)
    model, ckpt = load_checkpoint(checkpoint, device)
    if ckpt.get("stage") != "transformer":
        raise TrainingError(checkpoint, f"a {ckpt.get('stage')} checkpoint, not a stage-2 (transformer) one")
    check_fingerprint(ckpt, store_fingerprint(store, need_vocab=True), checkpoint)
    config = TransformerConfig.from_json(ckpt["train_config"])
    stage = TransformerStage(store, config)
    songs = list(ckpt["val_songs"] if songs is None else songs)
    stage.val_dataset = SelectionDataset(store, songs, stats=ckpt["stats"], characteristic=config.characteristic,
                                         difficulties=config.difficulties, vocab=stage.vocab,
                                         max_tokens=config.max_tokens, jitter=False, seed=config.seed,
                                         exclude_flagged=config.exclude_flagged, layout=model.config.source_layout,
                                         feature_settings=stage.feature_settings())
    try:
        if not stage.val_dataset.levels:
            raise TrainingError(store.root, f"no {config.characteristic} level in the songs {songs}")
        with torch.no_grad():
            return stage.ablation(model, device, contextlib.nullcontext, modes)
    finally:
        stage.close()


__all__ = ["ABLATIONS", "AblatedSelection", "ablated_source", "ablation_summary", "audio_ablation",
           "checkpoint_ablation"]
