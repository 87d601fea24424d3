"""Stage-1 training augmentation and target widening, on batches of normalised placement features.

Everything here acts on a training batch of :class:`~mapkit.datasets.torch_datasets.PlacementDataset`
(features ``[B, L + 2*context, 3, 80]``, already normalised per band) inside
:meth:`mapkit.train.ddc.DDCStage.loss`, so the stored data and validation never change:

- :func:`gain_shift`: a random gain per item. The features are ``log(mel power + floor)``
  (natural log), so ``g`` dB of gain adds ``g * ln(10) / 10`` to every raw value,
  i.e. that divided by the band's ``std`` once normalised (the floor is ignored:
  quiet bins move as much as loud ones).
- :func:`mel_shift`: a random shift of whole mel bins per item, a crude pitch/timbre
  change (edge bins repeated).
- :func:`widen_targets`: frames next to a note get a soft target, so a prediction one
  frame off is not punished as hard as one far off (onsets are only defined to
  +-10 ms by the level's beat grid).

The random draws come from :func:`batch_generator`, a pure function of the
run's seed and the batch's ``(level, start)`` pairs, so a resumed run augments
exactly as an uninterrupted one.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

#: natural-log units per dB of power gain
LOG_PER_DB = math.log(10.0) / 10.0


def batch_generator(seed: int, levels: torch.Tensor, starts: torch.Tensor) -> torch.Generator:
    """A CPU generator seeded by ``seed`` and the batch's (level, start) pairs (deterministic)."""
    key = np.array([seed] + levels.cpu().tolist() + starts.cpu().tolist(), dtype=np.int64)
    return torch.Generator().manual_seed(int(np.random.SeedSequence(key.tolist()).generate_state(1)[0]))


def gain_shift(features: torch.Tensor, std, max_db: float, generator: torch.Generator) -> torch.Tensor:
    """Add a gain drawn uniformly from ``[-max_db, max_db]`` dB per item.

    Parameters
    ----------
    features : torch.Tensor [B, T, C, M]
        Normalised log-mel features ``(x - mean) / std``.
    std : array-like [C, M]
        The per-band standard deviation they were normalised with.
    max_db : float
        0 returns ``features`` unchanged.
    generator : torch.Generator

    Returns
    -------
    torch.Tensor [B, T, C, M]
        ``features + g_b * LOG_PER_DB / std`` with ``g_b`` the item's gain in dB.
    """
    if max_db <= 0:
        return features
    gains = (torch.rand(features.shape[0], generator=generator) * 2 - 1) * max_db * LOG_PER_DB
    inv_std = 1.0 / torch.as_tensor(np.asarray(std, dtype=np.float32))
    return features + gains.to(features)[:, None, None, None] * inv_std.to(features)[None, None]


def mel_shift(features: torch.Tensor, max_bins: int, generator: torch.Generator) -> torch.Tensor:
    """Shift every item along the mel axis by a whole number of bins drawn from ``[-max_bins, max_bins]``.

    A shift of ``+k`` moves content ``k`` bins up (bin ``m`` takes bin ``m - k``);
    the bins uncovered at the edge repeat the edge bin. 0 returns ``features``.

    Parameters
    ----------
    features : torch.Tensor [B, T, C, M]
    max_bins : int
    generator : torch.Generator
    """
    if max_bins <= 0:
        return features
    n_mels = features.shape[-1]
    shifts = torch.randint(-max_bins, max_bins + 1, (features.shape[0],), generator=generator)
    source = (torch.arange(n_mels)[None, :] - shifts[:, None]).clamp(0, n_mels - 1)  # [B, M]
    index = source.to(features.device)[:, None, None, :].expand_as(features)
    return torch.gather(features, 3, index)


def widen_targets(target: torch.Tensor, width: int, value: float) -> torch.Tensor:
    """Soft targets around each note: frames within ``width`` of a 1 get at least ``value``.

    Parameters
    ----------
    target : torch.Tensor [B, L] float
        1 on note frames, 0 elsewhere.
    width : int
        Frames each side; 0 returns ``target``.
    value : float
        The neighbours' target, in ``(0, 1]``; a note frame stays 1.

    Returns
    -------
    torch.Tensor [B, L]
        ``max(target, value * [a note within width frames])``.
    """
    if width <= 0:
        return target
    if not 0.0 < value <= 1.0:
        raise ValueError(f"the widened target must be in (0, 1], got {value}")
    near = F.max_pool1d(target[:, None, :], 2 * width + 1, stride=1, padding=width)[:, 0]
    return torch.maximum(target, near * value)


__all__ = ["LOG_PER_DB", "batch_generator", "gain_shift", "mel_shift", "widen_targets"]
