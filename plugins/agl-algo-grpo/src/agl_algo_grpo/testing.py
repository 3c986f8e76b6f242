"""Test helpers: a tiny randomly initialised Llama, synthetic GRPO samples and a toy agent (for this plugin's tests
and for anyone testing a loop built on it). Needs transformers.

:func:`tiny_chat_model` is a model GRPO can be selected by name with, offline and in seconds (it also needs
agl-model-server, as serving does)::

    Trainer(algorithm="grpo", options={"algorithm": {"model": "agl_algo_grpo.testing:tiny_chat_model", "steps": 1}})
    agl train --algorithm grpo --set algorithm.model=agl_algo_grpo.testing:tiny_chat_model ...
"""

from __future__ import annotations

import asyncio
from typing import Any

import torch

from agl_algo_grpo._batching import TrainingSample
from agl_algo_grpo._policy import PolicyTrainer
from agl_kernel.agent import llm_rollout, openai_client
from agl_kernel.models import Triplet

__all__ = [
    "TOY_TASKS",
    "VOCAB",
    "sequence_logps",
    "synthetic_samples",
    "tiny_chat_model",
    "tiny_llama",
    "vowel_agent",
    "vowel_share",
    "with_sampling_logprobs",
]

VOCAB = 128


def tiny_llama(seed: int = 0) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def tiny_chat_model(seed: int = 0) -> tuple[torch.nn.Module, Any]:
    """``(model, tokenizer)``: agl-model-server's tiny random Llama (2 layers, width 64) and its small byte-level
    BPE tokenizer with a chat template, made on the spot (nothing downloaded; about a second). The same ``seed``
    gives the same weights. A ``module:factory`` for GRPO's ``model`` option:
    ``agl_algo_grpo.testing:tiny_chat_model``."""
    from agl_model_server.testing import make_tiny_model, make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer()
    return make_tiny_model(len(tokenizer), seed=seed), tokenizer


def synthetic_samples(n_prompts: int = 4, seed: int = 1) -> list[TrainingSample]:
    """For each prompt a response to reinforce (advantage +1) and one to discourage (-1), of different lengths."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(n_prompts):
        prompt = torch.randint(3, VOCAB, (4 + i % 3,), generator=g).tolist()
        good = torch.randint(3, VOCAB, (3 + i % 2,), generator=g).tolist()
        bad = torch.randint(3, VOCAB, (4,), generator=g).tolist()
        samples.append(TrainingSample(Triplet(prompt_token_ids=prompt, response_token_ids=good), 1.0, group=i))
        samples.append(TrainingSample(Triplet(prompt_token_ids=prompt, response_token_ids=bad), -1.0, group=i))
    return samples


def with_sampling_logprobs(policy: PolicyTrainer, samples: list[TrainingSample]) -> list[TrainingSample]:
    """The samples with ``response_logprobs`` as a sampler running the policy's current weights would record."""
    logps = policy.sequence_logprobs(samples)
    out = []
    for row, sample in enumerate(samples):
        t = sample.triplet
        start = len(t.prompt_token_ids) - 1
        recorded = logps[row, start : start + len(t.response_token_ids)].tolist()
        triplet = Triplet(
            prompt_token_ids=t.prompt_token_ids, response_token_ids=t.response_token_ids, response_logprobs=recorded
        )
        out.append(TrainingSample(triplet, sample.advantage, sample.group))
    return out


def sequence_logps(policy: PolicyTrainer, samples: list[TrainingSample]) -> list[float]:
    """log p(response | prompt) of each sample under the current policy."""
    return policy.sequence_logprobs(samples).sum(dim=-1).tolist()


TOY_TASKS = [{"question": "one two three"}, {"question": "hello world"}, {"question": "what is the answer?"}]
"""Tasks for :func:`vowel_agent`."""


def vowel_share(text: str) -> float:
    """The share of vowels among the letters of ``text`` (0 without letters): a reward that a tiny random model's
    samples vary in, so GRPO's advantages are not all zero."""
    letters = [c for c in text.lower() if c.isalpha()]
    return sum(c in "aeiou" for c in letters) / len(letters) if letters else 0.0


@llm_rollout
async def vowel_agent(task: dict[str, Any], llm: Any) -> float:
    """A toy agent: one chat call through the rollout's LLM with ``task["question"]``, rewarded by the reply's
    :func:`vowel_share`. A task's ``wait_seconds`` makes it wait that long after the call, as an agent waits on
    its environment (a tool call's latency)."""
    client = openai_client(llm, max_retries=0, timeout=300)
    params = {k: v for k, v in llm.sampling_parameters.items() if k in ("temperature", "max_tokens")}
    messages = [{"role": "user", "content": task["question"]}]
    response = await client.chat.completions.create(model=llm.model, messages=messages, **params)
    await asyncio.sleep(task.get("wait_seconds", 0.0))
    return vowel_share(response.choices[0].message.content or "")
