"""Many agents at once in one process: every span reaches the right rollout and attempt, sequence ids strictly
increase in each attempt, nothing is lost and nothing crosses between rollouts."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import openai

from agl_kernel import semconv
from agl_kernel.emit import emit_reward, operation
from agl_store_sqlite import SqliteLightningStore

STEPS = 12


def check_rollouts(spans_by_rollout: dict[str, list[Any]], tasks: dict[str, int], llm_calls: int) -> None:
    for rollout_id, spans in spans_by_rollout.items():
        task = tasks[rollout_id]
        assert {s.rollout_id for s in spans} == {rollout_id}
        assert len({s.attempt_id for s in spans}) == 1
        assert [s.sequence_id for s in spans] == list(range(1, len(spans) + 1))  # strictly increasing, no gaps
        steps = [s for s in spans if s.attributes.get(semconv.OPERATION_NAME) == "step"]
        assert sorted(json.loads(s.attributes[semconv.OPERATION_INPUT])["task"] for s in steps) == [task] * STEPS
        calls = [s for s in spans if s.attributes.get(semconv.GEN_AI_OPERATION_NAME) == "chat"]
        assert len(calls) == llm_calls
        assert all(f"task {task}" in s.attributes[semconv.LLM_RESPONSE_TEXT] for s in calls)
        reward = [s for s in spans if s.name == semconv.REWARD_SPAN]
        assert [r.attributes[semconv.REWARD_VALUE] for r in reward] == [float(task)]
        assert len({s.trace_id for s in spans}) == 1  # one trace per attempt


def test_32_concurrent_async_agents(openai_server, make_tracer, serve, db):
    @operation("step")
    async def step(task: int, i: int) -> int:
        await asyncio.sleep(random.random() / 200)
        return i

    async def agent(task: int, resources: Any) -> None:
        client = openai.AsyncOpenAI(base_url=openai_server.base_url, api_key="test")
        for i in range(STEPS):
            await step(task, i)
            if i % 6 == 0:
                await client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"task {task}"}])
        emit_reward(float(task))

    async def main() -> None:
        async with SqliteLightningStore(db) as store:
            tracer = make_tracer()
            ids = await serve(store, agent, list(range(32)), tracer=tracer, runners=32)
            tasks = {rollout_id: n for n, rollout_id in enumerate(ids)}
            spans = {rollout_id: (await store.query_spans(rollout_id)).items for rollout_id in ids}
            check_rollouts(spans, tasks, llm_calls=STEPS // 6)
            assert sum(len(s) for s in spans.values()) == 32 * (STEPS + STEPS // 6 + 2)

    asyncio.run(main())


def test_8_concurrent_sync_agents_in_threads(openai_server, make_tracer, serve, db):
    @operation("step")
    def step(task: int, i: int) -> int:
        return i

    def agent(task: int, resources: Any) -> None:
        client = openai.OpenAI(base_url=openai_server.base_url, api_key="test")
        for i in range(STEPS):
            step(task, i)
            if i % 6 == 0:
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"task {task}"}])
        emit_reward(float(task))

    async def main() -> None:
        async with SqliteLightningStore(db) as store:
            ids = await serve(store, agent, list(range(16)), tracer=make_tracer(), runners=8)
            tasks = {rollout_id: n for n, rollout_id in enumerate(ids)}
            check_rollouts({r: (await store.query_spans(r)).items for r in ids}, tasks, llm_calls=STEPS // 6)

    asyncio.run(main())
