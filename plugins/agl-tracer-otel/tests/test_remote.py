"""OtelTracer with a remote store: spans go over OTLP/HTTP to a real store server (``/v1/traces``) on loopback,
from agents served through the HTTP client."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

pytest.importorskip("litestar", reason="needs the store server: pip install 'agl-kernel[server]'")

from agl_kernel import semconv  # noqa: E402
from agl_kernel.adapters import TripletAdapter  # noqa: E402
from agl_kernel.client import LightningStoreClient  # noqa: E402
from agl_kernel.emit import emit_reward, last_llm_call, operation  # noqa: E402
from agl_kernel.server import ServerThread, create_app  # noqa: E402
from agl_store_sqlite import SqliteLightningStore  # noqa: E402


def test_spans_reach_a_remote_store_over_otlp(openai_server, make_tracer, serve, db, monkeypatch):
    monkeypatch.setenv("AGL_STORE_TOKEN", "s3cret")  # the client and the tracer's exporter both use it

    async def agent(task: int, resources: Any) -> None:
        client = openai.AsyncOpenAI(base_url=openai_server.base_url, api_key="test")
        async with operation("solve", agent="solver"):
            stream = await client.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": f"task {task}"}],
                stream=True,
                extra_body={"return_token_ids": True},
                logprobs=True,
            )
            async for _ in stream:
                pass
        emit_reward(0.5, step=last_llm_call())
        emit_reward(float(task))

    async def main() -> None:
        server = await asyncio.to_thread(
            ServerThread(create_app(SqliteLightningStore(db), token="s3cret", plugins=False)).start
        )
        try:
            async with LightningStoreClient(server.url) as store:
                tracer = make_tracer()
                ids = await serve(store, agent, list(range(8)), tracer=tracer, runners=8)
                assert tracer.writer._sinks[0].endpoint == f"{server.url}/v1/traces"
                for task, rollout_id in enumerate(ids):
                    spans = (await store.query_spans(rollout_id)).items
                    assert [s.sequence_id for s in spans] == list(range(1, len(spans) + 1))
                    assert sorted(s.name for s in spans) == sorted(
                        ["chat m", "solve", semconv.REWARD_SPAN, semconv.REWARD_SPAN, semconv.ATTEMPT_SPAN]
                    )
                    [triplet] = TripletAdapter(agent_match="solver").adapt(spans).triplets
                    call = next(
                        c for c in openai_server.calls if c["request"]["messages"][0]["content"] == f"task {task}"
                    )
                    assert triplet.prompt_token_ids == call["prompt_token_ids"]
                    assert triplet.response_token_ids == call["token_ids"]
                    assert (triplet.step_reward, triplet.final_reward) == (0.5, float(task))
        finally:
            await asyncio.to_thread(server.stop)

    asyncio.run(main())
