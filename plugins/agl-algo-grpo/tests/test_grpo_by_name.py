"""GRPO selected by name with options: ``Trainer(algorithm="grpo", options=...)`` and ``agl train --algorithm grpo
--set algorithm.model=...`` train a tiny random model end to end, GRPO serving the policy itself (agl-model-server
behind the LLM proxy on 127.0.0.1, stopped when the run ends, also on an error); bad options are one-line errors
with exit code 2."""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from click.testing import CliRunner
from rich.console import Console

from agl_algo_grpo import GRPO, SERVED_MODEL_NAME
from agl_algo_grpo.testing import tiny_chat_model
from agl_kernel import semconv
from agl_kernel.cli import cli
from agl_kernel.errors import MissingDependencyError
from agl_kernel.models import ProxyLLM, RolloutMode, RolloutStatus
from agl_kernel.plugins import create_component
from agl_kernel.trainer import Trainer

AGENT_FILE = Path(__file__).with_name("grpo_toy_agent.py")
_spec = importlib.util.spec_from_file_location("grpo_toy_agent", AGENT_FILE)
assert _spec is not None and _spec.loader is not None
toy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(toy)
TASKS, TINY_MODEL = toy.TASKS, toy.TINY_MODEL
OPTIONS = {  # 2 tasks × 4 rollouts a step, 8 tokens each: seconds on a CPU
    "model": TINY_MODEL,
    "steps": 2,
    "batch_size": 2,
    "group_size": 4,
    "max_tokens": 8,
    "learning_rate": 0.05,
    "micro_batch_size": 8,
    "device": "cpu",
    "console": False,
}


def _refused(url: str) -> bool:
    """Whether nothing listens at ``url`` any more."""
    try:
        httpx.get(url, timeout=2.0)
    except httpx.TransportError:
        return True
    return False


def _trainer(tmp_path: Path, strategy: str = "shm", **options: Any) -> Trainer:
    return Trainer(
        algorithm="grpo",
        n_runners=4 if strategy == "shm" else 2,
        store="memory",
        strategy=strategy,
        options={"algorithm": {**OPTIONS, "checkpoint_dir": str(tmp_path / "ckpt"), **options}},
        progress=False,
        console=Console(file=io.StringIO()),
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("strategy", ["shm", "cs"])  # cs: runner processes reach the proxy on 127.0.0.1 too
async def test_trainer_selects_grpo_by_name_and_it_serves_and_trains_the_policy(tmp_path: Path, strategy: str) -> None:
    trainer = _trainer(tmp_path, strategy)
    grpo = trainer.algorithm
    assert isinstance(grpo, GRPO) and grpo.serve and grpo.config.steps == 2

    report = await trainer.fit_async(f"{AGENT_FILE}:agent", TASKS)

    assert report.steps_done == 2 and len(report.history) == 2
    assert sum(m["triplets"] for m in report.history) == 16  # every rollout gave one triplet (one LLM call)
    assert sum(m["triplets_trained"] for m in report.history) > 0
    # the policy's weights changed (the factory makes the same initial weights again)
    initial = tiny_chat_model()[0].state_dict()
    trained = grpo.policy.model.state_dict()
    assert any(not (trained[name] == weights).all() for name, weights in initial.items())

    store = trainer.store
    rollouts = (await store.query_rollouts(mode_in=[RolloutMode.TRAIN])).items
    assert len(rollouts) == 16 and all(r.status is RolloutStatus.SUCCEEDED for r in rollouts)
    # pinned to the resources GRPO published: a ProxyLLM on 127.0.0.1 with GRPO's sampling parameters
    resources = await store.get_resources(rollouts[-1].resources_id)
    llm = resources.resources["main_llm"]
    assert isinstance(llm, ProxyLLM) and llm.model == SERVED_MODEL_NAME
    assert llm.endpoint.startswith("http://127.0.0.1:") and llm.sampling_parameters["max_tokens"] == 8
    assert {r.metadata["policy_version"] for r in rollouts} == {0, 1}
    # every rollout sampled through the proxy, which recorded the call with token ids from the model server
    backends = set()
    for rollout in rollouts:
        spans = (await store.query_spans(rollout.rollout_id, "latest")).items
        [call] = [s for s in spans if s.name == f"chat {SERVED_MODEL_NAME}"]
        assert call.attributes[semconv.LLM_PROMPT_TOKEN_IDS] and call.attributes[semconv.LLM_RESPONSE_TOKEN_IDS]
        assert len(call.attributes[semconv.LLM_RESPONSE_LOGPROBS]) == len(
            call.attributes[semconv.LLM_RESPONSE_TOKEN_IDS]
        )
        backends.add(call.attributes["agl.llm.backend"])
    [backend] = backends
    # everything GRPO started is stopped once the run is over: the proxy's server and the model server
    assert _refused(llm.endpoint.rstrip("/") + "/health") and _refused(backend + "/models")
    await store.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("max_staleness", [0, 1])  # 1: validations but the last run in the background
async def test_val_temperature_validates_greedily_on_the_same_weights_while_training_samples(
    tmp_path: Path, max_staleness: int
) -> None:
    trainer = _trainer(tmp_path, val_temperature=0.0, temperature=1.0, val_every=1, max_staleness=max_staleness)
    report = await trainer.fit_async(f"{AGENT_FILE}:agent", TASKS, TASKS * 2)  # each task twice
    assert report.steps_done == 2 and len(report.validations) == 3  # before training, after each step

    store = trainer.store

    async def calls(mode: RolloutMode) -> list[tuple[Any, dict[str, Any]]]:
        out = []
        for rollout in (await store.query_rollouts(mode_in=[mode])).items:
            spans = (await store.query_spans(rollout.rollout_id, "latest")).items
            [call] = [s for s in spans if s.name == f"chat {SERVED_MODEL_NAME}"]
            out.append((rollout, call.attributes))
        return out

    validation, training = await calls(RolloutMode.VAL), await calls(RolloutMode.TRAIN)
    assert len(validation) == 18 and len(training) == 16
    assert {a[semconv.GEN_AI_REQUEST_TEMPERATURE] for _, a in validation} == {0.0}
    assert {a[semconv.GEN_AI_REQUEST_TEMPERATURE] for _, a in training} == {1.0}
    assert {r.resources_id for r, _ in validation} == {"grpo-policy-val"}
    # greedy: a task validated twice on one version gives the same reply, token for token
    by_version_and_task: dict[tuple[int, str], set[tuple[int, ...]]] = {}
    for rollout, attributes in validation:
        key = (rollout.metadata["policy_version"], rollout.input["question"])
        by_version_and_task.setdefault(key, set()).add(tuple(attributes[semconv.LLM_RESPONSE_TOKEN_IDS]))
    assert len(by_version_and_task) == 9 and all(len(replies) == 1 for replies in by_version_and_task.values())
    # on the weights of the version it validates: the resources differ only in the temperature
    for rollout, _ in validation:
        val_llm = (await store.get_resources(rollout.resources_id)).resources["main_llm"]
        assert val_llm.sampling_parameters == {"temperature": 0.0, "max_tokens": 8}
    train_llm = (await store.get_resources(training[-1][0].resources_id)).resources["main_llm"]
    assert train_llm.sampling_parameters == {"temperature": 1.0, "max_tokens": 8}
    assert msgspec.structs.replace(val_llm, sampling_parameters={}) == msgspec.structs.replace(
        train_llm, sampling_parameters={}
    )
    await store.close()


class _BrokenAdapter:
    def adapt(self, spans: Any) -> Any:
        raise RuntimeError("adapter broke")


@pytest.mark.asyncio
async def test_the_servers_stop_when_the_run_fails(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, steps=1)
    trainer.algorithm.adapter = _BrokenAdapter()  # the run fails after the first rollouts, mid-step
    with pytest.raises(RuntimeError, match="adapter broke"):
        await trainer.fit_async(toy.agent, TASKS)
    rollouts = (await trainer.store.query_rollouts(mode_in=[RolloutMode.TRAIN])).items
    llm = (await trainer.store.get_resources(rollouts[0].resources_id)).resources["main_llm"]
    spans = (await trainer.store.query_spans(rollouts[0].rollout_id, "latest")).items
    backend = next(s.attributes["agl.llm.backend"] for s in spans if "agl.llm.backend" in s.attributes)
    assert _refused(llm.endpoint.rstrip("/") + "/health") and _refused(backend + "/models")
    await trainer.store.close()


def test_serving_without_agl_model_server_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "agl_model_server", None)  # as if it were not installed: import fails
    with pytest.raises(MissingDependencyError, match=r"pip install 'agl-algo-grpo\[serve\]'"):
        create_component("algorithms", "grpo", options={"model": "smollm2"})
    # given a publisher (or serve=False), GRPO does not need it
    assert not GRPO("smollm2", publisher=lambda policy, **kwargs: None).serve


def test_agl_train_runs_grpo_by_name(tmp_path: Path) -> None:
    checkpoints = tmp_path / "ckpt"
    command = [
        sys.executable, "-m", "agl_kernel.cli", "train",
        "--agent", f"{AGENT_FILE}:agent", "--dataset", f"{AGENT_FILE}:tasks", "--runners", "4",
        "--algorithm", "grpo", "--store", "memory",
        "--set", f"algorithm.model={TINY_MODEL}", "--set", "algorithm.steps=1",
        "--set", "algorithm.batch_size=2", "--set", "algorithm.group_size=4", "--set", "algorithm.max_tokens=8",
        "--set", "algorithm.learning_rate=0.05", "--set", "algorithm.device=cpu", "--set", "algorithm.console=false",
        "--set", "algorithm.checkpoint_every=1", "--set", f"algorithm.checkpoint_dir={checkpoints}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "done: GRPOReport" in done.stdout
    assert [p.name for p in checkpoints.iterdir()] == ["step-000001"]  # one step trained and saved


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("algorithm.steps=zero", "Error: algorithm.steps: expected an integer, got 'zero'"),
        (
            "algorithm.stepz=1",
            "Error: algorithm.stepz: unknown option. Did you mean 'steps'? Valid keys: adapters, backend,",
        ),
        ("algorithm.steps=0", "Error: algorithm.steps: must be >= 1: 0"),
        ("algorithm.lora.rank=4", "Error: algorithm.lora.rank: unknown option. Valid keys: alpha, dropout, r, target"),
        ("algorithm.group_size=", "Error: algorithm.group_size: expected an integer, got ''"),
    ],
)
def test_agl_train_refuses_a_bad_grpo_option_in_one_line(setting: str, message: str) -> None:
    arguments = ["train", "--agent", f"{AGENT_FILE}:agent", "--dataset", f"{AGENT_FILE}:tasks"]
    result = CliRunner().invoke(cli, [*arguments, "--algorithm", "grpo", "--set", f"algorithm.model={TINY_MODEL}",
                                      "--set", setting])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert result.output.startswith(message) and result.output.count("\n") == 1, result.output
    assert "Traceback" not in result.output


def test_agl_train_without_a_model_says_how_to_name_one() -> None:
    arguments = ["train", "--agent", f"{AGENT_FILE}:agent", "--dataset", f"{AGENT_FILE}:tasks", "--algorithm", "grpo"]
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == 2 and result.output.startswith("Error: algorithm.model: required"), result.output
    assert result.output.count("\n") == 1 and "--set algorithm.model=NAME" in result.output
