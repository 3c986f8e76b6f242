"""LLM backends: the server that serves the policy being trained (plugins in ``agl.llm_backends``).

An RL algorithm that trains weights (GRPO) needs the policy served while its rollouts run: an OpenAI-compatible
server that returns token ids and logprobs with every completion (so the adapters can build training data), and
that takes each new version of the weights between steps. An LLM backend is that server, picked by name with typed
options (``--set algorithm.backend=model-server --set algorithm.backend_options.max_batch_size=32``):

- ``start(model, tokenizer, model_name=..., max_tokens=...)`` serves ``model`` (a loaded ``torch.nn.Module`` with
  its tokenizer; a backend that runs in another process saves it first) under ``model_name`` and returns the
  OpenAI base URL (``http://HOST:PORT/v1``), once it answers;
- ``load_weights(state_dict, version=...)`` makes the server answer with those weights from then on (the algorithm
  calls it before publishing the version);
- ``stop()`` stops what ``start`` started (also after a failed start).

``agl-model-server`` provides ``model-server`` (in-process, continuous batching, the weights swapped between
batches); a vLLM backend is another implementation of the same three methods.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any

__all__ = ["LLMBackend"]


class LLMBackend(abc.ABC):
    """Serves the policy being trained over an OpenAI-compatible API with token ids and logprobs."""

    priority_scheduling: bool = False
    """Whether the server takes requests' ``priority`` field (lower first) when they wait for room in its batch;
    the LLM proxy in front of it then sends each call's rollout's enqueue time (``LLMProxy(priority=True)``), so
    the oldest rollouts are generated first."""

    @abc.abstractmethod
    async def start(self, model: Any, tokenizer: Any, *, model_name: str, max_tokens: int | None = None) -> str:
        """Serve ``model`` as ``model_name`` (``max_tokens``: the default completion length); return the OpenAI
        base URL once the server answers."""

    @abc.abstractmethod
    async def load_weights(self, state_dict: Mapping[str, Any], *, version: int) -> None:
        """Answer with these weights (tensors by parameter name, as ``model.state_dict()`` names them) from now on;
        ``version`` is the policy version they are."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop serving; safe to call when ``start`` failed or never ran."""
