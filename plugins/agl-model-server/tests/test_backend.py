"""``model-server`` as an LLM backend (``agl.llm_backends``): picked by name with typed options, it serves a model
with token ids and logprobs, takes new weights (the next completion's logprobs are the new model's), and stops."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from agl_kernel.errors import ConfigError
from agl_kernel.llm_backend import LLMBackend
from agl_kernel.plugins import create_component
from agl_model_server.backend import ModelServerBackend
from agl_model_server.testing import forward_logprobs, make_tiny_model, make_tiny_tokenizer

TOL = 1e-4


def greedy(base_url: str) -> tuple[list[int], list[int], list[float], int]:
    body = httpx.post(
        f"{base_url}/completions",
        json={
            "model": "policy",
            "prompt": "the answer is",
            "max_tokens": 6,
            "temperature": 0,
            "ignore_eos": True,
            "logprobs": 0,
            "return_token_ids": True,
        },
        timeout=120,
    ).json()
    choice = body["choices"][0]
    return (
        choice["prompt_token_ids"],
        choice["token_ids"],
        choice["logprobs"]["token_logprobs"],
        body["weights_version"],
    )


def test_by_name_with_typed_options() -> None:
    backend = create_component("llm_backends", "model-server", options={"max_batch_size": "8"})
    assert isinstance(backend, ModelServerBackend) and isinstance(backend, LLMBackend)
    assert backend.options.max_batch_size == 8
    with pytest.raises(ConfigError, match="max_batch_size"):
        create_component("llm_backends", "model-server", options={"max_batch_size": 0})


def test_serves_takes_new_weights_and_stops() -> None:
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(len(tokenizer))  # served as is: load_weights overwrites it
    other = make_tiny_model(len(tokenizer), seed=123)
    backend = ModelServerBackend(max_batch_size=4)

    async def main() -> tuple[Any, ...]:
        try:
            base_url = await backend.start(model, tokenizer, model_name="policy", max_tokens=16)
            before = await asyncio.to_thread(greedy, base_url)
            await backend.load_weights(other.state_dict(), version=7)
            after = await asyncio.to_thread(greedy, base_url)
            return base_url, before, after
        finally:
            await backend.stop()

    base_url, before, after = asyncio.run(main())
    assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
    prompt, ids, logprobs, version = before
    assert prompt and len(ids) == 6 and version != 7
    assert logprobs == pytest.approx(forward_logprobs(make_tiny_model(len(tokenizer)), prompt, ids), abs=TOL)
    assert after[3] == 7 and after[2] == pytest.approx(forward_logprobs(other, prompt, after[1]), abs=TOL)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{base_url}/models", timeout=2)  # stopped
    asyncio.run(backend.stop())  # twice is fine


def test_load_weights_before_start_says_so() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        asyncio.run(ModelServerBackend().load_weights({}, version=1))
