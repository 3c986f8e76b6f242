"""The two-role recipe (contrib/recipes/grpo_two_roles.py) at a tiny size: a planner and a solver in one rollout,
each under its own LoRA adapter of one served base model, trained by GRPO. The real run (SmolLM2, 3 seeds) is in
docs/performance.md."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.requires_plugin("agl_algo_grpo", "agl_model_server")
pytest.importorskip("peft")

RECIPES = Path(__file__).resolve().parents[1] / "contrib" / "recipes"


@pytest.fixture()
def recipe():
    sys.path.insert(0, str(RECIPES))
    try:
        import grpo_two_roles

        yield grpo_two_roles
    finally:
        sys.path.remove(str(RECIPES))


def test_each_role_has_its_own_reward_rule(recipe):
    [task] = recipe.make_tasks(1, seed=5)
    answer, expression = task["answer"], task["expression"]
    assert recipe.plan_reward(f"EXPR: {expression}", answer) == (1.0, expression)
    assert recipe.plan_reward(f"I think {expression} works", answer) == (0.5, expression)
    assert recipe.plan_reward("EXPR: 1 + 1", answer)[0] == (1.0 if answer == 2 else 0.0)
    assert recipe.plan_reward("no idea", answer) == (0.0, None)
    value = int(answer)
    assert recipe.solve_reward(f"ANSWER: {value}", answer) == (1.0, value)
    assert recipe.solve_reward(f"It is {value}.", answer) == (0.5, value)
    assert recipe.solve_reward(f"ANSWER: {value + 1}", answer) == (0.25, value + 1)
    assert recipe.solve_reward("no idea", answer) == (0.0, None)


def test_tiny_run_trains_both_roles(recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs.json"
    args = ["--tiny", "--steps", "2", "--batch-size", "2", "--group-size", "2", "--val-tasks", "2", "--json", str(out)]
    [result] = recipe.main(args)
    assert result["steps"] == 2 and out.is_file()
    for step in result["history"]:  # both roles were served and rewarded in every step
        assert "reward_planner" in step and "reward_solver" in step
    assert sorted(result["validation"]) == ["0", "2"]  # before and after training, per role
    assert set(result["validation"]["2"]) == {"task", "planner", "solver"}
