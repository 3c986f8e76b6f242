"""A toy agent and tasks for the skeletons' tests, named by path (``toy_agent.py:agent``) so that runner processes
(the ``cs`` strategy, ``agl train``) can import them too."""

from __future__ import annotations

import os
from pathlib import Path

from agl_kernel.emit import emit_message

TASKS = [
    {"a": 1, "b": 2, "sum": 3},
    {"a": 3, "b": 4, "sum": 7},
    {"a": 5, "b": 6, "sum": 11},
    {"a": 7, "b": 8, "sum": 0},
]
"""Four tasks; the last one's expected sum is wrong, so the agent gets 0 for it: a mean reward of 0.75."""


def tasks() -> list[dict]:
    return list(TASKS)


def agent(task: dict, resources: dict) -> float:
    """Adds the numbers (saying so in a message span); reward 1 when the task's expected sum agrees."""
    emit_message(f"adding {task['a']} and {task['b']}")
    return 1.0 if task["a"] + task["b"] == task["sum"] else 0.0


async def async_agent(task: dict, resources: dict) -> float:
    return agent(task, resources)


def failing_agent(task: dict, resources: dict) -> float:
    raise ValueError(f"cannot add {task}")


def flaky_agent(task: dict, resources: dict) -> float:
    """Fails the first time it sees a task (a marker file per task under $TOY_AGENT_DIR), then succeeds."""
    marker = Path(os.environ["TOY_AGENT_DIR"]) / f"seen-{task['a']}-{task['b']}"
    if not marker.exists():
        marker.touch()
        raise RuntimeError("first try fails")
    return 1.0


AGENT = f"{Path(__file__).resolve()}:agent"
"""The agent by path, as another process imports it."""
