"""Stage-2 decoding: beam search, sampling and greedy (DESIGN.md section 6).

The number of notes is fixed by stage 1 (one token per picked peak), so every
decoder here produces exactly ``n_tokens`` state tokens between BOS and EOS:
the output is ``[BOS, t1, ..., tn, EOS]``. At each step the model's
distribution is restricted to the *allowed* tokens and renormalised over them;
by default these are all states (ids >= 4), so PAD, BOS, EOS and UNK are never
emitted in the middle. A hypothesis' score is the sum of those renormalised
log-probabilities of its n tokens (EOS is appended, not scored); no length
normalisation is needed since all hypotheses have the same length.

``use_cache=True`` decodes incrementally with cached keys/values
(:meth:`SelectionModel.decode_step`); ``use_cache=False`` re-runs the decoder
on the whole prefix at every step. Both give the same tokens and scores.

Decoding runs in eval mode under ``torch.no_grad``; the model's training flag
is restored afterwards.

Sources: one level at a time, ``src`` ``[S, n_mels + 4]`` or ``[1, S, n_mels + 4]``
with ``S = n_tokens + 2`` real positions (one per token incl. BOS and EOS).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Union

import torch
import torch.nn.functional as F

from mapkit.preprocess.targets import BOS, EOS, N_SPECIAL

#: ``None`` (all states), a bool mask ``[vocab]``, or a function of the prefixes
#: ``[rows, t]`` (BOS first) giving a bool mask ``[rows, vocab]`` per row (e.g. playability rules).
Allowed = Union[None, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]


@dataclass
class Hypothesis:
    """A decoded level: ``tokens`` [n_tokens + 2] = BOS, states, EOS; ``score`` = sum of log-probabilities."""

    tokens: torch.Tensor
    score: float

    @property
    def states(self) -> torch.Tensor:
        """The ``n_tokens`` state tokens, without BOS and EOS."""
        return self.tokens[1:-1]


@contextlib.contextmanager
def _eval_no_grad(model):
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


class _Stepper:
    """Next-token log-probabilities of ``rows`` prefixes of one source, cached or not."""

    def __init__(self, model, src, src_mask, n_tokens: int, rows: int, use_cache: bool):
        self.model, self.use_cache = model, use_cache
        device = next(model.parameters()).device
        src = src.to(device)
        if src.ndim == 2:
            src = src[None]
        if src.ndim != 3 or src.shape[0] != 1:
            raise ValueError(f"decode one source at a time: expected [S, D] or [1, S, D], got {list(src.shape)}")
        if src_mask is None:
            src_mask = torch.ones(src.shape[:2], dtype=torch.bool, device=device)
        src_mask = src_mask.to(device).bool().reshape(1, -1)
        n_real = int(src_mask.sum())
        if n_real != n_tokens + 2:
            raise ValueError(f"the source has {n_real} real positions but {n_tokens} tokens need {n_tokens + 2} "
                             f"(BOS, one per note, EOS)")
        self.src_mask = src_mask
        self.memory = model.encode(src, src_mask)
        self.prefix = torch.full((rows, 1), BOS, dtype=torch.long, device=device)
        self.cache = model.start_cache(self.memory, src_mask, rows, n_tokens + 1) if use_cache else None

    def logits(self) -> torch.Tensor:
        """Logits ``[rows, vocab]`` of the token after each current prefix."""
        if self.use_cache:
            return self.model.decode_step(self.prefix[:, -1], self.cache)
        memory = self.memory.expand(self.prefix.shape[0], -1, -1)
        mask = self.src_mask.expand(self.prefix.shape[0], -1)
        return self.model.decode(memory, mask, self.prefix)[:, -1]

    def append(self, tokens: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        """Extend prefix ``rows[b]`` (default ``b``) by ``tokens[b]``."""
        if rows is not None and not torch.equal(rows, torch.arange(len(rows), device=rows.device)):
            self.prefix = self.prefix[rows]
            if self.cache is not None:
                self.cache.reorder(rows)
        self.prefix = torch.cat([self.prefix, tokens[:, None]], dim=1)


def _allowed_mask(allowed: Allowed, prefix: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Bool mask ``[rows, vocab]`` of the tokens each prefix may continue with."""
    if allowed is None:
        mask = torch.ones(vocab_size, dtype=torch.bool, device=prefix.device)
        mask[:N_SPECIAL] = False
    elif callable(allowed):
        mask = allowed(prefix)
    else:
        mask = allowed
    mask = torch.as_tensor(mask, device=prefix.device).bool()
    if mask.shape[-1] != vocab_size:
        raise ValueError(f"allowed mask has {mask.shape[-1]} entries, the vocabulary {vocab_size}")
    return mask.expand(prefix.shape[0], vocab_size)


def _log_probs(logits: torch.Tensor, allowed: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-softmax over the allowed tokens; ``-inf`` elsewhere (and on rows with none allowed)."""
    logp = F.log_softmax((logits / temperature).masked_fill(~allowed, float("-inf")), dim=-1)
    return logp.masked_fill(~allowed, float("-inf"))  # rows with nothing allowed would be NaN


def _finish(prefix_row: torch.Tensor, score: float) -> Hypothesis:
    eos = torch.tensor([EOS], dtype=prefix_row.dtype, device=prefix_row.device)
    return Hypothesis(tokens=torch.cat([prefix_row, eos]).cpu(), score=float(score))


def beam_search(model, src: torch.Tensor, src_mask: torch.Tensor | None, n_tokens: int, beam_size: int = 8,
                use_cache: bool = True, allowed: Allowed = None) -> Hypothesis:
    """The best sequence of exactly ``n_tokens`` states found by beam search.

    Parameters
    ----------
    model : SelectionModel
    src : torch.Tensor [S, n_mels + 4] or [1, S, n_mels + 4]
        Raw source vectors of one level (see :class:`SelectionModel`).
    src_mask : torch.Tensor [S] or [1, S] bool, or None
        ``True`` on real positions; their count must be ``n_tokens + 2``.
    n_tokens : int
        Number of notes (stage-1 peaks).
    beam_size : int
        Hypotheses kept per step; 1 is greedy decoding.
    use_cache : bool
        Incremental decoding with cached keys/values.
    allowed : None, bool tensor [vocab] or callable
        Tokens allowed at each step (default: all states). A callable gets the
        prefixes ``[beams, t]`` and returns ``[beams, vocab]``.

    Returns
    -------
    Hypothesis
        ``tokens`` = BOS, ``n_tokens`` states, EOS; ``score`` its log-probability.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    with _eval_no_grad(model):
        # all beams start as BOS; only beam 0 is live, so the first step expands one hypothesis
        stepper = _Stepper(model, src, src_mask, n_tokens, beam_size, use_cache)
        device = stepper.prefix.device
        scores = torch.full((beam_size,), float("-inf"), device=device)
        scores[0] = 0.0
        for _ in range(n_tokens):
            logits = stepper.logits().float()
            vocab = logits.shape[-1]
            logp = _log_probs(logits, _allowed_mask(allowed, stepper.prefix, vocab))
            top, flat = (scores[:, None] + logp).reshape(-1).topk(beam_size)
            if not torch.isfinite(top[0]):
                raise ValueError("no allowed token can continue any hypothesis")
            scores = top
            stepper.append(flat % vocab, rows=flat // vocab)
        best = int(scores.argmax())
        return _finish(stepper.prefix[best], scores[best])


def greedy(model, src: torch.Tensor, src_mask: torch.Tensor | None, n_tokens: int, use_cache: bool = True,
           allowed: Allowed = None) -> Hypothesis:
    """The most probable token at every step (beam search with one beam)."""
    return beam_search(model, src, src_mask, n_tokens, beam_size=1, use_cache=use_cache, allowed=allowed)


def sample(model, src: torch.Tensor, src_mask: torch.Tensor | None, n_tokens: int, temperature: float = 1.0,
           use_cache: bool = True, allowed: Allowed = None, generator: torch.Generator | None = None) -> Hypothesis:
    """A sequence of exactly ``n_tokens`` states drawn token by token.

    Each token is drawn from ``softmax(logits / temperature)`` over the allowed
    tokens; the score is the log-probability of the drawn tokens at
    ``temperature`` 1. Parameters as :func:`beam_search`; ``generator`` makes
    the draw reproducible. The returned tokens start with BOS, followed by the
    drawn states (none of them is the BOS prefix).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature} (use greedy() for the arg-max)")
    with _eval_no_grad(model):
        stepper = _Stepper(model, src, src_mask, n_tokens, 1, use_cache)
        score = 0.0
        for _ in range(n_tokens):
            logits = stepper.logits().float()
            mask = _allowed_mask(allowed, stepper.prefix, logits.shape[-1])
            if not mask.any():
                raise ValueError("no allowed token can continue the sequence")
            probs = _log_probs(logits, mask, temperature).exp()
            token = torch.multinomial(probs.cpu(), 1, generator=generator).to(probs.device)[:, 0]
            score += float(_log_probs(logits, mask)[0, token[0]])
            stepper.append(token)
        return _finish(stepper.prefix[0], score)
