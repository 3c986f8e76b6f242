"""Runs: each ``fit``/``dev``/``agl train``/``agl dev`` is a run with an id, and its rollouts use only the resources
published in that run (or given to it), never an earlier run's.

Why: the store's contract pins the *latest* resources to a rollout enqueued without a ``resources_id``, and the
latest resources outlive the run that published them (the SQLite store keeps them in ``./.agl/agl.db``). A second
run in the same folder would then hand its agent the first run's LLM endpoint, long gone. So the trainer gives the
algorithm and the runners a :class:`RunStore`, a view of the store scoped to one run:

- at the start the run publishes its own resources set, under the run's id (``Trainer(initial_resources=...)``, or
  an empty set), so the run never starts from an earlier run's;
- every rollout it enqueues pins the resources this run published last, and carries the run's id in its metadata
  (``metadata["agl.run"]``): ``agl rollouts list --run ID`` and ``agl runs list`` read it;
- ``get_latest_resources`` answers with this run's latest, so an algorithm that builds on "the current resources"
  (APO's starting prompt, GRPO's extra resources) builds on this run's.

Everything else goes to the underlying store unchanged; the view owns nothing and closing it closes nothing.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from agl_kernel.models import (
    Attempt,
    AttemptedRollout,
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
from agl_kernel.store.base import LATEST, LightningStore, SortOrder

__all__ = ["ALGORITHM_KEY", "RUN_KEY", "RunStore", "RunSummary", "list_runs", "new_run_id", "run_of"]

RUN_KEY = "agl.run"
"""The rollout metadata key holding the id of the run that enqueued it."""
ALGORITHM_KEY = "agl.algorithm"
"""The rollout metadata key holding the name of the algorithm of that run."""


def new_run_id(now: float | None = None) -> str:
    """``run-YYYYMMDD-HHMMSS-xxxx``: sortable by start time, unique across processes."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if now is None else now))
    return f"run-{stamp}-{secrets.token_hex(2)}"


def run_of(rollout: Rollout) -> str | None:
    """The id of the run that enqueued ``rollout`` (``None`` for one enqueued outside a run)."""
    run = rollout.metadata.get(RUN_KEY) if isinstance(rollout.metadata, dict) else None
    return run if isinstance(run, str) else None


class RunStore(LightningStore):
    """``inner`` as seen by one run (see the module docstring). Made by the trainer for each ``fit``/``dev``."""

    def __init__(self, inner: LightningStore, *, run_id: str | None = None, algorithm: str | None = None):
        self.inner = inner
        self.run_id = run_id or new_run_id()
        self.algorithm = algorithm
        self._latest: ResourcesUpdate | None = None

    async def begin(self, resources: dict[str, Resource] | None = None) -> ResourcesUpdate:
        """Publish the run's starting resources (``resources``, or none) under the run's id; the run's rollouts pin
        them until the run publishes others."""
        self._latest = await self.inner.update_resources(self.run_id, dict(resources or {}))
        return self._latest

    @property
    def latest(self) -> ResourcesUpdate | None:
        """The resources this run published last (``None`` before :meth:`begin`)."""
        return self._latest

    def _tag(self, metadata: dict[str, Any] | None) -> dict[str, Any]:
        tagged = {**(metadata or {}), RUN_KEY: self.run_id}
        if self.algorithm is not None:
            tagged.setdefault(ALGORITHM_KEY, self.algorithm)
        return tagged

    def _pin(self, resources_id: str | None) -> str | None:
        if resources_id is None and self._latest is not None:
            return self._latest.resources_id
        return resources_id

    def __getattr__(self, name: str) -> Any:  # a backend's own extras (its path, its URL) stay reachable
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"RunStore({self.run_id!r}, {self.inner!r})"

    # ------------------------------------------------------------------ what the run changes

    @property
    def capabilities(self) -> StoreCapabilities:
        return self.inner.capabilities

    async def close(self) -> None:
        """Nothing: the store belongs to whoever made it (the trainer closes it)."""

    async def enqueue_rollout(
        self,
        input: Any,
        *,
        mode: RolloutMode | None = None,
        resources_id: str | None = None,
        config: RolloutConfig | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Rollout:
        return await self.inner.enqueue_rollout(
            input, mode=mode, resources_id=self._pin(resources_id), config=config, metadata=self._tag(metadata)
        )

    async def enqueue_many_rollouts(self, requests: Sequence[EnqueueRequest]) -> list[Rollout]:
        scoped = [
            msgspec.structs.replace(r, resources_id=self._pin(r.resources_id), metadata=self._tag(r.metadata))
            for r in requests
        ]
        return await self.inner.enqueue_many_rollouts(scoped)

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
        return await self.inner.start_rollout(
            input,
            mode=mode,
            resources_id=self._pin(resources_id),
            config=config,
            metadata=self._tag(metadata),
            worker_id=worker_id,
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
        return await self.inner.update_rollout(
            rollout_id,
            status=status,
            mode=mode,
            resources_id=resources_id,
            config=config,
            metadata=metadata if isinstance(metadata, UnsetType) else self._tag(metadata),
        )

    async def add_resources(self, resources: dict[str, Resource]) -> ResourcesUpdate:
        self._latest = await self.inner.add_resources(resources)
        return self._latest

    async def update_resources(self, resources_id: str, resources: dict[str, Resource]) -> ResourcesUpdate:
        self._latest = await self.inner.update_resources(resources_id, resources)
        return self._latest

    async def get_latest_resources(self) -> ResourcesUpdate | None:
        if self._latest is None:
            return await self.inner.get_latest_resources()
        # The newest version of what the run published last (another writer may have updated that id since).
        return await self.inner.get_resources(self._latest.resources_id)

    # ------------------------------------------------------------------ the rest, unchanged

    async def dequeue_rollout(self, *, worker_id: str | None = None, timeout: float = 0.0) -> AttemptedRollout | None:
        return await self.inner.dequeue_rollout(worker_id=worker_id, timeout=timeout)

    async def dequeue_many_rollouts(
        self, *, limit: int, worker_id: str | None = None, timeout: float = 0.0
    ) -> list[AttemptedRollout]:
        return await self.inner.dequeue_many_rollouts(limit=limit, worker_id=worker_id, timeout=timeout)

    async def start_attempt(self, rollout_id: str, *, worker_id: str | None = None) -> AttemptedRollout:
        return await self.inner.start_attempt(rollout_id, worker_id=worker_id)

    async def get_rollout(self, rollout_id: str) -> Rollout:
        return await self.inner.get_rollout(rollout_id)

    async def query_rollouts(self, **kwargs: Any) -> PaginatedResult[Rollout]:
        return await self.inner.query_rollouts(**kwargs)

    async def cancel_rollout(self, rollout_id: str) -> Rollout:
        return await self.inner.cancel_rollout(rollout_id)

    async def wait_for_rollouts(self, rollout_ids: Sequence[str], *, timeout: float | None = None) -> list[Rollout]:
        return await self.inner.wait_for_rollouts(rollout_ids, timeout=timeout)

    async def delete_rollouts(
        self, rollout_ids: Sequence[str] | None = None, *, ended_before: float | None = None
    ) -> int:
        return await self.inner.delete_rollouts(rollout_ids, ended_before=ended_before)

    async def get_attempt(self, rollout_id: str, attempt_id: str = LATEST) -> Attempt:
        return await self.inner.get_attempt(rollout_id, attempt_id)

    async def query_attempts(self, rollout_id: str, **kwargs: Any) -> PaginatedResult[Attempt]:
        return await self.inner.query_attempts(rollout_id, **kwargs)

    async def update_attempt(self, rollout_id: str, attempt_id: str = LATEST, **kwargs: Any) -> Attempt:
        return await self.inner.update_attempt(rollout_id, attempt_id, **kwargs)

    async def add_span(self, span: Span) -> Span:
        return await self.inner.add_span(span)

    async def add_many_spans(self, spans: Sequence[Span]) -> list[Span]:
        return await self.inner.add_many_spans(spans)

    async def get_many_span_sequence_ids(self, rollout_id: str, attempt_id: str, count: int) -> list[int]:
        return await self.inner.get_many_span_sequence_ids(rollout_id, attempt_id, count)

    async def get_next_span_sequence_id(self, rollout_id: str, attempt_id: str) -> int:
        return await self.inner.get_next_span_sequence_id(rollout_id, attempt_id)

    async def query_spans(self, rollout_id: str, attempt_id: str | None = None, **kwargs: Any) -> PaginatedResult[Span]:
        return await self.inner.query_spans(rollout_id, attempt_id, **kwargs)

    async def get_resources(self, resources_id: str, version: int | None = None) -> ResourcesUpdate:
        return await self.inner.get_resources(resources_id, version)

    async def query_resources(self, **kwargs: Any) -> PaginatedResult[ResourcesUpdate]:
        return await self.inner.query_resources(**kwargs)

    async def update_worker(self, worker_id: str, *, heartbeat_stats: dict[str, Any] | UnsetType = UNSET) -> Worker:
        return await self.inner.update_worker(worker_id, heartbeat_stats=heartbeat_stats)

    async def get_worker(self, worker_id: str) -> Worker:
        return await self.inner.get_worker(worker_id)

    async def query_workers(
        self,
        *,
        status_in: Sequence[WorkerStatus] | None = None,
        sort_by: str | None = None,
        sort_order: SortOrder = "asc",
        limit: int | None = None,
        offset: int = 0,
    ) -> PaginatedResult[Worker]:
        return await self.inner.query_workers(
            status_in=status_in, sort_by=sort_by, sort_order=sort_order, limit=limit, offset=offset
        )

    async def statistics(self) -> StoreStatistics:
        return await self.inner.statistics()


# ---------------------------------------------------------------------------------------------------- agl runs


class RunSummary(msgspec.Struct, frozen=True, kw_only=True):
    """One run as ``agl runs list`` shows it, from its rollouts."""

    run_id: str | None
    """``None`` gathers the rollouts enqueued outside any run."""
    algorithm: str | None = None
    started: float
    """When its first rollout was created."""
    last_end: float | None = None
    """When its last ended rollout ended."""
    rollouts: int = 0
    by_status: dict[str, int] = msgspec.field(default_factory=dict)
    modes: list[str] = msgspec.field(default_factory=list)
    resources_ids: list[str] = msgspec.field(default_factory=list)
    """The resources ids its rollouts pinned, in first-use order."""

    @property
    def running(self) -> int:
        """Rollouts not ended yet."""
        ended = {s.value for s in (RolloutStatus.SUCCEEDED, RolloutStatus.FAILED, RolloutStatus.CANCELLED)}
        return sum(n for status, n in self.by_status.items() if status not in ended)


_PAGE = 1000


async def list_runs(store: LightningStore) -> list[RunSummary]:
    """Every run with rollouts in ``store``, newest first (rollouts read a page at a time)."""
    runs: dict[str | None, dict[str, Any]] = {}
    offset = 0
    while True:
        page = await store.query_rollouts(sort_by="start_time", limit=_PAGE, offset=offset)
        for rollout in page.items:
            run = runs.setdefault(
                run_of(rollout),
                {
                    "algorithm": None,
                    "started": rollout.start_time,
                    "last_end": None,
                    "rollouts": 0,
                    "by_status": {},
                    "modes": [],
                    "resources_ids": [],
                },
            )
            algorithm = rollout.metadata.get(ALGORITHM_KEY) if isinstance(rollout.metadata, dict) else None
            if isinstance(algorithm, str):
                run["algorithm"] = algorithm
            run["started"] = min(run["started"], rollout.start_time)
            if rollout.end_time is not None:
                run["last_end"] = max(run["last_end"] or 0.0, rollout.end_time)
            run["rollouts"] += 1
            status = rollout.status.value
            run["by_status"][status] = run["by_status"].get(status, 0) + 1
            mode = rollout.mode.value if rollout.mode is not None else None
            if mode is not None and mode not in run["modes"]:
                run["modes"].append(mode)
            if rollout.resources_id is not None and rollout.resources_id not in run["resources_ids"]:
                run["resources_ids"].append(rollout.resources_id)
        offset += len(page.items)
        if len(page.items) < _PAGE:
            break
    summaries = [RunSummary(run_id=run_id, **fields) for run_id, fields in runs.items()]
    return sorted(summaries, key=lambda r: r.started, reverse=True)


def describe_run(run_id: str, update: ResourcesUpdate) -> str:
    """The line the trainer prints as a run begins."""
    names = ", ".join(f"{name} ({type(r).__name__})" for name, r in update.resources.items()) or "none"
    return f"run {run_id}: resources {update.resources_id} v{update.version}: {names}"
