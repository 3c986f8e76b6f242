"""``MongoLightningStore``: the store contract on MongoDB (entry point ``mongo`` in ``agl.stores``)."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from msgspec import UNSET, UnsetType
from pymongo import AsyncMongoClient
from pymongo.errors import DuplicateKeyError, PyMongoError

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
from agl_store_mongo import _ops as ops
from agl_store_mongo import _reads as reads
from agl_store_mongo._codec import check_int64, encode_any, encode_dict, encode_resources, encode_span
from agl_store_mongo._database import (
    Collections,
    Tx,
    check_server,
    ensure_schema,
    make_client,
    run_transaction,
    translate_error,
)
from agl_store_mongo._errors import redact
from agl_store_mongo._monitor import Monitor
from agl_store_mongo._options import DEFAULT_URI, MongoStoreOptions, check_name, seconds

__all__ = ["MongoLightningStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Doc = dict[str, Any]


class MongoLightningStore(LightningStore):
    """A durable store on MongoDB, shared by every process and machine that opens the same database and partition.

    - ``uri``: a replica set (one node is enough) or a sharded cluster: the store changes several documents at once
      in transactions (snapshot reads, majority writes, retried on transient errors).
    - ``database``, ``partition``: where the collections live; trainers that share a database each use their own
      partition and never see each other's rollouts.
    - ``connect_timeout``: how long opening the store waits for the server; an unreachable server, refused
      credentials, a standalone server (no transactions) and a partition written by a newer version of this plugin
      are each an error that says what to do (:class:`~agl_store_mongo.MongoStoreError` and its subclasses).
    - ``transaction_timeout``, ``max_transaction_tries``: how long and how often a transaction is retried.
    - ``watchdog_interval``: seconds between the watchdog's checks of timeouts and heartbeats.
    - ``change_streams``, ``poll_interval``: waiters wake from a change stream on the rollouts (other processes'
      enqueues and endings); without one they check every ``poll_interval`` seconds.

    Exactly-once dequeue holds across processes and machines: a claim is one atomic update of the queue's head inside
    the transaction that creates the attempt. Each event loop that uses the store gets its own client.
    """

    Options = MongoStoreOptions

    def __init__(
        self,
        uri: str = DEFAULT_URI,
        *,
        database: str = "agl",
        partition: str = "default",
        connect_timeout: float = 5.0,
        transaction_timeout: float = 30.0,
        max_transaction_tries: int = 100,
        watchdog_interval: float = 0.5,
        change_streams: bool = True,
        poll_interval: float = 0.5,
    ) -> None:
        self._uri = str(uri)
        self._database = check_name("database", database)
        self._partition = check_name("partition", partition)
        self._connect_timeout = seconds("connect_timeout", connect_timeout)
        self._transaction_timeout = seconds("transaction_timeout", transaction_timeout)
        self._max_tries = int(max_transaction_tries)
        if self._max_tries < 1:
            raise ValueError(f"'max_transaction_tries' must be >= 1, not {max_transaction_tries!r}")
        watchdog_interval = seconds("watchdog_interval", watchdog_interval)
        poll_interval = seconds("poll_interval", poll_interval)
        self._writer = uuid.uuid4().hex[:12]
        self._closed = False
        self._lock = threading.Lock()
        self._clients: dict[asyncio.AbstractEventLoop, tuple[AsyncMongoClient[Doc], Collections]] = {}
        self._claim_locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}
        self._queue_bell = Bell()
        self._ended_bell = Bell()
        self._background = BackgroundLoop(f"agl-mongo:{self._partition}")
        try:
            opened = self._background.submit(self._open(bool(change_streams), poll_interval, watchdog_interval))
            self._monitor: Monitor = opened.result(timeout=self._connect_timeout * 3 + 60)
        except BaseException:
            self._closed = True
            self._background.submit(self._close_background_clients()).result(timeout=10)
            self._background.stop()
            raise

    async def _open(self, change_streams: bool, poll_interval: float, watchdog_interval: float) -> Monitor:
        client, cols = self._connection()
        await check_server(client, cols, self._uri, self._connect_timeout)
        await ensure_schema(cols, self._uri, self._partition)
        monitor = Monitor(
            cols,
            queue=self._queue_bell,
            ended=self._ended_bell,
            writer=self._writer,
            change_streams=change_streams,
            poll_interval=poll_interval,
            watchdog_interval=watchdog_interval,
            check_deadlines=self.check_deadlines,
        )
        monitor.start()
        return monitor

    def __repr__(self) -> str:
        return f"MongoLightningStore({redact(self._uri)!r}, database={self._database!r}, partition={self._partition!r})"

    def describe(self) -> str:
        """One line for the console: the server (without the password), the database and the partition."""
        return f"mongo {redact(self._uri)} (database {self._database!r}, partition {self._partition!r})"

    @property
    def uri(self) -> str:
        """The connection string, without its password."""
        return redact(self._uri)

    @property
    def database(self) -> str:
        return self._database

    @property
    def partition(self) -> str:
        return self._partition

    @property
    def streaming(self) -> bool:
        """Whether waiters are woken by a change stream now (else they check every ``poll_interval`` seconds)."""
        return self._monitor.streaming

    @property
    def capabilities(self) -> StoreCapabilities:
        return StoreCapabilities(thread_safe=True, async_safe=True, durable=True, multi_process=True)

    # ------------------------------------------------------------------------------------------------ plumbing

    def _connection(self) -> tuple[AsyncMongoClient[Doc], Collections]:
        """This event loop's client (pymongo's async client belongs to the loop that made it)."""
        loop = asyncio.get_running_loop()
        found = self._clients.get(loop)
        if found is not None:
            return found
        with self._lock:
            for stale in [other for other in self._clients if other.is_closed()]:
                del self._clients[stale]  # its loop is gone, and its connections with it
                self._claim_locks.pop(stale, None)
            client = make_client(self._uri, connect_timeout=self._connect_timeout)
            found = self._clients[loop] = (client, Collections.of(client, self._database, self._partition))
            return found

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"the MongoDB store ({self.describe()}) is closed; open a new MongoLightningStore")

    def _after(self, tx: Tx) -> None:
        if tx.wake_queue:
            self._queue_bell.ring()
        if tx.wake_ended:
            self._ended_bell.ring()

    async def _tx(self, op: Callable[[Tx], Awaitable[T]]) -> T:
        """Run ``op`` in a transaction (retried on transient errors)."""
        self._check_open()
        client, cols = self._connection()
        return await run_transaction(
            client, cols, op, timeout=self._transaction_timeout, max_tries=self._max_tries, on_commit=self._after,
            writer=self._writer,
        )  # fmt: skip

    async def _direct(self, op: Callable[[Tx], Awaitable[T]]) -> T:
        """Run ``op`` without a transaction: reads, and changes of one document (atomic by themselves)."""
        self._check_open()
        client, cols = self._connection()
        tx = Tx(client, cols, None, self._writer)
        try:
            result = await op(tx)
        except PyMongoError as exc:
            translated = translate_error(exc)
            if translated is exc:
                raise
            raise translated from exc
        self._after(tx)
        return result

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue_bell.ring()
        self._ended_bell.ring()
        try:
            await asyncio.wrap_future(self._background.submit(self._close_background()))
        except Exception:  # closing must not fail; the thread is a daemon
            logger.debug("agl-store-mongo: closing the background loop failed", exc_info=True)
        self._background.stop()
        current = asyncio.get_running_loop()
        with self._lock:
            clients, self._clients = dict(self._clients), {}
        for loop, (client, _) in clients.items():
            if loop is current:
                await client.close()
            elif not loop.is_closed() and loop.is_running():
                asyncio.run_coroutine_threadsafe(client.close(), loop)

    async def _close_background(self) -> None:
        await self._monitor.stop()
        await self._close_background_clients()

    async def _close_background_clients(self) -> None:
        found = self._clients.pop(asyncio.get_running_loop(), None)
        if found is not None:
            await found[0].close()

    # ------------------------------------------------------------------------------------------------ watchdog

    async def check_deadlines(self, now: float) -> int:
        """Apply timeouts and heartbeat deadlines as of ``now``; returns how many attempts changed. The watchdog
        calls this every ``watchdog_interval``; several processes may run theirs on one partition: each change is
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
        request = self._request(input, mode, resources_id, config, metadata)
        return (await self._direct(lambda tx: ops.enqueue(tx, [request])))[0]

    async def enqueue_many_rollouts(self, requests: Sequence[EnqueueRequest]) -> list[Rollout]:
        prepared = [self._request(r.input, r.mode, r.resources_id, r.config, r.metadata) for r in requests]
        self._check_open()
        if not prepared:
            return []
        if len(prepared) == 1:
            return await self._direct(lambda tx: ops.enqueue(tx, prepared))
        return await self._tx(lambda tx: ops.enqueue(tx, prepared))

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
        # One claim at a time per event loop: the loop's claims would only conflict with each other on the head of
        # the queue. Claims of other processes conflict at most once per round, and the loser retries.
        loop = asyncio.get_running_loop()
        lock = self._claim_locks.get(loop)
        if lock is None:
            lock = self._claim_locks.setdefault(loop, asyncio.Lock())
        async with lock:
            return await self._tx(lambda tx: ops.claim(tx, limit, worker_id))

    async def dequeue_many_rollouts(
        self, *, limit: int, worker_id: str | None = None, timeout: float = 0.0
    ) -> list[AttemptedRollout]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit!r}")
        check_int64(limit, "limit")
        return await claim_waiting(
            self._queue_bell,
            lambda: self._claim(limit, worker_id),
            lambda: self._direct(ops.queue_has_work),
            timeout,
            lambda: self._closed,
        )

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
        changes: Doc = {}
        if mode is not UNSET:
            changes["mode"] = None if mode is None else RolloutMode(mode).value
        if config is not UNSET:
            changes["config"] = encode_config(config)
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
        changes: Doc = {}
        if worker_id is not UNSET:
            changes["worker_id"] = worker_id
        if metadata is not UNSET:
            changes["metadata"] = encode_dict(metadata, "attempt metadata")
        if last_heartbeat_time is not UNSET:
            check_int64(last_heartbeat_time, "last_heartbeat_time")
        new_status = None if status is UNSET else AttemptStatus(status)
        heartbeat = None if last_heartbeat_time is UNSET else last_heartbeat_time
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
        _, blob = self._encode_span(span)
        try:
            return await self._tx(lambda tx: ops.store_one_span(tx, span, blob))
        except DuplicateKeyError:  # stored before: adding it again returns it as stored
            return await self._direct(lambda tx: ops.stored_span(tx, span))

    async def add_many_spans(self, spans: Sequence[Span]) -> list[Span]:
        pairs = [self._encode_span(span) for span in spans]
        self._check_open()
        if not pairs:
            return []
        return await self._tx(lambda tx: ops.store_spans(tx, pairs))

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
