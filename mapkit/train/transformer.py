"""Stage 2 training, ``mapkit train transformer``: which notes go where (docs/design.md §6).

The encoder-decoder (:class:`~mapkit.train.models.SelectionModel`) reads one
level per item of :class:`~mapkit.datasets.torch_datasets.SelectionDataset`:
per token, the stage-2 feature rows around its frame, the four gaps, its
beat phase and the level's difficulty (:class:`~mapkit.datasets.torch_datasets.SourceLayout`); the
causal decoder predicts each state token from the previous ones, with
label-smoothed cross-entropy. Validation reports token accuracy and
perplexity (``exp`` of the unsmoothed cross-entropy per predicted token).
The vocabulary (full JSON) goes into the checkpoint, so generation decodes
states without the store. At the end of a run, ``metrics.jsonl`` gets the
audio ablation (:mod:`mapkit.train.ablation`): the validation metrics again
with the audio zeroed, shuffled and taken from another song, and with the
gaps shuffled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from mapkit.datasets.store import Store
from mapkit.errors import TrainingError
from mapkit.preprocess.targets import N_SPECIAL, PAD
from mapkit.settings import FeatureSettings
from mapkit.train.loop import RunOptions, Stage, TrainConfig, TrainResult, fit
from mapkit.train.models import SELECTION_PRESETS, SelectionConfig, selection_loss, token_accuracy


@dataclass(frozen=True)
class TransformerConfig(TrainConfig):
    """Stage-2 training. ``model.vocab_size`` is replaced by the store's vocabulary size.

    ``max_tokens``: a longer level is cropped to a random window of that
    many tokens per epoch (memory grows with its square).
    """

    KIND = "train_transformer"

    model: SelectionConfig = field(default_factory=lambda: SELECTION_PRESETS["default"])
    batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 1000
    max_tokens: int = 1024
    epochs: int | None = 100


def transformer_config(preset: str = "default", d_model=None, n_layers=None, n_heads=None, d_ff=None,
                       dropout=None, copy_head=None, **overrides) -> TransformerConfig:
    """A :class:`TransformerConfig` with the model of ``preset`` ("tiny" or "default"), resized.

    ``n_layers`` sets both encoder and decoder depth; ``d_ff`` defaults to
    ``4 * d_model`` when ``d_model`` is changed; ``copy_head`` (default: the
    preset's, on) switches :attr:`SelectionConfig.copy_head`. ``tiny`` also uses a short
    warm-up and a higher learning rate, for tests and CPUs.
    """
    if preset not in SELECTION_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(SELECTION_PRESETS)}")
    model = SELECTION_PRESETS[preset]
    sizes = {}
    if d_model is not None:
        sizes.update(d_model=d_model, d_ff=4 * d_model)
    if n_layers is not None:
        sizes.update(n_encoder_layers=n_layers, n_decoder_layers=n_layers)
    for k, v in (("n_heads", n_heads), ("d_ff", d_ff), ("dropout", dropout), ("copy_head", copy_head)):
        if v is not None:
            sizes[k] = v
    base = {"model": replace(model, **sizes)}
    if preset == "tiny":
        base.update(batch_size=8, warmup_steps=20, lr=3e-3, weight_decay=0.0, log_every=10)
    given = {k: v for k, v in overrides.items() if v is not None}
    if "max_steps" in given and "epochs" not in given:
        given["epochs"] = None  # an explicit step budget is not cut short by the preset's epochs
    base.update(given)
    return TransformerConfig(**base)


def unigram_perplexity(train_tokens, val_tokens, vocab_size: int) -> float:
    """Perplexity of the validation targets under the training split's token frequencies.

    The baseline a sequence model must beat. Targets are the tokens after
    BOS (states and EOS); counts are add-one smoothed over the vocabulary
    (PAD and BOS excluded: they are never targets).
    """
    counts = torch.ones(vocab_size, dtype=torch.float64)
    counts[PAD] = counts[1] = 0  # PAD, BOS
    for t in train_tokens:
        counts += torch.bincount(torch.as_tensor(t[1:], dtype=torch.int64), minlength=vocab_size).double()
    logp = torch.log(counts / counts.sum())
    nll = n = 0.0
    for t in val_tokens:
        t = torch.as_tensor(t[1:], dtype=torch.int64)
        nll -= float(logp[t].sum())
        n += len(t)
    return math.exp(nll / n)


class TransformerStage(Stage):
    """Stage 2 for :func:`~mapkit.train.loop.fit`."""

    name = "transformer"
    model_kind = "selection"
    metric = "perplexity"
    maximize = False
    need_vocab = True

    def __init__(self, store: Store, config: TransformerConfig):
        from mapkit.datasets.torch_datasets import collate_selection, read_vocab

        self.store = store
        self.config = config
        self.vocab = read_vocab(store)
        self.collate_fn = collate_selection

    def prepare(self, stats, train_songs, val_songs, seed):
        from mapkit.datasets.torch_datasets import SelectionDataset

        c = self.config
        kw = dict(stats=stats, characteristic=c.characteristic, difficulties=c.difficulties, vocab=self.vocab,
                  max_tokens=c.max_tokens, seed=seed, exclude_flagged=c.exclude_flagged,
                  feature_settings=self.feature_settings(),
                  layout=c.model.source_layout)
        self.train_dataset = SelectionDataset(self.store, train_songs, jitter=True, **kw)
        self.val_dataset = SelectionDataset(self.store, val_songs, jitter=False, **kw) if val_songs else None
        if not self.train_dataset.levels:
            raise TrainingError(self.store.root, f"no {c.characteristic} level in the training songs")
        n_mels = self.train_dataset.mean.shape[-1]
        if n_mels != c.model.n_mels:
            raise TrainingError(self.store.root, f"the store's stage-2 features have {n_mels} bands, "
                                                 f"the model expects {c.model.n_mels}")

    def feature_settings(self) -> FeatureSettings:
        """The store's feature settings (its stage-2 pad)."""
        some = next(iter(self.store.index("features").values()))
        return FeatureSettings.from_json(some.file_attrs["settings_json"])

    def model_config(self):
        return replace(self.config.model, vocab_size=len(self.vocab))

    def loss(self, model, batch, device):
        tokens, mask = batch["tokens"], batch["mask"]
        logits = model(batch["src"], mask, tokens[:, :-1], mask[:, :-1])
        return selection_loss(logits.float(), tokens[:, 1:], self.config.model.label_smoothing)

    def evaluate(self, model, device, autocast) -> dict:
        return self.evaluate_dataset(model, self.val_dataset, device, autocast)

    def final_records(self, model, device, autocast) -> list:
        """The audio ablation of the trained model (:func:`~mapkit.train.ablation.audio_ablation`)."""
        ablation = self.ablation(model, device, autocast)
        return [{"split": "ablation", "mode": mode, **metrics} for mode, metrics in ablation.items()]

    def ablation(self, model, device, autocast, modes=None) -> dict:
        """Validation metrics with the real audio and each ablation in ``modes`` (default: all of them)."""
        from mapkit.train.ablation import ABLATIONS, audio_ablation

        return audio_ablation(lambda ds: self.evaluate_dataset(model, ds, device, autocast), self.val_dataset,
                              self.config.model.audio_dim, ABLATIONS if modes is None else modes, seed=self.config.seed)

    def evaluate_dataset(self, model, ds, device, autocast) -> dict:
        """Loss, perplexity and token accuracy of ``model`` over the levels of ``ds`` (unshuffled, whole)."""
        from mapkit.datasets.torch_datasets import collate_selection

        nll = correct = counted = 0.0
        loss_sum = 0.0
        bs = self.config.batch_size
        for i in range(0, len(ds), bs):
            batch = collate_selection([ds[j] for j in range(i, min(i + bs, len(ds)))])
            tokens, mask = batch["tokens"].to(device), batch["mask"].to(device)
            with autocast():
                logits = model(batch["src"].to(device), mask, tokens[:, :-1], mask[:, :-1]).float()
            targets = tokens[:, 1:]
            n = int((targets != PAD).sum())
            nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                         ignore_index=PAD, reduction="sum"))
            loss_sum += float(selection_loss(logits, targets, self.config.model.label_smoothing)) * n
            c, k = token_accuracy(logits, targets)
            correct += c
            counted += k
        return {"loss": loss_sum / counted, "perplexity": math.exp(nll / counted),
                "accuracy": correct / counted, "tokens": int(counted)}

    def checkpoint_extras(self) -> dict:
        return {"vocab": self.vocab.to_json(), "max_tokens": self.config.max_tokens,
                "n_special_tokens": N_SPECIAL}


def train_transformer(store, out_dir="mapkit-runs/transformer", config: TransformerConfig | None = None,
                      options: RunOptions = RunOptions()) -> TrainResult:
    """Train the stage-2 model on ``store``; checkpoints, logs and plot go to ``out_dir``.

    Parameters
    ----------
    store : Store or path
        A store with features, targets, stats.json and vocab.json.
    out_dir : path
        ``last.pt``, ``best.pt`` (lowest validation perplexity), ``metrics.jsonl``, ``curves.png``.
    config : TransformerConfig
        Default ``transformer_config("default")`` (d_model 512, 6+6 layers, 8 heads).
    options : RunOptions

    Returns
    -------
    TrainResult
        ``metrics`` holds the last validation ``loss, perplexity, accuracy, tokens``.
    """
    store = store if isinstance(store, Store) else Store(store)
    config = config or transformer_config()
    return fit(TransformerStage(store, config), store, out_dir, config, options)


__all__ = ["TransformerConfig", "TransformerStage", "transformer_config", "train_transformer",
           "unigram_perplexity"]
