"""The runner interface, and the kernel's simple runner (entry point ``simple`` in ``agl.runners``).

A runner takes rollouts from the store, runs the agent on each, and reports the outcome. The simple runner runs
one rollout at a time in the current event loop; richer runners (timeouts that cancel the agent, worker
processes, heartbeats with system stats) are plugins.
"""

from __future__ import annotations

import abc
import asyncio
import inspect
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Optional, Union

from agl_kernel import semconv
from agl_kernel.models import AttemptedRollout, AttemptStatus, ResourcesUpdate, Span, SpanStatus
from agl_kernel.store.base import LightningStore
from agl_kernel.tracer import NoOpTracer, Tracer

__all__ = ["Agent", "Runner", "SimpleRunner"]

Agent = Callable[[Any, Optional[ResourcesUpdate]], Union[Optional[float], Awaitable[Optional[float]]]]
"""A plain agent: ``agent(task_input, resources)`` returns a reward (or ``None``), sync or async."""


class Runner(abc.ABC):
    @abc.abstractmethod
    async def run(self, store: LightningStore, agent: Agent, *, stop: asyncio.Event) -> int:
        """Run rollouts from ``store`` until ``stop`` is set; returns how many this runner finished."""


def _span(attempted: AttemptedRollout, name: str, attributes: dict[str, Any], status: SpanStatus) -> Span:
    now = time.time()
    return Span(
        rollout_id=attempted.rollout_id,
        attempt_id=attempted.attempt.attempt_id,
        trace_id=uuid.uuid4().hex,
        span_id=uuid.uuid4().hex[:16],
        name=name,
        attributes=attributes,
        status=status,
        start_time=now,
        end_time=now,
    )


class SimpleRunner(Runner):
    """Dequeues (waiting on the store's push notification, not polling), runs the agent, stores its reward as an
    ``agl.reward`` span, and marks the attempt succeeded — or failed, with the exception stored as a span."""

    def __init__(self, *, worker_id: Optional[str] = None, tracer: Optional[Tracer] = None, wait_seconds: float = 1.0):
        self.worker_id = worker_id or f"worker-{uuid.uuid4().hex[:8]}"
        self.tracer = tracer or NoOpTracer()
        self.wait_seconds = wait_seconds

    async def run(self, store: LightningStore, agent: Agent, *, stop: asyncio.Event) -> int:
        finished = 0
        while not stop.is_set():
            attempted = await store.dequeue_rollout(worker_id=self.worker_id, timeout=self.wait_seconds)
            if attempted is not None:
                await self.run_one(store, agent, attempted)
                finished += 1
        return finished

    async def run_one(self, store: LightningStore, agent: Agent, attempted: AttemptedRollout) -> AttemptStatus:
        resources = await store.get_resources(attempted.resources_id) if attempted.resources_id else None
        attempt_id = attempted.attempt.attempt_id
        await store.update_attempt(attempted.rollout_id, attempt_id, status=AttemptStatus.RUNNING)
        try:
            with self.tracer.trace_context(rollout_id=attempted.rollout_id, attempt_id=attempt_id, store=store):
                reward = agent(attempted.input, resources)
                if inspect.isawaitable(reward):
                    reward = await reward
            await self.tracer.flush()
            if reward is not None:
                attributes = {semconv.REWARD_VALUE: float(reward)}
                await store.add_span(_span(attempted, semconv.REWARD_SPAN, attributes, SpanStatus(status_code="OK")))
            status = AttemptStatus.SUCCEEDED
        except Exception as exc:  # the agent's failure is the rollout's outcome, not the runner's
            attributes = {
                semconv.EXCEPTION_TYPE: type(exc).__qualname__,
                semconv.EXCEPTION_MESSAGE: str(exc),
                semconv.EXCEPTION_STACKTRACE: traceback.format_exc(),
            }
            error = SpanStatus(status_code="ERROR", description=str(exc))
            await store.add_span(_span(attempted, semconv.EXCEPTION_SPAN, attributes, error))
            status = AttemptStatus.FAILED
        await store.update_attempt(attempted.rollout_id, attempt_id, status=status)
        return status
