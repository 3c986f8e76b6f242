"""The store contract as REST routes under ``/api/v1`` (see ``docs/server.md`` for the table).

Handlers are closures over one :class:`ServerContext`, so a request costs no dependency lookups. Waiting routes
(dequeue, wait) are long polls: the store's own push-based waiting runs in slices of ``poll_slice`` seconds, so
a request ends promptly when the server shuts down or the client goes away; a rollout dequeued for a client that
has gone is put back in the queue.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, get, patch, post, put
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody, Parameter

from agl_kernel.models import (
    Attempt,
    AttemptedRollout,
    EnqueueRequest,
    PaginatedResult,
    ResourcesUpdate,
    Rollout,
    RolloutStatus,
    Span,
    StoreCapabilities,
    StoreStatistics,
    Worker,
)
from agl_kernel.server._batch import batch_route
from agl_kernel.server._context import ServerContext, long_poll, user_id
from agl_kernel.server._errors import logger
from agl_kernel.server._wire import (
    API_PREFIX,
    INT64_MAX,
    INT64_MIN,
    AttemptPatch,
    AttemptQuery,
    DeleteBody,
    DeletedCount,
    DequeueBody,
    DequeueManyBody,
    EnqueueManyBody,
    ErrorBody,
    ResourcesBody,
    ResourcesQuery,
    RolloutPatch,
    RolloutQuery,
    SequenceIdsBody,
    SpanBatch,
    SpanQuery,
    StartAttemptBody,
    StartRolloutBody,
    WaitBody,
    WorkerHeartbeat,
    WorkerQuery,
    set_fields,
)

__all__ = ["ERRORS", "ServerContext", "store_routes"]

ERRORS = {
    400: ResponseSpec(
        ErrorBody, generate_examples=False, description="Malformed or invalid request (the message names the field)"
    ),
    401: ResponseSpec(
        ErrorBody, generate_examples=False, description="The server has a token and the request lacks the right one"
    ),
    404: ResponseSpec(
        ErrorBody, generate_examples=False, description="An id names nothing in the store (the message names it)"
    ),
    409: ResponseSpec(ErrorBody, generate_examples=False, description="The status change is not allowed"),
    500: ResponseSpec(
        ErrorBody, generate_examples=False, description="Unexpected server error; error_id finds it in the server log"
    ),
    503: ResponseSpec(
        ErrorBody, generate_examples=False, description="The server is shutting down or its store is closed"
    ),
}
"""The error answers every route may give, for the OpenAPI document."""


def store_routes(ctx: ServerContext) -> list[HTTPRouteHandler]:
    """Route handlers for every store method, bound to ``ctx``."""
    store = ctx.store
    timed = ctx.metrics.timed
    prefix = API_PREFIX
    tags_rollouts, tags_attempts, tags_spans = ["rollouts"], ["attempts"], ["spans"]
    tags_resources, tags_workers, tags_store = ["resources"], ["workers"], ["store"]

    async def give_back(taken: Any) -> None:
        items = taken if isinstance(taken, list) else [taken]
        for attempted in items:
            logger.warning(
                "rollout %s was dequeued for a client that had disconnected; putting it back in the queue",
                attempted.rollout_id,
            )
            try:
                await store.update_rollout(attempted.rollout_id, status=RolloutStatus.REQUEUING)
            except Exception:  # noqa: BLE001 - best effort; the watchdog covers what this misses
                logger.exception("could not put rollout %s back in the queue", attempted.rollout_id)

    # -------------------------------------------------------------------------------------------- rollouts

    @post(f"{prefix}/rollouts", status_code=201, tags=tags_rollouts, summary="Enqueue a rollout", responses=ERRORS)
    async def enqueue_rollout(data: JSONBody[EnqueueRequest]) -> Rollout:
        return await timed(
            "enqueue_rollout",
            store.enqueue_rollout(
                data.input, mode=data.mode, resources_id=data.resources_id, config=data.config, metadata=data.metadata
            ),
        )

    @post(
        f"{prefix}/rollouts/batch",
        status_code=201,
        tags=tags_rollouts,
        summary="Enqueue rollouts atomically",
        responses=ERRORS,
    )
    async def enqueue_many_rollouts(data: JSONBody[EnqueueManyBody]) -> list[Rollout]:
        return await timed("enqueue_many_rollouts", store.enqueue_many_rollouts(data.requests))

    @post(
        f"{prefix}/rollouts/start",
        status_code=201,
        tags=tags_rollouts,
        summary="Start a rollout (skip the queue)",
        responses=ERRORS,
    )
    async def start_rollout(data: JSONBody[StartRolloutBody]) -> AttemptedRollout:
        return await timed(
            "start_rollout",
            store.start_rollout(
                data.input,
                mode=data.mode,
                resources_id=data.resources_id,
                config=data.config,
                metadata=data.metadata,
                worker_id=data.worker_id,
            ),
        )

    @post(
        f"{prefix}/rollouts/dequeue",
        status_code=200,
        tags=tags_rollouts,
        summary="Dequeue one rollout (long poll)",
        responses=ERRORS,
    )
    async def dequeue_rollout(data: JSONBody[DequeueBody], request: Request) -> AttemptedRollout | None:
        if data.timeout <= 0:
            return await timed("dequeue_rollout", store.dequeue_rollout(worker_id=data.worker_id))
        return await long_poll(
            ctx,
            request,
            "dequeue_rollout",
            lambda seconds: store.dequeue_rollout(worker_id=data.worker_id, timeout=seconds),
            lambda got: got is not None,
            data.timeout,
            give_back,
        )

    @post(
        f"{prefix}/rollouts/dequeue-many",
        status_code=200,
        tags=tags_rollouts,
        summary="Dequeue up to `limit`",
        responses=ERRORS,
    )
    async def dequeue_many_rollouts(data: JSONBody[DequeueManyBody], request: Request) -> list[AttemptedRollout]:
        return await long_poll(
            ctx,
            request,
            "dequeue_many_rollouts",
            lambda seconds: store.dequeue_many_rollouts(limit=data.limit, worker_id=data.worker_id, timeout=seconds),
            bool,
            data.timeout,
            give_back,
        )

    @post(f"{prefix}/rollouts/query", status_code=200, tags=tags_rollouts, summary="Query rollouts", responses=ERRORS)
    async def query_rollouts(data: JSONBody[RolloutQuery]) -> PaginatedResult[Rollout]:
        return await timed(
            "query_rollouts",
            store.query_rollouts(
                status_in=data.status_in,
                rollout_id_in=data.rollout_id_in,
                mode_in=data.mode_in,
                sort_by=data.sort_by,
                sort_order=data.sort_order,  # type: ignore[arg-type] # the store checks it
                limit=data.limit,
                offset=data.offset,
            ),
        )

    @post(
        f"{prefix}/rollouts/wait",
        status_code=200,
        tags=tags_rollouts,
        summary="Wait for rollouts to end (long poll)",
        responses=ERRORS,
    )
    async def wait_for_rollouts(data: JSONBody[WaitBody], request: Request) -> list[Rollout]:
        wanted = len(data.rollout_ids)
        return await long_poll(
            ctx,
            request,
            "wait_for_rollouts",
            lambda seconds: store.wait_for_rollouts(data.rollout_ids, timeout=seconds),
            lambda ended: len(ended) >= wanted,
            data.timeout,
        )

    @post(
        f"{prefix}/rollouts/delete",
        status_code=200,
        tags=tags_rollouts,
        summary="Delete ended rollouts",
        responses=ERRORS,
    )
    async def delete_rollouts(data: JSONBody[DeleteBody]) -> DeletedCount:
        deleted = await timed(
            "delete_rollouts", store.delete_rollouts(data.rollout_ids, ended_before=data.ended_before)
        )
        return DeletedCount(deleted=deleted)

    @get(f"{prefix}/rollouts/{{rollout_id:str}}", tags=tags_rollouts, summary="Get a rollout", responses=ERRORS)
    async def get_rollout(rollout_id: FromPath[str]) -> Rollout:
        return await timed("get_rollout", store.get_rollout(rollout_id))

    @patch(f"{prefix}/rollouts/{{rollout_id:str}}", tags=tags_rollouts, summary="Update a rollout", responses=ERRORS)
    async def update_rollout(rollout_id: FromPath[str], data: JSONBody[RolloutPatch]) -> Rollout:
        return await timed("update_rollout", store.update_rollout(rollout_id, **set_fields(data)))

    @post(
        f"{prefix}/rollouts/{{rollout_id:str}}/cancel",
        status_code=200,
        tags=tags_rollouts,
        summary="Cancel",
        responses=ERRORS,
    )
    async def cancel_rollout(rollout_id: FromPath[str]) -> Rollout:
        return await timed("cancel_rollout", store.cancel_rollout(rollout_id))

    # -------------------------------------------------------------------------------------------- attempts

    @post(
        f"{prefix}/rollouts/{{rollout_id:str}}/attempts",
        status_code=201,
        tags=tags_attempts,
        summary="Start an attempt",
        responses=ERRORS,
    )
    async def start_attempt(rollout_id: FromPath[str], data: JSONBody[StartAttemptBody]) -> AttemptedRollout:
        return await timed("start_attempt", store.start_attempt(rollout_id, worker_id=data.worker_id))

    @post(
        f"{prefix}/rollouts/{{rollout_id:str}}/attempts/query",
        status_code=200,
        tags=tags_attempts,
        summary="Query attempts",
        responses=ERRORS,
    )
    async def query_attempts(rollout_id: FromPath[str], data: JSONBody[AttemptQuery]) -> PaginatedResult[Attempt]:
        return await timed(
            "query_attempts",
            store.query_attempts(
                rollout_id,
                status_in=data.status_in,
                sort_by=data.sort_by,
                sort_order=data.sort_order,  # type: ignore[arg-type]
                limit=data.limit,
                offset=data.offset,
            ),
        )

    @get(
        f"{prefix}/rollouts/{{rollout_id:str}}/attempts/{{attempt_id:str}}",
        tags=tags_attempts,
        summary="Get an attempt",
        responses=ERRORS,
    )
    async def get_attempt(rollout_id: FromPath[str], attempt_id: FromPath[str]) -> Attempt:
        return await timed("get_attempt", store.get_attempt(rollout_id, attempt_id))

    @patch(
        f"{prefix}/rollouts/{{rollout_id:str}}/attempts/{{attempt_id:str}}",
        tags=tags_attempts,
        summary="Update an attempt",
        responses=ERRORS,
    )
    async def update_attempt(
        rollout_id: FromPath[str], attempt_id: FromPath[str], data: JSONBody[AttemptPatch]
    ) -> Attempt:
        return await timed("update_attempt", store.update_attempt(rollout_id, attempt_id, **set_fields(data)))

    @post(
        f"{prefix}/rollouts/{{rollout_id:str}}/attempts/{{attempt_id:str}}/sequence-ids",
        status_code=200,
        tags=tags_spans,
        summary="Reserve span sequence ids",
        responses=ERRORS,
    )
    async def get_many_span_sequence_ids(
        rollout_id: FromPath[str], attempt_id: FromPath[str], data: JSONBody[SequenceIdsBody]
    ) -> list[int]:
        return await timed(
            "get_many_span_sequence_ids", store.get_many_span_sequence_ids(rollout_id, attempt_id, data.count)
        )

    # -------------------------------------------------------------------------------------------- spans

    @post(f"{prefix}/spans", status_code=200, tags=tags_spans, summary="Add a span (idempotent)", responses=ERRORS)
    async def add_span(data: JSONBody[Span]) -> Span:
        return await timed("add_span", store.add_span(data))

    @post(f"{prefix}/spans/batch", status_code=200, tags=tags_spans, summary="Add spans atomically", responses=ERRORS)
    async def add_many_spans(data: JSONBody[SpanBatch]) -> list[Span]:
        return await timed("add_many_spans", store.add_many_spans(data.spans))

    @post(
        f"{prefix}/rollouts/{{rollout_id:str}}/spans/query",
        status_code=200,
        tags=tags_spans,
        summary="Query spans",
        responses=ERRORS,
    )
    async def query_spans(rollout_id: FromPath[str], data: JSONBody[SpanQuery]) -> PaginatedResult[Span]:
        return await timed(
            "query_spans",
            store.query_spans(
                rollout_id,
                data.attempt_id,
                name=data.name,
                sort_by=data.sort_by,
                sort_order=data.sort_order,  # type: ignore[arg-type]
                limit=data.limit,
                offset=data.offset,
            ),
        )

    # -------------------------------------------------------------------------------------------- resources

    @post(f"{prefix}/resources", status_code=201, tags=tags_resources, summary="Add a resources set", responses=ERRORS)
    async def add_resources(data: JSONBody[ResourcesBody]) -> ResourcesUpdate:
        return await timed("add_resources", store.add_resources(data.resources))

    @post(
        f"{prefix}/resources/query",
        status_code=200,
        tags=tags_resources,
        summary="Query resources versions",
        responses=ERRORS,
    )
    async def query_resources(data: JSONBody[ResourcesQuery]) -> PaginatedResult[ResourcesUpdate]:
        return await timed(
            "query_resources",
            store.query_resources(
                resources_id=data.resources_id,
                sort_by=data.sort_by,
                sort_order=data.sort_order,  # type: ignore[arg-type]
                limit=data.limit,
                offset=data.offset,
            ),
        )

    @get(f"{prefix}/resources/latest", tags=tags_resources, summary="The latest resources (or null)", responses=ERRORS)
    async def get_latest_resources() -> ResourcesUpdate | None:
        return await timed("get_latest_resources", store.get_latest_resources())

    @get(
        f"{prefix}/resources/id/{{resources_id:path}}",
        tags=tags_resources,
        summary="Get a resources set",
        responses=ERRORS,
    )
    async def get_resources(
        resources_id: FromPath[str],
        version: Annotated[int | None, Parameter(ge=INT64_MIN, le=INT64_MAX, description="Default: the latest")] = None,
    ) -> ResourcesUpdate:
        return await timed("get_resources", store.get_resources(user_id(resources_id), version))

    @put(
        f"{prefix}/resources/id/{{resources_id:path}}",
        tags=tags_resources,
        summary="Store a new version",
        responses=ERRORS,
    )
    async def update_resources(resources_id: FromPath[str], data: JSONBody[ResourcesBody]) -> ResourcesUpdate:
        return await timed("update_resources", store.update_resources(user_id(resources_id), data.resources))

    # -------------------------------------------------------------------------------------------- workers

    @put(
        f"{prefix}/workers/id/{{worker_id:path}}",
        tags=tags_workers,
        summary="Record a worker heartbeat",
        responses=ERRORS,
    )
    async def update_worker(worker_id: FromPath[str], data: JSONBody[WorkerHeartbeat]) -> Worker:
        return await timed("update_worker", store.update_worker(user_id(worker_id), **set_fields(data)))

    @get(f"{prefix}/workers/id/{{worker_id:path}}", tags=tags_workers, summary="Get a worker", responses=ERRORS)
    async def get_worker(worker_id: FromPath[str]) -> Worker:
        return await timed("get_worker", store.get_worker(user_id(worker_id)))

    @post(f"{prefix}/workers/query", status_code=200, tags=tags_workers, summary="Query workers", responses=ERRORS)
    async def query_workers(data: JSONBody[WorkerQuery]) -> PaginatedResult[Worker]:
        return await timed(
            "query_workers",
            store.query_workers(
                status_in=data.status_in,
                sort_by=data.sort_by,
                sort_order=data.sort_order,  # type: ignore[arg-type]
                limit=data.limit,
                offset=data.offset,
            ),
        )

    # -------------------------------------------------------------------------------------------- store

    @get(f"{prefix}/statistics", tags=tags_store, summary="Counts by collection and status", responses=ERRORS)
    async def statistics() -> StoreStatistics:
        return await timed("statistics", store.statistics())

    @get(f"{prefix}/capabilities", tags=tags_store, summary="What the backend can do", responses=ERRORS)
    async def capabilities() -> StoreCapabilities:
        return store.capabilities

    return [
        enqueue_rollout, enqueue_many_rollouts, start_rollout, dequeue_rollout, dequeue_many_rollouts,
        query_rollouts, wait_for_rollouts, delete_rollouts, get_rollout, update_rollout, cancel_rollout,
        start_attempt, query_attempts, get_attempt, update_attempt, get_many_span_sequence_ids,
        add_span, add_many_spans, query_spans, batch_route(ctx, ERRORS),
        add_resources, query_resources, get_latest_resources, get_resources, update_resources,
        update_worker, get_worker, query_workers, statistics, capabilities,
    ]  # fmt: skip
