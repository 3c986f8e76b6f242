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
import inspect
import threading
import time
from collections.abc import Sequence
from typing import Any, Optional, TypeVar
from urllib.parse import quote

import attrs
from msgspec import UNSET, UnsetType

from agl_kernel._client_core import (
    DEFAULT_URL,
    ClientCore,
    StoreAuthError,
    StoreConnectionError,
    StoreHTTPError,
    StoreRequestError,
    StoreServerError,
)
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
    StoreStatistics,
    Worker,
    WorkerStatus,
)
from agl_kernel.server import _wire as wire
from agl_kernel.store.base import LATEST, LightningStore, SortOrder

__all__ = [
    "DEFAULT_URL",
    "LightningStoreClient",
    "StoreAuthError",
    "StoreConnectionError",
    "StoreHTTPError",
    "StoreRequestError",
    "StoreServerError",
    "SyncLightningStoreClient",
]

T = TypeVar("T")
_P = wire.API_PREFIX


@attrs.define(kw_only=True)
class HttpStoreOptions:
    """Options of the store server client (``http``)."""

    url: Optional[str] = None
    """The store server's URL, http://host:port (default: $AGL_STORE_URL, else http://127.0.0.1:4747)."""
    token: Optional[str] = attrs.field(default=None, repr=False)
    """The server's bearer token (default: $AGL_STORE_TOKEN)."""
    timeout: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    """Seconds to wait for an answer (long polls get their waiting time on top)."""
    retries: int = attrs.field(default=8, validator=attrs.validators.ge(0))
    """How often a request that did not get through is retried."""
    backoff: float = attrs.field(default=0.05, validator=attrs.validators.ge(0))
    """Seconds before the first retry; doubled (with jitter) for each next one."""
    max_backoff: float = attrs.field(default=2.0, validator=attrs.validators.ge(0))
    """The longest wait between two retries, in seconds."""
    max_connections: int = attrs.field(default=256, validator=attrs.validators.ge(1))
    """Keep-alive connections to the server, at most."""
    batch_calls: bool = True
    """Send the short calls that tasks make while earlier ones are on the wire together, in one request."""
    max_batch: int = attrs.field(default=1000, validator=attrs.validators.ge(1))
    """Calls in one batched request, at most."""


class LightningStoreClient(ClientCore, LightningStore):
    """A :class:`LightningStore` served by an agl store server at ``url``.

    - ``token``: the server's bearer token (default: ``AGL_STORE_TOKEN``); ``url`` defaults to ``AGL_STORE_URL``
      or ``http://127.0.0.1:4747``.
    - ``timeout``: seconds to wait for an answer (long polls get their waiting time on top).
    - ``retries`` / ``backoff`` / ``max_backoff``: how often and how patiently to retry (see the module docs);
      the defaults ride out a server restart of a few seconds.
    - ``transport_factory``: makes the httpx transport for each event loop (default: a fast keep-alive pool of
      up to ``max_connections``).
    - ``batch_calls``: send the short calls (enqueue, dequeue without waiting, spans, attempt and worker updates,
      gets) that tasks make while earlier ones are on the wire together, up to ``max_batch`` in one request
      (default ``True``).
    """

    Options = HttpStoreOptions

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
                f"{_P}/rollouts/dequeue", body, Optional[AttemptedRollout], chunk, None, idempotent=False
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
                f"{_P}/rollouts/dequeue-many", body, list[AttemptedRollout], chunk, [], idempotent=False
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
            ended = await self._waiting_call(f"{_P}/rollouts/wait", body, list[Rollout], chunk, [], idempotent=True)
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


class SyncLightningStoreClient:
    """Blocking access to a store server, for scripts and notebooks: every coroutine method of
    :class:`LightningStoreClient` becomes a plain call, run on a private event-loop thread.

        with SyncLightningStoreClient("http://127.0.0.1:4747") as store:
            print(store.statistics())
    """

    def __init__(self, url: str | None = None, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="agl-store-client", daemon=True)
        self._thread.start()
        self.client = LightningStoreClient(url, **options)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            return asyncio.run_coroutine_threadsafe(attr(*args, **kwargs), self._loop).result()

        call.__doc__ = attr.__doc__
        return call

    def close(self) -> None:
        if self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self.client.close(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> SyncLightningStoreClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _q(segment: str) -> str:
    """A path segment, percent-encoded (ids may hold any character)."""
    return quote(segment, safe="")


def _list(values: Sequence[T] | None) -> list[T] | None:
    return None if values is None else list(values)
