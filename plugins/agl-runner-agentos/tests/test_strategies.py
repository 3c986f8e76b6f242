"""The runner by name through the Trainer under ``shm`` and ``cs``, and as `agl runner --runner agentos` joining a
store server; what users read afterwards: `agl rollouts why` and `agl agentos audit`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import governed_agents
import pytest

from agl_kernel.client import LightningStoreClient
from agl_kernel.rewards import final_reward
from agl_kernel.store.defaults import make_store
from agl_kernel.trainer import Trainer
from agl_runner_agentos import AUDIT_SPAN, DECISION_SPAN

pytest.importorskip("agl_store_sqlite", reason="these tests keep the run in a SQLite store: install agl-store-sqlite")

AGENTS = Path(__file__).with_name("governed_agents.py")
PYTHON = [sys.executable, "-m", "agl_kernel.cli"]


def agl(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "250"}
    return subprocess.run([*PYTHON, *args], capture_output=True, text=True, timeout=120, env=env, **kwargs)


async def spans_by_task(db: Path) -> dict[str, list]:
    store = make_store("sqlite", path=db)
    async with store:
        rollouts = (await store.query_rollouts()).items
        return {r.input["query"]: (await store.query_spans(r.rollout_id, "latest")).items for r in rollouts}


@pytest.mark.parametrize("strategy", ["shm", "cs"])
def test_the_trainer_runs_the_agentos_runner_by_name(tmp_path: Path, strategy: str) -> None:
    policy = governed_agents.write_policy(tmp_path)
    db = tmp_path / "agl.db"
    trainer = Trainer(
        store_path=db,
        runner="agentos",
        strategy=strategy,
        n_runners=2,
        options={"runner": {"policy": str(policy), "wait_seconds": 0.1}, "algorithm": {"max_attempts": 1}},
        progress=False,
    )
    with trainer:
        report = trainer.dev(f"{AGENTS}:sync_agent", governed_agents.TASKS)
        run_id = trainer.run_id
    assert report.by_status == {"succeeded": 3}
    spans = asyncio.run(spans_by_task(db))
    assert final_reward(spans["SELECT 1"]).value == 6.0  # type: ignore[union-attr]
    assert final_reward(spans["DROP TABLE users"]).value == -99.5  # type: ignore[union-attr]
    for task_spans in spans.values():
        assert [s for s in task_spans if s.name == DECISION_SPAN] and [s for s in task_spans if s.name == AUDIT_SPAN]

    out = tmp_path / "audit.jsonl"
    result = agl("agentos", "audit", "--run", str(run_id), "-o", str(out), "--path", str(db))
    assert result.returncode == 0 and "audit record(s)" in result.stdout, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    decisions = [r for r in records if r["kind"] == "decision"]
    assert sorted(r["allowed"] for r in decisions) == [False, False, True]
    assert {r["rule"] for r in decisions if not r["allowed"]} == {"no-destructive-sql", "no-updates"}
    assert any(r["kind"] == "audit" and r["policy_verdict"] == "blocked" for r in records)


def test_a_violation_that_ends_the_attempt_shows_in_rollouts_why(tmp_path: Path) -> None:
    policy = governed_agents.write_policy(tmp_path)
    db = tmp_path / "agl.db"
    trainer = Trainer(
        store_path=db,
        runner="agentos",
        options={"runner": {"policy": str(policy), "fail_on_violation": True}, "algorithm": {"max_attempts": 1}},
        progress=False,
    )
    with trainer:
        report = trainer.dev(governed_agents.async_agent, governed_agents.TASKS[:2])
    assert report.by_status == {"succeeded": 1, "failed": 1}

    async def failed_rollout() -> str:
        async with make_store("sqlite", path=db) as store:
            [rollout] = (await store.query_rollouts(status_in=["failed"])).items
            return rollout.rollout_id

    result = agl("rollouts", "why", asyncio.run(failed_rollout()), "--path", str(db), "--json")
    assert result.returncode == 0, result.stderr
    exception = json.loads(result.stdout)["exception"]
    assert exception["type"] == "PolicyViolationError"
    assert "rule 'no-destructive-sql' (critical): Destructive SQL is not allowed" in exception["message"]


def test_agl_runner_with_the_agentos_runner_joins_a_store_server(tmp_path: Path) -> None:
    policy = governed_agents.write_policy(tmp_path)
    port_probe = __import__("socket").socket()
    port_probe.bind(("127.0.0.1", 0))
    port = port_probe.getsockname()[1]
    port_probe.close()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [*PYTHON, "store", "serve", "--path", str(tmp_path / "agl.db"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    runner = None
    try:

        async def enqueue() -> list[str]:
            async with LightningStoreClient(url) as client:
                for _ in range(300):  # the server starts: its /health answers within a few seconds
                    try:
                        await client.statistics()
                        break
                    except Exception:
                        await asyncio.sleep(0.1)
                return [(await client.enqueue_rollout(task)).rollout_id for task in governed_agents.TASKS[:2]]

        rollout_ids = asyncio.run(enqueue())
        runner = subprocess.Popen(
            [
                *PYTHON,
                "runner",
                "--store",
                url,
                "--agent",
                f"{AGENTS}:sync_agent",
                "--runner",
                "agentos",
                "--set",
                f"runner.policy={policy}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

        async def finished() -> dict[str, list]:
            async with LightningStoreClient(url) as client:
                ended = await client.wait_for_rollouts(rollout_ids, timeout=90)
                assert [r.status for r in ended] == ["succeeded", "succeeded"]
                return {rid: (await client.query_spans(rid)).items for rid in rollout_ids}

        spans = asyncio.run(finished())
        allowed, dropped = (spans[rid] for rid in rollout_ids)
        assert final_reward(allowed).value == 6.0 and final_reward(dropped).value == -99.5  # type: ignore[union-attr]
        [decision] = [s for s in dropped if s.name == DECISION_SPAN]
        assert decision.attributes["agentos.rule"] == "no-destructive-sql"
        assert [s for s in dropped if s.name == AUDIT_SPAN]
    finally:
        if runner is not None:
            runner.send_signal(signal.SIGTERM)
            _, rest = runner.communicate(timeout=30)
            assert runner.returncode == 0 and "Traceback" not in rest, rest
        server.send_signal(signal.SIGTERM)
        server.wait(30)
