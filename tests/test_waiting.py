"""agl_kernel.store.waiting: the Bell networked stores wake their waiters with, and the BackgroundLoop they listen on
(rings from other threads and other event loops, a ring between a waiter's query and its sleep never lost)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from agl_kernel.store.waiting import BackgroundLoop, Bell, Signal

pytestmark = pytest.mark.asyncio


async def test_a_ring_after_the_count_was_noted_is_not_lost() -> None:
    bell = Bell()
    seen = bell.count
    bell.ring()  # between the waiter's query and its sleep
    started = time.monotonic()
    await bell.wait(seen, timeout=30)
    assert time.monotonic() - started < 5 and bell.count == seen + 1


async def test_a_wait_ends_at_its_timeout_without_a_ring() -> None:
    bell = Bell()
    await bell.wait(bell.count, timeout=0.05)
    assert bell.count == 0


async def test_a_ring_from_a_background_loop_wakes_a_waiter_here() -> None:
    bell = Bell()
    background = BackgroundLoop("test-bell")
    try:
        seen = bell.count
        waiting = asyncio.ensure_future(bell.wait(seen, timeout=30))
        await asyncio.sleep(0.05)
        assert not waiting.done()

        async def ring() -> str:
            bell.ring()
            return threading.current_thread().name

        assert await asyncio.wrap_future(background.submit(ring())) == "test-bell"
        await asyncio.wait_for(waiting, 10)
    finally:
        background.stop()
    assert background.loop.is_closed()
    background.stop()  # twice is fine


async def test_stopping_a_background_loop_cancels_what_runs_there() -> None:
    background = BackgroundLoop("test-stop")
    cancelled = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    background.submit(forever())
    await asyncio.sleep(0.05)
    background.stop()
    assert cancelled.is_set()


async def test_a_signal_rechecks_after_each_notify() -> None:
    signal = Signal()
    box: list[int] = []
    waiting = asyncio.ensure_future(signal.wait_for(lambda: box[0] if box else None, timeout=30))
    await asyncio.sleep(0.05)
    threading.Thread(target=lambda: (box.append(7), signal.notify())).start()
    assert await asyncio.wait_for(waiting, 10) == 7
    assert await signal.wait_for(lambda: None, timeout=0.05) is None
