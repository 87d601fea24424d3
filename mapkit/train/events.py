"""Stage 1 on the whole level, ``mapkit train ddc --targets events``: the multi-label frame target.

The C-LSTM's class head gets one output per ``frame_events`` channel
(:data:`~mapkit.preprocess.frame_events.FRAME_EVENT_CHANNELS`) and learns
them with a per-channel positively weighted binary cross-entropy, beside its
"any note" onset head (so the checkpoint still places notes for ``mapkit
generate``). Validation reports, per channel, the frame-level F1 at
probability >= 0.5 (``f1_event_<channel>``; a channel with neither a true nor
a predicted frame has F1 1) and their mean over the channels present in the
validation levels (``f1_events``).
"""

from __future__ import annotations

import numpy as np
import torch

from mapkit.preprocess.frame_events import FRAME_EVENT_CHANNELS, N_FRAME_EVENT_CHANNELS

#: Targets ``mapkit train ddc`` can learn: "notes" (frame_class onsets) or "events" (frame_events too).
TARGETS = ("notes", "events")
#: Largest per-channel positive weight (a channel seen on a handful of frames would otherwise dominate).
MAX_POS_WEIGHT = 1000.0
#: Probability at or above which a frame counts as predicted for the validation F1.
EVENT_THRESHOLD = 0.5


def event_pos_weights(fractions) -> np.ndarray:
    """Per channel ``(1 - p) / p`` of its positive fraction ``p``, clipped to [1, MAX_POS_WEIGHT] (1 when p = 0)."""
    p = np.asarray(fractions, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(p > 0, (1.0 - p) / p, 1.0)
    return np.clip(w, 1.0, MAX_POS_WEIGHT)


def event_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, pos_weight) -> torch.Tensor:
    """Mean binary cross-entropy over the unmasked frames and all channels.

    Parameters
    ----------
    logits, targets : torch.Tensor [B, L, K]
    mask : torch.Tensor [B, L] bool
        False on padding frames (no target).
    pos_weight : array-like [K]
    """
    w = torch.as_tensor(np.asarray(pos_weight, dtype=np.float32), device=logits.device)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=w,
                                                                reduction="none")
    m = mask[..., None].to(loss.dtype)
    return (loss * m).sum() / (m.sum() * loss.shape[-1]).clamp_min(1.0)


def channel_counts(probs: np.ndarray, truth: np.ndarray, threshold: float = EVENT_THRESHOLD) -> np.ndarray:
    """``[K, 3]`` true positives, false positives, false negatives of one level's ``[T, K]`` frames."""
    pred = np.asarray(probs) >= threshold
    true = np.asarray(truth) > 0
    return np.stack([(pred & true).sum(0), (pred & ~true).sum(0), (~pred & true).sum(0)], axis=1).astype(np.int64)


def channel_metrics(counts: np.ndarray) -> dict:
    """``f1_event_<channel>`` of summed ``[K, 3]`` counts, and ``f1_events``: their mean over channels with truth."""
    out, present = {}, []
    for k, name in enumerate(FRAME_EVENT_CHANNELS[:N_FRAME_EVENT_CHANNELS]):
        tp, fp, fn = (int(x) for x in counts[k])
        f1 = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
        out[f"f1_event_{name}"] = float(f1)
        if tp + fn:
            present.append(f1)
    out["f1_events"] = float(np.mean(present)) if present else 0.0
    return out
