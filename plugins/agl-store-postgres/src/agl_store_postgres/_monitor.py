"""The store's own thread: an event loop running the watchdog and the LISTEN/NOTIFY listener.

They must run whether or not anyone calls the store, and callers' event loops come and go (threads, ``asyncio.run``
per call), so they live on a loop of their own.

The listener holds one dedicated connection and rings the store's bells: ``queue`` when another process queued a
rollout, ``ended`` when one ended a rollout (this process's own commits ring them directly). It LISTENs on a channel
only while something in this process waits on it (:meth:`Monitor.waiting`) and for ``_LINGER`` seconds after:
otherwise every enqueue and every ended rollout of every process (this one's included) would reach this process, a
wake-up of its thread for nothing, two per rollout in a process that never waits. While it listens it is registered
in the schema's ``listeners`` table: senders NOTIFY only when someone is (``agl_notify``). A channel's bell is rung
once its LISTEN and registration are in effect, so a waiter that checked before that checks again. When that
connection drops (a restarting server, a network cut), waiters are rung every ``poll_interval`` seconds while the
listener reconnects; every time it (re)connects it rings both bells, for what it may have missed. With ``notify``
off, waiters are rung every ``poll_interval`` seconds for ever.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import psycopg
from psycopg import sql

from agl_kernel.store.waiting import Bell
from agl_store_postgres._database import channels, connect
from agl_store_postgres._errors import PostgresStoreError, redact

logger = logging.getLogger(__name__)

T = TypeVar("T")

_RECONNECT_EVERY = 1.0
"""Seconds between attempts to reconnect the listener while waiters poll."""
_CHECK_EVERY = 5.0
"""Seconds without a notification after which the listener checks that its connection is alive."""
_REPEAT_FAILURE_EVERY = 60.0
"""Seconds between two log lines about the same failure of the watchdog."""
_LINGER = 10.0
"""Seconds a channel stays listened to after its last waiter left (a process that waits now and then does not
LISTEN and UNLISTEN each time)."""


class Monitor:
    """The watchdog and the listener, as tasks on the background loop."""

    def __init__(
        self,
        dsn: str,
        schema: str,
        *,
        queue: Bell,
        ended: Bell,
        notify: bool,
        connect_timeout: float,
        poll_interval: float,
        watchdog_interval: float,
        check_deadlines: Callable[[float], Awaitable[int]],
    ) -> None:
        self._dsn = dsn
        self._schema = schema
        self._queue = queue
        self._ended = ended
        self._notify = notify
        self._connect_timeout = connect_timeout
        self._poll_interval = poll_interval
        self._watchdog_interval = watchdog_interval
        self._check_deadlines = check_deadlines
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._bells = dict(zip(channels(schema), (queue, ended)))
        self._lock = threading.Lock()
        self._waiters = dict.fromkeys(self._bells, 0)
        self._left = dict.fromkeys(self._bells, -_LINGER)  # when each channel's last waiter left (monotonic)
        self._listened: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None  # set (on the background loop) when a channel is wanted
        self.listening = False
        """Whether the listener's connection is up now (else waiters are rung every poll_interval)."""
        self.connection_pid: int | None = None
        """The server process id of the listener's connection (tests end it to check the reconnection)."""

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._tasks = [asyncio.create_task(self._listen()), asyncio.create_task(self._watchdog())]

    @contextmanager
    def waiting(self, channel: str) -> Iterator[None]:
        """Something of this process waits on ``channel`` (from any thread): it is listened to until
        ``_LINGER`` seconds after the last waiter left. Enter before the wait's first check."""
        with self._lock:
            self._waiters[channel] += 1
            wanted = channel not in self._listened
        if wanted and self._notify and self._loop is not None and self._changed is not None:
            try:
                self._loop.call_soon_threadsafe(self._changed.set)
            except RuntimeError:  # the store's loop has closed: nothing listens any more, waiters poll
                pass
        try:
            yield
        finally:
            with self._lock:
                self._waiters[channel] -= 1
                self._left[channel] = time.monotonic()

    async def stop(self) -> None:
        # The flag too, not only the cancellation: psycopg's notifies() can end quietly when it is cancelled while
        # waiting, and the listener would then carry on (seen: a store's close() waiting for ever).
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _ring_all(self) -> None:
        self._queue.ring()
        self._ended.ring()

    # ------------------------------------------------------------------------------------------------ listener

    async def _listen(self) -> None:
        warned = False
        while not self._stopping:
            if self._notify:
                try:
                    await self._listen_once()
                except asyncio.CancelledError:
                    raise
                except (psycopg.Error, PostgresStoreError, OSError) as exc:
                    if not warned:
                        logger.warning(
                            "agl-store-postgres: the listener's connection to %s is down (%s); waiters check every "
                            "%g s while it reconnects", redact(self._dsn), str(exc).splitlines()[0][:200] if str(exc)
                            else type(exc).__name__, self._poll_interval,
                        )  # fmt: skip
                        warned = True
                finally:
                    self.listening = False
                    self.connection_pid = None
                if self._stopping:
                    return
            await self._poll(_RECONNECT_EVERY if self._notify else None)

    async def _listen_once(self) -> None:
        assert self._changed is not None
        conn = await connect(self._dsn, self._connect_timeout, keepalives=1, keepalives_idle=5,
                             keepalives_interval=2, keepalives_count=3)  # fmt: skip
        async with conn:
            with self._lock:
                self._listened = set()
            self.connection_pid = conn.info.backend_pid
            if not self.listening:
                logger.debug("agl-store-postgres: connected the listener to %s", redact(self._dsn))
            self.listening = True
            self._ring_all()  # whatever changed while nobody listened
            while not self._stopping:
                self._changed.clear()
                await self._follow_waiters(conn)
                # Relay notifications until a channel is wanted that is not listened to yet, or a quiet while.
                waits: list[asyncio.Future[object]] = [asyncio.ensure_future(self._changed.wait())]
                if self._listened:
                    waits.append(asyncio.ensure_future(self._relay(conn)))
                try:
                    done, _ = await asyncio.wait(waits, timeout=_CHECK_EVERY, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in waits:
                        task.cancel()
                    await asyncio.gather(*waits, return_exceptions=True)
                for task in done:
                    task.result()  # the relay's error: the connection is gone
                if not done:
                    await conn.execute("SELECT 1")  # a quiet while: is the connection still there?

    async def _follow_waiters(self, conn: psycopg.AsyncConnection[object]) -> None:
        """LISTEN on the channels waited on, UNLISTEN those nobody waited on for ``_LINGER`` seconds."""
        now = time.monotonic()
        with self._lock:
            wanted = {c for c, n in self._waiters.items() if n > 0 or now - self._left[c] < _LINGER}
            dropped = self._listened - wanted
            self._listened -= dropped  # a waiter arriving from now on asks for it again
        listeners = sql.Identifier(self._schema, "listeners")
        for channel in sorted(wanted - self._listened):
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            # Senders notify only while a listener is registered (agl_notify): the exclusive lock waits for those
            # that looked before, and the ring below comes after their commits.
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (channel,))
                await conn.execute(
                    sql.SQL(
                        "DELETE FROM {} l WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = l.pid)"
                    ).format(listeners)
                )  # listeners of processes gone
                register = "INSERT INTO {} (channel, pid) VALUES (%s, pg_backend_pid()) ON CONFLICT DO NOTHING"
                await conn.execute(sql.SQL(register).format(listeners), (channel,))
            with self._lock:
                self._listened.add(channel)
            self._bells[channel].ring()  # a waiter that checked before the LISTEN took effect checks again
        for channel in sorted(dropped):
            await conn.execute(
                sql.SQL("DELETE FROM {} WHERE channel = %s AND pid = pg_backend_pid()").format(listeners), (channel,)
            )
            await conn.execute(sql.SQL("UNLISTEN {}").format(sql.Identifier(channel)))

    async def _relay(self, conn: psycopg.AsyncConnection[object]) -> None:
        async for note in conn.notifies():
            bell = self._bells.get(note.channel)
            if bell is not None:
                bell.ring()

    async def _poll(self, duration: float | None) -> None:
        """Ring both bells every poll_interval seconds, for ``duration`` seconds (``None``: for ever)."""
        until = None if duration is None else time.monotonic() + duration
        while until is None or time.monotonic() < until:
            await asyncio.sleep(min(self._poll_interval, duration or self._poll_interval))
            self._ring_all()

    # ------------------------------------------------------------------------------------------------ watchdog

    async def _watchdog(self) -> None:
        last_failure, next_report = "", 0.0
        while not self._stopping:
            await asyncio.sleep(self._watchdog_interval)
            try:
                await self._check_deadlines(time.time())
                last_failure = ""
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep watching: a failed round is retried at the next one
                failure = f"{type(exc).__name__}: {exc}"
                if failure != last_failure:
                    logger.exception("agl-store-postgres: the watchdog failed; retrying")
                elif time.monotonic() >= next_report:
                    logger.error("agl-store-postgres: the watchdog still fails: %s", failure)
                else:
                    continue
                last_failure, next_report = failure, time.monotonic() + _REPEAT_FAILURE_EVERY
