"""``POST /api/v1/batch``: several short store calls in one request, run concurrently, one outcome each.

The client sends the calls its tasks make while an earlier request is on the wire together (see
:mod:`agl_kernel._client_batch`), so that many concurrent workers cost few requests; the spans of a batch go to
the store in one ``add_many_spans`` call (one transaction in a durable store).
"""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import post
from litestar.handlers import HTTPRouteHandler
from litestar.params import JSONBody

from agl_kernel.server._context import ServerContext
from agl_kernel.server._errors import error_body, logger
from agl_kernel.server._openapi import CALLS_ANSWER_FOR_THEMSELVES
from agl_kernel.server._operations import OPERATIONS
from agl_kernel.server._wire import API_PREFIX, AddSpanOp, BatchBody, OpResult

__all__ = ["batch_route"]

_BY_STRUCT = {operation.batch: operation for operation in OPERATIONS.values() if operation.batch is not None}
"""The operation of each call a batch may hold."""


def batch_route(ctx: ServerContext, responses: dict[int, Any]) -> HTTPRouteHandler:
    """The batch route handler, bound to ``ctx``."""

    @post(
        f"{API_PREFIX}/batch",
        status_code=200,
        tags=["store"],
        summary="Several short calls in one request",
        description=(
            "Each call answers for itself: a call the store refuses (an unknown id, a value it cannot keep) has its "
            "error in its result, and the request still answers 200; a body that does not decode is refused whole."
        ),
        responses=responses,
        opt={CALLS_ANSWER_FOR_THEMSELVES: True},
    )
    async def batch(data: JSONBody[BatchBody]) -> list[OpResult]:
        results: list[Any] = [None] * len(data.ops)
        spans = [(i, op) for i, op in enumerate(data.ops) if isinstance(op, AddSpanOp)]

        async def run_at(i: int, op: Any) -> None:
            results[i] = await _run(ctx, op)

        calls = [run_at(i, op) for i, op in enumerate(data.ops) if not isinstance(op, AddSpanOp)]
        if spans:
            calls.append(_add_spans(ctx, spans, results))
        if len(calls) == 1:
            await calls[0]
        else:  # concurrently, as separate requests would run: a durable store commits their writes together
            await asyncio.gather(*calls)
        return results

    return batch


async def _run(ctx: ServerContext, op: Any) -> OpResult:
    """One call of a batch: its result, or its error."""
    operation = _BY_STRUCT[type(op)]
    try:
        result = await ctx.metrics.timed(operation.name, operation.call(ctx.store, *operation.from_batch(op)))
    except Exception as exc:
        status, body = error_body(exc)
        if status >= 500 and body.error_id is not None:
            logger.error("error id %s: batch call %s failed: %s", body.error_id, type(op).__name__, exc, exc_info=exc)
        return OpResult(error=body)
    return OpResult(result=result)


async def _add_spans(ctx: ServerContext, spans: list[tuple[int, AddSpanOp]], results: list[Any]) -> None:
    """The spans of a batch in one store call (one transaction in a durable store); if it fails, each span on its
    own, so that only the faulty ones fail."""
    try:
        stored = await ctx.metrics.timed("add_many_spans", ctx.store.add_many_spans([op.span for _, op in spans]))
    except Exception as exc:
        if error_body(exc)[0] >= 500:
            logger.warning("a batch of %d spans failed (%s); adding them one by one", len(spans), exc)
        for i, op in spans:
            results[i] = await _run(ctx, op)
        return
    for (i, _), span in zip(spans, stored, strict=True):
        results[i] = OpResult(result=span)
