"""Spans → chat samples: each LLM call as OpenAI-format messages with its reply and reward (prompt optimization,
supervised fine-tuning, inspection)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import msgspec

from agl_kernel.adapter import Adapter
from agl_kernel.adapters._trace import agent_matcher, read_attempt
from agl_kernel.genai import to_openai_messages
from agl_kernel.models import Span

__all__ = ["ChatSample", "MessagesAdapter"]


class ChatSample(msgspec.Struct, frozen=True, kw_only=True):
    """One LLM call in OpenAI's fine-tuning format: the request's ``messages`` followed by the model's reply."""

    messages: list[dict[str, Any]]
    tools: list[Any] | None = None
    reward: float | None = None
    """The call's per-step rewards plus the attempt's final reward (``None`` when it has neither)."""
    model: str | None = None
    agent: str | None = None
    rollout_id: str | None = None
    attempt_id: str | None = None
    span_id: str | None = None


@attrs.define(kw_only=True)
class MessagesAdapterOptions:
    """Options of the chat messages adapter (``messages``)."""

    agent_match: str | None = None
    """Only LLM calls of agents whose name matches this regular expression (default: every call)."""


class MessagesAdapter(Adapter[list[ChatSample]]):
    """One :class:`ChatSample` per successful LLM call of the attempt, in order.

    ``agent_match``: as for :class:`~agl_kernel.adapters.TripletAdapter`, a regular expression on the agent name.
    """

    Options = MessagesAdapterOptions

    def __init__(self, *, agent_match: str | None = None) -> None:
        self.agent_match = agent_match
        self._agent = agent_matcher(agent_match)

    def adapt(self, spans: Sequence[Span]) -> list[ChatSample]:
        trace = read_attempt(spans)
        final = trace.final.value if trace.final is not None else None
        samples = []
        for call in trace.calls:
            if call.failed or (self._agent is not None and (call.agent is None or not self._agent.search(call.agent))):
                continue
            replies = call.output_messages[:1] if call.output_messages else []
            if not replies and call.response_text() is not None:
                replies = [{"role": "assistant", "parts": [{"type": "text", "content": call.response_text()}]}]
            rewards = [r for r in (call.step_reward, final) if r is not None]
            samples.append(
                ChatSample(
                    messages=call.openai_messages() + to_openai_messages(replies),
                    tools=call.tools,
                    reward=sum(rewards) if rewards else None,
                    model=call.model,
                    agent=call.agent,
                    rollout_id=call.span.rollout_id,
                    attempt_id=call.span.attempt_id,
                    span_id=call.span.span_id,
                )
            )
        return samples
