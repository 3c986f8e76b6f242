"""The runner with a real Agent-OS kernel and a real store: allowed and denied tool calls from sync and async
agents, fail_on_violation both ways, the decision and audit spans of each attempt, and the reward."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import governed_agents
import pytest

from agl_kernel import EnqueueRequest, RolloutConfig
from agl_kernel.plugins import create_component
from agl_kernel.rewards import final_reward, read_rewards
from agl_runner_agentos import (
    AUDIT_SPAN,
    DECISION_SPAN,
    AgentOSRunner,
    Governance,
    PolicyViolationError,
    ToolCallError,
    audit_records,
    deny_sql,
    governed_tool,
)
from agl_runner_agentos._governance import one_entry_per_call

NO_RETRY = RolloutConfig(max_attempts=1)


async def serve(runner: AgentOSRunner, agent: Any, tasks: list[dict]) -> list[dict[str, Any]]:
    """Run every task once through ``runner`` on a memory store; per task its attempt, spans and audit records."""
    store = create_component("stores", "memory")
    rollouts = await store.enqueue_many_rollouts([EnqueueRequest(input=t, config=NO_RETRY) for t in tasks])
    stop = asyncio.Event()
    running = asyncio.create_task(runner.run(store, agent, stop=stop))
    await store.wait_for_rollouts([r.rollout_id for r in rollouts], timeout=60)
    stop.set()
    await running
    results = []
    for rollout in rollouts:
        attempt = await store.get_attempt(rollout.rollout_id)
        spans = (await store.query_spans(rollout.rollout_id)).items
        records = await audit_records(store, rollout_ids=[rollout.rollout_id])
        results.append({"attempt": attempt, "spans": spans, "records": records})
    await store.close()
    return results


def make_runner(tmp_path: Path, **options: Any) -> AgentOSRunner:
    policy = governed_agents.write_policy(tmp_path)
    runner = create_component("runners", "agentos", worker_id="w", options={"policy": str(policy), **options})
    assert isinstance(runner, AgentOSRunner)
    return runner


def named(spans: list, name: str) -> list:
    return [s for s in spans if s.name == name]


@pytest.mark.parametrize("agent", ["sync_agent", "async_agent"])
def test_allowed_calls_run_and_denied_ones_are_blocked_with_a_clear_denial(tmp_path: Path, agent: str) -> None:
    governed_agents.SEEN.clear()
    runner = make_runner(tmp_path)
    allowed, dropped, updated = asyncio.run(serve(runner, getattr(governed_agents, agent), governed_agents.TASKS))
    assert governed_agents.SEEN == ["SELECT 1"]  # the denied statements never reached the tool
    assert [r["attempt"].status for r in (allowed, dropped, updated)] == ["succeeded"] * 3
    tool = "run_sql" if agent == "sync_agent" else "arun_sql"

    [decision] = named(allowed["spans"], DECISION_SPAN)
    assert decision.attributes["agentos.allowed"] is True and decision.attributes["agentos.tool"] == tool
    assert json.loads(decision.attributes["agentos.arguments"]) == {"query": "SELECT 1"}

    [decision] = named(dropped["spans"], DECISION_SPAN)
    attributes = decision.attributes
    assert attributes["agentos.allowed"] is False and attributes["agentos.action"] == "deny"
    assert attributes["agentos.rule"] == "no-destructive-sql" and attributes["agentos.severity"] == "critical"
    assert json.loads(attributes["agentos.arguments"]) == {"query": "DROP TABLE users"}
    [decision] = named(updated["spans"], DECISION_SPAN)
    assert decision.attributes["agentos.rule"] == "no-updates" and decision.attributes["agentos.action"] == "block"
    # each attempt's spans are that attempt's, under the trace the runner opened for it
    for result in (allowed, dropped, updated):
        attempt_id = result["attempt"].attempt_id
        assert {s.attempt_id for s in result["spans"]} == {attempt_id}


def test_rewards_combine_the_task_reward_with_penalties_and_the_clean_bonus(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    allowed, dropped, updated = asyncio.run(serve(runner, governed_agents.sync_agent, governed_agents.TASKS))
    # defaults: critical -100, low -1, clean bonus +5; the agent's own reward: 1 when it ran, 0.5 when denied
    assert final_reward(allowed["spans"]).values == {"total": 6.0, "task": 1.0, "policy": 5.0}  # type: ignore[union-attr]
    assert final_reward(dropped["spans"]).value == 0.5 - 100  # type: ignore[union-attr]
    assert final_reward(updated["spans"]).value == 0.5 - 1  # type: ignore[union-attr]
    [decision] = named(dropped["spans"], DECISION_SPAN)
    [penalty] = [r for r in read_rewards(dropped["spans"]) if r.step_span_id is not None]
    assert penalty.value == -100.0 and penalty.step_span_id == decision.span_id  # no LLM call: the decision is the step


def test_the_reward_options_change_the_arithmetic(tmp_path: Path) -> None:
    reward = {"critical": -2.0, "low": -0.25, "clean_bonus": 0.0, "min_reward": -1.0, "per_step": False}
    runner = make_runner(tmp_path, reward=reward)
    allowed, dropped, updated = asyncio.run(serve(runner, governed_agents.async_agent, governed_agents.TASKS))
    assert [final_reward(r["spans"]).value for r in (allowed, dropped, updated)] == [1.0, -1.0, 0.25]  # type: ignore[union-attr]
    assert not [r for r in read_rewards(dropped["spans"]) if r.step_span_id is not None]


def test_a_reward_the_agent_emitted_itself_is_combined_too(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    allowed, dropped, _ = asyncio.run(serve(runner, governed_agents.emitting_agent, governed_agents.TASKS))
    assert final_reward(allowed["spans"]).value == 1.0 + 5  # type: ignore[union-attr]
    assert final_reward(dropped["spans"]).value == 0.25 - 100  # type: ignore[union-attr]


def test_the_reward_can_be_left_as_the_agent_gave_it(tmp_path: Path) -> None:
    runner = make_runner(tmp_path, reward={"enabled": False})
    _, dropped, _ = asyncio.run(serve(runner, governed_agents.sync_agent, governed_agents.TASKS))
    assert final_reward(dropped["spans"]).value == 0.5  # type: ignore[union-attr]


@pytest.mark.parametrize("agent", ["sync_agent", "async_agent", "swallowing_agent"])
def test_fail_on_violation_ends_the_attempt_with_the_rule_in_its_error(tmp_path: Path, agent: str) -> None:
    runner = make_runner(tmp_path, fail_on_violation=True)
    allowed, dropped, _ = asyncio.run(serve(runner, getattr(governed_agents, agent), governed_agents.TASKS))
    assert allowed["attempt"].status == "succeeded"
    assert dropped["attempt"].status == "failed"  # even when the agent swallowed the denial
    [error] = named(dropped["spans"], "agl.exception")
    assert error.attributes["exception.type"] == "PolicyViolationError"
    message = error.attributes["exception.message"]
    assert "rule 'no-destructive-sql' (critical): Destructive SQL is not allowed" in message
    assert named(dropped["spans"], DECISION_SPAN) and named(dropped["spans"], AUDIT_SPAN)


def test_without_fail_on_violation_the_same_attempt_succeeds(tmp_path: Path) -> None:
    runner = make_runner(tmp_path, fail_on_violation=False)
    _, dropped, _ = asyncio.run(serve(runner, governed_agents.swallowing_agent, governed_agents.TASKS))
    assert dropped["attempt"].status == "succeeded" and not named(dropped["spans"], "agl.exception")


def test_the_flight_recorder_is_imported_as_spans_of_each_attempt(tmp_path: Path) -> None:
    runner = make_runner(tmp_path, audit_path=str(tmp_path / "audit.db"))
    allowed, dropped, _ = asyncio.run(serve(runner, governed_agents.sync_agent, governed_agents.TASKS))
    for result, verdict in ((allowed, "allowed"), (dropped, "blocked")):
        attempt = result["attempt"]
        audits = named(result["spans"], AUDIT_SPAN)
        assert audits and {s.attempt_id for s in audits} == {attempt.attempt_id}
        agent_ids = {s.attributes["agentos.audit.agent_id"] for s in audits}
        assert agent_ids == {f"{attempt.rollout_id}:{attempt.attempt_id}"}
        entry = next(s for s in audits if s.attributes["agentos.audit.tool_name"] == "run_sql")
        assert entry.attributes["agentos.audit.policy_verdict"] == verdict
        assert entry.attributes["agentos.audit.entry_hash"]  # the recorder's tamper-evident chain comes along
        # one audit span per decision (Agent-OS's never-settled 'pending' row merged into its outcome's), linked to
        # the decision by the call id, with the time the call started
        [decision] = named(result["spans"], DECISION_SPAN)
        assert [s.attributes["agentos.audit.call_id"] for s in audits] == [decision.attributes["agentos.call_id"]]
        assert entry.attributes["agentos.audit.pending_timestamp"] <= entry.attributes["agentos.audit.timestamp"]
        kinds = [r["kind"] for r in result["records"]]
        assert kinds.count("decision") == 1 and kinds.count("audit") == len(audits) == 1
        assert {r["attempt_id"] for r in result["records"]} == {attempt.attempt_id}
    assert (tmp_path / "audit.db").exists()  # a kept audit file stays


def test_a_governed_tool_outside_any_governed_attempt_just_runs() -> None:
    governed_agents.SEEN.clear()
    assert governed_agents.run_sql("DROP TABLE t") == "ran DROP TABLE t"
    assert asyncio.run(governed_agents.arun_sql(query="DROP TABLE t")) == "ran DROP TABLE t"


def test_a_tool_that_fails_raises_in_the_agent(tmp_path: Path) -> None:
    @governed_tool
    def broken(query: str) -> str:
        raise RuntimeError("disk full")

    def agent(task: dict, resources: dict) -> float:
        broken(task["query"])
        return 1.0

    runner = make_runner(tmp_path)
    [result] = asyncio.run(serve(runner, agent, governed_agents.TASKS[:1]))
    assert result["attempt"].status == "failed"
    [error] = named(result["spans"], "agl.exception")
    assert error.attributes["exception.message"] == "tool 'broken' failed: RuntimeError: disk full"


def test_the_flight_recorder_gives_one_entry_per_call_with_its_outcome(tmp_path: Path) -> None:
    """Agent-OS writes a 'pending' row at each syscall and the outcome in a second row; the import merges them."""
    governance = Governance(str(governed_agents.write_policy(tmp_path)))

    def tool(query: str) -> list:
        if query == "SELECT broken":
            raise RuntimeError("no such table")
        return [[1]]

    try:
        with governance.session("r:a") as session:
            assert session.call("run_sql", tool, {"query": "SELECT 1"}) == [[1]]
            with pytest.raises(PolicyViolationError):
                session.call("run_sql", tool, {"query": "DROP TABLE x"})
            with pytest.raises(ToolCallError):
                session.call("run_sql", tool, {"query": "SELECT broken"})
            assert session.call("run_sql", tool, {"query": "SELECT 1"}) == [[1]]  # the same call again
        raw = len(governance.recorder.query_logs(agent_id="r:a", limit=100))
        entries = governance.audit_rows("r:a")
    finally:
        governance.close()
    assert raw == 8  # two rows a call, as Agent-OS 3.7 writes them
    assert [e["policy_verdict"] for e in entries] == ["allowed", "blocked", "error", "allowed"]
    assert [e["call_id"] for e in entries] == [d.call_id for d in session.decisions]
    assert len({e["call_id"] for e in entries}) == 4
    for entry in entries:
        assert entry["tool_name"] == "run_sql" and entry["pending_timestamp"] <= entry["timestamp"]
        assert entry["pending_trace_id"] != entry["trace_id"] and entry["pending_entry_hash"]


def test_a_pending_row_without_an_outcome_is_kept() -> None:
    pending = {
        "id": 1,
        "trace_id": "t1",
        "timestamp": "2026-01-01T00:00:00",
        "tool_name": "syscall_SYS_EXEC",
        "tool_args": json.dumps({"tool": "run_sql", "args": {"query": "SELECT 1"}, "call_id": "c1"}),
        "policy_verdict": "pending",
    }
    other = {"id": 2, "trace_id": "t2", "tool_name": "kernel_panic", "tool_args": None, "policy_verdict": "error"}
    assert one_entry_per_call([pending, other]) == [{**pending, "call_id": "c1"}, other]


def test_agent_os_own_log_lines_for_a_governed_call_go_to_debug(caplog: pytest.LogCaptureFixture) -> None:
    """Agent-OS logs a denied call up to CRITICAL ("[SIGKILL] Agent ... TERMINATED", though the agent goes on);
    the decision is a span already, so under governance those lines are DEBUG: hidden at the default level."""
    governance = Governance(deny_sql())
    try:
        with governance.session("r:a") as session:
            caplog.clear()
            with caplog.at_level(logging.WARNING), pytest.raises(PolicyViolationError):
                session.call("run_sql", lambda query: [], {"query": "DROP TABLE x"})
            kernel = [r for r in caplog.records if r.name.startswith(("agent_control_plane", "FlightRecorder"))]
            assert not [r for r in kernel if r.levelno > logging.DEBUG]
            caplog.clear()
            with caplog.at_level(logging.DEBUG, logger="agent_control_plane"), pytest.raises(PolicyViolationError):
                session.call("run_sql", lambda query: [], {"query": "DROP TABLE y"})
            shown = [r for r in caplog.records if r.name == "agent_control_plane.signals"]
            assert shown and {r.levelname for r in shown} == {"DEBUG"} and "TERMINATED" in shown[-1].getMessage()
    finally:
        governance.close()
    # outside a governed call Agent-OS's lines pass as they are
    logger = logging.getLogger("agent_control_plane.signals")
    record = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, "not governed", (), None)
    assert logger.filter(record) and record.levelname == "WARNING"
