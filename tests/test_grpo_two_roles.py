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


def test_planner_reward_gives_partial_credit(recipe):
    """A quarter each for an expression, the problem's numbers, the right value and the EXPR: line."""
    task = {"problem": "Tom has 5 apples and buys 7 more. How many apples does Tom have now?", "expression": "5 + 7"}
    task["answer"] = 12.0
    cases = {
        "EXPR: 5 + 7": (1.0, "5 + 7"),
        "EXPR: 7+5 = 12\n\nSo Tom has": (1.0, "7+5"),  # the line opens the reply; what follows is not scored
        "Tom has 5 + 7 = 12 apples": (0.75, "5 + 7"),  # right, but not the EXPR: line
        "EXPR: 7 - 5": (0.75, "7 - 5"),  # the problem's numbers, wrong value
        "EXPR: 4 * 3": (0.75, "4 * 3"),  # right value from other numbers
        "EXPR: 3 + 4": (0.5, "3 + 4"),  # the prompt's example copied
        "EXPR: 5 + 7 + 1": (0.5, "5 + 7 + 1"),  # a number that is not the problem's
        "I think 2 * 3 apples": (0.25, "2 * 3"),  # an expression, nothing else right
        "Expression: 5 + 7": (0.75, "5 + 7"),  # not the EXPR: line
        "EXPR: 12": (0.0, None),  # a number is not an expression
        "Tom has 12 apples.": (0.0, None),
        "no idea": (0.0, None),
    }
    for reply, expected in cases.items():
        assert recipe.plan_reward(reply, task) == expected, reply
    subtraction = {"expression": "8 - 1", "answer": 7.0}
    assert recipe.plan_reward("EXPR: 8-1", subtraction) == (1.0, "8-1")  # "-1" is the number 1 subtracted
    assert recipe.plan_reward("EXPR: 1 - 8", subtraction) == (0.75, "1 - 8")


def test_solver_reward_and_generated_tasks(recipe):
    [task] = recipe.make_tasks(1, seed=5)
    answer, expression = task["answer"], task["expression"]
    assert recipe.plan_reward(f"EXPR: {expression}", task) == (1.0, expression)  # a generated task is consistent
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
    assert set(result["validation"]["2"]) == {"task", "planner", "solver", "plan_right"}
