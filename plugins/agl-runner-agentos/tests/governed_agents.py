"""Agents and a policy for the tests, named by path (``governed_agents.py:sync_agent``) so that runner processes
(the ``cs`` strategy, ``agl runner``) import them too. Each task asks for one SQL statement; the agent runs it
through a governed tool and gets 1 when the tool ran, 0.5 when the policy denied it (it saw the denial)."""

from __future__ import annotations

from pathlib import Path

from agl_kernel.emit import emit_reward
from agl_runner_agentos import PolicyViolationError, deny_sql, governed_tool

POLICY_YAML = """\
version: "1.0"
name: sql-safety
rules:
  - name: no-destructive-sql
    condition: {field: query, operator: matches, value: "(?i)\\\\b(DROP|DELETE)\\\\b"}
    action: deny
    priority: 100
    severity: critical
    message: Destructive SQL is not allowed
  - name: no-updates
    condition: {field: query, operator: matches, value: "(?i)\\\\bUPDATE\\\\b"}
    action: block
    priority: 50
    severity: low
    message: Updates need a human
"""

TASKS = [{"query": "SELECT 1"}, {"query": "DROP TABLE users"}, {"query": "update t set a = 1"}]
SEEN: list[str] = []


def write_policy(folder: Path) -> Path:
    path = folder / "policy.yaml"
    path.write_text(POLICY_YAML)
    return path


def python_policy():  # the `module:attr` form: a function returning a policy
    return deny_sql(["DROP"], severity="medium")


@governed_tool
def run_sql(query: str) -> str:
    SEEN.append(query)
    return f"ran {query}"


@governed_tool
async def arun_sql(query: str) -> str:
    SEEN.append(query)
    return f"ran {query}"


def sync_agent(task: dict, resources: dict) -> float:
    try:
        run_sql(task["query"])
    except PolicyViolationError:
        return 0.5
    return 1.0


async def async_agent(task: dict, resources: dict) -> float:
    try:
        await arun_sql(query=task["query"])
    except PolicyViolationError:
        return 0.5
    return 1.0


def emitting_agent(task: dict, resources: dict) -> None:
    """Emits its reward itself and returns nothing."""
    try:
        run_sql(task["query"])
        emit_reward(1.0)
    except PolicyViolationError:
        emit_reward(0.25)


def swallowing_agent(task: dict, resources: dict) -> float:
    """Catches every error, the denial included, and claims success."""
    try:
        run_sql(task["query"])
    except Exception:
        pass
    return 1.0
