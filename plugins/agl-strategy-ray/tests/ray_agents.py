"""Agents for the Ray strategy's tests: the runner actors import them from this file by path."""

from __future__ import annotations

import os
import time
from pathlib import Path


def env_reward(task, resources):
    """The reward the actor's runtime environment sets (``AGL_RAY_TEST_REWARD``)."""
    return float(os.environ["AGL_RAY_TEST_REWARD"])


def noop(task, resources):
    return 1.0


def pid_then_hang_once(task, resources):
    """First attempt: write this process's pid to ``task['pid_file']`` and hang (until the actor is killed). The
    retry waits for ``task['go_file']`` to exist, so the run lasts until the test has seen what it waits for."""
    marker = Path(task["pid_file"])
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        while True:
            time.sleep(0.05)
    while not Path(task["go_file"]).exists():
        time.sleep(0.05)
    return 1.0


def gated(task, resources):
    """Say it started (``started-<i>`` in ``task['dir']``, with this process's pid), then wait for ``go``."""
    folder = Path(task["dir"])
    (folder / f"started-{task['i']}").write_text(str(os.getpid()))
    while not (folder / "go").exists():
        time.sleep(0.05)
    return 1.0
