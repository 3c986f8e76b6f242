"""Instrumentation of the OpenAI Python client: ``chat.completions.create`` and ``completions.create``, sync and
async, streaming or not, so that agents calling any OpenAI-compatible server are traced with no change.

The ``create`` methods of the resource classes are wrapped, process-wide, once. A wrapped call records a span
only inside a trace context of an :class:`~agl_tracer_otel.OtelTracer`; anywhere else it is the original call
plus one context-variable read. The span (``chat <model>`` / ``text_completion <model>``, kind CLIENT) carries
the request, the response, usage and, when the server returns them, prompt and response token ids and logprobs
(vLLM style: ``prompt_token_ids`` on the response or a choice, ``token_ids`` on each choice; in streams, on the
chunks). Attribute names are in :mod:`agl_kernel.semconv`.
"""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import importlib.util
import inspect
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from agl_kernel import semconv
from agl_kernel.emit import set_last_llm_call
from agl_kernel.llm_calls import StreamAccumulator, request_attributes, response_attributes
from agl_kernel.tracer import current_scope, exception_attributes

__all__ = ["instrument_openai", "uninstrument_openai"]

_TARGETS = (
    ("openai.resources.chat.completions", "Completions", "chat", False),
    ("openai.resources.chat.completions", "AsyncCompletions", "chat", True),
    ("openai.resources.completions", "Completions", "text_completion", False),
    ("openai.resources.completions", "AsyncCompletions", "text_completion", True),
)
_lock = threading.Lock()
_patched: list[tuple[type, Any]] = []


def instrument_openai() -> bool:
    """Wrap the OpenAI client's ``create`` methods (idempotent). ``False`` when ``openai`` is not installed."""
    try:
        import openai  # noqa: F401
    except ImportError:
        return False
    with _lock:
        if _patched:
            return True
        for module_name, class_name, operation, is_async in _TARGETS:
            cls = getattr(importlib.import_module(module_name), class_name)
            original = cls.__dict__["create"]
            wrapper = (_async_wrapper if is_async else _sync_wrapper)(original, operation)
            setattr(cls, "create", wrapper)  # noqa: B010 - cls is a type; create is its own method
            _patched.append((cls, original))
    return True


class _InstrumentOnImport(importlib.abc.MetaPathFinder):
    """Instruments ``openai`` right after it is first imported, so that a process that never imports it does not
    pay for importing it (about a second)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "openai":
            return None
        with _lock:
            if self in sys.meta_path:
                sys.meta_path.remove(self)
        spec = importlib.util.find_spec("openai")
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        execute = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            execute(module)
            instrument_openai()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


_on_import = _InstrumentOnImport()


def instrument_openai_when_imported() -> str:
    """Instrument ``openai`` now if it is imported, else as soon as it is: ``"instrumented"``, ``"on import"``,
    or ``"not installed"``."""
    if "openai" in sys.modules:
        return "instrumented" if instrument_openai() else "not installed"
    if importlib.util.find_spec("openai") is None:
        return "not installed"
    with _lock:
        if _on_import not in sys.meta_path:
            sys.meta_path.insert(0, _on_import)
    return "on import"


def uninstrument_openai() -> None:
    """Put the original ``create`` methods back (and forget a pending instrumentation on import)."""
    with _lock:
        if _on_import in sys.meta_path:
            sys.meta_path.remove(_on_import)
        while _patched:
            cls, original = _patched.pop()
            setattr(cls, "create", original)  # noqa: B010 - cls is a type; create is its own method


def _active_tracer() -> Any:
    scope = current_scope()
    if scope is None:
        return None
    from agl_tracer_otel._tracer import OtelTracer

    return scope.tracer if isinstance(scope.tracer, OtelTracer) else None


# ---------------------------------------------------------------------------------------------------- wrappers


def _sync_wrapper(original: Any, operation: str) -> Any:
    @functools.wraps(original)
    def create(self: Any, *args: Any, **kwargs: Any) -> Any:
        tracer = _active_tracer()
        if tracer is None:
            return original(self, *args, **kwargs)
        kwargs, span = _start(tracer, operation, self, kwargs)
        started = time.monotonic()
        try:
            with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
                result = original(self, *args, **kwargs)
        except BaseException as error:
            _finish(span, {}, error)
            raise
        return _record_result(span, operation, result, started)

    return create


def _async_wrapper(original: Any, operation: str) -> Any:
    @functools.wraps(original)
    async def create(self: Any, *args: Any, **kwargs: Any) -> Any:
        tracer = _active_tracer()
        if tracer is None:
            return await original(self, *args, **kwargs)
        kwargs, span = _start(tracer, operation, self, kwargs)
        started = time.monotonic()
        try:
            with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
                result = await original(self, *args, **kwargs)
        except BaseException as error:
            _finish(span, {}, error)
            raise
        return _record_result(span, operation, result, started)

    return create


def _start(tracer: Any, operation: str, resource: Any, kwargs: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    kwargs = dict(kwargs)
    messages = kwargs.get("messages")
    if messages is not None and not isinstance(messages, (list, tuple)):  # an iterator can only be read once
        kwargs["messages"] = list(messages)
    if tracer.request_token_ids:
        extra = dict(kwargs.get("extra_body") or {})
        extra.setdefault("return_token_ids", True)
        kwargs["extra_body"] = extra
    if tracer.request_logprobs and "logprobs" not in kwargs:
        kwargs["logprobs"] = True if operation == "chat" else 0
    attributes = _request_attributes(operation, kwargs, resource)
    name = f"{operation} {attributes.get(semconv.GEN_AI_REQUEST_MODEL, '')}".rstrip()
    span = tracer.otel_tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
    set_last_llm_call(f"{span.get_span_context().span_id:016x}")
    return kwargs, span


def _finish(span: Any, attributes: dict[str, Any], error: BaseException | None) -> None:
    if attributes:
        span.set_attributes(attributes)
    if error is not None and not isinstance(error, GeneratorExit):
        span.set_attributes({**exception_attributes(error), "error.type": type(error).__qualname__})
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    span.end()


def _record_result(span: Any, operation: str, result: Any, started: float) -> Any:
    """Record what ``create`` returned; a stream is wrapped so that its chunks are recorded as they are read."""
    value = result
    if type(result).__name__ == "LegacyAPIResponse":  # with_raw_response: the body is read; parse() is cached
        value = result.parse()
    iterator = getattr(value, "_iterator", None)
    if iterator is not None:
        record = _StreamRecord(operation, started)
        if hasattr(iterator, "__anext__"):
            value._iterator = _traced_async(iterator, span, record)
        else:
            value._iterator = _traced(iterator, span, record)
        _close_with(value, span, record)
    elif hasattr(value, "choices"):
        _finish(span, _response_attributes(operation, value), None)
    else:
        _finish(
            span,
            {
                semconv.LLM_RESPONSE_CAPTURED: False,
                semconv.LLM_NOT_CAPTURED_REASON: f"the call returned a {type(result).__name__}, which agl does not "
                f"read (with_streaming_response); use create() or with_raw_response",
            },
            None,
        )
    return result


def _close_with(stream: Any, span: Any, record: _StreamRecord) -> None:
    """Closing the stream (``close()``, leaving ``with``) ends the span at once, not when the stream is collected."""
    original = getattr(stream, "close", None)
    if original is None:
        return
    traced = stream._iterator
    if inspect.iscoroutinefunction(original):

        async def aclose() -> None:
            try:
                await original()
            finally:
                if not record.reading:  # never read: closing it would not run its `finally`
                    record.end(span, None)
                await traced.aclose()

        stream.close = aclose
    else:

        def close() -> None:
            try:
                original()
            finally:
                if not record.reading:
                    record.end(span, None)
                traced.close()

        stream.close = close


def _traced(iterator: Any, span: Any, record: _StreamRecord) -> Any:
    record.reading = True
    error: BaseException | None = None
    try:
        for chunk in iterator:
            record.add(chunk)
            yield chunk
    except BaseException as exc:
        error = exc
        raise
    finally:
        record.end(span, error)


async def _traced_async(iterator: Any, span: Any, record: _StreamRecord) -> Any:
    record.reading = True
    error: BaseException | None = None
    try:
        async for chunk in iterator:
            record.add(chunk)
            yield chunk
    except BaseException as exc:
        error = exc
        raise
    finally:
        record.end(span, error)


# ---------------------------------------------------------------------------------------------------- attributes
# The mapping itself is the kernel's (agl_kernel.llm_calls), shared with the LLM proxy; here SDK objects become
# the dicts it reads.


def _given(value: Any) -> bool:
    return value is not None and type(value).__name__ not in ("NotGiven", "Omit")


def _request_attributes(operation: str, kwargs: Mapping[str, Any], resource: Any) -> dict[str, Any]:
    attributes = request_attributes(operation, {k: v for k, v in kwargs.items() if _given(v)})
    base_url = getattr(getattr(resource, "_client", None), "base_url", None)
    if base_url is not None:
        url = urlsplit(str(base_url))
        if url.hostname:
            attributes["server.address"] = url.hostname
        if url.port:
            attributes["server.port"] = url.port
    return attributes


def _dump(obj: Any) -> dict[str, Any]:
    dump = getattr(obj, "model_dump", None)
    return dump(exclude_none=True) if callable(dump) else dict(obj)


def _response_attributes(operation: str, response: Any) -> dict[str, Any]:
    return response_attributes(operation, _dump(response))


class _StreamRecord:
    """What the chunks of a stream add up to (the kernel's accumulator), and when the first one came."""

    def __init__(self, operation: str, started: float) -> None:
        self.started = started
        self.first_chunk: float | None = None
        self.accumulator = StreamAccumulator(operation)
        self.reading = False
        self.ended = False

    def end(self, span: Any, error: BaseException | None) -> None:
        if not self.ended:
            self.ended = True
            _finish(span, self.attributes(), error)

    def add(self, chunk: Any) -> None:
        if self.first_chunk is None:
            self.first_chunk = time.monotonic()
        self.accumulator.add(_dump(chunk))

    def attributes(self) -> dict[str, Any]:
        attributes = self.accumulator.attributes()
        if self.first_chunk is not None:
            attributes[semconv.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] = self.first_chunk - self.started
        return attributes
