"""The pure mathematics of GRPO: group-relative advantages, per-token logprobs, the clipped policy loss and the
truncated importance weights of asynchronous GRPO."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import torch

from agl_kernel.credit import relative

__all__ = ["group_advantages", "importance_weights", "policy_loss", "token_logprobs"]


def group_advantages(
    rewards: Sequence[float], groups: Sequence[Hashable], *, scale: bool = True, eps: float = 1e-6
) -> list[float]:
    """Each reward relative to its group: ``(r - mean) / (std + eps)``, or ``r - mean`` with ``scale=False``.

    ``std`` is the population standard deviation of the group (ddof 0, so a group of one is defined). A group with
    zero variance (every member scored the same, a group of one included) gets advantage 0 for every member.
    ``groups[i]`` names the group of ``rewards[i]`` (e.g. the task's index in the batch).
    """
    if len(rewards) != len(groups):
        raise ValueError(f"{len(rewards)} rewards but {len(groups)} group labels")
    members: dict[Hashable, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    advantages = [0.0] * len(rewards)
    for indices in members.values():
        for i, value in zip(indices, relative([rewards[i] for i in indices], scale=scale, eps=eps)):
            advantages[i] = value
    return advantages


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log p(targets)`` under ``softmax(logits / temperature)``, per position (``logits``: ``[..., V]``,
    ``targets``: ``[...]``), in float32, without materialising the full log-softmax."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def policy_loss(
    new_logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    ref_logps: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    normalizer: float | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped policy-gradient loss, a token-level mean over the completion tokens (``mask`` 1).

    Per token: ``ratio = exp(new - old)``; ``pg = max(-A·ratio, -A·clip(ratio, 1 - clip_low, 1 + clip_high))``;
    plus ``kl_coef · k3`` with ``k3 = exp(ref - new) - (ref - new) - 1`` when ``ref_logps`` is given. The loss is the
    sum over masked tokens divided by ``normalizer`` (default: their count), so micro-batches of one optimizer step
    can share one normaliser and add up to the exact token mean of the step.

    ``weights`` (``[B, T]``, no gradient) multiply each token's clipped term: the behaviour-policy correction of
    asynchronous GRPO, the *decoupled* PPO objective (Hilton et al., "Batch size-invariance for policy
    optimization", 2022; used for stale rollouts by AReaL, Fu et al., 2025). For a token sampled by an older policy
    ``π_behav``, ``old_logps`` are then those of the *proximal* policy ``π_prox`` (the weights at the start of this
    update) and ``weights`` are ``min(π_prox / π_behav, C)`` (:func:`importance_weights`): the ratio is clipped
    around ``π_prox``, so a stale sample still moves the policy by at most the usual trust region, and the weight
    corrects the expectation from ``π_behav``'s samples to ``π_prox``'s. ``None`` (every sample fresh): the plain
    loss, exactly.

    Shapes: ``new_logps``, ``old_logps``, ``mask`` (and ``ref_logps``) ``[B, T]``; ``advantages`` ``[B]`` (one per
    sequence) or ``[B, T]``. Metrics (token means over the masked tokens of these inputs, whatever the
    ``normalizer``): ``pg_loss``, ``kl`` (to the reference, if any),
    ``approx_kl`` (old → new, k3), ``clip_fraction`` (tokens whose gradient the clip removed), ``ratio_mean``,
    ``ratio_max`` and ``tokens``.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    advantages = advantages.to(new_logps.dtype).expand_as(new_logps)
    mask = mask.to(new_logps.dtype)
    count = mask.sum()
    denominator: Any = count.clamp(min=1.0) if normalizer is None else float(normalizer)

    log_ratio = new_logps - old_logps.to(new_logps.dtype)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    if weights is not None:
        per_token = per_token * weights.to(per_token.dtype)
    pg_loss = (per_token * mask).sum() / denominator

    kl_value = None
    loss = pg_loss
    if ref_logps is not None:
        delta = ref_logps.to(new_logps.dtype) - new_logps
        k3 = torch.exp(delta) - delta - 1.0
        kl_value = (k3 * mask).sum() / denominator
        if kl_coef:
            loss = loss + kl_coef * kl_value

    with torch.no_grad():
        n = count.clamp(min=1.0)
        was_clipped = ((ratio < 1.0 - clip_low) & (advantages < 0)) | ((ratio > 1.0 + clip_high) & (advantages > 0))
        metrics = {
            "pg_loss": float((per_token * mask).sum() / n),
            "approx_kl": float((((ratio - 1.0) - log_ratio) * mask).sum() / n),
            "clip_fraction": float((was_clipped.to(mask.dtype) * mask).sum() / n),
            "ratio_mean": float((ratio * mask).sum() / n),
            "ratio_max": float(torch.where(mask > 0, ratio, torch.zeros_like(ratio)).max()) if count > 0 else 1.0,
            "tokens": float(count),
        }
        if kl_value is not None:
            metrics["kl"] = float((k3 * mask).sum() / n)
    return loss, metrics


def importance_weights(
    proximal_logps: torch.Tensor, behaviour_logps: torch.Tensor, mask: torch.Tensor, *, cap: float = 2.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated importance weights of tokens sampled by a behaviour policy older than the proximal one:
    ``w = min(exp(proximal - behaviour), cap)`` per token (1 outside ``mask``), as truncated importance sampling
    does (Ionides, "Truncated importance sampling", 2008; the truncated ratio ``ρ̄`` of IMPALA's V-trace, Espeholt
    et al., 2018): capping the ratio bounds the variance a token the old policy found unlikely would bring, at the
    price of a small bias. Returns ``(weights, truncated)``: ``truncated`` is 1.0 on the masked tokens whose ratio
    was above ``cap``. Computed without gradient (the weights are constants of the loss)."""
    with torch.no_grad():
        mask = mask.to(torch.float32)
        ratio = torch.exp(proximal_logps.float() - behaviour_logps.float())
        truncated = (ratio > cap).to(torch.float32) * mask
        weights = torch.where(mask > 0, ratio.clamp(max=cap), torch.ones_like(ratio))
    return weights, truncated
