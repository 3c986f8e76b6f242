"""Request bodies of the OpenAI-compatible API (msgspec), their validation, and OpenAI-style errors.

Unknown fields are ignored (clients send many); fields we accept but cannot honour with a non-default value
(``presence_penalty``, ``logit_bias``, ``echo``, ...) are a 400 that says so, rather than silently wrong output.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from agl_kernel.errors import AglError

__all__ = [
    "ApiError",
    "ChatRequest",
    "CompletionRequest",
    "WeightsRequest",
    "decode_body",
    "error_payload",
]


class ApiError(AglError):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}`` with ``status``."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")


def error_payload(err: ApiError) -> dict[str, Any]:
    return {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}


class StreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class _Common(msgspec.Struct, kw_only=True):
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    n: int = 1
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # vLLM's extensions
    return_token_ids: bool = False
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    min_tokens: int = 0
    priority: int = 0
    """Lower is admitted first when requests wait for room in the batch (vLLM's priority scheduling)."""


class ChatRequest(_Common, kw_only=True):
    messages: list[dict[str, Any]]
    logprobs: bool = False
    top_logprobs: int | None = None
    max_completion_tokens: int | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_format: Any = None
    parallel_tool_calls: Any = None


class CompletionRequest(_Common, kw_only=True):
    prompt: Any
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    add_special_tokens: bool = True


class WeightsRequest(msgspec.Struct, kw_only=True):
    path: str
    partial: bool = False
    version: int | None = None


_PATH = re.compile(r"at `\$\.?([^`]*)`")


def decode_body(body: bytes, kind: type) -> Any:
    """Decode a JSON body into ``kind``; a malformed or mistyped body is a 400 naming the field."""
    if not body:
        raise ApiError("The request body is empty: send a JSON object.", code="invalid_json")
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as err:
        text = str(err)
        found = _PATH.search(text)
        param = found.group(1) if found else None
        if text.startswith("Object missing required field"):
            field = text.split("`")[1] if "`" in text else None
            raise ApiError(f"The request needs the field {field!r}.", param=field, code="missing_field") from err
        raise ApiError(f"Invalid request: {text}", param=param or None, code="invalid_value") from err
    except msgspec.DecodeError as err:
        raise ApiError(f"The request body is not valid JSON: {err}", code="invalid_json") from err


def check_common(req: _Common) -> None:
    """Range checks shared by both endpoints."""
    if req.n < 1 or req.n > 128:
        raise ApiError("`n` must be between 1 and 128.", param="n")
    if req.temperature is not None and not 0.0 <= req.temperature <= 100.0:
        raise ApiError("`temperature` must be between 0 and 100 (0 = greedy).", param="temperature")
    if req.top_p is not None and not 0.0 < req.top_p <= 1.0:
        raise ApiError("`top_p` must be in (0, 1].", param="top_p")
    if req.top_k is not None and (req.top_k < -1):
        raise ApiError("`top_k` must be -1 or 0 (no limit) or a positive number of tokens.", param="top_k")
    if req.max_tokens is not None and req.max_tokens < 1:
        raise ApiError("`max_tokens` must be at least 1.", param="max_tokens")
    if isinstance(req.stop, list) and len(req.stop) > 16:
        raise ApiError("At most 16 stop strings.", param="stop")
    if req.stream_options is not None and not req.stream:
        raise ApiError("`stream_options` is only allowed with `stream: true`.", param="stream_options")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name) not in (None, 0, 0.0):
            raise ApiError(f"`{name}` is not supported by this server; leave it out or set it to 0.", param=name)
    if req.repetition_penalty not in (None, 1, 1.0):
        raise ApiError(
            "`repetition_penalty` is not supported; leave it out or set it to 1.", param="repetition_penalty"
        )
    if req.logit_bias:
        raise ApiError("`logit_bias` is not supported by this server.", param="logit_bias")
    if req.min_tokens:
        raise ApiError("`min_tokens` is not supported by this server.", param="min_tokens")


def stop_list(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def completion_prompts(prompt: Any) -> list[str | list[int]]:
    """``prompt`` as a list of prompts, each a string or a list of token ids (OpenAI's four shapes)."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            return [list(prompt)]

        def one(p: Any) -> bool:
            return isinstance(p, str) or (
                isinstance(p, list) and bool(p) and all(isinstance(t, int) and not isinstance(t, bool) for t in p)
            )

        if all(one(p) for p in prompt):
            return [p if isinstance(p, str) else list(p) for p in prompt]
    raise ApiError(
        "`prompt` must be a non-empty string, a list of token ids, a list of strings or a list of lists of token ids.",
        param="prompt",
    )
