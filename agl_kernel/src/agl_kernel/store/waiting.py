"""Push-based waiting: wake asyncio waiters on any event loop, from any thread, without polling."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import TypeVar

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
                except RuntimeError:  # that loop has closed; nobody is waiting there any more
                    pass

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
