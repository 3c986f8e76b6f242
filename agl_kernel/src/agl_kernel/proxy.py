"""The LLM proxy: OpenAI-compatible routes per rollout attempt, in front of any OpenAI-compatible servers, recording
every call as an LLM span with token ids and logprobs (the training-grade record RL needs).

    proxy = LLMProxy(store, backends=["http://127.0.0.1:8000/v1"])
    app = create_app(store, route_handlers=proxy.routes())   # or: agl proxy --backend URL

An agent points its OpenAI client at ``<server>/rollout/<rollout_id>/attempt/<attempt_id>/v1`` (a ``ProxyLLM``
resource hands it that URL). The proxy asks the backend for token ids (``return_token_ids``) and logprobs, forwards
the call (streaming or not), and stores a ``chat <model>`` / ``text_completion <model>`` span on that attempt, with
the request, the response, usage, token ids, logprobs, latency, the backend and the resources version; a call that
fails gets a span with status ERROR that says why, and the agent an OpenAI-style error.

A request whose body does not have the shape of an OpenAI request (``messages`` a list of objects with a string
``role``, ``prompt`` a string or token ids, ...) gets a 400 that names the field, and reaches no backend.

Backends: a rollout sticks to one backend (so its calls reuse that server's prefix cache); the algorithm changes the
set at run time (:meth:`set_backends`, or ``PUT /api/v1/proxy/backends``) and pauses new calls while it swaps
weights (:meth:`pause` / :meth:`resume`). A backend is skipped for ``retry_after`` seconds when it is down, and only
then, so that one request cannot take it out for every rollout:

- a connection to it cannot be opened (refused, or no answer within 5 s): nothing was sent, so the request is not
  to blame;
- a call fails once the request was sent (the backend closed the connection, or did not answer in time): the
  request may be what broke it, so the call fails alone (502 / 504) and the proxy opens a new connection to the
  backend to see whether it is still up (any HTTP answer will do; failing calls at the same time share one check);
  it is skipped only if it is not.

This is what nginx-style passive health checks do with a connection-level test instead of a failure count: no
threshold to tune, and a crashing request never counts against the backend while it still accepts connections.
"""

import asyncio
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, Optional

import httpx

from agl_kernel.errors import AglError, NotFoundError
from agl_kernel.llm_calls import StreamAccumulator, request_attributes, response_attributes, span_name
from agl_kernel.models import Span, SpanStatus
from agl_kernel.store.base import LightningStore
from agl_kernel.tracer import exception_attributes

__all__ = ["LLMProxy", "ProxyError"]

log = logging.getLogger(__name__)

BACKEND = "agl.llm.backend"
LATENCY = "agl.llm.latency_seconds"
RESOURCES_ID = "agl.resources.id"
RESOURCES_VERSION = "agl.resources.version"


class ProxyError(AglError):
    """A call the proxy refuses or cannot complete: ``status`` and an OpenAI-style error ``type``."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: Optional[str] = None):
        super().__init__(message)
        self.status, self.kind, self.param = status, kind, param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.status}}


class _Backend:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.down_until = 0.0
        self.in_flight = 0
        self.assigned = 0  # rollouts assigned so far: spreads new rollouts when none is busier than another
        self.check: Optional["asyncio.Future[bool]"] = None  # the check under way after a failed call

    @property
    def healthy(self) -> bool:
        return time.monotonic() >= self.down_until


class LLMProxy:
    """The proxy's state and routes. ``backends``: base URLs of OpenAI-compatible servers (ending in ``/v1``).

    - ``request_token_ids`` / ``request_logprobs``: ask backends for them (vLLM and agl's model server answer).
    - ``timeout``: seconds a backend may take for one call; ``retry_after``: how long a backend that is down is
      skipped (see the module's docstring for when it is).
    """

    def __init__(
        self,
        store: LightningStore,
        backends: Iterable[str] = (),
        *,
        request_token_ids: bool = True,
        request_logprobs: bool = True,
        timeout: float = 300.0,
        retry_after: float = 5.0,
        sticky_rollouts: int = 100_000,
    ) -> None:
        self.store = store
        self.request_token_ids = request_token_ids
        self.request_logprobs = request_logprobs
        self.retry_after = retry_after
        self._backends: dict[str, _Backend] = {}
        self.set_backends(backends)
        self._sticky: OrderedDict[str, str] = OrderedDict()
        self._sticky_size = sticky_rollouts
        self.timeout = timeout
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=5.0), limits=httpx.Limits(max_connections=256))
        # Health checks open a new connection each (no keep-alive): a pooled one says nothing about new ones.
        self._checker = httpx.AsyncClient(timeout=httpx.Timeout(5.0), limits=httpx.Limits(max_keepalive_connections=0))
        self._open = asyncio.Event()
        self._open.set()
        self._idle = asyncio.Condition()
        self._in_flight = 0

    # ------------------------------------------------------------------------------------------------ control

    @property
    def backends(self) -> list[str]:
        return list(self._backends)

    def set_backends(self, urls: Iterable[str]) -> None:
        """Replace the set of backends (rollouts on a removed backend move to another on their next call)."""
        urls = [u.rstrip("/") for u in urls]
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"a backend is an http(s) URL such as http://127.0.0.1:8000/v1, not {url!r}")
        self._backends = {url: self._backends.get(url) or _Backend(url) for url in urls}

    def add_backend(self, url: str) -> None:
        self.set_backends([*self._backends, url])

    def remove_backend(self, url: str) -> None:
        self.set_backends(u for u in self._backends if u != url.rstrip("/"))

    async def pause(self) -> None:
        """Hold new calls (they wait, they do not fail) and return once the calls in flight have finished."""
        self._open.clear()
        async with self._idle:
            await self._idle.wait_for(lambda: self._in_flight == 0)

    def resume(self) -> None:
        self._open.set()

    async def aclose(self) -> None:
        await self._client.aclose()
        await self._checker.aclose()

    def _pick(self, rollout_id: str) -> _Backend:
        url = self._sticky.get(rollout_id)
        backend = self._backends.get(url) if url else None
        if backend is None or not backend.healthy:
            healthy = [b for b in self._backends.values() if b.healthy]
            if not healthy:
                detail = "no backend is configured" if not self._backends else "every backend is unreachable"
                raise ProxyError(503, f"the LLM proxy cannot serve the call: {detail}", "service_unavailable")
            backend = min(healthy, key=lambda b: (b.in_flight, b.assigned))
            backend.assigned += 1
            self._sticky[rollout_id] = backend.url
            if len(self._sticky) > self._sticky_size:
                self._sticky.popitem(last=False)
        self._sticky.move_to_end(rollout_id)
        return backend

    # ------------------------------------------------------------------------------------------------ calls

    async def _context(self, rollout_id: str, attempt_id: str) -> dict[str, Any]:
        """Check that the attempt exists; the resources attributes of the call."""
        try:
            rollout = await self.store.get_rollout(rollout_id)
            await self.store.get_attempt(rollout_id, attempt_id)
        except NotFoundError as exc:
            raise ProxyError(404, f"unknown rollout or attempt: {exc}", "not_found_error") from exc
        attributes: dict[str, Any] = {}
        if rollout.resources_id is not None:
            attributes[RESOURCES_ID] = rollout.resources_id
            try:
                attributes[RESOURCES_VERSION] = (await self.store.get_resources(rollout.resources_id)).version
            except NotFoundError:
                pass
        return attributes

    def _prepare(self, operation: str, body: Any) -> dict[str, Any]:
        check_request(operation, body)
        body = dict(body)
        if self.request_token_ids:
            body.setdefault("return_token_ids", True)
        if self.request_logprobs and "logprobs" not in body:
            body["logprobs"] = True if operation == "chat" else 0
        if body.get("stream"):
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return body

    async def call(self, operation: str, rollout_id: str, attempt_id: str, raw: bytes) -> tuple[int, Any]:
        """Forward one call; ``(status, JSON body)`` or, for ``stream: true``, ``(200, async iterator of SSE bytes)``.
        Raises :class:`ProxyError` for calls refused before reaching a backend."""
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise ProxyError(400, f"the request body is not valid JSON: {exc}") from exc
        body = self._prepare(operation, body)
        context = await self._context(rollout_id, attempt_id)
        await self._open.wait()
        backend = self._pick(rollout_id)
        recorder = _CallRecord(self, operation, rollout_id, attempt_id, body, backend, context)
        path = "/chat/completions" if operation == "chat" else "/completions"
        self._enter(backend)
        try:
            request = self._client.build_request("POST", backend.url + path, json=body)
            response = await self._client.send(request, stream=bool(body.get("stream")))
        except httpx.HTTPError as exc:
            self._leave(backend)
            error = await self._failed(backend, exc)
            await recorder.failed(error)
            raise error from exc
        if body.get("stream") and response.status_code == 200:
            return 200, self._relay(response, backend, recorder)
        try:
            payload = json.loads(await response.aread())
        except ValueError:
            payload = None
        except httpx.HTTPError as exc:  # the backend sent the head of its answer, then broke off
            error = await self._failed(backend, exc)
            await recorder.failed(error)
            raise error from exc
        finally:
            await response.aclose()
            self._leave(backend)
        if response.status_code != 200 or not isinstance(payload, dict):
            message = _backend_message(payload) or f"HTTP {response.status_code}"
            error = ProxyError(
                response.status_code if 400 <= response.status_code < 600 else 502,
                f"the LLM backend {backend.url} answered with an error: {message}",
                "backend_error",
            )
            await recorder.failed(error)
            raise error
        await recorder.succeeded(response_attributes(operation, payload))
        return 200, payload

    async def _relay(self, response: httpx.Response, backend: _Backend, recorder: "_CallRecord") -> AsyncIterator[bytes]:
        """Pass the backend's server-sent events through as they come, adding up the chunks for the span."""
        stream = StreamAccumulator(recorder.operation)
        error: Optional[BaseException] = None
        try:
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    data = line[5:].strip()
                    if data and data != "[DONE]":
                        try:
                            stream.add(json.loads(data))
                        except ValueError:
                            pass
                yield (line + "\n").encode()
        except httpx.HTTPError as exc:  # the backend broke off the stream: the agent's stream ends with an error
            error = await self._failed(backend, exc)
            raise error from exc
        except BaseException as exc:  # the agent went away (or the server is stopping)
            error = exc
            raise
        finally:
            await response.aclose()
            self._leave(backend)
            if error is None:
                await recorder.succeeded(stream.attributes())
            else:
                await recorder.failed(error)

    async def _failed(self, backend: _Backend, exc: httpx.HTTPError) -> ProxyError:
        """The error for a call that failed at the transport level; marks the backend down if it is down."""
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):  # nothing was sent: the backend is down
            self._mark_down(backend)
            return ProxyError(
                502, f"the LLM backend {backend.url} could not be reached: {exc!r}; it is skipped for "
                f"{self.retry_after:g} s", "backend_error",
            )
        if isinstance(exc, httpx.PoolTimeout):  # the proxy's own connection pool is full: nobody's fault downstream
            return ProxyError(503, "the LLM proxy has too many calls in flight; retry", "service_unavailable")
        up = await self._check(backend)
        if isinstance(exc, httpx.TimeoutException):
            status, what = 504, f"did not answer within {self.timeout:g} s ({exc!r})"
        else:
            status, what = 502, f"closed the connection during the call ({exc!r})"
        state = (
            "it still accepts connections, so the request may be what broke it; other calls go on"
            if up else f"it no longer accepts connections and is skipped for {self.retry_after:g} s"
        )
        return ProxyError(status, f"the LLM backend {backend.url} {what}: {state}", "backend_error")

    def _mark_down(self, backend: _Backend) -> None:
        backend.down_until = time.monotonic() + self.retry_after
        log.warning("LLM backend %s is down; skipping it for %g s", backend.url, self.retry_after)

    async def _check(self, backend: _Backend) -> bool:
        """Whether ``backend`` still answers a new connection; marks it down if not. Calls failing at the same time
        share one check."""
        if backend.check is None or backend.check.done():
            backend.check = asyncio.ensure_future(self._probe(backend))
        return await asyncio.shield(backend.check)

    async def _probe(self, backend: _Backend) -> bool:
        try:
            await self._checker.get(backend.url + "/models")  # any HTTP answer, even an error, means it is up
        except httpx.HTTPError:
            self._mark_down(backend)
            return False
        return True

    def _enter(self, backend: _Backend) -> None:
        backend.in_flight += 1
        self._in_flight += 1

    def _leave(self, backend: _Backend) -> None:
        backend.in_flight -= 1
        self._in_flight -= 1
        if self._in_flight == 0:
            asyncio.ensure_future(self._notify_idle())

    async def _notify_idle(self) -> None:
        async with self._idle:
            self._idle.notify_all()

    # ------------------------------------------------------------------------------------------------ routes

    def routes(self) -> list[Any]:
        """The litestar route handlers: the per-attempt OpenAI routes, ``/v1/models``, and the control routes."""
        from litestar import Request, Response, get, post, put
        from litestar.params import FromPath, JSONBody
        from litestar.response import Stream

        class EventStream(Stream):
            """A stream with its own media type: litestar's ``Stream`` takes the handler's (JSON) over its own."""

            def to_asgi_response(self, *args: Any, **kwargs: Any) -> Any:
                return super().to_asgi_response(*args, **{**kwargs, "media_type": None})

        def error_response(error: ProxyError) -> Response:
            return Response(content=error.body(), status_code=error.status, media_type="application/json")

        async def forward(operation: str, request: Request, rollout_id: str, attempt_id: str) -> Any:
            try:
                status, payload = await self.call(operation, rollout_id, attempt_id, await request.body())
            except ProxyError as error:
                return error_response(error)
            if isinstance(payload, dict):
                return Response(content=payload, status_code=status, media_type="application/json")
            return EventStream(payload, media_type="text/event-stream", status_code=200)

        prefix = "/rollout/{rollout_id:str}/attempt/{attempt_id:str}/v1"

        # POST handlers answer 201 unless told otherwise; OpenAI's endpoints answer 200, streamed or not.
        @post(
            f"{prefix}/chat/completions", tags=["llm proxy"], summary="OpenAI chat completions, recorded",
            status_code=200,
        )
        async def chat(request: Request, rollout_id: FromPath[str], attempt_id: FromPath[str]) -> Any:
            return await forward("chat", request, rollout_id, attempt_id)

        @post(f"{prefix}/completions", tags=["llm proxy"], summary="OpenAI completions, recorded", status_code=200)
        async def completions(request: Request, rollout_id: FromPath[str], attempt_id: FromPath[str]) -> Any:
            return await forward("text_completion", request, rollout_id, attempt_id)

        async def list_models() -> Response:
            for backend in [b for b in self._backends.values() if b.healthy]:
                try:
                    answer = await self._client.get(backend.url + "/models")
                    if answer.status_code == 200:
                        return Response(content=answer.json(), media_type="application/json")
                except (httpx.ConnectError, httpx.ConnectTimeout):
                    self._mark_down(backend)
                except httpx.HTTPError:
                    pass
            return error_response(ProxyError(503, "no backend answered /models", "service_unavailable"))

        @get(f"{prefix}/models", tags=["llm proxy"], summary="The backends' models")
        async def attempt_models(rollout_id: FromPath[str], attempt_id: FromPath[str]) -> Response:
            return await list_models()

        @get("/v1/models", tags=["llm proxy"], summary="The backends' models")
        async def models() -> Response:
            return await list_models()

        @get("/api/v1/proxy/backends", tags=["llm proxy"], summary="The proxy's backends")
        async def get_backends() -> dict[str, Any]:
            return {"backends": self.backends, "paused": not self._open.is_set()}

        @put("/api/v1/proxy/backends", tags=["llm proxy"], summary="Replace the proxy's backends")
        async def put_backends(data: JSONBody[dict[str, Any]]) -> Response:
            urls = data.get("backends")
            if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
                return error_response(ProxyError(400, "send {\"backends\": [\"http://host:port/v1\", ...]}", param="backends"))
            try:
                self.set_backends(urls)
            except ValueError as exc:
                return error_response(ProxyError(400, str(exc), param="backends"))
            return Response(content={"backends": self.backends}, media_type="application/json")

        @post(
            "/api/v1/proxy/pause", tags=["llm proxy"], summary="Hold new LLM calls; returns when none is in flight",
            status_code=200,
        )
        async def pause() -> dict[str, Any]:
            await self.pause()
            return {"paused": True}

        @post("/api/v1/proxy/resume", tags=["llm proxy"], summary="Let LLM calls through again", status_code=200)
        async def resume() -> dict[str, Any]:
            self.resume()
            return {"paused": False}

        return [chat, completions, attempt_models, models, get_backends, put_backends, pause, resume]


# ---------------------------------------------------------------------------------------------------- requests

_INTEGER_FIELDS = ("max_tokens", "max_completion_tokens", "n", "seed", "top_k")
_NUMBER_FIELDS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__
    )


def check_request(operation: str, body: Any) -> None:
    """Refuse (400, naming the field) a body that does not have the shape of an OpenAI ``chat`` or
    ``text_completion`` request. Only the shape the proxy and every backend rely on is checked; the backend
    judges the values (an unknown model, a too long prompt, ...)."""

    def refuse(param: str, message: str) -> ProxyError:
        return ProxyError(400, f"{param} {message}", param=param)

    if not isinstance(body, dict):
        raise ProxyError(400, f"the request body must be a JSON object, not {_type_name(body)}")
    if operation == "chat":
        _check_messages(body, refuse)
    else:
        _check_prompt(body, refuse)
    if body.get("model") is not None and not isinstance(body["model"], str):
        raise refuse("model", f"must be a string, not {_type_name(body['model'])}")
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise refuse("stream", f"must be true or false, not {_type_name(body['stream'])}")
    if body.get("stream_options") is not None and not isinstance(body["stream_options"], dict):
        raise refuse("stream_options", f"must be an object, not {_type_name(body['stream_options'])}")
    for key in _INTEGER_FIELDS:
        value = body.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise refuse(key, f"must be an integer, not {_type_name(value)}")
    for key in _NUMBER_FIELDS:
        value = body.get(key)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise refuse(key, f"must be a number, not {_type_name(value)}")
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str) and not (
        isinstance(stop, list) and all(isinstance(s, str) for s in stop)
    ):
        raise refuse("stop", "must be a string or a list of strings")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise refuse("tools", f"must be a list of tool objects, not {_type_name(tools)}")
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise refuse(f"tools[{i}]", f"must be an object, not {_type_name(tool)}")


def _check_messages(body: dict[str, Any], refuse: Any) -> None:
    if "messages" not in body:
        raise refuse("messages", "is missing: a chat completion needs a list of messages")
    messages = body["messages"]
    if not isinstance(messages, list):
        example = '[{"role": "user", "content": "hi"}]'
        raise refuse("messages", f"must be a list of messages such as {example}, not {_type_name(messages)}")
    if not messages:
        raise refuse("messages", "must hold at least one message")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise refuse(where, f"must be an object with a role and a content, not {_type_name(message)}")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise refuse(f"{where}.role", f"must be a string such as \"user\", not {_type_name(role)}")
        content = message.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict):
                    example = '{"type": "text", "text": "hi"}'
                    raise refuse(
                        f"{where}.content[{j}]", f"must be an object such as {example}, not {_type_name(part)}"
                    )
        elif content is not None and not isinstance(content, str):
            raise refuse(
                f"{where}.content", f"must be a string, a list of content parts or null, not {_type_name(content)}"
            )
        for key in ("tool_calls",):
            value = message.get(key)
            if value is not None and not (isinstance(value, list) and all(isinstance(v, dict) for v in value)):
                raise refuse(f"{where}.{key}", "must be a list of objects")
        for key in ("name", "tool_call_id"):
            value = message.get(key)
            if value is not None and not isinstance(value, str):
                raise refuse(f"{where}.{key}", f"must be a string, not {_type_name(value)}")


def _is_token_ids(value: Any) -> bool:
    return (
        isinstance(value, list) and bool(value) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    )


def _check_prompt(body: dict[str, Any], refuse: Any) -> None:
    if "prompt" not in body:
        raise refuse("prompt", "is missing: a completion needs a prompt")
    prompt = body["prompt"]
    shape = "must be a string, a list of strings, a list of token ids or a list of lists of token ids"
    if isinstance(prompt, str):
        return
    if not isinstance(prompt, list):
        raise refuse("prompt", f"{shape}, not {_type_name(prompt)}")
    if not prompt:
        raise refuse("prompt", "must not be empty")
    if all(isinstance(p, str) for p in prompt) or _is_token_ids(prompt) or all(_is_token_ids(p) for p in prompt):
        return
    raise refuse("prompt", shape)


def _backend_message(payload: Any) -> Optional[str]:
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict):
            return str(error.get("message"))
        if error is not None:
            return str(error)
        if "detail" in payload:
            return str(payload["detail"])
    return None


class _CallRecord:
    """The span of one proxied call, written to the store when the call ends (well or not)."""

    def __init__(
        self, proxy: LLMProxy, operation: str, rollout_id: str, attempt_id: str, body: dict[str, Any],
        backend: _Backend, context: dict[str, Any],
    ) -> None:
        self.proxy = proxy
        self.operation = operation
        self.rollout_id, self.attempt_id = rollout_id, attempt_id
        self.attributes = {**request_attributes(operation, body), BACKEND: backend.url, **context}
        self.start = time.time()
        self.started = time.monotonic()

    async def succeeded(self, attributes: dict[str, Any]) -> None:
        await self._write({**self.attributes, **attributes}, SpanStatus(status_code="OK"))

    async def failed(self, error: BaseException) -> None:
        attributes = {**self.attributes, **exception_attributes(error), "error.type": type(error).__qualname__}
        await self._write(attributes, SpanStatus(status_code="ERROR", description=str(error)))

    async def _write(self, attributes: dict[str, Any], status: SpanStatus) -> None:
        attributes[LATENCY] = time.monotonic() - self.started
        span = Span(
            rollout_id=self.rollout_id,
            attempt_id=self.attempt_id,
            trace_id=uuid.uuid4().hex,
            span_id=uuid.uuid4().hex[:16],
            name=span_name(self.operation, attributes),
            kind="CLIENT",
            status=status,
            attributes=attributes,
            start_time=self.start,
            end_time=time.time(),
        )
        try:
            await self.proxy.store.add_span(span)
        except Exception:  # the agent's call has its answer; losing the record is logged, not raised at it
            log.exception("the LLM proxy could not store the span of a call of %s/%s", self.rollout_id, self.attempt_id)


def serve_backends_option(values: Sequence[str]) -> list[str]:
    """``--backend`` values: each a URL, or several separated by commas."""
    return [url.strip() for value in values for url in value.split(",") if url.strip()]
