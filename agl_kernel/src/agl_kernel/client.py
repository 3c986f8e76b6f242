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
from typing import Any, TypeVar

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
from agl_kernel.server._operations import OPERATIONS
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


@attrs.define(kw_only=True)
class HttpStoreOptions:
    """Options of the store server client (``http``)."""

    url: str | None = None
    """The store server's URL, http://host:port (default: $AGL_STORE_URL, else http://127.0.0.1:4747)."""
    token: str | None = attrs.field(default=None, repr=False)
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

    async def _store_call(self, name: str, *arguments: Any, wait: float = 0.0, empty: Any = None) -> Any:
        """The store method ``name`` on the server, for ``arguments`` (see :mod:`agl_kernel.server._operations`):
        in a batch for a short call, as a long poll that ``close()`` ends (answering ``empty``) when ``wait``."""
        op = OPERATIONS[name]
        idempotent = op.is_idempotent(*arguments)
        if op.batch is not None and self._batch_calls and not wait:
            return await self._batched(op.to_batch(*arguments), op.result, idempotent=idempotent)
        path, body, params = op.request(*arguments)
        if wait:
            return await self._waiting_call(path, body, op.result, wait, empty, idempotent=idempotent)
        return await self._call(op.method, path, body, op.result, idempotent=idempotent, params=params)

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
        rollout: Rollout = await self._store_call("enqueue_rollout", body)
        return rollout

    async def enqueue_many_rollouts(self, requests: Sequence[EnqueueRequest]) -> list[Rollout]:
        self._check_open()
        if not requests:
            return []
        rollouts: list[Rollout] = await self._store_call(
            "enqueue_many_rollouts", wire.EnqueueManyBody(requests=list(requests))
        )
        return rollouts

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
        attempted: AttemptedRollout = await self._store_call("start_rollout", body)
        return attempted

    async def dequeue_rollout(self, *, worker_id: str | None = None, timeout: float = 0.0) -> AttemptedRollout | None:
        if timeout <= 0:
            attempted: AttemptedRollout | None = await self._store_call(
                "dequeue_rollout", wire.DequeueBody(worker_id=worker_id)
            )
            return attempted
        deadline = time.monotonic() + timeout
        while True:
            chunk = min(max(0.0, deadline - time.monotonic()), wire.MAX_WAIT_SECONDS)
            body = wire.DequeueBody(worker_id=worker_id, timeout=chunk)
            got: AttemptedRollout | None = await self._store_call("dequeue_rollout", body, wait=chunk)
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
            got: list[AttemptedRollout] = await self._store_call("dequeue_many_rollouts", body, wait=chunk, empty=[])
            if got or self._closed or time.monotonic() >= deadline - 0.001:
                return got

    async def start_attempt(self, rollout_id: str, *, worker_id: str | None = None) -> AttemptedRollout:
        attempted: AttemptedRollout = await self._store_call(
            "start_attempt", rollout_id, wire.StartAttemptBody(worker_id=worker_id)
        )
        return attempted

    async def get_rollout(self, rollout_id: str) -> Rollout:
        rollout: Rollout = await self._store_call("get_rollout", rollout_id)
        return rollout

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
        page: PaginatedResult[Rollout] = await self._store_call("query_rollouts", body)
        return page

    async def update_rollout(
        self,
        rollout_id: str,
        *,
        status: RolloutStatus | UnsetType = UNSET,
        mode: RolloutMode | UnsetType | None = UNSET,
        resources_id: str | UnsetType | None = UNSET,
        config: RolloutConfig | UnsetType = UNSET,
        metadata: dict[str, Any] | UnsetType = UNSET,
    ) -> Rollout:
        body = wire.RolloutPatch(status=status, mode=mode, resources_id=resources_id, config=config, metadata=metadata)
        rollout: Rollout = await self._store_call("update_rollout", rollout_id, body)
        return rollout

    async def cancel_rollout(self, rollout_id: str) -> Rollout:
        rollout: Rollout = await self._store_call("cancel_rollout", rollout_id)
        return rollout

    async def wait_for_rollouts(self, rollout_ids: Sequence[str], *, timeout: float | None = None) -> list[Rollout]:
        self._check_open()
        ids = list(rollout_ids)
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            remaining = wire.MAX_WAIT_SECONDS if deadline is None else max(0.0, deadline - time.monotonic())
            chunk = min(remaining, wire.MAX_WAIT_SECONDS)
            body = wire.WaitBody(rollout_ids=ids, timeout=chunk)
            ended: list[Rollout] = await self._store_call("wait_for_rollouts", body, wait=chunk, empty=[])
            if len(ended) >= len(ids) or self._closed or (deadline is not None and time.monotonic() >= deadline):
                return ended

    async def delete_rollouts(
        self, rollout_ids: Sequence[str] | None = None, *, ended_before: float | None = None
    ) -> int:
        body = wire.DeleteBody(rollout_ids=_list(rollout_ids), ended_before=ended_before)
        deleted: wire.DeletedCount = await self._store_call("delete_rollouts", body)
        return deleted.deleted

    # ------------------------------------------------------------------------------------------------ attempts

    async def get_attempt(self, rollout_id: str, attempt_id: str = LATEST) -> Attempt:
        attempt: Attempt = await self._store_call("get_attempt", rollout_id, attempt_id)
        return attempt

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
        page: PaginatedResult[Attempt] = await self._store_call("query_attempts", rollout_id, body)
        return page

    async def update_attempt(
        self,
        rollout_id: str,
        attempt_id: str = LATEST,
        *,
        status: AttemptStatus | UnsetType = UNSET,
        worker_id: str | UnsetType | None = UNSET,
        last_heartbeat_time: float | UnsetType = UNSET,
        metadata: dict[str, Any] | UnsetType = UNSET,
    ) -> Attempt:
        body = wire.AttemptPatch(
            status=status, worker_id=worker_id, last_heartbeat_time=last_heartbeat_time, metadata=metadata
        )
        attempt: Attempt = await self._store_call("update_attempt", rollout_id, attempt_id, body)
        return attempt

    # ------------------------------------------------------------------------------------------------ spans

    async def add_span(self, span: Span) -> Span:
        stored: Span = await self._store_call("add_span", span)
        return stored

    async def add_many_spans(self, spans: Sequence[Span]) -> list[Span]:
        self._check_open()
        if not spans:
            return []
        stored: list[Span] = await self._store_call("add_many_spans", wire.SpanBatch(spans=list(spans)))
        return stored

    async def get_many_span_sequence_ids(self, rollout_id: str, attempt_id: str, count: int) -> list[int]:
        sequence_ids: list[int] = await self._store_call(
            "get_many_span_sequence_ids", rollout_id, attempt_id, wire.SequenceIdsBody(count=count)
        )
        return sequence_ids

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
        page: PaginatedResult[Span] = await self._store_call("query_spans", rollout_id, body)
        return page

    # ------------------------------------------------------------------------------------------------ resources

    async def add_resources(self, resources: dict[str, Resource]) -> ResourcesUpdate:
        update: ResourcesUpdate = await self._store_call("add_resources", wire.ResourcesBody(resources=resources))
        return update

    async def update_resources(self, resources_id: str, resources: dict[str, Resource]) -> ResourcesUpdate:
        update: ResourcesUpdate = await self._store_call(
            "update_resources", resources_id, wire.ResourcesBody(resources=resources)
        )
        return update

    async def get_resources(self, resources_id: str, version: int | None = None) -> ResourcesUpdate:
        update: ResourcesUpdate = await self._store_call("get_resources", resources_id, version)
        return update

    async def get_latest_resources(self) -> ResourcesUpdate | None:
        update: ResourcesUpdate | None = await self._store_call("get_latest_resources")
        return update

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
        page: PaginatedResult[ResourcesUpdate] = await self._store_call("query_resources", body)
        return page

    # ------------------------------------------------------------------------------------------------ workers

    async def update_worker(self, worker_id: str, *, heartbeat_stats: dict[str, Any] | UnsetType = UNSET) -> Worker:
        heartbeat = wire.WorkerHeartbeat(heartbeat_stats=heartbeat_stats)
        worker: Worker = await self._store_call("update_worker", worker_id, heartbeat)
        return worker

    async def get_worker(self, worker_id: str) -> Worker:
        worker: Worker = await self._store_call("get_worker", worker_id)
        return worker

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
        page: PaginatedResult[Worker] = await self._store_call("query_workers", body)
        return page

    # ------------------------------------------------------------------------------------------------ misc

    async def statistics(self) -> StoreStatistics:
        stats: StoreStatistics = await self._store_call("statistics")
        return stats


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


def _list(values: Sequence[T] | None) -> list[T] | None:
    return None if values is None else list(values)
