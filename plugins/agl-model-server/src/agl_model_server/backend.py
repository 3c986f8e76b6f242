"""agl-model-server as an LLM backend (``model-server`` in ``agl.llm_backends``): the policy served in this
process, on a free port of 127.0.0.1, new weights staged while it generates and swapped in between two decode
steps."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import attrs

from agl_kernel.llm_backend import LLMBackend

__all__ = ["ModelServerBackend", "ModelServerBackendOptions"]


@attrs.define(kw_only=True)
class ModelServerBackendOptions:
    """Options of the ``model-server`` LLM backend."""

    max_batch_size: int = attrs.field(default=64, validator=attrs.validators.ge(1))
    """Sequences decoded together at most (continuous batching)."""
    max_model_len: int | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.ge(1)))
    """Prompt + completion tokens per sequence at most (default: the model's own limit)."""
    attn_implementation: str = "auto"
    """The attention kernel: auto (sdpa where it is faster), sdpa, eager, ..."""
    static_decode: bool | None = None
    """Decode with static caches and shapes (default: on a GPU only)."""
    drain_on_load: bool = False
    """Let the requests being generated finish with the old weights before new ones are loaded (every completion
    from one version, but generation stops until the longest running request ends). Off (the default): the new
    weights are staged while generation goes on and swapped in between two decode steps (a millisecond's stop;
    running requests go on with the new weights, what asynchronous RL wants)."""


class ModelServerBackend(LLMBackend):
    """Serves the policy with :class:`~agl_model_server.ModelServer` on a background thread of this process: the
    model is served as given (no copy), and ``load_weights`` stages the new tensors on its own thread and swaps them
    in between two decode steps (``drain_on_load``: copies them in place once the running requests have finished)."""

    Options = ModelServerBackendOptions
    priority_scheduling = True

    def __init__(
        self,
        *,
        max_batch_size: int = 64,
        max_model_len: int | None = None,
        attn_implementation: str = "auto",
        static_decode: bool | None = None,
        drain_on_load: bool = False,
    ) -> None:
        self.options = ModelServerBackendOptions(
            max_batch_size=max_batch_size,
            max_model_len=max_model_len,
            attn_implementation=attn_implementation,
            static_decode=static_decode,
            drain_on_load=drain_on_load,
        )
        self.server: Any = None

    async def start(self, model: Any, tokenizer: Any, *, model_name: str, max_tokens: int | None = None) -> str:
        from agl_model_server import ModelServer

        self.server = ModelServer(
            model=model,
            tokenizer=tokenizer,
            model_name=model_name,
            default_max_tokens=max_tokens,
            **attrs.asdict(self.options, filter=lambda attribute, _: attribute.name != "drain_on_load"),
        )
        await asyncio.to_thread(self.server.start)
        base_url: str = self.server.base_url
        return base_url

    async def load_weights(self, state_dict: Mapping[str, Any], *, version: int) -> None:
        if self.server is None:
            raise RuntimeError("the model-server backend is not started: call start() first")
        drain = self.options.drain_on_load
        await asyncio.to_thread(self.server.load_state_dict, state_dict, version=version, drain=drain)

    async def load_adapter(
        self, name: str, state_dict: Mapping[str, Any], *, scale: float = 1.0, version: int
    ) -> dict[str, Any]:
        """Serve LoRA adapter ``name`` (``{module}.lora_A``/``lora_B`` tensors, see
        :meth:`agl_model_server.ModelServer.load_adapter`) as model ``<model_name>:<name>``: only its tensors are
        copied. Returns what the server reports (``seconds``: the copy on the engine thread)."""
        if self.server is None:
            raise RuntimeError("the model-server backend is not started: call start() first")
        future = self.server.load_adapter_async(name, state_dict, scale=scale, version=version)
        result: dict[str, Any] = await asyncio.wrap_future(future)
        return result

    async def stop(self) -> None:
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)
