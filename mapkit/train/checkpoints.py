"""Checkpoint contents: what generation needs besides the model (normalisation, settings, vocabulary).

Both ``mapkit generate`` and the stage-1 reference report read stage 1 the way
it was validated (:class:`PlacementSetup`) and stage 2 with its vocabulary
(:class:`SelectionSetup`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mapkit.errors import MapkitError
from mapkit.settings import FeatureSettings


@dataclass(frozen=True)
class PlacementSetup:
    """What stage 1 needs besides its model, from a ``mapkit train ddc`` checkpoint.

    ``mean``/``std`` [3, 80] normalise the placement features as in training;
    ``window`` is the training window (output frames) that
    :func:`~mapkit.train.ddc.predict_probabilities` predicts with; the peak
    picking settings are those the threshold was validated with.
    """

    feature_settings: FeatureSettings
    mean: np.ndarray
    std: np.ndarray
    window: int
    threshold: float | None
    smoothing: int
    min_gap_frames: int
    #: difficulty name -> its own validated threshold (checkpoints since issue 15; else empty)
    thresholds: dict = field(default_factory=dict)

    def threshold_for(self, difficulty: str) -> float | None:
        """The validated threshold of ``difficulty``, else the single best one (None: none validated)."""
        return self.thresholds.get(difficulty, self.threshold)

    @classmethod
    def from_checkpoint(cls, ckpt: dict, path="placement checkpoint") -> "PlacementSetup":
        """Read the setup; ``threshold`` is None when training validated none (no validation split)."""
        from mapkit.datasets.torch_datasets import stage_stats

        try:
            mean, std = stage_stats(ckpt["stats"], "placement")
            peaks = ckpt["peak_picking"]
            threshold = None if peaks["threshold"] is None else float(peaks["threshold"])
            thresholds = {str(d): float(t) for d, t in (peaks.get("thresholds") or {}).items()}
            return cls(_feature_settings(ckpt, path), mean, std, int(ckpt["window"]), threshold,
                       int(peaks["smoothing"]), int(peaks["min_gap_frames"]), thresholds)
        except KeyError as e:
            raise MapkitError(path, f"not a stage-1 (ddc) checkpoint: no {e.args[0]!r}") from None


@dataclass(frozen=True)
class SelectionSetup:
    """What stage 2 needs besides its model, from a ``mapkit train transformer`` checkpoint."""

    feature_settings: FeatureSettings
    mean: np.ndarray
    std: np.ndarray
    vocab: object  # mapkit.preprocess.targets.Vocabulary
    #: the training crop (``max_tokens``): longer levels are decoded in windows of it (None: whole)
    window: int | None = None

    @classmethod
    def from_checkpoint(cls, ckpt: dict, path="selection checkpoint") -> "SelectionSetup":
        from mapkit.datasets.torch_datasets import stage_stats
        from mapkit.preprocess.targets import Vocabulary

        try:
            mean, std = stage_stats(ckpt["stats"], "selection")
            vocab = Vocabulary.from_json(ckpt["vocab"])
        except KeyError as e:
            raise MapkitError(path, f"not a stage-2 (transformer) checkpoint: no {e.args[0]!r}") from None
        window = ckpt.get("max_tokens")
        return cls(_feature_settings(ckpt, path), mean, std, vocab, None if window is None else int(window))


def _feature_settings(ckpt: dict, path) -> FeatureSettings:
    text = ckpt.get("feature_settings_json")
    if not text:
        return FeatureSettings()
    try:
        return FeatureSettings.from_json(text)
    except (ValueError, TypeError) as e:
        raise MapkitError(path, f"unreadable feature settings in the checkpoint: {e}") from None
