"""A skeleton algorithm: runs the training tasks for a number of epochs (then the validation tasks) through the
store, and reports each epoch's rewards.

An algorithm drives training: it puts rollouts into the store, waits (woken by the store, never polling) for
them to end, reads their spans back (``self.adapter`` turns them into training data), and publishes better
resources (``store.add_resources`` / ``update_resources``) that the next rollouts use. This one does everything
but learn: put your update where the comment in :meth:`TemplateAlgorithm.run` says.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import attrs
import msgspec

from agl_kernel import EnqueueRequest, LightningStore, RolloutConfig, RolloutMode
from agl_kernel.algorithm import Algorithm, RolloutOutcome, collect_outcomes

__all__ = ["EpochResult", "RolloutSettings", "TemplateAlgorithm", "TemplateAlgorithmOptions", "TemplateReport"]


@attrs.define(kw_only=True)
class RolloutSettings:
    """How the store supervises each rollout: a nested options table (``[algorithm.rollout]`` in a run file)."""

    timeout_seconds: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.gt(0))
    )
    """Seconds an attempt may run before the store times it out (unset: no limit)."""
    max_attempts: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    """Attempts per rollout, the first included: a failed, timed-out or unresponsive attempt is retried while some
    are left (3, as the store's default)."""


@attrs.define(kw_only=True)
class TemplateAlgorithmOptions:
    """Options of the template algorithm (``template`` in ``agl.algorithms``)."""

    epochs: int = attrs.field(default=1, validator=[attrs.validators.ge(1), attrs.validators.le(1000)])
    """How many times every training task is run."""
    rollout: RolloutSettings = attrs.field(factory=RolloutSettings)
    """How the store supervises each rollout."""


class EpochResult(msgspec.Struct, frozen=True, kw_only=True):
    epoch: int
    """1, 2, ...; 0 for the validation run."""
    by_status: dict[str, int]
    mean_reward: float | None
    samples: int | None = None
    """How many training samples the adapter made of the epoch's rollouts (``None`` without an adapter)."""


class TemplateReport(msgspec.Struct, frozen=True, kw_only=True):
    epochs: list[EpochResult]
    validation: EpochResult | None = None

    # What `agl train` prints: the last epoch's.
    @property
    def by_status(self) -> dict[str, int]:
        return self.epochs[-1].by_status

    @property
    def mean_reward(self) -> float | None:
        return self.epochs[-1].mean_reward


class TemplateAlgorithm(Algorithm):
    """Runs every training task `epochs` times, then the validation tasks once; reports each epoch's rewards.

    Registered as ``template`` in the ``agl.algorithms`` entry-point group. ``agl plugins show`` prints the first
    line of this docstring.
    """

    Options = TemplateAlgorithmOptions

    def __init__(self, *, epochs: int = 1, config: RolloutConfig | None = None) -> None:
        self.epochs = epochs
        self.config = config

    @classmethod
    def from_options(cls, options: TemplateAlgorithmOptions, **objects: Any) -> TemplateAlgorithm:
        """How the kernel makes it from validated options (``objects``: what the kernel passes besides; nothing
        for an algorithm). Turns the user-facing settings into what the store takes."""
        config = RolloutConfig(
            timeout_seconds=options.rollout.timeout_seconds, max_attempts=options.rollout.max_attempts
        )
        return cls(epochs=options.epochs, config=config, **objects)

    async def run(
        self, store: LightningStore, train_dataset: Sequence[Any], val_dataset: Sequence[Any] | None = None
    ) -> TemplateReport:
        epochs = []
        for epoch in range(1, self.epochs + 1):
            outcomes = await self._run_tasks(store, train_dataset, RolloutMode.TRAIN, f"epoch {epoch}")
            samples = await self._training_data(store, outcomes)
            # Learn here: from `samples` (or the spans themselves), make a better prompt or model and publish it
            # with `await store.add_resources({...})`; the next epoch's rollouts use the latest resources.
            epochs.append(_summary(epoch, outcomes, None if samples is None else len(samples)))
        validation = None
        if val_dataset:
            validation = _summary(0, await self._run_tasks(store, val_dataset, RolloutMode.VAL, "validation"), None)
        return TemplateReport(epochs=epochs, validation=validation)

    async def _run_tasks(
        self, store: LightningStore, tasks: Sequence[Any], mode: RolloutMode, label: str
    ) -> list[RolloutOutcome]:
        requests = [EnqueueRequest(input=task, mode=mode, config=self.config) for task in tasks]
        rollouts = await store.enqueue_many_rollouts(requests)
        ended = await collect_outcomes(
            store, [r.rollout_id for r in rollouts], progress=self.progress, label=f"template: {label}"
        )
        return [ended[r.rollout_id] for r in rollouts]

    async def _training_data(self, store: LightningStore, outcomes: list[RolloutOutcome]) -> list[Any] | None:
        """What the adapter (``--adapter``, or the one the trainer was given) makes of each rollout's spans."""
        if self.adapter is None:
            return None
        samples: list[Any] = []
        for outcome in outcomes:
            spans = (await store.query_spans(outcome.rollout_id, "latest")).items
            data = self.adapter.adapt(spans)
            samples.extend(data if isinstance(data, list) else [data])
        return samples


def _summary(epoch: int, outcomes: list[RolloutOutcome], samples: int | None) -> EpochResult:
    by_status: dict[str, int] = {}
    for outcome in outcomes:
        by_status[outcome.status] = by_status.get(outcome.status, 0) + 1
    rewards = [o.reward for o in outcomes if o.reward is not None]
    return EpochResult(
        epoch=epoch, by_status=by_status, mean_reward=statistics.fmean(rewards) if rewards else None, samples=samples
    )
