"""Smoke use of agl-tracer-agentops installed alone with the kernel (``tools/check_plugins_alone.py`` runs it with a
fresh venv's python; no pytest, no network): the ``agentops`` tracer, loaded by name, records an AgentOps session
with an ``@agent`` and a ``@tool`` inside an attempt, under the attempt's root span, into the in-memory store."""

from __future__ import annotations

import asyncio
import sys

import agentops
from agentops import agent, tool

from agl_kernel import semconv
from agl_kernel.plugins import create_component
from agl_kernel.store.memory import InMemoryLightningStore


def check(condition: object, what: str) -> None:
    if not condition:
        sys.exit(f"smoke failed: {what}")


@tool
def add(a: int, b: int) -> int:
    return a + b


@agent(name="adder")
class Adder:
    def run(self, a: int, b: int) -> int:
        return add(a, b)


async def main() -> None:
    tracer = create_component("tracers", "agentops")
    check(type(tracer).__name__ == "AgentOpsTracer", f"the `agentops` tracer is a {type(tracer).__name__}")
    try:
        async with InMemoryLightningStore() as store:
            attempted = await store.start_rollout({"a": 2, "b": 2})
            rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
            with tracer.trace_context(rollout_id=rid, attempt_id=aid, store=store), agentops.start_trace("smoke"):
                check(Adder().run(2, 2) == 4, "the agent's answer")
            await tracer.flush()
            spans = (await store.query_spans(rid)).items
    finally:
        tracer.shutdown()
    names = [s.name for s in spans]
    check(names == ["add.tool", "adder.agent", "smoke.session", semconv.ATTEMPT_SPAN], f"spans stored: {names}")
    check(len({s.trace_id for s in spans}) == 1, "the spans are not in one trace")
    print(f"agl-tracer-agentops smoke: ok ({len(spans)} spans of rollout {rid}: {', '.join(names)})")


if __name__ == "__main__":
    asyncio.run(main())
