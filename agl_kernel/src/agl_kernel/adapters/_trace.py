"""Reading an attempt's spans: the span tree, its LLM calls, and the rewards that apply to each call."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agl_kernel import semconv
from agl_kernel.genai import message_text, to_openai_messages
from agl_kernel.models import Span
from agl_kernel.rewards import Reward, final_reward, step_rewards


@dataclass
class LlmCall:
    """One LLM call span, decoded."""

    span: Span
    operation: str
    agent: str | None
    """``gen_ai.agent.name`` of the call or of its nearest ancestor that has one."""
    ancestors: list[str]
    """Span ids from the parent up to the root (as far as the attempt's spans reach)."""
    prompt_token_ids: list[int] | None = None
    response_token_ids: list[int] | None = None
    response_logprobs: list[float] | None = None
    input_messages: list[dict[str, Any]] | None = None
    output_messages: list[dict[str, Any]] | None = None
    tools: list[Any] | None = None
    step_rewards: list[Reward] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.span.status.status_code == "ERROR"

    @property
    def model(self) -> str | None:
        attributes = self.span.attributes
        return attributes.get(semconv.GEN_AI_RESPONSE_MODEL) or attributes.get(semconv.GEN_AI_REQUEST_MODEL)

    @property
    def step_reward(self) -> float | None:
        return sum(r.value for r in self.step_rewards) if self.step_rewards else None

    def prompt_text(self) -> str | None:
        text = self.span.attributes.get(semconv.LLM_PROMPT_TEXT)
        if isinstance(text, str):
            return text
        if self.input_messages is None:
            return None
        return "\n".join(f"{m.get('role', 'user')}: {message_text(m)}" for m in self.input_messages)

    def response_text(self) -> str | None:
        text = self.span.attributes.get(semconv.LLM_RESPONSE_TEXT)
        if isinstance(text, str):
            return text
        if self.output_messages:
            return message_text(self.output_messages[0])
        return None

    def openai_messages(self) -> list[dict[str, Any]]:
        """The request's messages in OpenAI's format (system instructions first, when given separately)."""
        messages = list(self.input_messages or ())
        instructions = _json_list(self.span.attributes.get(semconv.GEN_AI_SYSTEM_INSTRUCTIONS))
        if instructions:
            messages.insert(0, {"role": "system", "parts": instructions})
        prompt = self.span.attributes.get(semconv.LLM_PROMPT_TEXT)
        if not messages and isinstance(prompt, str):
            messages = [{"role": "user", "parts": [{"type": "text", "content": prompt}]}]
        return to_openai_messages(messages)


@dataclass
class AttemptTrace:
    """The spans of one attempt, with their LLM calls and rewards."""

    spans: list[Span]
    calls: list[LlmCall]
    final: Reward | None
    unknown_steps: list[str]
    """Span ids that per-step rewards name but that are not among the spans."""

    @property
    def rollout_id(self) -> str | None:
        return self.spans[0].rollout_id if self.spans else None

    @property
    def attempt_id(self) -> str | None:
        return self.spans[0].attempt_id if self.spans else None


def latest_attempt(spans: Sequence[Span]) -> list[Span]:
    """The spans of the attempt of the last span (spans come ordered by attempt, then sequence id)."""
    if not spans:
        return []
    attempt_id = spans[-1].attempt_id
    return sorted((s for s in spans if s.attempt_id == attempt_id), key=lambda s: s.sequence_id)


def read_attempt(spans: Sequence[Span]) -> AttemptTrace:
    spans = latest_attempt(spans)
    by_id = {s.span_id: s for s in spans}
    steps = step_rewards(spans)
    calls = []
    for span in spans:
        operation = span.attributes.get(semconv.GEN_AI_OPERATION_NAME)
        if operation not in semconv.LLM_OPERATIONS:
            continue
        ancestors = _ancestors(span, by_id)
        agent = span.attributes.get(semconv.GEN_AI_AGENT_NAME)
        for ancestor in ancestors:
            if agent is not None:
                break
            agent = by_id[ancestor].attributes.get(semconv.GEN_AI_AGENT_NAME) if ancestor in by_id else None
        attributes = span.attributes
        calls.append(
            LlmCall(
                span=span,
                operation=str(operation),
                agent=agent if isinstance(agent, str) else None,
                ancestors=ancestors,
                prompt_token_ids=_int_list(attributes.get(semconv.LLM_PROMPT_TOKEN_IDS)),
                response_token_ids=_int_list(attributes.get(semconv.LLM_RESPONSE_TOKEN_IDS)),
                response_logprobs=_float_list(attributes.get(semconv.LLM_RESPONSE_LOGPROBS)),
                input_messages=_json_list(attributes.get(semconv.GEN_AI_INPUT_MESSAGES)),
                output_messages=_json_list(attributes.get(semconv.GEN_AI_OUTPUT_MESSAGES)),
                tools=_json_list(attributes.get(semconv.GEN_AI_TOOL_DEFINITIONS)),
                step_rewards=[r for sid in (span.span_id, *ancestors) for r in steps.get(sid, ())],
            )
        )
    unknown = [sid for sid in steps if sid not in by_id]
    return AttemptTrace(spans=spans, calls=calls, final=final_reward(spans), unknown_steps=unknown)


def agent_matcher(pattern: str | None) -> re.Pattern[str] | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as err:
        raise ValueError(f"agent_match={pattern!r} is not a valid regular expression: {err}") from None


def _ancestors(span: Span, by_id: dict[str, Span]) -> list[str]:
    chain: list[str] = []
    parent = span.parent_id
    while parent and parent not in chain:
        chain.append(parent)
        parent = by_id[parent].parent_id if parent in by_id else None
    return chain


def _int_list(raw: Any) -> list[int] | None:
    if isinstance(raw, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
        return list(raw)
    return None


def _float_list(raw: Any) -> list[float] | None:
    if isinstance(raw, (list, tuple)) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in raw):
        return [float(x) for x in raw]
    return None


def _json_list(raw: Any) -> list[Any] | None:
    if not isinstance(raw, str):
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, list) else None
