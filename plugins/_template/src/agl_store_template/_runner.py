"""A skeleton runner: takes rollouts from the store, runs the agent on each, and reports how each attempt ended.

A runner plugin exists to run agents differently: in a sandbox, under a governance layer, in another language
behind a socket. This one shows the whole contract in the open, so that you can change any step of it:

1. register the worker (``store.update_worker``), then ``store.dequeue_rollout`` in a loop until ``stop`` is set
   (the call waits for work, pushed by the store: never sleep-poll);
2. per rollout: the ``agl_on_rollout_start`` hook, the attempt to ``running``, the agent inside the tracer's
   ``trace_context`` with heartbeats while it runs, its reward (or its exception) as a span, the attempt to
   ``succeeded`` or ``failed``, the ``agl_on_rollout_end`` hook.

The store's watchdog ends attempts that run past their rollout's ``timeout_seconds`` on its own; this runner does
not stop such an agent (a sync agent runs in a thread that cannot be interrupted). The kernel's runner
(``agl_kernel.runner.LitAgentRunner``) also stops agents on timeout and cancellation; a runner that only wants to
change the loop can compose it and call its ``run_one(store, agent, attempted)`` for each rollout instead.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import attrs

from agl_kernel import AttemptedRollout, AttemptStatus, InvalidStatusTransitionError, LightningStore, Resource
from agl_kernel.agent import LitAgent, as_lit_agent
from agl_kernel.emit import emit_exception, emit_reward
from agl_kernel.plugins import call_hook
from agl_kernel.runner import Runner
from agl_kernel.tracer import NoOpTracer, Tracer

__all__ = ["TemplateRunner", "TemplateRunnerOptions"]

log = logging.getLogger(__name__)


@attrs.define(kw_only=True)
class TemplateRunnerOptions:
    """Options of the template runner (``template`` in ``agl.runners``)."""

    wait_seconds: float = attrs.field(default=0.5, validator=attrs.validators.gt(0))
    """How long one dequeue call waits for work before the runner checks whether it should stop."""
    heartbeat_interval: float = attrs.field(default=5.0, validator=attrs.validators.gt(0))
    """Seconds between heartbeats while the agent runs (the store marks a silent attempt unresponsive)."""


class TemplateRunner(Runner):
    """Runs the agent on rollouts from the store, one at a time, with heartbeats while it runs.

    Registered as ``template`` in the ``agl.runners`` entry-point group. The agent is a LitAgent or a function
    ``f(task, resources)`` returning a reward. The kernel makes the runner with ``worker_id`` and ``tracer`` plus
    the fields of :class:`TemplateRunnerOptions`.
    """

    Options = TemplateRunnerOptions

    def __init__(
        self,
        *,
        worker_id: str | None = None,
        tracer: Tracer | None = None,
        wait_seconds: float = 0.5,
        heartbeat_interval: float = 5.0,
    ) -> None:
        self.worker_id = worker_id or f"template-{uuid.uuid4().hex[:8]}"
        self.tracer = tracer or NoOpTracer()
        self.wait_seconds = wait_seconds
        self.heartbeat_interval = heartbeat_interval
        self.finished = 0

    async def run(self, store: LightningStore, agent: Any, *, stop: asyncio.Event) -> int:
        lit_agent = as_lit_agent(agent)
        await store.update_worker(self.worker_id, heartbeat_stats={"runner": "template"})
        while not stop.is_set():
            attempted = await store.dequeue_rollout(worker_id=self.worker_id, timeout=self.wait_seconds)
            if attempted is not None:
                await self.run_one(store, lit_agent, attempted)
        return self.finished

    async def run_one(self, store: LightningStore, agent: LitAgent, attempted: AttemptedRollout) -> AttemptStatus:
        """Run the agent on one dequeued rollout and mark its attempt; returns the attempt's final status."""
        rollout_id, attempt_id = attempted.rollout_id, attempted.attempt.attempt_id
        call_hook("agl_on_rollout_start", rollout=attempted, attempt=attempted.attempt, runner=self)
        status = AttemptStatus.FAILED
        try:
            await store.update_attempt(rollout_id, attempt_id, status=AttemptStatus.RUNNING)
            status = await self._execute(store, agent, attempted)
            await store.update_attempt(rollout_id, attempt_id, status=status)
            self.finished += 1
        except InvalidStatusTransitionError:
            # The store ended the attempt meanwhile (its watchdog timed it out, or the rollout was cancelled): its
            # status stands, and a newer attempt, if any, belongs to another runner.
            status = (await store.get_attempt(rollout_id, attempt_id)).status
        except asyncio.CancelledError:  # the runner is stopped mid-rollout: fail the attempt, so it is retried now
            await self._abandon(store, rollout_id, attempt_id)
            raise
        finally:
            call_hook("agl_on_rollout_end", rollout=attempted, attempt=attempted.attempt, runner=self, status=status)
        return status

    async def _execute(self, store: LightningStore, agent: LitAgent, attempted: AttemptedRollout) -> AttemptStatus:
        """The agent's run inside the tracer's context; what it returned or raised becomes a span."""
        resources: dict[str, Resource] = {}
        if attempted.resources_id is not None:
            resources = dict((await store.get_resources(attempted.resources_id)).resources)
        method = agent.rollout_for(attempted)
        beating = asyncio.create_task(self._heartbeats(store, attempted))
        ids = {"rollout_id": attempted.rollout_id, "attempt_id": attempted.attempt.attempt_id}
        try:
            with self.tracer.trace_context(**ids, store=store):
                try:
                    if agent.is_async(attempted):
                        result = await method(attempted.input, resources, attempted)
                    else:  # in a thread (with this context, so the agent's emitters find the trace)
                        result = await asyncio.to_thread(method, attempted.input, resources, attempted)
                    if isinstance(result, (bool, int, float)):
                        emit_reward(float(result))
                    elif result is not None:
                        raise TypeError(f"the template runner's agents return a reward or None, not {result!r}")
                except Exception as exc:  # the agent's failure is the rollout's outcome, not the runner's
                    emit_exception(exc)
                    return AttemptStatus.FAILED
            return AttemptStatus.SUCCEEDED
        finally:
            beating.cancel()
            await self.tracer.flush()  # every span stored before the attempt is marked done

    async def _heartbeats(self, store: LightningStore, attempted: AttemptedRollout) -> None:
        interval = self.heartbeat_interval
        if attempted.config.unresponsive_seconds is not None:  # beat well within the store's patience
            interval = min(interval, attempted.config.unresponsive_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                await store.update_attempt(attempted.rollout_id, attempted.attempt.attempt_id)
            except Exception as exc:  # a missed heartbeat must not stop the agent; the next one may get through
                log.warning("heartbeat of %s failed: %s", attempted.attempt.attempt_id, exc)

    async def _abandon(self, store: LightningStore, rollout_id: str, attempt_id: str) -> None:
        try:
            await asyncio.wait_for(store.update_attempt(rollout_id, attempt_id, status=AttemptStatus.FAILED), 1.0)
        except (Exception, asyncio.CancelledError) as exc:  # the watchdog's unresponsive check is the fallback
            log.warning("could not mark attempt %s failed on the way out: %r", attempt_id, exc)
