"""The store's own thread: an event loop with its own client, running the watchdog and the change-stream listener.

They must run whether or not anyone calls the store, and callers' event loops come and go (threads, ``asyncio.run``
per call), so they live on a loop of their own.

The listener watches the partition's rollouts collection and rings the store's bells: ``queue`` when a rollout
gets a queue ticket (enqueued, re-queued), ``ended`` when one reaches a terminal status. Events of this process's
own writes are skipped (its commits ring the bells directly). Where the server has no change streams (or they are
turned off, or the stream breaks), the listener rings both bells every ``poll_interval`` seconds instead, and tries
the stream again now and then; every time a stream (re)starts it rings both bells, for what it may have missed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pymongo.errors import PyMongoError

from agl_kernel.store.waiting import Bell
from agl_store_mongo._database import Collections
from agl_store_mongo._ops import TERMINAL

logger = logging.getLogger(__name__)

T = TypeVar("T")

_RETRY_STREAM_EVERY = 5.0
"""Seconds between attempts to (re)open the change stream while waiters poll."""
_REPEAT_FAILURE_EVERY = 60.0
"""Seconds between two log lines about the same failure of the watchdog."""


class Monitor:
    """The watchdog and the listener, as tasks on the background loop."""

    def __init__(
        self,
        cols: Collections,
        *,
        queue: Bell,
        ended: Bell,
        writer: str,
        change_streams: bool,
        poll_interval: float,
        watchdog_interval: float,
        check_deadlines: Callable[[float], Awaitable[int]],
    ) -> None:
        self._cols = cols
        self._queue = queue
        self._ended = ended
        self._writer = writer
        self._change_streams = change_streams
        self._poll_interval = poll_interval
        self._watchdog_interval = watchdog_interval
        self._check_deadlines = check_deadlines
        self._tasks: list[asyncio.Task[None]] = []
        self.streaming = False
        """Whether a change stream is open now (else waiters are rung every poll_interval)."""

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._listen()), asyncio.create_task(self._watchdog())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _ring_all(self) -> None:
        self._queue.ring()
        self._ended.ring()

    # ------------------------------------------------------------------------------------------------ listener

    async def _listen(self) -> None:
        warned = False
        while True:
            if self._change_streams:
                try:
                    await self._stream()
                except asyncio.CancelledError:
                    raise
                except PyMongoError as exc:
                    self.streaming = False
                    if not warned:
                        logger.warning(
                            "agl-store-mongo: no change stream on %s (%s); waiters check every %g s instead",
                            self._cols.rollouts.full_name, str(exc).splitlines()[0][:200], self._poll_interval,
                        )  # fmt: skip
                        warned = True
            await self._poll(_RETRY_STREAM_EVERY if self._change_streams else None)

    async def _stream(self) -> None:
        pipeline = [{"$match": {"operationType": {"$in": ["insert", "update", "replace"]}}}]
        async with await self._cols.rollouts.watch(pipeline) as stream:
            if not self.streaming:
                logger.debug("agl-store-mongo: change stream open on %s", self._cols.rollouts.full_name)
            self.streaming = True
            self._ring_all()  # whatever changed while nobody listened
            async for event in stream:
                self._on_event(event)

    def _on_event(self, event: dict[str, Any]) -> None:
        if event["operationType"] == "update":
            fields = event.get("updateDescription", {}).get("updatedFields", {})
        else:
            fields = event.get("fullDocument") or {}
        if fields.get("by") == self._writer:  # this process's own write: its commit rang already
            return
        if fields.get("ticket") is not None:
            self._queue.ring()
        if fields.get("status") in TERMINAL:
            self._ended.ring()

    async def _poll(self, duration: float | None) -> None:
        """Ring both bells every poll_interval seconds, for ``duration`` seconds (``None``: for ever)."""
        until = None if duration is None else time.monotonic() + duration
        while until is None or time.monotonic() < until:
            await asyncio.sleep(self._poll_interval)
            self._ring_all()

    # ------------------------------------------------------------------------------------------------ watchdog

    async def _watchdog(self) -> None:
        last_failure, next_report = "", 0.0
        while True:
            await asyncio.sleep(self._watchdog_interval)
            try:
                await self._check_deadlines(time.time())
                last_failure = ""
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep watching: a failed round is retried at the next one
                failure = f"{type(exc).__name__}: {exc}"
                if failure != last_failure:
                    logger.exception("agl-store-mongo: the watchdog failed; retrying")
                elif time.monotonic() >= next_report:
                    logger.error("agl-store-mongo: the watchdog still fails: %s", failure)
                else:
                    continue
                last_failure, next_report = failure, time.monotonic() + _REPEAT_FAILURE_EVERY
