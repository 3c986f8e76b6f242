"""The static decode path: a preallocated KV cache of fixed slots and, on a GPU, one CUDA graph per batch shape.

At SmolLM2's size a decode step of transformers' forward is a few hundred small kernels, each launched from
Python: on a GPU the step costs ~30 ms of launch overhead whatever the batch, and the GPU idles. This module runs
the decode step of Llama-shaped models (Llama, Mistral, Qwen2/3: pre-norm decoder layers, rotary attention with
grouped KV heads) with

- a KV cache of ``slots`` rows, each sequence owning one row from its prefill to its last token, its keys and
  values at positions ``0..n-1`` (no padding, no copying when others join or leave),
- a step written for one new token per row: the new keys/values go to each row's own position
  (``index_put``), attention reads the first ``L`` columns with a per-row length mask, and the query heads that
  share a KV head are treated as that head's queries (grouped-query attention without copying keys/values),
- the model's own modules for everything else (embeddings, norms, projections, MLP, rotary embedding), so the
  weights stay the model's parameters: loading new weights in place needs nothing here,
- on CUDA, each (rows, columns) bucket captured once as a CUDA graph and replayed: one launch per step;
- on the CPU in float32, the projections of a decode step computed by a small C kernel that streams the weights
  faster than MKL (:mod:`._cpu_kernel`), and those of larger products as ``W @ x.T`` (see :func:`_linear_kernel`).

Prefill runs the same layers over prompts of any length, several at once, writing their keys/values straight into
the slots; prompts admitted together run the first tokens they have in common once. :func:`supported` says whether
a model can take this path; the engine falls back to the dynamic cache otherwise.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import torch
import torch.nn.functional as F

from agl_model_server import _cpu_kernel
from agl_model_server._lora import AdapterBank

__all__ = ["StaticDecoder", "supported"]

logger = logging.getLogger(__name__)

_FAMILIES = {"llama", "mistral", "qwen2", "qwen3"}


def _rope_type(config: Any) -> str:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return str(params.get("rope_type", params.get("type", "default")))


def supported(model: Any) -> str | None:
    """``None`` when ``model`` can use the static decode path, else why not (for the log)."""
    config = model.config
    kind = getattr(config, "model_type", None)
    if kind not in _FAMILIES:
        return f"model type {kind!r} (the static path knows {', '.join(sorted(_FAMILIES))})"
    if _rope_type(config) in {"dynamic", "longrope"}:
        return f"rope type {_rope_type(config)!r} (its frequencies depend on the sequence length)"
    if getattr(config, "use_sliding_window", False) and getattr(config, "sliding_window", None):
        return "sliding-window attention"
    if getattr(config, "layer_types", None) and any(t != "full_attention" for t in config.layer_types):
        return "layers other than full attention"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
        return "no decoder stack at model.model.layers"
    mlp = getattr(inner.layers[0], "mlp", None) if len(inner.layers) else None
    if not all(hasattr(mlp, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        return "an MLP other than gate/up/down projections"
    return None


def _linear_kernel(model: Any) -> Any:
    """``linear(module, x)`` for the static path's projections. On the CPU in float32, for plain ``nn.Linear``
    modules: at up to :data:`_cpu_kernel.MAX_ROWS` rows (a decode step) the C kernel of :mod:`._cpu_kernel`, which
    reads the weights about twice as fast as MKL; at more rows, or without that kernel, ``W @ x.T`` (transposed
    back) instead of ``x @ W.T``: same numbers, but MKL then splits the product over the weight's rows instead of
    over the few rows of ``x``, and so uses both of this project's cores (a SmolLM2 decode step at 4 / 8 / 16 rows:
    93 / 133 / 187 ms instead of 192 / 184 / 265, measured in turns; a prefill's projections ~15-20% less).
    Elsewhere: the module itself."""
    param = next(model.parameters())
    plain = all(type(m) is torch.nn.Linear for m in model.modules() if isinstance(m, torch.nn.Linear))
    if param.device.type != "cpu" or param.dtype != torch.float32 or not plain:
        return lambda module, x: module(x)
    kernel = _cpu_kernel.load()

    def linear(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        weight = module.weight
        if kernel is not None and flat.shape[0] <= _cpu_kernel.MAX_ROWS and weight.is_contiguous():
            out = kernel(flat.contiguous(), weight)
        else:
            out = torch.mm(weight, flat.t()).t()
        if module.bias is not None:
            out = out + module.bias
        return out.reshape(*x.shape[:-1], out.shape[-1])

    return linear


_SHARED_PREFIX_MIN = 8
"""Prompts admitted together that start with at least this many common tokens run them once."""


def _common_prefix(sequences: list[list[int]]) -> int:
    """How many first tokens all ``sequences`` have in common."""
    first = sequences[0]
    n = min(len(s) for s in sequences)
    for other in sequences[1:]:
        n = next((i for i, (a, b) in enumerate(zip(first[:n], other[:n])) if a != b), n)
    return n


def _bucket(n: int, smallest: int) -> int:
    size = smallest
    while size < n:
        size *= 2
    return size


class StaticDecoder:
    """Fixed-slot KV cache and decode step for one model. Not thread-safe: the engine thread alone calls it."""

    def __init__(
        self,
        model: Any,
        *,
        max_slots: int,
        max_len: int,
        use_graphs: bool | None = None,
        adapters: AdapterBank | None = None,
    ) -> None:
        reason = supported(model)
        if reason is not None:
            raise ValueError(f"the static decode path does not support this model: {reason}")
        self.model = model
        inner = model.model
        self._inner = inner
        self._layers = list(inner.layers)
        first = self._layers[0].self_attn
        self._apply_rope = sys.modules[type(first).__module__].apply_rotary_pos_emb
        self._linear = _linear_kernel(model)
        config = model.config
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.heads)
        self.max_slots = int(max_slots)
        self.max_len = int(max_len)
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.use_graphs = self.device.type == "cuda" if use_graphs is None else bool(use_graphs)
        self._min_len = 256 if self.use_graphs else 64
        # Allocated lazily and grown (up to max_slots x max_len) as sequences need; growing drops the graphs.
        self._slots = 0
        self._len = 0
        self._keys: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []
        self.tokens = torch.zeros(0, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(0, dtype=torch.long, device=self.device)
        self._rows = torch.zeros(0, dtype=torch.long, device=self.device)
        self._columns = torch.zeros(0, dtype=torch.long, device=self.device)
        self._graphs: dict[tuple[int, int], tuple[Any, torch.Tensor]] = {}
        self._pool: Any = None
        # LoRA adapters (served together): the adapter slot of each KV slot's sequence, read by every forward pass
        self.adapters = adapters
        self.slot_adapters = torch.zeros(self.max_slots, dtype=torch.long, device=self.device)
        self.captures = 0
        self._signature = self._parameters()

    def _parameters(self) -> tuple[tuple[int, int], ...]:
        return tuple((id(p), p.data_ptr()) for p in self.model.parameters())

    def refresh(self) -> None:
        """After the model may have changed (weights loaded, modules swapped): in-place weight copies keep the
        graphs; new or moved parameters drop them (recaptured on the next step)."""
        signature = self._parameters()
        if signature != self._signature:
            self._signature = signature
            self._layers = list(self._inner.layers)
            self._linear = _linear_kernel(self.model)  # a swapped-in module may not be a plain nn.Linear
            self._drop_graphs()

    # ----------------------------------------------------------------------------------------------- memory
    def reserve(self, slots: int, length: int) -> None:
        """Make room for ``slots`` rows of ``length`` positions (keeping what is stored)."""
        if slots > self.max_slots or length > self.max_len:
            raise ValueError(f"{slots} slots x {length} positions exceed {self.max_slots} x {self.max_len}")
        if slots <= self._slots and length <= self._len:
            return
        # With graphs every slot is allocated at once: growing would drop and recapture them.
        new_slots = self.max_slots if self.use_graphs else min(self.max_slots, max(self._slots, _bucket(slots, 8)))
        new_len = min(self.max_len, max(self._len, _bucket(length, self._min_len)))
        shape = (new_slots, self.kv_heads, new_len, self.head_dim)
        keys = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self._layers]
        values = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self._layers]
        for new, old in zip(keys + values, self._keys + self._values):  # nothing to keep on the first call
            new[: self._slots, :, : self._len].copy_(old)
        self._keys, self._values = keys, values
        tokens = torch.zeros(new_slots, dtype=torch.long, device=self.device)
        positions = torch.zeros(new_slots, dtype=torch.long, device=self.device)
        tokens[: self._slots].copy_(self.tokens)
        positions[: self._slots].copy_(self.positions)
        self.tokens, self.positions = tokens, positions
        self._rows = torch.arange(new_slots, device=self.device)
        self._columns = torch.arange(new_len, device=self.device)
        self._slots, self._len = new_slots, new_len
        self._drop_graphs()  # they captured the old buffers

    def drop_graphs(self) -> None:
        """Forget the captured decode graphs (they read tensors that were replaced, e.g. grown adapter stacks)."""
        self._drop_graphs()

    def _drop_graphs(self) -> None:
        # A memory pool is freed with its last graph: the next capture needs a new one.
        self._graphs.clear()
        self._pool = None

    def prefill(
        self, slots: list[int], prompts: list[list[int]], start: int = 0, *, logits: bool = True
    ) -> torch.Tensor | None:
        """Run ``prompts[i]`` into slot ``slots[i]`` at positions ``start..`` (eager: prompts differ in length; the
        first ``start`` positions of each slot are already there) and return the logits of each prompt's last token
        (``[len(prompts), vocab]``; ``None`` with ``logits=False``, for tokens that only fill the cache)."""
        lengths = [len(p) for p in prompts]
        width = max(lengths)
        self.reserve(max(slots) + 1, start + width + 1)
        columns = min(_bucket(start + width, self._min_len), self._len)
        rows = len(prompts)
        ids = torch.zeros((rows, width), dtype=torch.long)
        for i, prompt in enumerate(prompts):  # right-padded: a pad writes past its row's end, which is never read
            ids[i, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        ids = ids.to(self.device)
        positions = torch.arange(start, start + width, device=self.device)[None, :].expand(rows, width)
        dst = torch.tensor(slots, device=self.device)
        slot_ids = dst[:, None].expand(rows, width)
        mask = self._columns[None, None, None, :columns] <= positions[:, None, :, None]  # [rows, 1, width, cols]
        if self.adapters:
            self.adapters.rows = self.slot_adapters.index_select(0, dst)

        def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float) -> torch.Tensor:
            out = F.scaled_dot_product_attention(
                q,
                keys[:, :, :columns].index_select(0, dst),
                values[:, :, :columns].index_select(0, dst),
                attn_mask=mask,
                scale=scale,
                enable_gqa=self.heads != self.kv_heads,
            )
            return out.transpose(1, 2).reshape(rows, width, self.heads * self.head_dim)

        hidden = self._layers_forward(self._inner.embed_tokens(ids), positions, slot_ids, attend)
        last = torch.tensor([n - 1 for n in lengths], device=self.device)
        self.positions[dst] = torch.tensor(lengths, device=self.device) + start
        if not logits:
            return None
        return self._linear(self.model.lm_head, hidden[torch.arange(rows, device=self.device), last])

    def copy_slot(self, source: int, targets: list[int], length: int) -> None:
        """Give ``targets`` the first ``length`` positions of ``source`` (a prompt shared by several sequences)."""
        if not targets:
            return
        dst = torch.tensor(targets, device=self.device)
        for keys, values in zip(self._keys, self._values):
            keys[dst, :, :length] = keys[source, :, :length]
            values[dst, :, :length] = values[source, :, :length]
        self.positions[dst] = length

    # ----------------------------------------------------------------------------------------------- decoding
    def step(self, slots: torch.Tensor, highest: int, longest: int) -> torch.Tensor:
        """Run one decode step for every slot below ``highest`` (the rows in ``slots`` are the live ones, each with
        its input token in :attr:`tokens` and its position in :attr:`positions`; ``longest`` is the largest
        position + 1). Returns the live rows' last-position logits, in the order of ``slots``; positions advance."""
        rows = min(_bucket(highest, 1) if self.use_graphs else highest, self.max_slots)
        columns = min(_bucket(longest, self._min_len), self.max_len)
        self.reserve(rows, columns)
        if self.use_graphs:
            graph = self._graphs.get((rows, columns))
            if graph is None:
                graph = self._graphs[(rows, columns)] = self._capture(rows, columns)
            graph[0].replay()
            logits = graph[1]
        else:
            logits = self._forward(rows, columns)
        self.positions[slots] += 1
        return logits.index_select(0, slots)

    def _capture(self, rows: int, columns: int) -> tuple[Any, torch.Tensor]:
        # Warm-up runs write the same keys/values the real step will (same tokens, same positions): harmless.
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._forward(rows, columns)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # thread_local: CUDA calls of other threads (a trainer in the same process) do not break the capture.
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            out = self._forward(rows, columns)
        self.captures += 1
        logger.debug("captured a decode graph for %d rows x %d columns", rows, columns)
        return graph, out

    def _forward(self, rows: int, columns: int) -> torch.Tensor:
        """One token for each of the first ``rows`` slots, attending to ``columns`` positions."""
        positions = self.positions[:rows, None]
        mask = (self._columns[None, :columns] <= positions)[:, None, None, :]  # [rows, 1, 1, cols]
        groups = self.heads // self.kv_heads
        if self.adapters:
            self.adapters.rows = self.slot_adapters[:rows]

        def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float) -> torch.Tensor:
            # The query heads sharing a KV head act as that head's queries: no copy of the cache per head.
            out = F.scaled_dot_product_attention(
                q.reshape(rows, self.kv_heads, groups, self.head_dim),
                keys[:rows, :, :columns],
                values[:rows, :, :columns],
                attn_mask=mask,
                scale=scale,
            )
            return out.reshape(rows, 1, self.heads * self.head_dim)

        hidden = self._inner.embed_tokens(self.tokens[:rows, None])
        hidden = self._layers_forward(hidden, positions, self._rows[:rows, None], attend)
        return self._linear(self.model.lm_head, hidden[:, 0])

    def _adapted_linear(self, module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """The projection plus each row's LoRA delta (see :mod:`agl_model_server._lora`)."""
        out = self._linear(module, x)
        delta = self.adapters.delta(module, x) if self.adapters is not None else None
        return out if delta is None else out + delta

    def _layers_forward(
        self, hidden: torch.Tensor, positions: torch.Tensor, slot_ids: torch.Tensor, attend: Any
    ) -> torch.Tensor:
        """The decoder layers over ``hidden`` (``[rows, width, hidden]``, the tokens at ``positions`` of slots
        ``slot_ids``, both ``[rows, width]``): each layer writes its keys/values into the slots, then ``attend(q,
        keys, values, scale)`` reads them. Returns the final-normed hidden states."""
        rows, width = hidden.shape[:2]
        linear = self._adapted_linear if self.adapters else self._linear
        cos, sin = self._inner.rotary_emb(hidden, positions)
        for index, layer in enumerate(self._layers):
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            q = linear(attn.q_proj, x).view(rows, width, self.heads, self.head_dim)
            k = linear(attn.k_proj, x).view(rows, width, self.kv_heads, self.head_dim)
            v = linear(attn.v_proj, x).view(rows, width, self.kv_heads, self.head_dim)
            if hasattr(attn, "q_norm"):  # Qwen3 normalizes each head before the rotation
                q, k = attn.q_norm(q), attn.k_norm(k)
            q, k = self._apply_rope(q.transpose(1, 2), k.transpose(1, 2), cos, sin)  # [rows, heads, width, dim]
            keys, values = self._keys[index], self._values[index]
            keys[slot_ids, :, positions] = k.transpose(1, 2)
            values[slot_ids, :, positions] = v
            hidden = hidden + linear(attn.o_proj, attend(q, keys, values, attn.scaling))
            mlp, x = layer.mlp, layer.post_attention_layernorm(hidden)
            hidden = hidden + linear(mlp.down_proj, mlp.act_fn(linear(mlp.gate_proj, x)) * linear(mlp.up_proj, x))
        return self._inner.norm(hidden)


class StaticBatch:
    """The engine's running batch on a :class:`StaticDecoder`: each row holds a slot from its prefill to its last
    token; a finished row's slot goes to the next sequence. ``admit`` prefills new rows; ``step`` decodes every row;
    ``set_next`` gives rows their next input tokens; ``keep`` and ``clear`` drop rows."""

    def __init__(self, decoder: StaticDecoder) -> None:
        self.decoder = decoder
        self._slots: list[int] = []
        self._lengths: list[int] = []
        """Per row: the position of the token the next step feeds, plus one."""
        self._index = torch.zeros(0, dtype=torch.long, device=decoder.device)
        self._prompts: dict[int, tuple[int, list[int]]] = {}
        """Per slot: the adapter and the prompt whose keys and values its first positions hold. They stay valid
        after the row retires (decoding writes only past the prompt), until the slot is prefilled again or the
        weights change (:meth:`forget_prompts`); a later prompt that starts the same way copies them."""
        self.reused_tokens = 0
        """Prompt tokens copied from a kept prompt instead of prefilled (the engine's stats)."""

    def clear(self) -> None:
        self._slots, self._lengths = [], []
        self._index = self._index[:0]

    def forget_prompts(self) -> None:
        """The weights or adapters changed: the keys and values kept from earlier prompts are stale."""
        self._prompts.clear()

    def _kept_prefix(self, adapter: int, prompts: list[list[int]], limit: int) -> tuple[int, int]:
        """The longest start (at most ``limit`` tokens) that all ``prompts`` share with one kept prompt run under
        ``adapter``: (its length, the slot that holds it); (0, -1) if none."""
        best, source, seen = 0, -1, set()
        for slot, (held_adapter, held) in self._prompts.items():
            key = (held_adapter, tuple(held))
            if held_adapter != adapter or key in seen:
                continue
            seen.add(key)
            n = min(_common_prefix([held, *prompts]), limit)
            if n > best:
                best, source = n, slot
        return best, source

    def admit(self, prompts: list[list[int]], sources: list[int], adapters: list[int] | None = None) -> torch.Tensor:
        """Add a row per entry of ``sources`` (an index into ``prompts``; rows sharing a prompt run it once) and
        return their first logits; the caller then sets their tokens (``set_next(tokens, start)``) or drops them.
        ``adapters``: the LoRA adapter slot each prompt runs under (default: the base model)."""
        used = set(self._slots)
        free = (slot for slot in range(self.decoder.max_slots) if slot not in used)
        slots = [next(free) for _ in sources]
        per_prompt = adapters or [0] * len(prompts)
        self.decoder.slot_adapters[torch.tensor(slots, device=self.decoder.device)] = torch.tensor(
            [per_prompt[s] for s in sources], device=self.decoder.device
        )
        groups: dict[int, list[int]] = {}  # prompt -> the slots of the rows that share it
        for slot, source in zip(slots, sources):
            groups.setdefault(source, []).append(slot)
        firsts, distinct = [group[0] for group in groups.values()], [prompts[s] for s in groups]
        self.decoder.reserve(max(slots) + 1, max(len(p) for p in distinct) + 1)  # the copies' slots too
        # The tokens every prompt starts with (a system prompt, the agent's instructions) run once, into one slot,
        # and are copied to the others; each prompt's own tokens run after them (at least its last one). When a
        # slot still holds a prompt that starts the same way (admitted earlier under the same weights), its keys
        # and values are copied instead: rows admitted one by one as others retire then skip what they share.
        # (Only under one adapter: a prefix's keys and values depend on the adapter that ran it.)
        one_adapter = len({per_prompt[s] for s in groups}) == 1
        shared = kept = 0
        holder = -1
        if one_adapter:
            limit = min(len(p) for p in distinct) - 1
            if len(distinct) > 1:
                shared = min(_common_prefix(distinct), limit)
            kept, holder = self._kept_prefix(per_prompt[sources[0]], distinct, limit)
        for slot in slots:  # about to be written: kept again once their prompts have run (not if that fails)
            self._prompts.pop(slot, None)
        if kept >= max(shared, _SHARED_PREFIX_MIN):
            shared = kept
            self.decoder.copy_slot(holder, [slot for slot in firsts if slot != holder], shared)
            self.reused_tokens += shared * len(firsts)
        elif shared >= _SHARED_PREFIX_MIN:
            self.decoder.prefill(firsts[:1], [distinct[0][:shared]], logits=False)
            self.decoder.copy_slot(firsts[0], firsts[1:], shared)
        else:
            shared = 0
        logits = self.decoder.prefill(firsts, [p[shared:] for p in distinct], start=shared)
        assert logits is not None
        for index, (first, *others) in groups.items():
            if others:
                self.decoder.copy_slot(first, others, len(prompts[index]))
            for slot in (first, *others):
                self._prompts[slot] = (per_prompt[index], prompts[index])
        self._slots += slots
        self._lengths += [len(prompts[source]) + 1 for source in sources]
        self._index = torch.tensor(self._slots, device=self.decoder.device)
        row_of = {source: row for row, source in enumerate(groups)}
        return logits.index_select(0, torch.tensor([row_of[s] for s in sources], device=logits.device))

    def step(self) -> torch.Tensor:
        logits = self.decoder.step(self._index, max(self._slots) + 1, max(self._lengths))
        self._lengths = [n + 1 for n in self._lengths]
        return logits

    def set_next(self, tokens: torch.Tensor, start: int = 0) -> None:
        """The next input tokens of the rows from ``start`` on."""
        self.decoder.tokens[self._index[start:]] = tokens

    def keep(self, keep: list[int]) -> None:
        self._slots = [self._slots[i] for i in keep]
        self._lengths = [self._lengths[i] for i in keep]
        self._index = torch.tensor(self._slots, device=self.decoder.device)
