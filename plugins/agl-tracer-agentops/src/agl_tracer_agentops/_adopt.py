"""Taking over AgentOps' process-wide state, whichever of agl and the user's ``agentops.init`` comes first.

AgentOps keeps everything in process-wide singletons: a tracing core (``agentops.sdk.core.tracer``) with its own
``TracerProvider``, a client, and a list of instrumentors. Left to itself, ``agentops.init()`` (even without an API
key) reaches the network: it uploads captured ``print()`` output to api.agentops.ai when its first root span ends,
exports spans to otlp.agentops.ai (an exporter subclass that OpenTelemetry 1.45 broke) and metrics to a hard-coded
endpoint; it also replaces ``builtins.print``, writes ``./agentops.log`` and silences OpenTelemetry's own logger.

So, once per process and under a lock:

- **AgentOps not initialised yet**: its ``setup_telemetry`` is replaced by one that builds a provider with no
  exporter and no metrics reader, whose only processor is the :class:`Bridge` to agl's span writers; then
  ``agentops.init`` runs with no session started and no log file, and OpenTelemetry's logger is put back.
- **AgentOps initialised already** (the user called ``agentops.init`` first): its exporting processor and its
  log-upload processor are taken off its provider (their exporters replaced by no-ops before they shut down, so
  nothing queued is sent), its metrics reader's exporter likewise, ``print`` is restored, its log file handler
  closed, and the :class:`Bridge` added to its provider.
- Either way, the functions that would still reach the network later (the key authentication a re-``init`` with a
  key starts, the log upload) become no-ops, and so does the log file of a later ``configure_logging``.
- LLM spans come from one instrumentation only: with ``llm_spans="agl"`` AgentOps' OpenAI instrumentor is
  uninstrumented and a placeholder stays in its list (so AgentOps' import hook never instruments ``openai``
  again); with ``"agentops"`` it is left on and its spans are marked as LLM calls (``gen_ai.operation.name``), so
  adapters count them and say that they carry no token ids.

``cloud=True`` skips all of this but the bridge: AgentOps then authenticates, exports and uploads as it does by
itself (with a key: ``AGENTOPS_API_KEY`` or ``agentops.init(api_key=...)``).

What this touches in other packages is private (``TracerProvider._active_span_processor``, the exporters of the
SDK's batch processor and metrics reader, AgentOps' module functions), hence the pinned AgentOps versions.
"""

from __future__ import annotations

import builtins
import logging
import os
import threading
import weakref
from collections.abc import Sequence
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

from agl_kernel import semconv

logger = logging.getLogger(__name__)

_lock = threading.RLock()
_writers: weakref.WeakSet[Any] = weakref.WeakSet()
_state: dict[str, Any] = {"llm_spans": None, "cloud": None, "patched": False}

AGENTOPS_LLM_SCOPES = frozenset({"openai", "anthropic", "google.genai", "ibm_watsonx_ai"})
"""Instrumentation scopes of AgentOps' LLM-provider instrumentors (they name the library)."""


class AgentOpsSetupError(RuntimeError):
    """AgentOps is in a state this plugin cannot work with (two tracers asking for different LLM spans)."""


# ------------------------------------------------------------------------------------------------ the bridge


class Bridge(SpanProcessor):
    """Hands every span of a provider agl does not own (AgentOps', the application's) to each live agentops
    tracer's writer; each writer keeps only the spans of its own trace contexts. Flushing returns at once:
    AgentOps flushes its provider whenever a trace ends, and agl's runner flushes agl's writer itself before an
    attempt is done, so the agent's thread never waits for the store here."""

    def on_start(self, span: SdkSpan, parent_context: Context | None = None) -> None:
        if _state["llm_spans"] == "agentops":
            operation = _agentops_llm_operation(span)
            if operation:
                # AgentOps' LLM spans use older attribute names and no gen_ai.operation.name: mark them as LLM
                # calls so adapters count them (and report that they carry no token ids) instead of missing them.
                span.set_attribute(semconv.GEN_AI_OPERATION_NAME, operation)
        for writer in list(_writers):
            writer.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        for writer in list(_writers):
            writer.on_end(span)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def shutdown(self) -> None:
        pass


BRIDGE = Bridge()


def _agentops_llm_operation(span: SdkSpan) -> str | None:
    """``chat`` / ``text_completion`` for a span of AgentOps' LLM instrumentors (``openai.chat.completion``...)."""
    scope = span.instrumentation_scope
    if span.kind is not SpanKind.CLIENT or scope is None or scope.name not in AGENTOPS_LLM_SCOPES:
        return None
    name = span.name.lower()
    if "chat" in name or "messages" in name:
        return "chat"
    if name.endswith("completion") or name.endswith("completions"):
        return "text_completion"
    return None


def processors_of(provider: Any) -> Sequence[SpanProcessor]:
    multi = getattr(provider, "_active_span_processor", None)
    return tuple(getattr(multi, "_span_processors", ()))


def add_processor(provider: Any, processor: SpanProcessor) -> None:
    """Add ``processor`` to an SDK provider unless it is there already."""
    if processor not in processors_of(provider):
        provider.add_span_processor(processor)


def _remove_processors(provider: Any, removed: Sequence[SpanProcessor]) -> None:
    multi = provider._active_span_processor
    with multi._lock:
        multi._span_processors = tuple(p for p in multi._span_processors if p not in removed)


# ------------------------------------------------------------------------------------------------ no-op exporters


class _NullSpanExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _null_metric_exporter() -> Any:
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult

    class NullMetricExporter(MetricExporter):
        def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> Any:
            return MetricExportResult.SUCCESS

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return True

        def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
            pass

    return NullMetricExporter()


# ------------------------------------------------------------------------------------------------ adoption


def adopt(writer: Any, *, llm_spans: str, cloud: bool) -> str:
    """Make AgentOps' spans reach ``writer`` (an agl ``BatchWriter``), offline unless ``cloud``; returns what was
    done: ``"initialised"`` (agl called ``agentops.init``) or ``"taken over"`` (the user had)."""
    import agentops
    from agentops.sdk import core

    with _lock:
        for key, wanted in (("llm_spans", llm_spans), ("cloud", cloud)):
            if _state[key] is not None and _state[key] != wanted:
                raise AgentOpsSetupError(
                    f"AgentOps is process-wide, and another agentops tracer of this process set {key}="
                    f"{_state[key]!r}; this one asks for {wanted!r}. Use the same {key} for every agentops tracer "
                    f"of a process"
                )
        _state["llm_spans"], _state["cloud"] = llm_spans, cloud
        if not cloud:
            _patch_network_paths()
        if core.tracer.initialized:
            how = "taken over"
            if not cloud:
                _take_offline(core.tracer)
        else:
            how = "initialised"
            _init(agentops, llm_spans=llm_spans, cloud=cloud)
        provider = core.tracer.provider
        if provider is not None:
            add_processor(provider, BRIDGE)
        _choose_llm_instrumentation(llm_spans)
        _writers.add(writer)
        logger.info("agl %s AgentOps (%s LLM spans, %s)", how, llm_spans, "cloud" if cloud else "offline")
        return how


def release(writer: Any) -> None:
    """Stop handing AgentOps' spans to ``writer``."""
    with _lock:
        _writers.discard(writer)


def _init(agentops: Any, *, llm_spans: str, cloud: bool) -> None:
    otel_logger = logging.getLogger("opentelemetry")
    saved = (otel_logger.propagate, otel_logger.level, list(otel_logger.handlers))
    options: dict[str, Any] = {"auto_start_session": False, "instrument_llm_calls": True}
    if not cloud:
        options.update(log_session_replay_url=False)
        if not os.environ.get("AGENTOPS_LOG_LEVEL"):
            options["log_level"] = "ERROR"  # not AgentOps' "no API key" warning: offline is what agl asked for
    try:
        agentops.init(**options)
    finally:
        # AgentOps routes OpenTelemetry's log records into its own logger (at DEBUG, not propagated): put
        # OpenTelemetry's warnings back where the application's logging configuration sends them.
        otel_logger.propagate, otel_logger.level = saved[0], saved[1]
        otel_logger.handlers[:] = saved[2]


def _patch_network_paths() -> None:
    """Replace the AgentOps functions that reach the network or write files (once per process)."""
    if _state["patched"]:
        return
    from agentops.client import client as client_module
    from agentops.sdk import core, processors

    original_configure_logging = getattr(client_module, "configure_logging")  # noqa: B009 - not exported

    def configure_logging(config: Any = None) -> Any:
        if os.environ.get("AGENTOPS_LOGGING_TO_FILE") is not None:  # the user chose; AgentOps' default is a file
            return original_configure_logging(config)
        os.environ["AGENTOPS_LOGGING_TO_FILE"] = "false"
        try:
            return original_configure_logging(config)
        finally:
            os.environ.pop("AGENTOPS_LOGGING_TO_FILE", None)

    def start_auth_task(self: Any, api_key: str) -> None:
        logger.info("agl keeps AgentOps offline: no authentication with AgentOps' cloud (tracer.cloud=true sends)")

    # setattr: these are module globals AgentOps' own functions look up when they run.
    setattr(client_module, "configure_logging", configure_logging)  # noqa: B010
    setattr(core, "log_trace_url", lambda span, title=None: None)  # noqa: B010 - its dashboard got nothing
    client_module.Client._start_auth_task = start_auth_task
    setattr(processors, "upload_logfile", lambda trace_id: None)  # noqa: B010
    setattr(core, "setup_telemetry", _offline_setup_telemetry)  # noqa: B010
    # AgentOps ends a trace with an enum (TraceState, StatusCode) as an attribute value; OpenTelemetry warns about
    # it on every trace once its logger is no longer silenced by AgentOps (the value is stored as its string).
    logging.getLogger("opentelemetry.attributes").addFilter(_drop_trace_state_warning)
    _state["patched"] = True


def _drop_trace_state_warning(record: logging.LogRecord) -> bool:
    said = f"{record.msg} {record.args}"
    return "<enum 'TraceState'>" not in said and "<enum 'StatusCode'>" not in said


def _offline_setup_telemetry(service_name: str = "agentops", project_id: str | None = None, **ignored: Any) -> Any:
    """AgentOps' ``setup_telemetry`` without its exporters, metrics reader, print capture or global provider."""
    from agentops.sdk.attributes import get_global_resource_attributes
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    resource = Resource(get_global_resource_attributes(service_name=service_name, project_id=project_id))
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)  # AgentOps shuts them down at exit
    provider.add_span_processor(BRIDGE)
    return provider, MeterProvider(resource=resource, shutdown_on_exit=False)


def _take_offline(core_tracer: Any) -> None:
    """Undo what the user's own ``agentops.init`` set up that reaches the network or the working directory."""
    from agentops.logging import instrument_logging
    from agentops.sdk.exporters import AuthenticatedOTLPExporter
    from agentops.sdk.processors import InternalSpanProcessor
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = core_tracer.provider
    if provider is not None:
        removed: list[SpanProcessor] = []
        for processor in processors_of(provider):
            inner: Any = getattr(processor, "_batch_processor", processor)
            exporter = getattr(inner, "_exporter", None)
            if isinstance(processor, InternalSpanProcessor):
                removed.append(processor)
            elif isinstance(processor, BatchSpanProcessor) and isinstance(exporter, AuthenticatedOTLPExporter):
                inner._exporter = _NullSpanExporter()  # what it holds is dropped, not sent
                removed.append(processor)
        _remove_processors(provider, removed)
        for processor in removed:
            try:
                processor.shutdown()
            except Exception:  # pragma: no cover - best effort
                logger.debug("could not shut AgentOps' %r down", processor, exc_info=True)
    meter_provider = getattr(core_tracer, "_meter_provider", None)
    if meter_provider is not None:
        for reader in getattr(getattr(meter_provider, "_sdk_config", None), "metric_readers", ()):
            if hasattr(reader, "_exporter"):
                reader._exporter = _null_metric_exporter()
        # Not shut down: it is the global meter provider, and AgentOps' instrumentors still ask it for meters.
    if builtins.print is getattr(instrument_logging, "print_logger", None):
        builtins.print = instrument_logging._original_print
    for handler in list(logging.getLogger("agentops").handlers):
        if isinstance(handler, logging.FileHandler):
            logging.getLogger("agentops").removeHandler(handler)
            handler.close()
    otel_logger = logging.getLogger("opentelemetry")
    otel_logger.propagate = True
    otel_logger.setLevel(logging.NOTSET)
    otel_logger.handlers[:] = [h for h in otel_logger.handlers if type(h).__name__ != "OtelLogHandler"]


class AglOwnsOpenAI:
    """Stands in AgentOps' list of active instrumentors for its OpenAI instrumentor, so that AgentOps' import hook
    believes ``openai`` is instrumented and leaves it to agl's instrumentation (``llm_spans="agl"``)."""

    _agentops_instrumented_package_key = "openai"

    def uninstrument(self, **kwargs: Any) -> None:
        pass


def _choose_llm_instrumentation(llm_spans: str) -> None:
    from agentops import instrumentation

    active = instrumentation._active_instrumentors
    openai_ones = [i for i in active if getattr(i, "_agentops_instrumented_package_key", None) == "openai"]
    if llm_spans == "agentops":
        if any(isinstance(i, AglOwnsOpenAI) for i in openai_ones):  # pragma: no cover - guarded by adopt()
            raise AgentOpsSetupError("AgentOps' OpenAI instrumentation was turned off by an earlier agl tracer")
        return
    for instrumentor in openai_ones:
        if not isinstance(instrumentor, AglOwnsOpenAI):
            instrumentor.uninstrument()
            active.remove(instrumentor)
    if not any(isinstance(i, AglOwnsOpenAI) for i in active):
        active.append(AglOwnsOpenAI())
