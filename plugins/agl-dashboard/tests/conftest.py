"""A store filled by real runs, for the dashboard's API and browser tests (made once per test session):

- the example agent (``contrib/calc_agent``) through ``Trainer.dev`` with the OpenTelemetry tracer, 12 tasks of
  which one divides by zero (a failed rollout), then 4 more after a new version of its prompt resource;
- the main job's recipe (``contrib/recipes/grpo_calculator.py --tiny``): GRPO with a tiny real torch model, its
  LLM calls through the proxy, its metrics per step and validation.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
CALC = REPO / "contrib" / "calc_agent" / "calc_agent.py"
RECIPES = REPO / "contrib" / "recipes"
GRPO_STEPS = 3
PROMPT_ID = "calc-prompt"


def _import(path: Path):
    sys.path.insert(0, str(path.parent))
    try:
        return importlib.import_module(path.stem)
    finally:
        sys.path.remove(str(path.parent))


def run_calc_agent(db: Path) -> None:
    from agl_kernel.models import PromptTemplate
    from agl_kernel.trainer import Trainer

    calc_agent = _import(CALC)
    tasks = calc_agent.make_dataset(16, seed=1, with_errors=True)
    with Trainer(n_runners=2, store_path=db, tracer="otel", progress=False) as trainer:
        asyncio.run(trainer.store.update_resources(PROMPT_ID, {"decimals": PromptTemplate(template="2")}))
        trainer.dev(f"{CALC}:calc_agent", tasks[:12])
        asyncio.run(trainer.store.update_resources(PROMPT_ID, {"decimals": PromptTemplate(template="0")}))
        trainer.dev(f"{CALC}:calc_agent", tasks[12:])


def run_grpo(db: Path, workdir: Path) -> None:
    recipe = _import(RECIPES / "grpo_calculator.py")
    recipe.main(
        ["--tiny", "--steps", str(GRPO_STEPS), "--batch-size", "1", "--group-size", "2", "--val-tasks", "2",
         "--val-every", "2", "--runners", "2", "--max-tokens", "6", "--train-tasks", "4",
         "--path", str(db), "--checkpoint-dir", str(workdir / "checkpoints")]
    )  # fmt: skip


@pytest.fixture(scope="session")
def filled_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The path of a SQLite store written by the real runs above."""
    pytest.importorskip("agl_store_sqlite")
    workdir = tmp_path_factory.mktemp("dashboard-run")
    db = workdir / "agl.db"
    run_calc_agent(db)
    if importlib.util.find_spec("agl_algo_grpo") and importlib.util.find_spec("agl_model_server"):
        run_grpo(db, workdir)
    return db
