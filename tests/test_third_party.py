"""A third-party distribution, written here and built by pip into a temporary directory, that registers an algorithm
with its own attrs options class, a store and a runner: it is listed, `agl plugins show` documents its options,
and `agl train` runs it end to end, picked by name with --set and from a TOML run file, under shm and cs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = '''
"""A third-party agl plugin: the `scaled` algorithm, the `notebook` store and the `logging` runner."""

import json
from typing import Optional

import attrs

from agl_kernel.algorithm import Algorithm, collect_outcomes
from agl_kernel.models import EnqueueRequest, PromptTemplate
from agl_kernel.runner import LitAgentRunner
from agl_kernel.store.memory import InMemoryLightningStore


@attrs.define(kw_only=True)
class ScaledOptions:
    factor: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
    """What the agent multiplies each task's x by (published as the resource `scale`)."""
    repeats: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    """Rollouts per task."""
    report_path: Optional[str] = None
    """Where to write the rewards as JSON."""


class Scaled(Algorithm):
    """Publishes `factor` and runs every task `repeats` times."""

    Options = ScaledOptions

    def __init__(self, *, factor=1.0, repeats=1, report_path=None):
        self.factor, self.repeats, self.report_path = factor, repeats, report_path

    async def run(self, store, train_dataset, val_dataset=None):
        await store.add_resources({"scale": PromptTemplate(template=str(self.factor))})
        requests = [EnqueueRequest(input=task) for task in train_dataset for _ in range(self.repeats)]
        rollouts = await store.enqueue_many_rollouts(requests)
        ended = await collect_outcomes(store, [r.rollout_id for r in rollouts], timeout=60)
        rewards = sorted(o.reward for o in ended.values() if o.reward is not None)
        if self.report_path:
            with open(self.report_path, "w") as file:
                # The trainer hands algorithms a view of the store scoped to the run; ``inner`` is the store.
                json.dump({"rewards": rewards, "store": type(store.inner).__name__, "view": type(store).__name__}, file)
        return rewards


@attrs.define(kw_only=True)
class NotebookOptions:
    label: str = "notebook"
    """A name for this store."""


class NotebookStore(InMemoryLightningStore):
    """The in-memory store, with a label."""

    Options = NotebookOptions

    def __init__(self, *, label="notebook"):
        super().__init__()
        self.label = label


@attrs.define(kw_only=True)
class LoggingOptions:
    log_path: str
    """A file each finished rollout is appended to, as `tag worker rollout`."""
    tag: str = "run"
    """A word written on each line."""


class LoggingRunner(LitAgentRunner):
    """The kernel's runner, logging every rollout it finishes."""

    Options = LoggingOptions

    def __init__(self, *, worker_id=None, tracer=None, log_path, tag="run"):
        super().__init__(worker_id=worker_id, tracer=tracer)
        self.log_path, self.tag = log_path, tag

    async def run_one(self, store, agent, attempted):
        status = await super().run_one(store, agent, attempted)
        with open(self.log_path, "a") as file:
            file.write(f"{self.tag} {self.worker_id} {attempted.rollout_id}\\n")
        return status


def agent(task, resources):
    return float(resources["scale"].template) * task["x"]


def tasks():
    return [{"x": 1}, {"x": 2}, {"x": 3}]
'''

PYPROJECT = """
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "agl-thirdparty-demo"
version = "0.3.1"
requires-python = ">=3.10"
dependencies = ["agl-kernel>=0.2,<0.3", "attrs>=24"]

[project.entry-points."agl.algorithms"]
scaled = "agl_thirdparty_demo:Scaled"

[project.entry-points."agl.stores"]
notebook = "agl_thirdparty_demo:NotebookStore"

[project.entry-points."agl.runners"]
logging = "agl_thirdparty_demo:LoggingRunner"

[tool.setuptools]
packages = ["agl_thirdparty_demo"]
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("thirdparty-src")
    (source / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT))
    (source / "agl_thirdparty_demo").mkdir()
    (source / "agl_thirdparty_demo" / "__init__.py").write_text(textwrap.dedent(PACKAGE))
    target = tmp_path_factory.mktemp("thirdparty-site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", target, source],
        check=True,
        capture_output=True,
    )
    return target


def agl(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGL_")}
    env.update(PYTHONPATH=str(site), COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "agl_kernel.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
    )


def test_listed_checked_and_documented(site: Path, tmp_path: Path) -> None:
    listed = agl(site, tmp_path, "plugins", "--check", "--json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    mine = {(p["kind"], p["name"]): p for p in json.loads(listed.stdout) if p["distribution"] == "agl-thirdparty-demo"}
    assert set(mine) == {("algorithms", "scaled"), ("stores", "notebook"), ("runners", "logging")}
    assert all(p["error"] is None and p["requires_kernel"] == "<0.3,>=0.2" for p in mine.values())

    shown = agl(site, tmp_path, "plugins", "show", "scaled")
    assert shown.returncode == 0, shown.stderr
    assert "agl-thirdparty-demo 0.3.1" in shown.stdout
    for expected in ("factor", "number", "1.0", "What the agent multiplies", "repeats", "integer", "report_path"):
        assert expected in shown.stdout
    runner = agl(site, tmp_path, "plugins", "show", "logging")
    assert "log_path" in runner.stdout and "(required)" in runner.stdout


@pytest.mark.parametrize("strategy", ["shm", "cs"])
def test_agl_train_runs_it_by_name_with_set(site: Path, tmp_path: Path, strategy: str) -> None:
    log = tmp_path / "runs.log"
    result = agl(
        site, tmp_path, "train",
        "--agent", "agl_thirdparty_demo:agent", "--dataset", "agl_thirdparty_demo:tasks",
        "--algorithm", "scaled", "--set", "algorithm.factor=2.5", "--set", "algorithm.repeats=2",
        "--set", f"algorithm.report_path={tmp_path / 'report.json'}",
        "--store", "notebook", "--runner", "logging", "--set", f"runner.log_path={log}", "--set", "runner.tag=mine",
        "--strategy", strategy, "--runners", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report == {"rewards": [2.5, 2.5, 5.0, 5.0, 7.5, 7.5], "store": "NotebookStore", "view": "RunStore"}
    lines = log.read_text().split()
    assert len(lines) == 6 * 3 and set(lines[0::3]) == {"mine"}
    assert set(lines[1::3]) <= {"runner-0", "runner-1"}


@pytest.mark.parametrize("strategy", ["shm", "cs"])
def test_agl_train_runs_it_from_a_run_file(site: Path, tmp_path: Path, strategy: str) -> None:
    log = tmp_path / "runs.log"
    (tmp_path / "run.toml").write_text(
        textwrap.dedent(f"""
        [run]
        agent = "agl_thirdparty_demo:agent"
        dataset = "agl_thirdparty_demo:tasks"
        runners = 2
        [algorithm]
        name = "scaled"
        factor = 3
        report_path = "{tmp_path / "report.json"}"
        [store]
        name = "notebook"
        label = "from-file"
        [runner]
        name = "logging"
        log_path = "{log}"
        [strategy]
        name = "{strategy}"
        """)
    )
    resolved = agl(site, tmp_path, "config", "--config", "run.toml", "--set", "algorithm.repeats=1")
    assert resolved.returncode == 0, resolved.stderr
    assert 'name = "scaled"\nfactor = 3.0\nrepeats = 1' in resolved.stdout
    assert 'label = "from-file"' in resolved.stdout

    result = agl(site, tmp_path, "train", "--config", "run.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads((tmp_path / "report.json").read_text())["rewards"] == [3.0, 6.0, 9.0]
    assert len(log.read_text().splitlines()) == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "algorithm.factor=-1"], "algorithm.factor"),
        (["--set", "algorithm.factor=lots"], "algorithm.factor: expected a number, got 'lots'"),
        (
            ["--set", "algorithm.fcator=2"],
            "algorithm.fcator: unknown option. Did you mean 'factor'? Valid keys: factor",
        ),
        (["--runner", "logging"], "runner.log_path: required option is missing"),
        (["--set", "store.path=x.db"], "store.path: unknown option"),
    ],
)
def test_bad_options_of_a_third_party_component_are_one_line_errors(
    site: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    result = agl(
        site, tmp_path, "train", "--agent", "agl_thirdparty_demo:agent", "--dataset", "agl_thirdparty_demo:tasks",
        "--algorithm", "scaled", "--store", "notebook", *args,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
