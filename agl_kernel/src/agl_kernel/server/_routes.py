"""The store contract as REST routes under ``/api/v1`` (see ``docs/server.md`` for the table), one route handler
per row of :data:`~agl_kernel.server._operations.OPERATIONS`.

Handlers are closures over one :class:`ServerContext`, so a request costs no dependency lookups. Waiting routes
(dequeue, wait) are long polls: the store's own push-based waiting runs in slices of ``poll_slice`` seconds, so
a request ends promptly when the server shuts down or the client goes away; a rollout dequeued for a client that
has gone is put back in the queue.
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Annotated, Any, get_args

from litestar import Request, route
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody, Parameter

from agl_kernel.models import RolloutStatus
from agl_kernel.server._batch import batch_route
from agl_kernel.server._context import ServerContext, long_poll, user_id
from agl_kernel.server._errors import logger
from agl_kernel.server._operations import OPERATIONS, Operation
from agl_kernel.server._wire import API_PREFIX, ErrorBody
from agl_kernel.store.base import LightningStore

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

_KEYWORD, _REQUIRED = inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.empty


def store_routes(ctx: ServerContext) -> list[HTTPRouteHandler]:
    """Route handlers for every store method, bound to ``ctx``, and the batch route (after the spans')."""
    handlers = [operation_route(ctx, operation) for operation in OPERATIONS.values()]
    handlers.insert(list(OPERATIONS).index("query_spans") + 1, batch_route(ctx, ERRORS))
    return handlers


def operation_route(ctx: ServerContext, op: Operation) -> HTTPRouteHandler:
    """The route handler of ``op``: its arguments from the path, the query and the body, then ``op.call``."""
    store, timed = ctx.store, ctx.metrics.timed
    slashed = {name for name in op.path_parameters if f"{{{name}:path}}" in op.path}  # arrive with their "/"
    requeue = partial(_requeue, store) if op.requeue else None

    async def handler(**kwargs: Any) -> Any:
        arguments: list[Any] = [
            user_id(kwargs[name]) if name in slashed else kwargs[name] for name in op.path_parameters
        ]
        arguments += [kwargs[name] for name in op.query]
        if op.body is not None:
            arguments.append(kwargs["data"])
        if op.done is None:
            return await timed(op.name, op.call(store, *arguments)) if op.timed else await op.call(store, *arguments)
        body, done = arguments[-1], op.done
        return await long_poll(
            ctx,
            kwargs["request"],
            op.name,
            lambda seconds: op.call(store, *arguments, seconds),
            lambda got: done(body, got),
            body.timeout,
            requeue,
        )

    return route(
        API_PREFIX + op.path,
        http_method=op.method,
        status_code=op.status_code,
        tags=[op.tag],
        summary=op.summary,
        responses=ERRORS,
    )(_signed(handler, op))


def _signed(handler: Any, op: Operation) -> Any:
    """``handler`` with the signature that litestar reads what it takes from: path parameters, query, body."""
    annotations: dict[str, Any] = {name: FromPath[str] for name in op.path_parameters}
    annotations.update((name, _query_parameter(kind)) for name, kind in op.query.items())
    if op.body is not None:
        annotations["data"] = JSONBody[op.body]  # type: ignore[misc,name-defined] # a type known at run time
    if op.done is not None:
        annotations["request"] = Request
    handler.__signature__ = inspect.Signature(
        [inspect.Parameter(name, _KEYWORD, default=None if name in op.query else _REQUIRED) for name in annotations],
        return_annotation=op.result,
    )
    handler.__annotations__ = {**annotations, "return": op.result}
    handler.__name__ = handler.__qualname__ = op.name
    return handler


def _query_parameter(annotation: Any) -> Any:
    """``Annotated[type, msgspec.Meta(...)]`` as a litestar query parameter with the same limits and description."""
    kind, meta = get_args(annotation)
    return Annotated[kind, Parameter(ge=meta.ge, le=meta.le, description=meta.description)]


async def _requeue(store: LightningStore, taken: Any) -> None:
    """Put back in the queue what a long poll dequeued for a client that has gone."""
    for attempted in taken if isinstance(taken, list) else [taken]:
        logger.warning(
            "rollout %s was dequeued for a client that had disconnected; putting it back in the queue",
            attempted.rollout_id,
        )
        try:
            await store.update_rollout(attempted.rollout_id, status=RolloutStatus.REQUEUING)
        except Exception:
            logger.exception("could not put rollout %s back in the queue", attempted.rollout_id)
