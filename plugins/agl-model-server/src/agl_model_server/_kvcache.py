"""The batched KV cache of the engine: a transformers ``DynamicCache`` whose rows are left-padded to one length.

Every row (sequence) of the running batch shares the cache length ``L``; a row with fewer real tokens has padding
columns on the left, masked out by the attention mask. Rows join (``merge``), leave (``select_rows``) and shared
leading padding is dropped (``trim_left``) between decode steps. Only this module touches the cache's internals
(``cache.layers[i].keys/values``), so a change in transformers stays here.

Layers grow in place: appending a token writes into spare capacity (doubled when full) instead of concatenating
the whole cache every step, as ``DynamicLayer`` does, which would copy O(L) per token.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache, DynamicLayer

__all__ = ["cache_length", "make_cache", "merge", "select_rows", "trim_left"]


class _GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` that appends into a buffer with spare capacity; ``keys``/``values`` are views of it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._kbuf: torch.Tensor | None = None
        self._vbuf: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):  # type: ignore[override]
        if not self.is_initialized or self.keys is None or self.keys.numel() == 0:
            self.lazy_initialization(key_states, value_states)
            self.keys, self.values = key_states, value_states
            self._kbuf = self._vbuf = None
            return self.keys, self.values
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
