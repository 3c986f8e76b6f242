"""Several LoRA adapters served at once over one base model, in one batch.

An adapter is a set of low-rank pairs ``(A [r, in], B [out, r])`` on some of the model's linear layers: the layer's
output for a sequence served under that adapter is ``W x + s · B (A x)`` (``s``: its scale, ``alpha / r``). The
:class:`AdapterBank` keeps, per adapted layer, every adapter's pair stacked into ``A [slots, r, in]`` and ``B
[slots, out, r]`` (``s`` folded into ``B``); slot 0 is the base model (zeros). A forward pass carries one adapter
slot per row (:attr:`AdapterBank.rows`): every row runs the base matmul together, then its own low-rank delta, the
pairs gathered by slot and applied with two batched matmuls (``bmm``). So requests under different adapters share
decode steps, and a row's numbers do not depend on which adapters the other rows use.

New weights for an adapter are a copy of its ``A``/``B`` into its slot (kilobytes to a few MB, nothing merged into
the base weights); a new adapter, a higher rank or a layer no adapter had before grow the stacks. Both run on the
engine thread between steps (:meth:`agl_model_server.ModelServer.load_adapter`).

The adapter's tensors are named by the served model's module names: ``{module}.lora_A`` and ``{module}.lora_B``
(e.g. ``model.layers.0.self_attn.q_proj.lora_A``); :func:`adapter_state_from_peft` turns peft's names into these.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from agl_model_server._weights import WeightsError

__all__ = ["ADAPTER_NAME", "AdapterBank", "adapter_state_from_peft", "split_model_name"]

ADAPTER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")
"""What an adapter may be called: letters, digits, ``_`` and ``-`` (it goes into a model name: ``base:adapter``)."""


def split_model_name(name: str) -> tuple[str, str | None]:
    """``"policy:planner"`` → ``("policy", "planner")``; a name without ``:`` has no adapter."""
    base, sep, adapter = name.rpartition(":")
    return (base, adapter) if sep and base else (name, None)


def adapter_state_from_peft(state: Mapping[str, torch.Tensor], adapter: str) -> dict[str, torch.Tensor]:
    """The ``{module}.lora_A`` / ``{module}.lora_B`` tensors of ``adapter`` from a peft model's state dict (names
    like ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.planner.weight``)."""
    out: dict[str, torch.Tensor] = {}
    for kind in ("lora_A", "lora_B"):
        marker = f".{kind}.{adapter}.weight"
        for name, tensor in state.items():
            if name.endswith(marker):
                module = name[: -len(marker)].removeprefix("base_model.model.")
                out[f"{module}.{kind}"] = tensor
    return out


@dataclass
class _Layer:
    module: torch.nn.Linear
    a: torch.Tensor  # [slots, rank, in]
    b: torch.Tensor  # [slots, out, rank], the scale folded in


class AdapterBank:
    """The adapters of one served model (see the module's docstring). Not thread-safe: the engine thread calls
    :meth:`delta` and, with nothing in flight, :meth:`load`."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self._modules = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        self._layers: dict[int, _Layer] = {}  # id(module) -> its stacks
        self.slots: dict[str, int] = {}  # adapter name -> slot (1, 2, ...)
        self.versions: dict[str, int] = {}
        self._rows: torch.Tensor | None = None
        self._uniform: int | None = None
        self._groups: list[tuple[int, torch.Tensor]] | None = None
        self._hooks: list[Any] = []
        self.hooks = False
        """Whether :meth:`load` hooks the adapted layers (the dynamic path runs transformers' forward)."""
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype

    @property
    def rows(self) -> torch.Tensor | None:
        """The adapter slot of each row of the forward pass that runs now (set by the decode path)."""
        return self._rows

    @rows.setter
    def rows(self, rows: torch.Tensor | None) -> None:
        self._rows = rows
        # On the CPU, a batch whose rows all use one adapter (or none) takes a plain matmul (or nothing), and a
        # mixed batch one matmul per adapter over its rows (gathering a pair per row would copy B for every row);
        # looking costs nothing there. On a GPU it would wait for the device (and break a captured graph): gather.
        self._uniform, self._groups = None, None
        if rows is not None and rows.device.type == "cpu" and rows.numel():
            first = int(rows[0])
            if bool((rows == first).all()):
                self._uniform = first
            else:
                self._groups = [(int(slot), (rows == slot).nonzero()[:, 0]) for slot in rows.unique() if slot]

    def __bool__(self) -> bool:
        return bool(self.slots)

    def __contains__(self, name: str) -> bool:
        return name in self.slots

    @property
    def names(self) -> list[str]:
        return list(self.slots)

    def slot(self, name: str | None) -> int:
        """The slot of adapter ``name`` (0: the base model); ``KeyError`` for an adapter not loaded."""
        return 0 if name is None else self.slots[name]

    # ----------------------------------------------------------------------------------------------- forward
    def delta(self, module: torch.nn.Module, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor | None:
        """The low-rank part of ``module``'s output for ``x`` (``[rows, width, in]``), each row under its own
        adapter (``rows``, default :attr:`rows`); ``None`` when no adapter touches ``module``."""
        layer = self._layers.get(id(module))
        uniform = self._uniform if rows is None else None
        rows = self._rows if rows is None else rows
        if layer is None or rows is None or uniform == 0:
            return None
        if uniform is not None:  # every row under one adapter
            return (x @ layer.a[uniform].t()) @ layer.b[uniform].t()
        groups = self._groups if rows is self._rows else None
        if groups is not None:  # the CPU, several adapters: one product per adapter over its rows
            out = x.new_zeros(*x.shape[:-1], layer.b.shape[1])
            for slot, where in groups:
                out[where] = (x[where] @ layer.a[slot].t()) @ layer.b[slot].t()
            return out
        shaped = x if x.dim() == 3 else x.reshape(rows.shape[0], -1, x.shape[-1])
        a = layer.a.index_select(0, rows)  # [rows, r, in]
        b = layer.b.index_select(0, rows)  # [rows, out, r]
        out = torch.bmm(torch.bmm(shaped, a.transpose(1, 2)), b.transpose(1, 2))
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def hook_modules(self) -> None:
        """Add each adapted layer's delta to its output when transformers' forward calls it (the dynamic path;
        the static path calls :meth:`delta` itself)."""
        for layer in self._layers.values():
            if not any(getattr(h, "_agl_module", None) is layer.module for h in self._hooks):
                handle = layer.module.register_forward_hook(self._hook)
                handle._agl_module = layer.module  # type: ignore[attr-defined]
                self._hooks.append(handle)

    def _hook(self, module: torch.nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        delta = self.delta(module, inputs[0])
        return output if delta is None else output + delta

    # ----------------------------------------------------------------------------------------------- weights
    def check(self, name: str, state: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{module: (A, B)}`` from ``state``; raises :class:`WeightsError` (nothing changed) when a name, a shape
        or a pair does not fit the served model."""
        if not ADAPTER_NAME.match(name):
            raise WeightsError(
                f"the adapter name {name!r} is not allowed: use letters, digits, '_' and '-' (at most 64)"
            )
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in state.items():
            owner, _, kind = key.rpartition(".")
            if kind not in ("lora_A", "lora_B") or not owner:
                raise WeightsError(f"adapter tensor {key!r}: names must be '<module>.lora_A' or '<module>.lora_B'")
            pairs.setdefault(owner, {})[kind] = tensor
        if not pairs:
            raise WeightsError(f"the adapter {name!r} has no tensors")
        out = {}
        for module_name, pair in pairs.items():
            module = self._modules.get(module_name)
            if module is None:
                raise WeightsError(
                    f"adapter {name!r}: {module_name!r} is not a linear layer of the served model (e.g. "
                    f"{sorted(self._modules)[:3]})"
                )
            if set(pair) != {"lora_A", "lora_B"}:
                raise WeightsError(f"adapter {name!r}: {module_name!r} needs both lora_A and lora_B")
            a, b = pair["lora_A"], pair["lora_B"]
            if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
                raise WeightsError(
                    f"adapter {name!r}: {module_name!r} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}; "
                    "expected [r, in] and [out, r]"
                )
            if a.shape[1] != module.in_features or b.shape[0] != module.out_features:
                raise WeightsError(
                    f"adapter {name!r}: {module_name!r} is {module.in_features} -> {module.out_features}, the "
                    f"adapter's pair {a.shape[1]} -> {b.shape[0]}"
                )
            out[module_name] = (a, b)
        return out

    def load(self, name: str, state: Mapping[str, torch.Tensor], *, scale: float, version: int | None) -> dict:
        """Put adapter ``name``'s weights (``state``: ``{module}.lora_A``/``lora_B``; ``scale`` multiplies its
        output) in its slot, adding the adapter if new; the layers it leaves out get zeros. Returns
        ``{"adapter", "version", "loaded_tensors", "new", "resized"}`` (``resized``: the stacks grew, so a
        captured decode graph must be dropped)."""
        pairs = self.check(name, state)
        new = name not in self.slots
        slots_needed = len(self.slots) + 1 + int(new)
        resized = False
        for module_name, (a, _b) in pairs.items():
            resized |= self._ensure(self._modules[module_name], slots_needed, a.shape[0])
        if new:
            self.slots[name] = len(self.slots) + 1
            for layer in self._layers.values():  # a new adapter's slot may exist already (grown ahead)
                resized |= self._ensure(layer.module, slots_needed, 1)
        slot = self.slots[name]
        with torch.no_grad():
            for layer in self._layers.values():
                layer.a[slot].zero_()
                layer.b[slot].zero_()
            for module_name, (a, b) in pairs.items():
                layer = self._layers[id(self._modules[module_name])]
                rank = a.shape[0]
                layer.a[slot, :rank].copy_(a.to(device=self.device, dtype=self.dtype))
                layer.b[slot, :, :rank].copy_((b.to(device=self.device, dtype=torch.float32) * scale).to(self.dtype))
        self.versions[name] = (self.versions.get(name, 0) + 1) if version is None else int(version)
        if self.hooks:
            self.hook_modules()
        return {
            "adapter": name,
            "version": self.versions[name],
            "loaded_tensors": 2 * len(pairs),
            "new": new,
            "resized": resized,
        }

    def _ensure(self, module: torch.nn.Linear, slots: int, rank: int) -> bool:
        """Make ``module``'s stacks hold at least ``slots`` slots of rank ``rank`` (keeping what is there)."""
        layer = self._layers.get(id(module))
        have_slots = 0 if layer is None else layer.a.shape[0]
        have_rank = 0 if layer is None else layer.a.shape[1]
        if layer is not None and have_slots >= slots and have_rank >= rank:
            return False
        new_slots, new_rank = max(slots, have_slots), max(rank, have_rank)
        a = torch.zeros(new_slots, new_rank, module.in_features, device=self.device, dtype=self.dtype)
        b = torch.zeros(new_slots, module.out_features, new_rank, device=self.device, dtype=self.dtype)
        if layer is not None:
            a[:have_slots, :have_rank].copy_(layer.a)
            b[:have_slots, :, :have_rank].copy_(layer.b)
        self._layers[id(module)] = _Layer(module, a, b)
        return True

    def nbytes(self, name: str) -> int:
        """What adapter ``name`` holds in the bank (its slot of every stack)."""
        return sum(layer.a[0].nbytes + layer.b[0].nbytes for layer in self._layers.values()) if name in self else 0
