"""Smoke use of agl-algo-grpo installed alone with the kernel (``tools/check_plugins_alone.py`` runs it with a
fresh venv's python; it needs nothing else, not even pytest): one GRPO step on a tiny random
Llama, in the kernel's in-memory store. A toy agent plays the runner: it samples a few tokens from the published
weights and records the LLM call (token ids, logprobs) and its reward as spans, as a traced agent would."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from typing import Any

import torch
import transformers

from agl_algo_grpo import GRPO, LLMPublisher
from agl_algo_grpo.testing import tiny_llama
from agl_kernel import semconv
from agl_kernel.models import AttemptStatus, ProxyLLM, Span
from agl_kernel.store.memory import InMemoryLightningStore

TASKS = [{"prompt": [5, 17, 33, 2]}, {"prompt": [9, 90, 4]}]


def check(condition: object, what: str) -> None:
    if not condition:
        sys.exit(f"smoke failed: {what}")


class ServedModel:
    """Stands in for a model server: a copy of the policy that takes the weights GRPO publishes."""

    def __init__(self) -> None:
        self.model = tiny_llama(seed=1).eval()
        self.versions: list[int] = []

    def load_weights(self, state_dict: dict[str, torch.Tensor], *, version: int) -> None:
        self.model.load_state_dict(state_dict)
        self.versions.append(version)

    @torch.no_grad()
    def sample(self, prompt: list[int], n: int, generator: torch.Generator) -> tuple[list[int], list[float]]:
        ids, tokens, logps = list(prompt), [], []
        for _ in range(n):
            probs = torch.softmax(self.model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)
            token = int(torch.multinomial(probs, 1, generator=generator))
            tokens.append(token), logps.append(float(torch.log(probs[token]))), ids.append(token)
        return tokens, logps


def span(attempted: Any, name: str, attributes: dict[str, Any]) -> Span:
    return Span(
        rollout_id=attempted.rollout_id, attempt_id=attempted.attempt.attempt_id, trace_id="ab" * 16,
        span_id=os.urandom(8).hex(), name=name, attributes=attributes,
    )  # fmt: skip


async def toy_agent(store: InMemoryLightningStore, served: ServedModel, stop: asyncio.Event) -> None:
    """Runs every rollout: 3 sampled tokens; the reward is the share of them below 64."""
    generator = torch.Generator().manual_seed(0)
    while not stop.is_set():
        attempted = await store.dequeue_rollout(worker_id="smoke", timeout=0.1)
        if attempted is None:
            continue
        prompt = attempted.input["prompt"]
        tokens, logps = served.sample(prompt, 3, generator)
        await store.add_span(span(attempted, "chat tiny", {
            semconv.GEN_AI_OPERATION_NAME: "chat", semconv.GEN_AI_REQUEST_MODEL: "tiny",
            semconv.LLM_PROMPT_TOKEN_IDS: prompt, semconv.LLM_RESPONSE_TOKEN_IDS: tokens,
            semconv.LLM_RESPONSE_LOGPROBS: logps,
        }))  # fmt: skip
        reward = sum(t < 64 for t in tokens) / len(tokens)
        await store.add_span(span(attempted, semconv.REWARD_SPAN, {semconv.REWARD_VALUE: reward}))
        await store.update_attempt(attempted.rollout_id, attempted.attempt.attempt_id, status=AttemptStatus.SUCCEEDED)


async def main(directory: str) -> None:
    torch.set_num_threads(1)  # a tiny model: threads only cost
    transformers.utils.logging.disable_progress_bar()
    served = ServedModel()
    publisher = LLMPublisher(served, ProxyLLM(endpoint="http://127.0.0.1:1/v1", model="tiny"))
    grpo = GRPO(
        tiny_llama(), {"console": False}, publisher=publisher, steps=1, batch_size=2, group_size=4, micro_batch_size=8,
        learning_rate=1e-2, device="cpu", max_tokens=3, temperature=1.0,
        checkpoint_every=1, checkpoint_dir=os.path.join(directory, "ckpt"),
    )  # fmt: skip
    async with InMemoryLightningStore() as store:
        stop = asyncio.Event()
        agent = asyncio.create_task(toy_agent(store, served, stop))
        try:
            report = await asyncio.wait_for(grpo.run(store, TASKS), timeout=300)
        finally:
            stop.set()
            await agent
    check(report.steps_done == 1 and len(report.history) == 1, f"steps done: {report.steps_done}")
    metrics = report.history[0]
    check(metrics["rollouts"] == 8 and metrics["triplets"] == 8, f"step metrics: {metrics}")
    check(served.versions and served.versions[0] == 0, f"weights published: {served.versions}")
    check(report.checkpoint and os.path.isdir(report.checkpoint), f"no checkpoint at {report.checkpoint}")
    print(
        f"agl-algo-grpo smoke: ok (1 step: {metrics['rollouts']} rollouts, {metrics['triplets']} triplets, "
        f"reward mean {metrics['reward_mean']:.2f}, weights versions {served.versions})"
    )


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(tmp))
