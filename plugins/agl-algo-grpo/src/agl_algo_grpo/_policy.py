"""The policy and its optimisation: :class:`PolicyTrainer` owns the model (with LoRA adapters, if asked), a frozen
reference when a KL penalty is asked, the optimizer and the checkpoints."""

from __future__ import annotations

import contextlib
import copy
import ctypes
import functools
import inspect
import math
import platform
import random
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from agl_algo_grpo._adapters import AdapterOptimizers, route
from agl_algo_grpo._batching import Batch, TrainingSample, collate, pack_prefixes
from agl_algo_grpo._checkpoint import latest_checkpoint, prune_checkpoints, read_checkpoint, write_checkpoint
from agl_algo_grpo._config import GRPOConfig, LoraSettings, adapter_settings
from agl_algo_grpo._losses import importance_weights, policy_loss, token_logprobs
from agl_kernel.errors import MissingDependencyError

__all__ = ["PolicyTrainer", "glibc_malloc", "keep_freed_memory", "resolve_device"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

CausalLM = Any
"""A Hugging Face causal LM module, or peft's wrapper of one. Typed ``Any``: the methods called on it (gradient
checkpointing, ``disable_adapter``, ``get_base_model``) are not ``nn.Module``'s, which types unknown attributes as
tensors or modules."""


def _adamw(parameters: list[torch.Tensor], **options: Any) -> torch.optim.Optimizer:
    """AdamW with torch's fused kernel where it has one for these parameters (CPU and CUDA; for SmolLM2's 135M
    float32 parameters on this project's 2-core CPU a step took 0.16 s instead of 0.9-1.0 s), else the default."""
    try:
        return torch.optim.AdamW(parameters, fused=True, **options)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(parameters, **options)


def glibc_malloc() -> bool:
    """Whether this process allocates with glibc's ``malloc`` (Linux with glibc), the one
    :func:`keep_freed_memory` tunes."""
    return sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep freed memory for the next allocation instead of handing it back to the system
    (Linux with glibc only; process-wide; once). Returns whether it applied.

    A CPU update allocates and frees the same large tensors every step (activations, gradients). By default glibc
    gives each thread its own arena, maps large blocks with ``mmap`` and returns freed memory: every step then
    faults its pages in again (zeroed by the kernel; ~83,000 faults per update of the benchmark's SmolLM2 shape).
    Settings: one arena, no ``mmap`` (``mallopt`` caps the ``mmap`` threshold at 32 MiB, below the 113 MiB
    gradient of SmolLM2's tied embedding), no trimming; so the process keeps the memory of its peak. Threads that
    allocated before this call keep their own arenas: call it before the thread that trains starts. GRPO does,
    and trains on its own thread; the main job calls it before it loads anything (see docs/performance.md)."""
    if not glibc_malloc():
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8
    applied = [mallopt(m_arena_max, 1), mallopt(m_mmap_max, 0), mallopt(m_trim_threshold, 2**31 - 1)]
    return all(applied)


def resolve_device(config: GRPOConfig) -> tuple[torch.device, torch.dtype, torch.dtype | None]:
    """``(device, weights dtype, autocast dtype or None)`` for ``config.device`` / ``config.dtype``."""
    if config.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(config.device)
    if config.dtype != "auto":
        weights = _DTYPES[config.dtype]
    elif device.type == "cuda":
        weights = torch.bfloat16 if config.lora is not None or config.adapters is not None else torch.float32
    else:
        weights = torch.float32
    autocast = torch.bfloat16 if device.type == "cuda" and config.dtype in ("auto", "bfloat16") else None
    return device, weights, autocast


class PolicyTrainer:
    """Trains a causal LM on GRPO samples.

    ``model`` is a Hugging Face causal LM (``forward(input_ids, attention_mask).logits``), given as a module or a
    name/path for ``AutoModelForCausalLM.from_pretrained``. With ``config.lora`` it is wrapped in peft LoRA
    adapters; with ``config.kl_coef > 0`` the initial policy is kept frozen as the reference (with LoRA: the base
    model, adapters disabled, so no copy). With ``config.resume`` the latest checkpoint is loaded at once.

    ``step`` counts the updates done (restored by :meth:`resume`); ``version`` is the same number, the version of
    the weights to publish. Training runs in ``train()`` mode: a model with dropout should have it set to 0 (as
    current LLMs do), or the ratio to the sampling-time logprobs starts away from 1. Seeds torch with
    ``config.seed``.
    """

    def __init__(
        self, model: CausalLM | str, config: GRPOConfig | None = None, *, pad_token_id: int | None = None
    ) -> None:
        self.config = config or GRPOConfig()
        self.device, self.weights_dtype, self.autocast_dtype = resolve_device(self.config)
        torch.manual_seed(self.config.seed)
        if isinstance(model, str):
            model = _load_pretrained(model, self.weights_dtype)
        model = model.to(device=self.device, dtype=self.weights_dtype)
        self.pad_token_id = _pad_token_id(model) if pad_token_id is None else pad_token_id
        self.reference: nn.Module | None = None
        self.adapters = adapter_settings(self.config)
        """With the ``adapters`` option: the LoRA adapters trained, name → settings (else empty)."""
        if self.adapters:
            model = _with_adapters(model, self.adapters)
        elif self.config.lora is not None:
            model = _with_lora(model, self.config)
        elif self.config.kl_coef > 0:
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        if self.config.gradient_checkpointing:
            # transformers 5 names it activation checkpointing (the old name warns that it goes away in v6).
            if hasattr(model, "activation_checkpointing_enable"):
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if self.lora:
                model.enable_input_require_grads()
        self.model: CausalLM = model
        self._without_dropout = _without_dropout(model)
        self._keeps_logits = _accepts_logits_to_keep(model)
        self._attention = getattr(getattr(model, "config", None), "_attn_implementation", None)
        self._packs = self.config.share_prompts and self._attention in ("sdpa", "eager")
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        if not self.parameters:
            raise ValueError("the model has no trainable parameters")
        options = {"lr": self.config.learning_rate, "weight_decay": self.config.weight_decay}
        self.optimizer: Any
        if self.adapters:  # one optimizer per adapter: an update of one never moves another's weights or moments
            self.adapter_parameters = {name: _adapter_parameters(model, name) for name in self.adapters}
            self.optimizer = AdapterOptimizers(
                {name: _adamw(params, **options) for name, params in self.adapter_parameters.items()}
            )
        else:
            self.optimizer = _adamw(self.parameters, **options)
        self.step = 0
        self.checkpoint_dir = Path(self.config.checkpoint_dir)
        self.resumed_from: Path | None = self.resume() if self.config.resume else None

    @property
    def version(self) -> int:
        return self.step

    @property
    def lora(self) -> bool:
        return self.config.lora is not None or bool(self.adapters)

    # ------------------------------------------------------------------------------------------------ logprobs

    def _autocast(self) -> Any:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _forward_logps(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Logprobs of ``batch.targets`` (``[B, L-1]``; 0 where nothing is scored). With ``share_prompts`` (and a
        model whose attention takes a custom mask) the sequences run as prefix trees (:func:`pack_prefixes`);
        else padded, with logits computed from the first scored position on (``logits_to_keep``)."""
        if self._packs:
            return self._forward_logps_packed(model, batch)
        first = batch.first_scored
        keep = batch.input_ids.shape[1] - first
        extra = {"logits_to_keep": keep} if self._keeps_logits else {}
        with self._autocast():
            out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False, **extra)
        logits = out.logits[:, -keep:-1]
        logps = token_logprobs(logits, batch.targets[:, first:], self.config.temperature)
        return torch.nn.functional.pad(logps, (first, 0)) if first else logps

    def _forward_logps_packed(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """:meth:`_forward_logps` over prefix trees: a token shared by several sequences (a group's prompt, the
        instructions all prompts start with) is run once, and its logits are computed only where some sequence
        scores the next token. The same logprobs and gradients as padded sequences, with less compute."""
        packed = pack_prefixes(batch, pad_token_id=self.pad_token_id).to(batch.input_ids.device)
        rows, tokens = batch.loss_mask.nonzero(as_tuple=True)  # scored: token tokens + 1 of row rows
        where = packed.index[rows, tokens]
        width = packed.input_ids.shape[1]
        tree, position = where // width, where % width
        keep = torch.unique(position)  # the packed positions whose logits are needed, sorted
        mask = packed.attention_mask
        if self._attention == "eager":  # eager attention adds the mask to the scores
            mask = torch.zeros(mask.shape, dtype=self.autocast_dtype or self.weights_dtype, device=mask.device)
            mask.masked_fill_(~packed.attention_mask, torch.finfo(mask.dtype).min)
        extra = {"logits_to_keep": keep} if self._keeps_logits else {}
        with self._autocast():
            out = model(
                input_ids=packed.input_ids,
                attention_mask=mask,
                position_ids=packed.position_ids,
                use_cache=False,
                **extra,
            )
        column = torch.searchsorted(keep, position) if self._keeps_logits else position
        logits = out.logits[tree, column]  # [scored, V]
        logps = token_logprobs(logits, batch.targets[rows, tokens], self.config.temperature)
        return logps.new_zeros(batch.targets.shape).index_put((rows, tokens), logps)

    @torch.no_grad()
    def sequence_logprobs(self, samples: Sequence[TrainingSample], *, reference: bool = False) -> torch.Tensor:
        """Per-position logprobs of the samples' response tokens under the current policy (or the reference),
        ``[B, T]``, zero outside the loss mask."""
        batch = collate(samples, pad_token_id=self.pad_token_id).to(self.device)
        return self._frozen_logps(batch, reference=reference) * batch.loss_mask

    @torch.no_grad()
    def _frozen_logps(self, batch: Batch, *, reference: bool) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        try:
            if not reference:
                return self._forward_logps(self.model, batch)
            if self.reference is not None:
                return self._forward_logps(self.reference, batch)
            with self.model.disable_adapter():  # LoRA: the base model is the reference
                return self._forward_logps(self.model, batch)
        finally:
            self.model.train(was_training)

    # ------------------------------------------------------------------------------------------------ training

    def _micro_batches(self, samples: Sequence[TrainingSample]) -> list[Batch]:
        order = list(range(len(samples)))
        random.Random(self.config.seed * 1_000_003 + self.step).shuffle(order)
        if self.config.share_prompts:  # in prompt order, so that micro-batches share prompts and their prefixes
            order.sort(key=lambda i: samples[i].triplet.prompt_token_ids)
        size = self.config.micro_batch_size
        in_update = self._proximal_in_update(len(order))
        batches = []
        for start in range(0, len(order), size):
            rows = order[start : start + size]
            batch = collate([samples[i] for i in rows], pad_token_id=self.pad_token_id, rows=rows).to(self.device)
            # old logprobs: those recorded at sampling time, unless missing or recomputing is asked for; a stale row
            # (sampled by an older version) gets the current weights' (the proximal policy) and importance weights
            stale = torch.tensor([self._is_stale(samples[i]) for i in rows], dtype=torch.bool)
            recompute = batch.has_old_logps.logical_not() | stale
            if self.config.recompute_logprobs:
                recompute[:] = True
            if bool(recompute.any()):
                if in_update:  # the update's forward pass gives them (train_step), no pass of their own
                    batch.proximal_from_update = (recompute, stale)
                else:
                    self._set_proximal(batch, recompute, stale, self._frozen_logps(batch, reference=False))
            batch.ref_logps = self._frozen_logps(batch, reference=True) if self.config.kl_coef > 0 else None
            batch.recomputed = int(recompute.sum())
            batches.append(batch)
        return batches

    def _set_proximal(self, batch: Batch, recompute: torch.Tensor, stale: torch.Tensor, fresh: torch.Tensor) -> None:
        """The ``recompute`` rows' old logprobs become ``fresh`` (the current weights'); the ``stale`` rows with
        recorded logprobs get importance weights (proximal / behaviour, truncated)."""
        if bool((weighted := stale & batch.has_old_logps).any()):
            batch.stale_mask = batch.loss_mask * weighted.to(self.device).unsqueeze(-1)
            batch.is_weights, truncated = importance_weights(
                fresh, batch.old_logps, batch.stale_mask, cap=self.config.importance_cap
            )
            batch.truncated_tokens = int(truncated.sum())
        rows_to_fill = recompute.to(self.device).unsqueeze(-1)
        batch.old_logps = torch.where(rows_to_fill, fresh, batch.old_logps) * batch.loss_mask

    def _proximal_in_update(self, samples: int) -> bool:
        """Whether an update of ``samples`` is one optimizer step (one epoch, every micro-batch accumulated) of a
        model without dropout: its forward pass then runs on the proximal weights (the version at the update's
        start) and gives the proximal logprobs of asynchronous GRPO itself, the same numbers a separate pass
        would, for about a third of the update's compute less."""
        batches = math.ceil(samples / self.config.micro_batch_size)
        per_update = self.config.grad_accumulation or batches
        return self.config.epochs_per_step == 1 and per_update >= batches and self._without_dropout

    def _is_stale(self, sample: TrainingSample) -> bool:
        return sample.version is not None and sample.version < self.version

    def train_step(
        self, samples: Sequence[TrainingSample], *, adapter: str | None = None, advance: bool = True
    ) -> dict[str, float]:
        """One GRPO update on ``samples``: ``epochs_per_step`` passes, each in optimizer steps of
        ``grad_accumulation`` micro-batches (default: all), the loss a token mean over each optimizer step.

        Returns metrics: ``loss``, ``pg_loss``, ``kl`` (with ``kl_coef``), ``approx_kl``, ``clip_fraction``,
        ``ratio_mean``, ``ratio_max``, ``grad_norm`` (before clipping, mean over optimizer steps), ``advantage_mean``,
        ``advantage_abs_mean``, ``sequences``, ``loss_tokens``, ``tokens_per_s``, ``time_s``, ``optimizer_steps``,
        ``recomputed_logprobs``, ``lr``.

        With ``adapters``: ``adapter`` names the one to update (it is made active, and only its optimizer steps);
        without it the samples go to the adapters their groups name (:func:`agl_algo_grpo._adapters.route`);
        ``advance=False`` leaves ``step`` as it is (:meth:`train_adapters` counts one step for all adapters).
        """
        if not samples:
            raise ValueError("train_step needs at least one sample")
        if self.adapters and adapter is None:  # samples of several adapters: each updates its own
            return self.train_adapters(route(samples, list(self.adapters)))
        optimizer, parameters = self._optimizer_for(adapter)
        started = time.perf_counter()
        self.model.train()
        batches = self._micro_batches(samples)
        per_update = self.config.grad_accumulation or len(batches)
        token_weighted = ("pg_loss", "kl", "approx_kl", "clip_fraction", "ratio_mean")
        sums: dict[str, float] = dict.fromkeys(token_weighted, 0.0)
        weight = 0.0
        losses, norms, ratio_max, processed = [], [], 0.0, 0
        generator = random.Random(self.config.seed * 7_919 + self.step)
        for _ in range(self.config.epochs_per_step):
            order = list(range(len(batches)))
            generator.shuffle(order)
            for start in range(0, len(order), per_update):
                group = [batches[i] for i in order[start : start + per_update]]
                normalizer = max(sum(b.loss_tokens for b in group), 1)
                optimizer.zero_grad(set_to_none=True)
                update_loss = 0.0
                for batch in group:
                    new_logps = self._forward_logps(self.model, batch)
                    if batch.proximal_from_update is not None:
                        self._set_proximal(batch, *batch.proximal_from_update, new_logps.detach())
                    loss, metrics = policy_loss(
                        new_logps,
                        batch.old_logps,
                        batch.advantages,
                        batch.loss_mask,
                        clip_low=self.config.clip_low,
                        clip_high=self.config.clip_high,
                        ref_logps=batch.ref_logps,
                        kl_coef=self.config.kl_coef,
                        normalizer=normalizer,
                        weights=batch.is_weights,
                    )
                    loss.backward()
                    update_loss += float(loss.detach())
                    processed += batch.token_count
                    tokens = metrics["tokens"]
                    weight += tokens
                    for key in token_weighted:
                        sums[key] += metrics.get(key, 0.0) * tokens
                    ratio_max = max(ratio_max, metrics["ratio_max"])
                limit = self.config.max_grad_norm if self.config.max_grad_norm is not None else math.inf
                norms.append(float(torch.nn.utils.clip_grad_norm_(parameters, limit)))
                optimizer.step()
                losses.append(update_loss)
        optimizer.zero_grad(set_to_none=True)
        self.step += int(advance)
        elapsed = time.perf_counter() - started
        advantages = [s.advantage for s in samples]
        result = {key: sums[key] / max(weight, 1.0) for key in token_weighted}
        if self.config.kl_coef <= 0:
            result.pop("kl")
        result.update(
            loss=sum(losses) / len(losses),
            ratio_max=ratio_max,
            grad_norm=sum(norms) / len(norms),
            advantage_mean=sum(advantages) / len(advantages),
            advantage_abs_mean=sum(abs(a) for a in advantages) / len(advantages),
            sequences=float(len(samples)),
            loss_tokens=float(sum(b.loss_tokens for b in batches)),
            tokens_per_s=processed / max(elapsed, 1e-9),
            time_s=elapsed,
            optimizer_steps=float(len(losses)),
            recomputed_logprobs=float(sum(b.recomputed for b in batches)),
            lr=float(optimizer.param_groups[0]["lr"]),
        )
        if stale := [b for b in batches if b.stale_mask is not None]:
            result.update(_importance_metrics(stale))
        return result

    def _optimizer_for(self, adapter: str | None) -> tuple[Any, list[torch.Tensor]]:
        if not self.adapters:
            if adapter is not None:
                raise ValueError(f"adapter={adapter!r}, but this policy trains no named adapters (GRPO's adapters)")
            return self.optimizer, self.parameters
        if adapter not in self.adapters:
            raise ValueError(f"adapter={adapter!r}: this policy trains the adapters {list(self.adapters)}")
        self.model.set_adapter(adapter)
        return self.optimizer[adapter], self.adapter_parameters[adapter]

    def train_adapters(self, routed: Mapping[str, Sequence[TrainingSample]]) -> dict[str, float]:
        """One GRPO step over several adapters: each adapter is updated on its own samples only (``routed``:
        adapter → samples), with its own optimizer; ``step`` moves on once. Metrics: each adapter's as
        ``<adapter>/<metric>``, and over all: sums of ``sequences``, ``loss_tokens``, ``time_s``,
        ``optimizer_steps``, ``recomputed_logprobs``, the others averaged weighted by sequences."""
        per: dict[str, dict[str, float]] = {}
        for name, samples in routed.items():
            if samples:
                per[name] = self.train_step(samples, adapter=name, advance=False)
        if not per:
            raise ValueError("train_adapters needs at least one sample")
        self.step += 1
        summed = ("sequences", "loss_tokens", "time_s", "optimizer_steps", "recomputed_logprobs")
        total = sum(m["sequences"] for m in per.values())
        result: dict[str, float] = {}
        for key in set.intersection(*(set(m) for m in per.values())):
            values = [(m[key], m["sequences"]) for m in per.values()]
            result[key] = sum(v for v, _ in values) if key in summed else sum(v * w for v, w in values) / total
        result["ratio_max"] = max(m["ratio_max"] for m in per.values())
        result["tokens_per_s"] = sum(m["tokens_per_s"] * m["time_s"] for m in per.values()) / result["time_s"]
        for name, metrics in per.items():
            result.update({f"{name}/{key}": value for key, value in metrics.items()})
        return result

    def skip_step(self) -> None:
        """Count a step that had nothing to train on (every advantage 0, no triplets): the step number moves on,
        the weights do not."""
        self.step += 1

    # ------------------------------------------------------------------------------------------------ weights

    def state_dict_for_serving(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The policy's weights under the original model's names, ready for ``load_state_dict`` on a copy of the
        model a server holds. With LoRA the adapters are merged in (``W + ΔW``; the trained model is not changed).
        Tensors may share storage with the training weights: copy them if you keep them across updates."""
        with torch.no_grad():
            if not self.lora:
                weights = {k: v.detach() for k, v in self.model.state_dict().items()}
            else:
                weights = _merged_lora_state_dict(self.model)
            if dtype is not None:
                weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
        return weights

    def adapter_state_for_serving(self, name: str) -> tuple[dict[str, torch.Tensor], float]:
        """Adapter ``name``'s tensors as agl-model-server's ``load_adapter`` takes them (``{module}.lora_A`` /
        ``{module}.lora_B``, names of the base model), and its scale (``alpha / r``). Copies: kilobytes to a few MB,
        never the base weights."""
        from agl_model_server import adapter_state_from_peft

        with torch.no_grad():
            lora = {k: v.detach().clone() for k, v in self.model.state_dict().items() if f".{name}.weight" in k}
            state = adapter_state_from_peft(lora, name)
        return state, _adapter_scale(self.model, name)

    # ------------------------------------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, directory: str | Path | None = None) -> Path:
        """Save weights (the adapter only, with LoRA), optimizer state and ``step`` under ``directory`` (default
        ``config.checkpoint_dir``) as ``step-NNNNNN/``; keeps the newest ``config.keep_checkpoints``."""
        root = Path(directory) if directory is not None else self.checkpoint_dir
        path = write_checkpoint(
            root,
            self.step,
            model=self.model,
            optimizer=self.optimizer,
            state={"lora": self.lora, "seed": self.config.seed, "adapters": list(self.adapters)},
        )
        prune_checkpoints(root, self.config.keep_checkpoints, newest=path)
        return path

    def resume(self, directory: str | Path | None = None) -> Path | None:
        """Load the latest checkpoint under ``directory`` (default ``config.checkpoint_dir``), or a checkpoint
        folder itself; returns its path, or ``None`` when there is none (the policy is left as it is)."""
        root = Path(directory) if directory is not None else self.checkpoint_dir
        path = root if (root / "state.json").is_file() else latest_checkpoint(root)
        if path is None:
            return None
        state = read_checkpoint(
            path,
            model=self.model,
            optimizer=self.optimizer,
            lora=self.lora,
            device=self.device,
            adapters=list(self.adapters),
        )
        self.step = int(state["step"])
        return path


def _importance_metrics(batches: list[Batch]) -> dict[str, float]:
    """Over the stale tokens of ``batches``: their count, mean importance weight and the share truncated."""
    pairs = [(b.is_weights, b.stale_mask) for b in batches if b.is_weights is not None and b.stale_mask is not None]
    tokens = sum(float(mask.sum()) for _, mask in pairs)
    total = sum(float((weights * mask).sum()) for weights, mask in pairs)
    return {
        "stale_tokens": tokens,
        "is_weight_mean": total / max(tokens, 1.0),
        "is_truncated_fraction": sum(b.truncated_tokens for b in batches) / max(tokens, 1.0),
    }


def _load_pretrained(name: str, dtype: torch.dtype) -> CausalLM:
    try:
        from transformers import AutoModelForCausalLM
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("loading a model by name needs transformers: pip install transformers") from exc
    try:
        return AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    except TypeError:  # transformers < 4.56 calls it torch_dtype
        return AutoModelForCausalLM.from_pretrained(name, torch_dtype=dtype)


def _accepts_logits_to_keep(model: CausalLM) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def _pad_token_id(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return 0  # padding is masked out of attention and loss, so any id the model knows will do


def _with_lora(model: CausalLM, config: GRPOConfig) -> CausalLM:
    lora = config.lora
    assert lora is not None and not isinstance(lora, bool)  # the option's converter turns true into LoraSettings()
    settings = _peft_config(lora)  # first: it says to install peft when it is missing
    import peft

    return peft.get_peft_model(model, settings)


def _peft_config(settings: LoraSettings) -> Any:
    try:
        import peft
    except ModuleNotFoundError as exc:
        raise MissingDependencyError("GRPO's lora and adapters need peft: pip install 'agl-algo-grpo[lora]'") from exc
    targets = settings.target_modules if isinstance(settings.target_modules, str) else list(settings.target_modules)
    return peft.LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,  # type: ignore[arg-type]  # peft types it int; it only scales (alpha / r)
        lora_dropout=settings.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )


def _with_adapters(model: CausalLM, adapters: Mapping[str, LoraSettings]) -> CausalLM:
    """``model`` wrapped by peft with one named LoRA adapter per entry of ``adapters``, all trainable (each
    update activates one)."""
    names = list(adapters)
    first = _peft_config(adapters[names[0]])
    import peft

    wrapped = peft.get_peft_model(model, first, adapter_name=names[0])
    for name in names[1:]:
        wrapped.add_adapter(name, _peft_config(adapters[name]))
    for name in names:
        for parameter in _adapter_parameters(wrapped, name):
            parameter.requires_grad_(True)
    return wrapped


def _adapter_parameters(model: CausalLM, name: str) -> list[torch.Tensor]:
    found = [p for key, p in model.named_parameters() if ".lora_" in key and f".{name}." in key]
    if not found:
        raise ValueError(f"the LoRA adapter {name!r} has no parameters: do its target_modules exist in the model?")
    return found


def _adapter_scale(model: CausalLM, name: str) -> float:
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer) and name in module.scaling:
            return float(module.scaling[name])
    raise ValueError(f"no LoRA layer of the model has the adapter {name!r}")


def _merged_lora_state_dict(model: CausalLM) -> dict[str, torch.Tensor]:
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    weights = {
        name.replace(".base_layer.", "."): tensor.detach()
        for name, tensor in base.state_dict().items()
        if ".lora_" not in name
    }
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer) and hasattr(module, "get_delta_weight"):
            weight = cast(torch.Tensor, module.get_base_layer().weight).detach()
            delta = sum(
                module.get_delta_weight(adapter) for adapter in module.active_adapters if adapter in module.lora_A
            )
            weights[f"{name}.weight"] = weight + delta.to(weight.dtype) if isinstance(delta, torch.Tensor) else weight
    return weights


def _without_dropout(model: nn.Module) -> bool:
    """No dropout in training mode: no ``nn.Dropout`` with a rate, and no ``*dropout`` rate in the model's config
    (Hugging Face models that drop attention weights in a function, not a module)."""
    if any(isinstance(module, nn.Dropout) and module.p > 0 for module in model.modules()):
        return False
    to_dict = getattr(getattr(model, "config", None), "to_dict", None)
    settings: dict[str, Any] = to_dict() if callable(to_dict) else {}
    return not any(
        key.endswith("dropout") and isinstance(value, (int, float)) and value > 0 for key, value in settings.items()
    )
