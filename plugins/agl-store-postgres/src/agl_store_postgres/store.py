"""``PostgresLightningStore``: the store contract on PostgreSQL (entry point ``postgres`` in ``agl.stores``)."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from msgspec import UNSET, UnsetType
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from agl_kernel.errors import NotFoundError, StoreClosedError
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
from agl_kernel.store import policy
from agl_kernel.store.base import LATEST, LightningStore, SortOrder
from agl_kernel.store.blobs import DEFAULT_CONFIG, encode_config
from agl_kernel.store.query import check_query
from agl_kernel.store.waiting import BackgroundLoop, Bell, claim_waiting, wait_until_ended
from agl_store_postgres import _ops as ops
from agl_store_postgres import _reads as reads
from agl_store_postgres._batching import SpanBatcher
from agl_store_postgres._codec import check_int64, encode_any, encode_dict, encode_resources, encode_span
from agl_store_postgres._database import Conn, Tx, channels, connect, make_pool, run_direct, run_transaction
from agl_store_postgres._errors import redact
from agl_store_postgres._monitor import Monitor
from agl_store_postgres._options import DEFAULT_DSN, PostgresStoreOptions, check_name, seconds
from agl_store_postgres._schema import ensure_schema

__all__ = ["PostgresLightningStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Row = dict[str, Any]

_CLAIM_CHUNK = 1000
"""Rollouts one call of ``agl_claim`` takes at most (a larger ``dequeue_many_rollouts`` makes several)."""


@dataclass
class _Lane:
    """What the store keeps per event loop: psycopg's async connections belong to the loop that made them."""

    pool: AsyncConnectionPool[Conn]
    spans: SpanBatcher
    opened: asyncio.Task[None]


class PostgresLightningStore(LightningStore):
    """A durable store on PostgreSQL, shared by every process and machine that opens the same database and schema.

    - ``dsn``: the connection string (``postgresql://USER:PASSWORD@HOST:PORT/DATABASE`` or libpq's key=value form).
    - ``schema``: the PostgreSQL schema of the store's tables; trainers that share a database each use their own
      and never see each other's rollouts.
    - ``pool_size``: connections each event loop using the store may hold at once.
    - ``connect_timeout``: how long opening the store waits for the server; an unreachable server, refused
      credentials, a missing database and a schema written by a newer version of this plugin are each an error that
      says what to do (:class:`~agl_store_postgres.PostgresStoreError` and its subclasses).
    - ``transaction_timeout``, ``max_transaction_tries``: how long and how often a transaction is retried
      (serialization failures, deadlocks, a connection lost before the commit).
    - ``watchdog_interval``: seconds between the watchdog's checks of timeouts and heartbeats.
    - ``notify``, ``poll_interval``: waiters wake from LISTEN/NOTIFY (other processes' enqueues and endings); while
      the listener's connection is down (or with ``notify=False``) they check every ``poll_interval`` seconds.

    Exactly-once dequeue holds across processes and machines: a claim takes the queue's head with ``SELECT ... FOR
    UPDATE SKIP LOCKED`` inside the transaction that creates the attempt. Each event loop that uses the store gets
    its own connection pool.
    """

    Options = PostgresStoreOptions

    def __init__(
        self,
        dsn: str = DEFAULT_DSN,
        *,
        schema: str = "agl",
        pool_size: int = 10,
        connect_timeout: float = 5.0,
        transaction_timeout: float = 30.0,
        max_transaction_tries: int = 100,
        watchdog_interval: float = 0.5,
        notify: bool = True,
        poll_interval: float = 0.5,
    ) -> None:
        self._dsn = str(dsn)
        self._schema = check_name("schema", schema)
        self._pool_size = int(pool_size)
        if self._pool_size < 1:
            raise ValueError(f"'pool_size' must be >= 1, not {pool_size!r}")
        self._connect_timeout = seconds("connect_timeout", connect_timeout)
        self._transaction_timeout = seconds("transaction_timeout", transaction_timeout)
        self._max_tries = int(max_transaction_tries)
        if self._max_tries < 1:
            raise ValueError(f"'max_transaction_tries' must be >= 1, not {max_transaction_tries!r}")
        watchdog_interval = seconds("watchdog_interval", watchdog_interval)
        poll_interval = seconds("poll_interval", poll_interval)
        self._channels = channels(self._schema)
        self._closed = False
        self._lock = threading.Lock()
        self._lanes: dict[asyncio.AbstractEventLoop, _Lane] = {}
        self._queue_bell = Bell()
        self._ended_bell = Bell()
        self._background = BackgroundLoop(f"agl-postgres:{self._schema}")
        try:
            opened = self._background.submit(self._open(bool(notify), poll_interval, watchdog_interval))
            self._monitor: Monitor = opened.result(timeout=self._connect_timeout * 3 + 60)
        except BaseException:
            self._closed = True
            self._background.submit(self._close_background_pool()).result(timeout=10)
            self._background.stop()
            raise

    async def _open(self, notify: bool, poll_interval: float, watchdog_interval: float) -> Monitor:
        # One connection of our own first: its failure says exactly what is wrong (a pool would only time out).
        conn = await connect(self._dsn, self._connect_timeout)
        async with conn:
            await ensure_schema(conn, self._schema, self._dsn)
        await self._pool()
        monitor = Monitor(
            self._dsn,
            self._schema,
            queue=self._queue_bell,
            ended=self._ended_bell,
            notify=notify,
            connect_timeout=self._connect_timeout,
            poll_interval=poll_interval,
            watchdog_interval=watchdog_interval,
            check_deadlines=self.check_deadlines,
        )
        monitor.start()
        return monitor

    def __repr__(self) -> str:
        return f"PostgresLightningStore({redact(self._dsn)!r}, schema={self._schema!r})"

    def describe(self) -> str:
        """One line for the console: the server (without the password) and the schema."""
        return f"postgres {redact(self._dsn)} (schema {self._schema!r})"

    @property
    def dsn(self) -> str:
        """The connection string, without its password."""
        return redact(self._dsn)

    @property
    def schema(self) -> str:
        return self._schema

    @property
    def listening(self) -> bool:
        """Whether waiters are woken by LISTEN/NOTIFY now (else they check every ``poll_interval`` seconds)."""
        return self._monitor.listening

    @property
    def listener_pid(self) -> int | None:
        """The server process id of the listener's connection, while it is up."""
        return self._monitor.connection_pid

    @property
    def capabilities(self) -> StoreCapabilities:
        return StoreCapabilities(thread_safe=True, async_safe=True, durable=True, multi_process=True)

    # ------------------------------------------------------------------------------------------------ plumbing

    async def _lane(self) -> _Lane:
        """This event loop's pool and span batcher."""
        loop = asyncio.get_running_loop()
        found = self._lanes.get(loop)
        if found is None:
            with self._lock:
                for stale in [other for other in self._lanes if other.is_closed()]:
                    del self._lanes[stale]  # its loop is gone, and its connections with it
                found = self._lanes.get(loop)
                if found is None:
                    pool = make_pool(
                        self._dsn, self._schema, size=self._pool_size, connect_timeout=self._connect_timeout
                    )
                    opened = loop.create_task(self._open_pool(pool))
                    found = self._lanes[loop] = _Lane(pool, SpanBatcher(self._write_spans), opened)
        if not found.opened.done():
            await asyncio.shield(found.opened)
        return found

    async def _open_pool(self, pool: AsyncConnectionPool[Conn]) -> None:
        # Its first connection before the first call: a call that found none would make the pool grow in the
        # background, and psycopg's pool cannot be cancelled while it connects (an asyncio.run() ending then would
        # wait for ever).
        try:
            await pool.open(wait=True, timeout=self._connect_timeout)
        except PoolTimeout:
            pass  # the pool keeps trying; calls wait for it (and say so after transaction_timeout)

    async def _pool(self) -> AsyncConnectionPool[Conn]:
        return (await self._lane()).pool

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(
                f"the PostgreSQL store ({self.describe()}) is closed; open a new PostgresLightningStore"
            )

    def _to_notify(self, tx: Tx) -> list[str]:
        queue, ended = self._channels
        return [queue] * tx.wake_queue + [ended] * tx.wake_ended

    def _after(self, tx: Tx) -> None:
        if tx.wake_queue:
            self._queue_bell.ring()
        if tx.wake_ended:
            self._ended_bell.ring()

    async def _tx(self, op: Callable[[Tx], Awaitable[T]]) -> T:
        """Run ``op`` in a transaction (retried on serialization failures, deadlocks and lost connections)."""
        self._check_open()
        return await run_transaction(
            await self._pool(), op, dsn=self._dsn, timeout=self._transaction_timeout, max_tries=self._max_tries,
            notify=self._to_notify, on_commit=self._after,
        )  # fmt: skip

    async def _direct(self, op: Callable[[Tx], Awaitable[T]]) -> T:
        """Run a read, or one call of a schema function, without an explicit transaction."""
        self._check_open()
        return await run_direct(await self._pool(), op, dsn=self._dsn, timeout=self._transaction_timeout)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue_bell.ring()
        self._ended_bell.ring()
        try:
            await asyncio.wrap_future(self._background.submit(self._close_background()))
        except Exception:  # closing must not fail; the thread is a daemon
            logger.debug("agl-store-postgres: closing the background loop failed", exc_info=True)
        self._background.stop()
        current = asyncio.get_running_loop()
        with self._lock:
            lanes, self._lanes = dict(self._lanes), {}
        for loop, lane in lanes.items():
            if loop is current:
                await lane.pool.close()
            elif not loop.is_closed() and loop.is_running():
                asyncio.run_coroutine_threadsafe(lane.pool.close(), loop)

    async def _close_background(self) -> None:
        await self._monitor.stop()
        await self._close_background_pool()

    async def _close_background_pool(self) -> None:
        with self._lock:
            found = self._lanes.pop(asyncio.get_running_loop(), None)
        if found is not None:
            await found.pool.close()

    # ------------------------------------------------------------------------------------------------ watchdog

    async def check_deadlines(self, now: float) -> int:
        """Apply timeouts and heartbeat deadlines as of ``now``; returns how many attempts changed. The watchdog
        calls this every ``watchdog_interval``; several processes may run theirs on one schema: each change is
        checked again inside its transaction."""
        if self._closed:
            return 0
        pairs = await self._direct(ops.watched)
        changed = 0
        for rollout_id, attempt_id in ops.due(pairs, now):
            if await self._tx(lambda tx, r=rollout_id, a=attempt_id: ops.apply_deadline(tx, r, a, now)):  # type: ignore[misc]
                changed += 1
        return changed

    # ------------------------------------------------------------------------------------------------ rollouts

    @staticmethod
    def _request(
        input: Any,
        mode: RolloutMode | None,
        resources_id: str | None,
        config: RolloutConfig | None,
        metadata: dict[str, Any] | None,
    ) -> ops.EnqueueItem:
        mode = None if mode is None else RolloutMode(mode)
        return (
            input, encode_any(input, "rollout input"), mode, resources_id, config or DEFAULT_CONFIG,
            encode_config(config), metadata or {}, encode_dict(metadata, "rollout metadata"),
        )  # fmt: skip

    async def enqueue_rollout(
        self,
        input: Any,
        *,
        mode: RolloutMode | None = None,
        resources_id: str | None = None,
        config: RolloutConfig | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Rollout:
        return (await self._enqueue([self._request(input, mode, resources_id, config, metadata)]))[0]

    async def enqueue_many_rollouts(self, requests: Sequence[EnqueueRequest]) -> list[Rollout]:
        prepared = [self._request(r.input, r.mode, r.resources_id, r.config, r.metadata) for r in requests]
        self._check_open()
        if not prepared:
            return []
        return await self._enqueue(prepared)

    async def _enqueue(self, prepared: list[ops.EnqueueItem]) -> list[Rollout]:
        ids, now, channel = [policy.new_rollout_id() for _ in prepared], time.time(), self._channels[0]
        queued = await self._direct(lambda tx: ops.enqueue(tx, prepared, ids, now, channel))
        self._queue_bell.ring()
        return queued

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
        request = self._request(input, mode, resources_id, config, metadata)
        return await self._tx(lambda tx: ops.start_rollout(tx, request, worker_id))

    async def dequeue_rollout(self, *, worker_id: str | None = None, timeout: float = 0.0) -> AttemptedRollout | None:
        taken = await self.dequeue_many_rollouts(limit=1, worker_id=worker_id, timeout=timeout)
        return taken[0] if taken else None

    async def _claim(self, limit: int, worker_id: str | None) -> list[AttemptedRollout]:
        # Concurrent claimers skip each other's rows (FOR UPDATE SKIP LOCKED): no convoy on the queue's head.
        claimed: list[AttemptedRollout] = []
        while len(claimed) < limit:
            ids = [policy.new_attempt_id() for _ in range(min(limit - len(claimed), _CLAIM_CHUNK))]
            now = time.time()
            taken = await self._direct(lambda tx: ops.claim(tx, ids, worker_id, now))  # noqa: B023 (awaited here)
            claimed += taken
            if len(taken) < len(ids):
                break
        return claimed

    async def dequeue_many_rollouts(
        self, *, limit: int, worker_id: str | None = None, timeout: float = 0.0
    ) -> list[AttemptedRollout]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit!r}")
        check_int64(limit, "limit")
        # A woken waiter tries the claim itself instead of first asking whether the queue holds something: a claim
        # that finds nothing writes nothing (no commit to flush), and the wake-up saves a round trip. What it took
        # is handed out by the claim that claim_waiting makes next, with no await in between.
        stash: list[AttemptedRollout] = []

        async def has_work() -> bool:
            stash[:] = await self._claim(limit, worker_id)
            return bool(stash)

        async def claim() -> list[AttemptedRollout]:
            if stash:
                taken = stash[:]
                stash.clear()
                return taken
            return await self._claim(limit, worker_id)

        started = time.monotonic()
        taken = await claim()
        if taken or timeout <= 0:
            return taken
        # Only now does this process need the queue's notifications (claim_waiting claims again first).
        left = max(0.001, timeout - (time.monotonic() - started))
        with self._monitor.waiting(self._channels[0]):
            return await claim_waiting(self._queue_bell, claim, has_work, left, lambda: self._closed)

    async def start_attempt(self, rollout_id: str, *, worker_id: str | None = None) -> AttemptedRollout:
        return await self._tx(lambda tx: ops.start_attempt(tx, rollout_id, worker_id))

    async def get_rollout(self, rollout_id: str) -> Rollout:
        return await self._direct(lambda tx: reads.get_rollout(tx, rollout_id))

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
        check_query("rollouts", sort_by, sort_order, limit, offset)
        check_int64(limit, "limit")
        check_int64(offset, "offset")
        return await self._direct(
            lambda tx: reads.query_rollouts(tx, status_in, rollout_id_in, mode_in, sort_by, sort_order, limit, offset)
        )

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
        changes: Row = {}
        if mode is not UNSET:
            changes["mode"] = None if mode is None else RolloutMode(mode).value
        if config is not UNSET:
            changes["config"] = encode_config(config)
            changes["supervised"] = policy.is_supervised(config)
        if metadata is not UNSET:
            changes["metadata"] = encode_dict(metadata, "rollout metadata")
        if resources_id is not UNSET:
            changes["resources_id"] = resources_id
        new_status = None if status is UNSET else RolloutStatus(status)
        return await self._tx(lambda tx: ops.update_rollout(tx, rollout_id, new_status, changes))

    async def wait_for_rollouts(self, rollout_ids: Sequence[str], *, timeout: float | None = None) -> list[Rollout]:
        wanted = list(dict.fromkeys(rollout_ids))
        missing = await self._direct(lambda tx: reads.missing_rollouts(tx, wanted))
        if missing:
            raise NotFoundError(f"no rollout with id {missing[0]!r}")
        with self._monitor.waiting(self._channels[1]):
            return await wait_until_ended(
                self._ended_bell,
                lambda ids: self._direct(functools.partial(reads.ended_rollouts, ids=ids)),
                wanted,
                timeout,
                lambda: self._closed,
            )

    async def delete_rollouts(
        self, rollout_ids: Sequence[str] | None = None, *, ended_before: float | None = None
    ) -> int:
        check_int64(ended_before, "ended_before")
        ids = None if rollout_ids is None else list(rollout_ids)
        return await self._tx(lambda tx: ops.delete_rollouts(tx, ids, ended_before))

    # ------------------------------------------------------------------------------------------------ attempts

    async def get_attempt(self, rollout_id: str, attempt_id: str = LATEST) -> Attempt:
        return await self._direct(lambda tx: reads.get_attempt(tx, rollout_id, attempt_id))

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
        check_query("attempts", sort_by, sort_order, limit, offset)
        check_int64(limit, "limit")
        return await self._direct(
            lambda tx: reads.query_attempts(tx, rollout_id, status_in, sort_by, sort_order, limit, offset)
        )

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
        changes: Row = {}
        if worker_id is not UNSET:
            changes["worker_id"] = worker_id
        if metadata is not UNSET:
            changes["metadata"] = encode_dict(metadata, "attempt metadata")
        if last_heartbeat_time is not UNSET:
            check_int64(last_heartbeat_time, "last_heartbeat_time")
        new_status = None if status is UNSET else AttemptStatus(status)
        heartbeat = None if last_heartbeat_time is UNSET else last_heartbeat_time
        plan = None if new_status is None or changes else ops.move_plan(new_status)
        if plan is not None and new_status is not None:  # the common case in one call, or nothing done
            moved = await self._direct(
                lambda tx: ops.move_attempt(tx, rollout_id, attempt_id, new_status, heartbeat, plan, self._channels)
            )
            if moved is not None:
                target = plan.rollout_status
                if target is not None and target in policy.QUEUED_STATUSES:
                    self._queue_bell.ring()
                elif target is not None and target.is_terminal:
                    self._ended_bell.ring()
                return moved
        return await self._tx(lambda tx: ops.update_attempt(tx, rollout_id, attempt_id, new_status, heartbeat, changes))

    # ------------------------------------------------------------------------------------------------ spans

    @staticmethod
    def _encode_span(span: Span) -> tuple[Span, bytes]:
        if span.sequence_id > 0:
            check_int64(span.sequence_id, f"the sequence id of span {span.span_id!r}")
        check_int64(span.start_time, f"the start time of span {span.span_id!r}")
        check_int64(span.end_time, f"the end time of span {span.span_id!r}")
        return span, encode_span(span)

    async def add_span(self, span: Span) -> Span:
        pair = self._encode_span(span)
        self._check_open()
        if span.attempt_id != LATEST:
            stored = await (await self._lane()).spans.add(*pair)
            if stored is not None:
                return stored
        return (await self._tx(lambda tx: ops.store_spans(tx, [pair])))[0]

    async def add_many_spans(self, spans: Sequence[Span]) -> list[Span]:
        pairs = [self._encode_span(span) for span in spans]
        self._check_open()
        if not pairs:
            return []
        if all(span.attempt_id != LATEST for span, _ in pairs):
            try:
                stored = await self._direct(lambda tx: ops.store_live_spans(tx, pairs, everything=True))
            except (psycopg.errors.UniqueViolation, psycopg.errors.DataError):
                stored = [None]  # stored meanwhile, or a sequence id out of range: the general path says which
            if None not in stored:
                return stored  # type: ignore[return-value]
        return await self._tx(lambda tx: ops.store_spans(tx, pairs))

    async def _write_spans(self, pairs: Sequence[tuple[Span, bytes]]) -> list[Span | None]:
        """A batch of :class:`SpanBatcher`: each span on its own (those left go the general path one by one)."""
        return await self._direct(lambda tx: ops.store_live_spans(tx, pairs, everything=False))

    async def get_many_span_sequence_ids(self, rollout_id: str, attempt_id: str, count: int) -> list[int]:
        if count < 1:
            raise ValueError(f"count must be at least 1, not {count!r}")
        check_int64(count, "count")
        return await self._tx(lambda tx: ops.reserve_sequence_ids(tx, rollout_id, attempt_id, count))

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
        check_query("spans", sort_by, sort_order, limit, offset)
        check_int64(limit, "limit")
        return await self._direct(
            lambda tx: reads.query_spans(tx, rollout_id, attempt_id, name, sort_by, sort_order, limit, offset)
        )

    # ------------------------------------------------------------------------------------------------ resources

    async def add_resources(self, resources: dict[str, Resource]) -> ResourcesUpdate:
        return await self.update_resources(policy.new_resources_id(), resources)

    async def update_resources(self, resources_id: str, resources: dict[str, Resource]) -> ResourcesUpdate:
        blob = encode_resources(resources)
        return await self._tx(lambda tx: ops.update_resources(tx, resources_id, resources, blob))

    async def get_resources(self, resources_id: str, version: int | None = None) -> ResourcesUpdate:
        check_int64(version, "version")
        return await self._direct(lambda tx: reads.get_resources(tx, resources_id, version))

    async def get_latest_resources(self) -> ResourcesUpdate | None:
        return await self._direct(reads.get_latest_resources)

    async def query_resources(
        self,
        *,
        resources_id: str | None = None,
        sort_by: str | None = None,
        sort_order: SortOrder = "asc",
        limit: int | None = None,
        offset: int = 0,
    ) -> PaginatedResult[ResourcesUpdate]:
        check_query("resources", sort_by, sort_order, limit, offset)
        check_int64(limit, "limit")
        return await self._direct(
            lambda tx: reads.query_resources(tx, resources_id, sort_by, sort_order, limit, offset)
        )

    # ------------------------------------------------------------------------------------------------ workers

    async def update_worker(self, worker_id: str, *, heartbeat_stats: dict[str, Any] | UnsetType = UNSET) -> Worker:
        stats = False if heartbeat_stats is UNSET else encode_dict(heartbeat_stats, "worker heartbeat stats")
        return await self._tx(lambda tx: ops.update_worker(tx, worker_id, stats))

    async def get_worker(self, worker_id: str) -> Worker:
        return await self._direct(lambda tx: reads.get_worker(tx, worker_id))

    async def query_workers(
        self,
        *,
        status_in: Sequence[WorkerStatus] | None = None,
        sort_by: str | None = None,
        sort_order: SortOrder = "asc",
        limit: int | None = None,
        offset: int = 0,
    ) -> PaginatedResult[Worker]:
        check_query("workers", sort_by, sort_order, limit, offset)
        check_int64(limit, "limit")
        return await self._direct(lambda tx: reads.query_workers(tx, status_in, sort_by, sort_order, limit, offset))

    # ------------------------------------------------------------------------------------------------ misc

    async def statistics(self) -> StoreStatistics:
        return await self._direct(reads.statistics)
