"""GRPO's options, in one frozen attrs class: :class:`GRPOConfig` is also ``GRPO.Options``, so the same fields (with
their types, defaults, validators and the docstring under each) are what ``GRPO(...)`` takes as keywords, what
``Trainer(algorithm="grpo", options={"algorithm": {...}})``, a run file's ``[algorithm]`` table and
``--set algorithm.KEY=VALUE`` set, and what ``agl plugins show grpo`` prints. :func:`make_config` builds one from
options that may be strings, as they come from the command line (with the kernel's
:func:`agl_kernel.config.options_with`)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Literal

import attrs
from attrs import validators as v

from agl_kernel.config import options_with
from agl_kernel.credit import CreditRule
from agl_kernel.llm_backend import LLMBackend

__all__ = [
    "GRPOConfig",
    "LoraSettings",
    "adapter_settings",
    "credit_rule",
    "llm_backend",
    "make_config",
    "named_component",
]


def _target_modules(value: Any) -> Any:
    """``"q_proj,v_proj"`` or ``'["q_proj", "v_proj"]'`` (as ``--set`` gives them) as a tuple; ``"all-linear"``
    and other single names stay a string; a list becomes a tuple."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return tuple(str(name) for name in json.loads(text))
            except ValueError:
                raise ValueError(f"target_modules: expected a list of module names, got {value!r}") from None
        if "," in text:
            return tuple(part.strip() for part in text.split(",") if part.strip())
        return text
    return tuple(value)


def _non_empty_modules(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not value:  # worded as attrs' validators are: the kernel puts the name in the option's path
        raise ValueError(f"'{attribute.name}' must name at least one module, or be 'all-linear'")


@attrs.frozen(kw_only=True)
class LoraSettings:
    """Train low-rank adapters (peft) instead of every weight. Giving one turns LoRA on."""

    r: int = attrs.field(default=16, validator=v.ge(1))
    """Rank of the adapters."""
    alpha: float = attrs.field(default=32.0, validator=v.gt(0))
    """peft's ``lora_alpha``: the adapters' output is scaled by ``alpha / r``."""
    dropout: float = attrs.field(default=0.0, validator=[v.ge(0), v.lt(1)])
    """Dropout on the adapters' input (keep 0 for GRPO: dropout moves the ratio to the sampling policy off 1)."""
    target_modules: str | tuple[str, ...] = attrs.field(
        default="all-linear", converter=_target_modules, validator=_non_empty_modules
    )
    """peft's ``target_modules``: module names (``["q_proj", "v_proj"]``, or ``q_proj,v_proj`` on the command
    line) or ``"all-linear"``."""


def _lora(value: Any) -> LoraSettings | None:
    """``True`` means the default settings, ``False`` none (``lora = true`` in a run file, ``--set
    algorithm.lora=true``)."""
    if value is True:
        return LoraSettings()
    if value is False:
        return None
    return value


_ADAPTER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")  # as agl-model-server takes them (base:name)


def _adapters(value: Any) -> Any:
    """``"planner,solver"`` / ``'["planner", "solver"]'`` (as ``--set`` gives them) or a list as a tuple of names;
    a table (name → settings) as a dict; ``None`` stays."""
    if value is None or isinstance(value, Mapping):
        return None if value is None else dict(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                raise ValueError(f"expected a list of adapter names, got {value!r}") from None
        else:
            value = [part.strip() for part in text.split(",") if part.strip()]
    return tuple(value)


def _check_adapters(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    names = list(value)
    if not names:
        raise ValueError(f"'{attribute.name}' must name at least one adapter (or be left out)")
    for name in names:
        if not isinstance(name, str) or not _ADAPTER_NAME.match(name):
            raise ValueError(
                f"'{attribute.name}' must hold names of letters, digits, '_' and '-' (at most 64), not {name!r}"
            )
    clash = [name for name in names if name in "lora_"]  # peft finds adapters by name inside "lora_A.<name>"
    if clash:
        raise ValueError(
            f"'{attribute.name}' must not use a name that is part of 'lora_' (peft's prefix): {clash[0]!r}"
        )
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"'{attribute.name}' must name each adapter once; given twice: {', '.join(map(repr, twice))}")
    if isinstance(value, Mapping):
        for name, settings in value.items():
            if not isinstance(settings, LoraSettings):
                raise ValueError(f"'{attribute.name}' must map each name to a table of LoRA settings ({name!r})")


@attrs.frozen(kw_only=True)
class GRPOConfig:
    """How GRPO samples, computes advantages, updates the policy, checkpoints and validates (``GRPO.Options``)."""

    # ---------------------------------------------------------------- the model
    model: str | None = None
    """The model to train, when GRPO is selected by name: a Hugging Face model name or a local directory, a name
    agl-model-server knows (``smollm2``: the bundled SmolLM2-135M-Instruct), or ``module:factory`` (a function
    returning ``(model, tokenizer)``, e.g. ``agl_algo_grpo.testing:tiny_chat_model``). GRPO then serves the
    policy itself (needs ``agl-algo-grpo[serve]``). In Python, ``GRPO(model, ...)`` also takes a loaded module."""
    backend: str = "model-server"
    """The LLM backend (``agl.llm_backends``) that serves the policy when GRPO serves it itself: ``model-server``
    (agl-model-server, in this process) or another installed one (``agl plugins --kind llm_backends``)."""
    backend_options: Mapping[str, Any] = attrs.field(factory=dict, converter=dict)
    """The backend's options (``--set algorithm.backend_options.max_batch_size=32``)."""
    # ---------------------------------------------------------------- the loop
    steps: int = attrs.field(default=100, validator=v.ge(1))
    """Training steps; each samples ``batch_size`` tasks × ``group_size`` rollouts and updates once."""
    batch_size: int = attrs.field(default=8, validator=v.ge(1))
    """Tasks per step (the dataset is walked in a seeded random order, a new order each pass)."""
    group_size: int = attrs.field(default=4, validator=v.ge(1))
    """Rollouts per task: the group whose rewards are compared with each other."""
    seed: int = 0
    """Seeds torch (the initial weights of LoRA adapters, dropout) and the order the tasks are walked in."""
    rollout_timeout: float | None = attrs.field(default=None, validator=v.optional(v.gt(0)))
    """Seconds to wait for a step's rollouts; those still running then are cancelled and reported."""
    val_every: int = attrs.field(default=0, validator=v.ge(0))
    """Validate every N steps (and after the last) when a validation set is given; 0 = only after the last."""
    max_staleness: int = attrs.field(default=0, validator=v.ge(0))
    """Asynchronous GRPO: how many policy versions behind the policy it updates a sample may be. ``0`` (the
    default): on-policy, each step's rollouts are enqueued after the previous update, as GRPO always did. ``k ≥ 1``:
    the rollouts of the next ``k`` steps are enqueued ahead, so the runners keep generating while the policy
    updates (no rollout is enqueued more than ``k`` versions before the update that uses it). Each triplet carries
    the policy version its LLM calls used (the published resources version the proxy records on each call);
    triplets more than ``k`` versions old at update time are dropped and counted (``stale_dropped``), the others
    are weighted by truncated importance weights (``importance_cap``; the loss: :func:`agl_algo_grpo.policy_loss`).
    Validations but the last run while the next step trains (the version they validate stays served until they
    end). Give the run more concurrent agents (runners) than one step's rollouts, or the steps ahead wait in the
    queue."""
    importance_cap: float = attrs.field(default=2.0, validator=v.ge(1))
    """With ``max_staleness ≥ 1``: the truncation ``C`` of each stale token's importance weight
    ``min(π_prox / π_behav, C)`` (the policy at the start of the update over the one that sampled the token)."""
    # ---------------------------------------------------------------- sampling (published with the LLM resource)
    temperature: float = attrs.field(default=1.0, validator=v.gt(0))
    """Sampling temperature; the trainer divides its logits by it too, so its logprobs match the sampler's."""
    max_tokens: int = attrs.field(default=512, validator=v.ge(1))
    """Completion tokens per LLM call (also the served model's default when an agent does not say)."""
    val_temperature: float | None = attrs.field(default=None, validator=v.optional(v.ge(0)))
    """Validation's sampling temperature: ``0`` decodes greedily, as verl validates by default, so a validation
    measures the policy rather than one draw from it (less noise between validations); ``None`` (the default):
    ``temperature``, as training samples. Validation rollouts get resources of their own (``<resources id>-val``:
    the published ones with this temperature on each LLM), on the same weights; after a run that ends with a
    validation they are the store's latest resources."""
    # ---------------------------------------------------------------- advantages
    scale_rewards: bool = True
    """Divide by the group's standard deviation (``False``: only subtract the mean, as Dr. GRPO does); the credit
    rule's ``scale`` when its options do not say."""
    credit: str = "auto"
    """The credit rule (``agl.credit``) that turns a group's rewards into an advantage per triplet: ``auto`` (step
    rewards where the group has them, else the outcome broadcast), ``final``, ``steps``, ``discounted``, or a
    third party's (``agl plugins --kind credit`` lists them)."""
    credit_options: Mapping[str, Any] = attrs.field(factory=dict, converter=dict)
    """The credit rule's options (``--set algorithm.credit_options.gamma=0.9`` for ``discounted``)."""
    skip_zero_advantage: bool = True
    """Leave out triplets whose advantage is 0 (groups where every rollout scored the same): they carry no
    policy gradient, only compute."""
    # ---------------------------------------------------------------- optimisation
    learning_rate: float = attrs.field(default=1e-6, validator=v.gt(0))
    """AdamW's learning rate."""
    weight_decay: float = attrs.field(default=0.0, validator=v.ge(0))
    """AdamW's weight decay."""
    epochs_per_step: int = attrs.field(default=1, validator=v.ge(1))
    """Passes over a step's triplets (PPO epochs); the ratio departs from 1 from the second pass on."""
    micro_batch_size: int = attrs.field(default=4, validator=v.ge(1))
    """Sequences per forward/backward pass."""
    share_prompts: bool = True
    """Samples go into micro-batches in the order of their prompts, and a micro-batch runs as prefix trees: tokens
    that several sequences share at the start (a group's prompt, the instructions every prompt begins with) are
    run once, with a mask that lets each token see its own sequence only. Same logprobs and gradients, less compute
    (most of it when prompts are long). Needs a model whose attention takes a custom mask (``sdpa`` or ``eager``);
    others run padded."""
    grad_accumulation: int | None = attrs.field(default=None, validator=v.optional(v.ge(1)))
    """Micro-batches per optimizer step; ``None``: one optimizer step per epoch (the whole batch)."""
    clip_low: float = attrs.field(default=0.2, validator=[v.ge(0), v.lt(1)])
    """ε below: the ratio is clipped at ``1 - clip_low`` (in [0, 1))."""
    clip_high: float = attrs.field(default=0.2, validator=v.ge(0))
    """ε above: the ratio is clipped at ``1 + clip_high`` (raise it, e.g. 0.28, for DAPO's clip-higher)."""
    kl_coef: float = attrs.field(default=0.0, validator=v.ge(0))
    """Weight of the k3 KL penalty to the initial policy; 0 = no reference model is kept."""
    # attrs' stubs type a validator by the default's type (float), not the field's (float | None)
    max_grad_norm: float | None = attrs.field(default=1.0, validator=v.optional(v.gt(0)))  # type: ignore[arg-type]
    """Clip the gradient's norm to this before each optimizer step; ``None``: no clipping."""
    recompute_logprobs: bool = False
    """Recompute the old logprobs with the trainer's model instead of using those recorded at sampling time (use
    it when the server's numerics differ from the trainer's); triplets without recorded logprobs always are."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass instead of keeping them: less memory, more compute."""
    lora: bool | LoraSettings | None = attrs.field(default=None, converter=_lora)
    """Train LoRA adapters instead of every weight (needs ``agl-algo-grpo[lora]``): ``true`` for the default
    settings, or a table of them (``lora.r``, ...); ``None``/``false``: full fine-tuning."""
    adapters: tuple[str, ...] | Mapping[str, LoraSettings] | None = attrs.field(
        default=None, converter=_adapters, validator=_check_adapters
    )
    """One LoRA adapter per agent role, trained side by side on one frozen base model (multi-agent runs; turns
    LoRA on): a list of names (``["planner", "solver"]``, ``--set algorithm.adapters=planner,solver``), each with
    the ``lora`` settings, or a table of name → settings (``[algorithm.adapters.solver] r = 8``). Each adapter is
    published as its own LLM resource, named by the role, whose model is ``policy:<role>`` (the first is also
    ``main_llm``); the model server serves all of them over one base model in the same batches; each triplet
    updates the adapter of the LLM call it came from, with that adapter's own optimizer, and advantages are
    computed per role."""
    # ---------------------------------------------------------------- hardware
    device: str = "auto"
    """``"auto"``: CUDA if available, else the CPU; or any torch device string."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights' dtype. ``"auto"``: float32 on the CPU; on CUDA bfloat16 for a frozen LoRA base and float32 master
    weights for full fine-tuning, computed under bfloat16 autocast."""
    # ---------------------------------------------------------------- checkpoints and logs
    checkpoint_every: int = attrs.field(default=0, validator=v.ge(0))
    """Save a checkpoint every N steps (and after the last); 0 = never."""
    checkpoint_dir: str = ".agl/grpo"
    """Where checkpoints go (one folder per step: ``step-000012``)."""
    # attrs' stubs type a validator by the default's type (int), not the field's (int | None)
    keep_checkpoints: int | None = attrs.field(default=2, validator=v.optional(v.ge(1)))  # type: ignore[arg-type]
    """Delete older checkpoints beyond this many (the one just written is always kept); ``None`` keeps all. Each
    holds the weights and the optimizer state: with full fine-tuning in float32 about 12 bytes per parameter (1.6 GB
    for SmolLM2-135M); with LoRA only the adapter's."""
    resume: bool = False
    """Start from the latest checkpoint in ``checkpoint_dir`` (weights, optimizer, step), if there is one."""
    tensorboard_dir: str | None = None
    """Also log each step's metrics to TensorBoard there (needs ``pip install tensorboard``)."""
    console: bool = True
    """Print a table of metrics per step."""


def make_config(config: GRPOConfig | Mapping[str, Any] | None = None, **overrides: Any) -> GRPOConfig:
    """A :class:`GRPOConfig` from a config, a mapping or nothing, with ``overrides`` on top. Values may be strings
    (``"8"``, ``"true"``, as the command line gives them; ``lora=True`` means the default LoRA settings). A wrong key
    or value raises :class:`~agl_kernel.errors.ConfigError` (a ``ValueError``): one line that names
    ``algorithm.KEY`` and, for an unknown key, the valid ones."""
    return options_with(GRPOConfig, config, overrides, path="algorithm")


def named_component(
    kind: str, name: str, options: Mapping[str, Any], *, path: str, defaults: Mapping[str, Any] | None = None
) -> Any:
    """The component ``name`` of ``kind`` made with ``options`` (plus each of ``defaults`` its options class has and
    ``options`` do not set). A wrong name raises a :class:`~agl_kernel.errors.ConfigError` naming ``path``, a wrong
    option one naming ``PATH_options.KEY``."""
    from agl_kernel.errors import AglError, ConfigError
    from agl_kernel.plugins import create_component, resolve_name

    given = dict(options)
    try:
        target = resolve_name(kind, name)
    except (AglError, LookupError, ImportError) as err:
        raise ConfigError(f"{path}: {err}") from None
    options_class = getattr(target, "Options", None)
    if isinstance(options_class, type) and attrs.has(options_class):
        fields = attrs.fields_dict(options_class)
        given.update({k: v for k, v in (defaults or {}).items() if k in fields and k not in given})
        options_with(options_class, None, given, path=f"{path}_options")  # the errors, named by that path
    return create_component(kind, name, options=given)


def adapter_settings(config: GRPOConfig) -> dict[str, LoraSettings]:
    """The adapters ``config`` trains, name → settings: those of ``adapters`` (a list takes ``lora``'s settings,
    or the defaults), or ``{}`` without ``adapters`` (``lora`` alone: one adapter, the single-policy run)."""
    if config.adapters is None:
        return {}
    if isinstance(config.adapters, Mapping):
        return dict(config.adapters)
    lora = config.lora if isinstance(config.lora, LoraSettings) else LoraSettings()
    return dict.fromkeys(config.adapters, lora)


def credit_rule(config: GRPOConfig) -> CreditRule:
    """The credit rule ``config`` names, with its options (and ``scale_rewards`` as its ``scale`` when it has one
    and its options do not set it). A wrong name or option raises :class:`~agl_kernel.errors.ConfigError`."""
    defaults = {"scale": config.scale_rewards}
    rule: CreditRule = named_component(
        "credit", config.credit, config.credit_options, path="algorithm.credit", defaults=defaults
    )
    return rule


def llm_backend(config: GRPOConfig) -> LLMBackend:
    """The LLM backend ``config`` names, with its options; a wrong name or option raises a ``ConfigError``."""
    backend: LLMBackend = named_component(
        "llm_backends", config.backend, config.backend_options, path="algorithm.backend"
    )
    return backend
