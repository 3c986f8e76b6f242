"""A small OpenAI-compatible HTTP server on loopback, for tests: token ids and logprobs in the vLLM style.

    with FakeOpenAIServer() as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="test")
        client.chat.completions.create(model="m", messages=[...], extra_body={"return_token_ids": True})
        server.calls[-1]["prompt_token_ids"]        # exactly what the server returned

It serves ``POST /v1/chat/completions`` and ``POST /v1/completions``, streaming (SSE) or not, with a
character-level "tokenizer" (token id = code point) and a chat template in which a call's prompt continues the
previous call's prompt + response (``<|role|>content<|end|>`` per message, then ``<|assistant|>``), as real chat
templates do. The reply is ``reply_for(request)`` (default: ``"echo: " + the last user text``), cut at
``max_tokens``; a reply may also be ``{"content": ..., "tool_calls": [{"name": ..., "arguments": {...}}]}``,
answered (without streaming) as an assistant message that calls those tools. With ``return_token_ids: true`` the
response has ``prompt_token_ids`` (chat: on the response;
completions: on each choice) and ``token_ids`` on each choice (streams: prompt ids on the first chunk, token ids
on each chunk); with ``logprobs`` it has logprobs (``-0.01 * (i + 1)`` for token ``i``). Model ``"fail"`` answers
HTTP 500. Standard library only; one thread per connection.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeOpenAIServer", "render_chat", "tokenize"]


def tokenize(text: str) -> list[int]:
    """The server's tokenizer: one token per character, its code point."""
    return [ord(c) for c in text]


def render_chat(messages: list[dict[str, Any]]) -> str:
    """The server's chat template: every message, then the generation prompt."""
    parts = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        parts.append(f"<|{message.get('role', 'user')}|>{content or ''}<|end|>")
    return "".join(parts) + "<|assistant|>"


def _last_user_text(request: dict[str, Any]) -> str:
    if "prompt" in request:
        prompt = request["prompt"]
        return prompt if isinstance(prompt, str) else json.dumps(prompt)
    for message in reversed(request.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else json.dumps(content)
    return ""


class FakeOpenAIServer:
    """Start on enter (a free port on 127.0.0.1), stop on exit. ``calls`` lists every request with what the server
    answered: ``{"path", "request", "prompt_token_ids", "token_ids", "logprobs", "text"}``."""

    def __init__(self, reply_for: Callable[[dict[str, Any]], Any] | None = None, chunk_chars: int = 3) -> None:
        self.reply_for = reply_for or (lambda request: "echo: " + _last_user_text(request))
        self.chunk_chars = chunk_chars
        self.calls: list[dict[str, Any]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None, "the server is not running: use it as a context manager"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def __enter__(self) -> FakeOpenAIServer:
        owner = self

        class Handler(_Handler):
            server_owner = owner

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def answer(self, path: str, request: dict[str, Any]) -> dict[str, Any]:
        """The call's record: its prompt and reply tokens (what the handler sends)."""
        chat = path.endswith("/chat/completions")
        prompt_text = render_chat(request.get("messages") or []) if chat else str(request.get("prompt", ""))
        reply = self.reply_for(request)
        tool_calls = reply.get("tool_calls") if isinstance(reply, dict) else None
        text = (reply.get("content") or "") if isinstance(reply, dict) else reply
        max_tokens = request.get("max_tokens") or request.get("max_completion_tokens")
        finish = "stop"
        if isinstance(max_tokens, int) and len(text) > max_tokens:
            text, finish = text[:max_tokens], "length"
        token_ids = tokenize(text)
        call = {
            "path": path,
            "request": request,
            "prompt_token_ids": tokenize(prompt_text),
            "token_ids": token_ids,
            "logprobs": [-0.01 * (i + 1) for i in range(len(token_ids))],
            "text": text,
            "finish_reason": "tool_calls" if tool_calls else finish,
            "tool_calls": [
                {
                    "id": f"call_{len(self.calls)}_{i}",
                    "type": "function",
                    "function": {"name": c["name"], "arguments": json.dumps(c.get("arguments", {}))},
                }
                for i, c in enumerate(tool_calls or ())
            ],
        }
        self.calls.append(call)
        return call


class _Handler(BaseHTTPRequestHandler):
    server_owner: FakeOpenAIServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            return self._json(400, {"error": {"message": "the body is not JSON"}})
        if self.path not in ("/v1/chat/completions", "/v1/completions"):
            return self._json(404, {"error": {"message": f"no route {self.path}"}})
        if request.get("model") == "fail":
            return self._json(500, {"error": {"message": "the model failed (as asked)"}})
        call = self.server_owner.answer(self.path, request)
        call["peer"] = self.client_address  # which connection it came on
        if request.get("stream"):
            try:
                return self._stream(request, call)
            except (BrokenPipeError, ConnectionResetError):  # the client closed the stream early
                self.close_connection = True
                return None
        self._json(200, self._response(request, call))

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _choice(self, request: dict[str, Any], call: dict[str, Any], start: int, end: int) -> dict[str, Any]:
        chat = call["path"].endswith("/chat/completions")
        text = call["text"][start:end]
        choice: dict[str, Any] = {"index": 0}
        if request.get("logprobs") is not None and request.get("logprobs") is not False:
            logprobs = call["logprobs"][start:end]
            if chat:
                choice["logprobs"] = {
                    "content": [
                        {"token": c, "logprob": lp, "bytes": list(c.encode()), "top_logprobs": []}
                        for c, lp in zip(text, logprobs)
                    ]
                }
            else:
                choice["logprobs"] = {
                    "tokens": list(text),
                    "token_logprobs": logprobs,
                    "top_logprobs": None,
                    "text_offset": list(range(start, end)),
                }
        if request.get("return_token_ids"):
            choice["token_ids"] = call["token_ids"][start:end]
            if not chat and start == 0:
                choice["prompt_token_ids"] = call["prompt_token_ids"]
        return choice

    def _response(self, request: dict[str, Any], call: dict[str, Any]) -> dict[str, Any]:
        chat = call["path"].endswith("/chat/completions")
        choice = self._choice(request, call, 0, len(call["text"]))
        choice["finish_reason"] = call["finish_reason"]
        if chat:
            choice["message"] = {"role": "assistant", "content": call["text"]}
            if call["tool_calls"]:
                choice["message"].update(content=call["text"] or None, tool_calls=call["tool_calls"])
        else:
            choice["text"] = call["text"]
        response: dict[str, Any] = {
            "id": f"cmpl-{len(self.server_owner.calls)}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": request.get("model", "fake"),
            "choices": [choice],
            "usage": self._usage(call),
        }
        if chat and request.get("return_token_ids"):
            response["prompt_token_ids"] = call["prompt_token_ids"]
        return response

    @staticmethod
    def _usage(call: dict[str, Any]) -> dict[str, int]:
        prompt, completion = len(call["prompt_token_ids"]), len(call["token_ids"])
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _stream(self, request: dict[str, Any], call: dict[str, Any]) -> None:
        chat = call["path"].endswith("/chat/completions")
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        base = {
            "id": f"cmpl-{len(self.server_owner.calls)}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": request.get("model", "fake"),
        }
        size = max(1, self.server_owner.chunk_chars)
        text = call["text"]
        bounds = [(i, min(i + size, len(text))) for i in range(0, len(text), size)] or [(0, 0)]
        for number, (start, end) in enumerate(bounds):
            choice = self._choice(request, call, start, end)
            if chat:
                choice["delta"] = {"content": text[start:end], **({"role": "assistant"} if number == 0 else {})}
            else:
                choice["text"] = text[start:end]
            choice["finish_reason"] = call["finish_reason"] if number == len(bounds) - 1 else None
            chunk = {**base, "choices": [choice]}
            if number == 0 and chat and request.get("return_token_ids"):
                chunk["prompt_token_ids"] = call["prompt_token_ids"]
            self._send_event(json.dumps(chunk))
        if (request.get("stream_options") or {}).get("include_usage"):
            self._send_event(json.dumps({**base, "choices": [], "usage": self._usage(call)}))
        self._send_event("[DONE]")
        self.wfile.write(b"0\r\n\r\n")

    def _send_event(self, data: str) -> None:
        payload = f"data: {data}\n\n".encode()
        self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
        self.wfile.flush()
