"""Progress of a run, as algorithms report it: rollouts done, finished, failed, with reward ≥ 1, mean reward,
throughput.

An algorithm calls ``progress.rollouts(...)`` as rollouts end; the trainer hands it a :class:`RichProgress` (a live
bar on the console) or the silent :class:`NoProgress`.

Every table and line that counts rollouts (this bar, ``agl demo``'s summary, GRPO's step table and validation line)
uses the same words, :data:`OUTCOME_LABELS`:

- ``finished``: rollouts that ran to the end without an error (status ``succeeded``), whatever their reward;
- ``failed``: rollouts whose last attempt failed (status ``failed``);
- ``reward ≥ 1``: rollouts whose final reward is at least 1.0 (a full reward: the task done right);
- ``mean reward``: the mean final reward of the rollouts that have one.

A value that is not known (yet) shows as ``-``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

__all__ = [
    "FAILED",
    "FINISHED",
    "FULL_REWARD",
    "MEAN_REWARD",
    "OUTCOME_LABELS",
    "NoProgress",
    "ProgressReporter",
    "RichProgress",
    "count_full_rewards",
    "format_outcomes",
]

FINISHED = "finished"
FAILED = "failed"
FULL_REWARD = "reward ≥ 1"
MEAN_REWARD = "mean reward"
OUTCOME_LABELS = (FINISHED, FAILED, FULL_REWARD, MEAN_REWARD)
"""The labels, in order, of the rollout counts every progress table shows."""


def format_outcomes(
    *,
    finished: int | None,
    failed: int | None,
    full_reward: int | None,
    mean_reward: float | None,
    separator: str = "  ",
) -> str:
    """``finished: 5  failed: 1  reward ≥ 1: 3  mean reward: 0.625`` (``-`` for what is ``None``)."""
    values = (
        _count(finished),
        _count(failed),
        _count(full_reward),
        "-" if mean_reward is None else f"{mean_reward:.3f}",
    )
    return separator.join(f"{label}: {value}" for label, value in zip(OUTCOME_LABELS, values))


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def count_full_rewards(rewards: Sequence[float]) -> int:
    """How many of ``rewards`` are a full reward (≥ 1.0)."""
    return sum(r >= 1.0 for r in rewards)


class ProgressReporter:
    """What an algorithm reports to. The base class ignores everything."""

    def start(self, description: str, total: int) -> None:
        """A phase (e.g. a training step) with ``total`` rollouts begins."""

    def rollouts(
        self,
        *,
        done: int,
        succeeded: int,
        rewards: list[float],
        failed: int | None = None,
        full_reward: int | None = None,
    ) -> None:
        """Of the phase's rollouts, ``done`` have ended, ``succeeded`` of them ran to the end (shown as
        ``finished``) and ``failed`` of them failed (when the algorithm counts them); ``rewards`` are the final
        rewards known so far. ``full_reward``: how many rollouts got a reward ≥ 1, when the algorithm counts them
        itself (default: counted in ``rewards``, unknown when ``rewards`` is empty)."""

    def finish(self) -> None:
        """The phase is over."""

    def __enter__(self) -> ProgressReporter:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.finish()


NoProgress = ProgressReporter


class RichProgress(ProgressReporter):
    """A live progress bar: done/total, then finished, failed, reward ≥ 1, mean reward, rollouts per second."""

    def __init__(self, console: Console | None = None) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[outcomes]}"),
            TextColumn("{task.fields[rate]} rollouts/s"),
            TimeElapsedColumn(),
            console=console,
        )
        self._task: TaskID | None = None
        self._started = 0.0

    def start(self, description: str, total: int) -> None:
        self.finish()
        self._progress.start()
        self._started = time.monotonic()
        outcomes = format_outcomes(finished=None, failed=None, full_reward=None, mean_reward=None)
        self._task = self._progress.add_task(description, total=total, outcomes=outcomes, rate="-")

    def rollouts(
        self,
        *,
        done: int,
        succeeded: int,
        rewards: list[float],
        failed: int | None = None,
        full_reward: int | None = None,
    ) -> None:
        if self._task is None:
            return
        elapsed = max(time.monotonic() - self._started, 1e-9)
        if full_reward is None and rewards:
            full_reward = count_full_rewards(rewards)
        outcomes = format_outcomes(
            finished=succeeded,
            failed=failed,
            full_reward=full_reward,
            mean_reward=sum(rewards) / len(rewards) if rewards else None,
        )
        self._progress.update(self._task, completed=done, outcomes=outcomes, rate=f"{done / elapsed:.1f}")

    def finish(self) -> None:
        if self._task is not None:
            self._progress.stop()
            self._task = None
