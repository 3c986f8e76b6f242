"""Rows ↔ kernel structs. Indexed fields live in columns; the rest is msgpack (defaults left out, to stay small).

Enums are stored as their string values, so SQL sorts them the way the contract does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agl_kernel.models import Attempt, ResourcesUpdate, Rollout, Span, Worker, decode_msgpack
from agl_kernel.store.blobs import (
    ATTEMPT_STATUS,
    MODES,
    ROLLOUT_STATUS,
    WORKER_STATUS,
    BlobCodec,
    decode_config,
    decode_dict,
    decode_resources,
    span_from_blob,
)

_blobs = BlobCodec("the SQLite store")
encode_any = _blobs.encode
encode_dict = _blobs.encode_dict
encode_resources = _blobs.encode_resources
encode_span = _blobs.encode_span

# ---------------------------------------------------------------------------------------------------- rollouts

ROLLOUT_COLUMNS = (
    "rid, rollout_id, status, mode, start_time, end_time, attempt_count, resources_id, config, input, metadata"
)


def rollout_from_row(row: Sequence[Any]) -> Rollout:
    """A row of ``ROLLOUT_COLUMNS``."""
    return Rollout(
        rollout_id=row[1],
        input=decode_msgpack(row[9]),
        start_time=row[4],
        end_time=row[5],
        mode=None if row[3] is None else MODES[row[3]],
        resources_id=row[7],
        status=ROLLOUT_STATUS[row[2]],
        config=decode_config(row[8]),
        metadata=decode_dict(row[10]),
        attempt_count=row[6],
    )


class RolloutState:
    """What the state machine needs of a rollout (duck-types ``Rollout`` for :mod:`agl_kernel.store.policy`)."""

    __slots__ = ("attempt_count", "config", "rid", "rollout_id", "status")

    def __init__(self, rid: int, rollout_id: str, status: str, config: bytes | None, attempt_count: int) -> None:
        self.rid = rid
        self.rollout_id = rollout_id
        self.status = ROLLOUT_STATUS[status]
        self.config = decode_config(config)
        self.attempt_count = attempt_count


# ---------------------------------------------------------------------------------------------------- attempts

ATTEMPT_COLUMNS = (
    "a.aid, a.attempt_id, a.sequence_id, a.status, a.start_time, a.end_time, a.worker_id, "
    "a.last_heartbeat_time, a.metadata, a.span_seq"
)


class AttemptState:
    """An attempt row (duck-types ``Attempt`` for the policy functions); ``to_attempt()`` makes the struct."""

    __slots__ = (
        "aid",
        "attempt_id",
        "end_time",
        "last_heartbeat_time",
        "metadata_blob",
        "rollout_id",
        "sequence_id",
        "span_seq",
        "start_time",
        "status",
        "worker_id",
    )

    def __init__(self, rollout_id: str, row: Sequence[Any]) -> None:
        """``row`` holds ``ATTEMPT_COLUMNS``."""
        self.rollout_id = rollout_id
        (
            self.aid,
            self.attempt_id,
            self.sequence_id,
            status,
            self.start_time,
            self.end_time,
            self.worker_id,
            self.last_heartbeat_time,
            self.metadata_blob,
            self.span_seq,
        ) = row[:10]
        self.status = ATTEMPT_STATUS[status]

    def to_attempt(self) -> Attempt:
        return Attempt(
            rollout_id=self.rollout_id,
            attempt_id=self.attempt_id,
            sequence_id=self.sequence_id,
            start_time=self.start_time,
            end_time=self.end_time,
            status=self.status,
            worker_id=self.worker_id,
            last_heartbeat_time=self.last_heartbeat_time,
            metadata=decode_dict(self.metadata_blob),
        )


# ---------------------------------------------------------------------------------------------------- spans

SPAN_COLUMNS = "s.sequence_id, s.span_id, s.name, s.start_time, s.end_time, s.data"


def span_from_row(rollout_id: str, attempt_id: str, row: Sequence[Any]) -> Span:
    """``row`` holds ``SPAN_COLUMNS``."""
    return span_from_blob(
        row[5],
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        sequence_id=row[0],
        span_id=row[1],
        name=row[2],
        start_time=row[3],
        end_time=row[4],
    )


# ---------------------------------------------------------------------------------------------------- others

RESOURCES_COLUMNS = "resources_id, version, create_time, update_time, data"


def resources_from_row(row: Sequence[Any]) -> ResourcesUpdate:
    return ResourcesUpdate(
        resources_id=row[0], version=row[1], create_time=row[2], update_time=row[3], resources=decode_resources(row[4])
    )


WORKER_COLUMNS = (
    "worker_id, status, heartbeat_stats, last_heartbeat_time, last_dequeue_time, last_busy_time, last_idle_time, "
    "current_rollout_id, current_attempt_id"
)


def worker_from_row(row: Sequence[Any]) -> Worker:
    return Worker(
        worker_id=row[0],
        status=WORKER_STATUS[row[1]],
        heartbeat_stats=decode_dict(row[2]),
        last_heartbeat_time=row[3],
        last_dequeue_time=row[4],
        last_busy_time=row[5],
        last_idle_time=row[6],
        current_rollout_id=row[7],
        current_attempt_id=row[8],
    )
