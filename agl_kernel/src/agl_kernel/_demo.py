"""`agl demo`: the whole loop on a toy agent, in one process, in a few seconds.

A baseline algorithm enqueues arithmetic tasks; runners dequeue them and run an agent that answers them (wrong
on purpose now and then) and returns a reward; the rollouts, their attempts and reward spans end up in the store.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any, Optional

from rich.console import Console
from rich.table import Table

from agl_kernel.algorithm import Baseline, BaselineReport
from agl_kernel.models import ResourcesUpdate
from agl_kernel.plugins import create_component
from agl_kernel.strategy import SharedMemoryStrategy


async def arithmetic_agent(task: dict[str, Any], resources: Optional[ResourcesUpdate]) -> float:
    """Adds two numbers, and slips by one a fifth of the time; reward 1 for a right answer."""
    answer = task["a"] + task["b"] + (1 if random.random() < 0.2 else 0)
    return 1.0 if answer == task["a"] + task["b"] else 0.0


def make_tasks(n_tasks: int, seed: int = 0) -> list[dict[str, int]]:
    rng = random.Random(seed)
    return [{"a": rng.randint(0, 99), "b": rng.randint(0, 99)} for _ in range(n_tasks)]


def run_demo(*, store: str = "memory", n_tasks: int = 20, n_workers: int = 4, console: Optional[Console] = None) -> BaselineReport:
    console = console or Console()
    console.print(f"[bold]agl demo[/bold]: {n_tasks} tasks, {n_workers} runners, store [cyan]{store}[/cyan]")

    async def main() -> BaselineReport:
        async with create_component("stores", store) as lightning_store:
            return await SharedMemoryStrategy(n_runners=n_workers).execute_async(
                store=lightning_store, algorithm=Baseline(), agent=arithmetic_agent, train_dataset=make_tasks(n_tasks)
            )

    report = asyncio.run(main())
    table = Table(title="rollouts")
    for column in ("rollout", "task", "status", "reward", "attempts"):
        table.add_column(column)
    for outcome in report.outcomes:
        task = outcome.input
        table.add_row(outcome.rollout_id, f"{task['a']} + {task['b']}", outcome.status, f"{outcome.reward}", str(outcome.attempts))
    console.print(table)
    mean = "n/a" if report.mean_reward is None else f"{report.mean_reward:.2f}"
    console.print(f"by status: {report.by_status}; mean reward: {mean}")
    return report
