"""Credit rules: a group's rewards → an advantage for every triplet (plugins in ``agl.credit``).

An RL algorithm that compares rollouts of one task (GRPO's *group*) asks a credit rule how much each LLM call of
each rollout should be pushed up or down. A rule sees, for every rollout of the group, its triplets in order
(each with the ``step_reward`` given to that call, ``None`` for none, and the ``reward`` the adapter set: the step
reward plus the final reward where the adapter applies it) and the rollout's ``final_reward``. It returns one
advantage per triplet. Rules are components like any other: picked by name with typed options
(``--set algorithm.credit=discounted --set algorithm.credit_options.gamma=0.9``), and a third party registers its own
in the entry-point group ``agl.credit``.

Built-in rules (advantages are relative to the group: minus its mean, divided by its standard deviation unless
``scale`` is off; a group whose values are all equal gives 0 everywhere):

- ``final``: each rollout's return — its final reward (when unknown, the reward of its last triplet) — compared
  over the group's rollouts, and every triplet of a rollout gets its rollout's advantage (the outcome broadcast).
- ``steps``: each triplet's own ``reward`` (``None`` counts as 0) compared over all triplets of the group.
- ``discounted``: each triplet's discounted return from its step on, ``G_t = r_t + gamma * G_{t+1}`` with ``r_t``
  the triplet's step reward (0 when none) and the final reward added to the last step (for a rollout without step
  rewards, its return as ``final`` reads it), compared over all triplets of the group: an early call that led to
  later rewards shares in them, discounted by distance.
- ``auto`` (the default of algorithms that take a rule): ``steps`` when some triplet of the group has a step reward,
  else ``final``.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import Protocol

import attrs

from agl_kernel.models import Triplet

__all__ = [
    "AutoCredit",
    "CreditRule",
    "DiscountedCredit",
    "FinalCredit",
    "RolloutRewards",
    "StepCredit",
    "relative",
    "rollout_return",
]

_ZERO_STD = 1e-8
"""Values whose standard deviation is below this are all equal: their advantages are 0."""


class RolloutRewards(Protocol):
    """What a rule reads of one rollout (GRPO's ``RolloutSample`` is one)."""

    @property
    def triplets(self) -> Sequence[Triplet]: ...

    @property
    def final_reward(self) -> float | None: ...


class CreditRule(abc.ABC):
    """Turns the rewards of one group of rollouts into advantages."""

    @abc.abstractmethod
    def advantages(self, group: Sequence[RolloutRewards]) -> list[list[float]]:
        """One list per rollout of ``group``, with one advantage per triplet of it, in order."""


def relative(values: Sequence[float], *, scale: bool = True, eps: float = 1e-6) -> list[float]:
    """``(v - mean) / (std + eps)`` for each value (``v - mean`` with ``scale=False``); all 0 when the values are all
    equal (a single value included). ``std`` is the population standard deviation."""
    if not values:
        return []
    numbers = [float(v) for v in values]
    mean = math.fsum(numbers) / len(numbers)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in numbers) / len(numbers))
    if std < _ZERO_STD:
        return [0.0] * len(numbers)
    return [(v - mean) / (std + eps) if scale else v - mean for v in numbers]


def _per_triplet(group: Sequence[RolloutRewards], values: list[list[float]], scale: bool) -> list[list[float]]:
    """``values`` (one per triplet) made relative over every triplet of the group, shaped as the group."""
    flat = relative([v for rollout in values for v in rollout], scale=scale)
    out, start = [], 0
    for rollout in group:
        out.append(flat[start : start + len(rollout.triplets)])
        start += len(rollout.triplets)
    return out


def rollout_return(rollout: RolloutRewards) -> float:
    """The rollout's final reward; when unknown, the reward of its last triplet that has one (else 0)."""
    if rollout.final_reward is not None:
        return float(rollout.final_reward)
    rewards = [t.reward for t in rollout.triplets if t.reward is not None]
    return float(rewards[-1]) if rewards else 0.0


@attrs.define(kw_only=True)
class ScaleOptions:
    """Options of the ``final``, ``steps`` and ``auto`` credit rules."""

    scale: bool = True
    """Divide by the group's standard deviation (``False``: only subtract the mean, as Dr. GRPO does)."""


@attrs.define
class FinalCredit(CreditRule):
    """``final``: the outcome, compared over the group's rollouts, broadcast to every triplet of a rollout."""

    Options = ScaleOptions
    scale: bool = True

    def advantages(self, group: Sequence[RolloutRewards]) -> list[list[float]]:
        per_rollout = relative([rollout_return(r) for r in group], scale=self.scale)
        return [[a] * len(r.triplets) for r, a in zip(group, per_rollout)]


@attrs.define
class StepCredit(CreditRule):
    """``steps``: each triplet's reward (step reward plus the final reward the adapter applied), compared over all
    triplets of the group."""

    Options = ScaleOptions
    scale: bool = True

    def advantages(self, group: Sequence[RolloutRewards]) -> list[list[float]]:
        values = [[t.reward if t.reward is not None else 0.0 for t in r.triplets] for r in group]
        return _per_triplet(group, values, self.scale)


@attrs.define(kw_only=True)
class DiscountedOptions:
    """Options of the ``discounted`` credit rule."""

    gamma: float = attrs.field(default=1.0, validator=[attrs.validators.ge(0.0), attrs.validators.le(1.0)])
    """The discount per step, 0 .. 1 (1: every later reward counts in full; 0: only the step's own)."""
    scale: bool = True
    """Divide by the group's standard deviation (``False``: only subtract the mean)."""


@attrs.define
class DiscountedCredit(CreditRule):
    """``discounted``: each triplet's discounted return from its step on, compared over all triplets of the group."""

    Options = DiscountedOptions
    gamma: float = 1.0
    scale: bool = True

    def advantages(self, group: Sequence[RolloutRewards]) -> list[list[float]]:
        values = []
        for rollout in group:
            rewards = [t.step_reward or 0.0 for t in rollout.triplets]
            if rewards:  # the outcome comes at the last step (the last triplet's reward when no step has one)
                outcome_only = all(t.step_reward is None for t in rollout.triplets)
                rewards[-1] += rollout_return(rollout) if outcome_only else (rollout.final_reward or 0.0)
            returns, running = [0.0] * len(rewards), 0.0
            for i in range(len(rewards) - 1, -1, -1):
                running = rewards[i] + self.gamma * running
                returns[i] = running
            values.append(returns)
        return _per_triplet(group, values, self.scale)


@attrs.define
class AutoCredit(CreditRule):
    """``auto``: ``steps`` when some triplet of the group has a step reward, else ``final``."""

    Options = ScaleOptions
    scale: bool = True

    def advantages(self, group: Sequence[RolloutRewards]) -> list[list[float]]:
        per_step = any(t.step_reward is not None for r in group for t in r.triplets)
        rule: CreditRule = StepCredit(scale=self.scale) if per_step else FinalCredit(scale=self.scale)
        return rule.advantages(group)
