"""Concurrent ``add_span`` calls of one event loop, written together: group commit on the client.

A span is the store's most frequent write (a rollout has tens of them), and each one committed alone costs a WAL
flush: on a server where a flush takes a millisecond, that caps the spans of all workers together at about a
thousand a second. The batcher sends the spans that arrive while a batch is being written as the next batch, in one
call and one commit, up to MAX_WRITING batches at once; a caller returns once its own span is committed. Nothing
waits to fill a batch: with one caller at a time every span goes alone, straight away.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import psycopg

from agl_kernel.models import Span

__all__ = ["SpanBatcher"]

MAX_BATCH = 256
"""Spans per call at most."""

MAX_WRITING = 4
"""Batches being written at once at most (each on its connection: the server's own group commit merges their
flushes). One at a time left spans of a few workers queueing behind each other's round trips (8 workers: 2.3×
slower on a loaded machine than 4 at a time; 16 at a time made smaller batches and was slower again)."""

Write = Callable[[Sequence[tuple[Span, bytes]]], Awaitable[list[Span | None]]]
"""Stores a batch: each span as stored, or ``None`` where the caller must take the general path."""


class SpanBatcher:
    """One per event loop; ``add`` returns the span as stored, or ``None`` for the general path."""

    def __init__(self, write: Write) -> None:
        self._write = write
        self._pending: list[tuple[Span, bytes, asyncio.Future[Span | None]]] = []
        self._writers: set[asyncio.Task[None]] = set()  # left by each writer itself as it ends (no await after)

    async def add(self, span: Span, blob: bytes) -> Span | None:
        future: asyncio.Future[Span | None] = asyncio.get_running_loop().create_future()
        self._pending.append((span, blob, future))
        if len(self._writers) < MAX_WRITING:
            self._writers.add(asyncio.ensure_future(self._flush()))
        return await future

    async def _flush(self) -> None:
        batch: list[tuple[Span, bytes, asyncio.Future[Span | None]]] = []
        try:
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                try:
                    stored = await self._write([(span, blob) for span, blob, _ in batch])
                except psycopg.Error:  # e.g. a span stored meanwhile, or a sequence id out of range:
                    stored = [None] * len(batch)  # each caller tries its own on the general path, which says
                except Exception as exc:  # the store's own errors (closed, unreachable): nothing was written
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, _, future), result in zip(batch, stored):
                    if not future.done():
                        future.set_result(result)
        except BaseException:  # cancelled with its loop: nobody may wait for ever
            for _, _, future in [*batch, *self._pending]:
                future.cancel()
            self._pending = []
            raise
        finally:
            self._writers.discard(asyncio.current_task())
