"""Reading rewards back from spans: the final reward of an attempt, and per-step rewards.

A reward is an ``agl.reward`` span (see :mod:`agl_kernel.semconv`); ``emit_reward`` writes them, and runners write
one for the value an agent returns. A reward with ``agl.reward.step_span_id`` is credit for one step (an LLM call
or an operation); any other reward is a reward of the whole attempt, and the **last** of those (in sequence
order) is its final reward.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from agl_kernel import semconv
from agl_kernel.models import Span

__all__ = ["Reward", "final_reward", "get_reward", "read_reward", "read_rewards", "step_rewards"]


class Reward(msgspec.Struct, frozen=True, kw_only=True):
    """One reward span, decoded."""

    value: float
    """The primary value (the only one, for a plain reward)."""
    values: dict[str, float] = {}
    """Every named value, for a reward emitted as a dict."""
    primary: str | None = None
    step_span_id: str | None = None
    """The step it is credit for; ``None`` for a reward of the whole attempt."""
    span_id: str = ""
    sequence_id: int = 0


def read_reward(span: Span) -> Reward | None:
    """The reward ``span`` carries, or ``None`` when it is not a reward span (or carries no usable value)."""
    if span.name != semconv.REWARD_SPAN:
        return None
    attributes = span.attributes
    value = _number(attributes.get(semconv.REWARD_VALUE))
    prefix = semconv.REWARD_NAMED_PREFIX
    values: dict[str, float] = {}
    for key, raw in attributes.items():
        named = _number(raw) if key.startswith(prefix) else None
        if named is not None:
            values[key[len(prefix) :]] = named
    primary = attributes.get(semconv.REWARD_PRIMARY)
    if value is None and isinstance(primary, str):
        value = values.get(primary)
    if value is None:
        return None
    step = attributes.get(semconv.REWARD_STEP_SPAN_ID)
    return Reward(
        value=value,
        values=values,
        primary=primary if isinstance(primary, str) else None,
        step_span_id=step if isinstance(step, str) and step else None,
        span_id=span.span_id,
        sequence_id=span.sequence_id,
    )


def read_rewards(spans: Iterable[Span]) -> list[Reward]:
    """Every reward among ``spans``, in the order given."""
    return [reward for span in spans for reward in [read_reward(span)] if reward is not None]


def final_reward(spans: Sequence[Span]) -> Reward | None:
    """The attempt's final reward: the last reward (in the order given) that is not for a single step."""
    for span in reversed(spans):
        reward = read_reward(span)
        if reward is not None and reward.step_span_id is None:
            return reward
    return None


def step_rewards(spans: Iterable[Span]) -> dict[str, list[Reward]]:
    """Per-step rewards by the span id of the step they are for."""
    by_step: dict[str, list[Reward]] = {}
    for reward in read_rewards(spans):
        if reward.step_span_id is not None:
            by_step.setdefault(reward.step_span_id, []).append(reward)
    return by_step


async def get_reward(store: Any, rollout_id: str, attempt_id: str = "latest") -> float | None:
    """The final reward of a rollout's attempt (default: its newest), or ``None`` when it has none."""
    spans = await store.query_spans(rollout_id, attempt_id, name=semconv.REWARD_SPAN)
    reward = final_reward(spans.items)
    return None if reward is None else reward.value


def _number(raw: Any) -> float | None:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        return None
    value = float(raw)
    return value if math.isfinite(value) else None
