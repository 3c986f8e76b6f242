"""Push-based waiting: wake asyncio waiters on any event loop, from any thread, without polling (public: store
backends use it).

- :class:`Signal` re-runs a synchronous check after every notify (the in-memory store's waits).
- :class:`Bell` counts its rings, for checks that need I/O: a waiter notes the count *before* it queries and
  sleeps only if nobody rang since, so a ring between the query and the sleep is never lost. A networked backend
  rings it from its own commits and from what tells it of other processes' (a change stream, LISTEN/NOTIFY).
- :class:`BackgroundLoop`: an event loop on a daemon thread, where such a backend runs its listener and watchdog.
- :func:`claim_waiting` and :func:`wait_until_ended`: the two waits of the contract (a dequeue with a timeout,
  ``wait_for_rollouts``) written once over a bell and the backend's queries.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

__all__ = ["BackgroundLoop", "Bell", "Signal", "claim_waiting", "wait_until_ended"]

T = TypeVar("T")


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Signal:
    """A broadcast: ``notify()`` wakes every waiter that registered before it.

    Waiters register *before* they check their condition, so a notify between the check and the wait is never
    lost. Safe to notify from any thread; waiters may sit on different event loops.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[asyncio.Future[None], asyncio.AbstractEventLoop] = {}

    def notify(self) -> None:
        if not self._waiters:  # racy read is fine: a waiter registering now re-checks its condition first
            return
        with self._lock:
            waiters, self._waiters = self._waiters, {}
        _wake_all(waiters)

    async def wait_for(self, check: Callable[[], T | None], timeout: float | None) -> T | None:
        """Return ``check()``'s first non-``None`` result, re-checking after every notify, or ``None`` once
        ``timeout`` seconds (``None`` = forever) have passed."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            fut = loop.create_future()
            with self._lock:
                self._waiters[fut] = loop
            try:
                result = check()
                if result is not None:
                    return result
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                await asyncio.wait((fut,), timeout=remaining)
            finally:
                with self._lock:
                    self._waiters.pop(fut, None)


def _wake_all(waiters: dict[asyncio.Future[None], asyncio.AbstractEventLoop]) -> None:
    try:
        current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        current = None
    for fut, loop in waiters.items():
        if loop is current:
            _wake(fut)
        else:
            try:
                loop.call_soon_threadsafe(_wake, fut)
            except RuntimeError:  # that loop has closed; nobody waits there any more
                pass


class Bell:
    """A bell that counts its rings: ``wait(seen, timeout)`` returns once it rang after it showed ``seen``.

    Ring from any thread; waiters may sit on different event loops."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._waiters: dict[asyncio.Future[None], asyncio.AbstractEventLoop] = {}

    @property
    def count(self) -> int:
        return self._count

    def ring(self) -> None:
        with self._lock:
            self._count += 1
            waiters, self._waiters = self._waiters, {}
        _wake_all(waiters)

    async def wait(self, seen: int, timeout: float | None) -> None:
        """Return once the bell rang after it showed ``seen``, or after ``timeout`` seconds (``None``: no limit)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._count != seen:
                return
            self._waiters[fut] = loop
        try:
            await asyncio.wait((fut,), timeout=timeout)
        finally:
            with self._lock:
                self._waiters.pop(fut, None)


class BackgroundLoop:
    """An event loop on a daemon thread; coroutines are submitted to it from any thread. ``stop()`` cancels what
    still runs there and closes the loop."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self, timeout: float = 10.0) -> None:
        if self.loop.is_closed():
            return
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:  # closed meanwhile
            return
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)


async def claim_waiting(
    bell: Bell,
    claim: Callable[[], Awaitable[list[T]]],
    has_work: Callable[[], Awaitable[bool]],
    timeout: float,
    closed: Callable[[], bool],
) -> list[T]:
    """A dequeue that waits: ``claim()`` now, and while it takes nothing, sleep on ``bell`` (rung when work may
    have arrived) and try again once ``has_work()`` says the queue holds something, until ``timeout`` seconds
    have passed or ``closed()``. A claim that loses to another worker looks again at once."""
    taken = await claim()
    if taken or timeout <= 0:
        return taken
    deadline = time.monotonic() + timeout
    while True:
        seen = bell.count
        if closed():
            return []
        if await has_work():
            taken = await claim()
            if taken:
                return taken
            continue  # another worker was faster: look again
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return []
        await bell.wait(seen, remaining)


async def wait_until_ended(
    bell: Bell,
    ended_among: Callable[[list[str]], Awaitable[Mapping[str, T]]],
    wanted: Sequence[str],
    timeout: float | None,
    closed: Callable[[], bool],
) -> list[T]:
    """``wait_for_rollouts`` over a bell rung when rollouts may have ended: ``ended_among(ids)`` returns those of
    ``ids`` that are in a terminal status now (id → rollout). Only the ids not seen ended yet are asked again
    after each ring; once all were seen, all are confirmed together (one may have been queued again meanwhile).
    Returns the ended ones in the order of ``wanted``, at the latest after ``timeout`` seconds (``None``: none)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    ended: dict[str, T] = {}
    remaining = list(wanted)
    while True:
        seen = bell.count
        if closed():
            break
        newly = await ended_among(remaining)
        ended.update(newly)
        remaining = [r for r in remaining if r not in newly]
        if not remaining:
            ended = dict(await ended_among(list(wanted)))
            remaining = [r for r in wanted if r not in ended]
            if not remaining:
                break
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            break
        await bell.wait(seen, left)
    return [ended[r] for r in wanted if r in ended]
