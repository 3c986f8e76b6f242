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
from agl_kernel.server._wire import (
    API_PREFIX,
    AddSpanOp,
    BatchBody,
    DequeueRolloutOp,
    EnqueueRolloutOp,
    GetRolloutOp,
    OpResult,
    UpdateAttemptOp,
    UpdateWorkerOp,
    set_fields,
)

__all__ = ["batch_route"]


def batch_route(ctx: ServerContext, responses: dict[int, Any]) -> HTTPRouteHandler:
    """The batch route handler, bound to ``ctx``."""
    store = ctx.store
    timed = ctx.metrics.timed

    async def run_op(op: Any) -> OpResult:
        try:
            if isinstance(op, AddSpanOp):
                result: Any = await timed("add_span", store.add_span(op.span))
            elif isinstance(op, UpdateAttemptOp):
                patch = set_fields(op.patch)
                result = await timed("update_attempt", store.update_attempt(op.rollout_id, op.attempt_id, **patch))
            elif isinstance(op, DequeueRolloutOp):
                result = await timed("dequeue_rollout", store.dequeue_rollout(worker_id=op.worker_id))
            elif isinstance(op, EnqueueRolloutOp):
                r = op.request
                result = await timed(
                    "enqueue_rollout",
                    store.enqueue_rollout(
                        r.input, mode=r.mode, resources_id=r.resources_id, config=r.config, metadata=r.metadata
                    ),
                )
            elif isinstance(op, UpdateWorkerOp):
                result = await timed("update_worker", store.update_worker(op.worker_id, **set_fields(op.heartbeat)))
            elif isinstance(op, GetRolloutOp):
                result = await timed("get_rollout", store.get_rollout(op.rollout_id))
            else:
                result = await timed("get_attempt", store.get_attempt(op.rollout_id, op.attempt_id))
        except Exception as exc:  # noqa: BLE001 - each call of a batch answers for itself
            status, body = error_body(exc)
            if status >= 500 and body.error_id is not None:
                logger.error(
                    "error id %s: batch call %s failed: %s", body.error_id, type(op).__name__, exc, exc_info=exc
                )
            return OpResult(error=body)
        return OpResult(result=result)

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
        ops = data.ops
        results: list[Any] = [None] * len(ops)
        spans = [(i, op) for i, op in enumerate(ops) if isinstance(op, AddSpanOp)]

        async def add_spans() -> None:
            # One store call for all the spans (one transaction in a durable store); if it fails, each span on
            # its own, so that only the faulty ones fail.
            try:
                stored = await timed("add_many_spans", store.add_many_spans([op.span for _, op in spans]))
            except Exception as exc:  # noqa: BLE001 - retried span by span below
                if error_body(exc)[0] >= 500:
                    logger.warning("a batch of %d spans failed (%s); adding them one by one", len(spans), exc)
                for i, op in spans:
                    results[i] = await run_op(op)
                return
            for (i, _), span in zip(spans, stored, strict=True):
                results[i] = OpResult(result=span)

        async def run_at(i: int, op: Any) -> None:
            results[i] = await run_op(op)

        calls = [run_at(i, op) for i, op in enumerate(ops) if not isinstance(op, AddSpanOp)]
        if spans:
            calls.append(add_spans())
        if len(calls) == 1:
            await calls[0]
        else:  # concurrently, as separate requests would run: a durable store commits their writes together
            await asyncio.gather(*calls)
        return results

    return batch
