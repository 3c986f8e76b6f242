"""Rows ↔ kernel structs. Indexed fields live in columns; the rest is msgpack (defaults left out, to stay small).

Enums are stored as their string values, so SQL sorts them the way the contract does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from msgspec import NODEFAULT

from agl_kernel.models import (
    Attempt,
    AttemptStatus,
    Resource,
    ResourcesUpdate,
    Rollout,
    RolloutConfig,
    RolloutMode,
    RolloutStatus,
    Span,
    Worker,
    WorkerStatus,
    decode_msgpack,
    encode_msgpack,
)

DEFAULT_CONFIG = RolloutConfig()

ROLLOUT_STATUS = {s.value: s for s in RolloutStatus}
ATTEMPT_STATUS = {s.value: s for s in AttemptStatus}
WORKER_STATUS = {s.value: s for s in WorkerStatus}
MODES = {m.value: m for m in RolloutMode}

# ---------------------------------------------------------------------------------------------------- blobs


def encode_any(value: Any, what: str) -> bytes:
    try:
        return encode_msgpack(value)
    except OverflowError as exc:  # a ValueError, as a store's refused arguments are (a server answers 400)
        raise ValueError(
            f"the SQLite store cannot serialize the {what}: it holds an integer outside -2**63 .. 2**64-1 ({exc}). "
            "Store such numbers as strings (or floats); nothing was written"
        ) from exc
    except (TypeError, msgspec.EncodeError) as exc:
        raise TypeError(f"the SQLite store cannot serialize the {what}: {exc}. Use JSON-like values") from exc


def encode_dict(value: dict[str, Any] | None, what: str) -> bytes | None:
    """``None`` (stored as NULL) for an empty dict."""
    return encode_any(value, what) if value else None


def decode_dict(blob: bytes | None) -> dict[str, Any]:
    return {} if blob is None else decode_msgpack(blob)


_configs: dict[bytes, RolloutConfig] = {}


def encode_config(config: RolloutConfig | None) -> bytes | None:
    if config is None or config == DEFAULT_CONFIG:
        return None
    return encode_msgpack(config)


def decode_config(blob: bytes | None) -> RolloutConfig:
    if blob is None:
        return DEFAULT_CONFIG
    config = _configs.get(blob)
    if config is None:  # configs repeat a lot (one per experiment): decode each once
        config = decode_msgpack(blob, type=RolloutConfig)
        if len(_configs) > 1024:
            _configs.clear()
        _configs[blob] = config
    return config


_RESOURCES_TYPE = dict[str, Resource]


def encode_resources(resources: dict[str, Resource]) -> bytes:
    return encode_any(dict(resources), "resources")


def decode_resources(blob: bytes) -> dict[str, Resource]:
    return decode_msgpack(blob, type=_RESOURCES_TYPE)


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

_SPAN_COLUMN_FIELDS = {"rollout_id", "attempt_id", "sequence_id", "span_id", "name", "start_time", "end_time"}


def _default(field: Any) -> Any:
    if field.default is not NODEFAULT:
        return field.default
    if field.default_factory is not NODEFAULT:
        return field.default_factory()
    return NODEFAULT  # required: always stored


# The Span fields kept in the blob, with the default each may be left out for. Computed from the kernel's
# struct, so fields the kernel adds later (always at the end, with defaults) are stored too.
_SPAN_BLOB_FIELDS = [(f.name, _default(f)) for f in msgspec.structs.fields(Span) if f.name not in _SPAN_COLUMN_FIELDS]

SPAN_COLUMNS = "s.sequence_id, s.span_id, s.name, s.start_time, s.end_time, s.data"


def encode_span(span: Span) -> bytes:
    rest = {}
    for name, default in _SPAN_BLOB_FIELDS:
        value = getattr(span, name)
        if default is NODEFAULT or value != default:
            rest[name] = value
    return encode_any(rest, f"span {span.span_id}")


def span_from_row(rollout_id: str, attempt_id: str, row: Sequence[Any]) -> Span:
    """``row`` holds ``SPAN_COLUMNS``."""
    fields = decode_msgpack(row[5])
    fields["rollout_id"] = rollout_id
    fields["attempt_id"] = attempt_id
    fields["sequence_id"] = row[0]
    fields["span_id"] = row[1]
    fields["name"] = row[2]
    fields["start_time"] = row[3]
    fields["end_time"] = row[4]
    return msgspec.convert(fields, type=Span)


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
