"""GRPO's settings, in one frozen struct (every field has a default; :func:`make_config` builds one from options
that may be strings, as they come from the command line)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Optional, Union

import msgspec

__all__ = ["GRPOConfig", "LoraSettings", "make_config"]


class LoraSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Train low-rank adapters (peft) instead of every weight. Giving one turns LoRA on."""

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: Union[str, tuple[str, ...]] = "all-linear"
    """peft's ``target_modules``: module names (``("q_proj", "v_proj")``) or ``"all-linear"``."""


class GRPOConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How GRPO samples, computes advantages, updates the policy, checkpoints and validates."""

    # ---------------------------------------------------------------- the loop
    steps: int = 100
    """Training steps; each samples ``batch_size`` tasks × ``group_size`` rollouts and updates once."""
    batch_size: int = 8
    """Tasks per step (the dataset is walked in a seeded random order, a new order each pass)."""
    group_size: int = 4
    """Rollouts per task: the group whose rewards are compared with each other."""
    seed: int = 0
    rollout_timeout: Optional[float] = None
    """Seconds to wait for a step's rollouts; those still running then are cancelled and reported."""
    val_every: int = 0
    """Validate every N steps (and after the last) when a validation set is given; 0 = only after the last."""
    # ---------------------------------------------------------------- sampling (published with the LLM resource)
    temperature: float = 1.0
    """Sampling temperature; the trainer divides its logits by it too, so its logprobs match the sampler's."""
    max_tokens: int = 512
    """Completion tokens per LLM call."""
    # ---------------------------------------------------------------- advantages
    scale_rewards: bool = True
    """Divide by the group's standard deviation (``False``: only subtract the mean, as Dr. GRPO does)."""
    skip_zero_advantage: bool = True
    """Leave out triplets whose advantage is 0 (groups where every rollout scored the same): they carry no
    policy gradient, only compute."""
    # ---------------------------------------------------------------- optimisation
    learning_rate: float = 1e-6
    weight_decay: float = 0.0
    epochs_per_step: int = 1
    """Passes over a step's triplets (PPO epochs); the ratio departs from 1 from the second pass on."""
    micro_batch_size: int = 4
    """Sequences per forward/backward pass."""
    share_prompts: bool = True
    """Samples go into micro-batches in the order of their prompts, and a micro-batch runs as prefix trees: tokens
    that several sequences share at the start (a group's prompt, the instructions every prompt begins with) are
    run once, with a mask that lets each token see its own sequence only. Same logprobs and gradients, less compute
    (most of it when prompts are long). Needs a model whose attention takes a custom mask (``sdpa`` or ``eager``);
    others run padded."""
    grad_accumulation: Optional[int] = None
    """Micro-batches per optimizer step; ``None``: one optimizer step per epoch (the whole batch)."""
    clip_low: float = 0.2
    """ε below: the ratio is clipped at ``1 - clip_low``."""
    clip_high: float = 0.2
    """ε above: the ratio is clipped at ``1 + clip_high`` (raise it, e.g. 0.28, for DAPO's clip-higher)."""
    kl_coef: float = 0.0
    """Weight of the k3 KL penalty to the initial policy; 0 = no reference model is kept."""
    max_grad_norm: Optional[float] = 1.0
    recompute_logprobs: bool = False
    """Recompute the old logprobs with the trainer's model instead of using those recorded at sampling time (use
    it when the server's numerics differ from the trainer's); triplets without recorded logprobs always are."""
    gradient_checkpointing: bool = False
    lora: Optional[LoraSettings] = None
    # ---------------------------------------------------------------- hardware
    device: str = "auto"
    """``"auto"``: CUDA if available, else the CPU; or any torch device string."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights' dtype. ``"auto"``: float32 on the CPU; on CUDA bfloat16 for a frozen LoRA base and float32 master
    weights for full fine-tuning, computed under bfloat16 autocast."""
    # ---------------------------------------------------------------- checkpoints and logs
    checkpoint_every: int = 0
    """Save a checkpoint every N steps (and after the last); 0 = never."""
    checkpoint_dir: str = ".agl/grpo"
    keep_checkpoints: Optional[int] = 3
    """Delete older checkpoints beyond this many; ``None`` keeps all."""
    resume: bool = False
    """Start from the latest checkpoint in ``checkpoint_dir`` (weights, optimizer, step), if there is one."""
    tensorboard_dir: Optional[str] = None
    """Also log each step's metrics to TensorBoard there (needs ``pip install tensorboard``)."""
    console: bool = True
    """Print a table of metrics per step."""

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "group_size", "epochs_per_step", "micro_batch_size", "max_tokens")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"GRPOConfig.{name} must be at least 1, not {getattr(self, name)}")
        for name in ("val_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"GRPOConfig.{name} must be 0 (off) or more, not {getattr(self, name)}")
        if self.grad_accumulation is not None and self.grad_accumulation < 1:
            raise ValueError("GRPOConfig.grad_accumulation must be at least 1, or None for the whole batch")
        if not 0 <= self.clip_low < 1 or self.clip_high < 0:
            raise ValueError(f"clip_low must be in [0, 1) and clip_high >= 0 (got {self.clip_low}, {self.clip_high})")
        if self.learning_rate <= 0 or self.temperature <= 0 or self.kl_coef < 0:
            raise ValueError("learning_rate and temperature must be > 0 and kl_coef >= 0")
        if self.keep_checkpoints is not None and self.keep_checkpoints < 1:
            raise ValueError("keep_checkpoints must be at least 1, or None to keep every checkpoint")


def make_config(config: Union[GRPOConfig, Mapping[str, Any], None] = None, **overrides: Any) -> GRPOConfig:
    """A :class:`GRPOConfig` from a config, a mapping or nothing, with ``overrides`` on top. Values may be strings
    (``"8"``, ``"true"``, as the command line gives them); unknown names raise an error that lists the known ones."""
    base: dict[str, Any] = msgspec.structs.asdict(config) if isinstance(config, GRPOConfig) else dict(config or {})
    base.update(overrides)
    known = set(GRPOConfig.__struct_fields__)
    unknown = sorted(set(base) - known)
    if unknown:
        raise TypeError(f"unknown GRPO option(s) {unknown}; the options are: {', '.join(sorted(known))}")
    if isinstance(base.get("lora"), LoraSettings):
        base["lora"] = msgspec.structs.asdict(base["lora"])
    if base.get("lora") is True or base.get("lora") in ("true", "True", "1", "on"):
        base["lora"] = {}
    elif base.get("lora") in (False, "false", "False", "0", "off", "none", "None"):
        base["lora"] = None
    try:
        return msgspec.convert(base, GRPOConfig, strict=False)
    except msgspec.ValidationError as err:
        raise ValueError(f"invalid GRPO option: {err}") from None
