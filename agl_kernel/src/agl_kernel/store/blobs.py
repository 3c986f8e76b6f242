"""Compact blobs for backends that keep the kernel's structs in rows or documents (public: store plugins use it).

A backend keeps what it queries on (ids, statuses, times) in its own columns or fields and the rest of a struct in
a msgpack blob made here, so every backend stores the same bytes and refuses the same values with the same words:

- :class:`BlobCodec` encodes; its errors name the store (``BlobCodec("the SQLite store")``): an integer msgpack
  cannot hold is a ``ValueError``, a value that is not JSON-like a ``TypeError``, both saying nothing was written.
- ``decode_*`` read blobs back; a rollout's config is decoded once per distinct blob (configs repeat a lot).
- A span's blob holds its fields but :data:`SPAN_INDEXED_FIELDS` (which the backend keeps beside it), each left out
  while it has its default; :func:`span_from_blob` joins the two again.
- :func:`with_attempt` makes the ``AttemptedRollout`` a dequeue or ``start_rollout`` returns.
- ``ROLLOUT_STATUS``, ``ATTEMPT_STATUS``, ``WORKER_STATUS``, ``MODES``: the stored strings back to the enums.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import NODEFAULT

from agl_kernel.models import (
    Attempt,
    AttemptedRollout,
    AttemptStatus,
    Resource,
    Rollout,
    RolloutConfig,
    RolloutMode,
    RolloutStatus,
    Span,
    WorkerStatus,
    decode_msgpack,
    encode_msgpack,
)

__all__ = [
    "ATTEMPT_STATUS",
    "DEFAULT_CONFIG",
    "MODES",
    "ROLLOUT_STATUS",
    "SPAN_INDEXED_FIELDS",
    "WORKER_STATUS",
    "BlobCodec",
    "decode_config",
    "decode_dict",
    "decode_resources",
    "encode_config",
    "span_from_blob",
    "with_attempt",
]

DEFAULT_CONFIG = RolloutConfig()
"""The config of a rollout given none; stored as no blob at all."""

ROLLOUT_STATUS = {s.value: s for s in RolloutStatus}
ATTEMPT_STATUS = {s.value: s for s in AttemptStatus}
WORKER_STATUS = {s.value: s for s in WorkerStatus}
MODES = {m.value: m for m in RolloutMode}

SPAN_INDEXED_FIELDS = ("rollout_id", "attempt_id", "sequence_id", "span_id", "name", "start_time", "end_time")
"""The span fields a backend keeps in its own columns (to query and sort on), not in the span's blob."""


def _default(field: Any) -> Any:
    if field.default is not NODEFAULT:
        return field.default
    if field.default_factory is not NODEFAULT:
        return field.default_factory()
    return NODEFAULT  # required: always stored


# The span fields kept in the blob, with the default each may be left out for. Computed from the kernel's struct,
# so fields the kernel adds later (always at the end, with defaults) are stored too.
_SPAN_BLOB_FIELDS = [(f.name, _default(f)) for f in msgspec.structs.fields(Span) if f.name not in SPAN_INDEXED_FIELDS]


class BlobCodec:
    """Encodes values into blobs; ``store`` names the backend in its errors (e.g. ``"the SQLite store"``)."""

    def __init__(self, store: str) -> None:
        self.store = store

    def encode(self, value: Any, what: str) -> bytes:
        """``value`` as msgpack; ``what`` (e.g. ``"input of the rollout"``) says which value in an error."""
        try:
            return encode_msgpack(value)
        except OverflowError as exc:  # a ValueError, as a store's refused arguments are (a server answers 400)
            raise ValueError(
                f"{self.store} cannot keep the {what}: it holds an integer outside -2**63 .. 2**64-1 ({exc}). "
                "Store such numbers as strings (or floats); nothing was written"
            ) from exc
        except (TypeError, msgspec.EncodeError) as exc:
            raise TypeError(f"{self.store} cannot serialize the {what}: {exc}. Use JSON-like values") from exc

    def encode_dict(self, value: dict[str, Any] | None, what: str) -> bytes | None:
        """``None`` (no blob) for an empty dict."""
        return self.encode(value, what) if value else None

    def encode_resources(self, resources: dict[str, Resource]) -> bytes:
        return self.encode(dict(resources), "resources")

    def encode_span(self, span: Span) -> bytes:
        """The span's fields but :data:`SPAN_INDEXED_FIELDS`, each left out while it has its default."""
        rest = {}
        for name, default in _SPAN_BLOB_FIELDS:
            value = getattr(span, name)
            if default is NODEFAULT or value != default:
                rest[name] = value
        return self.encode(rest, f"span {span.span_id}")


def decode_dict(blob: bytes | None) -> dict[str, Any]:
    if blob is None:
        return {}
    value: dict[str, Any] = decode_msgpack(blob)
    return value


_configs: dict[bytes, RolloutConfig] = {}


def encode_config(config: RolloutConfig | None) -> bytes | None:
    """``None`` (no blob) for no config or the default one; a config holds no user values, so it always encodes."""
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


def decode_resources(blob: bytes) -> dict[str, Resource]:
    resources: dict[str, Resource] = decode_msgpack(blob, type=_RESOURCES_TYPE)
    return resources


def span_from_blob(
    blob: bytes,
    *,
    rollout_id: str,
    attempt_id: str,
    sequence_id: int,
    span_id: str,
    name: str,
    start_time: float | None,
    end_time: float | None,
) -> Span:
    """The span a blob of :meth:`BlobCodec.encode_span` and the backend's indexed fields make together."""
    fields = decode_msgpack(blob)
    fields["rollout_id"] = rollout_id
    fields["attempt_id"] = attempt_id
    fields["sequence_id"] = sequence_id
    fields["span_id"] = span_id
    fields["name"] = name
    fields["start_time"] = start_time
    fields["end_time"] = end_time
    span: Span = msgspec.convert(fields, type=Span)
    return span


def with_attempt(rollout: Rollout, attempt: Attempt, **changes: Any) -> AttemptedRollout:
    """``rollout`` with the attempt a worker should now run; ``changes`` replace fields (the status and attempt
    count the new attempt gave the rollout, when ``rollout`` was read before it started)."""
    fields = msgspec.structs.asdict(rollout)
    fields.update(changes)
    return AttemptedRollout(**fields, attempt=attempt)
