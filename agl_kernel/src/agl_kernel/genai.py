"""Chat messages in the two shapes agl meets: OpenAI's chat format and the OpenTelemetry GenAI message format.

LLM call spans store messages the GenAI way (``gen_ai.input.messages`` / ``gen_ai.output.messages``: a ``role``
and a list of typed ``parts``), so spans from any GenAI instrumentation read alike; adapters hand them back in
OpenAI's format, which training and prompt optimization consume. The two functions are inverses for text, tool
calls, tool results and image URLs; other parts are carried through as they are.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["json_or_text", "message_text", "to_genai_messages", "to_genai_output", "to_openai_messages"]


def _text_parts(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    parts: list[dict[str, Any]] = []
    for part in content if isinstance(content, Iterable) else [content]:
        if not isinstance(part, Mapping):
            parts.append({"type": "text", "content": str(part)})
            continue
        kind = part.get("type")
        if kind == "text":
            parts.append({"type": "text", "content": part.get("text", "")})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, Mapping) else image
            parts.append({"type": "uri", "modality": "image", "uri": url})
        else:
            parts.append(dict(part))
    return parts


def json_or_text(raw: Any) -> Any:
    """A JSON string decoded (tool-call arguments, message attributes); anything else, or invalid JSON, as is."""
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


def to_genai_messages(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI chat messages (``{"role", "content", "tool_calls", "tool_call_id", "name"}``) as GenAI messages."""
    converted = []
    for message in messages:
        if not isinstance(message, Mapping):  # an SDK object (pydantic) given instead of a dict
            dump = getattr(message, "model_dump", None)
            message = dump(exclude_none=True) if callable(dump) else {"role": "user", "content": str(message)}
        role = message.get("role", "user")
        if role == "tool":
            parts: list[dict[str, Any]] = [
                {"type": "tool_call_response", "id": message.get("tool_call_id"), "response": message.get("content")}
            ]
        else:
            parts = _text_parts(message.get("content"))
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            parts.append(
                {
                    "type": "tool_call",
                    "id": call.get("id"),
                    "name": function.get("name"),
                    "arguments": json_or_text(function.get("arguments")),
                }
            )
        out: dict[str, Any] = {"role": role, "parts": parts}
        if message.get("name"):
            out["name"] = message["name"]
        converted.append(out)
    return converted


def to_genai_output(message: Mapping[str, Any], finish_reason: str | None) -> dict[str, Any]:
    """One choice's assistant message as a GenAI output message (with its ``finish_reason``)."""
    [converted] = to_genai_messages([message])
    converted["finish_reason"] = finish_reason or "stop"
    return converted


def to_openai_messages(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """GenAI messages back in OpenAI's chat format (``finish_reason`` is dropped)."""
    converted = []
    for message in messages:
        role = message.get("role", "user")
        texts: list[dict[str, Any]] = []
        calls: list[dict[str, Any]] = []
        for part in message.get("parts") or ():
            kind = part.get("type")
            if kind == "text":
                texts.append({"type": "text", "text": part.get("content", "")})
            elif kind == "uri" and part.get("modality") == "image":
                texts.append({"type": "image_url", "image_url": {"url": part.get("uri")}})
            elif kind == "tool_call":
                arguments = part.get("arguments")
                calls.append(
                    {
                        "id": part.get("id"),
                        "type": "function",
                        "function": {
                            "name": part.get("name"),
                            "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
                        },
                    }
                )
            elif kind == "tool_call_response":
                response = part.get("response")
                converted.append(
                    {
                        "role": "tool",
                        "tool_call_id": part.get("id"),
                        "content": response if isinstance(response, str) else json.dumps(response),
                    }
                )
            else:
                texts.append(dict(part))
        if role == "tool" and not texts and not calls:
            continue  # its tool results were added above
        out: dict[str, Any] = {"role": role}
        if len(texts) == 1 and texts[0].get("type") == "text":
            out["content"] = texts[0]["text"]
        else:
            out["content"] = texts or None
        if calls:
            out["tool_calls"] = calls
        if message.get("name"):
            out["name"] = message["name"]
        converted.append(out)
    return converted


def message_text(message: Mapping[str, Any]) -> str:
    """The text of a GenAI message (its text parts, joined)."""
    return "".join(p.get("content", "") for p in message.get("parts") or () if p.get("type") == "text")
