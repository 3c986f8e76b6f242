"""A rollout's spans as a trajectory a person (or the optimizer LLM) can read: the conversation with the model,
the tool calls and operations, errors, and the reward."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from agl_kernel import semconv
from agl_kernel.adapters import read_attempt
from agl_kernel.genai import to_openai_messages
from agl_kernel.models import Span

__all__ = ["render_trajectory"]


def _clip(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 15] + " …[truncated]"


def _content(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _message_lines(message: dict[str, Any], limit: int) -> list[str]:
    role = message.get("role", "?")
    lines = []
    text = _content(message)
    if text or not message.get("tool_calls"):
        lines.append(f"{role}: {_clip(text, limit)}")
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        lines.append(
            f"{role} → tool call {function.get('name', '?')}({_clip(str(function.get('arguments', '')), limit)})"
        )
    return lines


def _attribute_text(value: Any, limit: int) -> str:
    if not isinstance(value, str):
        value = json.dumps(value, default=str)
    return _clip(value, limit)


def render_trajectory(
    spans: Sequence[Span],
    *,
    task: Any,
    reward: float | None,
    status: str,
    message_chars: int = 600,
    max_chars: int = 4000,
) -> str:
    """The latest attempt's trajectory, in order: each LLM call's new messages and reply, operations (tools) with
    their input and output, exceptions; then the status and reward."""
    trace = read_attempt(spans)
    calls = {call.span.span_id: call for call in trace.calls}
    lines = [f"Task: {_attribute_text(task, message_chars)}"]
    shown: list[dict[str, Any]] = []  # the conversation so far, to print only what each call adds
    for span in trace.spans:
        call = calls.get(span.span_id)
        if call is not None:
            messages = call.openai_messages()
            replies = to_openai_messages(call.output_messages[:1]) if call.output_messages else []
            if not replies and call.response_text() is not None:
                replies = [{"role": "assistant", "content": call.response_text()}]
            if call.failed:
                replies = [{"role": "assistant", "content": f"(the call failed: {span.status.description or 'error'})"}]
            start = len(shown) if shown and messages[: len(shown)] == shown else 0
            if start == 0 and shown:
                lines.append("(a new conversation)")
            for message in messages[start:] + replies:
                lines.extend(_message_lines(message, message_chars))
            shown = messages + replies
            continue
        attributes = span.attributes
        if semconv.OPERATION_NAME in attributes:
            name = attributes[semconv.OPERATION_NAME]
            given = _attribute_text(attributes.get(semconv.OPERATION_INPUT, ""), message_chars)
            output = _attribute_text(attributes.get(semconv.OPERATION_OUTPUT, ""), message_chars)
            lines.append(f"operation {name}({given}) → {output}")
        elif span.name == semconv.EXCEPTION_SPAN:
            kind = attributes.get(semconv.EXCEPTION_TYPE, "Exception")
            lines.append(f"error: {kind}: {_clip(str(attributes.get(semconv.EXCEPTION_MESSAGE, '')), message_chars)}")
    if len(lines) == 1:
        lines.append("(no LLM call or operation was recorded)")
    shown_reward = "none" if reward is None else f"{reward:g}"
    lines.append(f"Outcome: {status}, reward {shown_reward}")
    text = "\n".join(lines)
    if len(text) > max_chars:  # keep the start (the task, the instructions) and the end (the answer, the reward)
        head = max_chars // 2
        text = text[:head] + "\n…[middle of the trajectory left out]…\n" + text[-(max_chars - head - 40) :]
    return text
