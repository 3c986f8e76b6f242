"""GRPO on the main job's CPU path with the ``vllm`` backend (``backend="vllm"``, as ``--set algorithm.backend=vllm``):
it serves SmolLM2 through vLLM (attached to the session's server: one vLLM start per session), samples rollouts
through the proxy, trains, and publishes new weights to vLLM; the next rollouts' logprobs are the new weights'."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from agl_algo_grpo.testing import vowel_agent
from agl_kernel import semconv
from agl_kernel.models import RolloutMode, RolloutStatus
from agl_kernel.trainer import Trainer
from agl_llm_vllm import VLLMBackend
from agl_model_server.testing import forward_logprobs

# The session fixture starts vLLM (~1-3 min on a loaded 2-core CPU) in whichever test comes first.
pytestmark = pytest.mark.timeout(900)
TOL = 2e-3
TASKS = [{"question": "Name a fruit."}, {"question": "Say hello."}]


def test_a_grpo_step_publishes_weights_that_change_the_next_rollouts_logprobs(
    served: VLLMBackend, smol: tuple[Any, Any], tmp_path: Path
) -> None:
    model, _ = smol
    original = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    options = {
        "model": "smollm2",
        "backend": "vllm",
        "backend_options": {"url": served.base_url},
        "steps": 2,
        "batch_size": 1,
        "group_size": 4,
        "max_tokens": 8,
        "learning_rate": 1e-3,
        "micro_batch_size": 4,
        "device": "cpu",
        "console": False,
        "checkpoint_dir": str(tmp_path / "ckpt"),
    }
    trainer = Trainer(
        algorithm="grpo",
        n_runners=4,
        store="memory",
        options={"algorithm": options},
        progress=False,
        console=Console(file=io.StringIO()),
    )

    async def run() -> dict[int, list[tuple[list[int], list[int], list[float]]]]:
        report = await trainer.fit_async(vowel_agent, TASKS)
        assert report.steps_done == 2
        store = trainer.store
        rollouts = (await store.query_rollouts(mode_in=[RolloutMode.TRAIN])).items
        assert len(rollouts) == 8 and all(r.status is RolloutStatus.SUCCEEDED for r in rollouts)
        calls: dict[int, list[tuple[list[int], list[int], list[float]]]] = {}
        for rollout in rollouts:
            spans = (await store.query_spans(rollout.rollout_id, "latest")).items
            [call] = [s for s in spans if semconv.LLM_RESPONSE_TOKEN_IDS in s.attributes]
            assert call.attributes[semconv.LLM_BACKEND] == served.base_url
            calls.setdefault(rollout.metadata["policy_version"], []).append(
                (
                    list(call.attributes[semconv.LLM_PROMPT_TOKEN_IDS]),
                    list(call.attributes[semconv.LLM_RESPONSE_TOKEN_IDS]),
                    list(call.attributes[semconv.LLM_RESPONSE_LOGPROBS]),
                )
            )
        await store.close()
        return calls

    try:
        calls = asyncio.run(run())
    finally:
        asyncio.run(served.load_weights(original, version=0))  # the session's server serves SmolLM2 again

    assert sorted(calls) == [0, 1]
    # version 0: sampled from the initial weights (GRPO pushed them to vLLM before the first rollouts)
    for prompt, ids, logprobs in calls[0]:
        assert logprobs == pytest.approx(forward_logprobs(model, prompt, ids), abs=TOL)
    # version 1: sampled from the trained weights GRPO published: the initial model no longer gives these logprobs
    gaps = [
        max(abs(a - b) for a, b in zip(logprobs, forward_logprobs(model, prompt, ids), strict=True))
        for prompt, ids, logprobs in calls[1]
    ]
    assert min(gaps) > 10 * TOL, gaps
