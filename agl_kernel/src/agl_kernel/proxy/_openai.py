"""The OpenAI API as the proxy speaks it: the paths, the shape of a request, and the error body. Only the shape the
proxy and every backend rely on is checked, so that a malformed request gets a 400 naming the field instead of
reaching a backend (where it might break the connection); the backend judges the values (an unknown model, ...)."""

import json
from typing import Any

from agl_kernel.errors import AglError


class ProxyError(AglError):
    """A call the proxy refuses or cannot complete: ``status`` and an OpenAI-style error ``type``."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.kind, self.param = status, kind, param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.status}}


# Relative to a base URL ending in /v1: an attempt's on the proxy and a backend's alike.
OPERATION_PATHS = {"chat": "/chat/completions", "text_completion": "/completions"}
MODELS_PATH = "/models"

# Optional top-level fields: (the types a value may have, what to call them). Booleans are not numbers here.
_FIELDS: dict[str, tuple[Any, str]] = {
    "model": (str, "a string"),
    "stream": (bool, "true or false"),
    "stream_options": (dict, "an object"),
    **dict.fromkeys(("max_tokens", "max_completion_tokens", "n", "seed", "top_k"), (int, "an integer")),
    **dict.fromkeys(("temperature", "top_p", "presence_penalty", "frequency_penalty"), ((int, float), "a number")),
}
_MESSAGE_FIELDS: dict[str, tuple[Any, str]] = {
    "content": ((str, list), "a string, a list of content parts or null"),
    **dict.fromkeys(("name", "tool_call_id"), (str, "a string")),
}


def parse_request(operation: str, raw: bytes, *, token_ids: bool, logprobs: bool) -> dict[str, Any]:
    """The body to forward: ``raw`` checked (:func:`check_request`), asking for token ids and logprobs unless the
    agent set them, and for a stream's usage."""
    try:
        body: dict[str, Any] = json.loads(raw)  # a dict once check_request passes
    except ValueError as exc:
        raise ProxyError(400, f"the request body is not valid JSON: {exc}") from exc
    check_request(operation, body)
    if token_ids:
        body.setdefault("return_token_ids", True)
    if logprobs and "logprobs" not in body:
        body["logprobs"] = True if operation == "chat" else 0
    if body.get("stream"):
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    return body


def check_request(operation: str, body: Any) -> None:
    """Refuse (400, naming the field) a body that does not have the shape of an OpenAI ``chat`` or
    ``text_completion`` request."""
    if not isinstance(body, dict):
        raise ProxyError(400, f"the request body must be a JSON object, not {_type_name(body)}")
    if operation == "chat":
        _check_messages(body)
    else:
        _check_prompt(body)
    _check_fields(body, _FIELDS)
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str) and not _is_list_of(stop, str):
        raise _refuse("stop", "must be a string or a list of strings")
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise _refuse("tools", f"must be a list of tool objects, not {_type_name(tools)}")
    _check_objects("tools", tools or [])


def _check_messages(body: dict[str, Any]) -> None:
    if "messages" not in body:
        raise _refuse("messages", "is missing: a chat completion needs a list of messages")
    messages = body["messages"]
    if not isinstance(messages, list):
        example = '[{"role": "user", "content": "hi"}]'
        raise _refuse("messages", f"must be a list of messages such as {example}, not {_type_name(messages)}")
    if not messages:
        raise _refuse("messages", "must hold at least one message")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _refuse(where, f"must be an object with a role and a content, not {_type_name(message)}")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise _refuse(f"{where}.role", f'must be a string such as "user", not {_type_name(role)}')
        _check_fields(message, _MESSAGE_FIELDS, f"{where}.")
        if isinstance(message.get("content"), list):
            _check_objects(f"{where}.content", message["content"], ' such as {"type": "text", "text": "hi"}')
        if message.get("tool_calls") is not None and not _is_list_of(message["tool_calls"], dict):
            raise _refuse(f"{where}.tool_calls", "must be a list of objects")


def _check_prompt(body: dict[str, Any]) -> None:
    if "prompt" not in body:
        raise _refuse("prompt", "is missing: a completion needs a prompt")
    prompt = body["prompt"]
    shape = "must be a string, a list of strings, a list of token ids or a list of lists of token ids"
    if isinstance(prompt, str):
        return
    if not isinstance(prompt, list):
        raise _refuse("prompt", f"{shape}, not {_type_name(prompt)}")
    if not prompt:
        raise _refuse("prompt", "must not be empty")
    if not (_is_list_of(prompt, str) or _is_token_ids(prompt) or all(_is_token_ids(p) for p in prompt)):
        raise _refuse("prompt", shape)


def _check_fields(obj: dict[str, Any], fields: dict[str, tuple[Any, str]], where: str = "") -> None:
    for key, (types, what) in fields.items():
        value = obj.get(key)
        if value is not None and (not isinstance(value, types) or (types is not bool and isinstance(value, bool))):
            raise _refuse(where + key, f"must be {what}, not {_type_name(value)}")


def _check_objects(param: str, items: list[Any], such_as: str = "") -> None:
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise _refuse(f"{param}[{i}]", f"must be an object{such_as}, not {_type_name(item)}")


def _refuse(param: str, message: str) -> ProxyError:
    return ProxyError(400, f"{param} {message}", param=param)


def _is_list_of(value: Any, kind: type) -> bool:
    return isinstance(value, list) and all(isinstance(v, kind) for v in value)


def _is_token_ids(value: Any) -> bool:
    return _is_list_of(value, int) and bool(value) and not any(isinstance(t, bool) for t in value)


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__
    )
