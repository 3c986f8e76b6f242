"""The OpenTelemetry tracer (entry point ``otel`` in ``agl.tracers``)."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attrs
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Status, StatusCode

from agl_kernel import semconv
from agl_kernel.tracer import SpanHandle, Tracer, TraceScope
from agl_kernel.tracer import exception_attributes as _exception_attributes
from agl_tracer_otel._convert import to_span
from agl_tracer_otel._processor import BatchWriter, OtlpSink, Sink, StoreSink

__all__ = ["OtelTracer"]

logger = logging.getLogger(__name__)

_INSTRUMENTATIONS = ("openai",)


@attrs.define(kw_only=True)
class OtelTracerOptions:
    """Options of the OpenTelemetry tracer (``otel``)."""

    instrument: list[str] = attrs.field(factory=lambda: list(_INSTRUMENTATIONS))
    """The libraries to instrument ("openai"); [] for none. Process-wide; records only inside trace contexts."""
    request_token_ids: bool = False
    """Make every instrumented call ask the server for token ids (vLLM's return_token_ids)."""
    request_logprobs: bool = False
    """Make every instrumented call ask the server for logprobs."""
    install_global: bool = True
    """Also capture spans of other OpenTelemetry instrumentations (through the global tracer provider)."""
    root_span: bool = True
    """Open an agl.attempt span around each attempt, so all its spans share one trace."""
    max_batch: int = attrs.field(default=512, validator=attrs.validators.ge(1))
    """Spans per store call or OTLP request, at most."""
    schedule_delay: float = attrs.field(default=0.02, validator=attrs.validators.gt(0))
    """Seconds between the span writer's wake-ups (it also wakes as soon as 64 spans wait)."""
    max_queue: int = attrs.field(default=65536, validator=attrs.validators.ge(1))
    """Spans waiting to be written, at most."""
    service_name: str = "agl-agent"
    """The OpenTelemetry service.name of the spans."""
    export_timeout: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    """Seconds one write of spans may take."""


class OtelTracer(Tracer):
    """Records an attempt with the OpenTelemetry SDK: every span the agent's code and instrumented libraries start
    inside the trace context, tagged with the rollout and attempt and written to the store in batches by a
    background thread. In-process stores get the spans directly (``add_many_spans``); a remote store (one whose
    ``capabilities.remote`` is true, e.g. ``LightningStoreClient``) gets them over OTLP/HTTP at ``<url>/v1/traces``.

    Options:

    - ``instrument``: the libraries to instrument (``"openai"``: chat completions and completions, sync, async and
      streaming); ``()`` for none. Instrumenting is process-wide, and records only inside trace contexts.
    - ``request_token_ids`` / ``request_logprobs``: make every instrumented call ask the server for token ids
      (``extra_body={"return_token_ids": True}``, vLLM) and logprobs. Only for servers that accept them.
    - ``install_global``: also capture spans of other OpenTelemetry instrumentations (which use the *global*
      tracer provider). When no global provider is set, this tracer's provider becomes the global one; when the
      application has set an SDK provider, this tracer adds its processor to it, so the application's exporters
      keep working and see agl's ``agl.rollout_id`` / ``agl.attempt_id`` attributes too; any other provider is
      left alone (with a warning). ``False`` leaves the global provider untouched.
    - ``root_span``: open an ``agl.attempt`` span around each attempt, so all its spans share one trace.
    - ``max_batch``, ``schedule_delay`` (seconds), ``max_queue``: batching. The writer wakes every
      ``schedule_delay`` or as soon as 64 spans wait, and writes up to ``max_batch`` spans per store call or
      OTLP request. Waking early is deliberate: a span that lives on in the queue is promoted by Python's garbage
      collector and makes its full collections, which run in the agent's thread, more frequent (measured: waking
      every 0.1 s / 512 spans cost the agent about twice as much per span as 0.02 s / 64). A producer more than
      ``max_queue`` spans ahead of the store waits rather than losing spans.
    - ``service_name``: the ``service.name`` of the spans' resource.
    """

    Options = OtelTracerOptions

    def __init__(
        self,
        *,
        instrument: str | Sequence[str] = _INSTRUMENTATIONS,
        request_token_ids: bool = False,
        request_logprobs: bool = False,
        install_global: bool = True,
        root_span: bool = True,
        max_batch: int = 512,
        schedule_delay: float = 0.02,
        max_queue: int = 65536,
        service_name: str = "agl-agent",
        export_timeout: float = 30.0,
    ) -> None:
        instrument = (instrument,) if isinstance(instrument, str) else tuple(instrument)
        unknown = sorted(set(instrument) - set(_INSTRUMENTATIONS))
        if unknown:
            raise ValueError(f"cannot instrument {unknown}; the instrumentations are: {', '.join(_INSTRUMENTATIONS)}")
        self.request_token_ids = request_token_ids
        self.request_logprobs = request_logprobs
        self.root_span = root_span
        self.export_timeout = export_timeout
        resource = Resource({"service.name": service_name})
        self.provider = TracerProvider(resource=resource)
        """This tracer's own provider: its spans, emitters and the instrumentations' spans start here."""
        self.writer = BatchWriter(
            self, resource, max_batch=max_batch, schedule_delay=schedule_delay, max_queue=max_queue
        )
        self.provider.add_span_processor(self.writer)
        self.otel_tracer = self.provider.get_tracer("agl_tracer_otel")
        self._store_sink: StoreSink | None = None
        self._remote_sinks: dict[str, Sink] = {}
        self._sinks_lock = threading.Lock()
        self.global_mode = self._hook_global_provider() if install_global else "off"
        """How the global provider is used: ``"installed"`` (this provider became it), ``"attached"`` (this
        tracer's processor was added to the application's), ``"foreign"`` (left alone) or ``"off"``."""
        self.instrumented: dict[str, str] = {}
        """Each instrumentation asked for and its state: ``"instrumented"``, ``"on import"`` (when the library is
        first imported) or ``"not installed"``."""
        if "openai" in instrument:
            from agl_tracer_otel._openai import instrument_openai_when_imported

            self.instrumented["openai"] = instrument_openai_when_imported()

    def _hook_global_provider(self) -> str:
        current = trace.get_tracer_provider()
        if isinstance(current, trace.ProxyTracerProvider):
            trace.set_tracer_provider(self.provider)
            if trace.get_tracer_provider() is self.provider:
                logger.info("agl's OtelTracer installed its TracerProvider as the global one")
                return "installed"
            current = trace.get_tracer_provider()
        if current is self.provider:
            return "installed"
        if isinstance(current, TracerProvider):
            current.add_span_processor(self.writer)
            logger.info("agl's OtelTracer added its span processor to the application's TracerProvider")
            return "attached"
        logger.warning(
            "the global OpenTelemetry tracer provider (%s) is not the SDK's, so agl cannot see the spans other "
            "instrumentations make through it; agl records its own instrumentations and emitters only",
            type(current).__name__,
        )
        return "foreign"

    # -------------------------------------------------------------------------------------------- recording

    def _sink_for(self, store: Any) -> Sink:
        with self._sinks_lock:
            return self._make_sink(store)

    def _make_sink(self, store: Any) -> Sink:
        capabilities = getattr(store, "capabilities", None)
        if capabilities is not None and getattr(capabilities, "remote", False):
            url = getattr(store, "url", None) or getattr(store, "base_url", None)
            if not url:
                raise ValueError(
                    f"{type(store).__name__} is a remote store but has no `url`, so OtelTracer cannot send it spans "
                    f"over OTLP; give the store a `url` attribute"
                )
            url = str(url)
            if url not in self._remote_sinks:
                # The client's own token when it shows one, else the variable LightningStoreClient defaults to.
                token = getattr(store, "token", None) or os.environ.get("AGL_STORE_TOKEN")
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                sink = OtlpSink(url, headers=headers, timeout=self.export_timeout)
                self._remote_sinks[url] = self.writer.add_sink(sink)
            return self._remote_sinks[url]
        if self._store_sink is None:
            self._store_sink = StoreSink()
            self.writer.add_sink(self._store_sink)
        return self._store_sink

    @contextlib.contextmanager
    def recording(self, scope: TraceScope) -> Iterator[None]:
        scope.state = self._sink_for(scope.store)
        if self.root_span:
            with self.otel_tracer.start_as_current_span(semconv.ATTEMPT_SPAN) as root:
                context = root.get_span_context()
                scope.parent = (f"{context.trace_id:032x}", f"{context.span_id:016x}")
                yield
        else:
            yield
        if scope.collect:
            scope.recorded[:] = [to_span(s, scope.rollout_id, scope.attempt_id) for s in scope.recorded]

    async def flush(self) -> None:
        """Return once every span that ended so far is stored (or sent and acknowledged, for a remote store)."""
        await super().flush()
        await self.writer.flush_async()

    def shutdown(self) -> None:
        """Write what is queued and stop the writer thread; the tracer records nothing afterwards."""
        self.writer.shutdown()

    # -------------------------------------------------------------------------------------------- emitters

    def start_span(
        self, scope: TraceScope, name: str, attributes: Mapping[str, Any], *, current: bool = True
    ) -> SpanHandle:
        return _OtelSpan(self.otel_tracer.start_span(name, attributes=attributes), current)

    def emit_span(
        self, scope: TraceScope, name: str, attributes: Mapping[str, Any], *, error: BaseException | None = None
    ) -> str:
        span = self.otel_tracer.start_span(name, attributes=attributes)
        if error is not None:
            span.set_attributes(_exception_attributes(error))
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        span.end()
        return f"{span.get_span_context().span_id:016x}"


class _OtelSpan(SpanHandle):
    __slots__ = ("_span", "_token", "span_id")

    def __init__(self, span: Any, current: bool) -> None:
        self._span = span
        self.span_id = f"{span.get_span_context().span_id:016x}"
        self._token = otel_context.attach(trace.set_span_in_context(span)) if current else None

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        self._span.set_attributes(attributes)

    def end(self, error: BaseException | None = None) -> None:
        if self._token is not None:
            token, self._token = self._token, None
            try:
                otel_context.detach(token)
            except Exception:
                pass
        if error is not None:
            self._span.set_attributes(_exception_attributes(error))
            self._span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        self._span.end()  # success leaves the status UNSET, as OpenTelemetry's conventions ask
