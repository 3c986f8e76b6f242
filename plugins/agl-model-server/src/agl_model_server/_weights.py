"""Reading new weights (a safetensors file, a Hugging Face directory, or safetensors bytes pushed by a trainer) and
putting them into the served module: copied in place (:func:`apply_state_dict`), or staged into tensors of their
own while generation goes on and then swapped in at once (:func:`stage_state_dict`, :meth:`StagedWeights.swap`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from agl_kernel.errors import AglError

__all__ = [
    "StagedWeights",
    "WeightsError",
    "apply_state_dict",
    "read_safetensors_bytes",
    "read_weights_path",
    "stage_state_dict",
]


class WeightsError(AglError, ValueError):
    """New weights that do not fit the served model (unknown names, wrong shapes, missing tensors, unreadable
    data); nothing was changed."""


def read_safetensors_bytes(data: bytes) -> dict[str, torch.Tensor]:
    """A state dict from the bytes of a safetensors file (what ``safetensors.torch.save(state_dict)`` returns)."""
    from safetensors.torch import load

    if not data:
        raise WeightsError("the request body is empty: send the bytes of a safetensors file (safetensors.torch.save)")
    try:
        return load(bytes(data))
    except Exception as err:
        raise WeightsError(f"the body is not a safetensors file: {err}") from err


def read_weights_path(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a directory holding one or more (a ``save_pretrained`` folder,
    sharded or not)."""
    from safetensors.torch import load_file

    where = Path(path).expanduser()
    if where.is_dir():
        files = sorted(where.glob("*.safetensors"))
        if not files:
            raise WeightsError(f"{str(where)!r} has no .safetensors file (save the model with save_pretrained)")
    elif where.is_file():
        files = [where]
    else:
        raise WeightsError(f"{str(where)!r} does not exist on the model server's machine")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            state.update(load_file(str(file)))
        except Exception as err:
            raise WeightsError(f"cannot read {str(file)!r} as safetensors: {err}") from err
    return state


def _normalize_names(state: Mapping[str, torch.Tensor], known: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Accept names with a ``module.`` prefix (DDP/FSDP wrappers) as well."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name not in known and name.startswith("module.") and name[7:] in known:
            name = name[7:]
        out[name] = tensor
    return out


def _checked_targets(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], partial: bool
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(state with normalised names, the model's tensors by name)``, once every check has passed."""
    targets = model.state_dict(keep_vars=True)
    state = _normalize_names(state, targets)
    unknown = sorted(set(state) - set(targets))
    if unknown:
        raise WeightsError(
            f"{len(unknown)} tensor(s) are not in the served model, e.g. {unknown[:3]}; the model has names like "
            f"{sorted(targets)[:3]}"
        )
    wrong = [
        f"{name}: {tuple(tensor.shape)} (model: {tuple(targets[name].shape)})"
        for name, tensor in state.items()
        if tuple(tensor.shape) != tuple(targets[name].shape)
    ]
    if wrong:
        raise WeightsError(f"{len(wrong)} tensor(s) have the wrong shape: {'; '.join(wrong[:3])}")
    if not partial:
        # Group the model's names by the tensor they refer to: a group is covered when any of its names is given.
        groups: dict[int, list[str]] = {}
        for name, tensor in targets.items():
            groups.setdefault(id(tensor), []).append(name)
        missing = [names[0] for names in groups.values() if not any(n in state for n in names)]
        if missing:
            raise WeightsError(
                f"{len(missing)} tensor(s) of the model are missing, e.g. {missing[:3]}; send them all, or set "
                f"partial=true to update only the ones sent"
            )
    return state, targets


def apply_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], *, partial: bool = False) -> int:
    """Copy ``state`` into ``model``'s parameters and buffers in place; returns how many tensors were copied.

    Everything is checked before anything is copied: unknown names, shape mismatches, and (unless ``partial``)
    tensors of the model that ``state`` leaves out raise :class:`WeightsError`. Tied weights count as present when
    any of their names is given (``save_pretrained`` stores a tied ``lm_head.weight`` once, as the embedding)."""
    state, targets = _checked_targets(model, state, partial)
    with torch.no_grad():
        for name, tensor in state.items():
            target = targets[name]
            target.copy_(tensor.to(device=target.device, dtype=target.dtype))
    return len(state)


class StagedWeights:
    """New weights copied into tensors of their own, laid out as the served model's (device, dtype, strides),
    ready to be swapped in: made by :func:`stage_state_dict` while the old weights keep serving."""

    def __init__(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.pairs = pairs  # (the model's parameter or buffer, its staged replacement)

    def __len__(self) -> int:
        return len(self.pairs)

    def swap(self, *, in_place: bool = False) -> int:
        """Make the staged tensors the model's: each parameter (and buffer) is pointed at its staged tensor, a
        reference swap that costs microseconds whatever the model's size (tied weights are one parameter, so
        they stay tied); ``in_place`` copies them into the existing tensors instead (a device-to-device copy, for
        a decoder whose CUDA graphs captured the old tensors' addresses). Returns how many tensors changed."""
        with torch.no_grad():
            for target, staged in self.pairs:
                if in_place:
                    target.copy_(staged)
                else:
                    target.data = staged
        count, self.pairs = len(self.pairs), []
        return count


def stage_state_dict(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], *, partial: bool = False
) -> StagedWeights:
    """Check ``state`` as :func:`apply_state_dict` does (nothing is staged when it does not fit) and copy each tensor
    into a new one shaped, typed and placed like the model's (on the caller's thread: generation goes on with the
    old weights meanwhile). The copies share nothing with ``state``, so a trainer may go on changing its tensors."""
    state, targets = _checked_targets(model, state, partial)
    pairs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # by tensor: a tied weight sent twice is staged once
    with torch.no_grad():
        for name, tensor in state.items():
            target = targets[name]
            staged = torch.empty_like(target, requires_grad=False)
            staged.copy_(tensor)
            pairs[id(target)] = (target, staged)
    return StagedWeights(list(pairs.values()))
