"""The store's REST API as one table, :data:`OPERATIONS`: for each store method, its route, what a request takes and
answers, and the store call it becomes. The server's routes are made from it (:mod:`~agl_kernel.server._routes`),
the batch endpoint dispatches through it (:mod:`~agl_kernel.server._batch`), and
:class:`~agl_kernel.client.LightningStoreClient` builds its requests and decodes the answers with it, so that the way
a request maps to a store call is written once.

A request's *arguments*, everywhere, are its path values (in the order of the path), then its query values, then
its body when it takes one; ``call(store, *arguments)`` is the store call. Importing this module needs msgspec only.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from urllib.parse import quote

import msgspec
from msgspec import UNSET

from agl_kernel.models import (
    Attempt,
    AttemptedRollout,
    EnqueueRequest,
    PaginatedResult,
    ResourcesUpdate,
    Rollout,
    Span,
    StoreCapabilities,
    StoreStatistics,
    Worker,
)
from agl_kernel.server import _wire as wire
from agl_kernel.server._wire import API_PREFIX, INT64_MAX, INT64_MIN, set_fields
from agl_kernel.store.base import LATEST, LightningStore

__all__ = ["OPERATIONS", "Operation"]

_PATH_PARAMETER = re.compile(r"\{(\w+):\w+\}")


@dataclass(frozen=True)
class Operation:
    """One store method as a route of the REST API."""

    name: str
    """The store method; also the operation's label in the server's metrics."""
    method: Literal["GET", "POST", "PATCH", "PUT"]
    path: str
    """Under :data:`API_PREFIX`, with litestar's typed path parameters (``:path`` for ids that may hold a slash)."""
    tag: str
    summary: str
    call: Callable[..., Awaitable[Any]]
    """``call(store, *arguments)``: the store call a request becomes."""
    body: Any = None
    """The type of the request body; ``None``: the request has none."""
    result: Any = None
    status_code: int = 200
    query: dict[str, Any] = field(default_factory=dict)
    """Query parameters: name -> ``Annotated[type, msgspec.Meta(...)]`` (``None`` when absent)."""
    idempotent: bool | Callable[..., bool] = True
    """Whether the client may send the request again when it cannot tell whether it arrived (a function of the
    arguments where that depends on them)."""
    batch: Any = None
    """The call's struct in ``POST /api/v1/batch``, for short calls."""
    batch_body: str | None = None
    """The field of :attr:`batch` that holds the body; ``None``: the struct has the body's own fields."""
    done: Callable[[Any, Any], bool] | None = None
    """For a long poll: ``call(store, body, seconds)`` waits, and the server polls until ``done(body, result)``."""
    requeue: bool = False
    """A dequeue: what it took for a client that has gone away goes back into the queue."""
    timed: bool = True
    """Whether the server times the call in its metrics (a property read is not a store call)."""

    @property
    def path_parameters(self) -> list[str]:
        return _PATH_PARAMETER.findall(self.path)

    def is_idempotent(self, *arguments: Any) -> bool:
        return self.idempotent(*arguments) if callable(self.idempotent) else self.idempotent

    def request(self, *arguments: Any) -> tuple[str, Any, dict[str, Any] | None]:
        """The HTTP request for ``arguments``: (path, body, query parameters)."""
        values = iter(arguments)
        path = _PATH_PARAMETER.sub(lambda _: quote(next(values), safe=""), self.path)  # ids may hold any character
        query = {name: value for name in self.query if (value := next(values)) is not None}
        return API_PREFIX + path, next(values, None), query or None

    def to_batch(self, *arguments: Any) -> Any:
        """The call of a batch for ``arguments``."""
        fields = dict(zip(self.path_parameters, arguments, strict=False))  # then the body, if any
        if self.body is not None and self.batch_body is not None:
            fields[self.batch_body] = arguments[-1]
        elif self.body is not None:
            fields.update((name, getattr(arguments[-1], name)) for name in self.batch.__struct_fields__)
        return self.batch(**fields)

    def from_batch(self, op: Any) -> list[Any]:
        """The arguments of a call of a batch."""
        fields = {name: getattr(op, name) for name in op.__struct_fields__}
        arguments = [fields.pop(name) for name in self.path_parameters]
        if self.body is not None:
            arguments.append(fields[self.batch_body] if self.batch_body is not None else self.body(**fields))
        return arguments


async def _deleted(count: Awaitable[int]) -> wire.DeletedCount:
    return wire.DeletedCount(deleted=await count)


async def _capabilities(store: LightningStore) -> StoreCapabilities:
    return store.capabilities


_ROLLOUT, _ATTEMPT = "/rollouts/{rollout_id:str}", "/rollouts/{rollout_id:str}/attempts/{attempt_id:str}"
_Version = Annotated[int | None, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX, description="Default: the latest")]

OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in (
        # -------------------------------------------------------------------------------------------- rollouts
        Operation(
            "enqueue_rollout", "POST", "/rollouts", "rollouts", "Enqueue a rollout",
            lambda store, r: store.enqueue_rollout(
                r.input, mode=r.mode, resources_id=r.resources_id, config=r.config, metadata=r.metadata
            ),
            body=EnqueueRequest, result=Rollout, status_code=201, idempotent=False,
            batch=wire.EnqueueRolloutOp, batch_body="request",
        ),
        Operation(
            "enqueue_many_rollouts", "POST", "/rollouts/batch", "rollouts", "Enqueue rollouts atomically",
            lambda store, body: store.enqueue_many_rollouts(body.requests),
            body=wire.EnqueueManyBody, result=list[Rollout], status_code=201, idempotent=False,
        ),
        Operation(
            "start_rollout", "POST", "/rollouts/start", "rollouts", "Start a rollout (skip the queue)",
            lambda store, r: store.start_rollout(
                r.input, mode=r.mode, resources_id=r.resources_id, config=r.config, metadata=r.metadata,
                worker_id=r.worker_id,
            ),
            body=wire.StartRolloutBody, result=AttemptedRollout, status_code=201, idempotent=False,
        ),
        Operation(
            "dequeue_rollout", "POST", "/rollouts/dequeue", "rollouts", "Dequeue one rollout (long poll)",
            lambda store, body, seconds=0.0: store.dequeue_rollout(worker_id=body.worker_id, timeout=seconds),
            body=wire.DequeueBody, result=AttemptedRollout | None, idempotent=False, batch=wire.DequeueRolloutOp,
            done=lambda body, got: got is not None, requeue=True,
        ),
        Operation(
            "dequeue_many_rollouts", "POST", "/rollouts/dequeue-many", "rollouts", "Dequeue up to `limit`",
            lambda store, body, seconds: store.dequeue_many_rollouts(
                limit=body.limit, worker_id=body.worker_id, timeout=seconds
            ),
            body=wire.DequeueManyBody, result=list[AttemptedRollout], idempotent=False,
            done=lambda body, got: bool(got), requeue=True,
        ),
        Operation(
            "query_rollouts", "POST", "/rollouts/query", "rollouts", "Query rollouts",
            lambda store, query: store.query_rollouts(**set_fields(query)),
            body=wire.RolloutQuery, result=PaginatedResult[Rollout],
        ),
        Operation(
            "wait_for_rollouts", "POST", "/rollouts/wait", "rollouts", "Wait for rollouts to end (long poll)",
            lambda store, body, seconds: store.wait_for_rollouts(body.rollout_ids, timeout=seconds),
            body=wire.WaitBody, result=list[Rollout], done=lambda body, ended: len(ended) >= len(body.rollout_ids),
        ),
        Operation(
            "delete_rollouts", "POST", "/rollouts/delete", "rollouts", "Delete ended rollouts",
            lambda store, body: _deleted(store.delete_rollouts(body.rollout_ids, ended_before=body.ended_before)),
            body=wire.DeleteBody, result=wire.DeletedCount, idempotent=False,
        ),
        Operation(
            "get_rollout", "GET", _ROLLOUT, "rollouts", "Get a rollout",
            lambda store, rollout_id: store.get_rollout(rollout_id),
            result=Rollout, batch=wire.GetRolloutOp,
        ),
        Operation(
            "update_rollout", "PATCH", _ROLLOUT, "rollouts", "Update a rollout",
            lambda store, rollout_id, patch: store.update_rollout(rollout_id, **set_fields(patch)),
            body=wire.RolloutPatch, result=Rollout,
            # A status change is not safe to repeat (a re-queue twice, a terminal status onto itself).
            idempotent=lambda rollout_id, patch: patch.status is UNSET,
        ),
        Operation(
            "cancel_rollout", "POST", f"{_ROLLOUT}/cancel", "rollouts", "Cancel",
            lambda store, rollout_id: store.cancel_rollout(rollout_id),
            result=Rollout,
        ),
        # -------------------------------------------------------------------------------------------- attempts
        Operation(
            "start_attempt", "POST", f"{_ROLLOUT}/attempts", "attempts", "Start an attempt",
            lambda store, rollout_id, body: store.start_attempt(rollout_id, worker_id=body.worker_id),
            body=wire.StartAttemptBody, result=AttemptedRollout, status_code=201, idempotent=False,
        ),
        Operation(
            "query_attempts", "POST", f"{_ROLLOUT}/attempts/query", "attempts", "Query attempts",
            lambda store, rollout_id, query: store.query_attempts(rollout_id, **set_fields(query)),
            body=wire.AttemptQuery, result=PaginatedResult[Attempt],
        ),
        Operation(
            "get_attempt", "GET", _ATTEMPT, "attempts", "Get an attempt",
            lambda store, rollout_id, attempt_id: store.get_attempt(rollout_id, attempt_id),
            result=Attempt, batch=wire.GetAttemptOp,
        ),
        Operation(
            "update_attempt", "PATCH", _ATTEMPT, "attempts", "Update an attempt",
            lambda store, rollout_id, attempt_id, patch: store.update_attempt(
                rollout_id, attempt_id, **set_fields(patch)
            ),
            body=wire.AttemptPatch, result=Attempt, batch=wire.UpdateAttemptOp, batch_body="patch",
            # "latest" may name a newer attempt by the time a retry arrives; a named attempt is safe to update twice.
            idempotent=lambda rollout_id, attempt_id, patch: attempt_id != LATEST,
        ),
        Operation(
            "get_many_span_sequence_ids", "POST", f"{_ATTEMPT}/sequence-ids", "spans", "Reserve span sequence ids",
            lambda store, rollout_id, attempt_id, body: store.get_many_span_sequence_ids(
                rollout_id, attempt_id, body.count
            ),
            body=wire.SequenceIdsBody, result=list[int], idempotent=False,
        ),
        # -------------------------------------------------------------------------------------------- spans
        Operation(
            "add_span", "POST", "/spans", "spans", "Add a span (idempotent)",
            lambda store, span: store.add_span(span),
            body=Span, result=Span, batch=wire.AddSpanOp, batch_body="span",
        ),
        Operation(
            "add_many_spans", "POST", "/spans/batch", "spans", "Add spans atomically",
            lambda store, body: store.add_many_spans(body.spans),
            body=wire.SpanBatch, result=list[Span],
        ),
        Operation(
            "query_spans", "POST", f"{_ROLLOUT}/spans/query", "spans", "Query spans",
            lambda store, rollout_id, query: store.query_spans(rollout_id, **set_fields(query)),
            body=wire.SpanQuery, result=PaginatedResult[Span],
        ),
        # -------------------------------------------------------------------------------------------- resources
        Operation(
            "add_resources", "POST", "/resources", "resources", "Add a resources set",
            lambda store, body: store.add_resources(body.resources),
            body=wire.ResourcesBody, result=ResourcesUpdate, status_code=201, idempotent=False,
        ),
        Operation(
            "query_resources", "POST", "/resources/query", "resources", "Query resources versions",
            lambda store, query: store.query_resources(**set_fields(query)),
            body=wire.ResourcesQuery, result=PaginatedResult[ResourcesUpdate],
        ),
        Operation(
            "get_latest_resources", "GET", "/resources/latest", "resources", "The latest resources (or null)",
            lambda store: store.get_latest_resources(),
            result=ResourcesUpdate | None,
        ),
        Operation(
            "get_resources", "GET", "/resources/id/{resources_id:path}", "resources", "Get a resources set",
            lambda store, resources_id, version: store.get_resources(resources_id, version),
            result=ResourcesUpdate, query={"version": _Version},
        ),
        Operation(
            "update_resources", "PUT", "/resources/id/{resources_id:path}", "resources", "Store a new version",
            lambda store, resources_id, body: store.update_resources(resources_id, body.resources),
            body=wire.ResourcesBody, result=ResourcesUpdate, idempotent=False,
        ),
        # -------------------------------------------------------------------------------------------- workers
        Operation(
            "update_worker", "PUT", "/workers/id/{worker_id:path}", "workers", "Record a worker heartbeat",
            lambda store, worker_id, heartbeat: store.update_worker(worker_id, **set_fields(heartbeat)),
            body=wire.WorkerHeartbeat, result=Worker, batch=wire.UpdateWorkerOp, batch_body="heartbeat",
        ),
        Operation(
            "get_worker", "GET", "/workers/id/{worker_id:path}", "workers", "Get a worker",
            lambda store, worker_id: store.get_worker(worker_id),
            result=Worker,
        ),
        Operation(
            "query_workers", "POST", "/workers/query", "workers", "Query workers",
            lambda store, query: store.query_workers(**set_fields(query)),
            body=wire.WorkerQuery, result=PaginatedResult[Worker],
        ),
        # -------------------------------------------------------------------------------------------- store
        Operation(
            "statistics", "GET", "/statistics", "store", "Counts by collection and status",
            lambda store: store.statistics(),
            result=StoreStatistics,
        ),
        Operation(
            "capabilities", "GET", "/capabilities", "store", "What the backend can do",
            _capabilities, result=StoreCapabilities, timed=False,
        ),
    )
}  # fmt: skip
