"""Getting new weights into a running vLLM server.

- **disk** (any vLLM with ``VLLM_SERVER_DEV_MODE=1``, CPU or GPU): the state dict is written as one safetensors
  file into a folder of its own, and the workers read it: ``POST /collective_rpc {"method": "reload_weights",
  "kwargs": {"weights_path": DIR}}``. Around it, generation is paused (``/pause?mode=wait``: requests in flight
  finish with the old weights, new ones wait) and the prefix cache is emptied (its blocks were computed by the old
  weights and would otherwise be reused), then generation resumes.
- **ipc** / **nccl** (vLLM's weight-transfer engines, on GPUs): the server is launched with
  ``--weight-transfer-config {"backend": ...}`` and the trainer sends the tensors themselves through vLLM's own
  trainer-side engine (``WeightTransferTrainerFactory``), CUDA IPC handles when the trainer shares the server's
  GPU, an NCCL broadcast from another GPU; no file is written. It needs vllm importable in this process.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from agl_llm_vllm._launch import VLLMServerError, free_port

__all__ = ["DiskWeights", "TransferWeights", "fast_transfer_available", "save_state_dict"]

logger = logging.getLogger("agl_llm_vllm")

RELOAD_TIMEOUT = 600.0


def fast_transfer_available() -> bool:
    """Whether this process can drive vLLM's weight-transfer engines: CUDA here, and a vllm with
    ``vllm.distributed.weight_transfer`` importable here."""
    try:
        import torch
    except ImportError:
        return False
    if not torch.cuda.is_available():
        return False
    try:
        return importlib.util.find_spec("vllm.distributed.weight_transfer.factory") is not None
    except (ImportError, ValueError):
        return False


def save_state_dict(state_dict: Mapping[str, Any], path: Path) -> None:
    """Write ``state_dict`` as ``path`` (safetensors). Tensors that share memory under several names (tied
    embeddings) are written once per name (safetensors refuses shared storage)."""
    from safetensors.torch import save_file

    seen: set[tuple[int, int]] = set()
    tensors = {}
    for name, tensor in state_dict.items():
        tensor = tensor.detach()
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        tensor = tensor.contiguous()
        if key in seen:
            tensor = tensor.clone()
        seen.add(key)
        tensors[name] = tensor
    save_file(tensors, str(path), metadata={"format": "pt"})


def _check(response: httpx.Response, what: str, root: str) -> Any:
    if response.status_code == 404:
        raise VLLMServerError(
            f"{what}: the vLLM server at {root} has no such route (404): start it with VLLM_SERVER_DEV_MODE=1 (the "
            "backend does when it launches the server)"
        )
    if response.status_code != 200:
        text = response.text.strip().replace("\n", " ")[:500]
        raise VLLMServerError(f"{what}: the vLLM server at {root} answered {response.status_code}: {text}")
    return response.json() if response.content else None


class DiskWeights:
    """The disk path: each version into ``weights_dir/vN/model.safetensors`` (the previous version's folder is
    removed once the new one is loaded), then ``reload_weights``."""

    def __init__(self, root: str, weights_dir: str | None) -> None:
        self.root = root
        self._own_dir = weights_dir is None
        self.dir = Path(tempfile.mkdtemp(prefix="agl-vllm-weights-") if weights_dir is None else weights_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._loaded: Path | None = None

    def load(self, state_dict: Mapping[str, Any], version: int) -> dict[str, float]:
        """Write and load; return the seconds each part took (``save``, ``reload``)."""
        started = time.perf_counter()
        folder = self.dir / f"v{version}"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir()
        save_state_dict(state_dict, folder / "model.safetensors")
        saved = time.perf_counter()
        with httpx.Client(base_url=self.root, timeout=RELOAD_TIMEOUT) as client:
            paused = client.post("/pause", params={"mode": "wait"})
            if paused.status_code != 404:  # vLLM before /pause: reload between requests as they come
                _check(paused, "pausing generation", self.root)
            try:
                rpc = {"method": "reload_weights", "kwargs": {"weights_path": str(folder)}}
                answer = _check(client.post("/collective_rpc", json=rpc), "reload_weights", self.root)
                if answer is not None and any(r is not None for r in answer.get("results", [])):
                    raise VLLMServerError(f"reload_weights: unexpected answer from {self.root}: {answer}")
                reset = _check(client.post("/reset_prefix_cache"), "resetting the prefix cache", self.root)
                if reset is not None and reset.get("success") is False:
                    raise VLLMServerError(f"resetting the prefix cache of {self.root} failed: {reset}")
            finally:
                if paused.status_code == 200:
                    _check(client.post("/resume"), "resuming generation", self.root)
        if self._loaded is not None and self._loaded != folder:
            shutil.rmtree(self._loaded, ignore_errors=True)
        self._loaded = folder
        return {"save": saved - started, "reload": time.perf_counter() - saved}

    def close(self) -> None:
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        elif self._loaded is not None:
            shutil.rmtree(self._loaded, ignore_errors=True)


class TransferWeights:
    """The fast path: vLLM's trainer-side weight-transfer engine (``ipc`` or ``nccl``), set up at the first load
    (the tensors' names, shapes and dtypes must stay the same from then on)."""

    def __init__(self, root: str, backend: str) -> None:
        self.root = root
        self.backend = backend
        self.engine: Any = None
        self.current: Mapping[str, Any] = {}

    def _init(self) -> None:
        from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource
        from vllm.distributed.weight_transfer.clients import HTTPVLLMWeightSyncClient
        from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

        sink = self

        class CurrentWeights(WeightSource):  # type: ignore[misc]
            """The state dict being sent now (vLLM's full-resync engines replay their source each round)."""

            def metadata(self) -> list[Any]:
                return [ParamMeta(n, t.dtype, tuple(t.shape)) for n, t in sink.current.items()]

            def __iter__(self) -> Iterator[tuple[str, Any]]:
                yield from sink.current.items()

        client = HTTPVLLMWeightSyncClient(self.root)
        info: Any
        if self.backend == "ipc":
            from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo

            info = IPCTrainerInitInfo(rank=0)
        else:
            from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

            world = httpx.get(f"{self.root}/get_world_size", timeout=30)
            workers = int(_check(world, "get_world_size", self.root)["world_size"])
            info = NCCLTrainerInitInfo(
                master_address="127.0.0.1", master_port=free_port("127.0.0.1"), world_size=workers + 1, rank=0
            )
        self.engine = WeightTransferTrainerFactory.trainer_init(info, client=client, source=CurrentWeights())

    def load(self, state_dict: Mapping[str, Any], version: int) -> dict[str, float]:
        import torch

        started = time.perf_counter()
        device = torch.device("cuda", torch.cuda.current_device())
        self.current = {n: t.detach().to(device) for n, t in state_dict.items()}
        if self.engine is None:
            self._init()
        self.engine.send_weights()
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(f"{self.root}/reset_prefix_cache", timeout=60)
        return {"transfer": time.perf_counter() - started}

    def close(self) -> None:
        if self.engine is not None:
            with contextlib.suppress(Exception):
                self.engine.shutdown()
            self.engine = None
