"""The main job's recipe at a tiny size: the whole GRPO loop (store, server, LLM proxy, model server, runners,
policy update) with a tiny random model, in seconds. The real run is `make demo` (see docs/performance.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.requires_plugin("agl_algo_grpo", "agl_model_server")
pytest.importorskip("reasoning_gym")

RECIPES = Path(__file__).resolve().parents[1] / "contrib" / "recipes"


@pytest.fixture()
def recipe():
    sys.path.insert(0, str(RECIPES))
    try:
        import grpo_calculator

        yield grpo_calculator
    finally:
        sys.path.remove(str(RECIPES))


@pytest.mark.filterwarnings("ignore::agl_kernel.emit.NoTraceContextWarning")  # the tool runs outside a rollout here
def test_reward_reads_the_tool_call(recipe):
    task = recipe.make_tasks(1, seed=3)[0]
    expression = task["question"].removeprefix("Calculate ").rstrip(".")
    assert recipe.score(task, f"CALC: {expression}") == 1.0
    assert recipe.score(task, f"so {expression} is it") == 0.5
    assert recipe.score(task, "CALC: 1 + 1" if task["answer"] != "2" else "CALC: 1 + 2") == 0.0
    assert recipe.score(task, "no idea") == 0.0


def test_tiny_run_trains_through_the_whole_loop(recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    captured = {}
    import agl_algo_grpo

    original = agl_algo_grpo.PolicyTrainer.train_step

    def spy(self, samples):
        before = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        metrics = original(self, samples)
        after = self.model.state_dict()
        captured.setdefault("changed", []).append(any(not (after[k] == before[k]).all() for k in before))
        captured.setdefault("loss", []).append(metrics.get("loss"))
        return metrics

    monkeypatch.setattr(agl_algo_grpo.PolicyTrainer, "train_step", spy)
    # A tiny random model never answers right; a reward that varies with the reply gives GRPO something to learn.
    monkeypatch.setattr(recipe, "score", lambda task, reply: float(len(reply) % 2))
    result = recipe.main(
        [
            "--tiny",
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--group-size",
            "4",
            "--val-tasks",
            "4",
            "--val-every",
            "1",
            "--runners",
            "8",
            "--max-tokens",
            "6",
            "--train-tasks",
            "8",
        ]
    )
    report = result["report"]
    assert report.steps_done == 2 and len(report.validations) == 3
    assert (tmp_path / ".agl" / "agl.db").is_file() and report.checkpoint is not None
    import math

    assert captured["changed"] and all(captured["changed"]), "an update left the policy's weights as they were"
    assert all(math.isfinite(loss) for loss in captured["loss"])


def test_tiny_asynchronous_run_validates_every_version_it_publishes(recipe, tmp_path, monkeypatch):
    """The main job in asynchronous mode with a validation after every step: the validations but the last run in
    the background while the next step trains. On the tiny model an update can end before the background
    validation first runs; the validation must still run on the version published for it (it once published
    itself, found the policy had moved on, waited for itself and was lost: 'Task cannot await on itself')."""
    monkeypatch.chdir(tmp_path)
    result = recipe.main(
        [
            *["--tiny", "--steps", "3", "--val-every", "1", "--max-staleness", "1", "--runners", "12"],
            *["--tool-seconds", "0.1-0.2", "--no-checkpoint", "--val-tasks", "6", "--train-tasks", "24"],
        ]
    )
    report = result["report"]
    assert report.steps_done == 3 and len(report.validations) == 4
    assert all(v["val_rollouts"] == 6 for v in report.validations)
