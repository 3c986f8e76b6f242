"""The README's "Using it" Python example runs as written: ``Trainer(n_runners=8).dev(agent, tasks)`` and GRPO
selected by name with options, ``Trainer(algorithm="grpo", ..., options={"algorithm": {"model": ...}}).fit(...)``.

The block is read from README.md and run with only what the README leaves to the reader filled in: the agent's
``messages=[...]`` and its ``...`` line (a toy agent: one chat call, rewarded by the share of vowels in the reply),
the datasets, and for GRPO a tiny random model (``agl_algo_grpo.testing:tiny_chat_model``) instead of SmolLM2, one
short step instead of twelve. Both lines use the default store, ``./.agl/agl.db`` (in a temporary directory here);
before the ``dev`` line the store gets an LLM (a tiny model served by agl-model-server) for the agent to call, as a
user's store would have one (``Trainer(initial_resources=...)``, ``agl resources``)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("agl_algo_grpo")
pytest.importorskip("agl_model_server")
pytest.importorskip("agl_store_sqlite")
pytest.importorskip("openai")

README = Path(__file__).resolve().parents[1] / "README.md"
TINY_MODEL = "agl_algo_grpo.testing:tiny_chat_model"
TASKS = [{"question": "one two three"}, {"question": "hello world"}, {"question": "what is the answer?"}]

# What the README leaves to the reader, and what this test puts there (each must be found exactly once).
FILL_INS = [
    (r"messages=\[\.\.\.\]", 'messages=[{"role": "user", "content": task["question"]}]'),
    (r"(?m)^(\s+)\.\.\.(\s+#.*)?$", r'\1return reward(reply.choices[0].message.content or "")'),
    (r'"model": "smollm2"', f'"model": "{TINY_MODEL}"'),
    (r'"steps": \d+', '"steps": 1, "batch_size": 2, "group_size": 2, "max_tokens": 8, "console": False'),
]


def using_it_example(readme: str) -> str:
    """The first ``python`` block of the README's "Using it" section."""
    section = readme.split("## Using it", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found, "README.md's 'Using it' section has no python block"
    return found.group(1)


def filled_in(example: str) -> str:
    for pattern, replacement in FILL_INS:
        example, count = re.subn(pattern, replacement, example)
        assert count == 1, (
            f"README.md's 'Using it' example changed ({pattern!r} found {count} times): update "
            f"tests/test_readme_examples.py to it"
        )
    return example


def reward(text: str) -> float:
    letters = [c for c in text.lower() if c.isalpha()]
    return sum(c in "aeiou" for c in letters) / len(letters) if letters else 0.0


async def _publish_llm(endpoint: str) -> None:
    from agl_kernel.models import LLM
    from agl_kernel.store.defaults import make_store

    store = make_store(None)  # the default: ./.agl/agl.db
    try:
        await store.add_resources({"llm": LLM(endpoint=endpoint, model="tiny")})
    finally:
        await store.close()


async def _read_store() -> dict[str, Any]:
    from agl_kernel import semconv
    from agl_kernel.models import ProxyLLM, RolloutMode, RolloutStatus
    from agl_kernel.rewards import get_reward
    from agl_kernel.store.defaults import make_store

    store = make_store(None)
    try:
        rollouts = (await store.query_rollouts(mode_in=[RolloutMode.TRAIN])).items
        dev = [r for r in rollouts if "grpo_step" not in r.metadata]
        grpo = [r for r in rollouts if "grpo_step" in r.metadata]
        calls = []
        for rollout in grpo:
            spans = (await store.query_spans(rollout.rollout_id, "latest")).items
            calls += [s for s in spans if s.attributes.get(semconv.LLM_RESPONSE_TOKEN_IDS)]
        llm = (await store.get_resources(grpo[0].resources_id)).resources["main_llm"] if grpo else None
        return {
            "dev_ok": [r.status is RolloutStatus.SUCCEEDED for r in dev],
            "dev_rewards": [await get_reward(store, r.rollout_id) for r in dev],
            "grpo_ok": [r.status is RolloutStatus.SUCCEEDED for r in grpo],
            "grpo_calls": len(calls),
            "proxied": isinstance(llm, ProxyLLM),
        }
    finally:
        await store.close()


def test_the_using_it_example_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agl_algo_grpo.testing import tiny_chat_model
    from agl_model_server import ModelServer

    monkeypatch.chdir(tmp_path)
    code = filled_in(using_it_example(README.read_text(encoding="utf-8")))
    model, tokenizer = tiny_chat_model(seed=1)
    with ModelServer(model=model, tokenizer=tokenizer, model_name="tiny", default_max_tokens=8) as server:
        asyncio.run(_publish_llm(server.base_url))
        namespace: dict[str, Any] = {
            "__name__": "readme_example",
            "reward": reward,
            "tasks": TASKS,
            "train_tasks": TASKS[:2],
            "val_tasks": TASKS[2:],
        }
        exec(compile(code, "README.md (Using it)", "exec"), namespace)

    seen = asyncio.run(_read_store())
    assert seen["dev_ok"] == [True] * len(TASKS)  # the dev line ran the agent on every task, against the LLM
    assert all(r is not None for r in seen["dev_rewards"])
    assert seen["grpo_ok"] == [True] * 4  # one GRPO step: 2 tasks × 2 rollouts, sampled from the served policy
    assert seen["grpo_calls"] == 4 and seen["proxied"]  # through the LLM proxy, token ids recorded
    assert (tmp_path / ".agl" / "agl.db").is_file()
