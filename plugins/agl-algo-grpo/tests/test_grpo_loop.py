"""GRPO.run end to end on the in-memory store: a fake runner samples from the published weights (a served copy of
the tiny model), records LLM-call and reward spans; GRPO publishes, enqueues groups, adapts, updates, records
metrics, validates, checkpoints, reports rollouts without training data, and resumes."""

from __future__ import annotations

import asyncio
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console

from agl_algo_grpo import (
    GRPO,
    METRIC_PREFIX,
    NO_TRIPLET_REASONS,
    TRAINING_STEP_SPAN,
    VALIDATION_SPAN,
    GRPOConfig,
    LLMPublisher,
    MetricsRecorder,
)
from agl_algo_grpo.testing import tiny_llama
from agl_kernel import semconv
from agl_kernel.errors import ConfigError, MissingDependencyError
from agl_kernel.models import AttemptStatus, ProxyLLM, RolloutMode, RolloutStatus, Span
from agl_kernel.plugins import create_component
from agl_kernel.store.memory import InMemoryLightningStore

pytestmark = pytest.mark.asyncio


class ServedModel:
    """A stand-in for an in-process model server: a copy of the model that takes weight updates."""

    def __init__(self) -> None:
        self.model = tiny_llama(seed=42).eval()
        self.versions: list[int] = []

    async def load_weights(self, state_dict: dict[str, torch.Tensor], *, version: int) -> None:
        self.model.load_state_dict(state_dict)
        self.versions.append(version)

    @torch.no_grad()
    def sample(self, prompt: list[int], n: int, generator: torch.Generator) -> tuple[list[int], list[float]]:
        ids, tokens, logps = list(prompt), [], []
        for _ in range(n):
            logits = self.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
            probs = torch.softmax(logits, -1)
            token = int(torch.multinomial(probs, 1, generator=generator))
            tokens.append(token), logps.append(float(torch.log(probs[token]))), ids.append(token)
        return tokens, logps


def _span(attempted: Any, name: str, attributes: dict[str, Any]) -> Span:
    return Span(
        rollout_id=attempted.rollout_id,
        attempt_id=attempted.attempt.attempt_id,
        trace_id="ab" * 16,
        span_id=os.urandom(8).hex(),
        name=name,
        attributes=attributes,
    )


async def fake_runner(store: InMemoryLightningStore, server: ServedModel, stop: asyncio.Event) -> None:
    """Runs each task: ``ok`` samples 3 tokens (reward: the share of tokens below 64), ``no_ids`` records a call
    without token ids, ``crash`` fails."""
    generator = torch.Generator().manual_seed(0)
    while not stop.is_set():
        attempted = await store.dequeue_rollout(worker_id="w1", timeout=0.1)
        if attempted is None:
            continue
        task, aid = attempted.input, attempted.attempt.attempt_id
        if task["kind"] == "crash":
            await store.update_attempt(attempted.rollout_id, aid, status=AttemptStatus.FAILED)
            continue
        llm = {semconv.GEN_AI_OPERATION_NAME: "chat", semconv.GEN_AI_REQUEST_MODEL: "tiny"}
        reward = 0.0
        if task["kind"] == "ok":
            tokens, logps = server.sample(task["prompt"], 3, generator)
            llm[semconv.LLM_PROMPT_TOKEN_IDS] = task["prompt"]
            llm[semconv.LLM_RESPONSE_TOKEN_IDS] = tokens
            llm[semconv.LLM_RESPONSE_LOGPROBS] = logps
            reward = sum(t < 64 for t in tokens) / len(tokens)
        await store.add_span(_span(attempted, "chat tiny", llm))
        await store.add_span(_span(attempted, semconv.REWARD_SPAN, {semconv.REWARD_VALUE: reward}))
        await store.update_attempt(attempted.rollout_id, aid, status=AttemptStatus.SUCCEEDED)


TRAIN = [
    {"kind": "ok", "prompt": [5, 17, 33, 2]},
    {"kind": "ok", "prompt": [9, 90, 4]},
    {"kind": "no_ids", "prompt": []},
    {"kind": "crash", "prompt": []},
]
VAL = [{"kind": "ok", "prompt": [11, 12, 13]}]


async def _train(store: InMemoryLightningStore, server: ServedModel, algorithm: GRPO) -> Any:
    stop = asyncio.Event()
    runner = asyncio.create_task(fake_runner(store, server, stop))
    try:
        return await asyncio.wait_for(algorithm.run(store, TRAIN, VAL), timeout=120)
    finally:
        stop.set()
        await runner


async def test_grpo_run_end_to_end_and_resume(tmp_path: Path) -> None:
    options = dict(
        steps=3,
        batch_size=4,
        group_size=4,
        learning_rate=1e-2,
        micro_batch_size=8,
        device="cpu",
        checkpoint_every=2,
        checkpoint_dir=str(tmp_path / "ckpt"),
        temperature=1.0,
        max_tokens=3,
    )
    server = ServedModel()
    out = io.StringIO()
    publisher = LLMPublisher(server, ProxyLLM(endpoint="http://127.0.0.1:1/v1", model="tiny"))
    algorithm = GRPO(tiny_llama(), publisher=publisher, console=Console(file=out, width=200), **options)
    async with InMemoryLightningStore() as store:
        report = await _train(store, server, algorithm)

        assert report.steps_done == 3 and len(report.history) == 3 and report.resumed_from is None
        assert server.versions == [0, 1, 2, 3]  # each step's weights, and the final ones for validation
        assert report.checkpoint is not None and report.checkpoint.endswith("step-000003")
        assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step-000002", "step-000003"]
        for metrics in report.history:
            assert metrics["rollouts"] == 16 and metrics["rollouts_succeeded"] == 12
            assert metrics["rollouts_without_triplets"] == 8  # 4 without token ids + 4 crashed: reported
            assert metrics["triplets"] == 8 and 0 <= metrics["reward_mean"] <= 1
            assert metrics.get("update_skipped") or metrics["triplets_trained"] > 0
        assert [v["val_rollouts"] for v in report.validations] == [1.0, 1.0]  # before training, after the last step

        # the rollouts: pinned to the published resources, tagged with their step and group
        train = (await store.query_rollouts(mode_in=[RolloutMode.TRAIN])).items
        assert len(train) == 48
        resources = await store.get_resources(train[-1].resources_id)
        assert resources.resources["main_llm"].sampling_parameters == {"temperature": 1.0, "max_tokens": 3}
        assert {r.metadata["grpo_step"] for r in train} == {0, 1, 2}
        assert [r.metadata["grpo_group"] for r in train[:8]] == [0, 0, 0, 0, 1, 1, 1, 1]

        # the metrics, where the dashboard finds them
        metrics_rollout = await store.get_rollout(report.metrics_rollout_id)
        assert metrics_rollout.status is RolloutStatus.SUCCEEDED and metrics_rollout.mode is None
        assert metrics_rollout.metadata["kind"] == "training-metrics"
        steps = (await store.query_spans(report.metrics_rollout_id, "latest", name=TRAINING_STEP_SPAN)).items
        assert [s.attributes["agl.training.step"] for s in steps] == [1, 2, 3]
        assert steps[0].attributes[f"{METRIC_PREFIX}rollouts_without_triplets"] == 8.0
        reasons = json.loads(steps[0].attributes[NO_TRIPLET_REASONS])
        assert any("token ids" in r["reason"] for r in reasons) and any("failed" in r["reason"] for r in reasons)
        validations = (await store.query_spans(report.metrics_rollout_id, "latest", name=VALIDATION_SPAN)).items
        assert [s.attributes["agl.training.step"] for s in validations] == [0, 3]
        printed = out.getvalue()
        assert "grpo step 1" in printed and "no training data" in printed and "validation at step 3" in printed

        # resume: a new run continues from the checkpoint of step 3 up to step 4
        resumed = GRPO(tiny_llama(seed=7), publisher=publisher, console=None, **{**options, "steps": 4, "resume": True})
        report2 = await _train(store, server, resumed)
        assert report2.resumed_from.endswith("step-000003") and report2.steps_done == 4 and len(report2.history) == 1
        assert server.versions[-2:] == [3, 4]
        assert {r.metadata["grpo_step"] for r in (await store.query_rollouts(mode_in=[RolloutMode.TRAIN])).items} == {
            0,
            1,
            2,
            3,
        }


async def test_entry_point_builds_from_string_options() -> None:
    algorithm = create_component(
        "algorithms", "grpo", model="agl_algo_grpo.testing:tiny_chat_model", steps="2", group_size="3", device="cpu"
    )
    assert isinstance(algorithm, GRPO) and algorithm.config.steps == 2 and algorithm.config.group_size == 3
    assert algorithm.serve and algorithm.publisher is None  # selected by name: it serves the policy itself
    assert GRPO.Options is GRPOConfig
    with pytest.raises(ValueError, match="needs the model"):
        GRPO()
    with pytest.raises(ConfigError, match="^algorithm.model: required"):
        create_component("algorithms", "grpo", steps=2)
    with pytest.raises(ConfigError, match="^algorithm.model: cannot import 'no_such_module:f'"):
        create_component("algorithms", "grpo", options={"model": "no_such_module:f"})
    assert [t["n"] for t in algorithm.tasks_for_step([{"n": i} for i in range(5)], 0)] == [
        t["n"] for t in GRPO(tiny_llama(), steps=2, group_size=3).tasks_for_step([{"n": i} for i in range(5)], 0)
    ]


async def test_tensorboard_only_when_asked_and_a_clear_error_without_it(tmp_path: Path) -> None:
    async with InMemoryLightningStore() as store:
        MetricsRecorder(store, algorithm="grpo")  # no TensorBoard asked: nothing imported
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            with pytest.raises(MissingDependencyError, match="pip install tensorboard"):
                MetricsRecorder(store, algorithm="grpo", tensorboard_dir=str(tmp_path))
        else:
            recorder = MetricsRecorder(store, algorithm="grpo", tensorboard_dir=str(tmp_path))
            await recorder.record(1, {"loss": 0.5})
            await recorder.close()
            assert any(tmp_path.iterdir())
