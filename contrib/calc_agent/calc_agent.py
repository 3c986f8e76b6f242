"""A calculator agent, pure Python (no LLM): the smallest agent that exercises the whole agl loop.

Each task is an arithmetic question with its answer, e.g. ``{"question": "(3 + 4) * 2", "answer": 14}``. The agent
reads the question, calls its calculator tool (recorded as an ``operation`` span), rounds the result to the number
of decimals its prompt template asks for and earns reward 1.0 for a right answer, 0.0 otherwise. A question the
tool cannot evaluate (division by zero) makes the agent raise: a failed attempt with the exception recorded.

    agl dev --agent contrib/calc_agent/calc_agent.py:calc_agent --dataset contrib/calc_agent/calc_agent.py:dataset
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by path (agl dev FILE.py:NAME): find calc_task
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from calc_task import evaluate

from agl_kernel.agent import rollout
from agl_kernel.emit import operation


@operation("calculator")
def calculator(expression: str) -> float:
    """The agent's tool (an ``operation`` span): :func:`evaluate`."""
    return evaluate(expression)


@rollout
def calc_agent(task: dict[str, Any], resources: dict[str, Any]) -> float:
    """Answer ``task["question"]``; reward 1.0 when it matches ``task["answer"]``. The prompt template resource
    ``decimals`` (if published) sets the rounding, the agent's only tunable behaviour."""
    decimals = int(resources["decimals"].format()) if "decimals" in resources else 2
    result = round(calculator(task["question"]), decimals)
    return 1.0 if abs(result - task["answer"]) < 1e-9 else 0.0


def make_dataset(n: int = 40, seed: int = 0, with_errors: bool = False) -> list[dict[str, Any]]:
    """``n`` questions; with ``with_errors`` every tenth divides by zero."""
    rng = random.Random(seed)
    tasks = []
    for i in range(n):
        a, b, c = rng.randint(1, 20), rng.randint(1, 20), rng.randint(1, 9)
        op = rng.choice(["+", "-", "*", "/"])
        if with_errors and i % 10 == 9:
            tasks.append({"question": f"{a} / ({c} - {c})", "answer": 0})
            continue
        question = f"({a} {op} {b}) * {c}"
        tasks.append({"question": question, "answer": round(evaluate(question), 2)})
    return tasks


def dataset() -> list[dict[str, Any]]:
    """The default dataset for ``agl dev --dataset ...:dataset``."""
    return make_dataset()
