"""The span processor: notes the rollout and attempt of every span started in a trace context, and writes the
spans to the store in batches from a background thread, off the agent's hot path.

The agent's thread does little per span: a context-variable read and a dict insert when the span starts, a dict
pop and a deque append when it ends. Everything else (conversion, the store write or the OTLP
request) happens on the ``agl-otel-writer`` thread, which wakes every ``schedule_delay`` seconds or as soon as
``max_batch`` spans wait. Spans are written in the order they ended; a flush marker put in the same queue is
released only once everything queued before it has been written, which is how ``flush()`` keeps its promise.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace import Span as SdkSpan

from agl_kernel import semconv
from agl_kernel.tracer import TraceScope, current_scope
from agl_tracer_otel._convert import to_span

logger = logging.getLogger(__name__)

Item = tuple[ReadableSpan, TraceScope]
WAKE_AT = 64
"""Queued spans that wake the writer before its schedule: spans leave the agent's heap soon (see OtelTracer's
docs on batching), while a writer that falls behind still writes up to ``max_batch`` spans per call."""
YIELD_EVERY = 32
"""Spans the writer converts before it offers the GIL to other threads."""


class Sink:
    """Where batches go; ``write`` runs on the writer thread only."""

    def write(self, items: Sequence[Item]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class StoreSink(Sink):
    """Writes to store objects of this process (``add_many_spans``) on an event loop of the writer thread; the
    stores are thread-safe (``capabilities.thread_safe``), so this loop may use them alongside the agent's."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def write(self, items: Sequence[Item]) -> None:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        by_store: dict[int, tuple[Any, list]] = {}
        for n, (span, scope) in enumerate(items, 1):
            by_store.setdefault(id(scope.store), (scope.store, []))[1].append(
                to_span(span, scope.rollout_id, scope.attempt_id)
            )
            if n % YIELD_EVERY == 0:
                time.sleep(0)  # let the agent's threads have the GIL: they wait for it otherwise (up to 5 ms)
        for store, spans in by_store.values():
            try:
                self._loop.run_until_complete(store.add_many_spans(spans))
            except Exception:
                self._write_by_attempt(store, spans)

    def _write_by_attempt(self, store: Any, spans: list) -> None:
        assert self._loop is not None
        by_attempt: dict[tuple[str, str], list] = {}
        for span in spans:
            by_attempt.setdefault((span.rollout_id, span.attempt_id), []).append(span)
        for (rollout_id, attempt_id), group in by_attempt.items():
            try:
                self._loop.run_until_complete(store.add_many_spans(group))
            except Exception as err:
                logger.warning(
                    "agl could not store %d spans of rollout %s attempt %s: %s: %s",
                    len(group),
                    rollout_id,
                    attempt_id,
                    type(err).__name__,
                    err,
                )

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None


class OtlpSink(Sink):
    """Sends batches to a store server's OTLP/HTTP endpoint (``<url>/v1/traces``, JSON bodies); the server reads
    the ``agl.rollout_id`` / ``agl.attempt_id`` resource attributes and assigns sequence ids in arrival order."""

    def __init__(self, url: str, *, headers: dict[str, str] | None = None, timeout: float = 30.0) -> None:
        from agl_tracer_otel._otlp import OtlpJsonClient

        self._client = OtlpJsonClient(url, headers=headers, timeout=timeout)
        self.endpoint = self._client.endpoint

    def write(self, items: Sequence[Item]) -> None:
        from agl_tracer_otel._otlp import encode

        self._client.send(encode([(span, scope.rollout_id, scope.attempt_id) for span, scope in items]), len(items))

    def close(self) -> None:
        self._client.close()


class _Marker:
    """A flush request: ``done`` runs once everything queued before it has been written."""

    __slots__ = ("done",)

    def __init__(self, done: Callable[[], None]) -> None:
        self.done = done


class BatchWriter(SpanProcessor):
    """Records the spans started inside ``owner``'s trace contexts and writes them in batches to each context's sink
    (``scope.state``)."""

    def __init__(
        self, owner: Any, resource: Resource, *, max_batch: int, schedule_delay: float, max_queue: int
    ) -> None:
        if max_batch < 1 or max_queue < max_batch or schedule_delay <= 0:
            raise ValueError(
                f"need max_batch >= 1, max_queue >= max_batch and schedule_delay > 0; got max_batch={max_batch}, "
                f"max_queue={max_queue}, schedule_delay={schedule_delay}"
            )
        self._owner = owner
        self._resource = resource
        self._max_batch = max_batch
        self._wake_at = min(max_batch, WAKE_AT)
        self._max_queue = max_queue
        self._delay = schedule_delay
        self._open: dict[int, TraceScope] = {}  # span id -> the trace context it started in
        self._queue: deque = deque()
        self._wake = threading.Event()
        self._closed = False
        self._sinks: list[Sink] = []
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="agl-otel-writer", daemon=True)
        self._thread.start()

    def add_sink(self, sink: Sink) -> Sink:
        self._sinks.append(sink)
        return sink

    # ------------------------------------------------------------------------------------------ agent's thread

    def on_start(self, span: SdkSpan, parent_context: Context | None = None) -> None:
        scope = current_scope()
        if scope is None or scope.tracer is not self._owner or self._closed:
            return
        if span.resource is not self._resource:
            # A span of another provider (the application's, when attached to it): tag it, so that the
            # application's own exporters see where it belongs. Our own spans are placed by the writer thread.
            span.set_attributes({semconv.ROLLOUT_ID: scope.rollout_id, semconv.ATTEMPT_ID: scope.attempt_id})
        self._open[span.context.span_id] = scope

    def on_end(self, span: ReadableSpan) -> None:
        scope = self._open.pop(span.context.span_id, None)
        if scope is None:
            return
        if scope.collect:
            scope.recorded.append(span)
        queue = self._queue
        queue.append((span, scope))
        if len(queue) >= self._wake_at:
            if not self._wake.is_set():
                self._wake.set()
            if len(queue) >= self._max_queue:
                self._wait_for_room()

    def _wait_for_room(self) -> None:
        """Backpressure instead of loss: a producer far ahead of the store waits (up to 60 s) for the writer."""
        if threading.current_thread() is self._thread:
            return
        deadline = time.monotonic() + 60
        while len(self._queue) >= self._max_queue and self._thread.is_alive() and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.001)

    async def flush_async(self) -> None:
        """Return once every span that ended before the call is stored."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def settle() -> None:
            if not future.done():
                future.set_result(None)

        def release() -> None:
            try:
                loop.call_soon_threadsafe(settle)
            except RuntimeError:  # the caller's loop has closed: nobody is waiting
                pass

        if not self._enqueue_marker(release):
            return
        await future

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        done = threading.Event()
        if not self._enqueue_marker(done.set):
            return True
        return done.wait(timeout_millis / 1000)

    def _enqueue_marker(self, done: Callable[[], None]) -> bool:
        if not self._thread.is_alive():
            return False
        self._queue.append(_Marker(done))
        self._wake.set()
        return True

    def shutdown(self) -> None:
        """Write what is queued, stop the writer thread and close the sinks. Later spans are ignored."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=60)

    # ------------------------------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        while True:
            self._wake.wait(self._delay)
            self._wake.clear()
            try:
                self._drain()
            except Exception:
                logger.exception("agl's span writer failed on a batch")
            if self._closed and not self._queue:
                break
        for sink in self._sinks:
            try:
                sink.close()
            except Exception:
                logger.exception("agl's span writer could not close %r", sink)

    def _drain(self) -> None:
        queue = self._queue
        batch: list[Item] = []
        while queue:
            item = queue.popleft()
            if type(item) is _Marker:
                self._write(batch)
                batch = []
                item.done()
                continue
            batch.append(item)
            if len(batch) >= self._max_batch:
                self._write(batch)
                batch = []
        self._write(batch)

    def _write(self, batch: list[Item]) -> None:
        if not batch:
            return
        by_sink: dict[int, tuple[Sink, list[Item]]] = {}
        for item in batch:
            sink = item[1].state
            by_sink.setdefault(id(sink), (sink, []))[1].append(item)
        for sink, items in by_sink.values():
            try:
                sink.write(items)
            except Exception:
                logger.exception("agl could not write %d spans through %r", len(items), sink)
            else:
                self.written += len(items)
