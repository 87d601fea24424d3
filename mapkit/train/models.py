"""The two models of the generator (docs/design.md §6).

Stage 1, :class:`PlacementModel`: a C-LSTM in the shape of Dance Dance
Convolution (Donahue et al. 2017). It reads a window of ``L`` output frames with
their +-``context`` frames of placement features, ``[B, L + 2*context, 3, 80]``
(the padded rows ``[s, s + L + 14)`` of the store), and returns one "any note"
logit per output frame, ``[B, L]``. Output ``k`` sees padded rows
``s+k .. s+k+14``, i.e. frames ``f-7 .. f+7`` of frame ``f = s+k`` (centred).

Stage 2, :class:`SelectionModel`: a pre-LN encoder-decoder transformer over the
notes of a level. Source position ``i`` holds the stage-2 feature rows around
token ``i``'s frame (100 normalised mel bands per row, rows at
``audio_offsets``), its 4 raw gaps (``gap_prev_s, gap_next_s,
gap_prev_beats, gap_next_beats``, all >= 0), its beat phases and the level's
one-hot difficulty (:class:`~mapkit.datasets.torch_datasets.SourceLayout`);
the model itself takes ``log1p`` of the gaps, so the dataset and generation
feed the stored values unchanged. The decoder predicts token ``i`` from
tokens ``< i`` and the whole source; the encoder outputs of token ``i``'s
own source position and of the one before are added to the decoder input
that predicts it (designs 2 and 3: without them the model learned to ignore
the audio, issue 15). With ``copy_head`` its output mixes in a copy of the
state of an earlier note whose encoder output matches the note being chosen
(:meth:`SelectionModel.copy_mix`: repeated music gets the same states). It
supports incremental decoding with cached
keys and values (:meth:`SelectionModel.start_cache`,
:meth:`SelectionModel.decode_step`).

Configs are frozen dataclasses with a stable hash (see :mod:`mapkit.settings`),
so a checkpoint records exactly which architecture it holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mapkit.datasets.torch_datasets import SourceLayout
from mapkit.preprocess.beats import BEAT_INPUT_PERIODS
from mapkit.preprocess.difficulties import DIFFICULTIES
from mapkit.preprocess.targets import N_SPECIAL, PAD
from mapkit.settings import Settings



# --------------------------------------------------------------------------- stage 1


@dataclass(frozen=True)
class PlacementConfig(Settings):
    """Architecture of the stage-1 C-LSTM.

    ``conv_filters``, ``conv_time_kernels`` and ``conv_mel_kernels`` describe
    the conv blocks (conv, ReLU, max-pool over mel by ``pool_mel``), valid in
    both axes. DDC: 10 filters of 7x3, then 20 of 3x3.
    """

    KIND = "placement_model"

    n_channels: int = 3  # one per FFT size
    n_mels: int = 80
    context: int = 7
    conv_filters: tuple = (10, 20)
    conv_time_kernels: tuple = (7, 3)
    conv_mel_kernels: tuple = (3, 3)
    pool_mel: int = 3
    #: units of the dense layer between the conv features and the LSTM (0: none)
    dense_units: int = 256
    n_difficulties: int = len(DIFFICULTIES)
    #: size of the learned difficulty embedding concatenated to every frame
    difficulty_dim: int = 8
    lstm_units: int = 200
    lstm_layers: int = 2
    bidirectional: bool = False
    dropout: float = 0.5
    #: size of an optional multi-class head (5: empty, red, blue, both, bombs); 0 = none
    n_classes: int = 0
    #: beat periods (beats) whose phase (sin, cos) every frame also reads, from the song's estimated tempo and
    #: first beat (mapkit.preprocess.beats.song_beat_inputs); () = none
    beat_periods: tuple = ()

    def __post_init__(self):
        if not (len(self.conv_filters) == len(self.conv_time_kernels) == len(self.conv_mel_kernels)):
            raise ValueError("conv_filters, conv_time_kernels and conv_mel_kernels differ in length")
        if self.context_rows < 1:
            raise ValueError(f"the conv kernels need more than {2 * self.context + 1} context frames")
        if self.conv_mel_bins < 1:
            raise ValueError(f"the conv blocks leave no mel bins of {self.n_mels}")

    @property
    def window(self) -> int:
        """Input frames per output frame: ``2 * context + 1``."""
        return 2 * self.context + 1

    @property
    def context_rows(self) -> int:
        """Rows of the conv output (valid in time) that one output frame's context spans."""
        return self.window - sum(k - 1 for k in self.conv_time_kernels)

    @property
    def conv_mel_bins(self) -> int:
        """Mel bins left after the conv blocks."""
        m = self.n_mels
        for k in self.conv_mel_kernels:
            m = (m - k + 1) // self.pool_mel
        return m

    @property
    def beat_inputs(self) -> int:
        """Beat-phase inputs per frame: ``sin`` and ``cos`` per beat period."""
        return 2 * len(self.beat_periods)

    @property
    def frame_features(self) -> int:
        """Length of one output frame's flattened conv features."""
        return self.conv_filters[-1] * self.context_rows * self.conv_mel_bins

    def feature_mismatches(self, features) -> list[str]:
        """How the store's :class:`~mapkit.settings.FeatureSettings` ``features`` differ from what the model reads.

        The context must be the stored placement pad (windows read ``L + 2 * pad``
        rows: another context would shift every window), and the channels and
        bands those of the placement features. Empty when the model fits.
        """
        wanted = (("context", self.context, "placement_pad", features.placement_pad),
                  ("n_channels", self.n_channels, "FFT sizes", len(features.placement_n_ffts)),
                  ("n_mels", self.n_mels, "placement_n_mels", features.placement_n_mels))
        return [f"model {name} {mine}, store {what} {theirs}" for name, mine, what, theirs in wanted if mine != theirs]


PLACEMENT_PRESETS = {
    "tiny": PlacementConfig(conv_filters=(4, 4), dense_units=16, difficulty_dim=4, lstm_units=16, lstm_layers=1,
                            dropout=0.0),
    # Bidirectional since issue 15: on 58 real songs it reached onset F1 0.681 in 300 steps where the
    # unidirectional DDC LSTM reached 0.666 in 400 and 0.672 at its best (1 000); README "Reference run — stage 1".
    # The beat phase since: on 216 songs, held-out F1 0.718 against 0.678 without it at step 400 (same run otherwise).
    "default": PlacementConfig(bidirectional=True, beat_periods=BEAT_INPUT_PERIODS),
}


class PlacementModel(nn.Module):
    """Stage-1 C-LSTM: placement features -> one "any note" logit per frame.

    The conv blocks run once over the whole window ``[B, 3, L+14, 80]`` (valid in
    time) and each output frame then gathers its ``context_rows`` rows of the
    conv output. This equals running the convs on every frame's own 15-frame
    patch (convs and mel pooling never mix time rows outside a kernel), at
    about ``1/7`` of the cost.

    Parameters
    ----------
    config : PlacementConfig
    """

    def __init__(self, config: PlacementConfig = PLACEMENT_PRESETS["default"]):
        super().__init__()
        self.config = config
        c = config
        convs = []
        in_ch = c.n_channels
        for filters, kt, km in zip(c.conv_filters, c.conv_time_kernels, c.conv_mel_kernels):
            convs += [nn.Conv2d(in_ch, filters, (kt, km)), nn.ReLU(), nn.MaxPool2d((1, c.pool_mel))]
            in_ch = filters
        self.convs = nn.Sequential(*convs)
        if c.dense_units:
            self.dense = nn.Sequential(nn.Linear(c.frame_features, c.dense_units), nn.ReLU(), nn.Dropout(c.dropout))
            lstm_in = c.dense_units
        else:
            self.dense = nn.Dropout(c.dropout)
            lstm_in = c.frame_features
        self.difficulty = nn.Embedding(c.n_difficulties, c.difficulty_dim)
        self.lstm = nn.LSTM(lstm_in + c.difficulty_dim + c.beat_inputs, c.lstm_units, num_layers=c.lstm_layers,
                            batch_first=True, bidirectional=c.bidirectional,
                            dropout=c.dropout if c.lstm_layers > 1 else 0.0)
        lstm_out = c.lstm_units * (2 if c.bidirectional else 1)
        self.head_dropout = nn.Dropout(c.dropout)
        self.onset_head = nn.Linear(lstm_out, 1)
        self.class_head = nn.Linear(lstm_out, c.n_classes) if c.n_classes else None

    def frame_features(self, features: torch.Tensor) -> torch.Tensor:
        """Flattened conv features of every output frame's context.

        Parameters
        ----------
        features : torch.Tensor [B, L + 2*context, n_channels, n_mels]

        Returns
        -------
        torch.Tensor [B, L, config.frame_features]
            Per frame: channel-major, then context row, then mel bin.
        """
        c = self.config
        if features.ndim != 4 or features.shape[2:] != (c.n_channels, c.n_mels):
            raise ValueError(f"expected features [B, L+{2 * c.context}, {c.n_channels}, {c.n_mels}], "
                             f"got {list(features.shape)}")
        n_out = features.shape[1] - 2 * c.context
        if n_out < 1:
            raise ValueError(f"a window of {features.shape[1]} rows has no output frame (context {c.context})")
        y = self.convs(features.permute(0, 2, 1, 3))  # [B, C, L + context_rows - 1, M]
        y = y.unfold(2, c.context_rows, 1)  # [B, C, L, M, rows]
        return y.permute(0, 2, 1, 4, 3).reshape(features.shape[0], n_out, c.frame_features)

    def forward(self, features: torch.Tensor, difficulty: torch.Tensor, return_classes: bool = False,
                beat: torch.Tensor | None = None):
        """Onset logits of every output frame.

        Parameters
        ----------
        features : torch.Tensor [B, L + 2*context, n_channels, n_mels] float32
            Per-band normalised placement features (padded rows ``[s, s+L+14)``).
        difficulty : torch.Tensor [B] int64
            Difficulty index, 0..4 = Easy..ExpertPlus.
        return_classes : bool
            Also return the multi-class logits (needs ``config.n_classes > 0``).
        beat : torch.Tensor [B, L, config.beat_inputs] float32, optional
            The beat phase of every output frame (needed when ``config.beat_periods``).

        Returns
        -------
        onset : torch.Tensor [B, L]
            Logit of "any note" on each frame (``sigmoid`` gives the probability).
        classes : torch.Tensor [B, L, n_classes]
            Only with ``return_classes``.
        """
        x = self.dense(self.frame_features(features))
        d = self.difficulty(difficulty)[:, None, :].expand(-1, x.shape[1], -1)
        inputs = [x, d]
        if self.config.beat_inputs:
            if beat is None or beat.shape != (*x.shape[:2], self.config.beat_inputs):
                raise ValueError(f"this model reads the beat phase: expected beat [B, {x.shape[1]}, "
                                 f"{self.config.beat_inputs}], got {None if beat is None else list(beat.shape)}")
            inputs.append(beat)
        h, _ = self.lstm(torch.cat(inputs, dim=-1))
        h = self.head_dropout(h)
        onset = self.onset_head(h).squeeze(-1)
        if not return_classes:
            return onset
        if self.class_head is None:
            raise ValueError("this PlacementModel has no class head (config.n_classes == 0)")
        return onset, self.class_head(h)


def onset_loss(logits: torch.Tensor, frame_class: torch.Tensor, pos_weight: float | None = None,
               mask: torch.Tensor | None = None, widen: int = 0, widen_value: float = 0.5) -> torch.Tensor:
    """Binary cross-entropy of "any note" (``frame_class > 0``), mean over frames.

    Parameters
    ----------
    logits : torch.Tensor [B, L]
    frame_class : torch.Tensor [B, L] integer
        The stored stage-1 classes (0 empty, 1..4 a note of some kind).
    pos_weight : float, optional
        Weight of the positive frames, against the class imbalance.
    mask : torch.Tensor [B, L] bool, optional
        Only these frames count (padding past a short song's end carries no target).
    widen, widen_value : int, float
        Frames within ``widen`` of a note get the soft target ``widen_value``
        (:func:`mapkit.train.augment.widen_targets`; 0 = the plain 0/1 target).
    """
    from mapkit.train.augment import widen_targets

    target = (frame_class > 0).to(logits.dtype)
    if widen and target.ndim == 2:
        target = widen_targets(target, widen, widen_value)
    if mask is not None and not bool(mask.all()):
        logits, target = logits[mask], target[mask]
    pw = None if pos_weight is None else torch.tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    return F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw)


# --------------------------------------------------------------------------- stage 2


#: The stage-2 design this mapkit builds and reads (:attr:`SelectionConfig.design`).
SELECTION_DESIGN = 3


@dataclass(frozen=True)
class SelectionConfig(Settings):
    """Architecture of the stage-2 encoder-decoder transformer (pre-LN)."""

    KIND = "selection_model"

    #: 4 special tokens (PAD, BOS, EOS, UNK) + the vocabulary's states
    vocab_size: int = N_SPECIAL + 2000
    n_mels: int = 100
    #: gap_prev_s, gap_next_s, gap_prev_beats, gap_next_beats (log1p inside the model)
    n_gaps: int = 4
    #: frames (10 ms) around each note whose stage-2 rows the source holds (the presets: the sound
    #: before, at and after the note, :data:`LISTENING_INPUTS`)
    audio_offsets: tuple = (0,)
    #: periods in beats of the sin/cos beat-phase inputs (the presets: beat, half bar, bar)
    beat_periods: tuple = ()
    #: one-hot difficulty inputs (0: the model is not told the difficulty; the presets: 5)
    n_difficulties: int = 0
    #: normalise the mel rows by each song's own statistics, not the store's (SourceLayout.song_norm)
    song_norm: bool = False
    d_model: int = 512
    n_encoder_layers: int = 6
    n_decoder_layers: int = 6
    n_heads: int = 8
    d_ff: int = 2048
    #: dropout of the residual branches, the feed-forward layers and the inputs
    dropout: float = 0.1
    #: dropout of the attention weights: 0 by default, since any other value makes PyTorch's CPU
    #: attention take its slow, memory-hungry path (bench/selection_step.py)
    attention_dropout: float = 0.0
    label_smoothing: float = 0.1
    #: How the model reads the audio. 1 (refused): one mel row per note, through cross-attention
    #: only, so the decoder had to find its note's source row by position and learned to ignore
    #: the audio (issue 15); 2 (refused): also the encoder output of the note being predicted,
    #: added to the decoder input; 3: rows around each note, the beat phase and the difficulty in
    #: the source, and the decoder input also gets the encoder output of its own token's note.
    design: int = SELECTION_DESIGN
    #: a pointer (copy) path next to the output layer: the state of an earlier note of the level
    #: whose encoder output matches the note being chosen can be copied (mappers map repeated
    #: music alike; :meth:`SelectionModel.copy_mix`). Off in checkpoints saved before it existed
    #: and in a bare config; on in the presets.
    copy_head: bool = False
    #: starting weight of the cosine of two notes' mel rows in the copy score (learned, as its log)
    copy_audio_scale: float = 12.0

    def __post_init__(self):
        if self.design != SELECTION_DESIGN:
            raise ValueError(f"a stage-2 model of design {self.design}; this mapkit builds design "
                             f"{SELECTION_DESIGN} (audio around each note, beat phase and difficulty as inputs): "
                             f"train it again with this mapkit")
        if not self.audio_offsets or any(p <= 0 for p in self.beat_periods):
            raise ValueError(f"audio_offsets {self.audio_offsets} must not be empty and beat_periods "
                             f"{self.beat_periods} must be positive")
        if self.copy_audio_scale <= 0:
            raise ValueError(f"copy_audio_scale must be positive, got {self.copy_audio_scale}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of n_heads {self.n_heads}")
        if self.vocab_size <= N_SPECIAL:
            raise ValueError(f"vocab_size {self.vocab_size} leaves no state tokens")

    @property
    def source_layout(self) -> SourceLayout:
        """What the dataset and generation put into each source vector (``selection_source``)."""
        return SourceLayout(tuple(self.audio_offsets), tuple(self.beat_periods), self.n_difficulties, self.song_norm)

    @property
    def audio_dim(self) -> int:
        """Length of the audio part of a source vector (first in it): ``len(audio_offsets) * n_mels``."""
        return self.source_layout.audio_dim(self.n_mels)

    @property
    def src_dim(self) -> int:
        if self.n_gaps != 4:
            raise ValueError(f"n_gaps must be 4 (the stored gaps), got {self.n_gaps}")
        return self.source_layout.dim(self.n_mels)

    @classmethod
    def from_dict(cls, d: dict):
        """Rebuild a config; one saved before field ``design`` existed is design 1 and refused.

        One saved before ``copy_head`` existed (design 3 without it) gets ``copy_head=False``.
        """
        d = {"design": 1, **d}
        for name in ("audio_offsets", "beat_periods"):  # JSON gives lists; the config hashes tuples
            if name in d:
                d[name] = tuple(d[name])
        return super().from_dict(d)


#: The inputs of the presets: mel rows from 160 ms before to 160 ms after each note (one row alone
#: was not used on real songs, issue 15), the beat phase and the difficulty.
LISTENING_INPUTS = dict(audio_offsets=(-16, -8, -4, -2, 0, 2, 4, 8, 16), beat_periods=(1, 2, 4),
                        n_difficulties=len(DIFFICULTIES))

SELECTION_PRESETS = {
    "tiny": SelectionConfig(d_model=32, n_encoder_layers=1, n_decoder_layers=1, n_heads=2, d_ff=64,
                            copy_head=True, **LISTENING_INPUTS),
    "default": SelectionConfig(copy_head=True, **LISTENING_INPUTS),
}


def sinusoidal_positions(positions: torch.Tensor, d_model: int) -> torch.Tensor:
    """Sinusoidal position encodings (Vaswani et al. 2017) of integer ``positions``.

    Returns ``[len(positions), d_model]``: even columns ``sin(p / 10000^(2i/d))``,
    odd columns the matching ``cos``. Position 0 is the first token (BOS).
    """
    half = torch.arange(0, d_model, 2, device=positions.device, dtype=torch.float32)
    angle = positions.to(torch.float32)[:, None] * torch.exp(half * (-math.log(10000.0) / d_model))[None, :]
    out = torch.zeros(len(positions), d_model, device=positions.device)
    out[:, 0::2] = torch.sin(angle)
    out[:, 1::2] = torch.cos(angle[:, : d_model // 2])
    return out


class MultiHeadAttention(nn.Module):
    """Multi-head attention over ``F.scaled_dot_product_attention``.

    Split in two so keys/values can be cached: :meth:`project_kv` and
    :meth:`attend`. Masks are boolean, ``True`` = may attend, broadcastable to
    ``[B, heads, T_query, T_key]``.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, D] -> [B, H, T, d_head]
        return x.view(x.shape[0], x.shape[1], self.n_heads, self.d_head).transpose(1, 2)

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``x`` [B, T, D], each ``[B, H, T, d_head]``."""
        return self._heads(self.k(x)), self._heads(self.v(x))

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Attention of queries from ``x`` [B, T, D] over keys ``k`` / values ``v``."""
        q = self._heads(self.q(x))
        B, H, T, d = q.shape
        G = k.shape[0]
        if B > G and B % G == 0 and (mask is None or mask.shape[0] == G):
            # each source shared by B/G consecutive rows (the beams of one source): a group's queries
            # attend as one batch row (one kernel call over its keys instead of B/G over expanded
            # copies; ~3x faster when decoding)
            q1 = q.view(G, B // G, H, T, d).transpose(1, 2).reshape(G, H, (B // G) * T, d)
            y = F.scaled_dot_product_attention(q1, k, v, attn_mask=mask,
                                               dropout_p=self.dropout if self.training else 0.0)
            y = y.reshape(G, H, B // G, T, d).transpose(1, 2).reshape(B, H, T, d)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                               dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))

    def attend_with_prefix(self, x: torch.Tensor, prefix_k: torch.Tensor, prefix_v: torch.Tensor,
                           k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention of one query per row over keys shared by a group of rows, then the row's own keys.

        ``x`` [B, 1, D]; ``prefix_k``/``prefix_v`` [G, H, P, d_head], group ``g``'s
        keys shared by rows ``g*B/G .. (g+1)*B/G - 1`` (``G = 1``: by all rows),
        ``k``/``v`` [B, H, M, d_head]. Equals :meth:`attend` over the
        concatenated keys (one softmax over both parts, no mask), but reads the
        shared part once per group (as one batch row of B/G queries).
        """
        q = self._heads(self.q(x))  # [B, H, 1, d]
        B, H, _, d = q.shape
        G, P = prefix_k.shape[0], prefix_k.shape[2]
        scale = 1.0 / math.sqrt(d)
        grouped = q.view(G, B // G, H, d).transpose(1, 2)  # [G, H, B/G, d]
        shared = _per_group(grouped, prefix_k.transpose(-1, -2)).transpose(1, 2).reshape(B, H, 1, P)
        own = q @ k.transpose(-1, -2)  # [B, H, 1, M]
        w = torch.softmax(torch.cat([shared, own], dim=-1) * scale, dim=-1)
        w_shared = w[..., :P].reshape(G, B // G, H, P).transpose(1, 2)  # [G, H, B/G, P]
        y = _per_group(w_shared, prefix_v).transpose(1, 2).reshape(B, H, 1, d) + w[..., P:] @ v  # [B, H, 1, d]
        return self.out(y.transpose(1, 2).reshape(B, 1, -1))

    def forward(self, x: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        k, v = self.project_kv(kv)
        return self.attend(x, k, v, mask)


def _per_group(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for ``[G, H, ...]`` operands, one group at a time (the same numbers, bit for bit).

    ``b`` is a strided slice of the cache's buffers (every ``B/G``-th row): a
    batched matmul cannot merge its two batch dimensions into one and copies
    it first, which cost 3x the product itself with two windows side by side.
    """
    if a.shape[0] == 1:
        return a @ b
    return torch.stack([a[g] @ b[g] for g in range(a.shape[0])])


def _feed_forward(c: SelectionConfig) -> nn.Sequential:
    return nn.Sequential(nn.Linear(c.d_model, c.d_ff), nn.ReLU(), nn.Dropout(c.dropout), nn.Linear(c.d_ff, c.d_model))


class EncoderLayer(nn.Module):
    """Pre-LN encoder layer: ``x + SelfAttn(LN x)``, then ``x + FF(LN x)``."""

    def __init__(self, c: SelectionConfig):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        self.attn = MultiHeadAttention(c.d_model, c.n_heads, c.attention_dropout)
        self.ff = _feed_forward(c)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, h, mask))
        return x + self.drop(self.ff(self.norm2(x)))


class DecoderLayer(nn.Module):
    """Pre-LN decoder layer: causal self-attention, cross-attention, feed-forward."""

    def __init__(self, c: SelectionConfig):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(c.d_model) for _ in range(3))
        self.self_attn = MultiHeadAttention(c.d_model, c.n_heads, c.attention_dropout)
        self.cross_attn = MultiHeadAttention(c.d_model, c.n_heads, c.attention_dropout)
        self.ff = _feed_forward(c)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x, self_k, self_v, self_mask, cross_k, cross_v, cross_mask, self_prefix=None) -> torch.Tensor:
        """One layer given its attention keys/values (full or cached); see :class:`SelectionModel`.

        ``self_prefix`` (cached decoding only): self-attention keys/values
        ``[G, H, P, d_head]`` shared by each group of rows, before ``self_k``/``self_v``.
        """
        if self_prefix is None:
            x = x + self.drop(self.self_attn.attend(self.norm1(x), self_k, self_v, self_mask))
        else:
            x = x + self.drop(self.self_attn.attend_with_prefix(self.norm1(x), *self_prefix, self_k, self_v))
        x = x + self.drop(self.cross_attn.attend(self.norm2(x), cross_k, cross_v, cross_mask))
        return x + self.drop(self.ff(self.norm3(x)))


class DecoderCache:
    """Keys/values of an incremental decode: self-attention grows, cross-attention is fixed.

    Made by :meth:`SelectionModel.start_cache`. ``self_k[i]``/``self_v[i]``
    are buffers ``[B, H, capacity, d_head]`` of which the first ``length``
    positions are filled; ``cross_k[i]``/``cross_v[i]`` hold the memory's
    projections: batch ``G``, one per source; source ``g`` is shared by rows
    ``g*B/G .. (g+1)*B/G - 1`` (``G = 1``: all rows; ``G = B``: one row each).
    Rows never move to another source's group.

    Shared prefix (beam search): the first ``shared`` positions have the same
    history in every row of a group (the beams' common ancestor), so their
    keys/values are equal in those rows. :meth:`reorder` copies only the
    positions after them and :meth:`SelectionModel.decode_step` reads them
    once per group, from its first row.
    Beams of a song share all but their last few tokens (median 8 of 150 for
    random default-size weights), which makes both O(1) instead of O(length).
    """

    def __init__(self, self_k, self_v, cross_k, cross_v, cross_mask):
        self.self_k, self.self_v = self_k, self_v
        self.cross_k, self.cross_v = cross_k, cross_v
        self.cross_mask = cross_mask
        self.notes = None  # [B_m, S - 1, d_model]: decoder input of each step's note (SelectionModel.note_inputs)
        # copy head (SelectionConfig.copy_head): its queries [B_m, S - 1, d] and keys [B_m, S, d] of the
        # memory rows, and each row's decoder inputs so far [B, capacity] (the tokens it may copy)
        self.copy = None
        self.history = None
        self.length = 0
        self.shared = 0
        batch, capacity = self_k[0].shape[0] if self_k else 1, self_k[0].shape[2] if self_k else 0
        self.groups = cross_k[0].shape[0] if cross_k else 1
        # node[b, p]: which written key row b's position p holds (equal ids = equal history)
        self._node = torch.arange(batch * capacity, device=cross_k[0].device if cross_k else None).view(
            capacity, batch).T.contiguous() if self_k else None
        self._spare = None  # second set of self-attention buffers, made on the first reorder
        self._spare_shared = 0  # the spare's first positions that hold the shared prefix

    @property
    def capacity(self) -> int:
        return self.self_k[0].shape[2]

    def reorder(self, index: torch.Tensor) -> None:
        """Make row ``b`` a copy of row ``index[b]`` (beam search back-pointers)."""
        n, lo = self.length, self._spare_shared
        # Gather into a spare buffer and swap: one read and one write of the filled part after the shared
        # prefix (an in-place fancy-index assignment makes a temporary and copies it back: ~3x slower).
        bufs = self.self_k + self.self_v
        if self._spare is None:
            self._spare = [torch.empty_like(b) for b in bufs]
            lo = 0
        for buf, spare in zip(bufs, self._spare):
            torch.index_select(buf[:, :, lo:n], 0, index, out=spare[:, :, lo:n])
        self._spare, swapped = bufs, self._spare
        self._spare_shared = self.shared  # the buffer given back holds the shared prefix up to here
        k = len(self.self_k)
        self.self_k, self.self_v = swapped[:k], swapped[k:]
        self._node[:, :n] = self._node[index, :n]
        node = self._node.view(self.groups, -1, self._node.shape[1])  # [groups, rows per group, capacity]
        while self.shared < n and bool((node[:, :, self.shared] == node[:, :1, self.shared]).all()):
            self.shared += 1
        if self.cross_k[0].shape[0] == len(index) > 1:  # one source per row: the rows' sources move with them
            self.cross_k = [k[index] for k in self.cross_k]
            self.cross_v = [v[index] for v in self.cross_v]
            if self.cross_mask is not None:
                self.cross_mask = self.cross_mask[index]
        if self.notes is not None and self.notes.shape[0] == len(index) > 1:
            self.notes = self.notes[index]
        if self.history is not None:  # B x length integers: cheap next to the keys, so no shared-prefix trick
            self.history[:, :n] = self.history[index, :n]
            if self.copy[0].shape[0] == len(index) > 1:
                self.copy = tuple(t[index] for t in self.copy)


class SelectionModel(nn.Module):
    """Stage-2 encoder-decoder transformer: note sources -> state tokens.

    Masks are boolean ``[B, S]`` / ``[B, T]``, ``True`` on real positions and
    ``False`` on padding (right-padded batches). The decoder is always causal.

    Parameters
    ----------
    config : SelectionConfig
    """

    def __init__(self, config: SelectionConfig = SELECTION_PRESETS["default"]):
        super().__init__()
        c = self.config = config
        # one projection per part of the source, summed: in one layer the 10 timing and 5 difficulty
        # inputs start as small as each of the 900 audio inputs and were learned late or not at all
        layout = c.source_layout
        self.src_proj = nn.Linear(c.audio_dim, c.d_model)
        self.timing_proj = nn.Linear(layout.timing_dim, c.d_model)
        self.difficulty_proj = nn.Linear(c.n_difficulties, c.d_model, bias=False) if c.n_difficulties else None
        # memory row i+1 (the note decoder position i predicts) -> decoder input i
        self.note_proj = nn.Linear(c.d_model, c.d_model)
        # memory row i (the note of token i itself) -> decoder input i: a state and the sound it was
        # chosen for sit at one position, so a later note that sounds alike can find it in one step
        self.own_note_proj = nn.Linear(c.d_model, c.d_model)
        self.tgt_embed = nn.Embedding(c.vocab_size, c.d_model, padding_idx=PAD)
        nn.init.normal_(self.tgt_embed.weight, std=c.d_model ** -0.5)  # scaled by sqrt(d_model) in use
        with torch.no_grad():
            self.tgt_embed.weight[PAD].zero_()
        self.drop = nn.Dropout(c.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(c) for _ in range(c.n_encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(c) for _ in range(c.n_decoder_layers))
        self.enc_norm, self.dec_norm = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        self.out = nn.Linear(c.d_model, c.vocab_size)
        if c.copy_head:
            # the note being chosen (query) against the notes already given a state (keys); the gate also
            # reads the best match's score, so "this sounds like an earlier note" is one weight away
            self.copy_query, self.copy_key = nn.Linear(c.d_model, c.d_model), nn.Linear(c.d_model, c.d_model)
            self.copy_gate = nn.Linear(c.d_model + 1, 1)
            # weight of the cosine of two notes' own mel rows in the copy score: the sound alone, which the
            # learned query and key (of the encoder output, timing and position mixed in) did not isolate
            self.copy_audio_log_scale = nn.Parameter(torch.tensor(math.log(c.copy_audio_scale)))
            with torch.no_grad():  # query = key at the start: alike memory rows score high before any training
                self.copy_key.weight.copy_(self.copy_query.weight)
                self.copy_key.bias.copy_(self.copy_query.bias)

    # -- pieces
    def source_vectors(self, src: torch.Tensor) -> torch.Tensor:
        """Model input of the raw source ``[..., src_dim]``: ``log1p`` of the gaps, the rest as is."""
        c = self.config
        if src.shape[-1] != c.src_dim:
            raise ValueError(f"expected source vectors of {c.src_dim} values "
                             f"({c.source_layout}), got {src.shape[-1]}")
        a = c.audio_dim
        return torch.cat([src[..., :a], torch.log1p(src[..., a: a + c.n_gaps]), src[..., a + c.n_gaps:]], dim=-1)

    def embed_source(self, src: torch.Tensor) -> torch.Tensor:
        """``[..., d_model]``: the audio, timing and difficulty parts of the source, each projected, summed."""
        v = self.source_vectors(src)
        a, t = self.config.audio_dim, self.config.source_layout.timing_dim
        x = self.src_proj(v[..., :a]) + self.timing_proj(v[..., a: a + t])
        return x if self.difficulty_proj is None else x + self.difficulty_proj(v[..., a + t:])

    def _embed_tokens(self, tokens: torch.Tensor, positions: torch.Tensor, notes: torch.Tensor) -> torch.Tensor:
        x = self.tgt_embed(tokens) * math.sqrt(self.config.d_model) + notes
        return self.drop(x + sinusoidal_positions(positions, self.config.d_model))

    def note_inputs(self, memory: torch.Tensor) -> torch.Tensor:
        """What decoder position ``i`` adds to its token embedding.

        ``note_proj(memory[:, i + 1]) + own_note_proj(memory[:, i])``, ``[B, S - 1, d_model]``.
        Decoder position ``i`` holds token ``i`` and predicts token ``i + 1``,
        whose source is memory row ``i + 1``; given this row directly, the
        decoder needs no attention to find the audio of the note it chooses a
        state for (design 2). Row ``i``, the note of token ``i`` itself, puts
        each chosen state next to its sound (design 3, see :class:`SelectionConfig`).
        """
        return self.note_proj(memory[:, 1:]) + self.own_note_proj(memory[:, :-1])

    @staticmethod
    def _key_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
        return None if mask is None else mask[:, None, None, :].bool()

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder output (memory) ``[B, S, d_model]`` of sources ``[B, S, src_dim]``.

        With ``copy_head`` the memory also carries each note's :meth:`copy_audio`
        after its ``d_model`` columns: ``[B, S, d_model + audio_dim]``.
        """
        positions = torch.arange(src.shape[1], device=src.device)
        x = self.embed_source(src) + sinusoidal_positions(positions, self.config.d_model)
        x = self.drop(x)
        mask = self._key_mask(src_mask)
        for layer in self.encoder:
            x = layer(x, mask)
        memory = self.enc_norm(x)
        if not self.config.copy_head:
            return memory
        return torch.cat([memory, self.copy_audio(src, src_mask).to(memory.dtype)], dim=-1)

    def copy_audio(self, src: torch.Tensor, src_mask: torch.Tensor | None) -> torch.Tensor:
        """Unit vectors ``[B, S, audio_dim]`` of the notes' mel rows, less their mean over the sequence.

        The mean is over the real positions after the first (BOS); the cosine of
        two rows then says how alike two notes sound next to the rest of the song
        (the raw rows of one song are all alike). Zeroed audio gives zero vectors.
        """
        a = src[..., : self.config.audio_dim].float()
        w = torch.ones(a.shape[:2], device=a.device) if src_mask is None else src_mask.float()
        w = torch.cat([torch.zeros_like(w[:, :1]), w[:, 1:]], dim=1)
        mean = (a * w[..., None]).sum(1, keepdim=True) / w.sum(1).clamp_min(1.0)[:, None, None]
        return F.normalize(a - mean, dim=-1)

    def _copy_query_key(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Copy queries ``[B, S - 1, *]`` (of rows 1..) and keys ``[B, S, *]``: ``query @ key.T`` is the copy score.

        Score of note ``j`` for note ``k``: ``copy_query(m_j) . copy_key(m_k) / sqrt(d_model)
        + exp(copy_audio_log_scale) * cos(audio_j, audio_k)`` (:meth:`copy_audio`).
        """
        d = self.config.d_model
        m, audio = memory[..., :d], memory[..., d:]
        scale = self.copy_audio_log_scale.exp()
        q = torch.cat([self.copy_query(m[:, 1:]).float() / math.sqrt(d), scale * audio[:, 1:].float()], dim=-1)
        return q, torch.cat([self.copy_key(m).float(), audio.float()], dim=-1)

    def decode(self, memory: torch.Tensor, src_mask: torch.Tensor | None, tgt_in: torch.Tensor,
               tgt_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, T, vocab]`` of the next token at every position of ``tgt_in`` [B, T]."""
        n = tgt_in.shape[1]
        if memory.shape[1] < n + 1:
            raise ValueError(f"{n} decoder positions need {n + 1} source positions, got {memory.shape[1]}")
        memory, full = memory[..., : self.config.d_model], memory
        x = self._embed_tokens(tgt_in, torch.arange(n, device=tgt_in.device), self.note_inputs(memory[:, : n + 1]))
        self_mask = torch.ones(n, n, dtype=torch.bool, device=tgt_in.device).tril()[None, None]
        if tgt_mask is not None:
            self_mask = self_mask & self._key_mask(tgt_mask)
        cross_mask = self._key_mask(src_mask)
        for layer in self.decoder:
            h = layer.norm1(x)
            sk, sv = layer.self_attn.project_kv(h)
            ck, cv = layer.cross_attn.project_kv(memory)
            x = layer(x, sk, sv, self_mask, ck, cv, cross_mask)
        h = self.dec_norm(x)
        if not self.config.copy_head:
            return self.out(h)
        # position i copies from the notes of tokens 1..i (its own input included; BOS has no note)
        queries, keys = self._copy_query_key(full[:, : n + 1])
        scores = queries @ keys[:, :n].transpose(1, 2)
        valid = torch.ones(n, n, dtype=torch.bool, device=tgt_in.device).tril()
        valid[:, 0] = False
        valid = valid[None] if tgt_mask is None else valid[None] & tgt_mask[:, None, :].bool()
        rows = tgt_in.shape[0]
        if scores.shape[0] != rows:  # one memory for a group of rows
            scores = scores.repeat_interleave(rows // scores.shape[0], dim=0)
        return self.copy_mix(self.out(h), h, scores, tgt_in, valid.expand(rows, n, n))

    def copy_mix(self, logits: torch.Tensor, hidden: torch.Tensor, scores: torch.Tensor, key_tokens: torch.Tensor,
                 valid: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of the next token: the output layer's, mixed with copies of earlier tokens.

        ``log((1 - g) * softmax(logits) + g * p_copy)`` (pointer-generator, See et
        al. 2017), where ``p_copy[v] = sum of softmax(scores)[k] over the valid
        keys k with key_tokens[k] == v`` and ``g = sigmoid(copy_gate([hidden,
        max valid score]))``; ``g = 0`` at a position with no valid key. They
        serve as logits: ``log_softmax`` leaves log-probabilities as they are.

        Parameters
        ----------
        logits : torch.Tensor [B, T, V]
        hidden : torch.Tensor [B, T, d_model]
            The decoder output the logits were made from.
        scores : torch.Tensor [B, T, K]
            Scaled dot products of each position's query (the note it chooses for)
            with each key (an earlier note).
        key_tokens : torch.Tensor [B, K] int64
            The token each key's note was given.
        valid : torch.Tensor [B, T, K] bool
            The keys each position may copy from.

        Returns
        -------
        torch.Tensor [B, T, V] float32
        """
        logp = F.log_softmax(logits.float(), dim=-1)
        B, T, K = scores.shape
        if K == 0:
            return logp
        scores = scores.float().masked_fill(~valid, -1e9)
        has = valid.any(-1, keepdim=True)
        attn = torch.softmax(scores, dim=-1) * valid
        best = torch.where(has, scores.max(-1, keepdim=True).values, 0.0)
        gate = self.copy_gate(torch.cat([hidden.float(), best], dim=-1)).float()
        p_copy = torch.zeros(B, T, logits.shape[-1], device=logits.device).scatter_add_(
            2, key_tokens[:, None, :].expand(B, T, K), attn)
        keep, take = torch.where(has, F.logsigmoid(-gate), 0.0), torch.where(has, F.logsigmoid(gate), -1e4)
        return torch.logaddexp(keep + logp, take + torch.log(p_copy.clamp_min(1e-30)))

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor | None, tgt_in: torch.Tensor,
                tgt_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits.

        Parameters
        ----------
        src : torch.Tensor [B, S, src_dim] float
            Per token position, as :func:`~mapkit.datasets.torch_datasets.selection_source`
            makes it with ``config.source_layout``: normalised mel rows, the 4
            raw gaps (>= 0), beat phases, one-hot difficulty.
        src_mask : torch.Tensor [B, S] bool or None
            ``True`` on real positions.
        tgt_in : torch.Tensor [B, T] int64
            Decoder input, ``tokens[:, :-1]`` (BOS, t1, ..., tn).
        tgt_mask : torch.Tensor [B, T] bool or None
            ``True`` on real tokens (``tgt_in != PAD``).

        Returns
        -------
        torch.Tensor [B, T, vocab_size]
            Logits of ``tokens[:, 1:]``.
        """
        return self.decode(self.encode(src, src_mask), src_mask, tgt_in, tgt_mask)

    # -- incremental decoding
    def start_cache(self, memory: torch.Tensor, src_mask: torch.Tensor | None, batch_size: int,
                    capacity: int) -> DecoderCache:
        """An empty cache for ``batch_size`` rows decoding up to ``capacity`` tokens.

        ``memory`` [B_m, S, d_model] with ``batch_size`` a multiple of ``B_m``:
        source ``g`` is shared by rows ``g*batch_size/B_m ..`` (``B_m = 1``: the
        beams of one song; ``B_m > 1``: the beams of several windows of a song,
        decoded side by side). The cross-attention keys/values are computed here, once.
        """
        c = self.config
        d_head = c.d_model // c.n_heads
        shape = (batch_size, c.n_heads, capacity, d_head)
        kw = dict(dtype=memory.dtype, device=memory.device)
        memory, full = memory[..., :c.d_model], memory
        cross = [layer.cross_attn.project_kv(memory) for layer in self.decoder]
        cache = DecoderCache([torch.zeros(shape, **kw) for _ in self.decoder],
                             [torch.zeros(shape, **kw) for _ in self.decoder],
                             [k for k, _ in cross], [v for _, v in cross], self._key_mask(src_mask))
        cache.notes = self.note_inputs(memory)
        if c.copy_head:
            cache.copy = self._copy_query_key(full)
            cache.history = torch.zeros(batch_size, capacity, dtype=torch.long, device=memory.device)
        return cache

    def decode_step(self, tokens: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
        """Logits ``[B, vocab]`` of the token after ``tokens`` [B], the next input of every row.

        Appends the tokens' keys/values to ``cache``; equals the last position
        of :meth:`decode` on the whole prefix.
        """
        pos = cache.length
        if pos >= cache.capacity:
            raise ValueError(f"decoder cache is full ({cache.capacity} tokens)")
        if pos >= cache.notes.shape[1]:
            raise ValueError(f"the source has no position {pos + 1} for decoder step {pos}")
        notes = cache.notes[:, pos: pos + 1]
        if 1 < notes.shape[0] < tokens.shape[0]:  # one source per group of rows (windows side by side)
            notes = notes.repeat_interleave(tokens.shape[0] // notes.shape[0], dim=0)
        x = self._embed_tokens(tokens[:, None], torch.tensor([pos], device=tokens.device), notes)
        c = cache.shared
        for i, layer in enumerate(self.decoder):
            k, v = layer.self_attn.project_kv(layer.norm1(x))
            cache.self_k[i][:, :, pos: pos + 1] = k
            cache.self_v[i][:, :, pos: pos + 1] = v
            sk, sv = cache.self_k[i][:, :, c: pos + 1], cache.self_v[i][:, :, c: pos + 1]
            g = tokens.shape[0] // cache.groups  # rows per group: the first row of each holds its prefix
            prefix = (cache.self_k[i][::g, :, :c], cache.self_v[i][::g, :, :c]) if c else None
            x = layer(x, sk, sv, None, cache.cross_k[i], cache.cross_v[i], cache.cross_mask, self_prefix=prefix)
        cache.length = pos + 1
        h = self.dec_norm(x)
        return self.out(h)[:, 0] if cache.copy is None else self._copy_step(h, tokens, cache, pos)

    def _copy_step(self, h: torch.Tensor, tokens: torch.Tensor, cache: DecoderCache, pos: int) -> torch.Tensor:
        """:meth:`copy_mix` of decoder step ``pos`` (hidden ``h`` [B, 1, D]): copies from the row's tokens 1..pos."""
        queries, keys = cache.copy
        cache.history[:, pos] = tokens
        scores = queries[:, pos: pos + 1] @ keys[:, 1: pos + 1].transpose(1, 2)
        if scores.shape[0] != tokens.shape[0]:  # one source per group of rows
            scores = scores.repeat_interleave(tokens.shape[0] // scores.shape[0], dim=0)
        valid = torch.ones(scores.shape, dtype=torch.bool, device=h.device)
        return self.copy_mix(self.out(h), h, scores, cache.history[:, 1: pos + 1], valid)[:, 0]


def selection_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.1) -> torch.Tensor:
    """Label-smoothed cross-entropy, mean over non-PAD targets.

    Parameters
    ----------
    logits : torch.Tensor [B, T, vocab]
    targets : torch.Tensor [B, T] int64
        ``tokens[:, 1:]``; PAD positions are ignored.
    label_smoothing : float
        Mass spread uniformly over the vocabulary (PyTorch's definition).
    """
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=PAD,
                           label_smoothing=label_smoothing)


def token_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
    """``(correct, counted)`` arg-max predictions over non-PAD targets."""
    real = targets != PAD
    return int(((logits.argmax(-1) == targets) & real).sum()), int(real.sum())
