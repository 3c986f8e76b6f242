"""Fixtures of the OtelTracer tests: a real SQLite store file, a real loopback OpenAI-compatible server, tracers
that are shut down after each test, and a runner helper."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agl_kernel.runner import LitAgentRunner
from agl_kernel.testing.openai_server import FakeOpenAIServer
from agl_tracer_otel import OtelTracer


@pytest.fixture
def openai_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def make_tracer() -> Iterator[Any]:
    made: list[OtelTracer] = []

    def make(**options: Any) -> OtelTracer:
        tracer = OtelTracer(**options)
        made.append(tracer)
        return tracer

    yield make
    for tracer in made:
        tracer.shutdown()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "agl.db"


@pytest.fixture
def serve() -> Any:
    """``await serve(store, agent, inputs, tracer=..., runners=1)``: run rollouts to their end; their ids."""
    return run_rollouts


async def run_rollouts(store: Any, agent: Any, inputs: list[Any], *, tracer: Any, runners: int = 1) -> list[str]:
    """Enqueue ``inputs``, serve them with ``runners`` LitAgentRunners using ``tracer``; the rollout ids."""
    rollouts = [await store.enqueue_rollout(task) for task in inputs]
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(
            LitAgentRunner(worker_id=f"w{i}", tracer=tracer, wait_seconds=0.05, heartbeat_interval=1.0).run(
                store, agent, stop=stop
            )
        )
        for i in range(runners)
    ]
    try:
        ended = await store.wait_for_rollouts([r.rollout_id for r in rollouts], timeout=60)
        assert len(ended) == len(rollouts), "rollouts did not end in time"
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    return [r.rollout_id for r in rollouts]
