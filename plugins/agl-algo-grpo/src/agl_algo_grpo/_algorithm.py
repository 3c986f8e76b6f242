"""The GRPO algorithm: the loop that publishes the policy, runs groups of rollouts, turns them into triplets with
advantages and updates the policy (entry point ``grpo`` in ``agl.algorithms``)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import attrs
import msgspec
from rich.console import Console
from torch import nn

from agl_algo_grpo._adapters import RoleRewards, split_rollouts
from agl_algo_grpo._batching import RolloutSample, TrainingSample, assign_advantages, split_stale
from agl_algo_grpo._checkpoint import disk_usage, format_size, list_checkpoints
from agl_algo_grpo._config import GRPOConfig, credit_rule, llm_backend, make_config
from agl_algo_grpo._policy import PolicyTrainer, keep_freed_memory, resolve_device
from agl_algo_grpo._publish import PolicyPublisher, as_publisher
from agl_algo_grpo._serving import (
    check_model_name,
    is_object_spec,
    load_named_model,
    require_model_server,
    served_copy,
    serving,
)
from agl_kernel import semconv
from agl_kernel.algorithm import Algorithm
from agl_kernel.config import to_plain
from agl_kernel.errors import ConfigError, NotFoundError
from agl_kernel.models import LLM, EnqueueRequest, Rollout, RolloutConfig, RolloutMode, RolloutStatus, Triplet
from agl_kernel.progress import (
    FAILED,
    FINISHED,
    FULL_REWARD,
    MEAN_REWARD,
    NoProgress,
    ProgressReporter,
    count_full_rewards,
)
from agl_kernel.rewards import final_reward, get_reward
from agl_kernel.store import LightningStore
from agl_kernel.training_metrics import Column, MetricsRecorder

__all__ = ["GRPO", "GRPOReport"]

# What each step's console table shows: every column on every step ("-" where a step has no value, e.g. the loss
# of a step without an update). The rollout counts use the words of every progress table (agl_kernel.progress).
CONSOLE_COLUMNS: list[Column] = [
    ("rollouts_succeeded", FINISHED, "{:.0f}"),
    ("rollouts_failed", FAILED, "{:.0f}"),
    ("rollouts_full_reward", FULL_REWARD, "{:.0f}"),
    ("reward_mean", MEAN_REWARD, "{:.3f}"),
    ("reward_std", "std", "{:.3f}"),
    ("rollouts_without_triplets", "no data", "{:.0f}"),
    ("triplets_trained", "triplets", "{:.0f}"),
    ("loss", "loss", "{:.4f}"),
    ("kl", "kl", "{:.4f}"),
    ("clip_fraction", "clip", "{:.3f}"),
    ("grad_norm", "grad norm", "{:.3f}"),
    ("tokens_per_s", "tok/s", "{:.0f}"),
    ("rollout_time_s", "rollout s", "{:.1f}"),
    ("update_time_s", "update s", "{:.1f}"),
]
ASYNC_COLUMNS: list[Column] = [  # added with max_staleness >= 1
    ("staleness_mean", "stale", "{:.2f}"),
    ("stale_dropped", "dropped", "{:.0f}"),
]
VALIDATION_COLUMNS: list[Column] = [  # the console line of each validation
    ("val_rollouts", "rollouts", "{:.0f}"),
    ("val_finished", FINISHED, "{:.0f}"),
    ("val_failed", FAILED, "{:.0f}"),
    ("val_full_reward", FULL_REWARD, "{:.0f}"),
    ("val_reward_mean", MEAN_REWARD, "{:.3f}"),
]


class GRPOReport(msgspec.Struct, frozen=True, kw_only=True):
    """What a GRPO run did: per-step and per-validation metrics, where they are in the store, the last checkpoint,
    and the checkpoints on disk after the run (``checkpoints``: their folders, oldest first; ``checkpoints_bytes``:
    what they take on disk together, as ``du`` counts)."""

    steps_done: int
    history: list[dict[str, float]]
    validations: list[dict[str, float]]
    metrics_rollout_id: str | None = None
    checkpoint: str | None = None
    resumed_from: str | None = None
    checkpoint_dir: str | None = None
    checkpoints: list[str] = msgspec.field(default_factory=list)
    checkpoints_bytes: int = 0
    stale_dropped: int = 0
    """Asynchronous GRPO: triplets left out of their update for being more than ``max_staleness`` versions old."""


@dataclass
class _Collected:
    samples: list[RolloutSample]
    rewards: list[float]
    succeeded: int
    failed: int
    no_triplets: list[dict[str, str]]


@dataclass
class _Validation:
    """A validation's rollouts, enqueued on the version the policy had after ``step`` steps."""

    rollouts: list[Rollout]
    step: int
    started_wall: float


class GRPO(Algorithm):
    """Group Relative Policy Optimization for agents.

    Each step: publish the policy (``publisher``), enqueue ``group_size`` rollouts of each of ``batch_size`` tasks
    pinned to it (with ``max_staleness`` k ≥ 1 also those of the next k steps, ahead: see :meth:`_rollouts_for`),
    wait for them (woken by the store), turn each rollout's spans into triplets with ``adapter``
    (default: the kernel's ``TripletAdapter``), compute group-relative advantages (rule: :mod:`agl_algo_grpo._batching`)
    and update the policy; then record the step's metrics (:mod:`agl_kernel.training_metrics`), validate (before the
    first step, every ``val_every`` steps and after the last) and checkpoint every ``checkpoint_every`` steps.
    Only rollouts that succeeded are trained on; the others, and those whose spans give no triplet, are counted
    and reported with the reason (the adapter's, when it gives one).

    - ``model``: a Hugging Face causal LM module, or a name (see :attr:`GRPOConfig.model`: a Hugging Face name or
      directory, ``smollm2``, ``module:factory``); or pass a ready ``policy`` (:class:`PolicyTrainer`).
    - ``config``: a :class:`GRPOConfig` (also ``GRPO.Options``) or mapping; ``**options`` override its fields
      (``steps=3``).
    - ``publisher``: a :class:`PolicyPublisher` (e.g. :class:`LLMPublisher`) or an async function
      ``(policy, *, version, store, sampling_parameters) -> resources_id``.
    - ``serve``: serve the policy itself during :meth:`run` (agl-model-server's ``ModelServer`` with a copy of the
      policy, the LLM proxy in front of it on 127.0.0.1, an :class:`LLMPublisher`; see
      :mod:`agl_algo_grpo._serving`; needs ``agl-algo-grpo[serve]``). ``None`` (the default): serve when no
      ``publisher`` and no ``policy`` are given and the model is named by a string (its tokenizer is loaded with
      it), as when GRPO is selected by name. With neither a publisher nor serving, nothing is published and
      rollouts use the latest resources, so they do not sample from the trained weights: only for tests.
    - ``rollout_config``: the store's supervision of each rollout (timeouts, retries).

    Selected by name, GRPO is made by :meth:`from_options`: ``Trainer(algorithm="grpo", options={"algorithm":
    {"model": "smollm2", "steps": 12}})`` or ``agl train --algorithm grpo --set algorithm.model=smollm2``.
    """

    Options = GRPOConfig

    def __init__(
        self,
        model: nn.Module | str | None = None,
        config: GRPOConfig | Mapping[str, Any] | None = None,
        *,
        policy: PolicyTrainer | None = None,
        publisher: PolicyPublisher | Callable[..., Any] | None = None,
        serve: bool | None = None,
        rollout_config: RolloutConfig | None = None,
        console: Console | None = None,
        **options: Any,
    ) -> None:
        self.config = make_config(config, **options)
        self.credit = credit_rule(self.config)
        if model is None:
            model = self.config.model
        elif isinstance(model, str) and model != self.config.model:
            self.config = attrs.evolve(self.config, model=model)
        if model is None and policy is None:
            raise ValueError("GRPO needs the model to train: GRPO(model=<module or name/path>) or GRPO(policy=...)")
        self.model = model
        self.policy = policy
        self.publisher = as_publisher(publisher)
        can_serve = publisher is None and policy is None and isinstance(model, str)
        if serve and not can_serve:
            raise ValueError(
                "GRPO(serve=True) serves the policy itself: it needs the model named by a string (to load its "
                "tokenizer too), and no publisher or policy"
            )
        self.serve = can_serve if serve is None else serve
        if self.serve:
            if self.config.backend == "model-server":
                require_model_server()
            llm_backend(self.config)  # a wrong backend or option fails here, not when the run starts
            check_model_name(model)  # type: ignore[arg-type]
        self.rollout_config = rollout_config
        self.console = console if console is not None else (Console() if self.config.console else None)
        self._published: tuple[int, str | None] | None = None  # (version, resources_id)
        self._active_publisher: PolicyPublisher | None = self.publisher
        self._served: tuple[nn.Module, Any] | None = None  # (the served copy, its tokenizer)
        self._orders: dict[int, list[int]] = {}
        self._ahead: dict[int, list[Rollout]] = {}  # step -> its rollouts, enqueued (asynchronous GRPO)
        self._policy_versions: dict[tuple[str, int], int] = {}  # (resources_id, resources version) -> policy version
        self._trainer_thread: concurrent.futures.ThreadPoolExecutor | None = None
        self._validating: asyncio.Future[dict[str, float]] | None = None  # a validation in the background
        self._validates = False  # the run has validation tasks
        self._run_started = time.perf_counter()

    @classmethod
    def from_options(cls, options: GRPOConfig, **objects: Any) -> GRPO:
        """GRPO selected by name (``Trainer(algorithm="grpo", options=...)``, ``agl train --algorithm grpo``): the
        model is ``options.model``; with no ``publisher`` among ``objects`` GRPO serves the policy itself."""
        model = objects.pop("model", None)  # a module given from Python, in place of the model option
        if model is None and options.model is None and objects.get("policy") is None:
            raise ConfigError(
                "algorithm.model: required: the model to train, a Hugging Face name or directory, smollm2, or "
                'module:factory (--set algorithm.model=NAME, or model = "NAME" in the run file\'s [algorithm] table)'
            )
        return cls(model, options, **objects)

    # ------------------------------------------------------------------------------------------------ the loop

    async def run(
        self, store: LightningStore, train_dataset: Sequence[Any], val_dataset: Sequence[Any] | None = None
    ) -> GRPOReport:
        if not train_dataset:
            raise ValueError("GRPO needs a non-empty train_dataset")
        device = self.policy.device if self.policy is not None else resolve_device(self.config)[0]
        if device.type == "cpu":
            keep_freed_memory()  # before the training thread starts: it must share the one arena
        # The policy is built, trained and saved on a thread of its own (torch releases the GIL meanwhile).
        self._trainer_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="agl-grpo-train")
        try:
            async with contextlib.AsyncExitStack() as stack:
                if self.policy is None:
                    self.policy = await self._on_trainer_thread(self._build_policy)
                self._active_publisher = self.publisher
                if self.serve:
                    assert self._served is not None
                    model, tokenizer = self._served
                    self._active_publisher = await stack.enter_async_context(
                        serving(
                            store,
                            llm_backend(self.config),
                            model,
                            tokenizer,
                            max_tokens=self.config.max_tokens,
                            adapters=list(self.policy.adapters),
                        )
                    )
                return await self._run(store, train_dataset, val_dataset)
        finally:
            self._active_publisher = self.publisher  # what it served is stopped
            self._trainer_thread.shutdown(wait=False)

    def _build_policy(self) -> PolicyTrainer:
        """The policy (on the trainer thread): the model loaded when it is named by a string, and when GRPO serves
        it, a copy for the server and the tokenizer (kept for later runs of this instance)."""
        model: Any = self.model
        if isinstance(model, str) and (self.serve or is_object_spec(model)):
            device, weights_dtype, _ = resolve_device(self.config)
            model, tokenizer = load_named_model(model, dtype=weights_dtype)
            if self.serve:
                self._served = (served_copy(model, device), tokenizer)
        return PolicyTrainer(model, self.config)  # a name not loaded above: transformers' from_pretrained

    async def _on_trainer_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._trainer_thread, function, *args)

    async def _run(
        self, store: LightningStore, train_dataset: Sequence[Any], val_dataset: Sequence[Any] | None
    ) -> GRPOReport:
        assert self.policy is not None
        policy = self.policy
        if self.adapter is None:
            from agl_kernel.adapters import TripletAdapter

            self.adapter = TripletAdapter()
        if policy.adapters and not isinstance(self.adapter, RoleRewards):  # each role's reward to its triplets
            self.adapter = RoleRewards(self.adapter, list(policy.adapters))
        self._published = None
        self._ahead = {}
        self._validating = None
        self._validates = bool(val_dataset)
        self._run_started = time.perf_counter()
        recorder = MetricsRecorder(
            store,
            algorithm="grpo",
            console=self.console,
            tensorboard_dir=self.config.tensorboard_dir,
            columns=CONSOLE_COLUMNS + ASYNC_COLUMNS if self.config.max_staleness else CONSOLE_COLUMNS,
            validation_columns=VALIDATION_COLUMNS,
        )
        resumed = str(policy.resumed_from) if policy.resumed_from is not None else None
        metrics_rollout_id = await recorder.open({"config": to_plain(self.config), "resumed_from": resumed})
        history: list[dict[str, float]] = []
        validations: list[dict[str, float]] = []
        checkpoint: str | None = None
        try:
            if val_dataset and policy.step == 0:  # the first policy, in the background when asynchronous
                await self._validate_at_step(store, policy, val_dataset, recorder, validations)
            while policy.step < self.config.steps:
                history.append(await self._step(store, policy, train_dataset, recorder))
                if self.config.checkpoint_every and (
                    policy.step % self.config.checkpoint_every == 0 or policy.step == self.config.steps
                ):
                    checkpoint = str(await self._on_trainer_thread(policy.save_checkpoint))
                every = self.config.val_every
                if val_dataset and (policy.step == self.config.steps or (every and policy.step % every == 0)):
                    await self._validate_at_step(store, policy, val_dataset, recorder, validations)
            await self._settle_validation()
        except BaseException:
            if self._validating is not None:
                self._validating.cancel()
                await asyncio.gather(self._validating, return_exceptions=True)
                self._validating = None
            await self._cancel_ahead(store)
            await recorder.close(succeeded=False)
            raise
        await recorder.close(succeeded=True)
        kept = [str(path) for _, path in list_checkpoints(policy.checkpoint_dir)] if checkpoint else []
        size = sum(disk_usage(Path(path)) for path in kept)
        if self.console is not None and checkpoint is not None:
            keep = self.config.keep_checkpoints
            self.console.print(
                f"checkpoints: {len(kept)} in {policy.checkpoint_dir}/ ({', '.join(Path(p).name for p in kept)}), "
                f"{format_size(size)} on disk; the newest {keep} are kept (keep_checkpoints)"
                if keep is not None
                else f"checkpoints: {len(kept)} in {policy.checkpoint_dir}/, {format_size(size)} on disk"
            )
        return GRPOReport(
            steps_done=policy.step,
            history=history,
            validations=validations,
            metrics_rollout_id=metrics_rollout_id,
            checkpoint=checkpoint,
            resumed_from=resumed,
            checkpoint_dir=str(policy.checkpoint_dir) if checkpoint else None,
            checkpoints=kept,
            checkpoints_bytes=size,
            stale_dropped=int(sum(m.get("stale_dropped", 0.0) for m in history)),
        )

    async def _step(
        self, store: LightningStore, policy: PolicyTrainer, dataset: Sequence[Any], recorder: MetricsRecorder
    ) -> dict[str, float]:
        started_wall, started = time.time(), time.perf_counter()
        step = policy.step
        resources_id = await self._publish(store, policy, may_defer=True)
        rollouts = await self._rollouts_for(store, policy, dataset, resources_id)
        ended = await self._wait(store, rollouts, f"step {step + 1}/{self.config.steps}")
        collected = await self._collect(store, rollouts, ended)
        rollout_time = time.perf_counter() - started

        rollout_samples, role_metrics = collected.samples, dict[str, float]()
        if policy.adapters:  # one LoRA per role (agl_algo_grpo._adapters): advantages within each role's triplets
            rollout_samples, role_metrics = split_rollouts(collected.samples, list(policy.adapters))
        samples = assign_advantages(rollout_samples, rule=self.credit)
        total = len(samples)
        if self.config.max_staleness:
            samples, dropped = split_stale(samples, policy.version, self.config.max_staleness)
            stale_metrics = _staleness_metrics(samples, dropped, policy.version)
        if self.config.skip_zero_advantage:
            samples = [s for s in samples if s.advantage != 0.0]
        metrics: dict[str, float] = {}
        if samples:
            metrics.update(await self._on_trainer_thread(policy.train_step, samples))
        else:
            policy.skip_step()
            metrics["update_skipped"] = 1.0
        metrics.update(
            rollouts=float(len(rollouts)),
            rollouts_succeeded=float(collected.succeeded),
            rollouts_failed=float(collected.failed),
            rollouts_without_triplets=float(len(collected.no_triplets)),
            triplets=float(total),
            triplets_trained=float(len(samples)),
            rollout_time_s=rollout_time,
            step_time_s=time.perf_counter() - started,
        )
        if collected.rewards:
            rewards = collected.rewards
            mean = sum(rewards) / len(rewards)
            metrics["reward_mean"] = mean
            metrics["reward_std"] = (sum((r - mean) ** 2 for r in rewards) / len(rewards)) ** 0.5
            metrics["rollouts_full_reward"] = float(count_full_rewards(rewards))
            metrics["success_rate"] = metrics["rollouts_full_reward"] / len(rewards)  # share with reward ≥ 1
        metrics["update_time_s"] = metrics["step_time_s"] - rollout_time
        metrics["run_time_s"] = time.perf_counter() - self._run_started  # wall time to this step's end
        metrics.update(role_metrics)
        if self.config.max_staleness:
            metrics.update(stale_metrics)
        await recorder.record(policy.step, metrics, no_triplet_reasons=collected.no_triplets, started=started_wall)
        return metrics

    async def _rollouts_for(
        self, store: LightningStore, policy: PolicyTrainer, dataset: Sequence[Any], resources_id: str | None
    ) -> list[Rollout]:
        """The rollouts of the step about to be trained: ``group_size`` of each of its tasks, enqueued now, or
        earlier when they were enqueued ahead. With ``max_staleness`` k the rollouts of the next k steps are
        enqueued now too (those not yet), so the runners work on them while this step updates the policy: a step's
        rollouts are enqueued at the earliest k versions before the update that trains on them (the producer's
        bound), counted from the published version: while a publish is deferred (see :meth:`_publish`), one step
        fewer. With k = 0 only this step's, as synchronous GRPO does.

        When a validation will run in the background after this step's update and the runners are short (some
        rollouts enqueued earlier still wait in the queue for one), at most the next step's rollouts are enqueued
        ahead of it: the store's queue is FIFO, and a validation queued behind k steps of training rollouts would
        hold the next publish (see :meth:`_publish`) until all of them had run; the later steps' rollouts are
        enqueued by the next step, after the validation's. When the runners keep up (nothing of ours waits), the
        validation will find a free runner anyway, so the look-ahead stays whole: cutting it would leave the steps
        after the validation with nothing generated ahead (the proxy's priority serves the validation's calls
        first, see :class:`agl_kernel.proxy.LLMProxy`)."""
        behind = policy.version - self._published[0] if self._published is not None else 0  # a deferred publish
        last = max(policy.step, min(policy.step + self.config.max_staleness - behind, self.config.steps - 1))
        before_validation = self._background_validation_after(policy.step + 1)
        if last > policy.step + 1 and before_validation and await self._runners_short(store):
            last = policy.step + 1
        for step in range(policy.step, last + 1):
            if step not in self._ahead:
                requests = [
                    EnqueueRequest(
                        input=task,
                        mode=RolloutMode.TRAIN,
                        resources_id=resources_id,
                        config=self.rollout_config,
                        metadata={"grpo_step": step, "grpo_group": group, "policy_version": policy.version},
                    )
                    for group, task in enumerate(self.tasks_for_step(dataset, step))
                    for _ in range(self.config.group_size)
                ]
                self._ahead[step] = await store.enqueue_many_rollouts(requests)
        return self._ahead.pop(policy.step)

    async def _runners_short(self, store: LightningStore) -> bool:
        """Whether a rollout enqueued ahead still waits in the store's queue for a runner."""
        waiting = [r.rollout_id for rollouts in self._ahead.values() for r in rollouts]
        if not waiting:
            return False
        queued = await store.query_rollouts(
            status_in=[RolloutStatus.QUEUING, RolloutStatus.REQUEUING], rollout_id_in=waiting, limit=1
        )
        return bool(queued.items)

    def _background_validation_after(self, step: int) -> bool:
        """Whether a validation runs in the background once the policy has made ``step`` steps (asynchronous GRPO:
        the first policy's and every ``val_every`` steps' but the last, which is validated before the run ends)."""
        every = self.config.val_every
        due = step == 0 or bool(every and step % every == 0)
        return bool(self.config.max_staleness and self._validates and due and step < self.config.steps)

    async def _cancel_ahead(self, store: LightningStore) -> None:
        """Cancel the rollouts enqueued ahead for steps that will not be trained (the run failed or was stopped)."""
        ahead, self._ahead = self._ahead, {}
        for rollouts in ahead.values():
            for rollout in rollouts:
                with contextlib.suppress(Exception):
                    await store.cancel_rollout(rollout.rollout_id)

    def tasks_for_step(self, dataset: Sequence[Any], step: int) -> list[Any]:
        """The ``batch_size`` tasks of ``step``: the dataset walked in a seeded random order, reshuffled each pass,
        so a resumed run picks up exactly where it left off."""
        size, n = self.config.batch_size, len(dataset)
        tasks = []
        for position in range(step * size, (step + 1) * size):
            epoch, index = divmod(position, n)
            if epoch not in self._orders:
                order = list(range(n))
                random.Random(self.config.seed * 1_000_003 + epoch).shuffle(order)
                self._orders[epoch] = order
            tasks.append(dataset[self._orders[epoch][index]])
        return tasks

    async def _publish(self, store: LightningStore, policy: PolicyTrainer, *, may_defer: bool = False) -> str | None:
        """Publish the current policy (if not yet); its resources id. A validation running in the background holds
        the version it validates until it ends. ``may_defer`` (a training step): while the published version is
        fewer than ``max_staleness`` versions behind, the step does not wait for the validation: the runners go on
        sampling the published version, the look-ahead counts from it (:meth:`_rollouts_for`: nothing is enqueued
        that would be too stale when trained on), and the newest version is published once the validation has
        ended."""
        if self._active_publisher is None:
            return None
        if self._published is not None and self._published[0] == policy.version:
            return self._published[1]
        published, validating = self._published, self._validating is not None and not self._validating.done()
        if may_defer and validating and published and policy.version - published[0] < self.config.max_staleness:
            return published[1]
        await self._settle_validation()
        sampling = {"temperature": self.config.temperature, "max_tokens": self.config.max_tokens}
        resources_id = await self._active_publisher.publish(
            policy, version=policy.version, store=store, sampling_parameters=sampling
        )
        self._published = (policy.version, resources_id)
        if resources_id is not None:  # which policy version the proxy's calls under this resources version used
            with contextlib.suppress(NotFoundError):
                update = await store.get_resources(resources_id)
                self._policy_versions[(resources_id, update.version)] = policy.version
        return resources_id

    async def _settle_validation(self) -> None:
        """Wait for the validation running in the background (asynchronous GRPO), if any."""
        if self._validating is not None:
            validating, self._validating = self._validating, None
            await validating

    async def _wait(
        self, store: LightningStore, rollouts: list[Rollout], phase: str, progress: ProgressReporter | None = None
    ) -> dict[str, Rollout]:
        """Wait (woken by the store) for the rollouts to end, up to ``rollout_timeout``; those left then are
        cancelled. Returns the ended rollouts by id. Reports to ``progress`` (default: the trainer's)."""
        progress = self.progress if progress is None else progress
        timeout = self.config.rollout_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        ended: dict[str, Rollout] = {}
        rewards: dict[str, float] = {}
        shown = type(progress) is not ProgressReporter  # the silent reporter needs no rewards read
        pending = [r.rollout_id for r in rollouts]
        progress.start(phase, len(pending))
        try:
            while pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                for rollout in await store.wait_for_rollouts(pending, timeout=min(left or 1.0, 1.0)):
                    ended[rollout.rollout_id] = rollout
                    if shown and rollout.status is RolloutStatus.SUCCEEDED:
                        reward = await get_reward(store, rollout.rollout_id)
                        if reward is not None:
                            rewards[rollout.rollout_id] = reward
                pending = [r for r in pending if r not in ended]
                progress.rollouts(
                    done=len(ended),
                    succeeded=sum(r.status is RolloutStatus.SUCCEEDED for r in ended.values()),
                    failed=sum(r.status is RolloutStatus.FAILED for r in ended.values()),
                    rewards=list(rewards.values()),
                )
        finally:
            progress.finish()
        for rollout_id in pending:
            await store.cancel_rollout(rollout_id)
        return ended

    async def _collect(self, store: LightningStore, rollouts: list[Rollout], ended: dict[str, Rollout]) -> _Collected:
        """Triplets (via the adapter) of each rollout that succeeded, with a reason for each that gave none."""
        samples, rewards, no_triplets, succeeded, failed = [], [], [], 0, 0
        for index, rollout in enumerate(rollouts):
            rid = rollout.rollout_id
            group = index // self.config.group_size
            done = ended.get(rid)
            if done is None:
                no_triplets.append({"rollout_id": rid, "reason": "did not end within rollout_timeout; cancelled"})
                continue
            if done.status is not RolloutStatus.SUCCEEDED:
                failed += done.status is RolloutStatus.FAILED
                no_triplets.append({"rollout_id": rid, "reason": f"the rollout {done.status.value}"})
                continue
            succeeded += 1
            spans = (await store.query_spans(rid, "latest")).items
            triplets, reward, reason = self._adapt(spans)
            if reward is not None:
                rewards.append(reward)
            if not triplets:
                no_triplets.append({"rollout_id": rid, "reason": reason})
                continue
            versions = self._sampled_by(triplets, spans, rollout.metadata.get("policy_version"))
            samples.append(
                RolloutSample(rollout_id=rid, group=group, triplets=triplets, final_reward=reward, versions=versions)
            )
        return _Collected(samples=samples, rewards=rewards, succeeded=succeeded, failed=failed, no_triplets=no_triplets)

    def _sampled_by(self, triplets: list[Triplet], spans: Sequence[Any], enqueued: int | None) -> list[int | None]:
        """The policy version that sampled each triplet: the oldest of its LLM calls' (the resources version the
        proxy recorded on each call, as published by :meth:`_publish`); where the calls do not say, the version
        the rollout was enqueued under (never newer than the one that ran it)."""
        by_span = {span.span_id: span.attributes for span in spans}
        versions: list[int | None] = []
        for triplet in triplets:
            found = []
            for span_id in triplet.metadata.get("span_ids") or [triplet.span_id]:
                attributes = by_span.get(span_id) or {}
                key = (attributes.get(semconv.RESOURCES_ID), attributes.get(semconv.RESOURCES_VERSION))
                found.append(self._policy_versions.get(key))  # type: ignore[arg-type]
            known = [v for v in found if v is not None]
            versions.append(min(known) if known and len(known) == len(found) else enqueued)
        return versions

    def _adapt(self, spans: Sequence[Any]) -> tuple[list[Triplet], float | None, str]:
        """(triplets, final reward, why there are none) from one attempt's spans, whatever the adapter returns: a
        ``TripletResult`` (with its report) or a plain list of triplets."""
        assert self.adapter is not None
        result = self.adapter.adapt(spans)
        if isinstance(result, list):
            triplets, found = result, final_reward(spans)
            reward, why = (None if found is None else found.value), []
        else:
            triplets, reward = list(getattr(result, "triplets", ())), getattr(result, "final_reward", None)
            why = list(result.why()) if hasattr(result, "why") else []
        if not all(isinstance(t, Triplet) for t in triplets):
            raise TypeError(
                f"GRPO trains on triplets, but the adapter {type(self.adapter).__name__} gave "
                f"{type(triplets[0]).__name__}: use the 'triplets' adapter (agl_kernel.adapters.TripletAdapter)"
            )
        return triplets, reward, "; ".join(why[:2]) or "the adapter gave no triplets"

    async def _validate_at_step(
        self,
        store: LightningStore,
        policy: PolicyTrainer,
        dataset: Sequence[Any],
        recorder: MetricsRecorder,
        validations: list[dict[str, float]],
    ) -> None:
        """Validate the current policy: every validation task once (``mode=VAL``), its metrics appended to
        ``validations``. Asynchronous GRPO validates in the background, while the next steps sample and train (see
        :meth:`_background_validation_after`), the first policy's validation included: its rollouts run beside the
        first step's, which sample the same version. Otherwise the run waits for it."""
        background = self._background_validation_after(policy.step)
        if background:
            await self._settle_validation()  # one at a time: the one before holds the version it validates
        # Enqueued now, before the next step enqueues any rollouts of its own (see _rollouts_for).
        enqueued = await self._enqueue_validation(store, policy, dataset)
        if background:
            self._validating = asyncio.ensure_future(
                self._finish_validation(store, enqueued, recorder, into=validations)
            )
        else:
            validations.append(await self._finish_validation(store, enqueued, recorder))

    async def _enqueue_validation(
        self, store: LightningStore, policy: PolicyTrainer, dataset: Sequence[Any]
    ) -> _Validation:
        """Publish the current policy (if not yet) and enqueue one validation rollout per task on it."""
        started_wall = time.time()
        resources_id = await self._validation_resources(store, await self._publish(store, policy))
        requests = [
            EnqueueRequest(
                input=task,
                mode=RolloutMode.VAL,
                resources_id=resources_id,
                config=self.rollout_config,
                metadata={"grpo_validation": policy.step, "policy_version": policy.version},
            )
            for task in dataset
        ]
        rollouts = await store.enqueue_many_rollouts(requests)
        return _Validation(rollouts=rollouts, step=policy.step, started_wall=started_wall)

    async def _validation_resources(self, store: LightningStore, resources_id: str | None) -> str | None:
        """The resources validation rollouts pin: with ``val_temperature`` set (and other than ``temperature``), a
        copy of the published resources under ``<resources id>-val`` whose LLMs sample at that temperature (the
        same served weights); otherwise the published ones. A publisher that pins nothing (``None``) leaves the
        rollouts on the latest resources, so validation then samples as training does."""
        temperature = self.config.val_temperature
        if resources_id is None or temperature is None or temperature == self.config.temperature:
            return resources_id
        published = await store.get_resources(resources_id)
        resources = {
            name: msgspec.structs.replace(
                resource, sampling_parameters={**resource.sampling_parameters, "temperature": temperature}
            )
            if isinstance(resource, LLM)
            else resource
            for name, resource in published.resources.items()
        }
        return (await store.update_resources(f"{resources_id}-val", resources)).resources_id

    async def _finish_validation(
        self,
        store: LightningStore,
        validation: _Validation,
        recorder: MetricsRecorder,
        into: list[dict[str, float]] | None = None,
    ) -> dict[str, float]:
        """Wait for a validation's rollouts and record its metrics. ``into``: it runs in the background while
        training goes on (asynchronous GRPO; no progress display), its metrics appended to that list; no later
        version is published before it ends (see :meth:`_publish`), so every validation rollout samples the version
        validated."""
        rollouts = validation.rollouts
        phase = f"validation at step {validation.step}"
        ended = await self._wait(store, rollouts, phase, NoProgress() if into is not None else None)
        rewards = []
        for rollout in rollouts:
            if rollout.rollout_id in ended:
                found = final_reward((await store.query_spans(rollout.rollout_id, "latest")).items)
                if found is not None:
                    rewards.append(found.value)
        succeeded = sum(r.status is RolloutStatus.SUCCEEDED for r in ended.values())
        metrics = {
            "val_reward_mean": sum(rewards) / len(rewards) if rewards else 0.0,
            "val_rewarded": len(rewards) / len(rollouts),
            "val_succeeded": succeeded / len(rollouts),
            "val_rollouts": float(len(rollouts)),
            "val_finished": float(succeeded),
            "val_failed": float(sum(r.status is RolloutStatus.FAILED for r in ended.values())),
            "val_full_reward": float(count_full_rewards(rewards)),
            "run_time_s": time.perf_counter() - self._run_started,
        }
        await recorder.record(validation.step, metrics, validation=True, started=validation.started_wall)
        if into is not None:
            into.append(metrics)
        return metrics


def _staleness_metrics(kept: list[TrainingSample], dropped: list[TrainingSample], version: int) -> dict[str, float]:
    """How stale a step's triplets were: those dropped, and the mean and largest staleness of those kept."""
    staleness = [version - s.version for s in kept if s.version is not None]
    return {
        "stale_dropped": float(len(dropped)),
        "staleness_mean": sum(staleness) / len(staleness) if staleness else 0.0,
        "staleness_max": float(max(staleness, default=0)),
    }
