"""Smoke use of the plugin installed alone with the kernel (tools/check_plugins_alone.py runs it from an empty
directory with a fresh venv's python, no pytest): the `agentos` runner made by name with a policy file, one allowed
and one denied tool call through a real Agent-OS kernel on the memory store, their decision spans and rewards."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from agl_kernel.plugins import create_component
from agl_kernel.rewards import final_reward
from agl_runner_agentos import DECISION_SPAN, AgentOSRunner, PolicyViolationError, governed_tool

POLICY = """\
name: smoke
rules:
  - name: no-drop
    condition: {field: query, operator: matches, value: "(?i)\\\\bDROP\\\\b"}
    action: deny
    severity: critical
"""


def check(condition: object, what: str) -> None:
    if not condition:
        sys.exit(f"smoke failed: {what}")


@governed_tool
def run_sql(query: str) -> str:
    return "ok"


def agent(task: dict, resources: dict) -> float:
    try:
        run_sql(task["query"])
    except PolicyViolationError:
        return 0.0
    return 1.0


async def main(folder: Path) -> None:
    policy = folder / "policy.yaml"
    policy.write_text(POLICY)
    runner = create_component("runners", "agentos", worker_id="smoke", options={"policy": str(policy)})
    check(isinstance(runner, AgentOSRunner), f"the `agentos` runner is a {type(runner).__name__}")
    store = create_component("stores", "memory")
    rewards = []
    for query in ("SELECT 1", "DROP TABLE t"):
        rollout = await store.enqueue_rollout({"query": query})
        attempted = await store.dequeue_rollout(worker_id="smoke")
        status = await runner.run_one(store, agent, attempted)
        check(status.value == "succeeded", f"{query}: the attempt {status.value}")
        spans = (await store.query_spans(rollout.rollout_id)).items
        check([s for s in spans if s.name == DECISION_SPAN], f"{query}: no decision span")
        reward = final_reward(spans)
        rewards.append(None if reward is None else reward.value)
    check(rewards == [6.0, -100.0], f"rewards {rewards}, expected [6.0, -100.0]")
    runner.close()
    await store.close()
    print("agl-runner-agentos smoke: ok (an allowed and a denied tool call through Agent-OS, rewards 6 and -100)")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(main(Path(folder)))
