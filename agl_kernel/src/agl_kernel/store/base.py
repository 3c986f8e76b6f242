"""The store contract: one async interface that every backend (memory, SQLite, HTTP client, ...) implements.

The conformance suite in :mod:`agl_kernel.testing` checks every statement made in these docstrings.

Shared rules
------------
- Rollout ids and attempt ids are opaque strings made by the store. An unknown id raises
  :class:`~agl_kernel.errors.NotFoundError` naming it; nothing is created implicitly except workers.
- ``attempt_id="latest"`` names the rollout's newest attempt wherever an attempt id is taken.
- Times are ``time.time()`` seconds.
- Returned objects are frozen snapshots; they never change after they are returned.
- Statuses follow ``queuing → preparing → running → succeeded | failed | cancelled`` for rollouts (``requeuing``
  when a retry is queued) and ``preparing → running → succeeded | failed | timeout | unresponsive`` for attempts.
  Only the newest attempt of a rollout ever changes the rollout's status.
- A failed, timed-out or unresponsive attempt whose status is in ``config.retry_condition`` and whose
  ``sequence_id < config.max_attempts`` requeues the rollout (``requeuing``, at the back of the queue); otherwise
  the rollout fails.
- Query methods take ``sort_by`` (a field of the returned type listed in ``SORT_FIELDS``), ``sort_order``
  (``"asc"``/``"desc"``), ``limit`` (``None`` = all) and ``offset``. An unknown sort field or a negative
  limit/offset raises :class:`~agl_kernel.errors.InvalidQueryError`. Ties keep creation order.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from msgspec import UNSET, UnsetType

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

__all__ = ["LATEST", "SORT_FIELDS", "LightningStore", "SortOrder"]

SortOrder = Literal["asc", "desc"]
LATEST = "latest"

SORT_FIELDS: dict[str, frozenset[str]] = {
    "rollouts": frozenset({"rollout_id", "start_time", "end_time", "status", "mode", "attempt_count"}),
    "attempts": frozenset({"attempt_id", "sequence_id", "start_time", "end_time", "status", "worker_id"}),
    "spans": frozenset({"sequence_id", "start_time", "end_time", "name", "span_id"}),
    "resources": frozenset({"resources_id", "version", "create_time", "update_time"}),
    "workers": frozenset({"worker_id", "status", "last_heartbeat_time", "last_dequeue_time"}),
}
"""The fields each query may sort by."""


class LightningStore(abc.ABC):
    """The central state of a training run: rollouts, attempts, spans, resources and workers.

    A store is an async context manager; ``close()`` stops its watchdog and releases its resources, and any call
    after it raises :class:`~agl_kernel.errors.StoreClosedError`.

    The watchdog (started with the store) turns attempts that ran past ``timeout_seconds`` into ``timeout`` and
    attempts without a heartbeat for ``unresponsive_seconds`` into ``unresponsive`` on its own schedule, every
    ``watchdog_interval`` seconds, whether or not anyone calls the store.
    """

    SORT_FIELDS: ClassVar[dict[str, frozenset[str]]] = SORT_FIELDS

    @property
    @abc.abstractmethod
    def capabilities(self) -> StoreCapabilities:
        """What this backend can do (thread safety, durability, sharing between processes, ...)."""

    async def __aenter__(self) -> LightningStore:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop the watchdog, wake every waiter (they return what they have) and release resources.
        Calling it twice is harmless."""

    # ------------------------------------------------------------------------------------------------ rollouts

    @abc.abstractmethod
    async def enqueue_rollout(
        self,
        input: Any,
        *,
        mode: RolloutMode | None = None,
        resources_id: str | None = None,
        config: RolloutConfig | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Rollout:
        """Create a rollout in ``queuing`` status, at the back of the queue, with no attempt yet.

        ``resources_id=None`` pins the latest resources at this moment (``None`` if there are none); an unknown
        ``resources_id`` raises ``NotFoundError``. ``config=None`` means ``RolloutConfig()``.
        """

    @abc.abstractmethod
    async def enqueue_many_rollouts(self, requests: Sequence[EnqueueRequest]) -> list[Rollout]:
        """Enqueue several rollouts atomically, in the given order (FIFO keeps it). An empty list returns []."""

    @abc.abstractmethod
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
        """Create a rollout that skips the queue: it is ``preparing`` with attempt 1 (``preparing``) at once."""

    @abc.abstractmethod
    async def dequeue_rollout(self, *, worker_id: str | None = None, timeout: float = 0.0) -> AttemptedRollout | None:
        """Take the oldest queued rollout and start a new attempt on it (``preparing``; rollout ``preparing``).

        Exactly once: under any concurrency (tasks, threads and, where ``capabilities.multi_process``, processes)
        no rollout is handed out twice for one queue entry. Queue entries whose rollout has since left
        ``queuing``/``requeuing`` (cancelled, started by hand, revived) are skipped and dropped.
        With ``worker_id`` the worker is recorded on the attempt and marked ``busy``.
        ``timeout > 0`` waits up to that many seconds for work to arrive (woken by the enqueue, not by polling);
        returns ``None`` when none came.
        """

    @abc.abstractmethod
    async def dequeue_many_rollouts(
        self, *, limit: int, worker_id: str | None = None, timeout: float = 0.0
    ) -> list[AttemptedRollout]:
        """Dequeue up to ``limit`` rollouts at once, oldest first; waits like :meth:`dequeue_rollout` while the
        queue is empty and returns as soon as at least one is available."""

    @abc.abstractmethod
    async def start_attempt(self, rollout_id: str, *, worker_id: str | None = None) -> AttemptedRollout:
        """Start a new attempt on an existing rollout by hand (its queue entry, if any, goes stale).
        Raises ``InvalidStatusTransitionError`` for a rollout in a terminal status."""

    @abc.abstractmethod
    async def get_rollout(self, rollout_id: str) -> Rollout:
        """The rollout; ``NotFoundError`` if it does not exist."""

    @abc.abstractmethod
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
        """Rollouts matching every given filter (``None`` = no filter), in creation order unless sorted."""

    @abc.abstractmethod
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
        """Change the given fields (``metadata`` is replaced whole).

        Status rules: a non-terminal rollout may move to any status; ``queuing``/``requeuing`` puts it at the
        back of the queue; a terminal status sets ``end_time`` and wakes waiters. A terminal rollout may only be
        re-queued (``queuing``/``requeuing``); other moves raise ``InvalidStatusTransitionError``.
        ``cancelled`` leaves the attempt to the runner, which sees the cancellation and stops the agent.
        """

    async def cancel_rollout(self, rollout_id: str) -> Rollout:
        """Shorthand for ``update_rollout(rollout_id, status=CANCELLED)``; a no-op on a cancelled rollout."""
        rollout = await self.get_rollout(rollout_id)
        if rollout.status is RolloutStatus.CANCELLED:
            return rollout
        return await self.update_rollout(rollout_id, status=RolloutStatus.CANCELLED)

    @abc.abstractmethod
    async def wait_for_rollouts(self, rollout_ids: Sequence[str], *, timeout: float | None = None) -> list[Rollout]:
        """Wait until every named rollout has ended, or ``timeout`` seconds (``None`` = no limit, 0 = just look).

        Returns the rollouts that have ended (``succeeded``/``failed``/``cancelled``) by then, in the order of
        ``rollout_ids``. It is woken by the status changes themselves (no polling loop). Unknown ids raise
        ``NotFoundError`` before any waiting. Many waiters may wait on overlapping ids.
        """

    @abc.abstractmethod
    async def delete_rollouts(
        self, rollout_ids: Sequence[str] | None = None, *, ended_before: float | None = None
    ) -> int:
        """Delete ended rollouts with their attempts and spans; returns how many were deleted.

        With ``rollout_ids``: all must exist (``NotFoundError``) and have ended (``InvalidStatusTransitionError``),
        checked before anything is deleted. With ``ended_before``: every rollout that ended before that time
        (retention). With both: the named ones that also ended before it.
        """

    # ------------------------------------------------------------------------------------------------ attempts

    @abc.abstractmethod
    async def get_attempt(self, rollout_id: str, attempt_id: str = LATEST) -> Attempt:
        """One attempt; ``NotFoundError`` if the rollout or attempt does not exist (or ``latest`` has none)."""

    @abc.abstractmethod
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
        """The rollout's attempts, by ``sequence_id`` unless sorted otherwise."""

    @abc.abstractmethod
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
        """Change an attempt; every call counts as a heartbeat (``last_heartbeat_time`` defaults to now).

        ``succeeded``/``failed``/``timeout`` are final: moving a final attempt to another status raises
        ``InvalidStatusTransitionError`` (setting the same status again is a no-op). A final status sets
        ``end_time`` and frees the worker (``idle``). If the attempt is the rollout's newest, the rollout
        follows: running → running, succeeded → succeeded, failed/timeout/unresponsive → retry or fail (see the
        module docstring); a terminal rollout is never changed by an attempt.
        """

    # ------------------------------------------------------------------------------------------------ spans

    @abc.abstractmethod
    async def add_span(self, span: Span) -> Span:
        """Store one span; returns it as stored (with its sequence id).

        Idempotent on ``(rollout_id, attempt_id, span_id)``: adding it again returns the stored span unchanged.
        ``sequence_id=0`` takes the attempt's next sequence id; a given one is kept, and later ones continue
        above it. A span is a heartbeat for its attempt: ``preparing``/``unresponsive`` → ``running`` (and the
        rollout, if this is its newest attempt and the rollout is ``preparing``/``requeuing``, or ``failed`` only
        because this attempt was unresponsive → ``running``); a final attempt keeps its status.
        Unknown rollout or attempt → ``NotFoundError``.
        """

    @abc.abstractmethod
    async def add_many_spans(self, spans: Sequence[Span]) -> list[Span]:
        """:meth:`add_span` for several spans (any rollouts) in one call, atomically, in order."""

    @abc.abstractmethod
    async def get_many_span_sequence_ids(self, rollout_id: str, attempt_id: str, count: int) -> list[int]:
        """Reserve ``count`` consecutive sequence ids for spans of this attempt: strictly increasing, never
        handed out twice, starting at 1 for a new attempt."""

    async def get_next_span_sequence_id(self, rollout_id: str, attempt_id: str) -> int:
        """Reserve one sequence id (see :meth:`get_many_span_sequence_ids`)."""
        return (await self.get_many_span_sequence_ids(rollout_id, attempt_id, 1))[0]

    @abc.abstractmethod
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
        """Spans of a rollout (all attempts when ``attempt_id`` is ``None``; ``"latest"`` allowed), ordered by
        (attempt, sequence id) unless sorted otherwise; ``name`` filters by exact span name."""

    # ------------------------------------------------------------------------------------------------ resources

    @abc.abstractmethod
    async def add_resources(self, resources: dict[str, Resource]) -> ResourcesUpdate:
        """Store a new resources set under a new id (version 1); it becomes the latest."""

    @abc.abstractmethod
    async def update_resources(self, resources_id: str, resources: dict[str, Resource]) -> ResourcesUpdate:
        """Store a new version of ``resources_id`` (version 1 if it is new); it becomes the latest.
        Concurrent updates each get their own version; none is lost."""

    @abc.abstractmethod
    async def get_resources(self, resources_id: str, version: int | None = None) -> ResourcesUpdate:
        """A resources set at ``version`` (default: its newest); ``NotFoundError`` if absent."""

    @abc.abstractmethod
    async def get_latest_resources(self) -> ResourcesUpdate | None:
        """The most recently added or updated resources set, or ``None`` if there is none."""

    @abc.abstractmethod
    async def query_resources(
        self,
        *,
        resources_id: str | None = None,
        sort_by: str | None = None,
        sort_order: SortOrder = "asc",
        limit: int | None = None,
        offset: int = 0,
    ) -> PaginatedResult[ResourcesUpdate]:
        """Every stored version (of ``resources_id`` only, if given), in write order unless sorted."""

    # ------------------------------------------------------------------------------------------------ workers

    @abc.abstractmethod
    async def update_worker(
        self,
        worker_id: str,
        *,
        heartbeat_stats: dict[str, Any] | UnsetType = UNSET,
    ) -> Worker:
        """Record a heartbeat of a worker (created on first call): ``last_heartbeat_time`` = now, stats replaced.
        An ``unresponsive`` worker becomes ``idle`` (or ``busy`` if it still holds an attempt)."""

    @abc.abstractmethod
    async def get_worker(self, worker_id: str) -> Worker:
        """One worker; ``NotFoundError`` if it never reported."""

    @abc.abstractmethod
    async def query_workers(
        self,
        *,
        status_in: Sequence[WorkerStatus] | None = None,
        sort_by: str | None = None,
        sort_order: SortOrder = "asc",
        limit: int | None = None,
        offset: int = 0,
    ) -> PaginatedResult[Worker]:
        """Workers, in order of first appearance unless sorted."""

    # ------------------------------------------------------------------------------------------------ misc

    @abc.abstractmethod
    async def statistics(self) -> StoreStatistics:
        """Counts by collection and status, and the queue depth (live queue entries)."""
