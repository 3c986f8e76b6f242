"""The ``verl`` algorithm: verl 0.9's trainer, its generation replaced by agl rollouts.

Each step: the vLLM replicas verl runs (holding the actor's current weights) are published behind agl's LLM proxy;
``batch_size`` tasks × ``group_size`` rollouts are enqueued into the store and run by whatever runners serve it;
their spans become triplets (the trainer's adapter, default the kernel's ``TripletAdapter``), then rows of token
ids with a reward and a group (``uid``) each, then verl's ``DataProto``; verl computes log-probs, the advantage
(``compute_advantage``) and the actor update, and its checkpoint engine pushes the new weights into the replicas.
"""

from __future__ import annotations

import asyncio
import importlib.util
import random
import statistics
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from agl_algo_verl._options import VERLOptions
from agl_algo_verl._rollouts import AglRollouts, StepRollouts
from agl_kernel.algorithm import Algorithm
from agl_kernel.config import options_with
from agl_kernel.errors import ConfigError, MissingDependencyError
from agl_kernel.models import RolloutMode
from agl_kernel.store.base import LightningStore

__all__ = ["VERL", "VERLReport", "require_verl"]

VERL_EXTRA = "agl-algo-verl[verl]"


def require_verl() -> None:
    """Raise a one-line :class:`MissingDependencyError` when verl or ray is not installed."""
    missing = [name for name in ("verl", "ray", "torch") if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingDependencyError(
            f"the verl algorithm needs {', '.join(missing)}: pip install '{VERL_EXTRA}' in an environment of its "
            "own (verl 0.9 and vLLM pin different transformers; see plugins/agl-algo-verl/README.md)"
        )


class VERLReport(msgspec.Struct, frozen=True, kw_only=True):
    steps_done: int
    history: list[dict[str, float]]
    """Per step: agl's counts and times (``rollouts``, ``rows``, ``reward_mean``, ``step_time_s``, ...) and verl's
    metrics (``actor/pg_loss``, ``actor/entropy``, ...)."""
    validation: list[dict[str, float]] = msgspec.field(default_factory=list)


def summary(collected: StepRollouts, rollouts: int) -> dict[str, float]:
    """agl's per-step counts of what the rollouts gave."""
    metrics = {
        "rollouts": float(rollouts),
        "rollouts_succeeded": float(collected.succeeded),
        "rollouts_failed": float(collected.failed),
        "rollouts_without_rows": float(len(collected.no_rows)),
        "rows": float(len(collected.rows)),
    }
    if collected.rewards:
        metrics["reward_mean"] = statistics.fmean(collected.rewards)
    return metrics


class VERL(Algorithm):
    """verl's PPO/GRPO trainer on agl rollouts (``Trainer(algorithm="verl", options={"algorithm": {...}})``).

    Options: :class:`~agl_algo_verl.VERLOptions` (``agl plugins show verl``); ``VERL(model="Qwen/...", steps=...)``
    takes the same keywords. Needs ``agl-algo-verl[verl]`` and the GPUs ``nnodes × n_gpus_per_node``.
    """

    Options = VERLOptions

    def __init__(self, options: VERLOptions | dict[str, Any] | None = None, **overrides: Any) -> None:
        self.options: VERLOptions = options_with(VERLOptions, options, overrides, path="algorithm")
        self._orders: dict[int, list[int]] = {}

    def tasks_for_step(self, dataset: Sequence[Any], step: int) -> list[Any]:
        """The ``batch_size`` tasks of ``step``: the dataset in a seeded random order, reshuffled each pass."""
        size, n = self.options.batch_size, len(dataset)
        tasks = []
        for position in range(step * size, (step + 1) * size):
            epoch, index = divmod(position, n)
            if epoch not in self._orders:
                order = list(range(n))
                random.Random(self.options.seed * 1_000_003 + epoch).shuffle(order)
                self._orders[epoch] = order
            tasks.append(dataset[self._orders[epoch][index]])
        return tasks

    def rollouts(self) -> AglRollouts:
        return AglRollouts(
            group_size=self.options.group_size,
            adapter=self.adapter,
            rollout_timeout=self.options.rollout_timeout,
            progress=self.progress,
        )

    async def run(
        self, store: LightningStore, train_dataset: Sequence[Any], val_dataset: Sequence[Any] | None = None
    ) -> VERLReport:
        require_verl()
        if not train_dataset:
            raise ConfigError("VERL needs a non-empty training dataset")
        from agl_algo_verl import _trainer

        config = await asyncio.to_thread(_trainer.verl_config, self.options)
        import ray

        started = not ray.is_initialized()
        if started:
            ray.init(**_trainer.ray_init_kwargs(self.options))
        try:
            trainer = await asyncio.to_thread(_trainer.build_trainer, config, len(train_dataset))
            return await self._loop(store, trainer, train_dataset, val_dataset)
        finally:
            if started:
                ray.shutdown()

    async def _loop(
        self, store: LightningStore, trainer: Any, train: Sequence[Any], val: Sequence[Any] | None
    ) -> VERLReport:
        from agl_algo_verl._dataproto import to_dataproto
        from agl_algo_verl._trainer import update_step

        o = self.options
        rollouts = self.rollouts()
        tokenizer = trainer.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        sampling = {"temperature": o.temperature, "max_tokens": o.max_tokens}
        history: list[dict[str, float]] = []
        validation: list[dict[str, float]] = []
        await asyncio.to_thread(trainer.start)
        async with rollouts.serving(store, trainer.server_urls(), str(o.model)):
            for step in range(o.steps):
                started = time.perf_counter()
                trainer.global_steps = step + 1
                resources_id = await rollouts.publish(store, sampling)
                tasks = self.tasks_for_step(train, step)
                collected = await rollouts.run(
                    store, tasks, resources_id=resources_id, metadata={"verl_step": step}, label=f"step {step + 1}"
                )
                rollout_time = time.perf_counter() - started
                await asyncio.to_thread(trainer.sleep_rollout)
                packed = to_dataproto(
                    collected.rows,
                    pad_token_id=pad,
                    max_prompt_length=o.max_prompt_length,
                    max_response_length=o.max_tokens,
                )
                metrics = summary(collected, len(tasks) * o.group_size)
                metrics.update(rows_dropped_long_prompt=float(packed.dropped_long_prompt))
                if packed.data is not None:
                    metrics.update(await asyncio.to_thread(update_step, trainer, packed.data, seed=o.seed, step=step))
                else:
                    metrics["agl/update_skipped"] = 1.0
                await asyncio.to_thread(trainer.sync_weights)
                last = step == o.steps - 1
                await asyncio.to_thread(trainer.save_if_due, last)
                metrics.update(rollout_time_s=rollout_time, step_time_s=time.perf_counter() - started)
                history.append(metrics)
                if val and (last or (o.val_every and (step + 1) % o.val_every == 0)):
                    validation.append(await self._validate(store, rollouts, val, sampling, step))
        return VERLReport(steps_done=len(history), history=history, validation=validation)

    async def _validate(
        self, store: LightningStore, rollouts: AglRollouts, val: Sequence[Any], sampling: dict[str, Any], step: int
    ) -> dict[str, float]:
        resources_id = await rollouts.publish(store, sampling)
        collected = await rollouts.run(store, list(val), resources_id=resources_id, mode=RolloutMode.VAL, label="val")
        metrics = summary(collected, len(val))
        metrics["step"] = float(step + 1)
        return metrics
