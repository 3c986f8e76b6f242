"""``LightningStoreClient``: the store contract over HTTP, talking to ``agl store serve`` (entry point ``http``).

    store = LightningStoreClient("http://127.0.0.1:4747", token="...")   # or AGL_STORE_URL / AGL_STORE_TOKEN
    rollout = await store.enqueue_rollout({"question": "2+2"})

It passes the same conformance suite as the in-process stores. How it behaves on the network:

- **Retries.** A request that never reached the server (connection refused, connect timeout, no free
  connection) is retried for every method, with exponential backoff and jitter, ``retries`` times. A request that
  may have reached it (the connection broke mid-way, 502/503/504) is retried only for idempotent methods (reads,
  waits, spans, heartbeats, attempt updates by id, cancel); the others raise :class:`StoreConnectionError`, which
  says the write may or may not have happened.
- **Errors.** The server's 4xx answers become the kernel's errors (404 → ``NotFoundError``, 409 →
  ``InvalidStatusTransitionError``, an invalid query → ``InvalidQueryError``, any other 4xx →
  :class:`StoreRequestError`, a ``ValueError``), carrying the server's message; 401 → :class:`StoreAuthError`;
  5xx → :class:`StoreServerError` with the server's error id.
- **Waiting** (``dequeue_rollout(timeout=...)``, ``wait_for_rollouts``) is a long poll: the server holds the
  request until work arrives (push, no polling), asking again after the server's ``max_wait``. ``close()`` ends
  waiting calls at once.
- **Batching.** Short calls (enqueue, dequeue without waiting, spans, attempt and worker updates, gets) that tasks
  make while earlier requests are on the wire go together in one ``POST /api/v1/batch`` (each caller still gets
  its own result or error), so many concurrent workers cost few requests. A lone caller is never delayed.
- **Transport.** httpx's request/transport interface, by default on :class:`~agl_kernel._fasthttp.FastHTTPTransport`
  (keep-alive pool, one per event loop); pass ``transport_factory`` for any httpx transport (proxies, HTTP/2,
  ``httpx.ASGITransport`` for an in-process app).
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Any, Optional, TypeVar
from urllib.parse import quote, urlencode

import httpx
import msgspec
from msgspec import UNSET, UnsetType

from agl_kernel._client_batch import Batcher
from agl_kernel._fasthttp import FastHTTPTransport
from agl_kernel.errors import AglError, InvalidQueryError, InvalidStatusTransitionError, NotFoundError, StoreClosedError
from agl_kernel.models import (
    Attempt,
    AttemptedRollout,
    AttemptStatus,
    EnqueueRequest,
    PaginatedResult,
    Resource,
    ResourcesUpdate,
    Rollout,
    RolloutConfig,
    RolloutMode,
    RolloutStatus,
    Span,
    StoreCapabilities,
    StoreStatistics,
    Worker,
    WorkerStatus,
)
from agl_kernel.server import _wire as wire
from agl_kernel.store.base import LATEST, LightningStore, SortOrder
from agl_kernel.store.waiting import Signal

__all__ = [
    "DEFAULT_URL",
    "LightningStoreClient",
    "StoreAuthError",
    "StoreConnectionError",
    "StoreHTTPError",
    "StoreRequestError",
    "StoreServerError",
]

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:4747"
_P = wire.API_PREFIX
_encoder = msgspec.json.Encoder()
_decoders: dict[Any, msgspec.json.Decoder] = {}


def _decoder(type_: Any) -> msgspec.json.Decoder:
    decoder = _decoders.get(type_)
    if decoder is None:
        decoder = _decoders[type_] = msgspec.json.Decoder(type_)
    return decoder


class StoreHTTPError(AglError):
    """The store server refused a request or could not be reached. ``status_code`` is 0 when no answer came."""

    def __init__(self, message: str, *, status_code: int = 0, error: str = "", error_id: str | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.error = error
        self.error_id = error_id


class StoreRequestError(StoreHTTPError, ValueError):
    """A 4xx answer other than the kernel's own errors: the request was malformed or refused."""


class StoreAuthError(StoreHTTPError, PermissionError):
    """401/403: the server needs a bearer token (``token=`` or ``AGL_STORE_TOKEN``), or a different one."""


class StoreServerError(StoreHTTPError):
    """A 5xx answer; ``error_id`` finds the traceback in the server's log."""


class StoreConnectionError(StoreHTTPError, ConnectionError):
    """The server could not be reached, or the connection broke before the answer came (after the retries)."""


_KERNEL_ERRORS: dict[str, type[AglError]] = {
    "NotFoundError": NotFoundError,
    "InvalidStatusTransitionError": InvalidStatusTransitionError,
    "InvalidQueryError": InvalidQueryError,
}
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_MAYBE_SENT = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadTimeout, httpx.WriteTimeout)


def error_from_body(body: wire.ErrorBody, status: int) -> AglError:
    """The exception a client raises for an error answer of the server."""
    kernel = _KERNEL_ERRORS.get(body.error)
    if kernel is not None:
        return kernel(body.message)
    kwargs = {"status_code": status, "error": body.error, "error_id": body.error_id}
    if status in (401, 403):
        return StoreAuthError(body.message, **kwargs)
    if status >= 500:
        suffix = f" (error id {body.error_id})" if body.error_id and body.error_id not in body.message else ""
        return StoreServerError(f"the store server failed: {body.message}{suffix}", **kwargs)
    return StoreRequestError(body.message, **kwargs)


def _error_from_answer(status: int, answer: bytes, what: str) -> AglError:
    try:
        body = _decoder(wire.ErrorBody).decode(answer)
    except msgspec.DecodeError:
        text = answer[:300].decode("utf-8", "replace")
        reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "no reason"
        body = wire.ErrorBody(error=f"http_{status}", message=f"{what}: HTTP {status}: {text or reason}", status=status)
    return error_from_body(body, status)


_Call = tuple[Any, Any, bool]
"""A call waiting for a batch: (the op, the type of its result, whether it is safe to send twice)."""


class _LoopState:
    """What the client keeps per event loop: asyncio objects cannot cross loops."""

    __slots__ = ("batcher", "capabilities", "fast", "transport")

    def __init__(self, transport: httpx.AsyncBaseTransport, batcher: Batcher[_Call]) -> None:
        self.transport = transport
        self.fast = transport if isinstance(transport, FastHTTPTransport) else None
        self.batcher = batcher
        self.capabilities: asyncio.Future[StoreCapabilities] | None = None


class LightningStoreClient(LightningStore):
    """A :class:`LightningStore` served by an agl store server at ``url``.

    - ``token``: the server's bearer token (default: ``AGL_STORE_TOKEN``); ``url`` defaults to ``AGL_STORE_URL``
      or ``http://127.0.0.1:4747``.
    - ``timeout``: seconds to wait for an answer (long polls get their waiting time on top).
    - ``retries`` / ``backoff`` / ``max_backoff``: how often and how patiently to retry (see the module docs);
      the defaults ride out a server restart of a few seconds.
    - ``transport_factory``: makes the httpx transport for each event loop (default: a fast keep-alive pool).
    - ``batch_calls``: send the short calls (enqueue, dequeue without waiting, spans, attempt and worker updates,
      gets) that tasks make while earlier ones are on the wire together, in one request (default ``True``).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        retries: int = 8,
        backoff: float = 0.05,
        max_backoff: float = 2.0,
        transport_factory: Callable[[], httpx.AsyncBaseTransport] | None = None,
        max_connections: int = 256,
        batch_calls: bool = True,
        max_batch: int = 1000,
    ) -> None:
        url = (url or os.environ.get("AGL_STORE_URL") or DEFAULT_URL).rstrip("/")
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"the store server URL must look like http://host:port, not {url!r}")
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ValueError("timeout must be positive; retries and backoff must not be negative")
        self.url = url
        token = token if token is not None else os.environ.get("AGL_STORE_TOKEN") or None
        self._headers = [
            (b"Accept", b"application/json"),
            (b"Content-Type", b"application/json"),
            (b"User-Agent", b"agl-store-client"),
        ] + ([(b"Authorization", f"Bearer {token}".encode())] if token else [])
        # The fast path writes requests itself: the fixed part of every request head, and where to send it.
        self._key = (parsed.scheme, parsed.host, parsed.port or (443 if parsed.scheme == "https" else 80))
        self._base_path = parsed.raw_path.decode("ascii").rstrip("/")
        self._header_block = b"Host: %s\r\nAccept: application/json\r\nUser-Agent: agl-store-client\r\n" % (
            parsed.netloc
        ) + (b"Authorization: Bearer %s\r\n" % token.encode() if token else b"")
        self._timeout = timeout
        self._retries = retries
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._transport_factory = transport_factory or (lambda: FastHTTPTransport(max_connections=max_connections))
        self._batch_calls = batch_calls
        self._max_batch = max_batch
        self._loops: dict[asyncio.AbstractEventLoop, _LoopState] = {}
        self._loops_lock = threading.Lock()
        self._closed = False
        self._closing = Signal()
        self._server_capabilities: StoreCapabilities | None = None

    def __repr__(self) -> str:
        return f"LightningStoreClient({self.url!r})"

    @property
    def capabilities(self) -> StoreCapabilities:
        """The client is async- and thread-safe, reached over the network, and shared by any number of processes
        (the server dequeues exactly once); ``durable`` is the server's store's, once the first call has asked."""
        durable = bool(self._server_capabilities and self._server_capabilities.durable)
        return StoreCapabilities(thread_safe=True, async_safe=True, durable=durable, multi_process=True, remote=True)

    async def server_capabilities(self) -> StoreCapabilities:
        """The capabilities of the store behind the server."""
        caps = await self._call("GET", f"{_P}/capabilities", None, StoreCapabilities, idempotent=True)
        self._server_capabilities = caps
        return caps

    # ------------------------------------------------------------------------------------------------ plumbing

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            with self._loops_lock:
                for gone in [other for other in self._loops if other.is_closed()]:
                    del self._loops[gone]  # a thread's loop has ended; its connections go with it
                state = self._loops[loop] = _LoopState(
                    self._transport_factory(), Batcher(self._send_batch, self._max_batch)
                )
        return state

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"this LightningStoreClient for {self.url} is closed; create a new one")

    async def _call(
        self,
        method: str,
        path: str,
        body: Any,
        result_type: Any,
        *,
        idempotent: bool,
        wait: float = 0.0,
        params: dict[str, Any] | None = None,
    ) -> Any:
        """One API call with retries; returns the decoded answer or raises the mapped error."""
        self._check_open()
        state = self._state()
        if self._server_capabilities is None and path != f"{_P}/capabilities":
            await self._first_contact(state)
        content = b"" if body is None else _encoder.encode(body)
        if params:
            path += "?" + urlencode(params)
        timeouts = {
            "connect": self._timeout,
            "read": self._timeout + wait,
            "write": self._timeout,
            "pool": self._timeout,
        }
        attempt = 0
        while True:
            try:
                status, answer = await self._exchange(state, method, path, content, timeouts)
            except _NOT_SENT as exc:
                failure: BaseException = exc
                retry = True
            except _MAYBE_SENT as exc:
                failure, retry = exc, idempotent
            else:
                if status < 300:
                    return _decoder(result_type).decode(answer) if result_type is not None else None
                error = _error_from_answer(status, answer, f"{method} {path}")
                refused = getattr(error, "error", "") in ("StoreClosedError", "unavailable")
                if not (status == 503 and refused or status in (502, 503, 504) and idempotent):
                    raise error
                failure, retry = error, True
            if not retry or attempt >= self._retries or self._closed:
                if isinstance(failure, StoreHTTPError):
                    raise failure
                maybe = (
                    ""
                    if isinstance(failure, _NOT_SENT)
                    else (" The request may or may not have taken effect on the server.")
                )
                raise StoreConnectionError(
                    f"{method} {path} to the store server at {self.url} failed after {attempt + 1} tries: "
                    f"{type(failure).__name__}: {failure}.{maybe} Is `agl store serve` running there?"
                ) from failure
            delay = min(self._max_backoff, self._backoff * (2**attempt)) * (0.5 + random.random() / 2)
            attempt += 1
            await asyncio.sleep(delay)

    async def _exchange(
        self, state: _LoopState, method: str, path: str, content: bytes, timeouts: dict[str, float]
    ) -> tuple[int, bytes]:
        """Send one request; (status, body). The default transport gets the request as bytes (no httpx objects)."""
        if state.fast is not None:
            head = f"{method} {self._base_path}{path} HTTP/1.1\r\n".encode() + self._header_block
            if content:
                head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(content)
            status, _, answer, _ = await state.fast.exchange(self._key, method, head + b"\r\n" + content, timeouts)
            return status, answer
        request = httpx.Request(
            method, self.url + path, headers=self._headers, content=content, extensions={"timeout": timeouts}
        )
        response = await state.transport.handle_async_request(request)
        await response.aread()
        return response.status_code, response.content

    async def _batched(self, op: Any, result_type: Any, *, idempotent: bool) -> Any:
        """A short call, sent with whatever other calls are waiting for the wire (``POST /batch``)."""
        self._check_open()
        state = self._state()
        if self._server_capabilities is None:
            await self._first_contact(state)
        return await state.batcher.submit((op, result_type, idempotent))

    async def _first_contact(self, state: _LoopState) -> None:
        """Learn the server's capabilities once (concurrent first calls share the one request)."""
        if state.capabilities is None:
            state.capabilities = asyncio.ensure_future(self.server_capabilities())
        try:
            await asyncio.shield(state.capabilities)
        except BaseException:
            if state.capabilities.done():
                state.capabilities = None  # let a later call try again
            raise

    async def _send_batch(self, calls: list[_Call]) -> list[Any]:
        """One ``POST /batch`` for ``calls``; one outcome (result or exception) per call."""
        safe = all(idempotent for _, _, idempotent in calls)
        body = wire.BatchBody(ops=[op for op, _, _ in calls])
        try:
            answers = await self._call("POST", f"{_P}/batch", body, list[wire.RawOpResult], idempotent=safe)
        except StoreConnectionError as failure:
            retryable = [i for i, (_, _, idempotent) in enumerate(calls) if idempotent]
            if safe or not retryable or self._closed:
                raise
            # The batch may or may not have run: its unsafe calls fail, the safe ones go again on their own.
            outcomes: list[Any] = [failure] * len(calls)
            try:
                again = await self._send_batch([calls[i] for i in retryable])
            except StoreConnectionError as second:
                again = [second] * len(retryable)
            for i, outcome in zip(retryable, again, strict=True):
                outcomes[i] = outcome
            return outcomes
        if len(answers) != len(calls):
            raise StoreServerError(f"the server answered {len(answers)} results for a batch of {len(calls)} calls")
        outcomes = []
        for (_, result_type, _), answer in zip(calls, answers, strict=True):
            if answer.error is not None:
                outcomes.append(error_from_body(answer.error, answer.error.status))
            elif bytes(answer.result) in (b"null", b""):
                outcomes.append(None)
            else:
                try:
                    outcomes.append(_decoder(result_type).decode(answer.result))
                except msgspec.DecodeError as exc:
                    outcomes.append(StoreServerError(f"the server answered a malformed result: {exc}"))
        return outcomes

    async def _waiting_call(self, method: str, path: str, body: Any, result_type: Any, wait: float, empty: Any) -> Any:
        """A long poll that ``close()`` ends at once (answering ``empty``)."""
        call = asyncio.ensure_future(self._call(method, path, body, result_type, idempotent=False, wait=wait))
        closed = asyncio.ensure_future(self._closing.wait_for(lambda: True if self._closed else None, None))
        try:
            await asyncio.wait((call, closed), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled from outside: the request goes too
            call.cancel()
            raise
        finally:
            closed.cancel()
        if call.done():
            return call.result()
        call.cancel()
        return empty

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._closing.notify()
        with self._loops_lock:
            states, self._loops = dict(self._loops), {}
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, state in states.items():
            state.batcher.fail_pending(StoreClosedError(f"the LightningStoreClient for {self.url} was closed"))
            if loop is current:
                await state.transport.aclose()
            elif not loop.is_closed():
                try:
                    asyncio.run_coroutine_threadsafe(state.transport.aclose(), loop)
                except RuntimeError:
                    pass

    # ------------------------------------------------------------------------------------------------ rollouts

    async def enqueue_rollout(
        self,
        input: Any,
        *,
        mode: RolloutMode | None = None,
        resources_id: str | None = None,
        config: RolloutConfig | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Rollout:
        body = EnqueueRequest(input=input, mode=mode, resources_id=resources_id, config=config, metadata=metadata)
        if self._batch_calls:
            return await self._batched(wire.EnqueueRolloutOp(request=body), Rollout, idempotent=False)
        return await self._call("POST", f"{_P}/rollouts", body, Rollout, idempotent=False)

    async def enqueue_many_rollouts(self, requests: Sequence[EnqueueRequest]) -> list[Rollout]:
        self._check_open()
        if not requests:
            return []
        body = wire.EnqueueManyBody(requests=list(requests))
        return await self._call("POST", f"{_P}/rollouts/batch", body, list[Rollout], idempotent=False)

    async def start_rollout(
        self,
        input: Any,
        *,
        mode: RolloutMode | None = None,
        resources_id: str | None = None,
        config: RolloutConfig | None = None,
        metadata: dict[str, Any] | None = None,
        worker_id: str | None = None,
    ) -> AttemptedRollout:
        body = wire.StartRolloutBody(
            input=input, mode=mode, resources_id=resources_id, config=config, metadata=metadata, worker_id=worker_id
        )
        return await self._call("POST", f"{_P}/rollouts/start", body, AttemptedRollout, idempotent=False)

    async def dequeue_rollout(self, *, worker_id: str | None = None, timeout: float = 0.0) -> AttemptedRollout | None:
        if timeout <= 0:
            if self._batch_calls:
                op = wire.DequeueRolloutOp(worker_id=worker_id)
                return await self._batched(op, AttemptedRollout, idempotent=False)
            body = wire.DequeueBody(worker_id=worker_id)
            return await self._call(
                "POST", f"{_P}/rollouts/dequeue", body, Optional[AttemptedRollout], idempotent=False
            )
        deadline = time.monotonic() + timeout
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            chunk = min(remaining, wire.MAX_WAIT_SECONDS)
            body = wire.DequeueBody(worker_id=worker_id, timeout=chunk)
            got = await self._waiting_call(
                "POST", f"{_P}/rollouts/dequeue", body, Optional[AttemptedRollout], chunk, None
            )
            if got is not None or self._closed or time.monotonic() >= deadline - 0.001:
                return got

    async def dequeue_many_rollouts(
        self, *, limit: int, worker_id: str | None = None, timeout: float = 0.0
    ) -> list[AttemptedRollout]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit!r}")
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            chunk = min(max(0.0, deadline - time.monotonic()), wire.MAX_WAIT_SECONDS)
            body = wire.DequeueManyBody(limit=limit, worker_id=worker_id, timeout=chunk)
            if chunk <= 0:
                return await self._call(
                    "POST", f"{_P}/rollouts/dequeue-many", body, list[AttemptedRollout], idempotent=False
                )
            got = await self._waiting_call(
                "POST", f"{_P}/rollouts/dequeue-many", body, list[AttemptedRollout], chunk, []
            )
            if got or self._closed or time.monotonic() >= deadline - 0.001:
                return got

    async def start_attempt(self, rollout_id: str, *, worker_id: str | None = None) -> AttemptedRollout:
        body = wire.StartAttemptBody(worker_id=worker_id)
        return await self._call(
            "POST", f"{_P}/rollouts/{_q(rollout_id)}/attempts", body, AttemptedRollout, idempotent=False
        )

    async def get_rollout(self, rollout_id: str) -> Rollout:
        if self._batch_calls:
            return await self._batched(wire.GetRolloutOp(rollout_id=rollout_id), Rollout, idempotent=True)
        return await self._call("GET", f"{_P}/rollouts/{_q(rollout_id)}", None, Rollout, idempotent=True)

    async def query_rollouts(
        self,
        *,
        status_in: Sequence[RolloutStatus] | None = None,
        rollout_id_in: Sequence[str] | None = None,
        mode_in: Sequence[RolloutMode] | None = None,
        sort_by: str | None = None,
        sort_order: SortOrder = "asc",
        limit: int | None = None,
        offset: int = 0,
    ) -> PaginatedResult[Rollout]:
        body = wire.RolloutQuery(
            status_in=_list(status_in),
            rollout_id_in=_list(rollout_id_in),
            mode_in=_list(mode_in),
            sort_by=sort_by,
            sort_order=sort_order,
            limit=limit,
            offset=offset,
        )
        return await self._call("POST", f"{_P}/rollouts/query", body, PaginatedResult[Rollout], idempotent=True)

    async def update_rollout(
        self,
        rollout_id: str,
        *,
        status: RolloutStatus | UnsetType = UNSET,
        mode: RolloutMode | None | UnsetType = UNSET,
        resources_id: str | None | UnsetType = UNSET,
        config: RolloutConfig | UnsetType = UNSET,
        metadata: dict[str, Any] | UnsetType = UNSET,
    ) -> Rollout:
        body = wire.RolloutPatch(status=status, mode=mode, resources_id=resources_id, config=config, metadata=metadata)
        # A status change is not safe to repeat (a re-queue twice, a terminal status onto itself).
        return await self._call("PATCH", f"{_P}/rollouts/{_q(rollout_id)}", body, Rollout, idempotent=status is UNSET)

    async def cancel_rollout(self, rollout_id: str) -> Rollout:
        return await self._call("POST", f"{_P}/rollouts/{_q(rollout_id)}/cancel", None, Rollout, idempotent=True)

    async def wait_for_rollouts(self, rollout_ids: Sequence[str], *, timeout: float | None = None) -> list[Rollout]:
        self._check_open()
        ids = list(rollout_ids)
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            remaining = wire.MAX_WAIT_SECONDS if deadline is None else max(0.0, deadline - time.monotonic())
            chunk = min(remaining, wire.MAX_WAIT_SECONDS)
            body = wire.WaitBody(rollout_ids=ids, timeout=chunk)
            if chunk <= 0:
                return await self._call("POST", f"{_P}/rollouts/wait", body, list[Rollout], idempotent=True)
            ended = await self._waiting_call("POST", f"{_P}/rollouts/wait", body, list[Rollout], chunk, [])
            if len(ended) >= len(ids) or self._closed or deadline is not None and time.monotonic() >= deadline:
                return ended

    async def delete_rollouts(
        self, rollout_ids: Sequence[str] | None = None, *, ended_before: float | None = None
    ) -> int:
        body = wire.DeleteBody(rollout_ids=_list(rollout_ids), ended_before=ended_before)
        result = await self._call("POST", f"{_P}/rollouts/delete", body, wire.DeletedCount, idempotent=False)
        return result.deleted

    # ------------------------------------------------------------------------------------------------ attempts

    async def get_attempt(self, rollout_id: str, attempt_id: str = LATEST) -> Attempt:
        path = f"{_P}/rollouts/{_q(rollout_id)}/attempts/{_q(attempt_id)}"
        if self._batch_calls:
            op = wire.GetAttemptOp(rollout_id=rollout_id, attempt_id=attempt_id)
            return await self._batched(op, Attempt, idempotent=True)
        return await self._call("GET", path, None, Attempt, idempotent=True)

    async def query_attempts(
        self,
        rollout_id: str,
        *,
        status_in: Sequence[AttemptStatus] | None = None,
        sort_by: str | None = None,
        sort_order: SortOrder = "asc",
        limit: int | None = None,
        offset: int = 0,
    ) -> PaginatedResult[Attempt]:
        body = wire.AttemptQuery(
            status_in=_list(status_in), sort_by=sort_by, sort_order=sort_order, limit=limit, offset=offset
        )
        path = f"{_P}/rollouts/{_q(rollout_id)}/attempts/query"
        return await self._call("POST", path, body, PaginatedResult[Attempt], idempotent=True)

    async def update_attempt(
        self,
        rollout_id: str,
        attempt_id: str = LATEST,
        *,
        status: AttemptStatus | UnsetType = UNSET,
        worker_id: str | None | UnsetType = UNSET,
        last_heartbeat_time: float | UnsetType = UNSET,
        metadata: dict[str, Any] | UnsetType = UNSET,
    ) -> Attempt:
        body = wire.AttemptPatch(
            status=status, worker_id=worker_id, last_heartbeat_time=last_heartbeat_time, metadata=metadata
        )
        path = f"{_P}/rollouts/{_q(rollout_id)}/attempts/{_q(attempt_id)}"
        # "latest" may name a newer attempt by the time a retry arrives; a named attempt is safe to update twice.
        if self._batch_calls:
            op = wire.UpdateAttemptOp(rollout_id=rollout_id, attempt_id=attempt_id, patch=body)
            return await self._batched(op, Attempt, idempotent=attempt_id != LATEST)
        return await self._call("PATCH", path, body, Attempt, idempotent=attempt_id != LATEST)

    # ------------------------------------------------------------------------------------------------ spans

    async def add_span(self, span: Span) -> Span:
        if self._batch_calls:
            return await self._batched(wire.AddSpanOp(span=span), Span, idempotent=True)
        return await self._call("POST", f"{_P}/spans", span, Span, idempotent=True)

    async def add_many_spans(self, spans: Sequence[Span]) -> list[Span]:
        self._check_open()
        if not spans:
            return []
        return await self._call(
            "POST", f"{_P}/spans/batch", wire.SpanBatch(spans=list(spans)), list[Span], idempotent=True
        )

    async def get_many_span_sequence_ids(self, rollout_id: str, attempt_id: str, count: int) -> list[int]:
        path = f"{_P}/rollouts/{_q(rollout_id)}/attempts/{_q(attempt_id)}/sequence-ids"
        return await self._call("POST", path, wire.SequenceIdsBody(count=count), list[int], idempotent=False)

    async def query_spans(
        self,
        rollout_id: str,
        attempt_id: str | None = None,
        *,
        name: str | None = None,
        sort_by: str | None = None,
        sort_order: SortOrder = "asc",
        limit: int | None = None,
        offset: int = 0,
    ) -> PaginatedResult[Span]:
        body = wire.SpanQuery(
            attempt_id=attempt_id, name=name, sort_by=sort_by, sort_order=sort_order, limit=limit, offset=offset
        )
        path = f"{_P}/rollouts/{_q(rollout_id)}/spans/query"
        return await self._call("POST", path, body, PaginatedResult[Span], idempotent=True)

    # ------------------------------------------------------------------------------------------------ resources

    async def add_resources(self, resources: dict[str, Resource]) -> ResourcesUpdate:
        return await self._call(
            "POST", f"{_P}/resources", wire.ResourcesBody(resources=resources), ResourcesUpdate, idempotent=False
        )

    async def update_resources(self, resources_id: str, resources: dict[str, Resource]) -> ResourcesUpdate:
        return await self._call(
            "PUT",
            f"{_P}/resources/id/{_q(resources_id)}",
            wire.ResourcesBody(resources=resources),
            ResourcesUpdate,
            idempotent=False,
        )

    async def get_resources(self, resources_id: str, version: int | None = None) -> ResourcesUpdate:
        return await self._call(
            "GET",
            f"{_P}/resources/id/{_q(resources_id)}",
            None,
            ResourcesUpdate,
            idempotent=True,
            params=None if version is None else {"version": version},
        )

    async def get_latest_resources(self) -> ResourcesUpdate | None:
        return await self._call("GET", f"{_P}/resources/latest", None, Optional[ResourcesUpdate], idempotent=True)

    async def query_resources(
        self,
        *,
        resources_id: str | None = None,
        sort_by: str | None = None,
        sort_order: SortOrder = "asc",
        limit: int | None = None,
        offset: int = 0,
    ) -> PaginatedResult[ResourcesUpdate]:
        body = wire.ResourcesQuery(
            resources_id=resources_id, sort_by=sort_by, sort_order=sort_order, limit=limit, offset=offset
        )
        return await self._call(
            "POST", f"{_P}/resources/query", body, PaginatedResult[ResourcesUpdate], idempotent=True
        )

    # ------------------------------------------------------------------------------------------------ workers

    async def update_worker(self, worker_id: str, *, heartbeat_stats: dict[str, Any] | UnsetType = UNSET) -> Worker:
        heartbeat = wire.WorkerHeartbeat(heartbeat_stats=heartbeat_stats)
        if self._batch_calls:
            return await self._batched(
                wire.UpdateWorkerOp(worker_id=worker_id, heartbeat=heartbeat), Worker, idempotent=True
            )
        return await self._call("PUT", f"{_P}/workers/id/{_q(worker_id)}", heartbeat, Worker, idempotent=True)

    async def get_worker(self, worker_id: str) -> Worker:
        return await self._call("GET", f"{_P}/workers/id/{_q(worker_id)}", None, Worker, idempotent=True)

    async def query_workers(
        self,
        *,
        status_in: Sequence[WorkerStatus] | None = None,
        sort_by: str | None = None,
        sort_order: SortOrder = "asc",
        limit: int | None = None,
        offset: int = 0,
    ) -> PaginatedResult[Worker]:
        body = wire.WorkerQuery(
            status_in=_list(status_in), sort_by=sort_by, sort_order=sort_order, limit=limit, offset=offset
        )
        return await self._call("POST", f"{_P}/workers/query", body, PaginatedResult[Worker], idempotent=True)

    # ------------------------------------------------------------------------------------------------ misc

    async def statistics(self) -> StoreStatistics:
        return await self._call("GET", f"{_P}/statistics", None, StoreStatistics, idempotent=True)


def _q(segment: str) -> str:
    """A path segment, percent-encoded (ids may hold any character)."""
    return quote(segment, safe="")


def _list(values: Sequence[T] | None) -> list[T] | None:
    return None if values is None else list(values)
