"""``AgentOSRunner`` (``agentos`` in ``agl.runners``): the kernel's runner, with every attempt governed by Agent-OS.

It is :class:`agl_kernel.runner.LitAgentRunner` (dequeue, heartbeats, timeouts, cancellation, outages, hooks)
around a wrapped agent. For each attempt the wrapper opens a governed session (an Agent-OS agent context), runs
the agent in it, and then, still inside the attempt's trace:

- imports the flight recorder's entries for the attempt as ``agentos.audit`` spans;
- with ``fail_on_violation``, fails the attempt when any tool call was denied (a ``PolicyViolationError`` naming
  the rule, which ``agl rollouts why`` shows), even if the agent caught the error;
- otherwise combines the agent's reward with the policy's penalties (:class:`PolicyReward`) and emits them.

Each decision was recorded as an ``agentos.decision`` span when the tool was called.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Literal

import attrs

from agl_kernel.agent import LitAgent, as_lit_agent
from agl_kernel.emit import emit_reward
from agl_kernel.models import AttemptedRollout, AttemptStatus
from agl_kernel.rewards import final_reward
from agl_kernel.runner import LitAgentRunner
from agl_kernel.store import LightningStore
from agl_kernel.tracer import Tracer, current_scope
from agl_runner_agentos._governance import Governance, GovernedSession, PolicyViolationError
from agl_runner_agentos._policy import PolicyFileError, load_policy
from agl_runner_agentos._reward import PolicyReward, PolicyRewardOptions

__all__ = ["AUDIT_SPAN", "AgentOSRunner", "AgentOSRunnerOptions"]

log = logging.getLogger(__name__)

AUDIT_SPAN = "agentos.audit"
"""A span holding one entry of Agent-OS's flight recorder (its audit log), under the attempt it belongs to."""


def _check_policy(instance: Any, attribute: Any, value: Any) -> None:
    if isinstance(value, str):
        try:
            load_policy(value)
        except PolicyFileError as exc:
            raise ValueError(f"'{attribute.name}' {exc}") from None


_LitAgentRunnerOptions: Any = LitAgentRunner.Options  # the kernel runner's options (heartbeat_interval, ...)


@attrs.define(kw_only=True)
class AgentOSRunnerOptions(_LitAgentRunnerOptions):
    """Options of the Agent-OS runner (``agentos``): the kernel runner's, and the governance's."""

    policy: str | None = attrs.field(default=None, validator=_check_policy)
    """The policy: an Agent-OS policy file (.yaml/.yml/.json) or module:attr naming one in Python (unset: every
    tool call is allowed, and audited)."""
    fail_on_violation: bool = False
    """End the attempt (failed) when a tool call is denied, instead of blocking the call and going on."""
    default_severity: Literal["critical", "high", "medium", "low"] = "high"
    """Severity of a denied call whose rule names none."""
    import_audit: bool = True
    """Store the flight recorder's entries for each attempt as agentos.audit spans."""
    audit_path: str | None = None
    """The flight recorder's SQLite file (unset: a temporary file per runner, removed when it stops)."""
    reward: PolicyRewardOptions = attrs.field(factory=PolicyRewardOptions)
    """How denied calls change the attempt's reward (PolicyReward)."""


class AgentOSRunner(LitAgentRunner):
    """Runs any agent (sync or async) with its tools governed by an Agent-OS kernel.

    Tools marked with :func:`~agl_runner_agentos.governed_tool` go through the kernel's policy check: a denied call
    raises :class:`~agl_runner_agentos.PolicyViolationError` in the agent (or ends the attempt with
    ``fail_on_violation``); every decision and every audit entry is a span of the attempt; the attempt's reward is
    combined with the penalties (:class:`~agl_runner_agentos.PolicyReward`). ``policy`` may also be a policy
    object in Python (under ``shm``; under ``cs`` give ``module:attr`` so that runner processes can load it).
    """

    Options = AgentOSRunnerOptions  # type: ignore[assignment]  # a subclass of the kernel runner's options

    def __init__(
        self,
        *,
        policy: Any = None,
        fail_on_violation: bool = False,
        default_severity: str = "high",
        import_audit: bool = True,
        audit_path: str | None = None,
        reward: PolicyReward | PolicyRewardOptions | None = None,
        worker_id: str | None = None,
        tracer: Tracer | None = None,
        **runner_options: Any,
    ) -> None:
        super().__init__(worker_id=worker_id, tracer=tracer, **runner_options)
        self.governance = Governance(policy, default_severity=default_severity, audit_path=audit_path)
        self.fail_on_violation = fail_on_violation
        self.import_audit = import_audit
        self.reward = reward if isinstance(reward, PolicyReward) else PolicyReward(reward)

    @classmethod
    def from_options(cls, options: AgentOSRunnerOptions, **objects: Any) -> AgentOSRunner:
        fields = {f.name: getattr(options, f.name) for f in attrs.fields(type(options))}
        fields["reward"] = PolicyReward(fields["reward"])
        return cls(**fields, **objects)

    async def run(self, store: LightningStore, agent: Any, *, stop: asyncio.Event) -> int:
        try:
            return await super().run(store, agent, stop=stop)
        finally:
            self.close()

    def close(self) -> None:
        """Shut the kernel down and remove the temporary audit file (the runner's ``run`` does it on its way out)."""
        self.governance.close()

    async def run_one(self, store: LightningStore, agent: Any, attempted: AttemptedRollout) -> AttemptStatus:
        governed = _GovernedAgent(as_lit_agent(agent), self, store, asyncio.get_running_loop())
        return await super().run_one(store, governed, attempted)

    # ------------------------------------------------------------------------------------------ after the agent

    async def _emitted_reward(self, store: LightningStore, attempted: AttemptedRollout) -> float | None:
        """The final reward the agent emitted itself (it returned none)."""
        try:
            await self.tracer.flush()
            spans = (await store.query_spans(attempted.rollout_id, attempted.attempt.attempt_id)).items
        except Exception as exc:  # the reward is then the policy's part alone; say so
            log.warning("could not read the reward agent %s emitted: %s", attempted.rollout_id, exc)
            return None
        reward = final_reward(spans)
        return None if reward is None else reward.value

    def _finish(self, session: GovernedSession, result: Any, error: Exception | None, emitted: float | None) -> Any:
        """What the attempt ends with, once the agent has returned (``result``) or raised (``error``)."""
        if self.import_audit:
            self._import_audit(session)
        denials = session.denials
        if self.fail_on_violation and denials:
            if isinstance(error, PolicyViolationError):
                raise error
            raise PolicyViolationError(denials[0]) from error
        if error is not None:
            raise error
        if not self.reward.enabled or (result is not None and not isinstance(result, (int, float))):
            return result
        task = float(result) if result is not None else emitted
        if task is None and not denials:
            return result  # no reward from the agent and nothing to penalise: nothing to add
        parts = self.reward.combine(task, session.decisions)
        if self.reward.options.per_step:
            for decision, step in zip(session.decisions, session.steps):
                if not decision.allowed:
                    emit_reward(
                        self.reward.penalty(decision.severity),
                        step=step,
                        attributes={
                            "agentos.rule": decision.rule or "",
                            "agentos.severity": decision.severity or "",
                            "agentos.tool": decision.tool,
                            "agentos.penalty": True,
                        },
                    )
        emit_reward(
            {"total": parts.total, "task": parts.task, "policy": parts.policy},
            primary="total",
            attributes={"agentos.violations": len(denials), "agentos.tool_calls": len(session.decisions)},
        )
        return None

    def _import_audit(self, session: GovernedSession) -> None:
        scope = current_scope()
        if scope is None:
            return
        try:
            rows = self.governance.audit_rows(session.agent_id)
        except Exception as exc:  # the audit file is the kernel's; a failure to read it must not fail the attempt
            log.warning("could not read Agent-OS's flight recorder for %s: %s", session.agent_id, exc)
            return
        for row in rows:
            attributes = {f"agentos.audit.{key}": value for key, value in row.items() if value is not None}
            scope.tracer.emit_span(scope, AUDIT_SPAN, attributes)


class _GovernedAgent(LitAgent):
    """The user's agent, run inside a governed session of the runner's kernel."""

    def __init__(
        self, inner: LitAgent, runner: AgentOSRunner, store: LightningStore, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.inner = inner
        self.runner = runner
        self.store = store
        self.loop = loop

    def rollout(self, task: Any, resources: Any, rollout: AttemptedRollout) -> Any:
        return self.rollout_for(rollout)(task, resources, rollout)

    def is_async(self, attempted: AttemptedRollout) -> bool:
        return self.inner.is_async(attempted)

    def _session(self, attempted: AttemptedRollout) -> GovernedSession:
        agent_id = f"{attempted.rollout_id}:{attempted.attempt.attempt_id}"
        return self.runner.governance.session(agent_id, fail_on_violation=self.runner.fail_on_violation)

    def _wants_emitted(self, result: Any, error: Exception | None) -> bool:
        return error is None and result is None and self.runner.reward.enabled

    def rollout_for(self, attempted: AttemptedRollout) -> Callable[..., Any]:
        method = self.inner.rollout_for(attempted)
        runner, store = self.runner, self.store

        if self.inner.is_async(attempted):

            async def run_async(task: Any, resources: Any, rollout: AttemptedRollout) -> Any:
                with self._session(attempted) as session:
                    result, error = None, None
                    try:
                        result = await method(task, resources, rollout)
                    except Exception as exc:  # settled by _finish: re-raised, or replaced by the violation
                        error = exc
                    emitted = None
                    if self._wants_emitted(result, error):
                        emitted = await runner._emitted_reward(store, attempted)
                    return runner._finish(session, result, error, emitted)

            return run_async

        def run_sync(task: Any, resources: Any, rollout: AttemptedRollout) -> Any:
            with self._session(attempted) as session:
                result, error = None, None
                try:
                    result = method(task, resources, rollout)
                except Exception as exc:
                    error = exc
                emitted = None
                if self._wants_emitted(result, error):
                    future = asyncio.run_coroutine_threadsafe(runner._emitted_reward(store, attempted), self.loop)
                    emitted = future.result()
                return runner._finish(session, result, error, emitted)

        return run_sync
