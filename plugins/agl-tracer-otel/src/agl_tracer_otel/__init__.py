"""agl's OpenTelemetry tracer: ``OtelTracer`` (entry point ``otel`` in ``agl.tracers``) and the OpenAI client
instrumentation it enables."""

from agl_tracer_otel._openai import instrument_openai, uninstrument_openai
from agl_tracer_otel._tracer import OtelTracer

__all__ = ["OtelTracer", "instrument_openai", "uninstrument_openai"]
