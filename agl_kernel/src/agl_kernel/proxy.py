"""The LLM proxy: OpenAI-compatible routes per rollout attempt, in front of any OpenAI-compatible servers, recording
every call as an LLM span with token ids and logprobs (the training-grade record RL needs).

    proxy = LLMProxy(store, backends=["http://127.0.0.1:8000/v1"])
    app = create_app(store, route_handlers=proxy.routes())   # or: agl proxy --backend URL

An agent points its OpenAI client at ``<server>/rollout/<rollout_id>/attempt/<attempt_id>/v1`` (a ``ProxyLLM``
resource hands it that URL). The proxy asks the backend for token ids (``return_token_ids``) and logprobs, forwards
the call (streaming or not), and stores a ``chat <model>`` / ``text_completion <model>`` span on that attempt, with
the request, the response, usage, token ids, logprobs, latency, the backend and the resources version; a call that
fails gets a span with status ERROR that says why, and the agent an OpenAI-style error.

Backends: a rollout sticks to one backend (so its calls reuse that server's prefix cache); a backend that cannot
be reached is skipped for ``retry_after`` seconds; the algorithm changes the set at run time (:meth:`set_backends`,
or ``PUT /api/v1/proxy/backends``) and pauses new calls while it swaps weights (:meth:`pause` / :meth:`resume`).
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

from agl_kernel.errors import NotFoundError
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


class ProxyError(Exception):
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

    @property
    def healthy(self) -> bool:
        return time.monotonic() >= self.down_until


class LLMProxy:
    """The proxy's state and routes. ``backends``: base URLs of OpenAI-compatible servers (ending in ``/v1``).

    - ``request_token_ids`` / ``request_logprobs``: ask backends for them (vLLM and agl's model server answer).
    - ``timeout``: seconds a backend may take for one call; ``retry_after``: how long an unreachable backend is
      skipped.
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
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=5.0), limits=httpx.Limits(max_connections=256))
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
        if not isinstance(body, dict):
            raise ProxyError(400, "the request body must be a JSON object")
        key = "messages" if operation == "chat" else "prompt"
        if key not in body:
            raise ProxyError(400, f"the request has no {key!r}", param=key)
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
            backend.down_until = time.monotonic() + self.retry_after
            error = ProxyError(502, f"the LLM backend {backend.url} could not be reached: {exc!r}", "backend_error")
            await recorder.failed(error)
            raise error from exc
        if body.get("stream") and response.status_code == 200:
            return 200, self._relay(response, backend, recorder)
        try:
            payload = json.loads(await response.aread())
        except ValueError:
            payload = None
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
        except BaseException as exc:
            error = exc
            raise
        finally:
            await response.aclose()
            self._leave(backend)
            if error is None:
                await recorder.succeeded(stream.attributes())
            else:
                await recorder.failed(error)

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

        def error_response(error: ProxyError) -> Response:
            return Response(content=error.body(), status_code=error.status, media_type="application/json")

        async def forward(operation: str, request: Request, rollout_id: str, attempt_id: str) -> Any:
            try:
                status, payload = await self.call(operation, rollout_id, attempt_id, await request.body())
            except ProxyError as error:
                return error_response(error)
            if isinstance(payload, dict):
                return Response(content=payload, status_code=status, media_type="application/json")
            return Stream(payload, media_type="text/event-stream")

        prefix = "/rollout/{rollout_id:str}/attempt/{attempt_id:str}/v1"

        @post(f"{prefix}/chat/completions", tags=["llm proxy"], summary="OpenAI chat completions, recorded")
        async def chat(request: Request, rollout_id: FromPath[str], attempt_id: FromPath[str]) -> Any:
            return await forward("chat", request, rollout_id, attempt_id)

        @post(f"{prefix}/completions", tags=["llm proxy"], summary="OpenAI completions, recorded")
        async def completions(request: Request, rollout_id: FromPath[str], attempt_id: FromPath[str]) -> Any:
            return await forward("text_completion", request, rollout_id, attempt_id)

        async def list_models() -> Response:
            for backend in [b for b in self._backends.values() if b.healthy]:
                try:
                    answer = await self._client.get(backend.url + "/models")
                    if answer.status_code == 200:
                        return Response(content=answer.json(), media_type="application/json")
                except httpx.HTTPError:
                    backend.down_until = time.monotonic() + self.retry_after
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

        @post("/api/v1/proxy/pause", tags=["llm proxy"], summary="Hold new LLM calls; returns when none is in flight")
        async def pause() -> dict[str, Any]:
            await self.pause()
            return {"paused": True}

        @post("/api/v1/proxy/resume", tags=["llm proxy"], summary="Let LLM calls through again")
        async def resume() -> dict[str, Any]:
            self.resume()
            return {"paused": False}

        return [chat, completions, attempt_models, models, get_backends, put_backends, pause, resume]


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
