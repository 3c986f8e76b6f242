"""Documents ↔ kernel structs.

Fields the store filters or sorts on are document fields (enums as their string values, so the server sorts them
the way the contract does); values the store only keeps (inputs, metadata, span bodies, resources) are msgpack
blobs. Blobs keep every integer from -2**63 to 2**64-1 exactly (BSON stops at 2**63-1) and cost the server nothing
to store: it never looks inside.
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

Doc = Mapping[str, Any]

# ---------------------------------------------------------------------------------------------------- checks


def check_int64(value: Any, what: str) -> None:
    """Refuse an integer outside the signed 64-bit range where the store keeps (or compares with) a number."""
    if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
        shown = str(value) if value.bit_length() <= 128 else f"an integer of {value.bit_length()} bits"
        raise ValueError(
            f"{what} must lie in the signed 64-bit range -2**63 .. 2**63-1, not {shown}; nothing was written"
        )


# ---------------------------------------------------------------------------------------------------- blobs

_blobs = BlobCodec("the MongoDB store")
encode_any = _blobs.encode
encode_dict = _blobs.encode_dict
encode_resources = _blobs.encode_resources
encode_span = _blobs.encode_span


# ---------------------------------------------------------------------------------------------------- rollouts


def rollout_from_doc(doc: Doc) -> Rollout:
    mode = doc.get("mode")
    return Rollout(
        rollout_id=doc["_id"],
        input=decode_msgpack(doc["input"]),
        start_time=doc["start_time"],
        end_time=doc.get("end_time"),
        mode=None if mode is None else MODES[mode],
        resources_id=doc.get("resources_id"),
        status=ROLLOUT_STATUS[doc["status"]],
        config=decode_config(doc.get("config")),
        metadata=decode_dict(doc.get("metadata")),
        attempt_count=doc.get("attempt_count", 0),
    )


class RolloutState:
    """What the state machine needs of a rollout (duck-types ``Rollout`` for :mod:`agl_kernel.store.policy`)."""

    __slots__ = ("attempt_count", "config", "doc", "rollout_id", "status")

    def __init__(self, doc: Doc) -> None:
        self.doc = doc
        self.rollout_id: str = doc["_id"]
        self.status = ROLLOUT_STATUS[doc["status"]]
        self.config = decode_config(doc.get("config"))
        self.attempt_count: int = doc.get("attempt_count", 0)


# ---------------------------------------------------------------------------------------------------- attempts


class AttemptState:
    """An attempt document (duck-types ``Attempt`` for the policy functions); ``to_attempt()`` makes the struct."""

    __slots__ = (
        "attempt_id", "end_time", "last_heartbeat_time", "metadata_blob", "rollout_id", "sequence_id", "span_seq",
        "start_time", "status", "worker_id",
    )  # fmt: skip

    def __init__(self, doc: Doc) -> None:
        self.attempt_id: str = doc["_id"]
        self.rollout_id: str = doc["rollout_id"]
        self.sequence_id: int = doc["sequence_id"]
        self.status = ATTEMPT_STATUS[doc["status"]]
        self.start_time: float = doc["start_time"]
        self.end_time: float | None = doc.get("end_time")
        self.worker_id: str | None = doc.get("worker_id")
        self.last_heartbeat_time: float | None = doc.get("last_heartbeat_time")
        self.metadata_blob: bytes | None = doc.get("metadata")
        self.span_seq: int = doc.get("span_seq", 0)

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


def attempt_from_doc(doc: Doc) -> Attempt:
    return AttemptState(doc).to_attempt()


# ---------------------------------------------------------------------------------------------------- spans


def span_key(attempt_id: str, span_id: str) -> str:
    """A span's ``_id``: unique per attempt, so adding it twice stores it once."""
    return f"{attempt_id}/{span_id}"


def span_doc(span: Span, blob: bytes, attempt_sequence_id: int, sequence_id: int) -> dict[str, Any]:
    return {
        "_id": span_key(span.attempt_id, span.span_id),
        "rollout_id": span.rollout_id,
        "attempt_id": span.attempt_id,
        "attempt_seq": attempt_sequence_id,
        "sequence_id": sequence_id,
        "span_id": span.span_id,
        "name": span.name,
        "start_time": span.start_time,
        "end_time": span.end_time,
        "data": blob,
    }


def span_from_doc(doc: Doc) -> Span:
    return span_from_blob(
        doc["data"],
        rollout_id=doc["rollout_id"],
        attempt_id=doc["attempt_id"],
        sequence_id=doc["sequence_id"],
        span_id=doc["span_id"],
        name=doc["name"],
        start_time=doc.get("start_time"),
        end_time=doc.get("end_time"),
    )


# ---------------------------------------------------------------------------------------------------- others


def resources_from_doc(doc: Doc) -> ResourcesUpdate:
    return ResourcesUpdate(
        resources_id=doc["resources_id"],
        version=doc["version"],
        create_time=doc["create_time"],
        update_time=doc["update_time"],
        resources=decode_resources(doc["data"]),
    )


def worker_from_doc(doc: Doc) -> Worker:
    return Worker(
        worker_id=doc["_id"],
        status=WORKER_STATUS[doc.get("status", "idle")],
        heartbeat_stats=decode_dict(doc.get("heartbeat_stats")),
        last_heartbeat_time=doc.get("last_heartbeat_time"),
        last_dequeue_time=doc.get("last_dequeue_time"),
        last_busy_time=doc.get("last_busy_time"),
        last_idle_time=doc.get("last_idle_time"),
        current_rollout_id=doc.get("current_rollout_id"),
        current_attempt_id=doc.get("current_attempt_id"),
    )
