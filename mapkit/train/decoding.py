"""Stage-2 decoding: beam search, sampling and greedy (docs/design.md §7).

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

Constraints: ``constraint`` (e.g. :class:`mapkit.train.flow.FlowConstraint`,
the playable-flow rules) is a rule with a state per row: the decoder calls
``constraint.begin(starts, rows_per_window)``, then at every step
``constraint.mask(allowed)`` (numpy bool ``[rows, vocab]`` -> the narrowed
mask) before picking and ``constraint.append(tokens, rows)`` after (the rows
each new token extends, as beams are reordered), and ``constraint.violations(rows)``
at the end. Beam search and sampling use it the same way; the score is the
log-probability renormalised over the narrowed mask.

Sampling options: ``temperature`` divides the logits; ``top_k`` keeps the k
most probable tokens and ``top_p`` the nucleus (the smallest set of most
probable tokens whose probability reaches ``top_p``, Holtzman et al. 2020)
before the draw (:func:`_nucleus`).

Sources: one level at a time, ``src`` ``[S, n_mels + 4]`` or ``[1, S, n_mels + 4]``
with ``S = n_tokens + 2`` real positions (one per token incl. BOS and EOS).

Windows (``window``, the ``max_tokens`` the model was trained with): the
model is trained on crops of at most ``window`` positions, numbered from 0.
A level with ``n_tokens + 2 <= window`` is decoded whole, as before. A longer
one is split into ``k = ceil(n_tokens / (window - 2))`` windows of ``q =
ceil(n_tokens / k)`` states each, evenly spaced from the first state to the
last (consecutive windows overlap by less than ``k`` states in all). Window
``j`` predicting states ``a .. a+q-1`` reads source positions ``a-1 .. a+q``
(its own positions 0 .. q+1, like a training crop) and starts from BOS. All
windows are decoded side by side, as one batch of ``k * beam_size`` rows, so
every step reads the weights once for all of them and attends over at most
``window`` positions: the cost per note stays flat however long the level
is. In an overlap the earlier window's states are kept; the score is the sum
of the windows' scores. With a ``constraint`` that can replay and seed itself
(``FlowConstraint``), a window whose kept states break its rules across the
seam is decoded again alone, after the stitched states before it, until its
own states keep the rules from there on (:func:`_repair_seams`): a few steps,
not the whole window.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Union

import numpy as np
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
    #: picks that broke a rule of the ``constraint`` because no allowed state kept it (0 without one)
    violations: int = 0

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


def window_starts(n_tokens: int, window: int | None) -> tuple[list[int], int]:
    """How a level of ``n_tokens`` states is split into windows of at most ``window`` positions.

    Returns
    -------
    starts : list of int
        Token index (BOS = 0) of each window's first state; ``[1]`` when the
        whole level fits (``window`` None or ``n_tokens + 2 <= window``).
    q : int
        States per window (``n_tokens`` for one window).
    """
    if window is None or n_tokens + 2 <= window:
        return [1], n_tokens
    if window < 3:
        raise ValueError(f"a window needs at least 3 positions (BOS, a state, the next), got {window}")
    k = math.ceil(n_tokens / (window - 2))
    q = math.ceil(n_tokens / k)
    return [1 + round(j * (n_tokens - q) / (k - 1)) for j in range(k)], q


def _stitch(prefixes: list[torch.Tensor], starts: list[int], q: int) -> torch.Tensor:
    """``[BOS, n states]`` from the windows' ``[BOS, q states]``; the earlier window wins in an overlap."""
    parts, end = [prefixes[0][:1]], 1
    for prefix, a in zip(prefixes, starts):
        parts.append(prefix[1 + end - a:])  # its states from token index `end` on
        end = a + q
    return torch.cat(parts)


class _Stepper:
    """Next-token log-probabilities of ``rows`` prefixes per window of one source, cached or not.

    Rows ``g * per_window ..`` belong to window ``g`` (see :func:`window_starts`).
    """

    def __init__(self, model, src, src_mask, n_tokens: int, per_window: int, use_cache: bool,
                 window: int | None = None):
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
        self.starts, self.steps = window_starts(n_tokens, window)
        self.real_source = None
        if len(self.starts) > 1:  # windows of real positions, each its own source (no padding: equal lengths)
            real = self.real_source = src[0][src_mask[0]]
            src = torch.stack([real[a - 1: a + self.steps + 1] for a in self.starts])
            src_mask = torch.ones(src.shape[:2], dtype=torch.bool, device=device)
        self.per_window = per_window
        rows = len(self.starts) * per_window
        self.src_mask = src_mask
        self.memory = model.encode(src, src_mask)
        # the prefixes and each pick's log-probability, in buffers of the final length (no copy per step)
        self._tokens = torch.full((rows, self.steps + 1), BOS, dtype=torch.long, device=device)
        self._logp = torch.zeros((rows, self.steps), dtype=torch.float64, device=device)
        self.length = 1
        self.cache = model.start_cache(self.memory, src_mask, rows, self.steps + 1) if use_cache else None

    @property
    def prefix(self) -> torch.Tensor:
        """``[rows, t]``: each row's tokens so far, BOS first."""
        return self._tokens[:, :self.length]

    @property
    def windows(self) -> int:
        return len(self.starts)

    def logits(self) -> torch.Tensor:
        """Logits ``[rows, vocab]`` of the token after each current prefix."""
        if self.use_cache:
            return self.model.decode_step(self.prefix[:, -1], self.cache)
        rows = self.prefix.shape[0]
        if self.windows == 1:
            memory, mask = self.memory.expand(rows, -1, -1), self.src_mask.expand(rows, -1)
        else:
            memory = self.memory.repeat_interleave(self.per_window, dim=0)
            mask = self.src_mask.repeat_interleave(self.per_window, dim=0)
        return self.model.decode(memory, mask, self.prefix)[:, -1]

    def tokens(self, best: list[int]) -> torch.Tensor:
        """``[BOS, n states]``: row ``best[g]`` of each window ``g``, stitched."""
        return _stitch([self.prefix[g * self.per_window + b] for g, b in enumerate(best)], self.starts, self.steps)

    def path_log_probs(self, row: int) -> torch.Tensor:
        """``[t - 1]`` float64: the log-probability each state of row ``row``'s prefix was picked with."""
        return self._logp[row, :self.length - 1]

    def append(self, tokens: torch.Tensor, rows: torch.Tensor | None = None, logp: torch.Tensor | None = None) -> None:
        """Extend prefix ``rows[b]`` (default ``b``) by ``tokens[b]``, picked with log-probability ``logp[b]``."""
        n = self.length
        if rows is not None and not torch.equal(rows, torch.arange(len(rows), device=rows.device)):
            self._tokens[:, :n] = self._tokens[rows, :n]
            self._logp[:, :n - 1] = self._logp[rows, :n - 1]
            if self.cache is not None:
                self.cache.reorder(rows)
        self._tokens[:, n] = tokens
        if logp is not None:
            self._logp[:, n - 1] = logp
        self.length = n + 1


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


def _step_mask(allowed: Allowed, constraint, prefix: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """The allowed mask of this step, narrowed by the ``constraint`` (:class:`~mapkit.train.flow.FlowConstraint`)."""
    mask = _allowed_mask(allowed, prefix, vocab_size)
    if constraint is None:
        return mask
    return torch.from_numpy(constraint.mask(mask.cpu().numpy())).to(mask.device)


def _nucleus(probs: torch.Tensor, top_p: float | None, top_k: int | None) -> torch.Tensor:
    """``probs`` [rows, vocab] kept to the ``top_k`` most probable and the nucleus of mass ``top_p``, renormalised.

    The nucleus is the smallest set of the most probable tokens whose mass is
    at least ``top_p`` (Holtzman et al. 2020): a token is kept when the mass of
    the tokens more probable than it (ties broken by token id) is below ``top_p``.
    """
    if top_k is None and (top_p is None or top_p >= 1.0):
        return probs
    sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
    keep = torch.ones_like(sorted_p, dtype=torch.bool)
    if top_k is not None:
        keep[:, int(top_k):] = False
    if top_p is not None and top_p < 1.0:
        keep &= (sorted_p.cumsum(dim=-1) - sorted_p) < top_p
    keep[:, 0] = True
    kept = torch.zeros_like(keep).scatter(1, order, keep)
    probs = probs.masked_fill(~kept, 0.0)
    return probs / probs.sum(dim=-1, keepdim=True)


def _log_probs(logits: torch.Tensor, allowed: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-softmax over the allowed tokens; ``-inf`` elsewhere (and on rows with none allowed)."""
    logp = F.log_softmax((logits / temperature).masked_fill(~allowed, float("-inf")), dim=-1)
    return logp.masked_fill(~allowed, float("-inf"))  # rows with nothing allowed would be NaN


def _finish(prefix_row: torch.Tensor, score: float, violations: int = 0) -> Hypothesis:
    eos = torch.tensor([EOS], dtype=prefix_row.dtype, device=prefix_row.device)
    return Hypothesis(tokens=torch.cat([prefix_row, eos]).cpu(), score=float(score), violations=int(violations))


def _violations(constraint, rows: list[int]) -> int:
    return 0 if constraint is None else constraint.violations(rows)


def beam_search(model, src: torch.Tensor, src_mask: torch.Tensor | None, n_tokens: int, beam_size: int = 8,
                use_cache: bool = True, allowed: Allowed = None, window: int | None = None,
                constraint=None) -> Hypothesis:
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
        prefixes ``[beams, t]`` and returns ``[beams, vocab]`` (with several
        windows: every window's beams, each prefix starting with BOS).
    window : int, optional
        At most this many positions per window (the model's training
        ``max_tokens``); None decodes the whole level at once. See the module notes.
    constraint : FlowConstraint, optional
        A per-step rule that carries a state per beam (:class:`mapkit.train.flow.FlowConstraint`):
        it narrows each beam's allowed tokens to those that keep its rules,
        whenever one does. See the module notes.

    Returns
    -------
    Hypothesis
        ``tokens`` = BOS, ``n_tokens`` states, EOS; ``score`` its log-probability
        (with several windows, the sum of theirs); ``violations`` the
        constraint's forced breaks.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    hyp, stepper, window_scores, best = _beam_search(model, src, src_mask, n_tokens, beam_size, use_cache, allowed,
                                                     window, constraint)

    def redo(sub_src, n, sub_allowed, sub_constraint, stop):
        return _beam_search(model, sub_src, None, n, beam_size, use_cache, sub_allowed, None, sub_constraint, stop)[0]

    return _repair_seams(hyp, stepper, best, window_scores, allowed, constraint, redo)


def _beam_search(model, src, src_mask, n_tokens: int, beam_size: int, use_cache: bool, allowed: Allowed,
                 window: int | None, constraint, stop=None):
    """:func:`beam_search` before the seams are repaired: ``(hypothesis, stepper, window scores, best beams)``.

    ``stop(s, constraint)`` (seam repair, one window), called after each
    step ``s`` (states so far) but the last: a bool per beam, or None; when
    a beam is true, the best-scoring such beam is returned as it is (``s`` states).
    """
    with _eval_no_grad(model):
        # all beams start as BOS; only beam 0 of a window is live, so its first step expands one hypothesis
        stepper = _Stepper(model, src, src_mask, n_tokens, beam_size, use_cache, window)
        device = stepper.prefix.device
        scores = torch.full((stepper.windows, beam_size), float("-inf"), device=device)
        scores[:, 0] = 0.0
        first_row = torch.arange(stepper.windows, device=device)[:, None] * beam_size
        if constraint is not None:
            constraint.begin(stepper.starts, beam_size)
        for step in range(stepper.steps):
            logits = stepper.logits().float()
            vocab = logits.shape[-1]
            logp = _log_probs(logits, _step_mask(allowed, constraint, stepper.prefix, vocab))
            top, flat = (scores.reshape(-1, 1) + logp).reshape(stepper.windows, -1).topk(beam_size, dim=-1)
            if not torch.isfinite(top[:, 0]).all():
                raise ValueError("no allowed token can continue any hypothesis")
            scores = top
            tokens, rows = (flat % vocab).reshape(-1), (flat // vocab + first_row).reshape(-1)
            stepper.append(tokens, rows=rows, logp=logp[rows, tokens])
            if constraint is not None:
                constraint.append(tokens.cpu().numpy(), rows.cpu().numpy())
            ok = stop(step + 1, constraint) if stop is not None and step + 1 < stepper.steps else None
            if ok is not None and ok.any():
                b = int(scores[0].masked_fill(~torch.as_tensor(ok, device=device), float("-inf")).argmax())
                if torch.isfinite(scores[0, b]):
                    hyp = _finish(stepper.prefix[b], float(scores[0, b]), _violations(constraint, [b]))
                    return hyp, stepper, [float(scores[0, b])], [b]
        best = scores.argmax(dim=-1).tolist()
        window_scores = scores.gather(1, torch.tensor(best, device=device)[:, None])[:, 0].tolist()
        hyp = _finish(stepper.tokens(best), sum(window_scores),
                      _violations(constraint, [g * beam_size + b for g, b in enumerate(best)]))
    return hyp, stepper, window_scores, best


def greedy(model, src: torch.Tensor, src_mask: torch.Tensor | None, n_tokens: int, use_cache: bool = True,
           allowed: Allowed = None, window: int | None = None, constraint=None) -> Hypothesis:
    """The most probable token at every step (beam search with one beam)."""
    return beam_search(model, src, src_mask, n_tokens, beam_size=1, use_cache=use_cache, allowed=allowed,
                       window=window, constraint=constraint)


def sample(model, src: torch.Tensor, src_mask: torch.Tensor | None, n_tokens: int, temperature: float = 1.0,
           use_cache: bool = True, allowed: Allowed = None, generator: torch.Generator | None = None,
           window: int | None = None, top_p: float | None = None, top_k: int | None = None,
           constraint=None) -> Hypothesis:
    """A sequence of exactly ``n_tokens`` states drawn token by token.

    Each token is drawn from ``softmax(logits / temperature)`` over the allowed
    tokens (narrowed by the ``constraint``, as in :func:`beam_search`), cut to
    the ``top_k`` most probable tokens and to the nucleus of mass ``top_p``
    (:func:`_nucleus`; None: no cut) and renormalised; the score is the
    log-probability of the drawn tokens at ``temperature`` 1 over the allowed
    tokens. Parameters as :func:`beam_search`; ``generator`` makes
    the draw reproducible. The returned tokens start with BOS, followed by the
    drawn states (none of them is the BOS prefix). With several windows
    (``window``), each window draws its own states, side by side.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature} (use greedy() for the arg-max)")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    options = (temperature, use_cache, allowed, generator, top_p, top_k)
    hyp, stepper, scores = _sample(model, src, src_mask, n_tokens, window, constraint, *options)

    def redo(sub_src, n, sub_allowed, sub_constraint, stop):
        sub_options = (temperature, use_cache, sub_allowed, generator, top_p, top_k)
        return _sample(model, sub_src, None, n, None, sub_constraint, *sub_options, stop=stop)[0]

    return _repair_seams(hyp, stepper, [0] * stepper.windows, scores, allowed, constraint, redo)


def _sample(model, src, src_mask, n_tokens: int, window, constraint, temperature, use_cache, allowed, generator,
            top_p, top_k, stop=None):
    """:func:`sample` before the seams are repaired: ``(hypothesis, stepper, window scores)``; ``stop`` as in
    :func:`_beam_search` (one row)."""
    with _eval_no_grad(model):
        stepper = _Stepper(model, src, src_mask, n_tokens, 1, use_cache, window)
        if constraint is not None:
            constraint.begin(stepper.starts, 1)
        scores = torch.zeros(stepper.windows, dtype=torch.float64)
        for step in range(stepper.steps):
            logits = stepper.logits().float()
            mask = _step_mask(allowed, constraint, stepper.prefix, logits.shape[-1])
            if not mask.any(dim=-1).all():
                raise ValueError("no allowed token can continue the sequence")
            probs = _nucleus(_log_probs(logits, mask, temperature).exp(), top_p, top_k)
            token = torch.multinomial(probs.cpu(), 1, generator=generator).to(probs.device)[:, 0]
            logp = _log_probs(logits, mask).gather(1, token[:, None])[:, 0].double()
            scores += logp.cpu()
            stepper.append(token, logp=logp)
            if constraint is not None:
                constraint.append(token.cpu().numpy())
            ok = stop(step + 1, constraint) if stop is not None and step + 1 < stepper.steps else None
            if ok is not None and ok[0]:
                return _finish(stepper.prefix[0], float(scores[0]), _violations(constraint, [0])), stepper, [
                    float(scores[0])]
        hyp = _finish(stepper.tokens([0] * stepper.windows), float(scores.sum()),
                      _violations(constraint, list(range(stepper.windows))))
    return hyp, stepper, scores.tolist()


def _repair_seams(hyp: Hypothesis, stepper: _Stepper, best: list, window_scores: list, allowed: Allowed,
                  constraint, redo) -> Hypothesis:
    """Re-decode the start of each window whose kept states break the constraint across the seam.

    Windows are decoded side by side, each from the constraint's empty start,
    so the first states a window keeps may break a rule only the earlier
    window's states make (e.g. a hand's first swing with that hand's last
    parity). In order, every window ``g > 0`` whose kept states (from the
    earlier window's end on) break a rule of the stitched sequence is decoded
    again alone (``redo``), its constraint starting after the stitched states
    before it (``constraint.window``) and its overlap states forced to the
    kept ones, until the first step from which the window's own states keep
    every rule (``constraint.rejoins``: its rows' states have met those of
    the window's first decoding): the new states up to there, the window's
    own from there on. Its score is the new states' log-probability plus the
    log-probabilities the kept own states were picked with. ``violations``
    is then what ``constraint.replay`` counts on the final sequence. A
    callable ``allowed`` (which sees whole-level prefixes) is left as it is: no repair.
    """
    starts, q = stepper.starts, stepper.steps
    if constraint is None or len(starts) < 2 or callable(allowed) or not hasattr(constraint, "window"):
        return hyp
    real = stepper.real_source
    tokens, scores = hyp.tokens.clone(), list(window_scores)
    for g in range(1, len(starts)):
        a, end = starts[g], starts[g - 1] + q  # window g's first state; its first kept one
        if not constraint.replay(tokens[1:a + q])[end - 1:].any():
            continue
        forced = tokens[a:end].tolist()
        row = g * stepper.per_window + best[g]
        own, own_logp = stepper.prefix[row, 1:], stepper.path_log_probs(row)  # the window's first decoding
        reference = constraint.window(a, q, []).path(own)

        def window_allowed(prefix, forced=forced):
            mask = _allowed_mask(allowed, prefix, len(constraint.features.state)).clone()
            step = prefix.shape[1] - 1
            if step < len(forced):
                mask[:] = False
                mask[:, forced[step]] = True
            return mask

        def rejoined(step, sub, own=own, reference=reference, forced=forced):
            if step < len(forced):
                return None
            return np.array([sub.rejoins(r, own[step:], reference[step:]) for r in range(len(sub.rows))])

        sub = redo(real[a - 1: a + q + 1], q, window_allowed, constraint.window(a, q, tokens[1:a]), rejoined)
        new = len(sub.tokens) - 2
        tokens[a:a + new] = sub.tokens[1:-1]  # from a + new on: the window's own states (already there)
        scores[g] = sub.score + float(own_logp[new:].sum())
    return Hypothesis(tokens=tokens, score=float(sum(scores)), violations=int(constraint.replay(tokens[1:-1]).sum()))
