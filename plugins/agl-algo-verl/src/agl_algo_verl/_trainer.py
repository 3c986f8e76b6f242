"""verl's side (needs verl 0.9, ray, torch): the Hydra config from the options, and the trainer.

``AglPPOTrainer`` (:func:`agl_trainer_class`) subclasses verl 0.9's ``RayPPOTrainer`` (its legacy,
generate-then-train trainer, selected by ``trainer.use_v1=false``) and keeps everything verl does around
generation: its worker groups (FSDP actor with the reference fused in), its vLLM rollout replicas in the hybrid
engine, ``compute_advantage``, the actor update, and the checkpoint engine that syncs the actor's weights into the
vLLM replicas after each update. Only generation changes: instead of verl's agent loop, the replicas' OpenAI
servers are put behind agl's LLM proxy, the step's tasks run as agl rollouts (any agent, runner, strategy), and
their triplets become the step's ``DataProto`` (:mod:`agl_algo_verl._dataproto`).

What runs where: :func:`verl_config` and the pieces :func:`update_step` calls (``DataProto``, ``compute_advantage``,
the policy loss, worker groups) run on any machine with verl; ``init_workers`` and the vLLM replicas need GPUs
(verl 0.9 has no CPU platform: NCCL, and only vllm/sglang/trtllm rollouts).
"""

from __future__ import annotations

import os
import random
from typing import Any

from agl_algo_verl._options import VERLOptions, hydra_overrides
from agl_kernel.errors import ConfigError

__all__ = ["agl_trainer_class", "build_trainer", "ray_init_kwargs", "update_step", "verl_config"]


def verl_config(options: VERLOptions, *, require_model: bool = True) -> Any:
    """verl's ``ppo_trainer`` config (an OmegaConf ``DictConfig``) composed with :func:`hydra_overrides`. A key verl
    does not have, or a value its config classes refuse, raises one :class:`ConfigError` line."""
    if require_model and not options.model:
        raise ConfigError("algorithm.model: VERL needs the model to train: a Hugging Face name or a local directory")
    import verl.trainer.config as config_package
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    directory = os.path.dirname(os.path.abspath(config_package.__file__))
    overrides = hydra_overrides(options)
    if not require_model and not options.model:
        overrides = [o for o in overrides if not o.startswith("actor_rollout_ref.model.path=")]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=directory, version_base=None):
            config = compose(config_name="ppo_trainer", overrides=overrides)
    except Exception as err:  # hydra's errors are of many classes; each says which key
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"algorithm.overrides: verl's config refused them: {first}") from None
    finally:
        GlobalHydra.instance().clear()
    return config


def _tasks_dataset(size: int) -> Any:
    """A stand-in for verl's RL dataset (the trainer builds its data loader from one): agl walks the tasks itself."""
    import torch

    class TaskIndices(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return size

        def __getitem__(self, index: int) -> dict[str, Any]:
            return {"agl_task_index": index}

    return TaskIndices()


def update_step(trainer: Any, batch: Any, *, seed: int = 0, step: int = 0) -> dict[str, float]:
    """verl's half of a step on the rows agl collected (``batch``, a ``DataProto`` from
    :func:`~agl_algo_verl._dataproto.to_dataproto`): log-probs of the actor (and reference), token-level rewards
    (with verl's in-reward KL if configured), ``compute_advantage``, then the actor update on whole mini-batches.
    Returns verl's metrics. ``trainer`` is an :class:`AglPPOTrainer` (or anything with its worker groups)."""
    import torch
    from verl.protocol import pad_dataproto_to_divisor, unpad_dataproto
    from verl.trainer.ppo.core_algos import agg_loss
    from verl.trainer.ppo.metric_utils import reduce_metrics
    from verl.trainer.ppo.ray_trainer import apply_kl_penalty, compute_advantage

    config = trainer.config
    metrics: dict[str, float] = {}
    batch.meta_info["temperature"] = config.actor_rollout_ref.rollout.temperature
    batch.meta_info["global_token_num"] = torch.sum(batch.batch["attention_mask"], dim=-1).tolist()
    batch.meta_info["images_seqlens"] = []
    batch, pad = pad_dataproto_to_divisor(batch, trainer.actor_rollout_wg.world_size)
    old, _mfu = trainer._compute_old_log_prob(batch)
    actor = config.actor_rollout_ref.actor
    entropy = agg_loss(
        loss_mat=old.batch["entropys"],
        loss_mask=batch.batch["response_mask"],
        loss_agg_mode=actor.loss_agg_mode,
        loss_scale_factor=actor.loss_scale_factor,
    )
    metrics["actor/entropy"] = float(entropy.detach().item())
    old.batch.pop("entropys")
    batch = batch.union(old)
    if trainer.use_reference_policy:
        batch = batch.union(trainer._compute_ref_log_prob(batch))
    batch = unpad_dataproto(batch, pad_size=pad)  # advantages from the real rows only

    batch.batch["token_level_scores"] = batch.batch["rm_scores"]
    if config.algorithm.use_kl_in_reward:
        batch, kl_metrics = apply_kl_penalty(
            batch, kl_ctrl=trainer.kl_ctrl_in_reward, kl_penalty=config.algorithm.kl_penalty
        )
        metrics.update(kl_metrics)
    else:
        batch.batch["token_level_rewards"] = batch.batch["token_level_scores"]
    batch = compute_advantage(
        batch,
        adv_estimator=config.algorithm.adv_estimator,
        gamma=config.algorithm.gamma,
        lam=config.algorithm.lam,
        num_repeat=config.actor_rollout_ref.rollout.n,
        norm_adv_by_std_in_grpo=config.algorithm.get("norm_adv_by_std_in_grpo", True),
        config=config.algorithm,
    )
    # verl updates on whole mini-batches of ppo_mini_batch_size × n rows: shuffle, drop the remainder.
    mini = actor.ppo_mini_batch_size * config.actor_rollout_ref.rollout.n
    order = list(range(len(batch)))
    random.Random(seed * 1_000_003 + step).shuffle(order)
    keep = len(order) // mini * mini
    metrics["agl/rows_dropped_remainder"] = float(len(order) - keep)
    if keep == 0:
        metrics["agl/update_skipped"] = 1.0
        return metrics
    batch.reorder(torch.tensor(order, dtype=torch.int64))
    batch = batch[list(range(keep))]
    output = trainer._update_actor(batch)
    metrics.update(reduce_metrics(output.meta_info["metrics"]))
    return metrics


def agl_trainer_class() -> type:
    """``AglPPOTrainer``, made on first use (it subclasses verl's class, so it needs verl imported)."""
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    class AglPPOTrainer(RayPPOTrainer):  # type: ignore[misc]
        """verl's RayPPOTrainer whose generation is agl rollouts (see the module's docstring).

        The loop is driven from agl's algorithm (:class:`agl_algo_verl.VERL`), a step at a time:
        ``server_urls()`` → agl rollouts → ``sleep_rollout()`` → :func:`update_step` → ``sync_weights()``.
        """

        def server_urls(self) -> list[str]:
            """The OpenAI base URLs of verl's vLLM replicas (which hold the current weights)."""
            return [f"http://{address}/v1" for address in self.llm_server_manager.get_addresses()]

        def start(self) -> None:
            """Load verl's latest checkpoint (if any) and put its weights into the replicas."""
            self.global_steps = 0
            self._load_checkpoint()
            self.checkpoint_manager.update_weights(self.global_steps)

        def sleep_rollout(self) -> None:
            """Free the replicas' GPU memory (weights, KV cache) for the update: verl's hybrid engine."""
            self.checkpoint_manager.sleep_replicas()

        def sync_weights(self) -> None:
            """Push the actor's new weights into the vLLM replicas (verl's checkpoint engine) and wake them."""
            self.checkpoint_manager.update_weights(self.global_steps)

        def save_if_due(self, last: bool) -> None:
            freq = self.config.trainer.save_freq
            if freq > 0 and (self.global_steps % freq == 0 or last):
                self._save_checkpoint()

    return AglPPOTrainer


def build_trainer(config: Any, n_tasks: int) -> Any:
    """An initialised :class:`AglPPOTrainer` (worker groups, vLLM replicas, checkpoint engine) for ``config``, set
    up as verl's own ``main_ppo`` (v0) task runner sets it up. Needs the GPUs the config asks for."""
    from omegaconf import OmegaConf
    from verl.trainer.main_ppo_v0 import BaseTaskRunner
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config
    from verl.utils.dataset.rl_dataset import collate_fn

    OmegaConf.resolve(config)
    runner = BaseTaskRunner()
    _cls, group_cls = runner.add_actor_rollout_worker(config)
    if need_critic(config):
        runner.add_critic_worker(config)
    runner.add_reward_model_resource_pool(config)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    model = omega_conf_to_dataclass(config.actor_rollout_ref.model)
    pool = runner.init_resource_pool_mgr(config)
    size = max(n_tasks, config.data.train_batch_size) * max(1, int(config.trainer.total_training_steps or 1))
    import torch

    dataset = _tasks_dataset(size)
    trainer = agl_trainer_class()(
        config=config,
        tokenizer=model.tokenizer,
        processor=model.processor,
        role_worker_mapping=runner.role_worker_mapping,
        resource_pool_manager=pool,
        ray_worker_group_cls=group_cls,
        train_dataset=dataset,
        val_dataset=dataset,
        collate_fn=collate_fn,
        train_sampler=torch.utils.data.SequentialSampler(dataset),
    )
    trainer.init_workers()
    return trainer


def ray_init_kwargs(options: VERLOptions) -> dict[str, Any]:
    """How the algorithm starts Ray: joins ``ray_address`` if given, else a local cluster on 127.0.0.1 with the
    dashboard and usage reporting off, and verl's runtime environment for its workers. For the local one, Ray's
    single-machine switch is set (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, also in ray's constants, read when ray
    was imported): otherwise Ray announces the node under the machine's network address."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env = {"RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "true", "NCCL_DEBUG": "WARN"}
    if options.ray_address:
        return {"address": options.ray_address, "runtime_env": {"env_vars": env}}
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray._private.ray_constants as ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    return {
        "address": "local",
        "_node_ip_address": "127.0.0.1",
        "include_dashboard": False,
        "runtime_env": {"env_vars": env},
    }
