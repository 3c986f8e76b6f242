"""`agl demo`: the whole loop on a toy agent, in one process, in a few seconds.

A baseline algorithm enqueues arithmetic tasks; runners dequeue them and run an agent that answers them (wrong
on purpose now and then) and returns a reward; the rollouts, their attempts and reward spans end up in the store.
"""

from __future__ import annotations

import random
from typing import Any

from rich.console import Console
from rich.table import Table

from agl_kernel.algorithm import BaselineReport
from agl_kernel.models import RolloutStatus
from agl_kernel.progress import count_full_rewards, format_outcomes
from agl_kernel.trainer import Trainer


async def arithmetic_agent(task: dict[str, Any], resources: dict[str, Any]) -> float:
    """Adds two numbers, and slips by one a fifth of the time; reward 1 for a right answer."""
    answer = task["a"] + task["b"] + (1 if random.random() < 0.2 else 0)
    return 1.0 if answer == task["a"] + task["b"] else 0.0


def make_tasks(n_tasks: int, seed: int = 0) -> list[dict[str, int]]:
    rng = random.Random(seed)
    return [{"a": rng.randint(0, 99), "b": rng.randint(0, 99)} for _ in range(n_tasks)]


def run_demo(
    *,
    store: str | None = None,
    path: str | None = None,
    n_tasks: int = 20,
    n_workers: int = 4,
    console: Console | None = None,
) -> BaselineReport:
    """Run the toy loop on ``store`` (by name; default: the SQLite file at ``path`` or ``./.agl/agl.db``)."""
    console = console or Console()
    with Trainer(n_runners=n_workers, store=store, store_path=path, console=console) as trainer:
        report: BaselineReport = trainer.dev(arithmetic_agent, make_tasks(n_tasks))
    table = Table(title="rollouts")
    for column in ("rollout", "task", "status", "reward", "attempts"):
        table.add_column(column)
    for outcome in report.outcomes:
        task = outcome.input
        table.add_row(
            outcome.rollout_id, f"{task['a']} + {task['b']}", outcome.status, f"{outcome.reward}", str(outcome.attempts)
        )
    console.print(table)
    # The same words as the progress bar and GRPO's tables (agl_kernel.progress): finished, failed, reward ≥ 1.
    rewards = [o.reward for o in report.outcomes if o.reward is not None]
    summary = format_outcomes(
        finished=report.by_status.get(RolloutStatus.SUCCEEDED.value, 0),
        failed=report.by_status.get(RolloutStatus.FAILED.value, 0),
        full_reward=count_full_rewards(rewards),
        mean_reward=report.mean_reward,
    )
    counted = (RolloutStatus.SUCCEEDED.value, RolloutStatus.FAILED.value)
    others = {status: n for status, n in report.by_status.items() if status not in counted}
    console.print(f"{len(report.outcomes)} rollouts  {summary}" + (f"  other: {others}" if others else ""))
    return report
