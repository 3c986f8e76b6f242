"""Smoke use of agl-tracer-otel installed alone with the kernel (``tools/check_plugins_alone.py`` runs it with a
fresh venv's python; it needs nothing else, not even pytest): the `otel` tracer, loaded by name, records an
operation, a span of the OpenTelemetry API and a reward inside an attempt, and writes them to the kernel's
in-memory store."""

from __future__ import annotations

import asyncio
import sys

from opentelemetry import trace

from agl_kernel import semconv
from agl_kernel.emit import emit_reward, operation
from agl_kernel.plugins import create_component
from agl_kernel.store.memory import InMemoryLightningStore
from agl_tracer_otel import OtelTracer


def check(condition: object, what: str) -> None:
    if not condition:
        sys.exit(f"smoke failed: {what}")


async def main() -> None:
    tracer = create_component("tracers", "otel", instrument=())
    check(isinstance(tracer, OtelTracer), f"the `otel` tracer is a {type(tracer).__name__}")
    try:
        async with InMemoryLightningStore() as store:
            attempted = await store.start_rollout({"question": "2+2"})
            rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
            with tracer.trace_context(rollout_id=rid, attempt_id=aid, store=store):
                with operation("solve", agent="smoke"), trace.get_tracer("smoke").start_as_current_span("user span"):
                    pass
                emit_reward(1.0)
            await tracer.flush()
            spans = (await store.query_spans(rid)).items
    finally:
        tracer.shutdown()
    names = [s.name for s in spans]
    check(names == ["user span", "solve", semconv.REWARD_SPAN, semconv.ATTEMPT_SPAN], f"spans stored: {names}")
    check([s.sequence_id for s in spans] == [1, 2, 3, 4], "the sequence ids are not 1..4")
    check(len({s.trace_id for s in spans}) == 1, "the spans are not in one trace")
    print(f"agl-tracer-otel smoke: ok ({len(spans)} spans of rollout {rid}: {', '.join(names)})")


if __name__ == "__main__":
    asyncio.run(main())
