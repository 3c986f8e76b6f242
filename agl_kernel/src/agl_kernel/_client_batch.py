"""Coalescing of short calls for :class:`agl_kernel.client.LightningStoreClient` (``POST /api/v1/batch``).

A call made while ``max_in_flight`` batches are on the wire waits for the next batch instead of sending a request
of its own; a batch goes as soon as a slot frees up (no timer, so a lone caller pays no delay). The server runs a
batch's calls concurrently and answers one result per call, so each caller gets its own result or its own error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

__all__ = ["Batcher"]

Item = TypeVar("Item")


class Batcher(Generic[Item]):
    """Belongs to one event loop (the client keeps one per loop). ``send(items)`` answers one outcome per item: a
    result, or an exception to raise in that item's caller."""

    def __init__(
        self,
        send: Callable[[list[Item]], Awaitable[list[Any]]],
        max_batch: int = 1000,
        max_in_flight: int = 1,
    ) -> None:
        self._send = send
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._pending: list[tuple[Item, asyncio.Future[Any]]] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed_error: BaseException = RuntimeError("the batch was cancelled")

    async def submit(self, item: Item) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._in_flight < self._max_in_flight:
            self._flush()
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
        self._in_flight += 1
        task = asyncio.ensure_future(self._deliver(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, batch: list[tuple[Item, asyncio.Future[Any]]]) -> None:
        try:
            outcomes = await self._send([item for item, _ in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"the server answered {len(outcomes)} results for a batch of {len(batch)} calls")
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
        except BaseException as exc:
            error = exc if isinstance(exc, Exception) else self._closed_error
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._in_flight -= 1
            if self._pending and self._in_flight < self._max_in_flight:
                self._flush()

    def fail_pending(self, error: BaseException) -> None:
        """Fail the calls waiting for a batch and stop the batches on the wire (the client is closing).
        Safe to call from another thread than the batcher's loop."""
        self._closed_error = error
        pending, self._pending = self._pending, []
        try:
            for _, future in pending:
                future.get_loop().call_soon_threadsafe(_fail, future, error)
            for task in list(self._tasks):
                task.get_loop().call_soon_threadsafe(task.cancel)
        except RuntimeError:  # that event loop has closed: nobody is waiting there any more
            pass


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
