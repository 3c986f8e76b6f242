"""A skeleton tracer: one root span per rollout attempt, under which everything the agent emits is recorded.

A tracer turns what an agent does into spans of the attempt it runs for. The kernel's :class:`~agl_kernel.tracer.Tracer`
does the bookkeeping (the trace context, the emitters ``emit_reward``/``operation``/..., the hooks, writing spans
to the store); a tracer plugin implements :meth:`recording`, a context manager open while the agent runs. Real
tracers instrument something there (patch an LLM client, subscribe to an SDK's callbacks, start an OpenTelemetry
span processor: see agl-tracer-otel) and write what they see with :meth:`start_span` / :meth:`emit_span`, or
through their own exporter into the store.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import attrs

from agl_kernel.tracer import Tracer, TraceScope

__all__ = ["TemplateTracer", "TemplateTracerOptions"]


@attrs.define(kw_only=True)
class TemplateTracerOptions:
    """Options of the template tracer (``template`` in ``agl.tracers``)."""

    root_span_name: str = attrs.field(default="template.attempt", validator=attrs.validators.min_len(1))
    """The name of the span that holds each attempt's spans."""
    attributes: dict[str, str] = attrs.field(factory=dict)
    """Attributes set on every root span, e.g. {team = "search"} (in a run file; --set tracer.attributes='{team =
    "search"}' on the command line)."""


class TemplateTracer(Tracer):
    """Records a root span per attempt, with the agent's own spans (rewards, messages, operations) under it.

    The root span has the attempt's start, end and outcome and the configured attributes. Registered as
    ``template`` in the ``agl.tracers`` entry-point group.
    """

    Options = TemplateTracerOptions

    def __init__(self, *, root_span_name: str = "template.attempt", attributes: dict[str, str] | None = None) -> None:
        self.root_span_name = root_span_name
        self.attributes = dict(attributes or {})

    @contextlib.contextmanager
    def recording(self, scope: TraceScope) -> Iterator[Any]:
        # Instrument here (and undo it in the finally below). The root span is "current": spans started in this
        # context, by the emitters or by start_span, are its children until it ends.
        root = self.start_span(scope, self.root_span_name, dict(self.attributes))
        # The runner records the reward it gets back and a failed agent's exception itself: under the root too.
        scope.parent = (scope.trace_id, root.span_id)
        error: BaseException | None = None
        try:
            yield root
        except BaseException as exc:
            error = exc
            raise
        finally:
            root.end(error)
