"""Waiting without polling, for checks that need I/O: a bell that counts its rings.

The kernel's ``Signal`` re-runs a synchronous check; here every check is a query, so a waiter notes the bell's
count *before* it queries, and sleeps only if nobody rang since: a ring between the query and the sleep is never
lost. Rings come from this process's own commits and from LISTEN/NOTIFY (other processes' commits), from any
thread; waiters may sit on different event loops.
"""

from __future__ import annotations

import asyncio
import threading


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Bell:
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
