"""What the routes share (:class:`ServerContext`), and long polls: waiting routes run the store's own push-based
waiting in slices of ``poll_slice`` seconds, so that a request ends promptly when the server shuts down or the
client goes away."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from litestar import Request

from agl_kernel.server._metrics import ServerMetrics
from agl_kernel.store.base import LightningStore

__all__ = ["ServerContext", "long_poll", "user_id"]

T = TypeVar("T")


@dataclass
class ServerContext:
    """What the routes share: the store, the metrics, and the long-poll settings."""

    store: LightningStore
    metrics: ServerMetrics
    max_wait: float = 60.0
    poll_slice: float = 1.0
    draining: bool = False
    """Set when shutdown begins: long polls return what they have at the end of their current slice."""
    token_required: bool = False
    """Whether requests need the bearer token (the OpenAPI document declares it then)."""
    extra: dict[str, Any] = field(default_factory=dict)


def user_id(raw: str) -> str:
    """A ``{name:path}`` parameter arrives with its leading slash."""
    return raw.removeprefix("/")


async def _disconnected(request: Request[Any, Any, Any]) -> None:
    """Return when the client closes the connection (the body has been read, so nothing else arrives)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def long_poll(
    ctx: ServerContext,
    request: Request[Any, Any, Any],
    operation: str,
    poll: Callable[[float], Awaitable[T]],
    done: Callable[[T], bool],
    timeout: float | None,
    on_abandoned: Callable[[T], Awaitable[None]] | None = None,
) -> T:
    """``poll(seconds)`` in slices until ``done(result)``, the timeout, shutdown or the client's disconnect."""
    limit = ctx.max_wait if timeout is None else min(timeout, ctx.max_wait)
    if limit <= 0:
        return await ctx.metrics.timed(operation, poll(0.0))
    deadline = time.monotonic() + limit
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        while True:
            remaining = deadline - time.monotonic()
            result = await ctx.metrics.timed(f"{operation}_wait", poll(max(0.0, min(remaining, ctx.poll_slice))))
            if watcher.done() and on_abandoned is not None and done(result):
                await on_abandoned(result)
                return result
            if done(result) or remaining <= ctx.poll_slice or ctx.draining or watcher.done():
                return result
    finally:
        watcher.cancel()
