"""``SqliteLightningStore``: the store contract on one SQLite file (entry point ``sqlite`` in ``agl.stores``)."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
from msgspec import UNSET, UnsetType

from agl_kernel.errors import NotFoundError, StoreClosedError, StoreDamagedError
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
from agl_kernel.store.waiting import Signal
from agl_store_sqlite import _ops as ops
from agl_store_sqlite import _reads as reads
from agl_store_sqlite._codec import encode_any, encode_dict, encode_resources, encode_span
from agl_store_sqlite._engine import Busy, Engine
from agl_store_sqlite._schema import FULL_CHECK_MAX_MB, connect, ensure_schema, prepare_path

__all__ = ["SqliteLightningStore"]

logger = logging.getLogger(__name__)

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
_RETRY_AFTER_BUSY = 0.01
_CHECKPOINT_INTERVAL = 0.25
_REPEAT_FAILURE_EVERY = 60.0
"""Seconds between two reports of the same failure of the background thread (its traceback is logged once)."""


def _seconds(name: str, value: Any, *, allow_zero: bool = False) -> float:
    try:
        seconds = float(value)  # options may come from the command line as strings
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number of seconds, not {value!r}") from None
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'} seconds, not {value!r}")
    return seconds


def _megabytes(name: str, value: Any) -> float:
    try:
        size = float(value)
    except (TypeError, ValueError):
        size = -1.0
    if not size >= 0:  # NaN too
        raise ValueError(f"{name} must be a size in MB, >= 0 (0: always the bounded check), not {value!r}")
    return size


@attrs.define(kw_only=True)
class SqliteStoreOptions:
    """Options of the SQLite store (``sqlite``)."""

    path: str = ".agl/agl.db"
    """The database file (its directory is created)."""
    watchdog_interval: float = attrs.field(default=0.5, validator=attrs.validators.gt(0))
    """Seconds between the watchdog's checks of timeouts and heartbeats."""
    cross_process_poll: float = attrs.field(default=0.05, validator=attrs.validators.ge(0))
    """Seconds between checks for commits by other processes, which wake this process's waiters (0: off)."""
    synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = "NORMAL"
    """SQLite's PRAGMA synchronous: NORMAL keeps every acknowledged write across a crash of the process; FULL also
    across a power loss, at a cost."""
    busy_timeout: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    """Seconds a write waits for another process holding the file's write lock."""
    full_check_max_mb: float = attrs.field(default=FULL_CHECK_MAX_MB, validator=attrs.validators.ge(0))
    """Files up to this size (MB) get a full integrity check (PRAGMA quick_check, ~1.5-15 ms per MB) when opened;
    larger ones a bounded check of each table's and index's root, first and last pages and sampled rows."""


class SqliteLightningStore(LightningStore):
    """A durable store in one SQLite file, shared safely by the tasks, threads and processes that open it.

    - ``path``: the database file (default ``.agl/agl.db`` under the working directory; its directory is created).
    - ``watchdog_interval``: seconds between the watchdog's checks of timeouts and heartbeats.
    - ``cross_process_poll``: seconds between checks for commits by *other processes*, which wake this process's
      waiters (``0`` turns it off; waiting inside one process is pushed and never polls).
    - ``synchronous``: SQLite's ``PRAGMA synchronous``. ``NORMAL`` (default) keeps every acknowledged write across a
      crash of the process; ``FULL`` also across a power loss, at a cost.
    - ``busy_timeout``: how long a write waits for another process holding the file's write lock.
    - ``full_check_max_mb``: files up to this size get a full ``PRAGMA quick_check`` when opened, larger ones a
      bounded check (see the README's "Files it refuses"). A damaged or read-only file is refused with a
      :class:`~agl_store_sqlite.SqliteStoreError` (:class:`~agl_store_sqlite.SqliteStoreDamagedError` for damage)
      that names it and what to do; damage found while the store runs stops it (every call then raises
      :class:`~agl_store_sqlite.SqliteStoreDamagedError`, a :class:`~agl_kernel.errors.StoreDamagedError`).
    """

    Options = SqliteStoreOptions

    def __init__(
        self,
        path: str | os.PathLike = ".agl/agl.db",
        *,
        watchdog_interval: float = 0.5,
        cross_process_poll: float = 0.05,
        synchronous: str = "NORMAL",
        busy_timeout: float = 30.0,
        full_check_max_mb: float = FULL_CHECK_MAX_MB,
    ) -> None:
        watchdog_interval = _seconds("watchdog_interval", watchdog_interval)
        full_check_max_mb = _megabytes("full_check_max_mb", full_check_max_mb)
        cross_process_poll = _seconds("cross_process_poll", cross_process_poll, allow_zero=True)
        busy_timeout = _seconds("busy_timeout", busy_timeout)
        synchronous = str(synchronous).upper()
        if synchronous not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(_SYNCHRONOUS)}, not {synchronous!r}")
        self._path = prepare_path(path)
        conn = connect(self._path, busy_timeout=busy_timeout, synchronous=synchronous)
        try:
            ensure_schema(conn, self._path, busy_timeout=busy_timeout, full_check_max_mb=full_check_max_mb)
        finally:
            conn.close()
        self._closed = False
        self._ended = Signal()
        self._enqueued = Signal()
        self._engine = Engine(
            self._path,
            synchronous=synchronous,
            busy_timeout=busy_timeout,
            on_commit=self._wake,
            on_damaged=self._report_damage,
        )
        self._stop = threading.Event()
        self._monitor = threading.Thread(
            target=self._monitor_loop,
            args=(watchdog_interval, cross_process_poll),
            name=f"agl-sqlite-monitor:{self._path.name}",
            daemon=True,
        )
        self._monitor.start()

    def __repr__(self) -> str:
        return f"SqliteLightningStore({str(self._path)!r})"

    @property
    def path(self) -> Path:
        """The absolute path of the database file."""
        return self._path

    @property
    def capabilities(self) -> StoreCapabilities:
        return StoreCapabilities(thread_safe=True, async_safe=True, durable=True, multi_process=True)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._monitor is not threading.current_thread():
            self._monitor.join(timeout=5)
        self._engine.close()
        self._ended.notify()
        self._enqueued.notify()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"the SQLite store {self._path} is closed; open a new SqliteLightningStore")
        self._engine.check_open()  # the file was found damaged while serving: SqliteStoreDamagedError

    def _report_damage(self, message: str) -> None:
        """The engine found the file damaged (once): say so, and wake the waiters so that they see it too."""
        logger.error("agl-store-sqlite: %s", message)
        self._ended.notify()
        self._enqueued.notify()

    def _wake(self, queue: bool, ended: bool) -> None:
        if ended:
            self._ended.notify()
        if queue:
            self._enqueued.notify()

    def _read(self, fn: Any, *, snapshot: bool = False) -> Any:
        self._check_open()
        return self._engine.read(fn, snapshot=snapshot)

    async def _write(self, op: Any) -> Any:
        self._check_open()
        return await self._engine.write(op)

    # ------------------------------------------------------------------------------------------------ background

    def _monitor_loop(self, watchdog_interval: float, poll: float) -> None:
        """The watchdog, and the wake-ups for commits of other processes (``PRAGMA data_version``)."""
        tick = min(watchdog_interval, poll or _CHECKPOINT_INTERVAL, _CHECKPOINT_INTERVAL)
        next_check = time.monotonic() + watchdog_interval
        next_checkpoint = time.monotonic() + _CHECKPOINT_INTERVAL
        version: int | None = None
        last_failure, next_report = "", 0.0
        while not self._stop.wait(tick):
            try:
                if time.monotonic() >= next_checkpoint:
                    next_checkpoint = time.monotonic() + _CHECKPOINT_INTERVAL
                    self._engine.checkpoint()
                if poll > 0:
                    seen = self._engine.read(lambda conn: conn.execute("PRAGMA data_version").fetchone()[0])
                    if version is not None and seen != version:
                        self._ended.notify()
                        self._enqueued.notify()
                    version = seen
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + watchdog_interval
                    self.check_deadlines(time.time())
                last_failure = ""
            except (StoreClosedError, StoreDamagedError):  # closed, or stopped serving (reported once already)
                return
            except Exception as exc:  # keep watching: a failed round is retried at the next tick
                if self._closed or self._engine.damage(exc) is not None:
                    return
                failure = f"{type(exc).__name__}: {exc}"
                if failure != last_failure:  # a new failure: its traceback, once
                    logger.exception("agl-store-sqlite: the watchdog of %s failed; retrying", self._path)
                elif time.monotonic() >= next_report:  # the same one again: a line now and then
                    logger.error("agl-store-sqlite: the watchdog of %s still fails: %s", self._path, failure)
                else:
                    continue
                last_failure, next_report = failure, time.monotonic() + _REPEAT_FAILURE_EVERY

    def check_deadlines(self, now: float) -> int:
        """Apply timeouts and heartbeat deadlines as of ``now``; returns how many attempts changed.
        The watchdog thread calls this every ``watchdog_interval``; tests may call it directly. Safe while other
        processes run their own watchdogs on the same file: each change is re-checked inside its transaction."""
        if self._closed:
            return 0
        if not self._engine.read(lambda conn: ops.any_deadline_due(conn, now)):
            return 0
        return self._engine.run_one(lambda tx: ops.apply_deadlines(tx, now), blocking=True)

    # ------------------------------------------------------------------------------------------------ rollouts

    @staticmethod
    def _request(
        input: Any,
        mode: RolloutMode | None,
        resources_id: str | None,
        config: RolloutConfig | None,
        metadata: dict[str, Any] | None,
    ) -> tuple[Any, ...]:
        mode = None if mode is None else RolloutMode(mode)
        return (
            input,
            encode_any(input, "rollout input"),
            mode,
            resources_id,
            config or DEFAULT_CONFIG,
            encode_config(config),
            metadata or {},
            encode_dict(metadata, "rollout metadata"),
        )

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
        return (await self._write(lambda tx: ops.enqueue(tx, [request])))[0]

    async def enqueue_many_rollouts(self, requests: Sequence[EnqueueRequest]) -> list[Rollout]:
        prepared = [self._request(r.input, r.mode, r.resources_id, r.config, r.metadata) for r in requests]
        self._check_open()
        if not prepared:
            return []
        return await self._write(lambda tx: ops.enqueue(tx, prepared))

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
        _, input_blob, mode, _, _, config_blob, _, metadata_blob = self._request(input, mode, None, config, metadata)
        return await self._write(
            lambda tx: ops.start_rollout(tx, input_blob, mode, resources_id, config_blob, metadata_blob, worker_id)
        )

    async def dequeue_rollout(self, *, worker_id: str | None = None, timeout: float = 0.0) -> AttemptedRollout | None:
        taken = await self.dequeue_many_rollouts(limit=1, worker_id=worker_id, timeout=timeout)
        return taken[0] if taken else None

    async def dequeue_many_rollouts(
        self, *, limit: int, worker_id: str | None = None, timeout: float = 0.0
    ) -> list[AttemptedRollout]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit!r}")
        if self._read(ops.queue_has_work):
            taken = await self._write(lambda tx: ops.pop_queue(tx, limit, worker_id))
            if taken:
                return taken
        if timeout <= 0:
            return []
        loop = asyncio.get_running_loop()

        def check() -> list[AttemptedRollout] | None:
            if self._closed:
                return []
            if not self._engine.read(ops.queue_has_work):
                return None
            try:
                return self._engine.run_one(lambda tx: ops.pop_queue(tx, limit, worker_id), blocking=False) or None
            except Busy:  # another process (or thread) holds the file: look again in a moment
                loop.call_later(_RETRY_AFTER_BUSY, self._enqueued.notify)
                return None

        return await self._enqueued.wait_for(check, timeout) or []

    async def start_attempt(self, rollout_id: str, *, worker_id: str | None = None) -> AttemptedRollout:
        return await self._write(lambda tx: ops.start_attempt(tx, rollout_id, worker_id))

    async def get_rollout(self, rollout_id: str) -> Rollout:
        return self._read(lambda conn: reads.get_rollout(conn, rollout_id))

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
        return self._read(
            lambda conn: reads.query_rollouts(
                conn, status_in, rollout_id_in, mode_in, sort_by, sort_order, limit, offset
            ),
            snapshot=True,
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
        changes: dict[str, Any] = {}
        if mode is not UNSET:
            changes["mode"] = None if mode is None else RolloutMode(mode).value
        if config is not UNSET:
            changes["config"] = encode_config(config)
        if metadata is not UNSET:
            changes["metadata"] = encode_dict(metadata, "rollout metadata")
        if resources_id is not UNSET:
            changes["resources_id"] = resources_id
        new_status = None if status is UNSET else RolloutStatus(status)
        return await self._write(lambda tx: ops.update_rollout(tx, rollout_id, new_status, changes))

    async def wait_for_rollouts(self, rollout_ids: Sequence[str], *, timeout: float | None = None) -> list[Rollout]:
        wanted = list(dict.fromkeys(rollout_ids))
        missing = self._read(lambda conn: reads.missing_rollouts(conn, wanted))
        if missing:
            raise NotFoundError(f"no rollout with id {missing[0]!r}")
        ended: dict[str, Rollout] = {}
        remaining = list(wanted)

        def known() -> list[Rollout]:
            return [ended[r] for r in wanted if r in ended]

        def check() -> list[Rollout] | None:
            nonlocal remaining
            if self._closed:
                return known()
            # Look only at those not seen ended yet; confirm all of them once, at the end (one may have been
            # queued again meanwhile).
            newly = self._engine.read(lambda conn: reads.ended_rollouts(conn, remaining))
            ended.update(newly)
            remaining = [r for r in remaining if r not in newly]
            if remaining:
                return None
            final = self._engine.read(lambda conn: reads.ended_rollouts(conn, wanted))
            ended.clear()
            ended.update(final)
            remaining = [r for r in wanted if r not in final]
            return None if remaining else known()

        result = check()
        if result is None and (timeout is None or timeout > 0):
            result = await self._ended.wait_for(check, timeout)
        if result is not None:
            return result
        if self._closed:
            return known()
        final = self._read(lambda conn: reads.ended_rollouts(conn, wanted))
        return [final[r] for r in wanted if r in final]

    async def delete_rollouts(
        self, rollout_ids: Sequence[str] | None = None, *, ended_before: float | None = None
    ) -> int:
        ids = None if rollout_ids is None else list(rollout_ids)
        return await self._write(lambda tx: ops.delete_rollouts(tx, ids, ended_before))

    # ------------------------------------------------------------------------------------------------ attempts

    async def get_attempt(self, rollout_id: str, attempt_id: str = LATEST) -> Attempt:
        return self._read(lambda conn: reads.get_attempt(conn, rollout_id, attempt_id))

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
        return self._read(
            lambda conn: reads.query_attempts(conn, rollout_id, status_in, sort_by, sort_order, limit, offset),
            snapshot=True,
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
        changes: dict[str, Any] = {}
        if worker_id is not UNSET:
            changes["worker_id"] = worker_id
        if metadata is not UNSET:
            changes["metadata"] = encode_dict(metadata, "attempt metadata")
        new_status = None if status is UNSET else AttemptStatus(status)
        heartbeat = None if last_heartbeat_time is UNSET else last_heartbeat_time
        return await self._write(
            lambda tx: ops.update_attempt(tx, rollout_id, attempt_id, new_status, heartbeat, changes)
        )

    # ------------------------------------------------------------------------------------------------ spans

    async def add_span(self, span: Span) -> Span:
        pair = (span, encode_span(span))
        return (await self._write(lambda tx: ops.store_spans(tx, [pair])))[0]

    async def add_many_spans(self, spans: Sequence[Span]) -> list[Span]:
        pairs = [(span, encode_span(span)) for span in spans]
        self._check_open()
        if not pairs:
            return []
        return await self._write(lambda tx: ops.store_spans(tx, pairs))

    async def get_many_span_sequence_ids(self, rollout_id: str, attempt_id: str, count: int) -> list[int]:
        if count < 1:
            raise ValueError(f"count must be at least 1, not {count!r}")
        return await self._write(lambda tx: ops.reserve_sequence_ids(tx, rollout_id, attempt_id, count))

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
        return self._read(
            lambda conn: reads.query_spans(conn, rollout_id, attempt_id, name, sort_by, sort_order, limit, offset),
            snapshot=True,
        )

    # ------------------------------------------------------------------------------------------------ resources

    async def add_resources(self, resources: dict[str, Resource]) -> ResourcesUpdate:
        return await self.update_resources(policy.new_resources_id(), resources)

    async def update_resources(self, resources_id: str, resources: dict[str, Resource]) -> ResourcesUpdate:
        blob = encode_resources(resources)
        return await self._write(lambda tx: ops.update_resources(tx, resources_id, resources, blob))

    async def get_resources(self, resources_id: str, version: int | None = None) -> ResourcesUpdate:
        return self._read(lambda conn: reads.get_resources(conn, resources_id, version), snapshot=True)

    async def get_latest_resources(self) -> ResourcesUpdate | None:
        return self._read(reads.get_latest_resources)

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
        return self._read(
            lambda conn: reads.query_resources(conn, resources_id, sort_by, sort_order, limit, offset), snapshot=True
        )

    # ------------------------------------------------------------------------------------------------ workers

    async def update_worker(self, worker_id: str, *, heartbeat_stats: dict[str, Any] | UnsetType = UNSET) -> Worker:
        stats = False if heartbeat_stats is UNSET else encode_dict(heartbeat_stats, "worker heartbeat stats")
        return await self._write(lambda tx: ops.update_worker(tx, worker_id, stats))

    async def get_worker(self, worker_id: str) -> Worker:
        return self._read(lambda conn: reads.get_worker(conn, worker_id))

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
        return self._read(
            lambda conn: reads.query_workers(conn, status_in, sort_by, sort_order, limit, offset), snapshot=True
        )

    # ------------------------------------------------------------------------------------------------ misc

    async def statistics(self) -> StoreStatistics:
        return self._read(reads.statistics, snapshot=True)
