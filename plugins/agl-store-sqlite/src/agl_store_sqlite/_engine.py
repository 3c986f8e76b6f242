"""Connections and transactions: one connection per thread, and group commit of the writes made by asyncio tasks.

Writes are functions ``op(tx) -> result`` that run inside a ``BEGIN IMMEDIATE`` transaction. The writes that
the tasks of one event loop submit during one loop iteration are committed together, in submission order, by a
single transaction (group commit): with 8 workers that is up to 8 operations for one commit, which is where the
store's throughput comes from. Results are handed out only after the commit, so an acknowledged write is in the
write-ahead log, and it survives a crash of the process.

The transaction runs on the event loop's own thread (a hop to a worker thread costs more than the transaction
itself), but the loop never waits for another process: a batch that finds the file locked by another process is
handed to a worker thread, which waits for the lock in small steps (``wait_unlocked``). Inside the process one
``threading.Lock`` orders the writers, so they never meet SQLite's busy handling at all.

A query that finds the file damaged (SQLITE_CORRUPT, SQLITE_NOTADB) or no longer writable (SQLITE_READONLY) stops
the engine (:meth:`Engine.damage`): it is reported once, and every later call raises
:class:`SqliteStoreDamagedError` without touching the file again.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from agl_kernel.errors import StoreClosedError
from agl_store_sqlite._schema import SqliteStoreDamagedError, SqliteStoreError, connect, damage_kind

T = TypeVar("T")

Op = Callable[["Tx"], Any]
Outcome = tuple[bool, Any]  # (True, result) or (False, exception)

FAST_LOCK_WAIT = 0.05
"""Seconds the loop thread waits for another thread of this process to finish its transaction."""


MAX_BUSY_SLEEP = 0.002
"""The longest sleep between two tries to get a lock another process holds."""
CHECKPOINT_PASSES = 5
"""Background checkpoint passes at most, before the last one that makes this process's writers wait."""
CHECKPOINT_TAIL = 200
"""Frames left for that last pass that are few enough to copy while the writers wait."""
CHECKPOINT_FORCE = 16384
"""Log length (frames; 64 MiB at 4 KiB pages) from which the last pass runs even with a longer tail."""


class Busy(Exception):
    """The file is locked by another process (or this process is busy for longer than a loop should wait)."""


class Tx:
    """One write transaction: the connection, and what to wake once it commits."""

    __slots__ = ("conn", "execute", "wake_ended", "wake_queue")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.execute: Callable[..., sqlite3.Cursor] = conn.execute
        self.wake_queue = False
        self.wake_ended = False


def is_busy(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or getattr(exc, "sqlite_errorcode", None) in (5, 6)
    )


class _Batch:
    __slots__ = ("items", "loop", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: list[tuple[Op, asyncio.Future]] = []
        self.scheduled = False


class Engine:
    """Connections to one file and the transactions on them, for one store instance."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str,
        busy_timeout: float,
        on_commit: Callable[[bool, bool], None],
        on_damaged: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.path = path
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._on_commit = on_commit
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agl-sqlite-wait")
        self.closed = False
        self.damaged: str | None = None
        """Why this engine stopped serving (the message of its :class:`SqliteStoreDamagedError`), or None."""
        self._on_damaged = on_damaged
        self._damage_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------------ connections

    def check_open(self) -> None:
        if self.closed:
            raise StoreClosedError(f"the SQLite store {self.path} is closed; open a new SqliteLightningStore")
        if self.damaged is not None:
            raise SqliteStoreDamagedError(self.damaged, self.path)

    def damage(self, exc: BaseException) -> SqliteStoreDamagedError | None:
        """If ``exc`` says the file is damaged or can no longer be written, stop serving (the first time: call
        ``on_damaged`` with the message, once) and return the error to raise instead of ``exc``; else None."""
        kind = damage_kind(exc)
        if kind is None:
            return None
        with self._damage_lock:
            message = self.damaged
            first = message is None
            if message is None:
                if kind == "damaged":
                    message = (
                        f"the SQLite store {self.path} is damaged ({exc}); this store stopped serving. Restore the "
                        "file from a backup, or move it away to start a new store, then start the store again (the "
                        "sqlite3 shell's .recover command may salvage what is still readable)"
                    )
                else:
                    message = (
                        f"the SQLite store {self.path} can no longer be written ({exc}): it was made read-only, "
                        "moved or deleted while the store was open; this store stopped serving. Make the file "
                        "writable (or put it back), then start the store again"
                    )
                self.damaged = message
        if first:
            self._on_damaged(message)
        return SqliteStoreDamagedError(message, self.path)

    def connection(self) -> sqlite3.Connection:
        """This thread's connection. Its statements have no busy timeout: waiting for another process is done
        by :meth:`wait_unlocked`, in small steps (SQLite's own busy handler backs off to sleeps of 100 ms, which
        lets a busy process starve the others). Opening it reads the schema, which another connection may hold
        locked for a moment: another process's last connection copying and removing the log as it closes, or
        any connection, this store's own monitor thread too, rebuilding the log's index as it opens the file.
        That one wait is left to SQLite's handler, up to the busy timeout."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            self.check_open()
            conn = connect(self.path, busy_timeout=self._busy_timeout, synchronous=self._synchronous)
            conn.execute("PRAGMA busy_timeout=0")
            with self._connections_lock:
                if self.closed:
                    conn.close()
                    self.check_open()
                self._connections.append(conn)
            self._local.conn = conn
        elif self.closed:
            self.check_open()
        return conn

    def wait_unlocked(self, attempt: Callable[[], T]) -> T:
        """Call ``attempt`` until it does not raise "database is locked", up to the busy timeout, sleeping a
        little (with jitter) between tries."""
        deadline = time.monotonic() + self._busy_timeout
        delay = 0.0002
        while True:
            try:
                return attempt()
            except sqlite3.OperationalError as exc:
                if not is_busy(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise SqliteStoreError(
                        f"the SQLite store {self.path} stayed locked by another process for more than "
                        f"{self._busy_timeout:g} s ({exc}); find the process that holds it, or raise busy_timeout",
                        self.path,
                    ) from exc
            self.check_open()
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 1.5, MAX_BUSY_SLEEP)

    def checkpoint(self) -> None:
        """Copy the write-ahead log into the database file, off the event loop (the monitor thread calls it).

        Connections run with ``wal_autocheckpoint=0``: the checkpoint's fsyncs would otherwise stall whichever
        loop commits the 1000th page. The bulk is copied without blocking anyone; then the few frames written
        meanwhile are copied while this process's writers wait a moment, so that the next write starts the log
        over instead of letting it grow. Another process checkpointing at the same time makes this a no-op.
        """
        self.check_open()
        conn = self.connection()
        copied = 0
        for _ in range(CHECKPOINT_PASSES):  # each pass copies what was written during the one before
            busy, log, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if busy or log <= 0:  # another checkpointer holds the log, or it was started over already
                return
            if log - copied <= CHECKPOINT_TAIL:
                break
            copied = log
        else:
            if log < CHECKPOINT_FORCE:  # writing too fast to catch up now: try again next round
                return
        if self._write_lock.acquire(timeout=FAST_LOCK_WAIT):
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            finally:
                self._write_lock.release()

    def close(self) -> None:
        self.closed = True
        acquired = self._write_lock.acquire(timeout=5)  # let a transaction in flight in this process finish
        try:
            with self._connections_lock:
                connections, self._connections = self._connections, []
            for conn in connections:
                try:
                    conn.close()
                except sqlite3.Error:  # pragma: no cover - closing is best effort
                    pass
        finally:
            if acquired:
                self._write_lock.release()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------------------------------------ reads

    def read(self, fn: Callable[[sqlite3.Connection], T], *, snapshot: bool = False) -> T:
        """Run ``fn`` on this thread's connection; ``snapshot=True`` wraps it in one read transaction (for reads
        of several statements that must agree). Readers are blocked only in rare moments (another process
        recovering the log after a crash); then this waits."""
        self.check_open()
        conn = self.connection()
        try:
            return self.wait_unlocked(lambda: self._read(conn, fn, snapshot))
        except sqlite3.ProgrammingError:
            self.check_open()  # a connection closed under us: the store was closed meanwhile
            raise
        except sqlite3.DatabaseError as exc:
            damaged = self.damage(exc)
            if damaged is None:
                raise
            raise damaged from None

    @staticmethod
    def _read(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T], snapshot: bool) -> T:
        if not snapshot:
            return fn(conn)
        conn.execute("BEGIN")
        try:
            return fn(conn)
        finally:
            conn.execute("COMMIT")

    # ------------------------------------------------------------------------------------------------ writes

    async def write(self, op: Callable[[Tx], T]) -> T:
        """Run ``op`` in a write transaction, together with the other writes of this loop iteration."""
        loop = asyncio.get_running_loop()
        batch: _Batch | None = getattr(self._local, "batch", None)
        if batch is None or batch.loop is not loop:
            batch = self._local.batch = _Batch(loop)
        future = loop.create_future()
        batch.items.append((op, future))
        if not batch.scheduled:
            batch.scheduled = True
            loop.call_soon(self._flush, batch)
        return await future

    def _flush(self, batch: _Batch) -> None:
        items = [(op, fut) for op, fut in batch.items if not fut.cancelled()]  # a cancelled caller: skip its op
        batch.items = []
        batch.scheduled = False
        if not items:
            return
        ops = [op for op, _ in items]
        try:
            outcomes = self.run(ops, blocking=False)
        except Busy:
            try:
                waited = batch.loop.run_in_executor(self._executor, self.run, ops, True)  # wait off the loop
            except RuntimeError:  # the executor was shut down: the store was closed meanwhile
                closed = StoreClosedError(f"the SQLite store {self.path} was closed")
                self._deliver(items, [(False, closed)] * len(items))
                return
            waited.add_done_callback(lambda done: self._deliver_later(items, done))
            return
        except Exception as exc:  # the store was closed, the disk is full, ...
            outcomes = [(False, exc)] * len(items)
        self._deliver(items, outcomes)

    def _deliver_later(self, items: list[tuple[Op, asyncio.Future]], done: asyncio.Future) -> None:
        if done.cancelled():
            outcomes: list[Outcome] = [(False, StoreClosedError(f"the SQLite store {self.path} was closed"))]
            outcomes *= len(items)
        elif done.exception() is not None:
            outcomes = [(False, done.exception())] * len(items)
        else:
            outcomes = done.result()
        self._deliver(items, outcomes)

    @staticmethod
    def _deliver(items: list[tuple[Op, asyncio.Future]], outcomes: list[Outcome]) -> None:
        for (_, future), (ok, value) in zip(items, outcomes):
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def run(self, ops: list[Op], blocking: bool) -> list[Outcome]:
        """Run ``ops`` in one transaction on this thread; if one raises, each runs in its own transaction so
        that a failure only fails its own caller. ``blocking=False`` raises :class:`Busy` instead of waiting."""
        if blocking:
            self._write_lock.acquire()
        elif not self._write_lock.acquire(timeout=FAST_LOCK_WAIT):
            raise Busy()
        wake_queue = wake_ended = False
        try:
            self.check_open()
            conn = self.connection()
            self._begin(conn, wait=blocking)
            tx = Tx(conn)
            try:
                results = [op(tx) for op in ops]
                conn.execute("COMMIT")
            except BaseException as exc:
                self._rollback(conn)
                damaged = self.damage(exc)
                if damaged is not None:  # the file, not the op: no op of the batch is tried again
                    return [(False, damaged)] * len(ops)
                if len(ops) == 1 or not isinstance(exc, Exception):
                    if isinstance(exc, Exception):
                        return [(False, exc)]
                    raise
                outcomes: list[Outcome] = []
                for op in ops:
                    if self.damaged is not None:  # found by an op before: refuse the rest, keep what committed
                        outcomes.append((False, SqliteStoreDamagedError(self.damaged, self.path)))
                        continue
                    try:
                        self._begin(conn, wait=True)
                    except sqlite3.DatabaseError as failed:
                        damaged = self.damage(failed)
                        if damaged is None:
                            raise
                        outcomes.append((False, damaged))
                        continue
                    tx = Tx(conn)
                    try:
                        result = op(tx)
                        conn.execute("COMMIT")
                    except Exception as single:
                        self._rollback(conn)
                        outcomes.append((False, self.damage(single) or single))
                        continue
                    outcomes.append((True, result))
                    wake_queue |= tx.wake_queue
                    wake_ended |= tx.wake_ended
                return outcomes
            wake_queue, wake_ended = tx.wake_queue, tx.wake_ended
            return [(True, result) for result in results]
        except sqlite3.ProgrammingError:
            self.check_open()
            raise
        except sqlite3.DatabaseError as exc:  # from BEGIN (or ROLLBACK): the file itself
            damaged = self.damage(exc)
            if damaged is None:
                raise
            raise damaged from None
        finally:
            self._write_lock.release()
            if wake_queue or wake_ended:
                self._on_commit(wake_queue, wake_ended)

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.DatabaseError:  # a damaged file may refuse even that; SQLite rolls back by itself then
                if conn.in_transaction:
                    raise

    def _begin(self, conn: sqlite3.Connection, wait: bool) -> None:
        if not wait:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if is_busy(exc):
                    raise Busy() from exc
                raise
        else:
            self.wait_unlocked(lambda: conn.execute("BEGIN IMMEDIATE"))

    def run_one(self, op: Callable[[Tx], T], *, blocking: bool) -> T:
        """Run one write now, on this thread. Raises :class:`Busy` (``blocking=False``) or ``op``'s exception."""
        ((ok, value),) = self.run([op], blocking)
        if not ok:
            raise value
        return value
