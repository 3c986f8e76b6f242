"""OtelTracer's mechanics on real stores: emitters as OpenTelemetry spans, flush, threads, backpressure, bad
attempts, the global provider, hooks and shutdown."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest
from opentelemetry import trace

from agl_kernel import semconv
from agl_kernel.emit import emit_message, emit_reward, operation
from agl_kernel.plugins import create_component, get_plugin_manager, hookimpl, reset_plugin_manager
from agl_kernel.store.memory import InMemoryLightningStore
from agl_store_sqlite import SqliteLightningStore
from agl_tracer_otel import OtelTracer


async def traced(tracer: Any, store: Any, body: Any) -> list[Any]:
    attempted = await store.start_rollout("t")
    with tracer.trace_context(rollout_id=attempted.rollout_id, attempt_id=attempted.attempt.attempt_id, store=store):
        result = body()
        if asyncio.iscoroutine(result):
            await result
    await tracer.flush()
    return (await store.query_spans(attempted.rollout_id)).items


def test_registered_as_otel_and_bad_options_are_refused(make_tracer):
    tracer = create_component("tracers", "otel", instrument=(), root_span=False)
    try:
        assert isinstance(tracer, OtelTracer) and tracer.instrumented == {}
    finally:
        tracer.shutdown()
    with pytest.raises(ValueError, match="the instrumentations are: openai"):
        OtelTracer(instrument=["langchain"])
    with pytest.raises(ValueError, match="max_queue >= max_batch"):
        OtelTracer(max_batch=10, max_queue=5)


def test_emitters_become_otel_spans_with_parents_in_end_order(make_tracer, db):
    def body():
        with operation("plan", agent="planner") as op:
            emit_message("inside")
            with trace.get_tracer("user.code").start_as_current_span("user span"):  # the global provider
                pass
        emit_reward(0.5, step=op)
        emit_reward(1.0)

    async def main():
        async with SqliteLightningStore(db) as store:
            return await traced(make_tracer(), store, body)

    spans = asyncio.run(main())
    names = [s.name for s in spans]
    assert names == [
        semconv.MESSAGE_SPAN,
        "user span",
        "plan",
        semconv.REWARD_SPAN,
        semconv.REWARD_SPAN,
        semconv.ATTEMPT_SPAN,
    ]
    assert [s.sequence_id for s in spans] == list(range(1, 7))
    by_name = {s.name: s for s in spans}
    root, plan = by_name[semconv.ATTEMPT_SPAN], by_name["plan"]
    assert {s.trace_id for s in spans} == {root.trace_id} and root.parent_id is None
    assert plan.parent_id == root.span_id and plan.attributes[semconv.GEN_AI_AGENT_NAME] == "planner"
    assert by_name["user span"].parent_id == plan.span_id and by_name[semconv.MESSAGE_SPAN].parent_id == plan.span_id
    assert spans[3].attributes[semconv.REWARD_STEP_SPAN_ID] == plan.span_id
    assert all(semconv.ROLLOUT_ID not in s.attributes for s in spans)  # the span's fields say it
    assert plan.resource == {"service.name": "agl-agent"} and plan.status.status_code == "UNSET"
    assert plan.start_time <= plan.end_time and plan.end_time > time.time() - 60


def test_flush_stores_everything_without_waiting_for_the_schedule(make_tracer):
    tracer = make_tracer(schedule_delay=30.0, root_span=False)

    async def main():
        async with InMemoryLightningStore() as store:
            started = time.monotonic()
            spans = await traced(tracer, store, lambda: [emit_message(str(i)) for i in range(100)])
            return spans, time.monotonic() - started

    spans, took = asyncio.run(main())
    assert [s.attributes[semconv.MESSAGE_BODY] for s in spans] == [str(i) for i in range(100)]
    assert took < 5


def test_a_producer_far_ahead_of_the_store_waits_instead_of_losing_spans(make_tracer, db):
    tracer = make_tracer(max_batch=8, max_queue=16, root_span=False)
    otel = tracer.otel_tracer

    def body():
        for i in range(2000):
            otel.start_span(f"s{i}").end()

    async def main():
        async with SqliteLightningStore(db) as store:
            return await traced(tracer, store, body)

    spans = asyncio.run(main())
    assert [s.name for s in spans] == [f"s{i}" for i in range(2000)]
    assert [s.sequence_id for s in spans] == list(range(1, 2001))


def test_threads_of_a_sync_agent_are_recorded(make_tracer, serve, db):
    def agent(task, resources):
        def work(n):
            with operation(f"thread {n}"):
                time.sleep(0.01)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]  # plain threads: no context
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return 1.0

    async def main():
        async with SqliteLightningStore(db) as store:
            [rollout_id] = await serve(store, agent, ["x"], tracer=make_tracer())
            return (await store.query_spans(rollout_id)).items

    names = sorted(s.name for s in asyncio.run(main()))
    assert names == sorted([semconv.ATTEMPT_SPAN, semconv.REWARD_SPAN] + [f"thread {n}" for n in range(4)])


@pytest.mark.parametrize("root_span", [True, False])
def test_the_runners_reward_and_exception_spans_sit_under_the_attempt_root(make_tracer, serve, db, root_span):
    """What the agent returns (a reward) or raises (an exception span) is recorded by the runner, outside the
    tracer; it goes under the attempt's ``agl.attempt`` span, in its trace, so a trace view nests it there."""

    def agent(task, resources):
        with operation("step"):
            pass
        if task == "fail":
            raise ValueError("bad task")
        return 0.5

    async def main():
        async with SqliteLightningStore(db) as store:
            ids = await serve(store, agent, ["ok", "fail"], tracer=make_tracer(root_span=root_span))
            return [(await store.query_spans(rollout_id)).items for rollout_id in ids]

    for spans, recorded in zip(asyncio.run(main()), (semconv.REWARD_SPAN, semconv.EXCEPTION_SPAN)):
        by_name = {s.name: s for s in spans}
        if root_span:
            root = by_name[semconv.ATTEMPT_SPAN]
            assert by_name["step"].parent_id == root.span_id
            assert by_name[recorded].parent_id == root.span_id and by_name[recorded].trace_id == root.trace_id
        else:
            assert semconv.ATTEMPT_SPAN not in by_name and by_name[recorded].parent_id is None


def test_spans_of_a_vanished_attempt_are_reported_and_the_others_kept(make_tracer, caplog):
    tracer = make_tracer(root_span=False, schedule_delay=30.0)

    async def main():
        async with InMemoryLightningStore() as store:
            good = await store.start_rollout("good")
            with tracer.trace_context(rollout_id="ro-gone", attempt_id="at-gone", store=store):
                emit_message("lost")
            with tracer.trace_context(rollout_id=good.rollout_id, attempt_id=good.attempt.attempt_id, store=store):
                emit_message("kept")
            await tracer.flush()  # one batch with both attempts' spans
            return (await store.query_spans(good.rollout_id)).items

    with caplog.at_level(logging.WARNING, logger="agl_tracer_otel"):
        kept = asyncio.run(main())
    assert [s.attributes[semconv.MESSAGE_BODY] for s in kept] == ["kept"]
    assert "could not store 1 spans of rollout ro-gone attempt at-gone" in caplog.text


class _Hooks:
    def __init__(self) -> None:
        self.ended: list[Any] = []

    @hookimpl
    def agl_on_trace_end(self, rollout_id, attempt_id, tracer, spans):
        self.ended.append((rollout_id, [s.name for s in spans]))


def test_the_trace_end_hook_gets_the_attempts_spans(make_tracer):
    hooks = _Hooks()
    get_plugin_manager().register(hooks)
    try:

        async def main():
            async with InMemoryLightningStore() as store:
                return await traced(make_tracer(), store, lambda: emit_message("x"))

        spans = asyncio.run(main())
    finally:
        reset_plugin_manager()
    assert hooks.ended == [(spans[0].rollout_id, [semconv.MESSAGE_SPAN, semconv.ATTEMPT_SPAN])]


def test_after_shutdown_nothing_is_recorded_and_flush_returns(make_tracer):
    tracer = make_tracer()
    tracer.shutdown()

    async def main():
        async with InMemoryLightningStore() as store:
            return await asyncio.wait_for(traced(tracer, store, lambda: emit_message("x")), 5)

    assert asyncio.run(main()) == []


def test_an_applications_own_provider_keeps_its_exporters_and_agl_gets_its_spans(tmp_path):
    """In a fresh process: the application set an SDK provider before agl; agl attaches to it."""
    script = textwrap.dedent(
        """
        import asyncio
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from agl_kernel.store.memory import InMemoryLightningStore
        from agl_tracer_otel import OtelTracer

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        app = trace.get_tracer("app")

        async def main():
            tracer = OtelTracer(root_span=False)
            assert tracer.global_mode == "attached", tracer.global_mode
            async with InMemoryLightningStore() as store:
                attempted = await store.start_rollout("t")
                app.start_span("before").end()
                ids = {"rollout_id": attempted.rollout_id, "attempt_id": attempted.attempt.attempt_id}
                with tracer.trace_context(**ids, store=store):
                    app.start_span("inside").end()
                await tracer.flush()
                stored = [s.name for s in (await store.query_spans(attempted.rollout_id)).items]
            exported = {s.name: dict(s.attributes) for s in exporter.get_finished_spans()}
            assert stored == ["inside"], stored
            assert exported["inside"]["agl.rollout_id"] == attempted.rollout_id, exported
            assert "agl.rollout_id" not in exported["before"], exported
            print("ok")

        asyncio.run(main())
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_openai_is_instrumented_when_first_imported_not_before():
    script = textwrap.dedent(
        """
        import sys
        from agl_tracer_otel import OtelTracer
        tracer = OtelTracer()
        assert "openai" not in sys.modules and tracer.instrumented == {"openai": "on import"}, tracer.instrumented
        import openai
        assert hasattr(openai.OpenAI(api_key="x").chat.completions.create, "__wrapped__")
        assert OtelTracer().instrumented == {"openai": "instrumented"}
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
