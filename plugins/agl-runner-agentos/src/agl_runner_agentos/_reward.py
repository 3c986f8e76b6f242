"""``PolicyReward``: an attempt's task reward combined with penalties for its denied tool calls.

The arithmetic (defaults as in Agent Lightning's Agent-OS contrib):

    total = task + sum(penalty[severity] for each denied call) + (clean_bonus if no call was denied)

clamped to ``[min_reward, max_reward]`` when those are set. The runner emits each penalty as a per-step reward
(``emit_reward(penalty, step=...)``) on the LLM call that asked for the denied tool (or on the decision's span when
no LLM call was recorded), so a per-step credit rule sees where the violation happened, and then the total as the
attempt's final reward, with its parts named (``task``, ``policy``, ``total``), so every consumer of the final
reward (APO, outcome-reward GRPO, ``agl rollouts``) sees the penalty. An adapter that adds a call's step rewards
to the final reward counts the penalty twice on that call: set ``reward.per_step = false`` to emit only the total.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from agl_runner_agentos._policy import ToolDecision

__all__ = ["PolicyReward", "PolicyRewardOptions", "RewardParts"]


@attrs.define(kw_only=True)
class PolicyRewardOptions:
    """How denied tool calls change an attempt's reward (``[runner.reward]`` in a run file)."""

    enabled: bool = True
    """Combine the agent's reward with the penalties and bonus (false: the agent's reward is kept as it is)."""
    critical: float = -100.0
    """Penalty for each denied call of a critical rule."""
    high: float = -50.0
    """Penalty for each denied call of a high-severity rule."""
    medium: float = -10.0
    """Penalty for each denied call of a medium-severity rule."""
    low: float = -1.0
    """Penalty for each denied call of a low-severity rule."""
    clean_bonus: float = 5.0
    """Added when no tool call of the attempt was denied."""
    min_reward: float | None = None
    """Lowest total (unset: no floor)."""
    max_reward: float | None = None
    """Highest total (unset: no ceiling)."""
    per_step: bool = True
    """Also emit each penalty as a per-step reward on the LLM call that asked for the denied tool."""


@attrs.frozen(kw_only=True)
class RewardParts:
    """One attempt's reward, in parts."""

    task: float
    penalties: tuple[float, ...]
    bonus: float
    total: float

    @property
    def policy(self) -> float:
        """What the policy added: the penalties and the bonus."""
        return sum(self.penalties) + self.bonus


class PolicyReward:
    """Turns an attempt's decisions into penalties and combines them with its task reward.

    ``PolicyReward()`` has Agent Lightning's defaults; ``PolicyReward(critical=-1, clean_bonus=0)`` or
    ``PolicyReward.from_options(PolicyRewardOptions(...))`` changes them.
    """

    def __init__(self, options: PolicyRewardOptions | None = None, **overrides: float | bool | None) -> None:
        changes: dict[str, Any] = dict(overrides)
        self.options = attrs.evolve(options or PolicyRewardOptions(), **changes)

    @classmethod
    def from_options(cls, options: PolicyRewardOptions) -> PolicyReward:
        return cls(options)

    @property
    def enabled(self) -> bool:
        return self.options.enabled

    def penalty(self, severity: str | None) -> float:
        """The penalty for one denied call of ``severity`` (an unknown or missing severity counts as high)."""
        if severity in ("critical", "high", "medium", "low"):
            value: float = getattr(self.options, severity)
            return value
        return self.options.high

    def combine(self, task: float | None, decisions: Sequence[ToolDecision]) -> RewardParts:
        """The attempt's reward from its task reward (``None`` counts as 0) and its tool-call decisions."""
        base = float(task or 0.0)
        penalties = tuple(self.penalty(d.severity) for d in decisions if not d.allowed)
        bonus = self.options.clean_bonus if not penalties else 0.0
        total = base + sum(penalties) + bonus
        if self.options.min_reward is not None:
            total = max(total, self.options.min_reward)
        if self.options.max_reward is not None:
            total = min(total, self.options.max_reward)
        return RewardParts(task=base, penalties=penalties, bonus=bonus, total=total)

    def __call__(self, task: float | None, decisions: Sequence[ToolDecision]) -> float:
        return self.combine(task, decisions).total
