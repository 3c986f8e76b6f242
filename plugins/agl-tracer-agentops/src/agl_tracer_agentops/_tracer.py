"""The AgentOps tracer (entry point ``agentops`` in ``agl.tracers``): agl's OpenTelemetry tracer plus AgentOps,
taken offline and made to hand its spans to agl."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any, Literal

import attrs
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanKind

from agl_kernel import semconv
from agl_kernel.errors import ConfigError
from agl_kernel.tracer import TraceScope
from agl_tracer_agentops import _adopt
from agl_tracer_otel import OtelTracer

__all__ = ["AgentOpsTracer", "AgentOpsTracerOptions"]

logger = logging.getLogger(__name__)


@attrs.define(kw_only=True)
class AgentOpsTracerOptions:
    """Options of the AgentOps tracer (``agentops``)."""

    llm_spans: Literal["agl", "agentops"] = "agl"
    """Who records LLM calls: "agl" (token ids and logprobs, for training) or "agentops" (its spans: no token ids)."""
    cloud: bool = False
    """Let AgentOps authenticate and send to its cloud as it does by itself (needs a key); off: nothing leaves."""
    request_token_ids: bool = False
    """Make every OpenAI call ask the server for token ids (vLLM's return_token_ids); llm_spans="agl" only."""
    request_logprobs: bool = False
    """Make every OpenAI call ask the server for logprobs; llm_spans="agl" only."""
    root_span: bool = True
    """Open an agl.attempt span around each attempt: a new trace, the parent of AgentOps' spans."""
    max_batch: int = attrs.field(default=512, validator=attrs.validators.ge(1))
    """Spans per store call or OTLP request, at most."""
    schedule_delay: float = attrs.field(default=0.02, validator=attrs.validators.gt(0))
    """Seconds between the span writer's wake-ups (it also wakes as soon as 64 spans wait)."""
    max_queue: int = attrs.field(default=65536, validator=attrs.validators.ge(1))
    """Spans waiting to be written, at most."""
    service_name: str = "agl-agent"
    """The OpenTelemetry service.name of agl's own spans."""
    export_timeout: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    """Seconds one write of spans may take."""


class AgentOpsTracer(OtelTracer):
    """Records agents decorated with AgentOps (``@agent``, ``@task``, ``@tool``, ``@operation``, sessions, its
    instrumented libraries) as agl spans, under each attempt's ``agl.attempt`` root span, with agl's emitters and
    agl's OpenAI instrumentation (token ids and logprobs) as the ``otel`` tracer does.

    AgentOps is process-wide. Making the tracer initialises AgentOps offline when the application has not
    (``agentops.init`` with no session started, no exporter, no metrics, no ``print`` capture, no log file), or
    takes over the AgentOps the application initialised (its exporters and uploads removed), so the user's own
    ``agentops.init()`` may run before or after and nothing leaves the machine unless ``cloud=True``.

    Options (see :class:`AgentOpsTracerOptions`): ``llm_spans`` (``"agl"``: agl records LLM calls and AgentOps'
    LLM instrumentation is turned off; ``"agentops"``: AgentOps' LLM spans are kept instead, marked as LLM calls
    but without token ids, so adapters report ``no_token_ids``; never both), ``cloud``, and the ``otel`` tracer's
    batching and token-id options.
    """

    Options = AgentOpsTracerOptions  # type: ignore[assignment]

    def __init__(
        self,
        *,
        llm_spans: str = "agl",
        cloud: bool = False,
        request_token_ids: bool = False,
        request_logprobs: bool = False,
        root_span: bool = True,
        max_batch: int = 512,
        schedule_delay: float = 0.02,
        max_queue: int = 65536,
        service_name: str = "agl-agent",
        export_timeout: float = 30.0,
    ) -> None:
        if llm_spans not in ("agl", "agentops"):
            raise ConfigError(f"tracer.llm_spans: expected one of 'agl', 'agentops', got {llm_spans!r}")
        try:
            import agentops  # noqa: F401 - fail here, with what to install, rather than on the first attempt
        except ImportError as err:
            raise ConfigError(
                f"the agentops tracer needs the agentops package ({err}); pip install agl-tracer-agentops"
            ) from None
        super().__init__(
            instrument=("openai",) if llm_spans == "agl" else (),
            request_token_ids=request_token_ids,
            request_logprobs=request_logprobs,
            install_global=False,  # done below, with a bridge that never makes AgentOps' flushes wait
            root_span=root_span,
            max_batch=max_batch,
            schedule_delay=schedule_delay,
            max_queue=max_queue,
            service_name=service_name,
            export_timeout=export_timeout,
        )
        self.llm_spans = llm_spans
        self.cloud = cloud
        if llm_spans == "agentops":
            # agl's OpenAI instrumentation is process-wide: if another tracer of this process installed it, its
            # calls must not be recorded here too (AgentOps records them).
            self.otel_tracer = _WithoutLlmCalls(self.otel_tracer)  # type: ignore[assignment]
        if cloud:  # AgentOps' own provider becomes the global one, so its exporter sees its decorators' spans
            self.agentops_setup = _adopt.adopt(self.writer, llm_spans=llm_spans, cloud=cloud)
            self.global_mode = self._share_global_provider()
        else:
            self.global_mode = self._share_global_provider()
            self.agentops_setup = _adopt.adopt(self.writer, llm_spans=llm_spans, cloud=cloud)
        """``"initialised"`` (this tracer called ``agentops.init``) or ``"taken over"`` (the application had)."""

    def _share_global_provider(self) -> str:
        """AgentOps' decorators start their spans on the global provider: make it this tracer's, or bridge the
        application's (AgentOps' own, when the user's ``agentops.init`` came first) to this tracer's writer."""
        current = trace.get_tracer_provider()
        if isinstance(current, trace.ProxyTracerProvider):
            trace.set_tracer_provider(self.provider)
            current = trace.get_tracer_provider()
        if current is self.provider:
            return "installed"
        if isinstance(current, TracerProvider):
            _adopt.add_processor(current, _adopt.BRIDGE)
            return "attached"
        logger.warning(
            "the global OpenTelemetry tracer provider (%s) is not the SDK's, so agl cannot see AgentOps' decorator "
            "spans; set no global provider before agl's agentops tracer is made",
            type(current).__name__,
        )
        return "foreign"

    @contextlib.contextmanager
    def recording(self, scope: TraceScope) -> Iterator[None]:
        if not self.root_span:
            with super().recording(scope):
                yield
            return
        # A session the application keeps open (agentops.init's auto-started one) must not become the parent of
        # every attempt: each attempt is a trace of its own.
        token = otel_context.attach(otel_context.Context())
        try:
            with super().recording(scope):
                yield
        finally:
            otel_context.detach(token)

    def shutdown(self) -> None:
        """Stop receiving AgentOps' spans, write what is queued and stop the writer thread."""
        _adopt.release(self.writer)
        super().shutdown()


class _WithoutLlmCalls:
    """An OpenTelemetry tracer that drops the LLM-call spans of agl's own OpenAI instrumentation (their
    stand-in carries the current span's context, so what happens inside keeps its parent)."""

    def __init__(self, tracer: Any) -> None:
        self._tracer = tracer

    def start_span(self, name: str, context: Any = None, kind: SpanKind = SpanKind.INTERNAL, **kwargs: Any) -> Any:
        attributes = kwargs.get("attributes") or {}
        if kind is SpanKind.CLIENT and semconv.GEN_AI_OPERATION_NAME in attributes:
            return NonRecordingSpan(trace.get_current_span(context).get_span_context())
        return self._tracer.start_span(name, context, kind, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tracer, name)
