"""Rows ↔ kernel structs.

What the store filters or sorts on is a column (enums as their string values, text in the "C" collation, so the
server sorts them the way the contract does); values the store only keeps (inputs, metadata, span bodies,
resources) are msgpack blobs in ``bytea`` columns, made by the kernel's :mod:`agl_kernel.store.blobs`: they keep
every integer from -2**63 to 2**64-1 exactly and cost the server nothing to store.
"""

from __future__ import annotations

from collections.abc import Mapping
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

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

Row = Mapping[str, Any]


def check_int64(value: Any, what: str) -> None:
    """Refuse an integer outside the signed 64-bit range where the store keeps (or compares with) a number."""
    if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
        shown = str(value) if value.bit_length() <= 128 else f"an integer of {value.bit_length()} bits"
        raise ValueError(
            f"{what} must lie in the signed 64-bit range -2**63 .. 2**63-1, not {shown}; nothing was written"
        )


_blobs = BlobCodec("the PostgreSQL store")
encode_any = _blobs.encode
encode_dict = _blobs.encode_dict
encode_resources = _blobs.encode_resources
encode_span = _blobs.encode_span


def _bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


def rollout_from_row(row: Row) -> Rollout:
    mode = row["mode"]
    return Rollout(
        rollout_id=row["rollout_id"],
        input=decode_msgpack(bytes(row["input"])),
        start_time=row["start_time"],
        end_time=row["end_time"],
        mode=None if mode is None else MODES[mode],
        resources_id=row["resources_id"],
        status=ROLLOUT_STATUS[row["status"]],
        config=decode_config(_bytes(row["config"])),
        metadata=decode_dict(_bytes(row["metadata"])),
        attempt_count=row["attempt_count"],
    )


class RolloutState:
    """What the state machine needs of a rollout (duck-types ``Rollout`` for :mod:`agl_kernel.store.policy`)."""

    __slots__ = ("attempt_count", "config", "rollout_id", "status")

    def __init__(self, row: Row) -> None:
        self.rollout_id: str = row["rollout_id"]
        self.status = ROLLOUT_STATUS[row["status"]]
        self.config = decode_config(_bytes(row["config"]))
        self.attempt_count: int = row["attempt_count"]


class AttemptState:
    """An attempt row (duck-types ``Attempt`` for the policy functions); ``to_attempt()`` makes the struct."""

    __slots__ = (
        "attempt_id", "end_time", "last_heartbeat_time", "metadata_blob", "rollout_id", "sequence_id", "span_seq",
        "start_time", "status", "worker_id",
    )  # fmt: skip

    def __init__(self, row: Row) -> None:
        self.attempt_id: str = row["attempt_id"]
        self.rollout_id: str = row["rollout_id"]
        self.sequence_id: int = row["sequence_id"]
        self.status = ATTEMPT_STATUS[row["status"]]
        self.start_time: float = row["start_time"]
        self.end_time: float | None = row["end_time"]
        self.worker_id: str | None = row["worker_id"]
        self.last_heartbeat_time: float | None = row["last_heartbeat_time"]
        self.metadata_blob: bytes | None = _bytes(row["metadata"])
        self.span_seq: int = row["span_seq"]

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


def attempt_from_row(row: Row) -> Attempt:
    return AttemptState(row).to_attempt()


SPAN_COLUMNS = "rollout_id, attempt_id, attempt_seq, sequence_id, span_id, name, start_time, end_time, data"


def span_row(span: Span, blob: bytes, attempt_sequence_id: int, sequence_id: int) -> tuple[Any, ...]:
    """The values of :data:`SPAN_COLUMNS`, in that order."""
    return (
        span.rollout_id, span.attempt_id, attempt_sequence_id, sequence_id, span.span_id, span.name, span.start_time,
        span.end_time, blob,
    )  # fmt: skip


def span_from_row(row: Row) -> Span:
    return span_from_blob(
        bytes(row["data"]),
        rollout_id=row["rollout_id"],
        attempt_id=row["attempt_id"],
        sequence_id=row["sequence_id"],
        span_id=row["span_id"],
        name=row["name"],
        start_time=row["start_time"],
        end_time=row["end_time"],
    )


def resources_from_row(row: Row) -> ResourcesUpdate:
    return ResourcesUpdate(
        resources_id=row["resources_id"],
        version=row["version"],
        create_time=row["create_time"],
        update_time=row["update_time"],
        resources=decode_resources(bytes(row["data"])),
    )


def worker_from_row(row: Row) -> Worker:
    return Worker(
        worker_id=row["worker_id"],
        status=WORKER_STATUS[row["status"]],
        heartbeat_stats=decode_dict(_bytes(row["heartbeat_stats"])),
        last_heartbeat_time=row["last_heartbeat_time"],
        last_dequeue_time=row["last_dequeue_time"],
        last_busy_time=row["last_busy_time"],
        last_idle_time=row["last_idle_time"],
        current_rollout_id=row["current_rollout_id"],
        current_attempt_id=row["current_attempt_id"],
    )
