"""Prometheus metrics of one server app, in a registry of its own (several apps in one process never clash).

- ``agl_http_requests_total{method,route,status}`` and ``agl_http_request_duration_seconds{method,route}``: every
  request, by route template (``/api/v1/rollouts/{rollout_id}``), so ids never become labels. Requests that
  match no route count under ``route="<unmatched>"``.
- ``agl_store_operation_duration_seconds{operation}``: time spent in each store method (long polls included, under
  ``<operation>_wait``).
- ``agl_store_queue_depth``, ``agl_store_rollouts{status}``, ``agl_store_attempts{status}``, ``agl_store_spans``,
  ``agl_store_workers``: read from ``store.statistics()`` when ``/metrics`` is scraped.
- ``agl_otlp_spans_received_total``: spans stored through ``/v1/traces``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from agl_kernel.models import StoreStatistics

__all__ = ["CONTENT_TYPE_LATEST", "ServerMetrics"]

T = TypeVar("T")

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
UNMATCHED = "<unmatched>"


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "agl_http_requests", "HTTP requests served", ("method", "route", "status"), registry=self.registry
        )
        self._latency = Histogram(
            "agl_http_request_duration_seconds",
            "Time from receiving a request to the end of its response",
            ("method", "route"),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._store_latency = Histogram(
            "agl_store_operation_duration_seconds",
            "Time spent in a store method",
            ("operation",),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._queue_depth = Gauge("agl_store_queue_depth", "Rollouts waiting in the queue", registry=self.registry)
        self._rollouts = Gauge("agl_store_rollouts", "Rollouts by status", ("status",), registry=self.registry)
        self._attempts = Gauge("agl_store_attempts", "Attempts by status", ("status",), registry=self.registry)
        self._spans = Gauge("agl_store_spans", "Spans stored", registry=self.registry)
        self._workers = Gauge("agl_store_workers", "Workers known to the store", registry=self.registry)
        self.otlp_spans = Counter(
            "agl_otlp_spans_received", "Spans stored through OTLP /v1/traces", registry=self.registry
        )
        # Label lookups take a lock in prometheus_client; the children are cached here for the hot path.
        self._request_children: dict[tuple[str, str, int], Any] = {}
        self._latency_children: dict[tuple[str, str], Any] = {}
        self._store_children: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------------ recording

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self._requests.labels(method, route, str(status))
        counter.inc()
        lkey = (method, route)
        histogram = self._latency_children.get(lkey)
        if histogram is None:
            histogram = self._latency_children[lkey] = self._latency.labels(method, route)
        histogram.observe(seconds)

    def observe_store(self, operation: str, seconds: float) -> None:
        histogram = self._store_children.get(operation)
        if histogram is None:
            histogram = self._store_children[operation] = self._store_latency.labels(operation)
        histogram.observe(seconds)

    async def timed(self, operation: str, awaitable: Awaitable[T]) -> T:
        """Await a store call, recording how long it took."""
        started = time.perf_counter()
        try:
            return await awaitable
        finally:
            self.observe_store(operation, time.perf_counter() - started)

    def middleware(self, app: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        """ASGI middleware (litestar route middleware: it runs after routing, so the route template is known)."""

        async def record(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            status = 500

            async def send_and_note(message: Any) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_and_note)
            finally:
                route = scope.get("path_template") or UNMATCHED
                self.observe_request(scope["method"], route, status, time.perf_counter() - started)

        return record

    # ------------------------------------------------------------------------------------------------ exposition

    def render(self, stats: StoreStatistics) -> bytes:
        self._queue_depth.set(stats.queue_depth)
        for status, count in stats.rollouts_by_status.items():
            self._rollouts.labels(status).set(count)
        for status, count in stats.attempts_by_status.items():
            self._attempts.labels(status).set(count)
        self._spans.set(stats.total_spans)
        self._workers.set(stats.total_workers)
        return generate_latest(self.registry)
