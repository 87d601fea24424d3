"""Stage 1 training, ``mapkit train ddc``: where notes go in time (docs/design.md §6).

The C-LSTM (:class:`~mapkit.train.models.PlacementModel`) learns "any note"
per frame from windows of :class:`~mapkit.datasets.torch_datasets.PlacementDataset`,
conditioned on the difficulty, with a positively weighted binary
cross-entropy (notes are rare frames). Validation predicts every validation
level whole (:func:`predict_probabilities`), picks peaks and reports onset
precision, recall and F1 at +-20 ms (2 frames) at the threshold that
maximises F1, found for each difficulty on its own levels (``f1`` uses
them; ``threshold`` is the best single one and ``f1_single_threshold`` the F1
with it; ``f1_<Difficulty>`` and ``threshold_<Difficulty>`` are reported too). The thresholds and the
peak-picking settings go into the checkpoint, so generation picks peaks
exactly as validated, with the threshold of the difficulty it generates.

With ``targets="events"`` (``--targets events``) the model also learns the
multi-label ``frame_events`` target through its class head, and validation
adds per-channel F1 (:mod:`mapkit.train.events`).

Optional training levers (off by default; :mod:`mapkit.train.augment`): a
random gain and mel-bin shift per window (``gain_db``, ``mel_shift_bins``) and
soft targets next to each note (``widen_frames``, ``widen_value``).
:func:`predict_probabilities` can overlap its windows (``margin``,
:func:`window_starts`); by default they are back to back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mapkit.datasets.store import Store
from mapkit.errors import TrainingError
from mapkit.preprocess.difficulties import DIFFICULTIES
from mapkit.settings import FeatureSettings
from mapkit.train.loop import RunOptions, Stage, TrainConfig, TrainResult, fit
from mapkit.train.models import PLACEMENT_PRESETS, PlacementConfig, onset_loss


@dataclass(frozen=True)
class DDCConfig(TrainConfig):
    """Stage-1 training: the model, the windows, the loss weighting and peak picking.

    ``pos_weight`` None: the ratio of empty to note frames in the training
    split. ``smoothing``, ``min_gap_frames`` and ``tolerance_frames`` are
    those of :mod:`mapkit.preprocess.peaks` (2 frames = +-20 ms).
    ``gain_db``, ``mel_shift_bins``, ``widen_frames`` and ``widen_value``: see
    :mod:`mapkit.train.augment` (0 = off).
    """

    KIND = "train_ddc"

    model: PlacementConfig = field(default_factory=lambda: PLACEMENT_PRESETS["default"])
    window: int = 100
    pos_weight: float | None = None
    smoothing: int = 5
    min_gap_frames: int = 5
    tolerance_frames: int = 2
    eval_batch_size: int = 64
    #: "notes" (frame_class onsets) or "events" (also the frame_events channels, mapkit.train.events)
    targets: str = "notes"
    #: training augmentation (mapkit.train.augment): random gain of up to +-gain_db dB per window,
    #: random shift of up to +-mel_shift_bins mel bins per window
    gain_db: float = 0.0
    mel_shift_bins: int = 0
    #: frames each side of a note whose training target is widen_value instead of 0 (0 = plain 0/1)
    widen_frames: int = 0
    widen_value: float = 0.5
    #: move each level's targets onto the audio by its `mapkit audit` lag (PlacementDataset ``realign``)
    realign: bool = False

    def __post_init__(self):
        super().__post_init__()
        from mapkit.train.events import TARGETS

        if self.targets not in TARGETS:
            raise ValueError(f"targets must be one of {', '.join(TARGETS)}, got {self.targets!r}")


def ddc_config(preset: str = "default", beat_phase: bool | None = None, **overrides) -> DDCConfig:
    """A :class:`DDCConfig` with the model of ``preset`` ("tiny" or "default") and ``overrides``.

    ``tiny`` also uses small batches and a short warm-up, for tests and CPUs. ``beat_phase`` True gives the
    model the beat-phase inputs of :data:`~mapkit.preprocess.beats.BEAT_INPUT_PERIODS`.
    """
    import dataclasses

    from mapkit.preprocess.beats import BEAT_INPUT_PERIODS

    if preset not in PLACEMENT_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PLACEMENT_PRESETS)}")
    base = {"model": PLACEMENT_PRESETS[preset]}
    if beat_phase is not None:
        base["model"] = dataclasses.replace(base["model"], beat_periods=BEAT_INPUT_PERIODS if beat_phase else ())
    if preset == "tiny":
        base.update(batch_size=16, warmup_steps=20, lr=3e-3, log_every=10)
    given = {k: v for k, v in overrides.items() if v is not None}
    if "max_steps" in given and "epochs" not in given:
        given["epochs"] = None  # an explicit step budget is not cut short by the preset's epochs
    base.update(given)
    return DDCConfig(**base)


def window_starts(n_frames: int, window: int, margin: int = 0) -> list[tuple[int, int, int]]:
    """``(start, keep_from, keep_to)`` of the windows that predict a song of ``n_frames`` frames.

    Windows of ``window`` frames start every ``window - 2 * margin`` frames
    (the last one ends at frame ``n_frames``); each keeps its frames
    ``[keep_from, keep_to)`` (song frames), i.e. all but ``margin`` frames at
    each inner edge, so every frame is predicted by a window in which it has
    at least ``margin`` frames of LSTM context on each side where the song
    has them. With ``margin`` 0 the windows tile the song. Kept ranges are
    written in order, so a later window overwrites the frames it shares.
    A song shorter than ``window`` is one window ``(0, 0, n_frames)``.
    """
    if not 0 <= 2 * margin < window:
        raise ValueError(f"margin {margin} leaves no frame of a {window}-frame window")
    if n_frames <= window:
        return [(0, 0, n_frames)]
    stride = window - 2 * margin
    starts = list(range(0, n_frames - window + 1, stride))
    if starts[-1] + window < n_frames:
        starts.append(n_frames - window)
    return [(s, s + margin if k else 0, s + window - margin if k < len(starts) - 1 else n_frames)
            for k, s in enumerate(starts)]


def predict_probabilities(model, placement, difficulty: int, mean, std, silence: float, window: int = 100,
                          batch_size: int = 64, device="cpu", autocast=None, classes: bool = False,
                          margin: int = 0, beat: np.ndarray | None = None) -> np.ndarray:
    """Per-frame note probability ``[T]`` of a whole song, in windows as in training.

    The song's frames are cut into windows of ``window`` output frames
    (:func:`window_starts`: with ``margin`` 0, starts ``0, L, 2L, ...``, the
    last window ends at frame ``T`` and only its new frames are kept), each
    read with its +-context rows and predicted with a fresh LSTM state, as
    trained. ``margin > 0`` overlaps the windows so no kept frame is within
    ``margin`` frames of an inner window edge (the LSTM starts cold at a
    window's start). A song shorter than ``window`` is padded with the
    silence value.

    Parameters
    ----------
    model : PlacementModel
        In eval mode.
    placement : np.ndarray [T + 2*context, 3, 80]
        The song's raw (not normalised) padded placement features.
    difficulty : int
        0..4 = Easy..ExpertPlus.
    mean, std : np.ndarray [3, 80]
        Normalisation (the checkpoint's ``stats``).
    silence : float
        Raw feature value of silence (``FeatureSettings.silence_value``).
    window, batch_size : int
    device : str or torch.device
    autocast : callable, optional
        A context-manager factory (mixed precision) wrapped around the forward passes.
    classes : bool or "both"
        Return the class head's per-channel probabilities ``[T, n_classes]`` instead;
        ``"both"``: ``(onsets [T], classes [T, n_classes])`` from the same forward passes.
    margin : int
        Overlap margin of the windows (see :func:`window_starts`), ``0 <= 2 * margin < window``.
        0 (the default, and what validation, ``bench/onsets.py`` and ``mapkit generate`` use):
        back-to-back windows.
    beat : np.ndarray [T, model.config.beat_inputs], optional
        The song's beat-phase inputs (:func:`song_beat`); required when the model reads them.

    Returns
    -------
    np.ndarray [T] float32 (``[T, n_classes]`` with ``classes``; a pair with ``"both"``)
    """
    context = model.config.context
    x = (np.asarray(placement, dtype=np.float32) - mean) / std
    n_frames = x.shape[0] - 2 * context
    if n_frames < 1:
        raise ValueError(f"{x.shape[0]} feature rows hold no frame (context {context})")
    if n_frames < window:
        pad = np.full((window - n_frames,) + x.shape[1:], (silence - mean) / std, dtype=np.float32)
        x = np.concatenate([x, pad])
    beat_rows = None
    if model.config.beat_inputs:
        beat_rows = np.zeros((max(n_frames, window), model.config.beat_inputs), dtype=np.float32)
        if beat is None or len(beat) != n_frames:
            raise ValueError(f"this model reads the beat phase: give beat [{n_frames}, {model.config.beat_inputs}] "
                             f"(song_beat), got {None if beat is None else np.shape(beat)}")
        beat_rows[:n_frames] = beat
    windows = window_starts(n_frames, window, margin)
    onsets = np.zeros(max(n_frames, window), dtype=np.float32)
    per_class = np.zeros((max(n_frames, window), model.config.n_classes), dtype=np.float32) if classes else None
    rows = window + 2 * context
    for i in range(0, len(windows), batch_size):
        chunk = windows[i: i + batch_size]
        xb = torch.from_numpy(np.stack([x[s: s + rows] for s, _, _ in chunk])).to(device)
        db = torch.full((len(chunk),), int(difficulty), dtype=torch.int64, device=device)
        phase = {} if beat_rows is None else {
            "beat": torch.from_numpy(np.stack([beat_rows[s: s + window] for s, _, _ in chunk])).to(device)}
        with torch.no_grad(), (autocast() if autocast else torch.autocast("cpu", enabled=False)):
            y, c = model(xb, db, return_classes=True, **phase) if classes else (model(xb, db, **phase), None)
            p = torch.sigmoid(y.float()).cpu().numpy()
            pc = torch.sigmoid(c.float()).cpu().numpy() if classes else None
        for j, (s, lo, hi) in enumerate(chunk):  # in order: a later window overwrites the frames it shares
            onsets[lo: hi] = p[j, lo - s: hi - s]
            if classes:
                per_class[lo: hi] = pc[j, lo - s: hi - s]
    if classes == "both":
        return onsets[:n_frames], per_class[:n_frames]
    return per_class[:n_frames] if classes else onsets[:n_frames]


def song_beat(model, placement, feature_settings: FeatureSettings) -> np.ndarray | None:
    """The beat-phase inputs ``model`` reads for a song (its padded placement features), or None when it reads none."""
    from mapkit.preprocess.beats import placement_envelope, song_beat_inputs

    if not model.config.beat_inputs:
        return None
    return song_beat_inputs(placement_envelope(placement, feature_settings), model.config.beat_periods,
                            feature_settings.fps)


class DDCStage(Stage):
    """Stage 1 for :func:`~mapkit.train.loop.fit`."""

    name = "ddc"
    model_kind = "placement"
    metric = "f1"
    maximize = True

    def __init__(self, store: Store, config: DDCConfig):
        self.store = store
        self.config = config
        self.pos_weight = config.pos_weight
        self.threshold = None
        self.thresholds = {}  # difficulty name -> its own validated threshold
        self.feature_settings = FeatureSettings()
        self.events = config.targets == "events"
        self.event_pos_weight = None

    def prepare(self, stats, train_songs, val_songs, seed):
        from mapkit.datasets.torch_datasets import PlacementDataset

        c = self.config
        index = self.store.index("features")
        some = next(iter(index.values()))
        self.feature_settings = FeatureSettings.from_json(some.file_attrs["settings_json"])
        mismatches = c.model.feature_mismatches(self.feature_settings)
        if mismatches:
            raise TrainingError(self.store.root, "the stage-1 model does not fit the store's features ("
                                + "; ".join(mismatches) + "): train with the settings the store was extracted with")
        kw = dict(stats=stats, window=c.window, context=c.model.context, characteristic=c.characteristic,
                  difficulties=c.difficulties, seed=seed, feature_settings=self.feature_settings,
                  exclude_flagged=c.exclude_flagged, realign=c.realign, beat_periods=c.model.beat_periods)
        kw["frame_events"] = self.events
        self.train_dataset = PlacementDataset(self.store, train_songs, jitter=True, **kw)
        self.val_dataset = PlacementDataset(self.store, val_songs, jitter=False, **kw) if val_songs else None
        if not self.train_dataset.levels:
            raise TrainingError(self.store.root, f"no {c.characteristic} level in the training songs")
        if self.pos_weight is None:
            p = self.train_dataset.positive_fraction()
            self.pos_weight = (1.0 - p) / p if p > 0 else 1.0
        if self.events and self.event_pos_weight is None:
            from mapkit.train.events import event_pos_weights

            self.event_pos_weight = event_pos_weights(self.train_dataset.event_fractions()).tolist()
        self.train_dataset.close()  # no h5py handle open in the parent when the DataLoader workers start

    def model_config(self):
        if self.events:
            import dataclasses

            from mapkit.preprocess.frame_events import N_FRAME_EVENT_CHANNELS

            return dataclasses.replace(self.config.model, n_classes=N_FRAME_EVENT_CHANNELS)
        return self.config.model

    def loss(self, model, batch, device):
        c, mask = self.config, batch["mask"]
        features = self.augment(batch)
        widen = dict(widen=c.widen_frames, widen_value=c.widen_value)
        if self.events:
            from mapkit.train.events import event_loss

            logits, event_logits = model(features, batch["difficulty"], return_classes=True, beat=batch.get("beat"))
            onset = onset_loss(logits.float(), batch["frame_class"], self.pos_weight, mask, **widen)
            return onset + event_loss(event_logits, batch["frame_events"], mask, self.event_pos_weight)
        logits = model(features, batch["difficulty"], beat=batch.get("beat"))
        # Padded frames of songs shorter than a window carry no target (the mask).
        return onset_loss(logits.float(), batch["frame_class"], self.pos_weight, mask, **widen)

    def augment(self, batch) -> torch.Tensor:
        """The batch's features with this config's random gain and mel shift (mapkit.train.augment)."""
        c, features = self.config, batch["features"]
        if c.gain_db <= 0 and c.mel_shift_bins <= 0:
            return features
        from mapkit.train.augment import batch_generator, gain_shift, mel_shift

        generator = batch_generator(c.seed, batch["level"], batch["start"])
        features = gain_shift(features, self.train_dataset.std, c.gain_db, generator)
        return mel_shift(features, c.mel_shift_bins, generator)

    def evaluate(self, model, device, autocast) -> dict:
        from mapkit.preprocess.peaks import (best_threshold, best_thresholds_by_group, f1_from_counts, onset_counts,
                                        pick_peaks)

        c, ds = self.config, self.val_dataset
        probs, truths, losses = [], [], []
        for li, level in enumerate(ds.levels):
            raw = ds._handles.get(level.feature_shard, features=True)[level.feature_group]["placement"][:]
            p = predict_probabilities(model, raw, level.difficulty_index, ds.mean, ds.std, float(ds.silence),
                                      c.window, c.eval_batch_size, device, autocast, beat=self._beat(li))
            classes = ds.level_classes(li)
            probs.append(p)
            truths.append(np.flatnonzero(classes > 0))
            logits = torch.logit(torch.from_numpy(p).clamp(1e-7, 1 - 1e-7))
            losses.append((float(onset_loss(logits, torch.from_numpy(classes.astype(np.int64)),
                                            self.pos_weight)), len(p)))
        peaks = dict(min_gap_frames=c.min_gap_frames, smoothing=c.smoothing, tolerance_frames=c.tolerance_frames)
        th, _ = best_threshold(probs, truths, **peaks)
        names = [DIFFICULTIES[level.difficulty_index] for level in ds.levels]
        self.thresholds = {d: t for d, (t, _) in best_thresholds_by_group(probs, truths, names, **peaks).items()}
        self.threshold = th
        totals, by_difficulty = np.zeros(3, dtype=np.int64), {}
        for p, t, name in zip(probs, truths, names):
            counts = onset_counts(pick_peaks(p, self.thresholds[name], c.min_gap_frames, c.smoothing), t,
                                  c.tolerance_frames)
            totals += counts
            by_difficulty[name] = by_difficulty.get(name, 0) + np.asarray(counts)
        precision, recall, f1 = f1_from_counts(*totals)
        single = np.zeros(3, dtype=np.int64)  # the one best threshold for every difficulty, for comparison
        for p, t in zip(probs, truths):
            single += onset_counts(pick_peaks(p, th, c.min_gap_frames, c.smoothing), t, c.tolerance_frames)
        metrics = {"loss": sum(l * n for l, n in losses) / sum(n for _, n in losses), "precision": float(precision),
                   "recall": float(recall), "f1": float(f1), "threshold": float(th),
                   "f1_single_threshold": float(f1_from_counts(*single)[2])}
        for name in DIFFICULTIES:  # the table's order
            if name in by_difficulty:
                metrics[f"f1_{name}"] = float(f1_from_counts(*by_difficulty[name])[2])
                metrics[f"threshold_{name}"] = float(self.thresholds[name])
        if self.events:
            metrics.update(self._event_metrics(model, device, autocast))
        return metrics

    def _beat(self, li: int):
        """Validation level ``li``'s beat-phase inputs, or None for a model without them."""
        return self.val_dataset.level_beat(li) if self.val_dataset.beat_periods else None

    def _event_metrics(self, model, device, autocast) -> dict:
        """Per-channel frame F1 of the class head over the validation levels (mapkit.train.events)."""
        from mapkit.train.events import channel_counts, channel_metrics

        c, ds = self.config, self.val_dataset
        counts, probs, events = 0, [], []
        for li, level in enumerate(ds.levels):
            raw = ds._handles.get(level.feature_shard, features=True)[level.feature_group]["placement"][:]
            p = predict_probabilities(model, raw, level.difficulty_index, ds.mean, ds.std, float(ds.silence),
                                      c.window, c.eval_batch_size, device, autocast, classes=True,
                                      beat=self._beat(li))
            truth = ds.level_frame_events(li)
            counts = counts + channel_counts(p, truth)
            probs.append(p)
            events.append(truth)
        self._validate_event_thresholds(probs, events)
        return channel_metrics(counts)

    def _validate_event_thresholds(self, probs, events):
        """The object onset channels' thresholds for ``mapkit generate`` (mapkit.train.objects.event_thresholds)."""
        from mapkit.preprocess.frame_events import FRAME_EVENT_CHANNELS
        from mapkit.train.objects import event_thresholds

        c = self.config
        self.event_thresholds = event_thresholds(probs, events, FRAME_EVENT_CHANNELS, c.min_gap_frames, c.smoothing,
                                                 c.tolerance_frames)

    def checkpoint_extras(self) -> dict:
        c = self.config
        return {"pos_weight": self.pos_weight, "window": c.window, "targets": c.targets,
                "event_pos_weight": self.event_pos_weight,
                "event_peak_picking": {"thresholds": dict(getattr(self, "event_thresholds", {}))},
                "peak_picking": {"threshold": self.threshold, "thresholds": dict(self.thresholds),
                                 "smoothing": c.smoothing,
                                 "min_gap_frames": c.min_gap_frames, "tolerance_frames": c.tolerance_frames}}

    def restore(self, checkpoint):
        self.pos_weight = checkpoint["pos_weight"]
        self.event_pos_weight = checkpoint.get("event_pos_weight")
        self.event_thresholds = dict((checkpoint.get("event_peak_picking") or {}).get("thresholds") or {})
        self.threshold = checkpoint["peak_picking"]["threshold"]
        self.thresholds = dict(checkpoint["peak_picking"].get("thresholds") or {})


def train_ddc(store, out_dir="mapkit-runs/ddc", config: DDCConfig | None = None,
              options: RunOptions = RunOptions()) -> TrainResult:
    """Train the stage-1 model on ``store``; checkpoints, logs and plot go to ``out_dir``.

    Parameters
    ----------
    store : Store or path
        A store with features, targets and stats.json.
    out_dir : path
        ``last.pt``, ``best.pt`` (highest validation F1), ``metrics.jsonl``, ``curves.png``.
    config : DDCConfig
        Default ``ddc_config("default")``.
    options : RunOptions
        Device, mixed precision, workers, ``resume``.

    Returns
    -------
    TrainResult
        ``metrics`` holds the last validation ``loss, precision, recall, f1, threshold``.
    """
    store = store if isinstance(store, Store) else Store(store)
    config = config or ddc_config()
    return fit(DDCStage(store, config), store, out_dir, config, options)


__all__ = ["DDCConfig", "DDCStage", "ddc_config", "predict_probabilities", "song_beat", "train_ddc", "window_starts"]
