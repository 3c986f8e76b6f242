"""The skeleton tracer records a root span per attempt with its options' name and attributes, and what the agent
emits goes under it: by itself, and by name in a run with the template runner."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from agl_kernel.emit import emit_reward
from agl_kernel.errors import ConfigError
from agl_kernel.plugins import create_component
from agl_kernel.trainer import Trainer
from agl_store_template import TemplateTracer

sys.path.insert(0, str(Path(__file__).parent))
import toy_agent


def test_the_tracer_records_a_root_span_with_the_agents_spans_under_it() -> None:
    async def main() -> list:
        store = create_component("stores", "memory")
        attempted = await store.start_rollout({"q": 1})
        tracer = create_component(
            "tracers", "template", options={"root_span_name": "my.attempt", "attributes": {"team": "search"}}
        )
        assert isinstance(tracer, TemplateTracer)
        with tracer.trace_context(
            rollout_id=attempted.rollout_id, attempt_id=attempted.attempt.attempt_id, store=store
        ):
            emit_reward(0.5)
        await tracer.flush()
        spans = (await store.query_spans(attempted.rollout_id)).items
        await store.close()
        return spans

    spans = asyncio.run(main())
    [root] = [s for s in spans if s.name == "my.attempt"]
    [reward] = [s for s in spans if s.name == "agl.reward"]
    assert root.attributes == {"team": "search"} and root.status.status_code == "OK"
    assert reward.parent_id == root.span_id and reward.trace_id == root.trace_id
    assert root.start_time <= reward.start_time and reward.end_time <= root.end_time


def test_an_error_in_the_context_ends_the_root_span_with_it() -> None:
    async def main() -> list:
        store = create_component("stores", "memory")
        attempted = await store.start_rollout({"q": 1})
        tracer = TemplateTracer()
        with (
            pytest.raises(KeyError),
            tracer.trace_context(rollout_id=attempted.rollout_id, attempt_id=attempted.attempt.attempt_id, store=store),
        ):
            raise KeyError("boom")
        await tracer.flush()
        spans = (await store.query_spans(attempted.rollout_id)).items
        await store.close()
        return spans

    [root] = asyncio.run(main())
    assert root.name == "template.attempt" and root.status.status_code == "ERROR"


def test_a_run_with_the_tracer_by_name_has_a_root_span_per_rollout() -> None:
    overrides = ['tracer.attributes={run = "t1"}']  # a table, written inline as on the command line
    config = {"tracer": {"name": "template"}, "runner": {"name": "template"}, "store": {"name": "memory"}}
    with Trainer.from_config(config, overrides=overrides, progress=False) as trainer:
        report = trainer.dev(toy_agent.agent, toy_agent.TASKS)
        ids = [o.rollout_id for o in report.outcomes]
        spans = [asyncio.run(trainer.store.query_spans(rollout_id)).items for rollout_id in ids]
    for of_rollout in spans:
        [root] = [s for s in of_rollout if s.name == "template.attempt"]
        assert root.attributes == {"run": "t1"}
        assert {s.name for s in of_rollout if s.parent_id == root.span_id} == {"agl.message", "agl.reward"}


def test_a_bad_tracer_option_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"^tracer\b.*root_span_name.* must be >= 1"):
        create_component("tracers", "template", options={"root_span_name": ""})
    with pytest.raises(ConfigError, match=r"^tracer\.attributes(\.team)?: expected a string, got 1"):
        create_component("tracers", "template", options={"attributes": {"team": 1}})
