"""The store state machine, written once for every backend (public: backend plugins use it)."""

from __future__ import annotations

import uuid

from agl_kernel.errors import InvalidStatusTransitionError
from agl_kernel.models import Attempt, AttemptStatus, Rollout, RolloutConfig, RolloutStatus, WorkerStatus

QUEUED_STATUSES = frozenset({RolloutStatus.QUEUING, RolloutStatus.REQUEUING})
RETRYABLE_STATUSES = frozenset({AttemptStatus.FAILED, AttemptStatus.TIMEOUT, AttemptStatus.UNRESPONSIVE})


def new_rollout_id() -> str:
    return "ro-" + uuid.uuid4().hex[:16]


def new_attempt_id() -> str:
    return "at-" + uuid.uuid4().hex[:16]


def new_resources_id() -> str:
    return "rs-" + uuid.uuid4().hex[:16]


def rollout_status_after_attempt(rollout: Rollout, attempt: Attempt, status: AttemptStatus) -> RolloutStatus | None:
    """The status a rollout takes when its newest attempt moves to ``status``; ``None`` = leave it.

    A terminal rollout never follows its attempts, with one exception: a rollout that failed because this attempt
    was unresponsive comes back to ``running`` when the attempt shows life again.
    """
    if rollout.status.is_terminal:
        revived = (
            rollout.status is RolloutStatus.FAILED
            and attempt.status is AttemptStatus.UNRESPONSIVE
            and status is AttemptStatus.RUNNING
        )
        return RolloutStatus.RUNNING if revived else None
    if status is AttemptStatus.PREPARING:
        return RolloutStatus.PREPARING if rollout.status is not RolloutStatus.RUNNING else None
    if status is AttemptStatus.RUNNING:
        return RolloutStatus.RUNNING
    if status is AttemptStatus.SUCCEEDED:
        return RolloutStatus.SUCCEEDED
    return (
        RolloutStatus.REQUEUING if should_retry(rollout.config, attempt.sequence_id, status) else RolloutStatus.FAILED
    )


def worker_status_after_attempt(previous: AttemptStatus, status: AttemptStatus) -> WorkerStatus | None:
    """The status the worker running an attempt takes when the attempt moves from ``previous`` to ``status``;
    ``None`` = leave it. A final attempt frees its worker (``idle``: the backend also clears its current rollout
    and attempt), an unresponsive one makes it ``unresponsive``, and a revived one (a late heartbeat) makes it
    ``busy`` again. Backends apply it only while the worker is still on that attempt."""
    if status.is_final:
        return WorkerStatus.IDLE
    if status is AttemptStatus.UNRESPONSIVE:
        return WorkerStatus.UNRESPONSIVE
    if previous is AttemptStatus.UNRESPONSIVE:
        return WorkerStatus.BUSY
    return None


def should_retry(config: RolloutConfig, attempt_sequence_id: int, status: AttemptStatus) -> bool:
    return (
        status in RETRYABLE_STATUSES and status in config.retry_condition and attempt_sequence_id < config.max_attempts
    )


def check_attempt_transition(attempt: Attempt, status: AttemptStatus) -> bool:
    """Whether moving ``attempt`` to ``status`` changes anything; raises for a move out of a final status."""
    if attempt.status is status:
        return False
    if attempt.status.is_final:
        raise InvalidStatusTransitionError(
            f"attempt {attempt.attempt_id} of rollout {attempt.rollout_id} is already {attempt.status.value}, "
            f"which is final; it cannot become {status.value}. Start a new attempt instead."
        )
    return True


def check_rollout_transition(rollout: Rollout, status: RolloutStatus) -> bool:
    """Whether moving ``rollout`` to ``status`` changes anything; raises for a move the state machine forbids."""
    if rollout.status is status:
        return False
    if rollout.status.is_terminal and status not in QUEUED_STATUSES:
        raise InvalidStatusTransitionError(
            f"rollout {rollout.rollout_id} has ended ({rollout.status.value}); it can only be queued again "
            f"(status 'queuing' or 'requeuing'), not moved to {status.value}"
        )
    return True


def deadline_status(attempt: Attempt, config: RolloutConfig, now: float) -> AttemptStatus | None:
    """What the watchdog makes of ``attempt`` at ``now``: ``timeout``, ``unresponsive`` or ``None`` (leave it)."""
    if attempt.status.is_final:
        return None
    if config.timeout_seconds is not None and now - attempt.start_time >= config.timeout_seconds:
        return AttemptStatus.TIMEOUT
    if attempt.status is AttemptStatus.UNRESPONSIVE or config.unresponsive_seconds is None:
        return None
    last_sign_of_life = attempt.last_heartbeat_time or attempt.start_time
    if now - last_sign_of_life >= config.unresponsive_seconds:
        return AttemptStatus.UNRESPONSIVE
    return None


def is_supervised(config: RolloutConfig) -> bool:
    """Whether the watchdog needs to look at attempts of rollouts with this config at all."""
    return config.timeout_seconds is not None or config.unresponsive_seconds is not None
