"""LLMProxy: takes an attempt's call, forwards it to a backend, relays the answer (streamed or not) and records it;
a backend's failure becomes an OpenAI-style error that says whose fault it is."""

import contextlib
import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpx

from agl_kernel import semconv
from agl_kernel.llm_calls import StreamAccumulator, request_attributes, response_attributes
from agl_kernel.models import Rollout, RolloutMode
from agl_kernel.proxy._backends import Backend, BackendPool
from agl_kernel.proxy._openai import MODELS_PATH, OPERATION_PATHS, ProxyError, parse_request
from agl_kernel.proxy._spans import CallRecord, attempt_resources
from agl_kernel.store.base import LightningStore

BACKEND_KEEPALIVE_SECONDS = 2.0
"""How long an idle connection to a backend is kept for reuse: below the 5 s after which uvicorn (vLLM's server,
agl-model-server's) closes an idle one by default. Equal timeouts raced: a call sent on a pooled connection just as
the server closed it failed with a read error (a 502 to the agent)."""

EVALUATION_AHEAD_US = 1 << 52
"""What a validation or test rollout's ``priority`` is less than its enqueue time (µs): about 140 years, so every
evaluation comes before every training rollout, each kind oldest first."""


def rollout_priority(rollout: Rollout) -> int:
    """The ``priority`` (lower first) the proxy sends with a call of ``rollout`` (see :class:`LLMProxy`)."""
    enqueued = int(rollout.start_time * 1_000_000)
    return enqueued if rollout.mode in (None, RolloutMode.TRAIN) else enqueued - EVALUATION_AHEAD_US


class LLMProxy(BackendPool):
    """The proxy's state and routes. ``backends``: base URLs of OpenAI-compatible servers (ending in ``/v1``).

    - ``request_token_ids`` / ``request_logprobs``: ask backends for them (vLLM and agl's model server answer).
    - ``timeout``: seconds a backend may take for one call; ``retry_after``: how long a backend that is down is
      skipped (see :mod:`agl_kernel.proxy._backends` for when it is).
    - ``priority``: send each call's ``priority`` (vLLM's extension; lower is served first) as the time its
      rollout was enqueued, in microseconds, unless the agent set one, and validation and test rollouts ahead of
      every training one (their enqueue time less :data:`EVALUATION_AHEAD_US`): a backend that schedules by
      priority then serves evaluations first (an algorithm waits on one to go on: asynchronous GRPO holds the
      next policy version until the validation of the current one ends), then the oldest rollouts (a training
      step's before the next step's). Only for backends that accept the field (agl-model-server; vLLM started with
      ``--scheduling-policy priority``): see :attr:`agl_kernel.llm_backend.LLMBackend.priority_scheduling`.
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
        priority: bool = False,
    ) -> None:
        super().__init__(backends, retry_after=retry_after, sticky_rollouts=sticky_rollouts)
        self.store, self.timeout, self.priority = store, timeout, priority
        self.request_token_ids, self.request_logprobs = request_token_ids, request_logprobs
        limits = httpx.Limits(max_connections=256, keepalive_expiry=BACKEND_KEEPALIVE_SECONDS)
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=5.0), limits=limits)

    async def aclose(self) -> None:
        await self._client.aclose()
        await super().aclose()

    def routes(self) -> list[Any]:
        """The litestar route handlers: the per-attempt OpenAI routes, ``/v1/models``, and the control routes."""
        from agl_kernel.proxy._routes import proxy_routes

        return proxy_routes(self)

    async def call(self, operation: str, rollout_id: str, attempt_id: str, raw: bytes) -> tuple[int, Any]:
        """Forward one call; ``(status, JSON body)`` or, for ``stream: true``, ``(200, async iterator of SSE bytes)``.
        Raises :class:`ProxyError` for calls refused before reaching a backend."""
        body = parse_request(operation, raw, token_ids=self.request_token_ids, logprobs=self.request_logprobs)
        request = request_attributes(operation, body)  # before entering: nothing may fail between that and the try
        rollout, resources = await attempt_resources(self.store, rollout_id, attempt_id)
        if self.priority:
            body.setdefault("priority", rollout_priority(rollout))
        backend = await self._enter(rollout_id)
        attributes = {**request, semconv.LLM_BACKEND: backend.url, **resources}
        record = CallRecord(self.store, operation, rollout_id, attempt_id, attributes)
        try:
            forward = self._client.build_request("POST", backend.url + OPERATION_PATHS[operation], json=body)
            response = await self._client.send(forward, stream=bool(body.get("stream")))
        except httpx.HTTPError as exc:
            self._leave(backend)
            raise await record.failed(await self._transport_error(backend, exc)) from exc
        if body.get("stream") and response.status_code == 200:
            return 200, self._relay(response, backend, record)
        try:
            payload = json.loads(await response.aread())
        except ValueError:
            payload = None
        except httpx.HTTPError as exc:  # the backend sent the head of its answer, then broke off
            raise await record.failed(await self._transport_error(backend, exc)) from exc
        finally:
            await response.aclose()
            self._leave(backend)
        if response.status_code != 200 or not isinstance(payload, dict):
            raise await record.failed(_backend_error(backend, response.status_code, payload))
        await record.succeeded(response_attributes(operation, payload))
        return 200, payload

    async def _relay(self, response: httpx.Response, backend: Backend, record: CallRecord) -> AsyncIterator[bytes]:
        """Pass the backend's server-sent events through as they come, adding up the chunks for the span."""
        stream = StreamAccumulator(record.operation)
        error: BaseException | None = None
        try:
            async for line in response.aiter_lines():
                data = line[5:].strip() if line.startswith("data:") else ""
                if data and data != "[DONE]":
                    with contextlib.suppress(ValueError):
                        stream.add(json.loads(data))
                yield (line + "\n").encode()
        except httpx.HTTPError as exc:  # the backend broke off the stream: the agent's stream ends with an error
            error = await self._transport_error(backend, exc)
            raise error from exc
        except BaseException as exc:  # the agent went away (or the server is stopping)
            error = exc
            raise
        finally:
            await response.aclose()
            self._leave(backend)
            await (record.succeeded(stream.attributes()) if error is None else record.failed(error))

    async def list_models(self) -> Any:
        """The ``/models`` answer of the first healthy backend that gives one."""
        for backend in self._healthy():
            try:
                answer = await self._client.get(backend.url + MODELS_PATH)
                if answer.status_code == 200:
                    return answer.json()
            except httpx.HTTPError as exc:  # refused: the backend is down; any other failure is this answer's
                if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
                    self._mark_down(backend)
        raise ProxyError(503, f"no backend answered {MODELS_PATH}", "service_unavailable")

    async def _transport_error(self, backend: Backend, exc: httpx.HTTPError) -> ProxyError:
        """The error for a call that failed at the transport level; marks the backend down if it is down."""
        if isinstance(exc, httpx.PoolTimeout):  # the proxy's own connection pool is full: nobody's fault downstream
            return ProxyError(503, "the LLM proxy has too many calls in flight; retry", "service_unavailable")
        skipped = f"skipped for {self.retry_after:g} s"
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):  # nothing was sent: the backend is down
            self._mark_down(backend)
            what = f"could not be reached: {exc!r}; it is {skipped}"
            return ProxyError(502, f"the LLM backend {backend.url} {what}", "backend_error")
        if await self._check(backend):
            state = "it still accepts connections, so the request may be what broke it; other calls go on"
        else:
            state = f"it no longer accepts connections and is {skipped}"
        if isinstance(exc, httpx.TimeoutException):
            status, what = 504, f"did not answer within {self.timeout:g} s ({exc!r})"
        else:
            status, what = 502, f"closed the connection during the call ({exc!r})"
        return ProxyError(status, f"the LLM backend {backend.url} {what}: {state}", "backend_error")


def _backend_error(backend: Backend, status: int, payload: Any) -> ProxyError:
    """A backend's error answer (or one that is not a JSON object), passed on with its status and message."""
    message = None
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict):
            message = str(error.get("message"))
        elif error is not None:
            message = str(error)
        elif "detail" in payload:
            message = str(payload["detail"])
    message = f"the LLM backend {backend.url} answered with an error: {message or f'HTTP {status}'}"
    return ProxyError(status if 400 <= status < 600 else 502, message, "backend_error")
