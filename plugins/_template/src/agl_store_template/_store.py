"""A skeleton store backend: every method of the ``LightningStore`` contract, to fill in.

Each method's contract (edge cases included) is the docstring of the same method on
``agl_kernel.LightningStore``; ``tests/test_conformance.py`` runs the kernel's conformance suite against this class,
so fill in methods until it passes. Import only public names from ``agl_kernel``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
from msgspec import UNSET, UnsetType

from agl_kernel import (
    Attempt,
    AttemptedRollout,
    AttemptStatus,
    EnqueueRequest,
    LightningStore,
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
from agl_kernel.store import LATEST, SortOrder

__all__ = ["TemplateLightningStore", "TemplateStoreOptions"]


@attrs.define(kw_only=True)
class TemplateStoreOptions:
    """Options of the template store (``template`` in ``agl.stores``): what users set in a run file's ``[store]``
    table, with ``--set store.KEY=VALUE`` or ``AGL_STORE__KEY``. Add the backend's own (a path, a URL, ...)."""

    watchdog_interval: float = attrs.field(default=0.5, validator=attrs.validators.gt(0))
    """Seconds between the watchdog's checks of timeouts and heartbeats."""


class TemplateLightningStore(LightningStore):
    """A store kept in <describe where>.

    Registered as ``template`` in the ``agl.stores`` entry-point group. ``watchdog_interval``: seconds between the
    watchdog's checks of timeouts and heartbeats (the conformance suite passes a small value). The kernel validates
    the options of :class:`TemplateStoreOptions` before it calls the constructor with them; the check here is for
    code that makes the class directly.
    """

    Options = TemplateStoreOptions

    def __init__(self, *, watchdog_interval: float = 0.5) -> None:
        if watchdog_interval <= 0:
            raise ValueError(f"watchdog_interval must be > 0 seconds, not {watchdog_interval!r}")
        self.watchdog_interval = watchdog_interval
        self._closed = False
        # Open connections here, and start the watchdog: it must time out attempts on its own schedule,
        # whether or not anyone calls the store.

    # ----------------------------------------------------------------------------------------------- lifecycle

    @property
    def capabilities(self) -> StoreCapabilities:
        # Declare what the backend can do; the conformance suite skips or adds tests from these.
        return StoreCapabilities(async_safe=True)

    async def close(self) -> None:
        # Stop the watchdog, wake every waiter, release connections. Calling it twice is harmless.
        self._closed = True

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
        raise NotImplementedError("TemplateLightningStore.enqueue_rollout")

    async def enqueue_many_rollouts(self, requests: Sequence[EnqueueRequest]) -> list[Rollout]:
        raise NotImplementedError("TemplateLightningStore.enqueue_many_rollouts")

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
        raise NotImplementedError("TemplateLightningStore.start_rollout")

    async def dequeue_rollout(self, *, worker_id: str | None = None, timeout: float = 0.0) -> AttemptedRollout | None:
        raise NotImplementedError("TemplateLightningStore.dequeue_rollout")

    async def dequeue_many_rollouts(
        self, *, limit: int, worker_id: str | None = None, timeout: float = 0.0
    ) -> list[AttemptedRollout]:
        raise NotImplementedError("TemplateLightningStore.dequeue_many_rollouts")

    async def start_attempt(self, rollout_id: str, *, worker_id: str | None = None) -> AttemptedRollout:
        raise NotImplementedError("TemplateLightningStore.start_attempt")

    async def get_rollout(self, rollout_id: str) -> Rollout:
        raise NotImplementedError("TemplateLightningStore.get_rollout")

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
        raise NotImplementedError("TemplateLightningStore.query_rollouts")

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
        raise NotImplementedError("TemplateLightningStore.update_rollout")

    async def wait_for_rollouts(self, rollout_ids: Sequence[str], *, timeout: float | None = None) -> list[Rollout]:
        raise NotImplementedError("TemplateLightningStore.wait_for_rollouts")

    async def delete_rollouts(
        self, rollout_ids: Sequence[str] | None = None, *, ended_before: float | None = None
    ) -> int:
        raise NotImplementedError("TemplateLightningStore.delete_rollouts")

    # ------------------------------------------------------------------------------------------------ attempts

    async def get_attempt(self, rollout_id: str, attempt_id: str = LATEST) -> Attempt:
        raise NotImplementedError("TemplateLightningStore.get_attempt")

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
        raise NotImplementedError("TemplateLightningStore.query_attempts")

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
        raise NotImplementedError("TemplateLightningStore.update_attempt")

    # --------------------------------------------------------------------------------------------------- spans

    async def add_span(self, span: Span) -> Span:
        raise NotImplementedError("TemplateLightningStore.add_span")

    async def add_many_spans(self, spans: Sequence[Span]) -> list[Span]:
        raise NotImplementedError("TemplateLightningStore.add_many_spans")

    async def get_many_span_sequence_ids(self, rollout_id: str, attempt_id: str, count: int) -> list[int]:
        raise NotImplementedError("TemplateLightningStore.get_many_span_sequence_ids")

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
        raise NotImplementedError("TemplateLightningStore.query_spans")

    # ----------------------------------------------------------------------------------------------- resources

    async def add_resources(self, resources: dict[str, Resource]) -> ResourcesUpdate:
        raise NotImplementedError("TemplateLightningStore.add_resources")

    async def update_resources(self, resources_id: str, resources: dict[str, Resource]) -> ResourcesUpdate:
        raise NotImplementedError("TemplateLightningStore.update_resources")

    async def get_resources(self, resources_id: str, version: int | None = None) -> ResourcesUpdate:
        raise NotImplementedError("TemplateLightningStore.get_resources")

    async def get_latest_resources(self) -> ResourcesUpdate | None:
        raise NotImplementedError("TemplateLightningStore.get_latest_resources")

    async def query_resources(
        self,
        *,
        resources_id: str | None = None,
        sort_by: str | None = None,
        sort_order: SortOrder = "asc",
        limit: int | None = None,
        offset: int = 0,
    ) -> PaginatedResult[ResourcesUpdate]:
        raise NotImplementedError("TemplateLightningStore.query_resources")

    # ------------------------------------------------------------------------------------------------- workers

    async def update_worker(
        self,
        worker_id: str,
        *,
        heartbeat_stats: dict[str, Any] | UnsetType = UNSET,
    ) -> Worker:
        raise NotImplementedError("TemplateLightningStore.update_worker")

    async def get_worker(self, worker_id: str) -> Worker:
        raise NotImplementedError("TemplateLightningStore.get_worker")

    async def query_workers(
        self,
        *,
        status_in: Sequence[WorkerStatus] | None = None,
        sort_by: str | None = None,
        sort_order: SortOrder = "asc",
        limit: int | None = None,
        offset: int = 0,
    ) -> PaginatedResult[Worker]:
        raise NotImplementedError("TemplateLightningStore.query_workers")

    async def statistics(self) -> StoreStatistics:
        raise NotImplementedError("TemplateLightningStore.statistics")
