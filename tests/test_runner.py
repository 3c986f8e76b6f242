"""LitAgent decorators, the LitAgentRunner (timeouts, cancellation, heartbeats, hooks) and the Trainer in one
process (the ``shm`` strategy), on real stores."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from agl_kernel import semconv
from agl_kernel.agent import LitAgent, llm_rollout, prompt_rollout, rollout
from agl_kernel.algorithm import Baseline
from agl_kernel.models import (
    LLM,
    AttemptStatus,
    PromptTemplate,
    ProxyLLM,
    RolloutConfig,
    RolloutMode,
    RolloutStatus,
    Span,
)
from agl_kernel.plugins import get_plugin_manager, hookimpl, reset_plugin_manager
from agl_kernel.runner import LitAgentRunner
from agl_kernel.store.memory import InMemoryLightningStore
from agl_kernel.trainer import Trainer


def run(coro):
    return asyncio.run(coro)


async def run_until_done(store, agent, rollout_ids, *, runner=None, timeout=20.0):
    """Serve ``agent`` with one runner until every rollout ended; the runner."""
    runner = runner or LitAgentRunner(worker_id="w1", wait_seconds=0.05, heartbeat_interval=0.1, stop_grace=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(store, agent, stop=stop))
    try:
        ended = await store.wait_for_rollouts(rollout_ids, timeout=timeout)
        assert len(ended) == len(rollout_ids), "rollouts did not end in time"
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    return runner


# ------------------------------------------------------------------------------------------------ decorators


def test_llm_rollout_gets_its_attempts_own_proxy_url_and_the_rollout():
    seen = {}

    @llm_rollout
    async def agent(task, llm, rollout):
        seen[task] = (llm, rollout)
        return 1.0

    async def main():
        async with InMemoryLightningStore() as store:
            await store.add_resources({"policy": ProxyLLM(endpoint="http://127.0.0.1:9/v1", model="m")})
            r = await store.enqueue_rollout("t")
            await run_until_done(store, agent, [r.rollout_id])
            return r

    r = run(main())
    llm, attempted = seen["t"]
    assert type(llm) is LLM and llm.model == "m"
    assert llm.endpoint == f"http://127.0.0.1:9/rollout/{r.rollout_id}/attempt/{attempted.attempt.attempt_id}/v1"
    assert attempted.rollout_id == r.rollout_id
    assert run(agent("direct", llm, attempted)) == 1.0  # the decorated function is still callable as written


def test_prompt_rollout_and_missing_resource_errors():
    @prompt_rollout
    def agent(task, prompt_template):
        return 1.0 if prompt_template.format(x=task) == f"hi {task}" else 0.0

    @prompt_rollout(resource_name="absent")
    def wants_absent(task, prompt_template):
        return 1.0

    async def main():
        async with InMemoryLightningStore() as store:
            await store.add_resources({"p": PromptTemplate(template="hi {x}"), "llm": LLM(endpoint="e", model="m")})
            ok = await store.enqueue_rollout(3)
            await run_until_done(store, agent, [ok.rollout_id])
            bad = await store.enqueue_rollout(3)
            await run_until_done(store, wants_absent, [bad.rollout_id])
            reward = (await store.query_spans(ok.rollout_id, name=semconv.REWARD_SPAN)).items[0]
            error = (await store.query_spans(bad.rollout_id, name=semconv.EXCEPTION_SPAN)).items[0]
            return reward, error, await store.get_rollout(bad.rollout_id)

    reward, error, bad = run(main())
    assert reward.attributes[semconv.REWARD_VALUE] == 1.0
    assert bad.status is RolloutStatus.FAILED
    assert "no 'absent'" in error.attributes[semconv.EXCEPTION_MESSAGE]


def test_decorator_rejects_a_function_with_the_wrong_shape():
    with pytest.raises(TypeError, match=r"must take \(task, <resource>\)"):
        rollout(lambda task: 1.0)


def test_training_and_validation_behave_differently_and_spans_can_be_returned():
    class Agent(LitAgent):
        def rollout(self, task, resources, rollout):
            raise AssertionError("not used")

        def training_rollout(self, task, resources, rollout):
            return 0.25

        async def validation_rollout(self, task, resources, rollout):
            return [Span(rollout_id="", attempt_id="", trace_id="a" * 32, span_id="b" * 16, name="val-step")]

    async def main():
        async with InMemoryLightningStore() as store:
            train = await store.enqueue_rollout(1, mode=RolloutMode.TRAIN)
            val = await store.enqueue_rollout(1, mode=RolloutMode.VAL)
            await run_until_done(store, Agent(), [train.rollout_id, val.rollout_id])
            return [[s.name for s in (await store.query_spans(r.rollout_id)).items] for r in (train, val)]

    assert run(main()) == [[semconv.REWARD_SPAN], ["val-step"]]


# ------------------------------------------------------------------------------------------------ fault handling


def test_hanging_async_agent_is_timed_out_and_the_retry_succeeds():
    calls = []

    async def agent(task, resources):
        calls.append(time.monotonic())
        if len(calls) == 1:
            await asyncio.sleep(60)
        return 1.0

    async def main():
        async with InMemoryLightningStore(watchdog_interval=0.05) as store:
            r = await store.enqueue_rollout("t", config=RolloutConfig(timeout_seconds=0.5, max_attempts=2))
            await run_until_done(store, agent, [r.rollout_id])
            return await store.get_rollout(r.rollout_id), (await store.query_attempts(r.rollout_id)).items

    rollout_, attempts = run(main())
    assert rollout_.status is RolloutStatus.SUCCEEDED
    assert [a.status for a in attempts] == [AttemptStatus.TIMEOUT, AttemptStatus.SUCCEEDED]
    assert calls[1] - calls[0] < 3, "the hung agent held the runner long past its timeout"


def test_hanging_sync_agent_is_stopped_inside_its_thread():
    stopped = threading.Event()

    def agent(task, resources):
        try:
            while True:  # a busy agent: it never returns by itself
                time.sleep(0.01)
        finally:
            stopped.set()

    async def main():
        async with InMemoryLightningStore(watchdog_interval=0.05) as store:
            r = await store.enqueue_rollout("t", config=RolloutConfig(timeout_seconds=0.3, max_attempts=1))
            await run_until_done(store, agent, [r.rollout_id])
            spans = (await store.query_spans(r.rollout_id, name=semconv.EXCEPTION_SPAN)).items
            return await store.get_rollout(r.rollout_id), spans

    rollout_, spans = run(main())
    assert stopped.wait(2), "the sync agent's thread kept running"
    assert rollout_.status is RolloutStatus.FAILED
    assert "timeout_seconds=0.3" in spans[-1].attributes[semconv.EXCEPTION_MESSAGE]


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_cancelling_a_running_rollout_stops_its_agent_within_a_second(kind):
    started, stopped = threading.Event(), threading.Event()

    async def async_agent(task, resources):
        started.set()
        try:
            await asyncio.sleep(60)
        finally:
            stopped.set()

    def sync_agent(task, resources):
        started.set()
        try:
            while True:
                time.sleep(0.01)
        finally:
            stopped.set()

    async def main():
        async with InMemoryLightningStore() as store:
            r = await store.enqueue_rollout("t")
            runner = LitAgentRunner(worker_id="w", wait_seconds=0.05, heartbeat_interval=5)
            stop = asyncio.Event()
            task = asyncio.create_task(runner.run(store, async_agent if kind == "async" else sync_agent, stop=stop))
            await asyncio.to_thread(started.wait, 5)
            t0 = time.monotonic()
            await store.cancel_rollout(r.rollout_id)
            await asyncio.to_thread(stopped.wait, 5)
            elapsed = time.monotonic() - t0
            stop.set()
            await asyncio.wait_for(task, 5)
            return elapsed, (await store.get_attempt(r.rollout_id)).status

    elapsed, attempt_status = run(main())
    assert stopped.is_set() and elapsed < 1.0
    assert attempt_status is AttemptStatus.FAILED


def test_heartbeats_carry_system_stats_and_hooks_see_every_rollout():
    events = []

    class Recorder:
        @hookimpl
        def agl_on_rollout_start(self, rollout):
            events.append(("start", rollout.input))

        @hookimpl
        def agl_on_rollout_end(self, rollout, status):
            events.append(("end", rollout.input, status))

    async def agent(task, resources):
        await asyncio.sleep(0.35)  # long enough for a few heartbeats
        return 1.0

    reset_plugin_manager()
    get_plugin_manager().register(Recorder())
    try:

        async def main():
            async with InMemoryLightningStore() as store:
                r = await store.enqueue_rollout("x")
                await run_until_done(store, agent, [r.rollout_id])
                return await store.get_worker("w1"), await store.get_attempt(r.rollout_id)

        worker, attempt = run(main())
    finally:
        reset_plugin_manager()
    assert events == [("start", "x"), ("end", "x", AttemptStatus.SUCCEEDED)]
    assert worker.heartbeat_stats["pid"] > 0 and "rss_mb" in worker.heartbeat_stats
    assert attempt.last_heartbeat_time is not None and attempt.last_heartbeat_time > attempt.start_time


# ------------------------------------------------------------------------------------------------ trainer


def test_trainer_dev_defaults_to_a_sqlite_file_and_publishes_initial_resources(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    @prompt_rollout
    def agent(task, prompt_template):
        return float(prompt_template.format(n=task) == f"n={task}")

    with Trainer(n_runners=4, initial_resources={"p": PromptTemplate(template="n={n}")}, progress=False) as trainer:
        report = trainer.dev(agent, list(range(12)))
        assert type(trainer.store).__name__ == "SqliteLightningStore"
    assert report.by_status == {"succeeded": 12} and report.mean_reward == 1.0
    assert (tmp_path / ".agl" / "agl.db").is_file()


def test_trainer_takes_components_by_name_and_fit_runs_the_algorithm():
    class Doubling(Baseline):
        pass

    trainer = Trainer(algorithm=Doubling(), store="memory", tracer="noop", strategy="shm", n_runners=2, progress=False)
    report = trainer.fit(lambda task, resources: task * 2, [0.1, 0.2], val_dataset=[0.3])
    assert sorted(o.reward for o in report.outcomes) == pytest.approx([0.2, 0.4, 0.6])
    with pytest.raises(Exception, match="Available"):
        Trainer(algorithm="no-such-algorithm")


# ------------------------------------------------------------------------------------------------ agl runner


@pytest.mark.requires_plugin("agl_store_sqlite")
def test_agl_runner_process_serves_a_shared_file_and_sigterm_retries_its_rollout(tmp_path: Path):
    """`agl runner` on a SQLite file another process enqueues into; SIGTERM mid-rollout stops it within seconds
    and fails the attempt at once, so the rollout is requeued without waiting for the watchdog."""
    import os
    import signal
    import subprocess
    import sys

    from agl_store_sqlite import SqliteLightningStore

    db = tmp_path / "agl.db"
    agents = Path(__file__).with_name("cs_agents.py")

    async def enqueue():
        async with SqliteLightningStore(db) as store:
            quick = await store.enqueue_rollout({"seconds": 0})
            slow = await store.enqueue_rollout({"seconds": 60}, config=RolloutConfig(max_attempts=2))
            return quick.rollout_id, slow.rollout_id

    quick_id, slow_id = run(enqueue())
    command = [sys.executable, "-m", "agl_kernel.cli", "runner", "--path", str(db), "--agent", f"{agents}:slow"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": ""})

    async def wait_running():
        async with SqliteLightningStore(db) as store:
            assert len(await store.wait_for_rollouts([quick_id], timeout=30)) == 1
            for _ in range(300):
                if (await store.get_rollout(slow_id)).status is RolloutStatus.RUNNING:
                    return
                await asyncio.sleep(0.05)
            raise AssertionError("the slow rollout never started")

    run(wait_running())
    t0 = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=10)
    assert time.monotonic() - t0 < 5 and process.returncode == 0, stderr
    assert "stopped after 1 rollout(s)" in stderr

    async def outcome():
        async with SqliteLightningStore(db) as store:
            return await store.get_rollout(slow_id), (await store.query_attempts(slow_id)).items

    slow, attempts = run(outcome())
    assert slow.status is RolloutStatus.REQUEUING
    assert [a.status for a in attempts] == [AttemptStatus.FAILED]
