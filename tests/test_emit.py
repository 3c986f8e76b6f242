"""Emitters (agl_kernel.emit) through the kernel's no-op tracer: spans written straight to real stores, rewards
read back, operations nested, the runner and the trace hooks."""

from __future__ import annotations

import asyncio
import json
import threading
import warnings
from typing import Any

import pytest

from agl_kernel import semconv
from agl_kernel.emit import (
    NoTraceContextWarning,
    emit_exception,
    emit_message,
    emit_object,
    emit_reward,
    get_reward,
    last_llm_call,
    operation,
)
from agl_kernel.plugins import get_plugin_manager, hookimpl, reset_plugin_manager
from agl_kernel.rewards import final_reward, read_rewards, step_rewards
from agl_kernel.runner import LitAgentRunner
from agl_kernel.store.memory import InMemoryLightningStore
from agl_kernel.tracer import NoOpTracer, current_scope


def run(coro):
    return asyncio.run(coro)


async def traced(body, *, tracer=None, store=None):
    """Run ``body()`` (sync) inside a trace context of a fresh rollout; the attempt's spans, in order."""
    own = store is None
    store = store or InMemoryLightningStore()
    tracer = tracer or NoOpTracer()
    try:
        attempted = await store.start_rollout("task")
        with tracer.trace_context(
            rollout_id=attempted.rollout_id, attempt_id=attempted.attempt.attempt_id, store=store
        ):
            result = body()
            if asyncio.iscoroutine(result):
                await result
        await tracer.flush()
        return (await store.query_spans(attempted.rollout_id)).items
    finally:
        if own:
            await store.close()


# ------------------------------------------------------------------------------------------------ rewards


def test_plain_and_named_rewards_are_spans_the_runner_and_algorithms_read():
    def body():
        emit_reward(0.25)
        emit_reward({"accuracy": 1.0, "brevity": 0.5}, primary="accuracy")

    plain, named = run(traced(body))
    assert plain.name == named.name == semconv.REWARD_SPAN
    assert plain.attributes == {semconv.REWARD_VALUE: 0.25}
    assert named.attributes[semconv.REWARD_VALUE] == 1.0
    assert named.attributes[semconv.REWARD_PRIMARY] == "accuracy"
    assert named.attributes[semconv.REWARD_NAMED_PREFIX + "brevity"] == 0.5
    final = final_reward([plain, named])
    assert final is not None and final.value == 1.0 and final.values == {"accuracy": 1.0, "brevity": 0.5}


def test_a_dict_of_one_needs_no_primary_and_ints_become_floats():
    [span] = run(traced(lambda: emit_reward({"score": 3})))
    assert span.attributes[semconv.REWARD_VALUE] == 3.0 and span.attributes[semconv.REWARD_PRIMARY] == "score"


@pytest.mark.parametrize(
    ("value", "kwargs", "error", "match"),
    [
        ({"a": 1.0, "b": 2.0}, {}, ValueError, "primary="),
        ({"a": 1.0}, {"primary": "b"}, ValueError, "not one of the rewards given: a"),
        ({}, {}, ValueError, "empty dict"),
        (1.0, {"primary": "a"}, TypeError, "single value needs none"),
        (True, {}, TypeError, "must be a number, not bool"),
        ("1.0", {}, TypeError, "must be a number, not str"),
        (float("nan"), {}, ValueError, "finite"),
        ({"a": float("inf")}, {}, ValueError, "finite"),
        (1.0, {"step": "not-a-span-id"}, ValueError, "16 lowercase hex digits"),
    ],
)
def test_bad_rewards_raise_even_outside_a_trace_context(value, kwargs, error, match):
    with pytest.raises(error, match=match):
        emit_reward(value, **kwargs)


def test_per_step_rewards_name_their_step_and_are_not_the_final_reward():
    def body():
        with operation("plan") as op:
            pass
        emit_reward(0.5, step=op)
        emit_reward(2.0)
        emit_reward(0.1, step=op.span_id)

    spans = run(traced(body))
    plan = next(s for s in spans if s.name == "plan")
    assert [r.step_span_id for r in read_rewards(spans)] == [plan.span_id, None, plan.span_id]
    assert [r.value for r in step_rewards(spans)[plan.span_id]] == [0.5, 0.1]
    assert final_reward(spans).value == 2.0  # the last reward that is not for a step


def test_get_reward_reads_the_final_reward_of_the_newest_attempt():
    async def main():
        async with InMemoryLightningStore() as store:

            def body():
                assert last_llm_call() is None  # no instrumented client ran
                emit_reward(0.3)
                emit_reward(0.7)
                emit_reward(9.0, step="0123456789abcdef")

            spans = await traced(body, store=store)
            assert await get_reward(store, spans[0].rollout_id) == 0.7
            attempted = await store.start_rollout("no reward")
            assert await get_reward(store, attempted.rollout_id) is None

    run(main())


# ------------------------------------------------------------------------------------------------ other emitters


def test_messages_objects_and_exceptions():
    class Point:
        def __repr__(self) -> str:
            return "Point(1, 2)"

    def body():
        emit_message("thinking", attributes={"step": 1})
        emit_object({"a": [1, 2], "p": Point()})
        try:
            raise KeyError("missing")
        except KeyError as err:
            emit_exception(err)

    message, obj, exception = run(traced(body))
    assert message.name == semconv.MESSAGE_SPAN
    assert message.attributes == {"step": 1, semconv.MESSAGE_BODY: "thinking"}
    assert json.loads(obj.attributes[semconv.OBJECT_JSON]) == {"a": [1, 2], "p": "Point(1, 2)"}
    assert obj.attributes[semconv.OBJECT_TYPE] == "dict"
    assert exception.name == semconv.EXCEPTION_SPAN and exception.status.status_code == "ERROR"
    assert exception.attributes[semconv.EXCEPTION_TYPE] == "KeyError"
    assert "raise KeyError" in exception.attributes[semconv.EXCEPTION_STACKTRACE]
    with pytest.raises(TypeError, match="takes a str"):
        emit_message(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="takes an exception"):
        emit_exception("boom")  # type: ignore[arg-type]


def test_outside_a_trace_context_emitters_warn_once_and_record_nothing(monkeypatch):
    from agl_kernel import emit

    monkeypatch.setattr(emit, "_warned", set())
    with pytest.warns(NoTraceContextWarning, match="emit_reward.. was called outside any agl trace context"):
        assert emit_reward(1.0) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert emit_reward(1.0) is None  # once per emitter

    @operation
    def double(x):
        return 2 * x

    with pytest.warns(NoTraceContextWarning, match="operation"):
        assert double(4) == 8


# ------------------------------------------------------------------------------------------------ operations


def test_operations_record_inputs_outputs_and_nest():
    @operation(agent="solver")
    def solve(self_like, question: str, *, depth: int = 1) -> dict[str, Any]:
        with operation("lookup", input={"q": question}) as op:
            op.set_output(["fact"])
        return {"answer": 42}

    def body():
        assert solve(None, "why?", depth=2) == {"answer": 42}

    lookup, solve_span = run(traced(body))
    assert solve_span.name.endswith("solve") and solve_span.parent_id is None
    assert solve_span.attributes[semconv.GEN_AI_AGENT_NAME] == "solver"
    assert json.loads(solve_span.attributes[semconv.OPERATION_INPUT]) == {
        "self_like": None,
        "question": "why?",
        "depth": 2,
    }
    assert json.loads(solve_span.attributes[semconv.OPERATION_OUTPUT]) == {"answer": 42}
    assert lookup.parent_id == solve_span.span_id and lookup.trace_id == solve_span.trace_id
    assert json.loads(lookup.attributes[semconv.OPERATION_INPUT]) == {"q": "why?"}
    assert json.loads(lookup.attributes[semconv.OPERATION_OUTPUT]) == ["fact"]


def test_async_operations_record_errors_and_reraise():
    @operation("fetch", record_io=False)
    async def fetch(url: str) -> str:
        await asyncio.sleep(0)
        raise ConnectionError(f"cannot reach {url}")

    async def body():
        with pytest.raises(ConnectionError):
            await fetch("http://x")
        async with operation("after") as op:
            assert op.span_id is not None

    fetch_span, after = run(traced(body))
    assert fetch_span.status.status_code == "ERROR" and "cannot reach http://x" in fetch_span.status.description
    assert semconv.OPERATION_INPUT not in fetch_span.attributes
    assert fetch_span.attributes[semconv.EXCEPTION_TYPE] == "ConnectionError"
    assert after.parent_id is None  # the failed operation is no longer the parent


def test_operation_rejects_generators_and_bad_names():
    with pytest.raises(TypeError, match="generator"):

        @operation
        def numbers():
            yield 1

    with pytest.raises(TypeError, match="non-empty str"):
        operation("")


# ------------------------------------------------------------------------------------------------ contexts


def test_a_plain_thread_belongs_to_the_only_open_trace_context():
    def body():
        worker = threading.Thread(target=lambda: emit_message("from a thread"))
        worker.start()
        worker.join()

    [span] = run(traced(body))
    assert span.attributes[semconv.MESSAGE_BODY] == "from a thread"


def test_with_two_contexts_open_a_plain_thread_belongs_to_neither():
    tracer = NoOpTracer()
    store = InMemoryLightningStore()
    seen = []
    with tracer.trace_context(rollout_id="r1", attempt_id="a1", store=store):
        with tracer.trace_context(rollout_id="r2", attempt_id="a2", store=store):
            worker = threading.Thread(target=lambda: seen.append(current_scope()))
            worker.start()
            worker.join()
            assert current_scope().rollout_id == "r2"
        assert current_scope().rollout_id == "r1"
    assert seen == [None] and current_scope() is None
    run(store.close())


def test_the_runner_stores_emitted_rewards_of_sync_and_async_agents():
    def sync_agent(task, resources):
        emit_reward({"task": float(task), "bonus": 1.0}, primary="task")

    async def async_agent(task, resources):
        await asyncio.sleep(0)
        emit_reward(float(task))
        return None

    async def main(agent):
        async with InMemoryLightningStore() as store:
            rollouts = [await store.enqueue_rollout(i) for i in (1, 2, 3)]
            runner = LitAgentRunner(worker_id="w", wait_seconds=0.05, heartbeat_interval=0.2)
            stop = asyncio.Event()
            task = asyncio.create_task(runner.run(store, agent, stop=stop))
            await store.wait_for_rollouts([r.rollout_id for r in rollouts], timeout=10)
            stop.set()
            await task
            return [await get_reward(store, r.rollout_id) for r in rollouts]

    assert run(main(sync_agent)) == [1.0, 2.0, 3.0]
    assert run(main(async_agent)) == [1.0, 2.0, 3.0]


class _TraceHooks:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    @hookimpl
    def agl_on_trace_start(self, rollout_id, attempt_id, tracer):
        self.calls.append(("start", (rollout_id, attempt_id, type(tracer).__name__)))

    @hookimpl
    def agl_on_trace_end(self, rollout_id, attempt_id, tracer, spans):
        self.calls.append(("end", (rollout_id, attempt_id, [s.name for s in spans])))


def test_trace_hooks_see_the_attempt_and_its_spans():
    plugin = _TraceHooks()
    get_plugin_manager().register(plugin)
    try:
        spans = run(traced(lambda: emit_message("hi")))
    finally:
        reset_plugin_manager()
    ids = (spans[0].rollout_id, spans[0].attempt_id)
    assert plugin.calls == [("start", (*ids, "NoOpTracer")), ("end", (*ids, [semconv.MESSAGE_SPAN]))]
