"""OTLP/HTTP trace ingestion (``POST /v1/traces``): protobuf or JSON, optionally gzip-compressed.

Each OTLP span becomes a kernel :class:`~agl_kernel.models.Span`. Where it belongs comes from the attributes
``agl.rollout_id``, ``agl.attempt_id`` and (optional) ``agl.sequence_id`` (:mod:`agl_kernel.semconv`), taken from
the span's own attributes first and then from its resource's. A request is stored whole or not at all: one span
without the ids rejects it with a 400 that names the span and the missing attribute.

Numbers keep OTLP's ranges, the same whatever store is behind the server: an ``intValue`` is a signed 64-bit
integer, a time in nanoseconds an unsigned one, and ``agl.sequence_id`` a non-negative signed 64-bit integer; a
value outside its range refuses the request with a 400 that names it (nothing is stored).

Success answers with an (empty) ``ExportTraceServiceResponse`` in the request's encoding; failures answer with a
``google.rpc.Status``-shaped body (protobuf for protobuf requests, JSON otherwise) carrying the message.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgspec

from agl_kernel import semconv
from agl_kernel.errors import AglError
from agl_kernel.models import Span, SpanEvent, SpanLink, SpanStatus

__all__ = ["OtlpError", "decode_request", "decompress", "encode_error", "encode_success"]

_KINDS = ("INTERNAL", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
_STATUS_CODES = ("UNSET", "OK", "ERROR")
_GRPC_CODE = {400: 3, 401: 16, 403: 7, 404: 5, 409: 9, 413: 8, 415: 3, 503: 14}
_INT64_MIN, _INT64_MAX, _UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1


def _number(value: int) -> str:
    """``value`` for a message: a huge integer by its size (str() refuses more than 4300 digits)."""
    return str(value) if value.bit_length() <= 128 else f"an integer of {value.bit_length()} bits"


class OtlpError(AglError, ValueError):
    """The request cannot be ingested; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------------------------------------ envelope


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """Undo ``Content-Encoding`` (``gzip``, ``deflate`` or ``identity``), refusing output past ``limit`` bytes."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise OtlpError(f"unsupported Content-Encoding {encoding!r}; send gzip, deflate or none", 415)
    inflater = zlib.decompressobj(zlib.MAX_WBITS | (16 if encoding == "gzip" else 0))
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise OtlpError(f"the body is not valid {encoding} data: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise OtlpError(f"the decompressed body is larger than the server's limit of {limit} bytes", 413)
    return out


def is_protobuf(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == "application/x-protobuf"


def decode_request(body: bytes, content_type: str) -> list[Span]:
    """The spans of an ``ExportTraceServiceRequest`` in ``content_type`` (protobuf or JSON)."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/x-protobuf":
        from google.protobuf.message import DecodeError
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        request = ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
        except DecodeError as exc:
            raise OtlpError(f"the body is not a valid protobuf ExportTraceServiceRequest: {exc}") from None
        return _guarded(lambda: list(_spans_from_proto(request)))
    if media == "application/json":
        try:
            document = msgspec.json.decode(body)
        except msgspec.DecodeError as exc:
            raise OtlpError(f"the body is not valid JSON: {exc}") from None
        except RecursionError:
            raise OtlpError("the body is nested too deeply") from None
        if not isinstance(document, dict):
            raise OtlpError("an OTLP/JSON body is an object with a 'resourceSpans' list")
        return _guarded(lambda: list(_spans_from_json(document)))
    raise OtlpError(f"unsupported Content-Type {content_type!r}: send application/x-protobuf or application/json", 415)


def _guarded(convert: Callable[[], list[Span]]) -> list[Span]:
    try:
        return convert()
    except RecursionError:
        raise OtlpError("the attribute values are nested too deeply") from None


def encode_success(protobuf: bool) -> tuple[bytes, str]:
    if protobuf:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

        return ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf"
    return b"{}", "application/json"


def encode_error(status: int, message: str, protobuf: bool, extra: dict[str, Any] | None = None) -> tuple[bytes, str]:
    """A ``google.rpc.Status`` (code, message) as OTLP asks for; the JSON form also has agl's error fields."""
    code = _GRPC_CODE.get(status, 13 if status >= 500 else 3)
    if protobuf:
        text = message.encode("utf-8")
        return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text, "application/x-protobuf"
    return msgspec.json.encode({"code": code, "message": message, "status": status, **(extra or {})}), (
        "application/json"
    )


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


# ------------------------------------------------------------------------------------------------ mapping


def _seconds(nanos: Any, what: str) -> float | None:
    try:
        value = int(nanos or 0)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
        raise OtlpError(f"{what} must be an integer number of nanoseconds, not {_short(nanos)}") from None
    if not 0 <= value <= _UINT64_MAX:
        raise OtlpError(f"{what} must be an unsigned 64-bit number of nanoseconds (fixed64), not {_number(value)}")
    # Whole seconds and the fraction apart: value / 1e9 would lose the last digits of the fraction.
    return value // 1_000_000_000 + (value % 1_000_000_000) / 1e9 if value else None


def _make_span(
    *,
    name: str,
    trace_id: str,
    span_id: str,
    parent_id: str,
    kind: Any,
    start: Any,
    end: Any,
    status_code: Any,
    status_message: str,
    attributes: dict[str, Any],
    events: list[SpanEvent],
    links: list[SpanLink],
    resource: dict[str, Any],
) -> Span:
    label = f"span {name!r} (span_id {span_id or '?'})"
    ids: dict[str, str] = {}
    for key in (semconv.ROLLOUT_ID, semconv.ATTEMPT_ID):
        value = attributes.get(key, resource.get(key))
        if value is None or value == "":
            raise OtlpError(
                f"{label} has no {key} attribute: set {semconv.ROLLOUT_ID} and {semconv.ATTEMPT_ID} as resource "
                "attributes of the tracer (or as span attributes) so the store knows which rollout and attempt "
                "the span belongs to"
            )
        ids[key] = str(value)
    raw_sequence = attributes.get(semconv.SEQUENCE_ID, resource.get(semconv.SEQUENCE_ID, 0))
    try:
        sequence_id = int(raw_sequence)
        if not 0 <= sequence_id <= _INT64_MAX or (isinstance(raw_sequence, float) and raw_sequence != sequence_id):
            raise ValueError
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
        raise OtlpError(
            f"{label}: {semconv.SEQUENCE_ID} must be an integer from 0 to 2**63-1, not {_short(raw_sequence)}"
        ) from None
    _check_hex(trace_id, 32, f"{label}: trace_id")
    _check_hex(span_id, 16, f"{label}: span_id")
    if parent_id:
        _check_hex(parent_id, 16, f"{label}: parent_span_id")
    kind_name = _enum_name(kind, _KINDS, "SPAN_KIND_", f"{label}: kind")
    status_name = _enum_name(status_code, _STATUS_CODES, "STATUS_CODE_", f"{label}: status.code")
    return Span(
        rollout_id=ids[semconv.ROLLOUT_ID],
        attempt_id=ids[semconv.ATTEMPT_ID],
        sequence_id=sequence_id,
        trace_id=trace_id,
        span_id=span_id,
        parent_id=parent_id or None,
        name=name,
        kind=kind_name,  # type: ignore[arg-type]
        status=SpanStatus(status_code=status_name, description=status_message or None),  # type: ignore[arg-type]
        attributes=attributes,
        events=events,
        links=links,
        start_time=_seconds(start, f"{label}: start time"),
        end_time=_seconds(end, f"{label}: end time"),
        resource=resource,
    )


def _short(value: Any) -> str:
    """``repr(value)`` for a message, cut short (a huge integer by its size)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return _number(value)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_hex(value: str, length: int, what: str) -> None:
    if len(value) != length or any(c not in "0123456789abcdef" for c in value):
        raise OtlpError(f"{what} must be {length} hex digits, not {value!r}")


def _enum_name(value: Any, names: tuple[str, ...], prefix: str, what: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return names[value]
    if value is None:
        return names[0]
    if isinstance(value, str):
        short = value.upper().removeprefix(prefix)
        if short in names or short == "UNSPECIFIED":
            return names[0] if short == "UNSPECIFIED" else short
    raise OtlpError(f"{what}: unknown value {value!r}")


# -------------------------------------------------------------------------------------------------- protobuf


def _proto_value(value: Any) -> Any:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_proto_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return _proto_attributes(value.kvlist_value.values)
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    return getattr(value, which)


def _proto_attributes(items: Iterable[Any]) -> dict[str, Any]:
    return {kv.key: _proto_value(kv.value) for kv in items}


def _spans_from_proto(request: Any) -> Iterator[Span]:
    for resource_spans in request.resource_spans:
        resource = _proto_attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield _make_span(
                    name=span.name,
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_id=span.parent_span_id.hex(),
                    kind=span.kind,
                    start=span.start_time_unix_nano,
                    end=span.end_time_unix_nano,
                    status_code=span.status.code,
                    status_message=span.status.message,
                    attributes=_proto_attributes(span.attributes),
                    events=[
                        SpanEvent(
                            name=event.name,
                            timestamp=_seconds(event.time_unix_nano, "event time"),
                            attributes=_proto_attributes(event.attributes),
                        )
                        for event in span.events
                    ],
                    links=[
                        SpanLink(
                            trace_id=link.trace_id.hex(),
                            span_id=link.span_id.hex(),
                            attributes=_proto_attributes(link.attributes),
                        )
                        for link in span.links
                    ],
                    resource=resource,
                )


# -------------------------------------------------------------------------------------------------- JSON


def _field(obj: Any, camel: str, snake: str, default: Any = None) -> Any:
    """A field of an OTLP/JSON object, by its lowerCamelCase or its snake_case name (both are allowed)."""
    if not isinstance(obj, dict):
        return default
    value = obj.get(camel, obj.get(snake, default))
    return default if value is None else value


def _list(obj: Any, camel: str, snake: str, what: str) -> list[Any]:
    value = _field(obj, camel, snake, [])
    if not isinstance(value, list):
        raise OtlpError(f"{what}.{camel} must be a list, not {type(value).__name__}")
    return value


def _json_value(value: Any, what: str) -> Any:
    if not isinstance(value, dict) or not value:
        return None
    if "stringValue" in value or "string_value" in value:
        return _field(value, "stringValue", "string_value", "")
    if "boolValue" in value or "bool_value" in value:
        return bool(_field(value, "boolValue", "bool_value", False))
    if "intValue" in value or "int_value" in value:
        raw = _field(value, "intValue", "int_value", 0)
        try:
            number = int(raw)
        except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
            raise OtlpError(f"{what}: intValue must be an integer, not {_short(raw)}") from None
        if isinstance(raw, float) and raw != number:
            raise OtlpError(f"{what}: intValue must be an integer, not {raw!r}")
        if not _INT64_MIN <= number <= _INT64_MAX:
            raise OtlpError(
                f"{what}: intValue must be a signed 64-bit integer (-2**63 .. 2**63-1), not {_number(number)}; "
                "send larger numbers as stringValue or doubleValue"
            )
        return number
    if "doubleValue" in value or "double_value" in value:
        raw = _field(value, "doubleValue", "double_value", 0.0)
        if not isinstance(raw, (int, float)) or isinstance(raw, bool):
            raise OtlpError(f"{what}: doubleValue must be a number, not {raw!r}")
        return float(raw)
    if "arrayValue" in value or "array_value" in value:
        array = _field(value, "arrayValue", "array_value", {})
        return [_json_value(v, what) for v in _list(array, "values", "values", what)]
    if "kvlistValue" in value or "kvlist_value" in value:
        return _json_attributes(_list(_field(value, "kvlistValue", "kvlist_value", {}), "values", "values", what), what)
    if "bytesValue" in value or "bytes_value" in value:
        return str(_field(value, "bytesValue", "bytes_value", ""))
    raise OtlpError(f"{what}: unknown attribute value type {sorted(value)!r}")


def _json_attributes(items: list[Any], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("key"), str):
            raise OtlpError(f"{what}: each attribute is an object with a string 'key' and a 'value'")
        out[item["key"]] = _json_value(item.get("value"), f"{what} attribute {item['key']!r}")
    return out


def _json_id(obj: Any, camel: str, snake: str) -> str:
    value = _field(obj, camel, snake, "")
    return value.lower() if isinstance(value, str) else repr(value)


def _spans_from_json(document: dict[str, Any]) -> Iterator[Span]:
    for resource_spans in _list(document, "resourceSpans", "resource_spans", "request"):
        resource = _json_attributes(
            _list(_field(resource_spans, "resource", "resource", {}), "attributes", "attributes", "resource"),
            "resource",
        )
        for scope_spans in _list(resource_spans, "scopeSpans", "scope_spans", "resourceSpans[]"):
            for span in _list(scope_spans, "spans", "spans", "scopeSpans[]"):
                if not isinstance(span, dict):
                    raise OtlpError("each entry of scopeSpans[].spans must be an object")
                name = _field(span, "name", "name", "")
                what = f"span {name!r}"
                status = _field(span, "status", "status", {})
                yield _make_span(
                    name=str(name),
                    trace_id=_json_id(span, "traceId", "trace_id"),
                    span_id=_json_id(span, "spanId", "span_id"),
                    parent_id=_json_id(span, "parentSpanId", "parent_span_id"),
                    kind=_field(span, "kind", "kind", 0),
                    start=_field(span, "startTimeUnixNano", "start_time_unix_nano", 0),
                    end=_field(span, "endTimeUnixNano", "end_time_unix_nano", 0),
                    status_code=_field(status, "code", "code", 0),
                    status_message=str(_field(status, "message", "message", "")),
                    attributes=_json_attributes(_list(span, "attributes", "attributes", what), what),
                    events=[
                        SpanEvent(
                            name=str(_field(event, "name", "name", "")),
                            timestamp=_seconds(_field(event, "timeUnixNano", "time_unix_nano", 0), f"{what} event"),
                            attributes=_json_attributes(_list(event, "attributes", "attributes", what), what),
                        )
                        for event in _list(span, "events", "events", what)
                    ],
                    links=[
                        SpanLink(
                            trace_id=_json_id(link, "traceId", "trace_id"),
                            span_id=_json_id(link, "spanId", "span_id"),
                            attributes=_json_attributes(_list(link, "attributes", "attributes", what), what),
                        )
                        for link in _list(span, "links", "links", what)
                    ],
                    resource=resource,
                )
