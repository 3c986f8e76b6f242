"""OpenTelemetry SDK spans → agl :class:`~agl_kernel.models.Span` (for stores in this process).

This runs on the writer thread for every span, so it avoids work it can skip: shared status objects, no lists
for the (usual) spans without events or links, the resource converted once.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from agl_kernel import semconv
from agl_kernel.models import Span, SpanEvent, SpanLink, SpanStatus

_PLACEMENT = frozenset((semconv.ROLLOUT_ID, semconv.ATTEMPT_ID, semconv.SEQUENCE_ID))
_KINDS = {kind: kind.name for kind in SpanKind}
_CODES = {code: code.name for code in StatusCode}
_STATUSES = {name: SpanStatus(status_code=name) for name in _CODES.values()}  # type: ignore[arg-type]
_resources: dict[int, tuple[Any, dict[str, Any]]] = {}  # id(resource) -> (resource, its attributes as a dict)


def _attributes(attributes: Any) -> dict[str, Any]:
    if not attributes:
        return {}
    return {k: list(v) if type(v) is tuple else v for k, v in attributes.items()}


def _resource(resource: Any) -> dict[str, Any]:
    cached = _resources.get(id(resource))
    if cached is None or cached[0] is not resource:
        cached = _resources[id(resource)] = (resource, _attributes(resource.attributes))
    return cached[1]


def to_span(span: ReadableSpan, rollout_id: str, attempt_id: str) -> Span:
    """The agl span of an ended OpenTelemetry span, placed in ``(rollout_id, attempt_id)`` with sequence id 0 (the
    store assigns the next one, in the order the spans are written). The placement attributes are dropped: the
    span's fields carry them."""
    context = span.context
    parent = span.parent
    raw = span.attributes
    attributes = _attributes(raw)
    if raw and not _PLACEMENT.isdisjoint(attributes):
        attributes = {k: v for k, v in attributes.items() if k not in _PLACEMENT}
    status = span.status
    code = _CODES[status.status_code]
    if status.description is not None:
        agl_status = SpanStatus(status_code=code, description=status.description)  # type: ignore[arg-type]
    else:
        agl_status = _STATUSES[code]
    events = span.events
    links = span.links
    start, end = span.start_time, span.end_time
    return Span(
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        trace_id=f"{context.trace_id:032x}",
        span_id=f"{context.span_id:016x}",
        parent_id=f"{parent.span_id:016x}" if parent is not None else None,
        name=span.name,
        kind=_KINDS[span.kind],  # type: ignore[arg-type]
        status=agl_status,
        attributes=attributes,
        events=[
            SpanEvent(
                name=e.name, timestamp=e.timestamp / 1e9 if e.timestamp else None, attributes=_attributes(e.attributes)
            )
            for e in events
        ]
        if events
        else [],
        links=[
            SpanLink(
                trace_id=f"{link.context.trace_id:032x}",
                span_id=f"{link.context.span_id:016x}",
                attributes=_attributes(link.attributes),
            )
            for link in links
        ]
        if links
        else [],
        start_time=start / 1e9 if start else None,
        end_time=end / 1e9 if end else None,
        resource=_resource(span.resource),
    )
