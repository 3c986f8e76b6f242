"""The algorithm interface, and the kernel's baseline algorithm (entry point ``baseline`` in ``agl.algorithms``)."""

from __future__ import annotations

import abc
import re
import statistics
import time
from collections.abc import Sequence
from typing import Any

import attrs
import msgspec

from agl_kernel.models import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_UNRESPONSIVE_SECONDS,
    EnqueueRequest,
    Rollout,
    RolloutConfig,
    RolloutMode,
    RolloutStatus,
)
from agl_kernel.progress import NoProgress, ProgressReporter
from agl_kernel.rewards import get_reward
from agl_kernel.store.base import LightningStore

__all__ = [
    "Algorithm",
    "Baseline",
    "BaselineReport",
    "FailureSummary",
    "RolloutFailure",
    "RolloutOutcome",
    "collect_outcomes",
    "failure_lines",
    "rollout_outcome",
    "summarize_failures",
]


class Algorithm(abc.ABC):
    """Drives training: puts work into the store, reads the results back, publishes better resources.

    The trainer sets ``adapter`` (spans → training data; ``None`` if the user chose none) and ``progress``
    (where to report rollouts as they end) before :meth:`run`.
    """

    adapter: Any | None = None
    progress: ProgressReporter = NoProgress()

    @abc.abstractmethod
    async def run(
        self, store: LightningStore, train_dataset: Sequence[Any], val_dataset: Sequence[Any] | None = None
    ) -> Any:
        """Train on ``train_dataset`` (validating on ``val_dataset``) through ``store``; returns a report."""


class RolloutOutcome(msgspec.Struct, frozen=True, kw_only=True):
    rollout_id: str
    input: Any
    status: str
    reward: float | None
    attempts: int


@attrs.define(kw_only=True)
class BaselineOptions:
    """Options of the baseline algorithm (``baseline``)."""

    timeout: float | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.gt(0)))
    """Seconds to wait for the rollouts to end; those still running then are reported as they are (default: wait)."""
    max_attempts: int = attrs.field(default=DEFAULT_MAX_ATTEMPTS, validator=attrs.validators.ge(1))
    """Attempts per rollout, the first included: a failed, timed-out or unresponsive attempt (its runner died or lost
    the store) is retried on the next free runner while attempts are left; 1 never retries."""
    unresponsive_seconds: float | None = attrs.field(
        default=DEFAULT_UNRESPONSIVE_SECONDS,
        # attrs' stubs type the validator by the default's type (float), not the field's (float | None)
        validator=attrs.validators.optional(attrs.validators.gt(0)),  # type: ignore[arg-type]
    )
    """Seconds without a heartbeat after which the store gives up on an attempt and retries it (the runner beats
    every 5 s); none turns the check off, and then a rollout whose runner died stays running."""
    timeout_seconds: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.gt(0))
    )
    """Seconds one attempt may run before it is stopped (and retried while attempts are left); default: no limit."""


class RolloutFailure(msgspec.Struct, frozen=True, kw_only=True):
    """Why one rollout failed: its last attempt's exception (from the runner's ``agl.exception`` span)."""

    rollout_id: str
    type: str | None = None
    """The exception's type (``TimeoutError`` for an attempt stopped by its timeout); ``None``: none recorded."""
    message: str = ""
    where: str | None = None
    """``file:line`` of the innermost frame, where the exception was raised."""


class FailureSummary(msgspec.Struct, frozen=True, kw_only=True):
    """The failed (and timed-out) rollouts of a run: how many, counted by exception type, and the first few."""

    count: int = 0
    by_type: dict[str, int] = msgspec.field(default_factory=dict)
    first: list[RolloutFailure] = msgspec.field(default_factory=list)


class BaselineReport(msgspec.Struct, frozen=True, kw_only=True):
    outcomes: list[RolloutOutcome]
    by_status: dict[str, int]
    mean_reward: float | None
    failures: FailureSummary = msgspec.field(default_factory=FailureSummary)
    """The failed rollouts, with their exceptions (``failure_lines`` words it as the CLI prints it)."""


_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+)', re.MULTILINE)
NO_EXCEPTION = "no exception recorded"


async def rollout_failure(store: LightningStore, rollout_id: str) -> RolloutFailure:
    """The exception that ended ``rollout_id``'s latest attempt, read from its ``agl.exception`` span."""
    from agl_kernel import semconv

    try:
        spans = (await store.query_spans(rollout_id, "latest", name=semconv.EXCEPTION_SPAN)).items
    except Exception:
        spans = []
    if not spans:
        return RolloutFailure(rollout_id=rollout_id)
    attributes = spans[-1].attributes or {}
    frames = _FRAME.findall(str(attributes.get(semconv.EXCEPTION_STACKTRACE) or ""))
    return RolloutFailure(
        rollout_id=rollout_id,
        type=str(attributes.get(semconv.EXCEPTION_TYPE) or "") or None,
        message=str(attributes.get(semconv.EXCEPTION_MESSAGE) or ""),
        where=_where(frames),
    )


def _where(frames: list[tuple[str, str]]) -> str | None:
    """``file:line`` of the innermost frame in the user's own code (not the standard library, an installed
    package, agl or one of its plugins, wherever they are installed), else of the innermost frame."""
    import os
    import sys
    import sysconfig

    roots = {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"]}
    # A copy, as the standard library takes one (inspect.getmodule): another thread, or a finalizer the garbage
    # collector runs meanwhile, may import a module while this loop walks them (seen under Ray's actor threads).
    for name, module in sys.modules.copy().items():  # agl's packages, editable installs included
        if "." not in name and name.startswith("agl_") and getattr(module, "__file__", None):
            roots.add(os.path.dirname(module.__file__ or ""))
    skip = tuple(os.path.join(os.path.realpath(root), "") for root in roots if root)
    for filename, line in reversed(frames):
        path = os.path.realpath(filename)
        if not path.startswith(skip) and "site-packages" not in path and not filename.startswith("<"):
            return f"{filename}:{line}"
    return f"{frames[-1][0]}:{frames[-1][1]}" if frames else None


async def summarize_failures(
    store: LightningStore, outcomes: Sequence[RolloutOutcome], *, first: int = 3
) -> FailureSummary:
    """Count the failed rollouts among ``outcomes`` by exception type; keep the first ``first`` in full."""
    failed = [o.rollout_id for o in outcomes if o.status == RolloutStatus.FAILED.value]
    by_type: dict[str, int] = {}
    kept: list[RolloutFailure] = []
    for rollout_id in failed:
        failure = await rollout_failure(store, rollout_id)
        key = failure.type or NO_EXCEPTION
        by_type[key] = by_type.get(key, 0) + 1
        if len(kept) < first:
            kept.append(failure)
    return FailureSummary(count=len(failed), by_type=by_type, first=kept)


def failure_lines(summary: FailureSummary) -> list[str]:
    """The failure summary as plain lines (empty when nothing failed)."""
    if not summary.count:
        return []
    counts = ", ".join(f"{name} x{n}" for name, n in sorted(summary.by_type.items(), key=lambda kv: -kv[1]))
    lines = [f"{summary.count} rollout(s) failed: {counts}"]
    for failure in summary.first:
        what = f"{failure.type}: {failure.message}" if failure.type else NO_EXCEPTION
        lines.append(f"  {failure.rollout_id}  {what}" + (f"  (at {failure.where})" if failure.where else ""))
    if summary.count > len(summary.first):
        lines.append(f"  ... and {summary.count - len(summary.first)} more")
    return lines


class Baseline(Algorithm):
    """Runs every task once and reports rewards: for debugging an agent through the whole loop.

    Its rollouts are supervised as ``max_attempts``, ``unresponsive_seconds`` and ``timeout_seconds`` say (the
    store's defaults: 3 attempts, 30 s without a heartbeat); ``config``, a whole
    :class:`~agl_kernel.models.RolloutConfig`, replaces all three.
    """

    Options = BaselineOptions

    def __init__(
        self,
        *,
        config: RolloutConfig | None = None,
        timeout: float | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        unresponsive_seconds: float | None = DEFAULT_UNRESPONSIVE_SECONDS,
        timeout_seconds: float | None = None,
    ) -> None:
        if config is None:
            config = RolloutConfig(
                max_attempts=max_attempts, unresponsive_seconds=unresponsive_seconds, timeout_seconds=timeout_seconds
            )
        self.config = config
        self.timeout = timeout

    async def run(
        self, store: LightningStore, train_dataset: Sequence[Any], val_dataset: Sequence[Any] | None = None
    ) -> BaselineReport:
        requests = [EnqueueRequest(input=task, mode=RolloutMode.TRAIN, config=self.config) for task in train_dataset]
        requests += [EnqueueRequest(input=task, mode=RolloutMode.VAL, config=self.config) for task in val_dataset or ()]
        rollouts = await store.enqueue_many_rollouts(requests)
        ended = await collect_outcomes(
            store, [r.rollout_id for r in rollouts], timeout=self.timeout, progress=self.progress, label="baseline"
        )
        outcomes = [
            ended.get(r.rollout_id) or await rollout_outcome(store, await store.get_rollout(r.rollout_id))
            for r in rollouts
        ]
        by_status: dict[str, int] = {}
        for outcome in outcomes:
            by_status[outcome.status] = by_status.get(outcome.status, 0) + 1
        rewards = [o.reward for o in outcomes if o.reward is not None]
        return BaselineReport(
            outcomes=outcomes,
            by_status=by_status,
            mean_reward=statistics.fmean(rewards) if rewards else None,
            failures=await summarize_failures(store, outcomes),
        )


async def rollout_outcome(store: LightningStore, rollout: Rollout) -> RolloutOutcome:
    """A rollout's status, reward (``None`` when it recorded none) and attempt count; the reward is read from the
    store."""
    return RolloutOutcome(
        rollout_id=rollout.rollout_id,
        input=rollout.input,
        status=rollout.status.value,
        reward=await get_reward(store, rollout.rollout_id) if rollout.attempt_count else None,
        attempts=rollout.attempt_count,
    )


async def collect_outcomes(
    store: LightningStore,
    rollout_ids: Sequence[str],
    *,
    timeout: float | None = None,
    progress: ProgressReporter | None = None,
    label: str = "rollouts",
) -> dict[str, RolloutOutcome]:
    """Wait (woken by the store) until every rollout ends or ``timeout`` passes, reporting to ``progress`` on the
    way; the outcomes of the rollouts that ended, by rollout id (those still running at the timeout are absent)."""
    progress = progress or NoProgress()
    deadline = None if timeout is None else time.monotonic() + timeout
    ended: dict[str, RolloutOutcome] = {}
    pending = list(rollout_ids)
    with progress:
        progress.start(label, len(pending))
        while pending:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            # A window of the oldest pending rollouts: each wake-up of the store re-reads only these, not all.
            window = pending[:64]
            for rollout in await store.wait_for_rollouts(window, timeout=min(left or 0.5, 0.5)):
                ended[rollout.rollout_id] = await rollout_outcome(store, rollout)
            if any(r in ended for r in window):
                pending = [r for r in pending if r not in ended]
            succeeded = sum(o.status == RolloutStatus.SUCCEEDED.value for o in ended.values())
            rewards = [o.reward for o in ended.values() if o.reward is not None]
            failed = sum(o.status == RolloutStatus.FAILED.value for o in ended.values())
            progress.rollouts(done=len(ended), succeeded=succeeded, rewards=rewards, failed=failed)
    return ended
