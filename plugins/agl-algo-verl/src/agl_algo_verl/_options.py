"""The VERL algorithm's options (``VERL.Options``) and how they map onto verl's Hydra config.

Every option is typed and validated by the kernel's options mechanism (``--set algorithm.learning_rate=2e-6``, a
run file's ``[algorithm]`` table, ``Trainer(options={"algorithm": {...}})``). :func:`hydra_overrides` turns them
into the ``key=value`` overrides of verl's ``ppo_trainer`` config (the table below); ``overrides`` passes any other
verl key through as it is, last, so it wins over the mapped ones.

=========================== =====================================================================================
option                      verl key
=========================== =====================================================================================
model                       actor_rollout_ref.model.path
steps                       trainer.total_training_steps
batch_size                  data.train_batch_size (tasks per step)
group_size                  actor_rollout_ref.rollout.n
learning_rate               actor_rollout_ref.actor.optim.lr
ppo_mini_batch_size         actor_rollout_ref.actor.ppo_mini_batch_size (in tasks: verl multiplies it by n)
micro_batch_size_per_gpu    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu (and the log-prob passes')
ppo_epochs                  actor_rollout_ref.actor.ppo_epochs
clip_low / clip_high        actor_rollout_ref.actor.clip_ratio_low / clip_ratio_high
clip_ratio_c                actor_rollout_ref.actor.clip_ratio_c (dual clip for negative advantages)
kl_coef                     actor_rollout_ref.actor.use_kl_loss, kl_loss_coef (kl_loss_type low_var_kl: k3)
scale_rewards               algorithm.norm_adv_by_std_in_grpo
adv_estimator               algorithm.adv_estimator
temperature                 actor_rollout_ref.rollout.temperature
max_prompt_length           data.max_prompt_length
max_tokens                  data.max_response_length
tensor_parallel_size        actor_rollout_ref.rollout.tensor_model_parallel_size
gpu_memory_utilization      actor_rollout_ref.rollout.gpu_memory_utilization
nnodes / n_gpus_per_node    trainer.nnodes / trainer.n_gpus_per_node
checkpoint_every / _dir     trainer.save_freq / trainer.default_local_dir
=========================== =====================================================================================
"""

from __future__ import annotations

import re
from typing import Any

import attrs
from attrs import validators as v

__all__ = ["FIXED_OVERRIDES", "VERLOptions", "hydra_overrides"]

_OVERRIDE = re.compile(r"^[+~]{0,2}[A-Za-z_][\w]*(\.[\w]+)*=")

FIXED_OVERRIDES = (
    # verl 0.9's legacy (v0) trainer: RayPPOTrainer, the class this plugin subclasses; v1 is built around its
    # TransferQueue replay buffer instead of a generate-then-train step.
    "trainer.use_v1=false",
    # rollouts go to verl's vLLM servers (hybrid engine: the actor's weights synced into them each step)
    "actor_rollout_ref.rollout.name=vllm",
    # agl validates through the store (the algorithm's own validation), not through verl's reward function
    "trainer.val_before_train=false",
    "trainer.test_freq=-1",
    "trainer.logger=[console]",
)
"""Overrides the plugin always sets (``overrides`` can still change them)."""


def _override_list(value: Any) -> tuple[str, ...]:
    """``"a=1,b=2"`` or a list (TOML, JSON) as a tuple of ``key=value`` strings."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            try:
                return tuple(str(item) for item in json.loads(text))
            except ValueError:
                raise ValueError(f"expected a list of 'key=value' strings, got {value!r}") from None
        return tuple(part.strip() for part in text.split(",") if part.strip())
    return tuple(str(item) for item in value)


def _key_value(_instance: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for item in value:
        if not _OVERRIDE.match(item):
            raise ValueError(
                f"'{attribute.name}' must be Hydra overrides 'key.path=value' "
                f"(e.g. actor_rollout_ref.actor.entropy_coeff=0.001), not {item!r}"
            )


@attrs.frozen(kw_only=True)
class VERLOptions:
    """verl's trainer driven by agl rollouts: what to train, how many rollouts, the PPO/GRPO update, the cluster."""

    # ---------------------------------------------------------------- the model and the loop
    model: str | None = None
    """The model to train and serve: a Hugging Face name or a local directory (verl's ``model.path``); required."""
    steps: int = attrs.field(default=100, validator=v.ge(1))
    """Training steps; each runs ``batch_size`` tasks × ``group_size`` rollouts and updates once."""
    batch_size: int = attrs.field(default=8, validator=v.ge(1))
    """Tasks per step (walked in a seeded random order, a new order each pass over the dataset)."""
    group_size: int = attrs.field(default=4, validator=v.ge(1))
    """Rollouts per task: the group whose rewards GRPO compares (verl's ``rollout.n``)."""
    seed: int = 0
    """Seeds the order the tasks are walked in and the shuffle before the mini-batches."""
    rollout_timeout: float | None = attrs.field(default=None, validator=v.optional(v.gt(0)))
    """Seconds to wait for a step's rollouts; those still running then are cancelled and left out."""
    val_every: int = attrs.field(default=0, validator=v.ge(0))
    """Validate (through the store) every N steps and after the last, when a validation set is given; 0: after
    the last only."""
    # ---------------------------------------------------------------- the update
    adv_estimator: str = "grpo"
    """verl's advantage estimator (``grpo``, ``rloo``, ``reinforce_plus_plus``, ...; ``gae`` needs a critic)."""
    scale_rewards: bool = True
    """Divide a group's centred rewards by its standard deviation (verl's ``norm_adv_by_std_in_grpo``; verl uses
    the sample standard deviation, agl-algo-grpo the population one)."""
    learning_rate: float = attrs.field(default=1e-6, validator=v.gt(0))
    """The actor's learning rate."""
    ppo_mini_batch_size: int = attrs.field(default=8, validator=v.ge(1))
    """Tasks per optimizer step (verl multiplies it by ``group_size``); rows beyond a whole number of mini-batches
    are dropped, as verl's agent trainers do."""
    micro_batch_size_per_gpu: int = attrs.field(default=4, validator=v.ge(1))
    """Sequences per forward/backward pass on each GPU (also for computing log-probs)."""
    ppo_epochs: int = attrs.field(default=1, validator=v.ge(1))
    """Passes over a step's data."""
    clip_low: float = attrs.field(default=0.2, validator=[v.ge(0), v.lt(1)])
    """ε below: the ratio is clipped at ``1 - clip_low``."""
    clip_high: float = attrs.field(default=0.2, validator=v.ge(0))
    """ε above: the ratio is clipped at ``1 + clip_high`` (0.28 for DAPO's clip-higher)."""
    clip_ratio_c: float = attrs.field(default=3.0, validator=v.gt(1))
    """verl's dual clip: for a negative advantage the loss is at most ``-A · clip_ratio_c``."""
    kl_coef: float = attrs.field(default=0.0, validator=v.ge(0))
    """Weight of the k3 KL loss to the reference policy; 0: no reference model."""
    # ---------------------------------------------------------------- sampling and lengths
    temperature: float = attrs.field(default=1.0, validator=v.gt(0))
    """Sampling temperature, published with the LLM resource and used by verl for the log-probs."""
    max_prompt_length: int = attrs.field(default=2048, validator=v.ge(1))
    """Prompt tokens per row; a triplet with a longer prompt is left out (and counted)."""
    max_tokens: int = attrs.field(default=512, validator=v.ge(1))
    """Completion tokens per LLM call (published with the LLM) and response tokens per row (longer ones are cut)."""
    # ---------------------------------------------------------------- the cluster
    nnodes: int = attrs.field(default=1, validator=v.ge(1))
    """Nodes of the Ray cluster verl trains on."""
    n_gpus_per_node: int = attrs.field(default=1, validator=v.ge(1))
    """GPUs per node."""
    tensor_parallel_size: int = attrs.field(default=1, validator=v.ge(1))
    """vLLM's tensor parallelism per rollout replica."""
    gpu_memory_utilization: float = attrs.field(default=0.5, validator=[v.gt(0), v.le(1)])
    """Share of each GPU's memory vLLM may take (the actor shares the GPU: verl's hybrid engine)."""
    ray_address: str | None = None
    """An existing Ray cluster to join (``ray://...`` or ``auto``); none starts a local one bound to 127.0.0.1."""
    # ---------------------------------------------------------------- checkpoints and pass-through
    checkpoint_every: int = attrs.field(default=0, validator=v.ge(0))
    """Save verl's checkpoint every N steps; 0: never."""
    checkpoint_dir: str = ".agl/verl"
    """Where verl's checkpoints go."""
    overrides: tuple[str, ...] = attrs.field(default=(), converter=_override_list, validator=_key_value)
    """Any other verl config key, as Hydra overrides (``--set 'algorithm.overrides=["actor_rollout_ref.actor.
    entropy_coeff=0.001"]'``); applied last, so they win over the options above."""


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def hydra_overrides(options: VERLOptions) -> list[str]:
    """verl's ``ppo_trainer`` Hydra overrides for ``options``: the fixed ones, the mapped options, then
    ``options.overrides``."""
    actor = "actor_rollout_ref.actor"
    rollout = "actor_rollout_ref.rollout"
    mapped: dict[str, Any] = {
        "actor_rollout_ref.model.path": options.model,
        "trainer.total_training_steps": options.steps,
        "data.train_batch_size": options.batch_size,
        f"{rollout}.n": options.group_size,
        "algorithm.adv_estimator": options.adv_estimator,
        "algorithm.norm_adv_by_std_in_grpo": options.scale_rewards,
        f"{actor}.optim.lr": options.learning_rate,
        f"{actor}.ppo_mini_batch_size": options.ppo_mini_batch_size,
        f"{actor}.ppo_micro_batch_size_per_gpu": options.micro_batch_size_per_gpu,
        f"{rollout}.log_prob_micro_batch_size_per_gpu": options.micro_batch_size_per_gpu,
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": options.micro_batch_size_per_gpu,
        f"{actor}.ppo_epochs": options.ppo_epochs,
        f"{actor}.clip_ratio_low": options.clip_low,
        f"{actor}.clip_ratio_high": options.clip_high,
        f"{actor}.clip_ratio_c": options.clip_ratio_c,
        f"{actor}.use_kl_loss": options.kl_coef > 0,
        f"{actor}.kl_loss_coef": options.kl_coef,
        f"{actor}.kl_loss_type": "low_var_kl",
        f"{rollout}.temperature": options.temperature,
        "data.max_prompt_length": options.max_prompt_length,
        "data.max_response_length": options.max_tokens,
        f"{rollout}.tensor_model_parallel_size": options.tensor_parallel_size,
        f"{rollout}.gpu_memory_utilization": options.gpu_memory_utilization,
        "trainer.nnodes": options.nnodes,
        "trainer.n_gpus_per_node": options.n_gpus_per_node,
        "trainer.save_freq": options.checkpoint_every or -1,
        "trainer.default_local_dir": options.checkpoint_dir,
    }
    return [*FIXED_OVERRIDES, *(f"{key}={_value(value)}" for key, value in mapped.items()), *options.overrides]
