"""The kernel's built-in loop: baseline algorithm + simple runners under the shared-memory strategy."""

from __future__ import annotations

import asyncio

import pytest

from agl_kernel import semconv
from agl_kernel.algorithm import Baseline
from agl_kernel.models import PromptTemplate, RolloutConfig
from agl_kernel.runner import LitAgentRunner
from agl_kernel.store.memory import InMemoryLightningStore
from agl_kernel.strategy import SharedMemoryStrategy


def run(coro):
    return asyncio.run(coro)


async def _execute(agent, tasks, *, n_runners=4, config=None, resources=None):
    async with InMemoryLightningStore(watchdog_interval=0.05) as store:
        if resources:
            await store.add_resources(resources)
        report = await SharedMemoryStrategy(n_runners=n_runners).execute_async(
            store=store, algorithm=Baseline(config=config, timeout=30), agent=agent, train_dataset=tasks
        )
        spans = {o.rollout_id: (await store.query_spans(o.rollout_id)).items for o in report.outcomes}
        workers = (await store.query_workers()).items
        return report, spans, workers


def test_every_task_runs_once_and_rewards_come_back():
    seen = []

    async def agent(task, resources):
        seen.append(task)
        await asyncio.sleep(0.01)
        return task / 10

    report, spans, workers = run(_execute(agent, list(range(10))))
    assert sorted(seen) == list(range(10))
    assert report.by_status == {"succeeded": 10}
    assert [o.reward for o in report.outcomes] == [i / 10 for i in range(10)]
    assert report.mean_reward == pytest.approx(0.45)
    assert all([s.name for s in spans[o.rollout_id]] == [semconv.REWARD_SPAN] for o in report.outcomes)
    assert len(workers) == 4  # the load was spread over every runner, each registered by its worker id


def test_sync_agent_gets_the_resources_the_rollout_pinned():
    def agent(task, resources):
        return 1.0 if resources["prompt"].format(x=task) == f"say {task}" else 0.0

    report, _, _ = run(_execute(agent, [1, 2], resources={"prompt": PromptTemplate(template="say {x}")}))
    assert [o.reward for o in report.outcomes] == [1.0, 1.0]


def test_agent_exception_fails_the_attempt_and_is_recorded_then_retried():
    calls = {}

    def agent(task, resources):
        calls[task] = calls.get(task, 0) + 1
        if calls[task] == 1:
            raise ValueError(f"first try of {task} fails")
        return 1.0

    report, spans, _ = run(_execute(agent, ["a", "b"], config=RolloutConfig(max_attempts=2)))
    assert report.by_status == {"succeeded": 2}
    assert all(o.attempts == 2 for o in report.outcomes)
    for outcome in report.outcomes:
        exception, reward = spans[outcome.rollout_id]
        assert exception.name == semconv.EXCEPTION_SPAN and exception.status.status_code == "ERROR"
        assert exception.attributes[semconv.EXCEPTION_MESSAGE] == f"first try of {outcome.input} fails"
        assert reward.name == semconv.REWARD_SPAN


def test_agent_without_retries_ends_failed_and_counted():
    def agent(task, resources):
        raise RuntimeError("always")

    report, _, _ = run(_execute(agent, [1, 2, 3], n_runners=2, config=RolloutConfig(max_attempts=1)))
    assert report.by_status == {"failed": 3} and report.mean_reward is None
    assert all(o.attempts == 1 for o in report.outcomes)


def test_by_default_a_failing_agent_is_tried_three_times_then_fails():
    def agent(task, resources):
        raise RuntimeError("always")

    report, _, _ = run(_execute(agent, [1, 2], n_runners=2))
    assert report.by_status == {"failed": 2}
    assert all(o.attempts == RolloutConfig().max_attempts == 3 for o in report.outcomes)


def test_a_crashing_runner_stops_the_run_instead_of_hanging():
    class BrokenRunner(LitAgentRunner):
        async def run(self, store, agent, *, stop):
            raise OSError("runner lost its connection")

    async def main():
        async with InMemoryLightningStore() as store:
            strategy = SharedMemoryStrategy(n_runners=1, runner_factory=lambda i, tracer: BrokenRunner())
            await strategy.execute_async(store=store, algorithm=Baseline(), agent=lambda t, r: 1.0, train_dataset=[1])

    with pytest.raises(RuntimeError, match="crashed") as info:
        run(main())
    assert isinstance(info.value.__cause__, OSError)
