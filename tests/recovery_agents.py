"""Agents for the recovery and chaos tests: runner processes import them from this file by path."""

from __future__ import annotations

import os
import time
from pathlib import Path


def pid_then_hang_once(task, resources):
    """First attempt of each task: write this process's pid to ``task['pid_file']`` and hang (until killed)."""
    marker = Path(task["pid_file"])
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        while True:
            time.sleep(0.05)
    return 1.0


def sleepy(task, resources):
    """Busy for ``task['seconds']`` (short sleeps, so that it can be stopped between them); raises when
    ``task['fail']``; returns ``task['reward']`` (default 1.0)."""
    deadline = time.monotonic() + task["seconds"]
    while time.monotonic() < deadline:
        time.sleep(0.02)
    if task.get("fail"):
        raise ValueError(f"task {task.get('id')} fails on purpose")
    return task.get("reward", 1.0)
