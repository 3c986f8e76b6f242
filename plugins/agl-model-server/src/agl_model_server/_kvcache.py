"""The dynamic running batch of the engine: a transformers ``DynamicCache`` whose rows are left-padded to one length.

Every row (sequence) of the running batch shares the cache length ``L``; a row with fewer real tokens has padding
columns on the left, masked out by the attention mask. Rows join (``merge``), leave (``select_rows``) and shared
leading padding is dropped (``trim_left``) between decode steps. Only this module touches the cache's internals
(``cache.layers[i].keys/values``), so a change in transformers stays here.

Layers grow in place: appending a token writes into spare capacity (doubled when full) instead of concatenating
the whole cache every step, as ``DynamicLayer`` does, which would copy O(L) per token.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache, DynamicLayer

__all__ = [
    "DynamicBatch",
    "cache_argument",
    "cache_length",
    "make_cache",
    "merge",
    "output_cache",
    "select_rows",
    "trim_left",
]


class _GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` that appends into a buffer with spare capacity; ``keys``/``values`` are views of it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._kbuf: torch.Tensor | None = None
        self._vbuf: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        if not self.is_initialized or self.keys is None or self.keys.numel() == 0:
            self.lazy_initialization(key_states, value_states)
            self.keys, self.values = key_states, value_states
            self._kbuf = self._vbuf = None
            return self.keys, self.values
        assert self.values is not None  # initialized together with keys
        length, new = self.keys.shape[-2], key_states.shape[-2]
        buf = self._kbuf
        if (
            buf is None
            or buf.shape[-2] < length + new
            or buf.shape[0] != self.keys.shape[0]
            or self.keys.data_ptr() != buf.data_ptr()
        ):
            # (Re)allocate with room to grow; the current keys/values may have been replaced by merge/select/trim.
            capacity = max(64, 2 * (length + new))
            shape = (*self.keys.shape[:-2], capacity, self.keys.shape[-1])
            self._kbuf = self.keys.new_empty(shape)
            self._vbuf = self.values.new_empty((*self.values.shape[:-2], capacity, self.values.shape[-1]))
            self._kbuf[..., :length, :] = self.keys
            self._vbuf[..., :length, :] = self.values
        assert self._kbuf is not None and self._vbuf is not None
        self._kbuf[..., length : length + new, :] = key_states
        self._vbuf[..., length : length + new, :] = value_states
        self.keys = self._kbuf[..., : length + new, :]
        self.values = self._vbuf[..., : length + new, :]
        return self.keys, self.values


def make_cache() -> Any:
    """An empty cache whose layers grow in place."""
    cache = DynamicCache()
    if getattr(cache, "layer_class_to_replicate", None) is DynamicLayer:
        cache.layer_class_to_replicate = _GrowingLayer
    return cache


def cache_argument(model: Any) -> str:
    """The name of the KV cache argument of ``model.forward`` (transformers 5.2x renamed ``past_key_values`` to
    ``cache``, argument and output)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def output_cache(out: Any) -> Any:
    """The KV cache a model's forward returned (``out.cache`` in transformers 5.2x, else ``out.past_key_values``)."""
    cache = getattr(out, "cache", None)
    return out.past_key_values if cache is None else cache


def _layers(cache: Any) -> list[Any]:
    return list(cache.layers)


def cache_length(cache: Any) -> int:
    """The number of columns (positions, padding included) in the cache."""
    return int(cache.get_seq_length())


def _set(layer: Any, keys: torch.Tensor, values: torch.Tensor) -> None:
    layer.keys, layer.values = keys, values


def select_rows(cache: Any, rows: torch.Tensor) -> None:
    """Keep only ``rows`` (a 1-D index tensor), in that order."""
    for layer in _layers(cache):
        if layer.keys is not None and layer.keys.numel():
            _set(layer, layer.keys.index_select(0, rows), layer.values.index_select(0, rows))


def trim_left(cache: Any, columns: int) -> None:
    """Drop the first ``columns`` positions (padding that every row has)."""
    if columns <= 0:
        return
    for layer in _layers(cache):
        if layer.keys is not None and layer.keys.numel():
            _set(layer, layer.keys[..., columns:, :], layer.values[..., columns:, :])


def merge(running: Any, new: Any) -> Any:
    """Append the rows of ``new`` below those of ``running``, left-padding the shorter one; returns ``running``
    (changed in place). Both must have the same layers."""
    old_len, new_len = cache_length(running), cache_length(new)
    length = max(old_len, new_len)
    for a, b in zip(_layers(running), _layers(new)):
        ka, va, kb, vb = a.keys, a.values, b.keys, b.values
        if old_len < length:
            ka, va = F.pad(ka, (0, 0, length - old_len, 0)), F.pad(va, (0, 0, length - old_len, 0))
        if new_len < length:
            kb, vb = F.pad(kb, (0, 0, length - new_len, 0)), F.pad(vb, (0, 0, length - new_len, 0))
        _set(a, torch.cat([ka, kb], dim=0), torch.cat([va, vb], dim=0))
    return running


class DynamicBatch:
    """The running batch on transformers' forward and a ``DynamicCache``: rows left-padded to one length, a padding
    mask, per-row positions. Same interface as :class:`agl_model_server._static.StaticBatch`: ``admit`` prefills new
    rows, ``step`` decodes every row, ``set_next`` gives rows their next input tokens, ``keep``/``clear`` drop rows.
    """

    def __init__(self, model: Any, *, pad_token_id: int, adapters: Any = None) -> None:
        """``adapters``: an :class:`agl_model_server._lora.AdapterBank` whose hooks add each row's LoRA delta."""
        self.model = model
        self.adapters = adapters
        self.pad_token_id = pad_token_id
        self.device = next(model.parameters()).device
        accepted = inspect.signature(model.forward).parameters
        self._logits_to_keep = {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}
        self._cache_arg = cache_argument(model)
        self.reused_tokens = 0
        """Always 0: the dynamic path keeps no prompts (the static path's counter, for the engine's stats)."""
        self.clear()

    def forget_prompts(self) -> None:
        """Nothing to forget: the dynamic path keeps no prompts once their rows retire."""

    def clear(self) -> None:
        self._cache: Any = None
        self._mask: torch.Tensor | None = None
        self._pos: torch.Tensor | None = None
        self._next: torch.Tensor | None = None
        self._adapters: torch.Tensor | None = None  # per row: its LoRA adapter slot

    def _forward(self, cache: Any, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        """Run the model; returns ``(logits of the last position, the updated cache)``."""
        out = self.model(use_cache=True, return_dict=True, **{self._cache_arg: cache}, **kwargs)
        return out.logits[:, -1, :], output_cache(out)

    def admit(self, prompts: list[list[int]], sources: list[int], adapters: list[int] | None = None) -> torch.Tensor:
        """Add a row per entry of ``sources`` (an index into ``prompts``; rows sharing a prompt run it once) and
        return their first logits; the caller then sets their tokens (``set_next(tokens, start)``) or drops them.
        ``adapters``: the LoRA adapter slot each prompt runs under (default: the base model)."""
        per_prompt = torch.tensor(adapters or [0] * len(prompts), dtype=torch.long, device=self.device)
        if self.adapters is not None:
            self.adapters.rows = per_prompt
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            ids[i, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[i, width - len(prompt) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
        logits, cache = self._forward(
            make_cache(), input_ids=ids, attention_mask=mask, position_ids=positions, **self._logits_to_keep
        )
        if sources != list(range(len(prompts))):
            rows = torch.tensor(sources, device=self.device)
            select_rows(cache, rows)
            mask, logits = mask.index_select(0, rows), logits.index_select(0, rows)
        pos = torch.tensor([len(prompts[s]) for s in sources], dtype=torch.long, device=self.device)
        tokens = torch.zeros(len(sources), dtype=torch.long, device=self.device)
        row_adapters = per_prompt.index_select(0, torch.tensor(sources, device=self.device))
        if self._mask is None:
            self._cache, self._mask, self._pos, self._next = cache, mask, pos, tokens
            self._adapters = row_adapters
            self._trim()
            return logits
        assert self._pos is not None and self._next is not None
        old_len, new_len = self._mask.shape[1], mask.shape[1]
        length = max(old_len, new_len)
        self._cache = merge(self._cache, cache)
        self._mask = torch.cat([F.pad(self._mask, (length - old_len, 0)), F.pad(mask, (length - new_len, 0))], dim=0)
        self._pos = torch.cat([self._pos, pos])
        self._next = torch.cat([self._next, tokens])
        self._adapters = torch.cat([self._adapters, row_adapters]) if self._adapters is not None else row_adapters
        return logits

    def step(self) -> torch.Tensor:
        assert self._mask is not None and self._pos is not None and self._next is not None
        mask = torch.cat([self._mask, self._mask.new_ones((self._mask.shape[0], 1))], dim=1)
        if self.adapters is not None:
            self.adapters.rows = self._adapters
        logits, self._cache = self._forward(
            self._cache, input_ids=self._next[:, None], attention_mask=mask, position_ids=self._pos[:, None]
        )
        self._mask = mask
        self._pos = self._pos + 1
        return logits

    def set_next(self, tokens: torch.Tensor, start: int = 0) -> None:
        """The next input tokens of the rows from ``start`` on."""
        assert self._next is not None
        self._next = tokens if start == 0 else torch.cat([self._next[:start], tokens])

    def keep(self, keep: list[int]) -> None:
        """Keep only the rows at indices ``keep`` (non-empty)."""
        assert self._mask is not None and self._pos is not None and self._next is not None
        rows = torch.tensor(keep, device=self._mask.device)
        select_rows(self._cache, rows)
        self._mask = self._mask.index_select(0, rows)
        self._pos = self._pos.index_select(0, rows)
        self._next = self._next.index_select(0, rows)
        if self._adapters is not None:
            self._adapters = self._adapters.index_select(0, rows)
        self._trim()

    def _trim(self) -> None:
        """Drop the leading columns that are padding in every row."""
        assert self._mask is not None
        real = self._mask.any(dim=0)
        first = int(real.nonzero()[0, 0]) if bool(real.any()) else self._mask.shape[1]
        if first > 0:
            trim_left(self._cache, first)
            self._mask = self._mask[:, first:]
