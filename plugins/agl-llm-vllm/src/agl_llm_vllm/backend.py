"""vLLM as an LLM backend (``vllm`` in ``agl.llm_backends``): the policy served by a vLLM OpenAI server that this
backend launches (or attaches to with ``url``), with token ids and logprobs, its weights replaced at runtime.

    --set algorithm.backend=vllm --set algorithm.backend_options.dtype=float32 \\
        --set algorithm.backend_options.enforce_eager=true
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from agl_kernel.errors import ConfigError
from agl_kernel.llm_backend import LLMBackend
from agl_llm_vllm._launch import VLLMServer, VLLMServerError, attached_root, served_models
from agl_llm_vllm._options import VLLMBackendOptions
from agl_llm_vllm._weights import DiskWeights, TransferWeights, fast_transfer_available

__all__ = ["VLLMBackend", "VLLMBackendOptions"]

logger = logging.getLogger("agl_llm_vllm")


class VLLMBackend(LLMBackend):
    """Serves the policy with vLLM. ``start`` saves the given model (``save_pretrained``) to a temporary folder
    and launches vLLM's OpenAI server on it (or on the ``model`` option's folder, or attaches to ``url``);
    ``load_weights`` hands each new version to the server (see :mod:`agl_llm_vllm._weights`) and records how long
    the swap took in :attr:`last_swap`; ``stop`` ends the server's process group and removes what was written."""

    Options = VLLMBackendOptions

    def __init__(self, options: VLLMBackendOptions | None = None, **kwargs: Any) -> None:
        self.options = options if options is not None else VLLMBackendOptions(**kwargs)
        self.server: VLLMServer | None = None
        self.root: str | None = None
        self.weight_transfer: str | None = None
        self.last_swap: dict[str, float] = {}
        """Seconds the last ``load_weights`` took: ``total`` and its parts (``save`` + ``reload``, or
        ``transfer``)."""
        self._sink: DiskWeights | TransferWeights | None = None
        self._saved_model: Path | None = None

    @classmethod
    def from_options(cls, options: VLLMBackendOptions) -> VLLMBackend:
        return cls(options)

    @property
    def base_url(self) -> str | None:
        """The OpenAI base URL (``http://HOST:PORT/v1``) while serving."""
        return None if self.root is None else f"{self.root}/v1"

    def _choose_weight_transfer(self, launching: bool) -> str:
        wanted = self.options.weight_transfer
        if wanted == "auto":
            return "ipc" if launching and fast_transfer_available() else "disk"
        if wanted != "disk" and not fast_transfer_available():
            raise ConfigError(
                f"vllm backend: weight_transfer: {wanted!r} needs CUDA and vllm (with vllm.distributed."
                "weight_transfer) in this process; use 'disk' (or 'auto') here"
            )
        return wanted

    async def start(self, model: Any, tokenizer: Any, *, model_name: str, max_tokens: int | None = None) -> str:
        if self.root is not None:
            raise RuntimeError("the vllm backend is already serving: stop() it first")
        if self.options.url:
            self.root = await asyncio.to_thread(self._attach, model_name)
            self.weight_transfer = self._choose_weight_transfer(launching=False)
        else:
            self.weight_transfer = self._choose_weight_transfer(launching=True)
            folder = self.options.model
            if folder is None:
                if model is None:
                    raise ConfigError("vllm backend: model: no model to serve: give start() one, or the model option")
                self._saved_model = Path(tempfile.mkdtemp(prefix="agl-vllm-model-"))
                await asyncio.to_thread(_save_pretrained, model, tokenizer, self._saved_model)
                folder = str(self._saved_model)
            self.server = VLLMServer(
                folder,
                self.options,
                served_model_names=[model_name],
                max_tokens=max_tokens,
                weight_transfer=self.weight_transfer,
            )
            try:
                self.root = await asyncio.to_thread(self.server.start)
            except BaseException:
                await self.stop()
                raise
        if self.weight_transfer == "disk":
            self._sink = DiskWeights(self.root, self.options.weights_dir)
        else:
            self._sink = TransferWeights(self.root, self.weight_transfer)
        return f"{self.root}/v1"

    def _attach(self, model_name: str) -> str:
        root = attached_root(self.options.url or "")
        try:
            names = served_models(root)
        except (httpx.HTTPError, KeyError, ValueError) as err:
            raise VLLMServerError(
                f"vllm backend: url: no vLLM server answers at {root}/v1/models ({type(err).__name__}: {err}): "
                "start it first, or drop the url option to have the backend launch one"
            ) from None
        if model_name not in names:
            raise ConfigError(
                f"vllm backend: url: the server at {root} serves {names}, not {model_name!r}: start it with "
                f"--served-model-name {model_name}"
            )
        return root

    async def load_weights(self, state_dict: Mapping[str, Any], *, version: int) -> None:
        if self.root is None or self._sink is None:
            raise RuntimeError("the vllm backend is not started: call start() first")
        started = time.perf_counter()
        try:
            parts = await asyncio.to_thread(self._sink.load, state_dict, version)
        except Exception as err:
            if not isinstance(self._sink, TransferWeights) or self.options.weight_transfer != "auto":
                raise
            logger.warning("vLLM's %s weight transfer failed (%s); sending weights through disk from now on",
                           self.weight_transfer, err)  # fmt: skip
            self._sink.close()
            self._sink, self.weight_transfer = DiskWeights(self.root, self.options.weights_dir), "disk"
            parts = await asyncio.to_thread(self._sink.load, state_dict, version)
        self.last_swap = {"total": time.perf_counter() - started, **parts}
        details = ", ".join(f"{k} {v:.2f} s" for k, v in parts.items())
        logger.info("vLLM at %s: weights v%d in %.2f s (%s, %s)", self.root, version, self.last_swap["total"],
                    self.weight_transfer, details)  # fmt: skip

    async def stop(self) -> None:
        sink, self._sink = self._sink, None
        if sink is not None:
            await asyncio.to_thread(sink.close)
        server, self.server = self.server, None
        if server is not None:
            await asyncio.to_thread(server.stop)
        if self._saved_model is not None:
            shutil.rmtree(self._saved_model, ignore_errors=True)
            self._saved_model = None
        self.root = None


def _save_pretrained(model: Any, tokenizer: Any, folder: Path) -> None:
    """The model as a Hugging Face folder vLLM can load (safetensors), with its tokenizer."""
    if not hasattr(model, "save_pretrained"):
        raise ConfigError(
            f"vllm backend: cannot save a {type(model).__name__} for vLLM (it has no save_pretrained): serve a "
            "Hugging Face model, or give the model option a Hugging Face folder"
        )
    model.save_pretrained(str(folder), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
