"""Sampling one token per row of a batch, with the logprobs RL needs.

Per row: ``temperature`` (0 = greedy), ``top_p``, ``top_k`` and an optional ``seed`` (its own generator, so a seeded
request samples the same tokens whatever else is in the batch).

Two logprobs are returned for each chosen token:

- ``logprob`` — under the **sampling distribution**: ``log_softmax(logits / temperature)``, i.e. after the
  temperature and *before* top-p/top-k truncation (truncation would make most alternatives ``-inf``). For greedy
  rows (temperature 0) it is the model's distribution (temperature 1). ``top_logprobs`` come from the same one.
- ``model_logprob`` — under the plain model distribution, ``log_softmax(logits)`` (temperature 1), whatever the
  request's sampling parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["SamplingParams", "StepSample", "sample_batch"]


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence is generated."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    """0 (or -1) keeps every token."""
    seed: int | None = None
    top_logprobs: int = 0
    """How many alternatives (with their logprobs) to return per token, 0-20."""
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False


@dataclass
class StepSample:
    """What :func:`sample_batch` chose for a batch, as Python lists (one entry per row)."""

    tokens: torch.Tensor
    token_ids: list[int]
    logprobs: list[float]
    model_logprobs: list[float]
    top_logprobs: list[list[tuple[int, float]] | None]


def _truncate(probs: torch.Tensor, top_p: list[float], top_k: list[int]) -> torch.Tensor:
    """Zero the probabilities outside each row's top-k and top-p nucleus (the most likely token always stays)."""
    vocab = probs.shape[-1]
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    p = torch.tensor(top_p, dtype=probs.dtype, device=probs.device)
    k = torch.tensor([kk if kk > 0 else vocab for kk in top_k], device=probs.device)
    before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the more likely tokens
    drop = before > p[:, None]
    drop |= torch.arange(vocab, device=probs.device)[None, :] >= k[:, None]
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    return torch.zeros_like(probs).scatter_(-1, order, sorted_probs)


def _inverse_cdf(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """For each row of ``probs`` (non-negative, not necessarily normalized), the token where the running sum first
    exceeds ``uniform[row]`` (in ``[0, 1)``) times the row's total: a draw from the row's distribution. A token of
    probability 0 adds nothing to the sum and is never chosen; in float32 each token's chance is off by at most
    about one rounding of the running sum (~6e-8). ``torch.multinomial`` draws a random number per vocabulary
    entry on the CPU instead: 12 ms for 8 rows of SmolLM2's 49152 tokens, against ~1 ms here (a float64 sum alone
    took 5 ms)."""
    cdf = probs.float().cumsum(dim=-1)
    total = cdf[:, -1]
    # Strictly below the total once rounded to float32, so that the token found has a positive probability.
    targets = torch.minimum((uniform * total.double()).float(), torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, targets[:, None], right=True).squeeze(1)


def sample_batch(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
    default_generator: torch.Generator | None = None,
) -> StepSample:
    """Choose one token per row of ``logits`` (``[rows, vocab]``). ``generators[i]`` is row ``i``'s own generator
    (a seeded request) or ``None`` (``default_generator`` is used)."""
    logits = logits.float()
    rows = logits.shape[0]
    model_lp = torch.log_softmax(logits, dim=-1)
    temps = [p.temperature if p.temperature > 0 else 1.0 for p in params]
    if all(t == 1.0 for t in temps):
        sampling_lp = model_lp
    else:
        t = torch.tensor(temps, dtype=logits.dtype, device=logits.device)
        sampling_lp = torch.log_softmax(logits / t[:, None], dim=-1)

    tokens = torch.empty(rows, dtype=torch.long, device=logits.device)
    greedy = [i for i, p in enumerate(params) if p.temperature <= 0]
    sampled = [i for i, p in enumerate(params) if p.temperature > 0]
    if len(greedy) == rows:
        tokens = logits.argmax(dim=-1)
    elif greedy:
        idx = torch.tensor(greedy, device=logits.device)
        tokens[idx] = logits.index_select(0, idx).argmax(dim=-1)
    if sampled:
        rows_idx = torch.tensor(sampled, device=logits.device) if len(sampled) < rows else None
        probs = (sampling_lp if rows_idx is None else sampling_lp.index_select(0, rows_idx)).exp()
        sub = [params[i] for i in sampled]
        if any(p.top_p < 1.0 or p.top_k > 0 for p in sub):
            probs = _truncate(probs, [p.top_p for p in sub], [p.top_k for p in sub])
        # One uniform number per row: the shared generator's for most rows, a seeded row's own for that row.
        uniform = torch.empty(len(sampled), dtype=torch.float64, device=logits.device)
        shared = [j for j, i in enumerate(sampled) if generators[i] is None]
        if shared:
            draws = torch.rand(len(shared), dtype=torch.float64, device=logits.device, generator=default_generator)
            uniform[torch.tensor(shared, device=logits.device)] = draws
        for j, i in enumerate(sampled):
            gen = generators[i]
            if gen is not None:
                uniform[j] = torch.rand(1, dtype=torch.float64, device=logits.device, generator=gen)[0]
        chosen = _inverse_cdf(probs, uniform)
        if rows_idx is None:
            tokens = chosen
        else:
            tokens[rows_idx] = chosen

    picked_lp = sampling_lp.gather(1, tokens[:, None]).squeeze(1)
    picked_model_lp = picked_lp if sampling_lp is model_lp else model_lp.gather(1, tokens[:, None]).squeeze(1)
    top: list[list[tuple[int, float]] | None] = [None] * rows
    want = max((p.top_logprobs for p in params), default=0)
    if want > 0:
        values, ids = sampling_lp.topk(want, dim=-1)
        values_l, ids_l = values.tolist(), ids.tolist()
        for i, p in enumerate(params):
            if p.top_logprobs > 0:
                top[i] = list(zip(ids_l[i][: p.top_logprobs], values_l[i][: p.top_logprobs]))
    # One device-to-host transfer (one synchronization on a GPU) for all three; float64 holds token ids exactly.
    token_ids, logprobs, model_logprobs = torch.stack(
        [tokens.to(torch.float64), picked_lp.to(torch.float64), picked_model_lp.to(torch.float64)]
    ).tolist()
    return StepSample(
        tokens=tokens,
        token_ids=[int(t) for t in token_ids],
        logprobs=logprobs,
        model_logprobs=model_logprobs,
        top_logprobs=top,
    )
