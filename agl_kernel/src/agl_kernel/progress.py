"""Progress of a run, as algorithms report it: rollouts done, success rate, mean reward, throughput.

An algorithm calls ``progress.rollouts(...)`` as rollouts end; the trainer hands it a :class:`RichProgress` (a live
bar on the console) or the silent :class:`NoProgress`.
"""

from __future__ import annotations

import time
from typing import Any, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

__all__ = ["NoProgress", "ProgressReporter", "RichProgress"]


class ProgressReporter:
    """What an algorithm reports to. The base class ignores everything."""

    def start(self, description: str, total: int) -> None:
        """A phase (e.g. a training step) with ``total`` rollouts begins."""

    def rollouts(self, *, done: int, succeeded: int, rewards: list[float], failed: Optional[int] = None) -> None:
        """Of the phase's rollouts, ``done`` have ended, ``succeeded`` of them successfully (``failed`` of them
        failed, when the algorithm counts them); ``rewards`` are those known so far."""

    def finish(self) -> None:
        """The phase is over."""

    def __enter__(self) -> "ProgressReporter":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.finish()


NoProgress = ProgressReporter


class RichProgress(ProgressReporter):
    """A live progress bar: done/total, success rate, mean reward, rollouts per second."""

    def __init__(self, console: Optional[Console] = None) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("success {task.fields[success]}"),
            TextColumn("failed {task.fields[failed]}"),
            TextColumn("reward {task.fields[reward]}"),
            TextColumn("{task.fields[rate]} rollouts/s"),
            TimeElapsedColumn(),
            console=console,
        )
        self._task: Optional[TaskID] = None
        self._started = 0.0

    def start(self, description: str, total: int) -> None:
        self.finish()
        self._progress.start()
        self._started = time.monotonic()
        self._task = self._progress.add_task(description, total=total, success="-", failed="-", reward="-", rate="-")

    def rollouts(self, *, done: int, succeeded: int, rewards: list[float], failed: Optional[int] = None) -> None:
        if self._task is None:
            return
        elapsed = max(time.monotonic() - self._started, 1e-9)
        self._progress.update(
            self._task,
            completed=done,
            success=f"{succeeded / done:.0%}" if done else "-",
            failed="-" if failed is None else str(failed),
            reward=f"{sum(rewards) / len(rewards):.3f}" if rewards else "-",
            rate=f"{done / elapsed:.1f}",
        )

    def finish(self) -> None:
        if self._task is not None:
            self._progress.stop()
            self._task = None
