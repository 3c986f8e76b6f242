"""The record of a proxied call: an LLM span on the attempt, written when the call ends (well or not), with the
backend, the latency and the rollout's resources besides what :mod:`agl_kernel.llm_calls` maps."""

import contextlib
import logging
import time
from typing import Any

from agl_kernel import semconv
from agl_kernel.errors import NotFoundError
from agl_kernel.llm_calls import span_name
from agl_kernel.models import Rollout, Span, SpanStatus
from agl_kernel.proxy._openai import ProxyError
from agl_kernel.store.base import LightningStore
from agl_kernel.tracer import exception_attributes, new_span_id, new_trace_id

log = logging.getLogger(__name__)


async def attempt_resources(store: LightningStore, rollout_id: str, attempt_id: str) -> tuple[Rollout, dict[str, Any]]:
    """The attempt's rollout and the attributes of the resources it runs with; a 404 when there is no such
    attempt."""
    try:
        rollout = await store.get_rollout(rollout_id)
        await store.get_attempt(rollout_id, attempt_id)
    except NotFoundError as exc:
        raise ProxyError(404, f"unknown rollout or attempt: {exc}", "not_found_error") from exc
    if rollout.resources_id is None:
        return rollout, {}
    attributes: dict[str, Any] = {semconv.RESOURCES_ID: rollout.resources_id}
    with contextlib.suppress(NotFoundError):  # the update is gone: the id alone
        attributes[semconv.RESOURCES_VERSION] = (await store.get_resources(rollout.resources_id)).version
    return rollout, attributes


class CallRecord:
    """The span of one call, started now with the request's ``attributes``."""

    def __init__(
        self, store: LightningStore, operation: str, rollout_id: str, attempt_id: str, attributes: dict[str, Any]
    ) -> None:
        self.store, self.operation, self.rollout_id, self.attempt_id = store, operation, rollout_id, attempt_id
        self.attributes = attributes
        self.start, self.started = time.time(), time.monotonic()

    async def succeeded(self, attributes: dict[str, Any]) -> None:
        await self._write({**self.attributes, **attributes}, SpanStatus(status_code="OK"))

    async def failed(self, error: BaseException) -> BaseException:
        """Record the call as failed with ``error``; returns ``error`` (to be raised)."""
        attributes = {**self.attributes, **exception_attributes(error), semconv.ERROR_TYPE: type(error).__qualname__}
        await self._write(attributes, SpanStatus(status_code="ERROR", description=str(error)))
        return error

    async def _write(self, attributes: dict[str, Any], status: SpanStatus) -> None:
        attributes[semconv.LLM_LATENCY_SECONDS] = time.monotonic() - self.started
        span = Span(
            rollout_id=self.rollout_id,
            attempt_id=self.attempt_id,
            trace_id=new_trace_id(),
            span_id=new_span_id(),
            name=span_name(self.operation, attributes),
            kind="CLIENT",
            status=status,
            attributes=attributes,
            start_time=self.start,
            end_time=time.time(),
        )
        try:
            await self.store.add_span(span)
        except Exception:  # the agent's call has its answer; losing the record is logged, not raised at it
            log.exception("the LLM proxy could not store the span of a call of %s/%s", self.rollout_id, self.attempt_id)
