"""A newcomer's first hour (issue 19, items 1 and 9), as a new user meets it: `agl dev` / `agl train` / `agl runner`
through a subprocess, and the Trainer through its public API.

- A failed rollout surfaces at the end of the run: its exception type, message and rollout id.
- A user mistake on the command line (wrong agent signature, unknown file, bad dataset object) is one line naming
  the option, exit code 2, no traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agl_kernel.algorithm import BaselineReport, failure_lines
from agl_kernel.trainer import Trainer

AGENTS = """
def agent(task, resources):
    if task == 3:
        raise ValueError("bad input 3")
    return 1.0

def slow(task):
    return 1.0

def tasks():
    return [1, 2, 3]

not_tasks = 42

def broken_tasks():
    raise RuntimeError("no tasks today")
"""


def agl(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AGL_")}
    environ["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "agl_kernel.cli", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "agents.py").write_text(AGENTS)
    (tmp_path / "typo.py").write_text("def agent(task, resources):\n    return 1 +\n")
    (tmp_path / "boom.py").write_text('raise RuntimeError("boom at import")\n')
    return tmp_path


def test_dev_prints_the_failed_rollouts_exception_and_id(project: Path) -> None:
    db = project / "run.db"
    done = agl(
        project, "dev", "--agent", "agents.py:agent", "--dataset", "agents.py:tasks",
        "--store", "sqlite", "--path", str(db), "--set", "algorithm.max_attempts=1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout + done.stderr
    assert "1 rollout(s) failed: ValueError x1" in out
    assert "ValueError: bad input 3" in out
    assert "agents.py:4" in out  # where it was raised
    line = next(line for line in out.splitlines() if "ValueError: bad input 3" in line)
    rollout_id = line.split()[0]
    assert rollout_id.startswith("ro-")
    assert f"1 failed: see `agl rollouts why {rollout_id}`" in out
    assert "Traceback" not in out


@pytest.mark.parametrize("command", ["dev", "train", "runner"])
def test_wrong_agent_signature_is_one_line(project: Path, command: str) -> None:
    args = ["--agent", "agents.py:slow", "--store", "memory"]
    if command != "runner":
        args += ["--dataset", "agents.py:tasks"]
    done = agl(project, command, *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, done.stderr
    assert "run.agent" in errors[0] and "'slow' must take (task, <resource>)" in errors[0]


def test_runner_against_a_store_url_checks_the_agent_first(project: Path) -> None:
    # No server listens there: the agent is checked before the store is reached.
    done = agl(project, "runner", "--agent", "agents.py:slow", "--store", "http://127.0.0.1:9")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "run.agent" in done.stderr


@pytest.mark.parametrize(
    ("args", "key", "words"),
    [
        (["--agent", "missing.py:agent", "--dataset", "agents.py:tasks"], "run.agent", "missing.py"),
        (["--agent", "agents.py:nope", "--dataset", "agents.py:tasks"], "run.agent", "nope"),
        (["--agent", "agents.py:agent", "--dataset", "missing.jsonl"], "run.dataset", "missing.jsonl"),
        (["--agent", "agents.py:agent", "--dataset", "missing.py:tasks"], "run.dataset", "missing.py"),
        (["--agent", "agents.py:agent", "--dataset", "agents.py:not_tasks"], "run.dataset", "not a list of tasks"),
        (["--agent", "agents.py:agent", "--dataset", "agents.py:broken_tasks"], "run.dataset", "no tasks today"),
        (["--agent", "agents.py:not_tasks", "--dataset", "agents.py:tasks"], "run.agent", "LitAgent"),
        (["--agent", "typo.py:agent", "--dataset", "agents.py:tasks"], "run.agent", "typo.py, line 2"),
        (["--agent", "boom.py:agent", "--dataset", "agents.py:tasks"], "run.agent", "RuntimeError: boom at import"),
    ],
)
def test_command_line_mistakes_are_one_line(project: Path, args: list[str], key: str, words: str) -> None:
    done = agl(project, "dev", "--store", "memory", *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and key in errors[0] and words in errors[0], done.stderr


def test_trainer_dev_reports_the_failures() -> None:
    def agent(task: int, resources: object) -> float:
        if task == 3:
            raise ValueError("bad input 3")
        return 1.0

    trainer = Trainer(store="memory", progress=False, options={"algorithm": {"max_attempts": 1}})
    with trainer:
        report = trainer.dev(agent, [1, 2, 3])
    assert isinstance(report, BaselineReport)
    assert report.by_status == {"succeeded": 2, "failed": 1}
    failures = report.failures
    assert failures.count == 1 and failures.by_type == {"ValueError": 1}
    (first,) = failures.first
    assert first.type == "ValueError" and first.message == "bad input 3"
    assert first.where is not None and first.where.endswith(f"test_first_hour.py:{agent.__code__.co_firstlineno + 2}")
    assert first.rollout_id == next(o.rollout_id for o in report.outcomes if o.status == "failed")
    assert "ValueError: bad input 3" in "\n".join(failure_lines(failures))


def test_a_clean_run_reports_no_failures() -> None:
    with Trainer(store="memory", progress=False) as trainer:
        report = trainer.dev(lambda task, resources: 1.0, [1, 2])
    assert report.failures.count == 0 and failure_lines(report.failures) == []
