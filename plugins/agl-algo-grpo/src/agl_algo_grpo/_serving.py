"""GRPO selected by name: the model named by a string, and the serving GRPO does itself when nobody gives it a
publisher.

``Trainer(algorithm="grpo", options={"algorithm": {"model": ...}})`` and ``agl train --algorithm grpo --set
algorithm.model=...`` cannot hand GRPO a model server or a publisher, so for the length of ``run()`` GRPO starts
what its rollouts need (as ``contrib/recipes/grpo_calculator.py`` does by hand): the LLM backend its ``backend``
option names (``model-server``: agl-model-server holding a copy of the policy in this process) serving the policy,
the kernel's LLM proxy in front of it on 127.0.0.1 (it records every call with token ids and logprobs), and an
:class:`~agl_algo_grpo.LLMPublisher` that hands each version's weights to the backend and publishes a ``ProxyLLM``
for the rollouts to pin. All of it stops when ``run()`` ends, also on an error.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.util
import os
import re
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import torch
from torch import nn

from agl_algo_grpo._adapters import AdapterPublisher
from agl_algo_grpo._publish import LLMPublisher
from agl_kernel.errors import ConfigError, MissingDependencyError
from agl_kernel.llm_backend import LLMBackend
from agl_kernel.models import LLM, ProxyLLM, Resource
from agl_kernel.store import LightningStore

__all__ = ["SERVED_MODEL_NAME", "SERVE_EXTRA", "load_named_model", "require_model_server", "serving"]

SERVE_EXTRA = "agl-algo-grpo[serve]"
"""The extra that brings agl-model-server, which GRPO needs to serve the policy itself."""

SERVED_MODEL_NAME = "policy"
"""The name the policy is served under (the ``model`` of the published LLM, and of the proxy's spans)."""

_OBJECT_SPEC = re.compile(r"^(?:[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*|.+\.py):[A-Za-z_][\w.]*$")


def require_model_server() -> None:
    """Raise :class:`MissingDependencyError` naming the extra when agl-model-server is not installed."""
    try:
        importlib.import_module("agl_model_server")
    except ImportError as err:
        raise MissingDependencyError(
            "GRPO selected by name serves the policy itself, which needs agl-model-server: "
            f"pip install '{SERVE_EXTRA}' (or give GRPO a publisher: GRPO(model, publisher=LLMPublisher(...)))"
        ) from err


def is_object_spec(name: str) -> bool:
    """Whether ``name`` is ``module.path:factory`` or ``path/to/file.py:factory`` (and not a local directory)."""
    return bool(_OBJECT_SPEC.match(name)) and not os.path.exists(name)


def _import_factory(spec: str) -> Callable[..., Any]:
    from agl_kernel.imports import import_object

    try:
        obj = import_object(spec)
    except (ValueError, ImportError, AttributeError, OSError) as err:
        raise ConfigError(f"algorithm.model: cannot import {spec!r}: {err}") from None
    if not callable(obj):
        raise ConfigError(f"algorithm.model: {spec!r} is not a function returning (model, tokenizer)")
    return obj


def check_model_name(name: str) -> None:
    """What can be checked about a model name without loading it: a ``module:factory`` imports."""
    if is_object_spec(name):
        _import_factory(name)


def load_named_model(name: str, *, dtype: torch.dtype | None = None) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` for the ``model`` option: ``module:factory`` (called with no arguments; it returns
    ``(model, tokenizer)``), else what agl-model-server's ``load_model`` knows (a local Hugging Face directory, or
    ``smollm2``), else a Hugging Face model name for ``transformers`` (which may download it)."""
    if is_object_spec(name):
        made = _import_factory(name)()
        if not (isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module)):
            raise ConfigError(f"algorithm.model: {name!r} must return (model, tokenizer), not {type(made).__name__}")
        return made
    try:
        from agl_model_server import load_model
    except ImportError:
        pass
    else:
        try:
            return load_model(name, dtype=dtype)
        except FileNotFoundError:
            pass  # neither a local directory nor a name it knows: a Hugging Face model name
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ModuleNotFoundError as err:  # pragma: no cover - a dependency of the distribution
        raise MissingDependencyError("loading a model by name needs transformers: pip install transformers") from err
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
        except TypeError:  # transformers < 4.56 calls it torch_dtype
            model = AutoModelForCausalLM.from_pretrained(name, torch_dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(name)
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"algorithm.model: cannot load {name!r}: not a local model directory, a name agl-model-server knows "
            f"(smollm2), a module:factory, nor a Hugging Face model that loads ({first})"
        ) from None
    return model, tokenizer


def served_copy(model: nn.Module, device: torch.device) -> nn.Module:
    """A copy of ``model`` (as loaded, before the trainer moves or wraps it) for the model server: on a GPU in
    bfloat16 next to the policy (GRPO keeps float32 master weights and trains under autocast); on the CPU as is."""
    served = copy.deepcopy(model)
    if device.type == "cuda":
        served.to(device, torch.bfloat16)
    return served.eval()


@contextlib.asynccontextmanager
async def serving(
    store: LightningStore,
    backend: LLMBackend,
    model: nn.Module,
    tokenizer: Any,
    *,
    max_tokens: int,
    adapters: Sequence[str] = (),
) -> AsyncIterator[LLMPublisher | AdapterPublisher]:
    """Serve ``model`` with ``backend`` (each published version's weights handed to it) behind an LLM proxy on
    127.0.0.1 while the body runs; yields the publisher. The published resources are a ``ProxyLLM`` under
    ``main_llm``, next to the store's latest resources that are not LLMs (e.g. a prompt given with
    ``Trainer(initial_resources=...)``). With ``adapters`` (one LoRA per role) an :class:`AdapterPublisher`: each
    adapter's tensors only go to the backend, and each is published as an LLM of its own."""
    from agl_kernel.proxy import LLMProxy
    from agl_kernel.server import running_server

    latest = await store.get_latest_resources()
    extra: dict[str, Resource] = {
        name: resource
        for name, resource in (latest.resources.items() if latest is not None else ())
        if not isinstance(resource, LLM)
    }
    try:
        base_url = await backend.start(model, tokenizer, model_name=SERVED_MODEL_NAME, max_tokens=max_tokens)
        proxy = LLMProxy(store, [base_url], priority=backend.priority_scheduling)
        try:
            async with running_server(store, route_handlers=proxy.routes(), plugins=False) as url:
                llm = ProxyLLM(endpoint=url, model=SERVED_MODEL_NAME)
                if adapters:
                    yield AdapterPublisher(backend, llm, adapters, extra_resources=extra)
                else:
                    yield LLMPublisher(backend, llm, extra_resources=extra)
        finally:
            await proxy.aclose()
    finally:
        await backend.stop()
