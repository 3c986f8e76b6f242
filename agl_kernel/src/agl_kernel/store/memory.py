"""The in-memory store: the kernel's built-in backend (entry point ``memory`` in ``agl.stores``).

All state sits behind one ``threading.Lock`` held only for short, non-blocking sections, so the store is safe
under many asyncio tasks and under threads (each with its own event loop). Stored objects are frozen structs,
handed out without copying. Nothing survives the process: use the SQLite plugin for a durable store.

It refuses what a durable backend could not keep, so that code tested against it runs on them: an integer beyond
64 bits in a stored value (outside -2**63 .. 2**64-1, msgpack's range) or as a sequence id or limit (outside the
signed 64-bit range) is a ``ValueError``, and nothing is written. Other Python objects are kept as they are.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import attrs
import msgspec
from msgspec import UNSET, UnsetType
from msgspec.structs import replace

from agl_kernel.errors import InvalidStatusTransitionError, NotFoundError, StoreClosedError
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
    encode_msgpack,
)
from agl_kernel.store import policy
from agl_kernel.store.base import LATEST, LightningStore, SortOrder
from agl_kernel.store.blobs import with_attempt
from agl_kernel.store.query import check_query, paginate
from agl_kernel.store.waiting import Signal

__all__ = ["InMemoryLightningStore"]

_DEFAULT_CONFIG = RolloutConfig()

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _describe(value: int) -> str:
    # str() of an int past 4300 digits raises (and a long one says nothing): name its size instead.
    return str(value) if value.bit_length() <= 128 else f"an integer of {value.bit_length()} bits"


def _check_value(value: Any, what: str) -> None:
    """Refuse a value holding an integer that a durable backend cannot keep (outside -2**63 .. 2**64-1), as the
    SQLite store does, with the same error class (ValueError: a server answers 400)."""
    try:
        encode_msgpack(value)
    except OverflowError:
        raise ValueError(
            f"the store cannot keep the {what}: it holds an integer outside -2**63 .. 2**64-1. "
            "Store such numbers as strings (or floats); nothing was written"
        ) from None
    except (TypeError, ValueError, msgspec.EncodeError):  # another Python object: kept as it is, in memory
        pass


def _check_int64(value: Any, what: str) -> None:
    """Refuse an integer outside the signed 64-bit range where the store keeps (or compares with) a number."""
    if isinstance(value, int) and not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(
            f"{what} must lie in the signed 64-bit range -2**63 .. 2**63-1, not {_describe(value)}; nothing was written"
        )


def _check_span(span: Span) -> None:
    if span.sequence_id > 0:  # zero or below asks the store to assign one
        _check_int64(span.sequence_id, f"the sequence id of span {span.span_id!r}")
    _check_int64(span.start_time, f"the start time of span {span.span_id!r}")
    _check_int64(span.end_time, f"the end time of span {span.span_id!r}")
    _check_value(span, f"span {span.span_id!r}")


def _check_rollout_values(input: Any, config: RolloutConfig | None, metadata: dict[str, Any] | None) -> None:
    _check_value(input, "rollout input")
    if config is not None:
        _check_value(config, "rollout config")
    if metadata:
        _check_value(metadata, "rollout metadata")


@attrs.define(kw_only=True)
class MemoryStoreOptions:
    """Options of the in-memory store (``memory``)."""

    watchdog_interval: float = attrs.field(default=0.5, validator=attrs.validators.gt(0))
    """Seconds between the watchdog's checks for timed-out and unresponsive attempts."""


class InMemoryLightningStore(LightningStore):
    """A fast, thread-safe store that keeps everything in this process's memory.

    ``watchdog_interval``: seconds between the watchdog's checks of timeouts and heartbeats.
    """

    Options = MemoryStoreOptions

    def __init__(self, *, watchdog_interval: float = 0.5) -> None:
        if watchdog_interval <= 0:
            raise ValueError(f"watchdog_interval must be > 0 seconds, not {watchdog_interval!r}")
        self._lock = threading.Lock()
        self._closed = False
        self._rollouts: dict[str, Rollout] = {}
        self._attempts: dict[str, list[Attempt]] = {}  # rollout id -> attempts by sequence id
        self._attempt_index: dict[str, int] = {}  # attempt id -> position in its rollout's list
        self._queue: deque[tuple[str, int]] = deque()  # (rollout id, queue ticket)
        self._queue_ticket: dict[str, int] = {}  # rollout id -> its live ticket
        self._next_ticket = 0
        self._spans: dict[tuple[str, str], list[Span]] = {}  # (rollout id, attempt id) -> spans in write order
        self._span_ids: dict[tuple[str, str, str], Span] = {}
        self._span_seq: dict[str, int] = {}  # attempt id -> last sequence id handed out
        self._span_count = 0
        self._resources: list[ResourcesUpdate] = []  # every version, in write order
        self._resources_latest_version: dict[str, ResourcesUpdate] = {}
        self._latest_resources: ResourcesUpdate | None = None
        self._workers: dict[str, Worker] = {}
        self._supervised: dict[str, str] = {}  # attempt id -> rollout id, for attempts the watchdog watches
        self._ended = Signal()
        self._enqueued = Signal()
        # Set under the lock by a change; `_wake()` (called after the lock is released) notifies the waiters.
        self._wake_ended = False
        self._wake_queue = False
        self._watchdog_stop = threading.Event()
        self._watchdog = threading.Thread(
            target=self._watchdog_loop, args=(watchdog_interval,), name="agl-memory-watchdog", daemon=True
        )
        self._watchdog.start()

    @property
    def capabilities(self) -> StoreCapabilities:
        return StoreCapabilities(thread_safe=True, async_safe=True, durable=False, multi_process=False)

    async def close(self) -> None:
        with self._lock:
            self._closed = True
        self._watchdog_stop.set()
        if self._watchdog is not threading.current_thread():
            self._watchdog.join(timeout=5)
        self._ended.notify()
        self._enqueued.notify()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError("the in-memory store is closed; create a new one")

    # ------------------------------------------------------------------------------------------------ lookups
    # Callers hold the lock.

    def _rollout(self, rollout_id: str) -> Rollout:
        self._check_open()
        try:
            return self._rollouts[rollout_id]
        except KeyError:
            raise NotFoundError(f"no rollout with id {rollout_id!r}") from None

    def _attempt(self, rollout_id: str, attempt_id: str) -> Attempt:
        self._rollout(rollout_id)
        attempts = self._attempts[rollout_id]
        if attempt_id == LATEST:
            if not attempts:
                raise NotFoundError(f"rollout {rollout_id!r} has no attempt yet")
            return attempts[-1]
        index = self._attempt_index.get(attempt_id)
        if index is None or index >= len(attempts) or attempts[index].attempt_id != attempt_id:
            raise NotFoundError(f"rollout {rollout_id!r} has no attempt with id {attempt_id!r}")
        return attempts[index]

    def _resources_id_for(self, resources_id: str | None) -> str | None:
        if resources_id is None:
            return None if self._latest_resources is None else self._latest_resources.resources_id
        if resources_id not in self._resources_latest_version:
            raise NotFoundError(f"no resources with id {resources_id!r}; add them with add_resources first")
        return resources_id

    def _wake(self) -> None:
        if self._wake_ended:
            self._wake_ended = False
            self._ended.notify()
        if self._wake_queue:
            self._wake_queue = False
            self._enqueued.notify()

    # ------------------------------------------------------------------------------------------------ mutations
    # Callers hold the lock, and call `_wake()` after releasing it.

    def _put_rollout(self, rollout: Rollout, *, requeue: bool = False) -> None:
        """Store `rollout`; a rollout entering a queued status (or explicitly re-queued) joins the back of the queue."""
        previous = self._rollouts.get(rollout.rollout_id)
        self._rollouts[rollout.rollout_id] = rollout
        if rollout.status not in policy.QUEUED_STATUSES:
            self._queue_ticket.pop(rollout.rollout_id, None)  # stale deque entries are skipped by `_pop_queue`
        if rollout.status in policy.QUEUED_STATUSES and (
            requeue or previous is None or previous.status != rollout.status
        ):
            self._next_ticket += 1
            self._queue_ticket[rollout.rollout_id] = self._next_ticket
            self._queue.append((rollout.rollout_id, self._next_ticket))
            self._wake_queue = True
        elif rollout.status.is_terminal and (previous is None or not previous.status.is_terminal):
            self._wake_ended = True

    def _set_rollout_status(self, rollout: Rollout, status: RolloutStatus, now: float) -> None:
        self._put_rollout(replace(rollout, status=status, end_time=now if status.is_terminal else None))

    def _put_attempt(self, attempt: Attempt) -> None:
        self._attempts[attempt.rollout_id][self._attempt_index[attempt.attempt_id]] = attempt
        if attempt.status.is_final:
            self._supervised.pop(attempt.attempt_id, None)

    def _new_attempt(self, rollout: Rollout, worker_id: str | None, now: float) -> AttemptedRollout:
        attempts = self._attempts[rollout.rollout_id]
        attempt = Attempt(
            rollout_id=rollout.rollout_id,
            attempt_id=policy.new_attempt_id(),
            sequence_id=len(attempts) + 1,
            start_time=now,
            worker_id=worker_id,
            last_heartbeat_time=now,
        )
        self._attempt_index[attempt.attempt_id] = len(attempts)
        attempts.append(attempt)
        if policy.is_supervised(rollout.config):
            self._supervised[attempt.attempt_id] = rollout.rollout_id
        rollout = replace(rollout, status=RolloutStatus.PREPARING, attempt_count=len(attempts))
        self._put_rollout(rollout)
        if worker_id is not None:
            worker = self._workers.get(worker_id) or Worker(worker_id=worker_id)
            self._workers[worker_id] = replace(
                worker,
                status=WorkerStatus.BUSY,
                last_dequeue_time=now,
                last_busy_time=now,
                current_rollout_id=rollout.rollout_id,
                current_attempt_id=attempt.attempt_id,
            )
        return with_attempt(rollout, attempt)

    def _release_worker(self, attempt: Attempt, status: WorkerStatus, now: float) -> None:
        worker = self._workers.get(attempt.worker_id) if attempt.worker_id else None
        if worker is None or worker.current_attempt_id != attempt.attempt_id:
            return
        if status is WorkerStatus.IDLE:
            self._workers[worker.worker_id] = replace(
                worker, status=status, last_idle_time=now, current_rollout_id=None, current_attempt_id=None
            )
        else:
            self._workers[worker.worker_id] = replace(worker, status=status)

    def _set_attempt_status(self, attempt: Attempt, status: AttemptStatus, now: float, **changes: Any) -> Attempt:
        """Move an attempt to ``status`` and let the rollout and the worker follow."""
        rollout = self._rollouts[attempt.rollout_id]
        updated = replace(attempt, status=status, end_time=now if status.is_final else None, **changes)
        self._put_attempt(updated)
        worker_status = policy.worker_status_after_attempt(attempt.status, status)
        if worker_status is not None:
            self._release_worker(attempt, worker_status, now)
        if self._attempts[rollout.rollout_id][-1].attempt_id == attempt.attempt_id:
            rollout_status = policy.rollout_status_after_attempt(rollout, attempt, status)
            if rollout_status is not None and rollout_status is not rollout.status:
                self._set_rollout_status(rollout, rollout_status, now)
        return updated

    # ------------------------------------------------------------------------------------------------ rollouts

    def _make_rollout(
        self,
        input: Any,
        mode: RolloutMode | None,
        resources_id: str | None,
        config: RolloutConfig | None,
        metadata: dict[str, Any] | None,
        status: RolloutStatus,
        now: float,
    ) -> Rollout:
        rollout_id = policy.new_rollout_id()
        self._attempts[rollout_id] = []
        return Rollout(
            rollout_id=rollout_id,
            input=input,
            start_time=now,
            mode=mode,
            resources_id=self._resources_id_for(resources_id),
            status=status,
            config=config or _DEFAULT_CONFIG,
            metadata=metadata or {},
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
        _check_rollout_values(input, config, metadata)
        with self._lock:
            self._check_open()
            rollout = self._make_rollout(
                input, mode, resources_id, config, metadata, RolloutStatus.QUEUING, time.time()
            )
            self._put_rollout(rollout)
        self._wake()
        return rollout

    async def enqueue_many_rollouts(self, requests: Sequence[EnqueueRequest]) -> list[Rollout]:
        for request in requests:
            _check_rollout_values(request.input, request.config, request.metadata)
        with self._lock:
            self._check_open()
            for request in requests:  # validate everything before the first write: all or nothing
                self._resources_id_for(request.resources_id)
            now = time.time()
            rollouts = [
                self._make_rollout(r.input, r.mode, r.resources_id, r.config, r.metadata, RolloutStatus.QUEUING, now)
                for r in requests
            ]
            for rollout in rollouts:
                self._put_rollout(rollout)
        self._wake()
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
        _check_rollout_values(input, config, metadata)
        with self._lock:
            self._check_open()
            now = time.time()
            rollout = self._make_rollout(input, mode, resources_id, config, metadata, RolloutStatus.PREPARING, now)
            self._rollouts[rollout.rollout_id] = rollout
            return self._new_attempt(rollout, worker_id, now)

    def _pop_queue(self, limit: int, worker_id: str | None) -> list[AttemptedRollout]:
        taken: list[AttemptedRollout] = []
        with self._lock:
            self._check_open()
            now = time.time()
            while self._queue and len(taken) < limit:
                rollout_id, ticket = self._queue.popleft()
                rollout = self._rollouts.get(rollout_id)
                if (
                    rollout is None
                    or rollout.status not in policy.QUEUED_STATUSES
                    or self._queue_ticket.get(rollout_id) != ticket
                ):
                    continue  # stale entry: the rollout left the queue some other way
                del self._queue_ticket[rollout_id]
                taken.append(self._new_attempt(rollout, worker_id, now))
        return taken

    async def dequeue_rollout(self, *, worker_id: str | None = None, timeout: float = 0.0) -> AttemptedRollout | None:
        taken = await self.dequeue_many_rollouts(limit=1, worker_id=worker_id, timeout=timeout)
        return taken[0] if taken else None

    async def dequeue_many_rollouts(
        self, *, limit: int, worker_id: str | None = None, timeout: float = 0.0
    ) -> list[AttemptedRollout]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit!r}")
        _check_int64(limit, "limit")
        taken = self._pop_queue(limit, worker_id)
        if taken or timeout <= 0:
            return taken

        def check() -> list[AttemptedRollout] | None:
            if self._closed:
                return []
            return self._pop_queue(limit, worker_id) or None

        return await self._enqueued.wait_for(check, timeout) or []

    async def start_attempt(self, rollout_id: str, *, worker_id: str | None = None) -> AttemptedRollout:
        with self._lock:
            rollout = self._rollout(rollout_id)
            if rollout.status.is_terminal:
                raise InvalidStatusTransitionError(
                    f"rollout {rollout_id!r} has ended ({rollout.status.value}); queue it again with "
                    "update_rollout(status='queuing') before starting an attempt"
                )
            self._queue_ticket.pop(rollout_id, None)
            return self._new_attempt(rollout, worker_id, time.time())

    async def get_rollout(self, rollout_id: str) -> Rollout:
        with self._lock:
            return self._rollout(rollout_id)

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
        _check_int64(limit, "limit")
        with self._lock:
            self._check_open()
            if rollout_id_in is not None:
                wanted = set(rollout_id_in)
                candidates = [r for r in self._rollouts.values() if r.rollout_id in wanted]
            else:
                candidates = list(self._rollouts.values())
        if status_in is not None:
            statuses = {RolloutStatus(s) for s in status_in}
            candidates = [r for r in candidates if r.status in statuses]
        if mode_in is not None:
            modes = {RolloutMode(m) for m in mode_in}
            candidates = [r for r in candidates if r.mode in modes]
        return paginate(candidates, "rollouts", sort_by=sort_by, sort_order=sort_order, limit=limit, offset=offset)

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
            changes["mode"] = None if mode is None else RolloutMode(mode)
        if config is not UNSET:
            _check_value(config, "rollout config")
            changes["config"] = config
        if metadata is not UNSET:
            _check_value(metadata, "rollout metadata")
            changes["metadata"] = metadata
        with self._lock:
            rollout = self._rollout(rollout_id)
            if resources_id is not UNSET:
                changes["resources_id"] = None if resources_id is None else self._resources_id_for(resources_id)
            if status is not UNSET:
                status = RolloutStatus(status)
                # Queuing a rollout that is queued already still moves it to the back of the queue.
                if policy.check_rollout_transition(rollout, status) or status in policy.QUEUED_STATUSES:
                    changes["status"] = status
                    changes["end_time"] = time.time() if status.is_terminal else None
            if changes:
                rollout = replace(rollout, **changes)
                self._put_rollout(rollout, requeue="status" in changes)
        self._wake()
        return rollout

    async def wait_for_rollouts(self, rollout_ids: Sequence[str], *, timeout: float | None = None) -> list[Rollout]:
        rollout_ids = list(dict.fromkeys(rollout_ids))
        with self._lock:
            for rollout_id in rollout_ids:
                self._rollout(rollout_id)

        def finished() -> list[Rollout]:
            with self._lock:
                found = (self._rollouts.get(r) for r in rollout_ids)
                return [r for r in found if r is not None and r.status.is_terminal]

        def check() -> list[Rollout] | None:
            done = finished()
            return done if len(done) == len(rollout_ids) or self._closed else None

        result = check()
        if result is None and (timeout is None or timeout > 0):
            result = await self._ended.wait_for(check, timeout)
        return finished() if result is None else result

    async def delete_rollouts(
        self, rollout_ids: Sequence[str] | None = None, *, ended_before: float | None = None
    ) -> int:
        _check_int64(ended_before, "ended_before")
        with self._lock:
            if rollout_ids is not None:
                targets = [self._rollout(r) for r in dict.fromkeys(rollout_ids)]
                running = [r.rollout_id for r in targets if not r.status.is_terminal]
                if running:
                    raise InvalidStatusTransitionError(
                        f"only ended rollouts can be deleted; still active: {', '.join(running)}. Cancel them first."
                    )
            else:
                self._check_open()
                targets = [r for r in self._rollouts.values() if r.status.is_terminal]
            if ended_before is not None:
                targets = [r for r in targets if r.end_time is not None and r.end_time < ended_before]
            for rollout in targets:
                self._drop_rollout(rollout.rollout_id)
            return len(targets)

    def _drop_rollout(self, rollout_id: str) -> None:
        del self._rollouts[rollout_id]
        self._queue_ticket.pop(rollout_id, None)
        for attempt in self._attempts.pop(rollout_id):
            self._attempt_index.pop(attempt.attempt_id, None)
            self._span_seq.pop(attempt.attempt_id, None)
            self._supervised.pop(attempt.attempt_id, None)
            for span in self._spans.pop((rollout_id, attempt.attempt_id), ()):
                del self._span_ids[(rollout_id, attempt.attempt_id, span.span_id)]
                self._span_count -= 1

    # ------------------------------------------------------------------------------------------------ attempts

    async def get_attempt(self, rollout_id: str, attempt_id: str = LATEST) -> Attempt:
        with self._lock:
            return self._attempt(rollout_id, attempt_id)

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
        _check_int64(limit, "limit")
        with self._lock:
            self._rollout(rollout_id)
            attempts = list(self._attempts[rollout_id])
        if status_in is not None:
            statuses = {AttemptStatus(s) for s in status_in}
            attempts = [a for a in attempts if a.status in statuses]
        return paginate(attempts, "attempts", sort_by=sort_by, sort_order=sort_order, limit=limit, offset=offset)

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
        if metadata is not UNSET:
            _check_value(metadata, "attempt metadata")
        if last_heartbeat_time is not UNSET:
            _check_int64(last_heartbeat_time, "last_heartbeat_time")
        with self._lock:
            attempt = self._attempt(rollout_id, attempt_id)
            now = time.time()
            changes: dict[str, Any] = {
                "last_heartbeat_time": now if last_heartbeat_time is UNSET else last_heartbeat_time
            }
            if worker_id is not UNSET:
                changes["worker_id"] = worker_id
            if metadata is not UNSET:
                changes["metadata"] = metadata
            if status is not UNSET and policy.check_attempt_transition(attempt, AttemptStatus(status)):
                attempt = self._set_attempt_status(attempt, AttemptStatus(status), now, **changes)
            else:
                attempt = replace(attempt, **changes)
                self._put_attempt(attempt)
        self._wake()
        return attempt

    # ------------------------------------------------------------------------------------------------ spans

    def _store_span(self, span: Span, now: float) -> Span:
        key = (span.rollout_id, span.attempt_id, span.span_id)
        existing = self._span_ids.get(key)
        if existing is not None:
            return existing
        attempt = self._attempt(span.rollout_id, span.attempt_id)
        last = self._span_seq.get(span.attempt_id, 0)
        if span.sequence_id <= 0:
            _check_int64(last + 1, f"the next sequence id of attempt {span.attempt_id!r}")
            span = replace(span, sequence_id=last + 1)
        self._span_seq[span.attempt_id] = max(last, span.sequence_id)
        self._span_ids[key] = span
        self._spans.setdefault((span.rollout_id, span.attempt_id), []).append(span)
        self._span_count += 1
        # A span is a heartbeat, and a sign of life for a preparing or unresponsive attempt.
        if attempt.status in (AttemptStatus.PREPARING, AttemptStatus.UNRESPONSIVE):
            self._set_attempt_status(attempt, AttemptStatus.RUNNING, now, last_heartbeat_time=now)
        elif not attempt.status.is_final:
            self._put_attempt(replace(attempt, last_heartbeat_time=now))
        return span

    async def add_span(self, span: Span) -> Span:
        _check_span(span)
        with self._lock:
            stored = self._store_span(span, time.time())
        self._wake()
        return stored

    async def add_many_spans(self, spans: Sequence[Span]) -> list[Span]:
        for span in spans:
            _check_span(span)
        with self._lock:
            last: dict[str, int] = {}  # the sequence ids the batch will reach, per attempt
            seen: set[tuple[str, str, str]] = set()
            for span in spans:  # validate everything before the first write: all or nothing
                key = (span.rollout_id, span.attempt_id, span.span_id)
                if key in self._span_ids or key in seen:
                    continue
                seen.add(key)
                self._attempt(span.rollout_id, span.attempt_id)
                reached = last.get(span.attempt_id, self._span_seq.get(span.attempt_id, 0))
                if span.sequence_id <= 0:
                    reached += 1
                    _check_int64(reached, f"the next sequence id of attempt {span.attempt_id!r}")
                last[span.attempt_id] = max(reached, span.sequence_id)
            now = time.time()
            stored = [self._store_span(span, now) for span in spans]
        self._wake()
        return stored

    async def get_many_span_sequence_ids(self, rollout_id: str, attempt_id: str, count: int) -> list[int]:
        if count < 1:
            raise ValueError(f"count must be at least 1, not {count!r}")
        _check_int64(count, "count")
        with self._lock:
            attempt = self._attempt(rollout_id, attempt_id)
            last = self._span_seq.get(attempt.attempt_id, 0)
            _check_int64(last + count, f"the last reserved sequence id of attempt {attempt.attempt_id!r}")
            self._span_seq[attempt.attempt_id] = last + count
        return list(range(last + 1, last + count + 1))

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
        _check_int64(limit, "limit")
        with self._lock:
            if attempt_id is None:
                self._rollout(rollout_id)
                attempt_ids = [a.attempt_id for a in self._attempts[rollout_id]]
            else:
                attempt_ids = [self._attempt(rollout_id, attempt_id).attempt_id]
            spans = [s for aid in attempt_ids for s in self._spans.get((rollout_id, aid), ())]
        spans.sort(key=lambda s: (self._attempt_index.get(s.attempt_id, 0), s.sequence_id))
        if name is not None:
            spans = [s for s in spans if s.name == name]
        return paginate(spans, "spans", sort_by=sort_by, sort_order=sort_order, limit=limit, offset=offset)

    # ------------------------------------------------------------------------------------------------ resources

    async def add_resources(self, resources: dict[str, Resource]) -> ResourcesUpdate:
        return await self.update_resources(policy.new_resources_id(), resources)

    async def update_resources(self, resources_id: str, resources: dict[str, Resource]) -> ResourcesUpdate:
        _check_value(dict(resources), "resources")
        with self._lock:
            self._check_open()
            now = time.time()
            previous = self._resources_latest_version.get(resources_id)
            update = ResourcesUpdate(
                resources_id=resources_id,
                version=1 if previous is None else previous.version + 1,
                create_time=now if previous is None else previous.create_time,
                update_time=now,
                resources=dict(resources),
            )
            self._resources.append(update)
            self._resources_latest_version[resources_id] = update
            self._latest_resources = update
        return update

    async def get_resources(self, resources_id: str, version: int | None = None) -> ResourcesUpdate:
        with self._lock:
            self._check_open()
            latest = self._resources_latest_version.get(resources_id)
            if latest is None:
                raise NotFoundError(f"no resources with id {resources_id!r}")
            _check_int64(version, "version")
            if version is None or version == latest.version:
                return latest
            for update in self._resources:
                if update.resources_id == resources_id and update.version == version:
                    return update
            raise NotFoundError(f"resources {resources_id!r} have no version {version}; newest is {latest.version}")

    async def get_latest_resources(self) -> ResourcesUpdate | None:
        with self._lock:
            self._check_open()
            return self._latest_resources

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
        _check_int64(limit, "limit")
        with self._lock:
            self._check_open()
            updates = list(self._resources)
        if resources_id is not None:
            updates = [u for u in updates if u.resources_id == resources_id]
        return paginate(updates, "resources", sort_by=sort_by, sort_order=sort_order, limit=limit, offset=offset)

    # ------------------------------------------------------------------------------------------------ workers

    async def update_worker(self, worker_id: str, *, heartbeat_stats: dict[str, Any] | UnsetType = UNSET) -> Worker:
        if heartbeat_stats is not UNSET:
            _check_value(heartbeat_stats, "worker heartbeat stats")
        with self._lock:
            self._check_open()
            worker = self._workers.get(worker_id) or Worker(worker_id=worker_id)
            changes: dict[str, Any] = {"last_heartbeat_time": time.time()}
            if heartbeat_stats is not UNSET:
                changes["heartbeat_stats"] = heartbeat_stats
            if worker.status is WorkerStatus.UNRESPONSIVE:
                changes["status"] = WorkerStatus.BUSY if worker.current_attempt_id else WorkerStatus.IDLE
            worker = self._workers[worker_id] = replace(worker, **changes)
        return worker

    async def get_worker(self, worker_id: str) -> Worker:
        with self._lock:
            self._check_open()
            try:
                return self._workers[worker_id]
            except KeyError:
                raise NotFoundError(f"no worker with id {worker_id!r} has reported to this store") from None

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
        _check_int64(limit, "limit")
        with self._lock:
            self._check_open()
            workers = list(self._workers.values())
        if status_in is not None:
            statuses = {WorkerStatus(s) for s in status_in}
            workers = [w for w in workers if w.status in statuses]
        return paginate(workers, "workers", sort_by=sort_by, sort_order=sort_order, limit=limit, offset=offset)

    # ------------------------------------------------------------------------------------------------ misc

    async def statistics(self) -> StoreStatistics:
        with self._lock:
            self._check_open()
            rollouts_by_status: dict[str, int] = {}
            for rollout in self._rollouts.values():
                rollouts_by_status[rollout.status.value] = rollouts_by_status.get(rollout.status.value, 0) + 1
            attempts_by_status: dict[str, int] = {}
            total_attempts = 0
            for attempts in self._attempts.values():
                total_attempts += len(attempts)
                for attempt in attempts:
                    attempts_by_status[attempt.status.value] = attempts_by_status.get(attempt.status.value, 0) + 1
            return StoreStatistics(
                total_rollouts=len(self._rollouts),
                rollouts_by_status=rollouts_by_status,
                total_attempts=total_attempts,
                attempts_by_status=attempts_by_status,
                total_spans=self._span_count,
                queue_depth=len(self._queue_ticket),
                total_resources=len(self._resources_latest_version),
                total_workers=len(self._workers),
            )

    # ------------------------------------------------------------------------------------------------ watchdog

    def _watchdog_loop(self, interval: float) -> None:
        while not self._watchdog_stop.wait(interval):
            self.check_deadlines(time.time())

    def check_deadlines(self, now: float) -> int:
        """Apply timeouts and heartbeat deadlines as of ``now``; returns how many attempts changed.
        The watchdog thread calls this every ``watchdog_interval``; tests may call it directly."""
        changed = 0
        with self._lock:
            if self._closed:
                return 0
            for attempt_id, rollout_id in list(self._supervised.items()):
                attempt = self._attempts[rollout_id][self._attempt_index[attempt_id]]
                status = policy.deadline_status(attempt, self._rollouts[rollout_id].config, now)
                if status is None:
                    continue
                self._set_attempt_status(attempt, status, now)
                changed += 1
        self._wake()
        return changed
