"""Checkpoints on disk: ``{checkpoint_dir}/step-000010/`` holds ``model/`` (``save_pretrained``: the full model, or
only the LoRA adapter; with several named adapters, one folder each), ``optimizer.pt`` (one state per adapter with
several), ``rng.pt`` and ``state.json`` (step, whether LoRA is on, the adapters' names). A checkpoint
is written under a temporary name and renamed when complete, so a crash never leaves a half-written "latest"."""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "disk_usage",
    "format_size",
    "latest_checkpoint",
    "list_checkpoints",
    "load_model_weights",
    "prune_checkpoints",
    "read_checkpoint",
    "save_model_weights",
    "write_checkpoint",
]

_NAME = re.compile(r"^step-(\d+)$")


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``directory`` as ``(step, path)``, oldest first."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match and (path / "state.json").is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(directory: Path) -> Path | None:
    checkpoints = list_checkpoints(directory)
    return checkpoints[-1][1] if checkpoints else None


def prune_checkpoints(directory: Path, keep: int | None, *, newest: Path | None = None) -> None:
    """Delete all but ``keep`` checkpoints in ``directory`` (``None``: keep all): the highest steps are kept, and
    ``newest`` (the one just written) always is, even when an earlier run left checkpoints of later steps."""
    if keep is None:
        return
    found = [path for _, path in list_checkpoints(directory)]
    if newest is not None and newest in found:
        found.remove(newest)
        keep -= 1
    for path in found[: max(len(found) - keep, 0)]:
        shutil.rmtree(path, ignore_errors=True)


def disk_usage(path: Path) -> int:
    """Bytes ``path`` (a file or a folder, walked) takes on disk, as ``du`` counts them (allocated blocks)."""
    if not path.exists():
        return 0
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
    total = 0
    for file in files:
        info = file.stat()
        total += getattr(info, "st_blocks", 0) * 512 or info.st_size
    return total


def format_size(size: int) -> str:
    """``1.6 GB``, ``517 MB``, ``348 kB``: the figure ``du -h`` gives (powers of 1024, rounded up; one decimal
    below 10)."""
    value, unit = float(size), "B"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            break
        value /= 1024
    if unit == "B":
        return f"{size} B"
    tenths = math.ceil(value * 10) / 10
    return f"{tenths:.1f} {unit}" if tenths < 10 else f"{math.ceil(value)} {unit}"


def write_checkpoint(directory: Path, step: int, *, model: Any, optimizer: Any, state: dict[str, Any]) -> Path:
    """Write a complete checkpoint for ``step``; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step:06d}"
    partial = directory / f".step-{step:06d}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    save_model_weights(model, partial / "model")
    torch.save(optimizer.state_dict(), partial / "optimizer.pt")
    rng: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, partial / "rng.pt")
    (partial / "state.json").write_text(json.dumps({"step": step, **state}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    return final


def read_checkpoint(
    path: Path, *, model: Any, optimizer: Any, lora: bool, device: torch.device, adapters: Sequence[str] = ()
) -> dict[str, Any]:
    """Load ``path`` into ``model`` and ``optimizer``; returns its ``state.json``. ``adapters``: the named LoRA
    adapters the run trains (the checkpoint must hold the same ones)."""
    state = json.loads((path / "state.json").read_text())
    saved = list(state.get("adapters") or [])
    if saved != list(adapters):
        raise ValueError(
            f"the checkpoint {path} holds the adapters {saved or 'none'}, but this run trains "
            f"{list(adapters) or 'none'}: use the same adapters option, or another checkpoint_dir"
        )
    if bool(state.get("lora")) != lora:
        raise ValueError(
            f"the checkpoint {path} was written with LoRA {'on' if state.get('lora') else 'off'}, but this run has "
            f"it {'on' if lora else 'off'}: use the same lora setting, or another checkpoint_dir"
        )
    load_model_weights(model, path / "model", lora=lora, device=device, adapters=adapters)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=True))
    rng_path = path / "rng.pt"
    if rng_path.is_file():
        rng = torch.load(rng_path, weights_only=False)
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    return state


def save_model_weights(model: Any, target: Path) -> None:
    """``save_pretrained`` when the model has it (a peft model saves its adapter only); else a plain state dict."""
    if hasattr(model, "save_pretrained"):
        with _no_progress_bar():  # transformers' "Writing model shards" bar would cut into the console's tables
            model.save_pretrained(str(target))
    else:
        target.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), target / "weights.pt")


@contextlib.contextmanager
def _no_progress_bar() -> Iterator[None]:
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def load_model_weights(
    model: Any, source: Path, *, lora: bool, device: torch.device, adapters: Sequence[str] = ()
) -> None:
    if lora:
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        for name in adapters:  # peft's save_pretrained writes each named adapter in a folder of its name
            set_peft_model_state_dict(model, load_peft_weights(str(source / name), device=str(device)), name)
        if adapters:
            return
        set_peft_model_state_dict(model, load_peft_weights(str(source), device=str(device)))
        return
    plain = source / "weights.pt"
    if plain.is_file():
        model.load_state_dict(torch.load(plain, map_location=device, weights_only=True))
        return
    from safetensors.torch import load_file

    files = sorted(source.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no weights (*.safetensors or weights.pt) in {source}")
    weights: dict[str, torch.Tensor] = {}
    for file in files:
        weights.update(load_file(str(file), device=str(device)))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # save_pretrained leaves out tied weights (lm_head = embeddings); they share storage with a loaded one
    loaded = {t.data_ptr() for name, t in model.state_dict().items() if name in weights}
    untied = [name for name in missing if model.state_dict()[name].data_ptr() not in loaded]
    if unexpected or untied:
        raise ValueError(f"checkpoint {source} does not fit the model: missing {untied}, unexpected {unexpected}")
