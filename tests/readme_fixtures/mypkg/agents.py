"""The package the README's commands name (``mypkg.agents:agent``, ``:tasks``, ``:prompts``), for
tests/test_readme_commands.py: four arithmetic tasks, the last one failing (a ZeroDivisionError to inspect with
``agl rollouts show`` / ``why``); ``agent``, which asks the run's LLM when it has one (``agl dev --llm``) and
renders its prompt (APO's ``--resources mypkg.agents:prompts``); and ``llm_agent`` for GRPO (run.toml), which
serves a tiny model behind its LLM proxy."""

from __future__ import annotations

from typing import Any

from agl_kernel.agent import llm_rollout, openai_client, rollout
from agl_kernel.models import LLM, PromptTemplate, ProxyLLM

tasks = [
    {"question": "2 + 3", "answer": 5},
    {"question": "7 - 4", "answer": 3},
    {"question": "6 * 7", "answer": 42},
    {"question": "1 / 0", "answer": 0},
]

prompts = {"prompt": PromptTemplate(template="Compute {question}.")}
"""The seed prompt APO starts from."""

OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}


def solve(question: str) -> float:
    a, op, b = question.split()
    return OPERATIONS[op](int(a), int(b))


@rollout
async def agent(task: dict[str, Any], resources: dict[str, Any]) -> float:
    """Reward 1.0 for the right answer, computed here; the run's prompt is rendered and its LLM (a plain endpoint)
    asked first, when the run has them."""
    prompt = resources.get("prompt")
    text = prompt.format(question=task["question"]) if isinstance(prompt, PromptTemplate) else task["question"]
    llm = next((r for r in resources.values() if isinstance(r, LLM) and not isinstance(r, ProxyLLM)), None)
    if llm is not None:
        await openai_client(llm).chat.completions.create(
            model=llm.model, messages=[{"role": "user", "content": text}], max_tokens=4
        )
    return float(solve(task["question"]) == task["answer"])


@llm_rollout
async def llm_agent(task: dict[str, Any], llm: Any) -> float:
    """Ask the run's LLM; reward 1.0 when the reply holds the answer."""
    reply = await openai_client(llm).chat.completions.create(
        model=llm.model, messages=[{"role": "user", "content": f"What is {task['question']}?"}], max_tokens=8
    )
    return float(str(task["answer"]) in (reply.choices[0].message.content or ""))
