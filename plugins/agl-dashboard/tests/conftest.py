"""A store filled by real runs, for the dashboard's API and browser tests (made once per test session):

- the example agent (``contrib/calc_agent``) through ``Trainer.dev`` with the OpenTelemetry tracer, 12 tasks of
  which one divides by zero (a failed rollout), then 4 more after a new version of its prompt resource;
- APO (``agl_algo_apo``) optimizing a one-template agent against a scripted OpenAI-compatible server on loopback
  (the agent's model answers right when its prompt asks for care; the optimizer's edits add that, or drop the
  prompt's variable and are rejected): its rounds and candidates;
- the main job's recipe (``contrib/recipes/grpo_calculator.py --tiny``): GRPO with a tiny real torch model, its
  LLM calls through the proxy, its metrics per step and validation (the newest training run).
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


def _apo_server_reply(request: dict) -> str:
    import re

    text = "\n".join(m.get("content") or "" for m in request.get("messages", []))
    if request.get("model") == "optimizer":
        if "The runs that went worst" in text:
            return "The answers are off by one: ask for care."
        parent = re.search(r"<prompt>\n(.*?)\n</prompt>", text, re.DOTALL).group(1)  # type: ignore[union-attr]
        if "proposal 1 of" in text:
            return f"<prompt>Be CAREFUL. {parent}</prompt>"
        return "<prompt>Add the numbers.</prompt>"  # drops {question}: rejected
    a, b = (int(x) for x in re.search(r"(\d+)\+(\d+)", text).groups())  # type: ignore[union-attr]
    return str(a + b if "CAREFUL" in text or a == 1 else a + b + 1)


def run_apo(db: Path, workdir: Path) -> None:
    import openai

    from agl_algo_apo import APO
    from agl_kernel.agent import rollout
    from agl_kernel.models import LLM, PromptTemplate
    from agl_kernel.testing.openai_server import FakeOpenAIServer
    from agl_kernel.trainer import Trainer

    @rollout
    async def adder(task: dict, resources: dict) -> float:
        client = openai.AsyncOpenAI(base_url=resources["llm"].endpoint, api_key="-", max_retries=0)
        try:
            content = resources["instructions"].format(question=f"{task['a']}+{task['b']}")
            reply = await client.chat.completions.create(model="agent", messages=[{"role": "user", "content": content}])
        finally:
            await client.close()
        return float(reply.choices[0].message.content == str(task["a"] + task["b"]))

    tasks = [{"a": a, "b": 2} for a in range(1, 5)]
    with FakeOpenAIServer(_apo_server_reply) as server:
        apo = APO(
            rounds=2,
            beam_width=2,
            branch_factor=2,
            train_batch_size=2,
            critique_model="optimizer",
            optimizer_base_url=server.base_url,
            output_path=str(workdir / "apo.json"),
            console=False,
        )
        resources = {
            "instructions": PromptTemplate(template="Compute {question}."),
            "llm": LLM(endpoint=server.base_url, model="agent"),
        }
        with Trainer(
            algorithm=apo, n_runners=2, store_path=db, tracer="otel", initial_resources=resources, progress=False
        ) as trainer:
            trainer.fit(adder, tasks, tasks)


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
    if importlib.util.find_spec("agl_algo_apo"):
        run_apo(db, workdir)
    if importlib.util.find_spec("agl_algo_grpo") and importlib.util.find_spec("agl_model_server"):
        run_grpo(db, workdir)
    return db
