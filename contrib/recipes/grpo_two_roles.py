"""Two agents in one rollout, one LoRA adapter each: GRPO trains a *planner* and a *solver* on one SmolLM2 base.

Each task is a short word problem ("Tom has 5 apples and buys 7 more. How many apples does Tom have now?"),
generated here from a seed. In every rollout

1. the **planner** (the LLM resource ``planner``: model ``policy:planner``) turns the problem into one line
   ``EXPR: <arithmetic>``; its reward is partial credit (see :func:`plan_reward`), a quarter each for an
   arithmetic expression, one built from the problem's numbers, one of the right value, and the ``EXPR:`` line
   (1.0 for ``EXPR: 5 + 7`` above). A right value alone would be too sparse: the base model rarely writes one, so
   nearly every group of planner replies would score all zeros and GRPO would have nothing to compare;
2. the **solver** (resource ``solver``: model ``policy:solver``) gets the planner's expression (the problem's own
   when the planner gave none) and answers ``ANSWER: <number>``; its reward is 1.0 for that line with the
   expression's value, 0.5 for the value in a looser form, 0.25 for the line with a wrong number, 0 otherwise.

The agent reports ``emit_reward({"task": ..., "planner": ..., "solver": ..., "plan_right": ...}, primary="task")``
(``task``: 1.0 when the answer solves the problem; ``plan_right``, not trained on: 1.0 when the planner's expression
has the right value, the strict measure the shaped planner reward is checked against). GRPO
(``adapters=["planner", "solver"]``) serves both adapters from one model server over one frozen base, batched
together; the LLM proxy records which adapter served each call; each role's triplets are rewarded by its own value,
compared with the same role's in their group, and update only that role's adapter. The summary gives each role's
reward in training (first and last steps) and in validation (before and after training), and ``plan_right``.

    python contrib/recipes/grpo_two_roles.py                  # SmolLM2-135M-Instruct on the CPU, a few minutes
    python contrib/recipes/grpo_two_roles.py --seeds 0 1 2 --json out.json   # the recorded figures
    python contrib/recipes/grpo_two_roles.py --tiny --steps 2  # seconds: a tiny random model, for tests
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "calc_agent"))

from calc_task import calculate
from rich.console import Console
from rich.table import Table

from agl_kernel.agent import openai_client, rollout
from agl_kernel.emit import emit_reward
from agl_kernel.models import LLM, RolloutConfig

ROLES = ("planner", "solver")
PLAN_PROMPT = (
    "Write the calculation that answers the problem, as one line: EXPR: <expression>\n"
    "Example: for 'Ann has 3 pens and gets 4 more. How many pens does Ann have?' reply EXPR: 3 + 4\n\n{problem}"
)
SOLVE_PROMPT = "Compute {expression}. Reply with one line: ANSWER: <number>"
ANSWER_LINE = re.compile(r"\s*ANSWER:\s*(-?\d+(?:\.\d+)?)\s*\.?\s*")
EXPRESSION = re.compile(r"-?\d+(?:\.\d+)?(?:\s*[-+*/]\s*-?\d+(?:\.\d+)?)+")
PLAN_LINE = re.compile(r"\s*EXPR:\s*(" + EXPRESSION.pattern + ")")  # opens the reply
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")

_TEMPLATES = (
    ("{name} has {a} apples and buys {b} more. How many apples does {name} have now?", "{a} + {b}"),
    ("A box holds {a} pens. {b} pens are taken out. How many pens are left in the box?", "{a} - {b}"),
    ("{name} reads {a} pages on Monday and {b} pages on Tuesday. How many pages in all?", "{a} + {b}"),
    ("A bus has {a} people. {b} get off. How many people are on the bus now?", "{a} - {b}"),
)
_NAMES = ("Tom", "Ann", "Raj", "Mia", "Leo", "Zoe")


def make_tasks(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` word problems with one-digit numbers (seeded; subtractions never go below zero): a 135M model gets some
    of them right before training, which gives GRPO something to compare."""
    rng = random.Random(seed)
    tasks = []
    for _ in range(n):
        template, expression = rng.choice(_TEMPLATES)
        a, b = rng.randint(2, 9), rng.randint(1, 9)
        if "-" in expression and b > a:
            a, b = b, a
        values = {"a": a, "b": b, "name": rng.choice(_NAMES)}
        expr = expression.format(**values)
        tasks.append({"problem": template.format(**values), "expression": expr, "answer": calculate(expr)})
    return tasks


def plan_reward(reply: str, task: dict[str, Any]) -> tuple[float, str | None]:
    """(the planner's reward for ``task``, the expression it gave or ``None``).

    The expression is the one on the ``EXPR:`` line that opens the reply, else the first arithmetic expression
    (numbers joined by ``+ - * /``) anywhere in it. Partial credit, a quarter each, summed:

    * 0.25: there is such an expression and it evaluates;
    * 0.25: its numbers are the problem's numbers (each one, in any order, no other);
    * 0.25: its value is the problem's answer;
    * 0.25: it is given as the ``EXPR:`` line that opens the reply.

    So ``EXPR: 5 + 7`` for "5 apples, buys 7 more" scores 1.0, ``I get 5 + 7`` 0.75, ``EXPR: 7 - 5`` 0.75,
    ``EXPR: 3 + 4`` (the prompt's example copied) 0.5, prose without an expression 0.
    """
    line = PLAN_LINE.match(reply)
    found = line.group(1) if line is not None else (m.group(0) if (m := EXPRESSION.search(reply)) else None)
    value = calculate(found) if found is not None else None
    if found is None or value is None:
        return 0.0, None
    uses_problem_numbers = _operands(found) == _operands(task["expression"])
    reward = 0.25 + 0.25 * uses_problem_numbers + 0.25 * (value == task["answer"]) + 0.25 * (line is not None)
    return reward, found


def _operands(expression: str) -> list[float]:
    """The numbers an expression uses, without signs ("8-1" uses 8 and 1), sorted."""
    return sorted(abs(float(n)) for n in NUMBER.findall(expression))


def solve_reward(reply: str, value: float | None) -> tuple[float, float | None]:
    """(the solver's reward for ``value``, the number it answered or ``None``)."""
    exact = ANSWER_LINE.fullmatch(reply)
    if exact is not None:
        number = float(exact.group(1))
        return (1.0 if value is not None and number == value else 0.25), number
    numbers = [float(n) for n in NUMBER.findall(reply)]
    if value is not None and value in numbers:
        return 0.5, value
    return 0.0, numbers[-1] if numbers else None


async def _ask(llm: Any, attempted: Any, content: str) -> str:
    """One chat call under ``llm`` (a role's resource) through this attempt's proxy URL."""
    url = llm.get_base_url(attempted.rollout_id, attempted.attempt.attempt_id)
    client = openai_client(LLM(endpoint=url, model=llm.model), max_retries=0, timeout=900)
    params = {k: v for k, v in llm.sampling_parameters.items() if k in ("temperature", "max_tokens", "top_p")}
    reply = await client.chat.completions.create(
        model=llm.model, messages=[{"role": "user", "content": content}], **params
    )
    return reply.choices[0].message.content or ""


@rollout
async def two_roles(task: dict[str, Any], resources: dict[str, Any], attempted: Any) -> None:
    """The planner writes the expression, the solver computes it; each role rewarded for its own reply."""
    plan = await _ask(resources["planner"], attempted, PLAN_PROMPT.format(problem=task["problem"]))
    planner, expression = plan_reward(plan, task)
    plan_right = 1.0 if expression is not None and calculate(expression) == task["answer"] else 0.0
    expression = expression if expression is not None else task["expression"]
    solved = await _ask(resources["solver"], attempted, SOLVE_PROMPT.format(expression=expression))
    solver, number = solve_reward(solved, calculate(expression))
    task_reward = 1.0 if number is not None and number == task["answer"] else 0.0
    # plan_right (not trained on): the planner's expression has the right value, the strict measure of its reward
    emit_reward({"task": task_reward, "planner": planner, "solver": solver, "plan_right": plan_right}, primary="task")


async def validation_by_role(store: Any) -> dict[int, dict[str, float]]:
    """Each validation's mean reward per role (and ``task``), by the step it ran at, from the stored spans."""
    from agl_kernel.models import RolloutMode
    from agl_kernel.rewards import final_reward

    sums: dict[int, dict[str, list[float]]] = {}
    for row in (await store.query_rollouts(mode_in=[RolloutMode.VAL])).items:
        found = final_reward((await store.query_spans(row.rollout_id, "latest")).items)
        if found is None:
            continue
        by_name = sums.setdefault(int(row.metadata.get("grpo_validation", -1)), {})
        for name in ("task", *ROLES, "plan_right"):
            by_name.setdefault(name, []).append(found.values.get(name, 0.0))
    return {step: {k: sum(v) / len(v) for k, v in names.items()} for step, names in sorted(sums.items())}


async def train(args: argparse.Namespace, seed: int, console: Console) -> dict[str, Any]:
    from agl_algo_grpo import GRPO, keep_freed_memory
    from agl_kernel.trainer import Trainer

    if args.device == "cpu":
        keep_freed_memory()
    model = "agl_algo_grpo.testing:tiny_chat_model" if args.tiny else args.model
    grpo = GRPO(
        model,
        adapters={role: {"r": args.rank, "alpha": 2.0 * args.rank} for role in ROLES},
        steps=args.steps,
        batch_size=args.batch_size,
        group_size=args.group_size,
        max_tokens=args.max_tokens,
        learning_rate=args.lr,
        seed=seed,
        micro_batch_size=args.micro_batch_size,
        device=args.device,
        rollout_config=RolloutConfig(timeout_seconds=900, max_attempts=1),
        console=console,
    )
    trainer = Trainer(
        algorithm=grpo, n_runners=args.batch_size * args.group_size, store="memory", console=console, progress=False
    )
    started = time.monotonic()
    report = await trainer.fit_async(
        two_roles, make_tasks(args.train_tasks, seed), make_tasks(args.val_tasks, seed + 10_000)
    )
    elapsed = time.monotonic() - started
    validations = await validation_by_role(trainer.store)
    await trainer.store.close()
    history = report.history
    k = max(1, min(args.window, len(history) // 2))
    trend = {
        role: {
            "first": _mean([m.get(f"reward_{role}") for m in history[:k]]),
            "last": _mean([m.get(f"reward_{role}") for m in history[-k:]]),
        }
        for role in ROLES
    }
    return {
        "seed": seed,
        "seconds": elapsed,
        "steps": report.steps_done,
        "train_reward": trend,
        "validation": {str(step): values for step, values in validations.items()},
        "history": [
            {key: m[key] for key in ("reward_mean", "reward_planner", "reward_solver", "step_time_s") if key in m}
            for m in history
        ],
    }


def _mean(values: list[float | None]) -> float:
    found = [v for v in values if v is not None]
    return sum(found) / len(found) if found else float("nan")


def summarize(results: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="each role's reward: training (first → last steps) and validation (before → after)")
    columns = ("seed", "s", "planner train", "solver train", "planner val", "solver val", "task val", "plan right val")
    for column in columns:
        table.add_column(column, justify="right")
    for result in results:
        validation = list(result["validation"].values())
        before, after = (validation[0], validation[-1]) if validation else ({}, {})

        def change(a: float, b: float) -> str:
            return f"{a:.2f} → {b:.2f}"

        train = result["train_reward"]
        table.add_row(
            str(result["seed"]),
            f"{result['seconds']:.0f}",
            change(train["planner"]["first"], train["planner"]["last"]),
            change(train["solver"]["first"], train["solver"]["last"]),
            *(
                change(before.get(n, float("nan")), after.get(n, float("nan")))
                for n in ("planner", "solver", "task", "plan_right")
            ),
        )
    console.print(table)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="the base model (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model instead (seconds; for tests)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=4, help="tasks per step")
    parser.add_argument("--group-size", type=int, default=4, help="rollouts per task")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank of each adapter (alpha = 2 x rank)")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--micro-batch-size", type=int, default=16)
    parser.add_argument("--train-tasks", type=int, default=64)
    parser.add_argument("--val-tasks", type=int, default=16)
    parser.add_argument("--window", type=int, default=3, help="training steps averaged at each end of the run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    for name in ("httpx", "httpx2"):  # one INFO line per LLM call otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    console = Console()
    results = []
    for seed in args.seeds:
        console.rule(f"seed {seed}")
        results.append(asyncio.run(train(args, seed, console)))
        if args.json is not None:  # after each seed: a long run interrupted keeps what it measured
            args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "runs": results}, indent=2))
    summarize(results, console)
    return results


if __name__ == "__main__":
    main()
