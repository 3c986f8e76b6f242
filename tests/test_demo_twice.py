"""`make demo` twice in a row in one folder: the main job's recipe at its tiny size (a tiny random model), run twice
as subprocesses with the same working directory, so the second run finds the first one's store file and
checkpoints. The second run must end as the first did (same summary, no failed rollout, no connection error, its
reward after training as good), and the checkpoint folder must hold no more than ``keep_checkpoints``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("agl_algo_grpo")
pytest.importorskip("agl_model_server")
pytest.importorskip("reasoning_gym")
pytestmark = pytest.mark.requires_plugin("agl_algo_grpo", "agl_model_server")

from agl_algo_grpo import GRPOConfig  # noqa: E402
from agl_algo_grpo._checkpoint import list_checkpoints, prune_checkpoints  # noqa: E402

RECIPE = Path(__file__).resolve().parents[1] / "contrib" / "recipes" / "grpo_calculator.py"

SUMMARY = {  # the summary's lines, by what they say
    "reward": re.compile(r"^validation reward: before training (\d+\.\d+) → after (\d+\.\d+)$"),
    "steps": re.compile(r"^2 steps in \d+ s; checkpoint: \S*step-000002$"),
    "store": re.compile(r"^store: \S+ at .*agl\.db \(the run's rollouts"),
    "checkpoints": re.compile(r"^checkpoints: \d+ in \S+ \(step-\d+(, step-\d+)*\), [\d.]+ \w?B on disk"),
    "disk": re.compile(r"^left on disk"),
    "validation": re.compile(r"^validation at step \d+: rollouts: (\d+)  finished: (\d+)  failed: (\d+)  "),
}


def _run_demo(cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, str(RECIPE), "--steps", "2", "--tiny"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def _summary(output: str) -> dict[str, list[re.Match[str]]]:
    found: dict[str, list[re.Match[str]]] = {}
    for line in output.splitlines():
        for kind, pattern in SUMMARY.items():
            match = pattern.match(line.strip())
            if match:
                found.setdefault(kind, []).append(match)
    return found


def _step_rows(output: str) -> list[dict[str, str]]:
    """The rows of GRPO's step tables, by column header."""
    rows, lines = [], output.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("┃") and "finished" in line:
            headers = [cell.strip() for cell in line.strip("┃").split("┃")]
            values = [cell.strip() for cell in lines[index + 2].strip("│").split("│")]
            rows.append(dict(zip(headers, values)))
    return rows


def _check_run(output: str) -> dict[str, list[re.Match[str]]]:
    assert "Connection error" not in output and "Traceback" not in output, output
    assert "matplotlib" not in output and "Writing model shards" not in output, output  # no stray log lines
    summary = _summary(output)
    assert set(summary) == set(SUMMARY), (set(SUMMARY) - set(summary), output)
    for validation in summary["validation"]:
        rollouts, finished, failed = (int(g) for g in validation.groups())
        assert finished == rollouts and failed == 0, validation.string
    rows = _step_rows(output)
    assert len(rows) == 2, output
    for row in rows:  # every column on every step, a step without an update included ("-")
        assert {"finished", "failed", "reward ≥ 1", "mean reward", "loss", "grad norm"} <= set(row), row
        assert row["failed"] == "0" and row["finished"] != "0", row
    before, after = (float(v) for v in summary["reward"][0].groups())
    assert 0.0 <= before <= 1.0 and 0.0 <= after <= 1.0
    return summary


@pytest.mark.slow
def test_the_demo_runs_twice_in_one_folder(tmp_path: Path) -> None:
    first = _check_run(_run_demo(tmp_path))
    second = _check_run(_run_demo(tmp_path))

    assert [m.string for m in first["validation"]] == [m.string for m in second["validation"]]
    first_after = float(first["reward"][0].group(2))
    second_before, second_after = (float(v) for v in second["reward"][0].groups())
    assert second_after >= first_after  # the tiny run is seeded: the second learns as well as the first
    assert second_before == float(first["reward"][0].group(1))  # a fresh run: not resumed from the checkpoint

    checkpoints = list_checkpoints(tmp_path / ".agl" / "grpo-calculator")
    keep = GRPOConfig().keep_checkpoints
    assert keep is not None and 1 <= len(checkpoints) <= keep, checkpoints
    assert [step for step, _ in checkpoints][-1] == 2
    state = json.loads((checkpoints[-1][1] / "state.json").read_text())
    assert state["step"] == 2


def _fake_checkpoint(directory: Path, step: int) -> Path:
    path = directory / f"step-{step:06d}"
    path.mkdir(parents=True)
    (path / "state.json").write_text(json.dumps({"step": step}))
    return path


def test_pruning_keeps_the_checkpoint_just_written_after_a_longer_earlier_run(tmp_path: Path) -> None:
    # A first run of 12 steps left step 6 and step 12; a second, shorter run in the same folder writes step 2.
    _fake_checkpoint(tmp_path, 6), _fake_checkpoint(tmp_path, 12)
    newest = _fake_checkpoint(tmp_path, 2)
    prune_checkpoints(tmp_path, 2, newest=newest)
    assert [path.name for _, path in list_checkpoints(tmp_path)] == ["step-000002", "step-000012"]
    prune_checkpoints(tmp_path, 1, newest=newest)
    assert [path.name for _, path in list_checkpoints(tmp_path)] == ["step-000002"]


def test_pruning_without_a_newest_keeps_the_highest_steps(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        _fake_checkpoint(tmp_path, step)
    prune_checkpoints(tmp_path, 2)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [2, 3]
    prune_checkpoints(tmp_path, None)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [2, 3]
