"""An OpenAI-style LLM call as span attributes: the request, the response (or a stream's chunks), usage, token ids
and logprobs. One place for the mapping, used by every writer of LLM spans (the OpenAI client instrumentation,
the LLM proxy), so adapters read them all alike.

Everything here works on JSON-shaped dicts (an HTTP body, or an SDK object's ``model_dump()``). ``operation`` is
``"chat"`` (chat completions) or ``"text_completion"`` (completions). Token ids follow vLLM: ``prompt_token_ids``
on the response or on a choice, ``token_ids`` on each choice (in streams: on the chunks).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agl_kernel import semconv
from agl_kernel.emit import to_json
from agl_kernel.genai import to_genai_messages, to_genai_output

__all__ = ["StreamAccumulator", "request_attributes", "response_attributes", "span_name"]

_NUMERIC = {
    "temperature": semconv.GEN_AI_REQUEST_TEMPERATURE,
    "top_p": semconv.GEN_AI_REQUEST_TOP_P,
    "seed": semconv.GEN_AI_REQUEST_SEED,
    "frequency_penalty": semconv.GEN_AI_REQUEST_FREQUENCY_PENALTY,
    "presence_penalty": semconv.GEN_AI_REQUEST_PRESENCE_PENALTY,
}
_USAGE = {"prompt_tokens": semconv.GEN_AI_USAGE_INPUT_TOKENS, "completion_tokens": semconv.GEN_AI_USAGE_OUTPUT_TOKENS}
# Request keys that get an attribute of their own, or that are transport details rather than the request.
_HANDLED = {"model", "messages", "prompt", "tools", "stop", "n", "stream", "max_tokens", "max_completion_tokens"}
_NOT_RECORDED = {"extra_headers", "extra_query", "timeout"}


def _int_list(value: Any) -> list[int] | None:
    if isinstance(value, (list, tuple)) and value and all(type(x) is int for x in value):
        return list(value)
    return None


def span_name(operation: str, attributes: Mapping[str, Any]) -> str:
    """``chat <model>`` / ``text_completion <model>``, as the GenAI conventions name LLM call spans."""
    return f"{operation} {attributes.get(semconv.GEN_AI_REQUEST_MODEL, '')}".rstrip()


def request_attributes(operation: str, body: Mapping[str, Any], *, provider: str = "openai") -> dict[str, Any]:
    """The request's attributes: model, sampling parameters, messages (GenAI format) or prompt, tools, the rest."""
    given = {k: v for k, v in body.items() if v is not None}
    attributes: dict[str, Any] = {
        semconv.GEN_AI_OPERATION_NAME: operation,
        semconv.GEN_AI_PROVIDER_NAME: provider,
        semconv.GEN_AI_REQUEST_STREAM: bool(given.get("stream")),
    }
    if "model" in given:
        attributes[semconv.GEN_AI_REQUEST_MODEL] = str(given["model"])
    for key, name in _NUMERIC.items():
        if isinstance(given.get(key), (int, float)) and not isinstance(given[key], bool):
            attributes[name] = given[key]
    max_tokens = given.get("max_tokens", given.get("max_completion_tokens"))
    if isinstance(max_tokens, int):
        attributes[semconv.GEN_AI_REQUEST_MAX_TOKENS] = max_tokens
    stop = given.get("stop")
    if isinstance(stop, str):
        attributes[semconv.GEN_AI_REQUEST_STOP_SEQUENCES] = [stop]
    elif isinstance(stop, (list, tuple)) and all(isinstance(s, str) for s in stop):
        attributes[semconv.GEN_AI_REQUEST_STOP_SEQUENCES] = list(stop)
    if isinstance(given.get("n"), int) and given["n"] != 1:
        attributes[semconv.GEN_AI_REQUEST_CHOICE_COUNT] = given["n"]
    if operation == "chat":
        attributes[semconv.GEN_AI_INPUT_MESSAGES] = to_json(to_genai_messages(given.get("messages") or []))
    else:
        prompt = given.get("prompt")
        if isinstance(prompt, str):
            attributes[semconv.LLM_PROMPT_TEXT] = prompt
            attributes[semconv.GEN_AI_INPUT_MESSAGES] = to_json(
                to_genai_messages([{"role": "user", "content": prompt}])
            )
        elif (token_ids := _int_list(prompt)) is not None:  # the prompt given as token ids: recorded as they are
            attributes[semconv.LLM_PROMPT_TOKEN_IDS] = token_ids
    if "tools" in given:
        attributes[semconv.GEN_AI_TOOL_DEFINITIONS] = to_json(given["tools"])
    rest = {k: v for k, v in given.items() if k not in _HANDLED and k not in _NOT_RECORDED and k not in _NUMERIC}
    if rest:
        attributes[semconv.LLM_REQUEST_PARAMS] = to_json(rest)
    return attributes


def _logprobs(operation: str, logprobs: Any) -> list[float] | None:
    if not isinstance(logprobs, Mapping):
        return None
    if operation == "chat":
        content = logprobs.get("content")
        return None if content is None else [float(t["logprob"]) for t in content]
    values = logprobs.get("token_logprobs")
    return None if values is None else [float(v) if v is not None else 0.0 for v in values]


def response_attributes(operation: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """The response's attributes: output messages, finish reasons, usage, and the first choice's text, token ids
    and logprobs."""
    choices = list(body.get("choices") or [])
    first: Mapping[str, Any] = choices[0] if choices else {}
    outputs = []
    for choice in choices:
        message = (
            choice.get("message") or {} if operation == "chat" else {"role": "assistant", "content": choice.get("text")}
        )
        outputs.append(
            to_genai_output({k: v for k, v in message.items() if v is not None}, choice.get("finish_reason"))
        )
    text = (first.get("message") or {}).get("content") if operation == "chat" else first.get("text")
    return _result_attributes(
        response_id=body.get("id"),
        model=body.get("model"),
        usage=body.get("usage"),
        finish_reasons=[c.get("finish_reason") or "" for c in choices],
        outputs=outputs,
        text=text,
        prompt_ids=_int_list(body.get("prompt_token_ids")) or _int_list(first.get("prompt_token_ids")),
        response_ids=_int_list(first.get("token_ids")),
        logprobs=_logprobs(operation, first.get("logprobs")),
    )


def _result_attributes(
    *,
    response_id: Any,
    model: Any,
    usage: Any,
    finish_reasons: list[str],
    outputs: list[dict[str, Any]],
    text: Any,
    prompt_ids: list[int] | None,
    response_ids: list[int] | None,
    logprobs: list[float] | None,
) -> dict[str, Any]:
    attributes: dict[str, Any] = {semconv.GEN_AI_RESPONSE_FINISH_REASONS: finish_reasons}
    if response_id:
        attributes[semconv.GEN_AI_RESPONSE_ID] = str(response_id)
    if model:
        attributes[semconv.GEN_AI_RESPONSE_MODEL] = str(model)
    if isinstance(usage, Mapping):
        for field, name in _USAGE.items():
            if isinstance(usage.get(field), int):
                attributes[name] = usage[field]
    attributes[semconv.GEN_AI_OUTPUT_MESSAGES] = to_json(outputs)
    if isinstance(text, str):
        attributes[semconv.LLM_RESPONSE_TEXT] = text
    if prompt_ids is not None:
        attributes[semconv.LLM_PROMPT_TOKEN_IDS] = prompt_ids
    if response_ids is not None:
        attributes[semconv.LLM_RESPONSE_TOKEN_IDS] = response_ids
    if logprobs is not None:
        attributes[semconv.LLM_RESPONSE_LOGPROBS] = logprobs
    return attributes


class StreamAccumulator:
    """What the chunks of a streamed response add up to, choice by choice; :meth:`attributes` as for a whole
    response. ``first_chunk_at`` is set by the caller's clock when it wants the time to first chunk recorded."""

    def __init__(self, operation: str) -> None:
        self.operation = operation
        self.response_id: Any = None
        self.model: Any = None
        self.usage: Any = None
        self.prompt_ids: list[int] | None = None
        self.choices: dict[int, dict[str, Any]] = {}
        self.chunks = 0

    def add(self, chunk: Mapping[str, Any]) -> None:
        self.chunks += 1
        self.response_id = self.response_id or chunk.get("id")
        self.model = self.model or chunk.get("model")
        self.usage = chunk.get("usage") or self.usage
        self.prompt_ids = self.prompt_ids or _int_list(chunk.get("prompt_token_ids"))
        for choice in chunk.get("choices") or ():
            state = self.choices.setdefault(
                choice.get("index", 0),
                {"text": [], "role": "assistant", "calls": {}, "finish": None, "ids": None, "logprobs": None},
            )
            self.prompt_ids = self.prompt_ids or _int_list(choice.get("prompt_token_ids"))
            if self.operation == "chat":
                self._add_delta(state, choice.get("delta"))
            elif isinstance(choice.get("text"), str):
                state["text"].append(choice["text"])
            ids = _int_list(choice.get("token_ids"))
            if ids is not None:
                state["ids"] = (state["ids"] or []) + ids
            logprobs = _logprobs(self.operation, choice.get("logprobs"))
            if logprobs is not None:
                state["logprobs"] = (state["logprobs"] or []) + logprobs
            if choice.get("finish_reason"):
                state["finish"] = choice["finish_reason"]

    @staticmethod
    def _add_delta(state: dict[str, Any], delta: Any) -> None:
        if not isinstance(delta, Mapping):
            return
        if delta.get("role"):
            state["role"] = delta["role"]
        if isinstance(delta.get("content"), str):
            state["text"].append(delta["content"])
        for call in delta.get("tool_calls") or ():
            slot = state["calls"].setdefault(call.get("index", 0), {"id": None, "name": "", "arguments": ""})
            slot["id"] = call.get("id") or slot["id"]
            function = call.get("function") or {}
            slot["name"] += function.get("name") or ""
            slot["arguments"] += function.get("arguments") or ""

    def attributes(self) -> dict[str, Any]:
        outputs = []
        for _, state in sorted(self.choices.items()):
            message: dict[str, Any] = {"role": state["role"], "content": "".join(state["text"]) or None}
            if state["calls"]:
                message["tool_calls"] = [
                    {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                    for _, c in sorted(state["calls"].items())
                ]
            outputs.append(to_genai_output(message, state["finish"]))
        first = self.choices[min(self.choices)] if self.choices else None
        return _result_attributes(
            response_id=self.response_id,
            model=self.model,
            usage=self.usage,
            finish_reasons=[state["finish"] or "" for _, state in sorted(self.choices.items())],
            outputs=outputs,
            text="".join(first["text"]) if first is not None else None,
            prompt_ids=self.prompt_ids,
            response_ids=first["ids"] if first is not None else None,
            logprobs=first["logprobs"] if first is not None else None,
        )
