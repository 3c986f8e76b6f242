"""The skeleton runner runs rollouts: by itself on a store, and by name through the Trainer under both execution
strategies (tasks of one process, ``shm``; runner processes talking to a store server, ``cs``)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from agl_kernel import AttemptStatus, EnqueueRequest, RolloutConfig, RolloutStatus
from agl_kernel.agent import as_lit_agent
from agl_kernel.algorithm import collect_outcomes
from agl_kernel.errors import ConfigError
from agl_kernel.plugins import create_component
from agl_kernel.trainer import Trainer
from agl_store_template import TemplateRunner

sys.path.insert(0, str(Path(__file__).parent))
import toy_agent


async def _serve(runner: TemplateRunner, agent, tasks: list, config: RolloutConfig | None = None) -> list:
    store = create_component("stores", "memory")
    rollouts = await store.enqueue_many_rollouts([EnqueueRequest(input=task, config=config) for task in tasks])
    stop = asyncio.Event()
    running = asyncio.create_task(runner.run(store, agent, stop=stop))
    ended = await collect_outcomes(store, [r.rollout_id for r in rollouts], timeout=30)
    stop.set()
    assert await running == len(tasks)
    spans = {r.rollout_id: (await store.query_spans(r.rollout_id)).items for r in rollouts}
    worker = await store.get_worker(runner.worker_id)
    await store.close()
    return [(ended[r.rollout_id], spans[r.rollout_id], worker) for r in rollouts]


@pytest.mark.parametrize("agent", [toy_agent.agent, toy_agent.async_agent], ids=["sync", "async"])
def test_the_runner_runs_rollouts_and_stores_their_rewards(agent) -> None:
    runner = create_component("runners", "template", worker_id="w-1", options={"wait_seconds": 0.05})
    assert isinstance(runner, TemplateRunner) and runner.wait_seconds == 0.05
    results = asyncio.run(_serve(runner, agent, toy_agent.TASKS))
    assert [outcome.status for outcome, _, _ in results] == [RolloutStatus.SUCCEEDED.value] * 4
    assert [outcome.reward for outcome, _, _ in results] == [1.0, 1.0, 1.0, 0.0]
    assert results[0][2].heartbeat_stats == {"runner": "template"}


def test_a_failing_agent_fails_its_rollout_with_the_exception_as_a_span() -> None:
    runner = TemplateRunner(worker_id="w-1", wait_seconds=0.05)
    no_retry = RolloutConfig(max_attempts=1)  # by default a failed attempt is retried, up to 3 in all
    [(outcome, spans, _)] = asyncio.run(_serve(runner, toy_agent.failing_agent, toy_agent.TASKS[:1], no_retry))
    assert outcome.status == RolloutStatus.FAILED.value and outcome.reward is None
    [error] = [s for s in spans if s.name == "agl.exception"]
    assert "cannot add" in error.attributes["exception.message"]


def test_the_runner_marks_the_attempt_it_runs() -> None:
    async def main() -> list[AttemptStatus]:
        store = create_component("stores", "memory")
        await store.enqueue_rollout({"a": 1, "b": 1, "sum": 2})
        attempted = await store.dequeue_rollout(worker_id="w-1")
        assert attempted is not None
        status = await TemplateRunner(worker_id="w-1").run_one(store, as_lit_agent(toy_agent.agent), attempted)
        attempt = await store.get_attempt(attempted.rollout_id)
        await store.close()
        return [status, attempt.status]

    assert asyncio.run(main()) == [AttemptStatus.SUCCEEDED, AttemptStatus.SUCCEEDED]


@pytest.mark.parametrize("strategy", ["shm", "cs"])
def test_the_trainer_uses_the_runner_by_name_with_its_options(strategy: str) -> None:
    trainer = Trainer(
        store="memory",
        runner="template",
        strategy=strategy,
        n_runners=2,
        options={"runner": {"wait_seconds": 0.1, "heartbeat_interval": 1.0}},
        progress=False,
    )
    with trainer:
        report = trainer.dev(toy_agent.AGENT, toy_agent.TASKS)
        workers = asyncio.run(trainer.store.query_workers()).items
    assert report.by_status == {"succeeded": 4} and report.mean_reward == 0.75
    assert {w.heartbeat_stats.get("runner") for w in workers} == {"template"}


def test_a_bad_runner_option_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"^runner\.wait_seconds: .*> 0"):
        create_component("runners", "template", worker_id="w", options={"wait_seconds": 0})
    with pytest.raises(
        ConfigError, match=r"^runner\.wait: unknown option.*Valid keys: heartbeat_interval, wait_seconds"
    ):
        Trainer(store="memory", runner="template", options={"runner": {"wait": 1}}, progress=False).dev(
            toy_agent.agent, toy_agent.TASKS[:1]
        )
