"""The skeleton algorithm runs through the Trainer with its options (nested ones too), from Python, a run file and
``agl train``; its options are documented by ``agl plugins show``; bad options are one-line errors (exit code 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agl_kernel.errors import ConfigError
from agl_kernel.plugins import create_component
from agl_kernel.trainer import Trainer
from agl_store_template import TemplateAlgorithm, TemplateReport

sys.path.insert(0, str(Path(__file__).parent))
import toy_agent


def test_the_algorithm_is_made_from_its_options() -> None:
    algorithm = create_component(
        "algorithms", "template", options={"epochs": "3", "rollout": {"max_attempts": 2, "timeout_seconds": 30}}
    )
    assert isinstance(algorithm, TemplateAlgorithm) and algorithm.epochs == 3
    assert algorithm.config.max_attempts == 2 and algorithm.config.timeout_seconds == 30.0
    assert algorithm.agl_options == {"epochs": 3, "rollout": {"timeout_seconds": 30.0, "max_attempts": 2}}


def test_the_algorithm_runs_its_epochs_and_validation_through_the_trainer() -> None:
    trainer = Trainer(
        algorithm="template", store="memory", runner="template", adapter="triplets", n_runners=2,
        options={"algorithm": {"epochs": 2}}, progress=False,
    )  # fmt: skip
    with trainer:
        report = trainer.fit(toy_agent.agent, toy_agent.TASKS, toy_agent.TASKS[:2])
    assert isinstance(report, TemplateReport)
    assert [e.epoch for e in report.epochs] == [1, 2]
    assert all(e.by_status == {"succeeded": 4} and e.mean_reward == 0.75 for e in report.epochs)
    assert all(e.samples is not None for e in report.epochs)  # the adapter saw every rollout's spans
    assert report.validation is not None and report.validation.mean_reward == 1.0


def test_nested_options_retry_a_failed_attempt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOY_AGENT_DIR", str(tmp_path))
    run_file = tmp_path / "run.toml"
    run_file.write_text(
        '[algorithm]\nname = "template"\n\n[algorithm.rollout]\nmax_attempts = 2\n\n'
        '[store]\nname = "memory"\n\n[runner]\nname = "template"\nwait_seconds = 0.1\n'
    )
    with Trainer.from_config(run_file, progress=False) as trainer:
        report = trainer.fit(toy_agent.flaky_agent, toy_agent.TASKS[:2])
    [epoch] = report.epochs
    assert epoch.by_status == {"succeeded": 2} and epoch.mean_reward == 1.0


def test_bad_options_are_config_errors_with_the_full_path() -> None:
    with pytest.raises(ConfigError, match=r"^algorithm\.rollout\.max_attempts: .*>= 1"):
        Trainer(algorithm="template", store="memory", options={"algorithm": {"rollout": {"max_attempts": 0}}})
    with pytest.raises(ConfigError, match=r"^algorithm\.rollout\.tries: unknown option.*Valid keys: max_attempts"):
        Trainer(algorithm="template", store="memory", options={"algorithm": {"rollout": {"tries": 2}}})
    with pytest.raises(ConfigError, match=r"^algorithm\.epochs: expected an integer, got 'two'"):
        Trainer(algorithm="template", store="memory", options={"algorithm": {"epochs": "two"}})


# ------------------------------------------------------------------------------------------------- the CLI


def agl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agl_kernel.cli", *args],
        capture_output=True, text=True, cwd=cwd, timeout=180, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip


def test_agl_train_runs_the_skeletons_by_name(tmp_path: Path) -> None:
    done = agl(
        "train", "--agent", toy_agent.AGENT, "--dataset", f"{toy_agent.__file__}:tasks", "--algorithm", "template",
        "--set", "algorithm.epochs=2", "--set", "algorithm.rollout.max_attempts=2", "--runner", "template",
        "--set", "runner.wait_seconds=0.1", "--tracer", "template", "--store", "memory", "--runners", "2",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rollouts: 4  finished: 4  failed: 0  reward ≥ 1: -  mean reward: 0.750" in done.stdout


def test_agl_config_and_plugins_show_describe_the_options(tmp_path: Path) -> None:
    config = agl("config", "--algorithm", "template", "--set", "algorithm.rollout.max_attempts=3",
                 "--runner", "template", "--tracer", "template", "--store", "memory", cwd=tmp_path)  # fmt: skip
    assert config.returncode == 0, config.stderr
    assert '[algorithm]\nname = "template"\nepochs = 1\nrollout = {max_attempts = 3}' in config.stdout
    assert '[runner]\nname = "template"\nwait_seconds = 0.5\nheartbeat_interval = 5.0' in config.stdout
    shown = agl("plugins", "show", "template", "--kind", "algorithms", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    for option in ("epochs", "rollout.timeout_seconds", "rollout.max_attempts", "How many times every training"):
        assert option in shown.stdout


def test_agl_train_with_a_bad_option_exits_2_with_one_line(tmp_path: Path) -> None:
    done = agl("train", "--agent", toy_agent.AGENT, "--dataset", f"{toy_agent.__file__}:tasks",
               "--algorithm", "template", "--set", "algorithm.epochs=0", "--store", "memory", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["Error: algorithm.epochs: must be >= 1: 0"], done.stderr
