"""The tracer interface, and the kernel's no-op tracer (entry point ``noop`` in ``agl.tracers``).

A tracer records what an agent does inside :meth:`Tracer.trace_context` as spans of one rollout attempt. The
context also makes the tracer *current* (a context variable), which is how the emitters of :mod:`agl_kernel.emit`
(``emit_reward``, ``operation``, ...) find it: they call :meth:`Tracer.start_span` / :meth:`Tracer.emit_span`.
The base class implements those by writing plain :class:`~agl_kernel.models.Span` objects to the store, so
emitters (and rewards) work with any tracer, the no-op one included; the OpenTelemetry tracer plugin
(``agl-tracer-otel``) makes them real OpenTelemetry spans instead.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import contextlib
import contextvars
import logging
import random
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any, TypeAlias

from agl_kernel.models import Span, SpanStatus

__all__ = [
    "NoOpTracer",
    "SpanHandle",
    "TraceScope",
    "Tracer",
    "current_scope",
    "exception_attributes",
    "new_span_id",
    "new_trace_id",
]

logger = logging.getLogger(__name__)

_SpanWrite: TypeAlias = "asyncio.Future[Span] | concurrent.futures.Future[Span]"
"""A span being written to the store: a task on the running loop, or a write handed to the scope's loop."""

_SCOPE: contextvars.ContextVar[TraceScope | None] = contextvars.ContextVar("agl_trace_scope", default=None)
_PARENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("agl_parent_span", default=None)
_active_lock = threading.Lock()
_active: dict[int, TraceScope] = {}  # every open trace context of the process, by id(scope)


def new_span_id() -> str:
    """A random, non-zero 64-bit span id as 16 lowercase hex digits (the OTLP/JSON form)."""
    return f"{random.getrandbits(64) or 1:016x}"


def new_trace_id() -> str:
    """A random, non-zero 128-bit trace id as 32 lowercase hex digits."""
    return f"{random.getrandbits(128) or 1:032x}"


class TraceScope:
    """One open trace context: where the spans of the code running inside it go."""

    __slots__ = (
        "attempt_id",
        "collect",
        "loop",
        "parent",
        "recorded",
        "rollout_id",
        "state",
        "store",
        "trace_id",
        "tracer",
    )

    def __init__(self, tracer: Tracer, rollout_id: str, attempt_id: str, store: Any, collect: bool) -> None:
        self.tracer = tracer
        self.rollout_id = rollout_id
        self.attempt_id = attempt_id
        self.store = store
        try:
            self.loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None
        self.trace_id = new_trace_id()
        self.collect = collect
        """Whether to keep the spans recorded here (for the ``agl_on_trace_end`` hook); tracers append them to
        :attr:`recorded` when this is true."""
        self.recorded: list[Any] = []
        self.state: Any = None
        """Free for the tracer's own per-attempt state."""
        self.parent: tuple[str, str] | None = None
        """``(trace id, span id)`` of the span that the spans recorded for this attempt outside the tracer (the
        runner's reward and exception spans) belong under: a tracer with a root span per attempt sets it."""

    def __repr__(self) -> str:
        return f"TraceScope(rollout_id={self.rollout_id!r}, attempt_id={self.attempt_id!r})"


def current_scope() -> TraceScope | None:
    """The trace context the calling code runs in, or ``None`` outside any.

    Asyncio tasks, ``asyncio.to_thread`` and ``contextvars.copy_context().run`` inherit the context. Code in a
    thread that does not (``threading.Thread``, ``loop.run_in_executor``, a ``ThreadPoolExecutor``) belongs to the
    process's only open trace context when exactly one is open; with several open it belongs to none (wrap the
    thread's function with ``contextvars.copy_context().run`` to carry the context over).
    """
    scope = _SCOPE.get()
    if scope is not None or not _active:
        return scope
    with _active_lock:
        if len(_active) == 1:
            return next(iter(_active.values()))
    return None


class SpanHandle(abc.ABC):
    """A span that has started and not ended yet (an ``operation``), as a tracer hands it to the emitters."""

    span_id: str

    @abc.abstractmethod
    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        """Add or replace attributes (values: str, bool, int, float, or lists of one of those)."""

    @abc.abstractmethod
    def end(self, error: BaseException | None = None) -> None:
        """End the span (with status ERROR and the exception's attributes when ``error`` is given). It stops being
        the parent of new spans. Ending twice is harmless."""


class Tracer(abc.ABC):
    """Turns what an agent does inside a rollout attempt into spans stored under that attempt.

    Subclasses implement :meth:`recording`; :meth:`trace_context` wraps it, makes the tracer current for the
    emitters and calls the ``agl_on_trace_start`` / ``agl_on_trace_end`` hooks.
    """

    @contextlib.contextmanager
    def trace_context(self, *, rollout_id: str, attempt_id: str, store: Any) -> Iterator[TraceScope]:
        """A context inside which everything the agent does is recorded for ``(rollout_id, attempt_id)``.

        Enter and leave it in the same thread and task (a ``with`` block). Spans that end after it closes may be
        lost; call :meth:`flush` after it to have every span stored.
        """
        from agl_kernel.plugins import call_hook

        hook = _trace_hooks()
        scope = TraceScope(self, rollout_id, attempt_id, store, collect=hook is not None and hook[1])
        if hook is not None:
            call_hook("agl_on_trace_start", rollout_id=rollout_id, attempt_id=attempt_id, tracer=self)
        token = _SCOPE.set(scope)
        with _active_lock:
            _active[id(scope)] = scope
        try:
            with self.recording(scope):
                yield scope
        finally:
            with _active_lock:
                _active.pop(id(scope), None)
            _SCOPE.reset(token)
            if hook is not None:
                call_hook(
                    "agl_on_trace_end",
                    rollout_id=rollout_id,
                    attempt_id=attempt_id,
                    tracer=self,
                    spans=list(scope.recorded),
                )

    @abc.abstractmethod
    def recording(self, scope: TraceScope) -> contextlib.AbstractContextManager[Any]:
        """Record everything the agent does while this context is open, as spans of ``scope``'s attempt."""

    async def flush(self) -> None:
        """Store every span captured so far; the runner calls it before marking an attempt done.

        The base class waits for the spans its :meth:`start_span` / :meth:`emit_span` wrote.
        """
        pending = self.__dict__.get("_agl_pending")
        while pending:
            futures = list(pending)
            await asyncio.gather(*(_awaitable(f) for f in futures), return_exceptions=True)
            pending.difference_update(futures)

    # -------------------------------------------------------------------------------------------- emitter protocol

    def start_span(
        self, scope: TraceScope, name: str, attributes: Mapping[str, Any], *, current: bool = True
    ) -> SpanHandle:
        """Start a span of ``scope``'s attempt, a child of the current span; with ``current`` it is the parent of
        the spans started in this context until it ends. The base class writes a plain span to the store when it
        ends; tracer plugins make a span of their own kind."""
        return _DirectSpan(self, scope, name, attributes, current)

    def emit_span(
        self, scope: TraceScope, name: str, attributes: Mapping[str, Any], *, error: BaseException | None = None
    ) -> str:
        """Record an instant span (a reward, a message, an object, an exception); returns its span id."""
        handle = self.start_span(scope, name, attributes, current=False)
        handle.end(error)
        return handle.span_id

    def _write_direct(self, scope: TraceScope, span: Span) -> None:
        """Write ``span`` to the store without blocking the caller (any thread, with or without a loop)."""
        if scope.collect:
            scope.recorded.append(span)
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        future: _SpanWrite
        if running is not None and (scope.loop is None or running is scope.loop):
            future = running.create_task(scope.store.add_span(span))
        elif scope.loop is not None and not scope.loop.is_closed() and scope.loop.is_running():
            future = asyncio.run_coroutine_threadsafe(scope.store.add_span(span), scope.loop)
        else:  # no event loop anywhere: write now
            asyncio.run(scope.store.add_span(span))
            return
        pending: set[_SpanWrite] = self.__dict__.setdefault("_agl_pending", set())
        pending.add(future)
        future.add_done_callback(_log_failed_write)
        future.add_done_callback(pending.discard)


class NoOpTracer(Tracer):
    """Records nothing by itself. The default when no tracer plugin is chosen; the emitters still write their
    spans (rewards, messages, operations) straight to the store, and runners store returned rewards themselves."""

    def recording(self, scope: TraceScope) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------------- helpers


class _DirectSpan(SpanHandle):
    """A span the base tracer writes to the store itself when it ends."""

    __slots__ = ("_attributes", "_ended", "_name", "_parent", "_scope", "_start", "_token", "_tracer", "span_id")

    def __init__(self, tracer: Tracer, scope: TraceScope, name: str, attributes: Mapping[str, Any], current: bool):
        self.span_id = new_span_id()
        self._tracer = tracer
        self._scope = scope
        self._name = name
        self._attributes = dict(attributes)
        self._parent = _PARENT.get()
        self._start = time.time()
        self._token = _PARENT.set(self.span_id) if current else None
        self._ended = False

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        self._attributes.update(attributes)

    def end(self, error: BaseException | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        if self._token is not None:
            try:
                _PARENT.reset(self._token)
            except ValueError:  # ended in another context than it started in: that context keeps its own parent
                pass
        status = SpanStatus(status_code="OK")
        if error is not None:
            self._attributes.update(exception_attributes(error))
            status = SpanStatus(status_code="ERROR", description=f"{type(error).__name__}: {error}")
        span = Span(
            rollout_id=self._scope.rollout_id,
            attempt_id=self._scope.attempt_id,
            trace_id=self._scope.trace_id,
            span_id=self.span_id,
            parent_id=self._parent,
            name=self._name,
            status=status,
            attributes=self._attributes,
            start_time=self._start,
            end_time=time.time(),
        )
        self._tracer._write_direct(self._scope, span)


def exception_attributes(error: BaseException) -> dict[str, str]:
    """The OpenTelemetry ``exception.*`` attributes of ``error`` (type, message, stack trace)."""
    import traceback

    from agl_kernel import semconv

    return {
        semconv.EXCEPTION_TYPE: type(error).__qualname__,
        semconv.EXCEPTION_MESSAGE: str(error),
        semconv.EXCEPTION_STACKTRACE: "".join(traceback.format_exception(type(error), error, error.__traceback__)),
    }


def _awaitable(future: _SpanWrite) -> Any:
    return asyncio.wrap_future(future) if isinstance(future, concurrent.futures.Future) else future


def _log_failed_write(future: _SpanWrite) -> None:
    if future.cancelled():
        return
    error = future.exception()
    if error is not None:
        logger.warning("agl could not store an emitted span: %s: %s", type(error).__name__, error)


def _trace_hooks() -> tuple[Any, bool] | None:
    """The pluggy hook relay and whether anyone implements ``agl_on_trace_end``, or ``None`` when no plugin
    implements either trace hook (the common case: nothing to call, no spans to keep)."""
    from agl_kernel.plugins import get_plugin_manager

    relay = get_plugin_manager().hook
    wants_end = bool(relay.agl_on_trace_end.get_hookimpls())
    if not wants_end and not relay.agl_on_trace_start.get_hookimpls():
        return None
    return relay, wants_end
