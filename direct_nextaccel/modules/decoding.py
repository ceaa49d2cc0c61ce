"""Scale-by-scale decoding shared by NextAccel and MIAR: sampling, the decoding loop and MIAR's beam search.

Nothing here knows a model. A model plugs in through one *step function*::

    step(tokens, state) -> (logits, state)

``tokens`` (N, L_prev) are the token ids just decided for the previous scale, or ``None`` on the first call when the
model starts from nothing (MIAR's start token); ``logits`` (N, L_next, V) are the model's prediction for the next
scale. ``state`` is whatever the model carries between scales (per-layer :class:`KVCache` objects, precomputed
:class:`ContextKV`, a running feature map, labels). It may be any nesting of tensors, dataclasses, lists, tuples and
dicts in which **every tensor has the batch as dimension 0**: beam search repeats and selects samples of it with
:func:`select_batch`. Every per-sample input (conditioning image features, labels) must therefore travel in the
state, never in a closure, or it would not follow the candidates. ``step`` may update the state it receives in
place (:meth:`KVCache.append` does): beam search gives each batch of candidates its own copy. A model without a
cache can wrap ``next_logits(history, condition) -> logits`` with :func:`step_from_history`.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

StepFn = Callable[[Tensor | None, Any], tuple[Tensor, Any]]

SAMPLING_MODES = ("argmax", "multinomial", "top_k_top_p")
DECODING_MODES = (*SAMPLING_MODES, "beam")
BEAM_TOKEN_COUNTS = (1, 2, 3)


def check_decoding(mode: str, beam_k: int, beam_alpha: float, top_k: int, top_p: float, temperature: float) -> None:
    """The one check of decoding settings, for both methods' configs (``model.decoding`` ... ``model.temperature``,
    through :class:`~direct_nextaccel.modules.options.DecodingOptions`) and their ``generate`` methods.

    Every setting is checked whatever the mode, so a config is valid or not independently of the mode it selects.

    Raises
    ------
    ValueError
        One line naming the first bad setting by its config key: ``mode`` (key ``decoding``) not in
        :data:`DECODING_MODES`; ``beam_k`` not in :data:`BEAM_TOKEN_COUNTS`; ``beam_alpha`` negative or not finite;
        ``top_k`` not a non-negative integer (0 disables it); ``top_p`` not in (0, 1]; ``temperature`` not positive
        and finite.
    """
    if mode not in DECODING_MODES:
        raise ValueError(f"decoding {mode!r} is not one of {DECODING_MODES}")
    if isinstance(beam_k, bool) or not isinstance(beam_k, int) or beam_k not in BEAM_TOKEN_COUNTS:
        raise ValueError(f"beam_k {beam_k!r} is not one of {BEAM_TOKEN_COUNTS}")
    if not (math.isfinite(beam_alpha) and beam_alpha >= 0):
        raise ValueError(f"beam_alpha {beam_alpha} must be non-negative")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k {top_k!r} must be a non-negative integer (0 disables it)")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p {top_p} is not in (0, 1]")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature {temperature} must be positive")


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Set logits outside the top-k and outside the top-p nucleus to -inf (top-k first, then top-p).

    Parameters
    ----------
    logits : Tensor
        Shape (..., V).
    top_k : int
        Keep the ``top_k`` largest logits of each distribution (exactly k, ties broken by index); 0 keeps all.
    top_p : float
        Keep the smallest set of most probable tokens whose probability sums to at least ``top_p``; the most
        probable token always survives. 1.0 keeps all.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k {top_k} must be a non-negative integer (0 disables it)")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p {top_p} is not in (0, 1]")
    if 0 < top_k < logits.shape[-1]:
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.topk(top_k, dim=-1).indices, True)
        logits = logits.masked_fill(~keep, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        mass_before = torch.cat((torch.zeros_like(cumulative[..., :1]), cumulative[..., :-1]), dim=-1)
        drop = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, order, mass_before >= top_p)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_tokens(
    logits: Tensor,
    mode: str = "argmax",
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick one token per position from logits (..., V); returns (...) int64 token ids.

    ``"argmax"`` is deterministic and ignores the other arguments; ``"multinomial"`` samples from
    softmax(logits / temperature); ``"top_k_top_p"`` does the same after :func:`filter_logits`.
    """
    if mode not in SAMPLING_MODES:
        raise ValueError(f"sampling mode {mode!r} is not one of {SAMPLING_MODES}")
    if mode == "argmax":
        return logits.argmax(dim=-1)
    if temperature <= 0:
        raise ValueError(f"temperature {temperature} must be positive for sampling mode {mode!r}")
    scaled = logits.float() / temperature
    if mode == "top_k_top_p":
        scaled = filter_logits(scaled, top_k=top_k, top_p=top_p)
    probs = scaled.softmax(dim=-1).reshape(-1, logits.shape[-1])
    return torch.multinomial(probs, 1, generator=generator).view(logits.shape[:-1])


def select_batch(state: Any, index: Tensor) -> Any:
    """Pick samples ``index`` (N',) along dimension 0 of every tensor in a nested decoding state.

    Dataclasses (e.g. :class:`KVCache`, :class:`ContextKV`) are rebuilt field by field, so the original objects
    are left untouched; numbers, strings and ``None`` pass through.
    """
    if isinstance(state, Tensor):
        return state.index_select(0, index.to(state.device))
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        fields = {f.name: select_batch(getattr(state, f.name), index) for f in dataclasses.fields(state) if f.init}
        return dataclasses.replace(state, **fields)
    if isinstance(state, list | tuple):
        return type(state)(select_batch(item, index) for item in state)
    if isinstance(state, dict):
        return {key: select_batch(value, index) for key, value in state.items()}
    if state is None or isinstance(state, int | float | str | torch.dtype | torch.device):
        return state
    raise TypeError(f"cannot select batch entries of decoding state of type {type(state).__name__}")


def step_from_history(next_logits: Callable[[list[Tensor], Any], Tensor]) -> StepFn:
    """Turn ``next_logits(history, condition) -> logits`` into a step function that recomputes every scale.

    The step's state is the pair ``(history, condition)``: ``history`` the list of (N, L_s) token maps decided so
    far, ``condition`` the model's per-sample inputs (batch first, or ``None``). Start it as ``([], condition)``.
    Simple and cache-free; a cached step function gives the same tokens in less time.
    """

    def step(tokens: Tensor | None, state: tuple[list[Tensor], Any]) -> tuple[Tensor, tuple[list[Tensor], Any]]:
        history, condition = state
        history = history if tokens is None else [*history, tokens]
        return next_logits(history, condition), (history, condition)

    return step


def decode(
    step: StepFn,
    state: Any,
    num_scales: int,
    first_tokens: Tensor | None = None,
    mode: str = "argmax",
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> list[Tensor]:
    """Generate ``num_scales`` token maps one scale at a time with :func:`sample_tokens`.

    Parameters
    ----------
    step, state
        The model's step function and initial state (see the module docstring).
    num_scales : int
        Number of scales to generate (step is called this many times).
    first_tokens : Tensor, optional
        Tokens (B, L_0) known before decoding (NextAccel's 32x scale), passed to the first step call.
    mode, temperature, top_k, top_p, generator
        As in :func:`sample_tokens`.

    Returns
    -------
    list of Tensor
        The generated (B, L_s) token maps, coarse to fine, ``first_tokens`` excluded.
    """
    if num_scales < 1:
        raise ValueError(f"num_scales {num_scales} must be at least 1")
    tokens, generated = first_tokens, []
    for _ in range(num_scales):
        logits, state = step(tokens, state)
        tokens = sample_tokens(logits, mode, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        generated.append(tokens)
    return generated


def least_confident_positions(logits: Tensor, k: int, alpha: float) -> Tensor:
    """Positions (B, min(k, L)) of the k least confident predictions among logits (B, L, V), MIAR eq. 4.

    Confidence is ``c = P_max + alpha * (P_max - P_2nd)``: high when the best token is probable and clearly ahead
    of the runner-up. Eq. 4 writes top-k of c, but the text says the selection "prioritizes tokens with low
    confidence and high uncertainty", and only uncertain positions make the second choice worth trying, so we take
    the top-k of ``-c``, i.e. the k smallest confidences.
    """
    top2 = logits.float().softmax(dim=-1).topk(2, dim=-1).values  # B, L, 2
    confidence = top2[..., 0] + alpha * (top2[..., 0] - top2[..., 1])
    return (-confidence).topk(min(k, logits.shape[1]), dim=-1).indices


def candidate_token_maps(logits: Tensor, positions: Tensor) -> Tensor:
    """The 2^k token maps (B, 2^k, L) that take the best or second-best token at each of ``positions`` (B, k).

    Every other position takes its argmax. Candidate c uses the second-best token at ``positions[:, j]`` when bit j
    of c is set, so candidate 0 is the plain argmax map.
    """
    batch, k = positions.shape
    top2 = logits.topk(2, dim=-1).indices  # B, L, 2
    bits = (torch.arange(2**k, device=logits.device)[:, None] >> torch.arange(k, device=logits.device)) & 1  # 2^k, k
    choices = top2.gather(1, positions[..., None].expand(batch, k, 2))  # B, k, 2
    values = choices[:, None].expand(batch, 2**k, k, 2).gather(3, bits[None, ..., None].expand(batch, -1, -1, 1))
    candidates = top2[:, None, :, 0].repeat(1, 2**k, 1)  # B, 2^k, L
    return candidates.scatter_(2, positions[:, None].expand(batch, 2**k, k), values.squeeze(3))


def sum_log_max_prob(logits: Tensor) -> Tensor:
    """Sum over positions of log P_max for logits (N, L, V): the confidence score of eq. 5, shape (N,)."""
    return logits.float().log_softmax(dim=-1).amax(dim=-1).sum(dim=-1)


def beam_search_scale(
    logits: Tensor, step: StepFn, state: Any, k: int, alpha: float
) -> tuple[Tensor, Tensor, Any, Tensor]:
    """Decide one scale with MIAR's beam search (Algorithm 1, one iteration).

    The k least confident positions (eq. 4, see :func:`least_confident_positions`) each try their best and
    second-best token, giving 2^k candidate maps. All B * 2^k candidates go through ``step`` as one batch; each is
    scored by the sum of log P_max of the next scale's predictions it leads to (eq. 5; the accumulated score s is
    shared by a sample's candidates, so it does not change their ranking). The best candidate per sample is kept,
    ties going to the lower candidate index, i.e. towards argmax.

    Parameters
    ----------
    logits : Tensor
        Predictions (B, L, V) for the scale being decided.
    step, state
        Step function and the state that produced ``logits``.
    k : int
        Positions to branch on, in (1, 2, 3); capped at L for scales with fewer tokens.
    alpha : float
        Weight of the best/second-best margin in the confidence, >= 0.

    Returns
    -------
    tokens : Tensor
        Chosen token map (B, L).
    next_logits : Tensor
        The next scale's predictions (B, L', V) given the chosen map.
    next_state
        ``step``'s state after the chosen map.
    gain : Tensor
        Score gain (B,) of the chosen candidate, sum of log P_max of ``next_logits``.
    """
    _check_beam_arguments(k, alpha)
    batch = logits.shape[0]
    candidates = candidate_token_maps(logits, least_confident_positions(logits, k, alpha))  # B, C, L
    num_candidates = candidates.shape[1]
    expanded = select_batch(state, torch.arange(batch, device=logits.device).repeat_interleave(num_candidates))
    next_logits, next_state = step(candidates.flatten(0, 1), expanded)  # B * C, L', V
    scores = sum_log_max_prob(next_logits).view(batch, num_candidates)
    best = scores.argmax(dim=1)  # first maximum: ties favour the argmax candidate
    rows = torch.arange(batch, device=logits.device)
    keep = rows * num_candidates + best
    return candidates[rows, best], next_logits[keep], select_batch(next_state, keep), scores[rows, best]


def beam_search(
    step: StepFn,
    state: Any,
    num_scales: int,
    first_tokens: Tensor | None = None,
    k: int = 1,
    alpha: float = 1.0,
) -> tuple[list[Tensor], Tensor]:
    """Generate ``num_scales`` token maps with MIAR's beam search (Algorithm 1).

    Every scale but the last is decided by :func:`beam_search_scale`. The last scale has no next scale to look
    ahead to, so its candidates would be scored by their own log-probabilities; the argmax map always has the
    largest such sum of the 2^k candidates, so the last scale is plain argmax. ``alpha`` has no value in the paper;
    1.0 weighs probability and margin equally.

    Parameters
    ----------
    step, state, num_scales, first_tokens
        As in :func:`decode`.
    k, alpha
        As in :func:`beam_search_scale`.

    Returns
    -------
    tokens : list of Tensor
        The generated (B, L_s) token maps, coarse to fine.
    score : Tensor
        Sum over all generated scales of sum of log P_max of the model's predictions along the chosen path, (B,).
    """
    if num_scales < 1:
        raise ValueError(f"num_scales {num_scales} must be at least 1")
    _check_beam_arguments(k, alpha)
    logits, state = step(first_tokens, state)
    score = sum_log_max_prob(logits)
    generated = []
    for _ in range(num_scales - 1):
        tokens, logits, state, gain = beam_search_scale(logits, step, state, k, alpha)
        generated.append(tokens)
        score = score + gain
    generated.append(logits.argmax(dim=-1))
    return generated, score


def _check_beam_arguments(k: int, alpha: float) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k not in BEAM_TOKEN_COUNTS:
        raise ValueError(f"beam search k {k} is not one of {BEAM_TOKEN_COUNTS}")
    if alpha < 0:
        raise ValueError(f"beam search alpha {alpha} must be non-negative")
