"""A toy agent and tasks for GRPO selected by name (``Trainer(algorithm="grpo", ...)``, ``agl train``): one chat
call through the rollout's LLM (the proxy GRPO serves the policy behind), rewarded by the share of vowels in the
reply, which a tiny random model's samples vary in. Importable by path (``.../grpo_toy_agent.py:agent``)."""

from __future__ import annotations

from typing import Any

from agl_kernel.agent import llm_rollout, openai_client

TINY_MODEL = "agl_algo_grpo.testing:tiny_chat_model"
"""The ``model`` option that names a tiny random model (made on the spot, offline)."""

TASKS = [{"question": "one two three"}, {"question": "hello world"}, {"question": "what is the answer?"}]


def reward(text: str) -> float:
    letters = [c for c in text.lower() if c.isalpha()]
    return sum(c in "aeiou" for c in letters) / len(letters) if letters else 0.0


@llm_rollout
async def agent(task: dict[str, Any], llm: Any) -> float:
    client = openai_client(llm, max_retries=0, timeout=120)
    params = {k: v for k, v in llm.sampling_parameters.items() if k in ("temperature", "max_tokens")}
    messages = [{"role": "user", "content": task["question"]}]
    response = await client.chat.completions.create(model=llm.model, messages=messages, **params)
    return reward(response.choices[0].message.content or "")


def tasks() -> list[dict[str, Any]]:
    return list(TASKS)
