"""Connections, the checks made when the store opens, and the transaction runner.

Every change runs in one transaction (READ COMMITTED; each operation first locks the rows it decides on with
``SELECT ... FOR UPDATE``, the queue's head with ``FOR UPDATE SKIP LOCKED``), retried from the start on
serialization failures and deadlocks with jittered backoff, and on a connection lost *before* the commit (a
restarting server), within ``transaction_timeout`` and ``max_transaction_tries``. A connection lost during the
commit leaves its outcome unknown: that is reported, never retried. Reads, and the hot operations that are one call
of a schema function each (a transaction by itself, made safe to send twice), run outside explicit transactions and
are retried on a lost connection.

Connections come from a pool per event loop (psycopg's async connections belong to the loop that made them),
autocommit (a read is one round trip; a change is ``BEGIN`` ... ``COMMIT``), with the store's schema on their
``search_path``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection, AsyncRawCursor, sql
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from agl_store_postgres._errors import (
    DatabaseMissingError,
    PostgresAuthError,
    PostgresStoreError,
    PostgresUnreachableError,
    redact,
)

__all__ = ["Tx", "channels", "connect", "make_pool", "run_direct", "run_transaction"]

T = TypeVar("T")
Conn = AsyncConnection[DictRow]

_RETRY_STATES = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected


def channels(schema: str) -> tuple[str, str]:
    """The NOTIFY channels of a schema: rollouts queued, rollouts ended."""
    return f"agl:{schema}:queue", f"agl:{schema}:ended"


class Tx:
    """What an operation works with: one connection, inside a transaction for changes. An operation sets
    ``wake_queue`` / ``wake_ended`` when it queued a rollout / ended one: the runner notifies the other processes
    in the transaction (delivered at commit) and wakes this process's waiters after the commit."""

    __slots__ = ("conn", "wake_ended", "wake_queue")

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.wake_queue = False
        self.wake_ended = False

    async def one(self, query: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> DictRow | None:
        cur = await self.conn.execute(query, params)
        return await cur.fetchone()

    async def all(self, query: str, params: Sequence[Any] | None = None) -> list[DictRow]:
        cur = await self.conn.execute(query, params)
        return await cur.fetchall()

    async def run(self, query: str, params: Sequence[Any] | None = None) -> int:
        cur = await self.conn.execute(query, params)
        return cur.rowcount

    async def many(self, query: str, params: Sequence[Sequence[Any]]) -> None:
        async with self.conn.cursor() as cur:
            await cur.executemany(query, params)

    async def call(self, query: str, params: Sequence[Any]) -> list[DictRow]:
        """The rows of a hot statement written with ``$1``-style placeholders: psycopg sends it as it is, where a
        ``%s`` query is parsed for its placeholders on every call that has more than 50 parameters (a span
        batch) and looked up in a cache on the others."""
        cur = AsyncRawCursor(self.conn, row_factory=dict_row)
        await cur.execute(query, params)
        return await cur.fetchall()


# ---------------------------------------------------------------------------------------------------- connecting


def _reason(exc: BaseException) -> str:
    """libpq's reason, without the "connection failed: connection to server at ... failed:" preamble."""
    text = " ".join(str(exc).split())
    if "failed: " in text:
        text = text.rsplit("failed: ", 1)[1]
    return text.removeprefix("FATAL: ").strip()[:300]


def connect_error(exc: psycopg.Error, dsn: str, connect_timeout: float) -> PostgresStoreError:
    """The error a user can act on, for a failure to connect (libpq gives no SQLSTATE before the session)."""
    shown = redact(dsn)
    reason = _reason(exc)
    lowered = reason.lower()
    if (
        "password authentication failed" in lowered
        or "no password supplied" in lowered
        or ("authentication failed" in lowered)
    ):
        return PostgresAuthError(
            f"PostgreSQL at {shown} refused the credentials ({reason}). Check the user and password in store.dsn "
            "(or PGUSER/PGPASSWORD) and the server's pg_hba.conf"
        )
    if (
        "pg_hba.conf" in lowered
        or "permission denied" in lowered
        or ("role" in lowered and "does not exist" in lowered)
    ):
        return PostgresAuthError(
            f"PostgreSQL at {shown} refused the connection ({reason}). Check the user in store.dsn"
        )
    if "database" in lowered and "does not exist" in lowered:
        return DatabaseMissingError(
            f"PostgreSQL at {shown}: {reason}. Create it (createdb NAME, or CREATE DATABASE NAME) or name an existing "
            "database in store.dsn"
        )
    if "invalid" in lowered and ("dsn" in lowered or "connection option" in lowered or "uri" in lowered):
        return PostgresStoreError(f"store.dsn {shown!r} is not a connection string libpq accepts: {reason}")
    return PostgresUnreachableError(
        f"no PostgreSQL server answered at {shown} within {connect_timeout:g} s ({reason}). Check that the server "
        "runs there and accepts TCP connections from this machine, or raise store.connect_timeout"
    )


async def connect(dsn: str, connect_timeout: float, **kwargs: Any) -> Conn:
    """One autocommit connection with dict rows; a failure is one of the store's errors."""
    try:
        return await asyncio.wait_for(
            AsyncConnection.connect(
                dsn, autocommit=True, row_factory=dict_row, connect_timeout=max(1, round(connect_timeout)), **kwargs
            ),
            connect_timeout + 1,
        )
    except asyncio.TimeoutError:
        raise PostgresUnreachableError(
            f"no PostgreSQL server answered at {redact(dsn)} within {connect_timeout:g} s. Check that the server runs "
            "there and is reachable from this machine, or raise store.connect_timeout"
        ) from None
    except psycopg.ProgrammingError as exc:
        raise PostgresStoreError(
            f"store.dsn {redact(dsn)!r} is not a connection string libpq accepts: {_reason(exc)}"
        ) from None
    except psycopg.Error as exc:
        raise connect_error(exc, dsn, connect_timeout) from None


def make_pool(dsn: str, schema: str, *, size: int, connect_timeout: float) -> AsyncConnectionPool[Conn]:
    """A pool for this event loop (not opened yet)."""
    search_path = sql.SQL("SET search_path TO {}").format(sql.Identifier(schema))

    async def configure(conn: Conn) -> None:
        await conn.execute(search_path)

    return AsyncConnectionPool(
        dsn,
        min_size=1,
        max_size=size,
        open=False,
        timeout=connect_timeout,
        reconnect_timeout=3600 * 24 * 365,  # never give up: the server may come back
        kwargs={"autocommit": True, "row_factory": dict_row, "connect_timeout": max(1, round(connect_timeout))},
        configure=configure,
        connection_class=AsyncConnection[DictRow],
        name=f"agl-store-postgres:{schema}",
    )


# ---------------------------------------------------------------------------------------------------- running


def _may_retry(tries: int, max_tries: int, started: float, timeout: float) -> bool:
    return tries < max_tries and time.monotonic() - started < timeout


async def _backoff(tries: int, lost: bool) -> None:
    # Conflicting writers retry at jittered, growing intervals so that one of them wins each round; a lost
    # connection waits longer (the server is restarting).
    ceiling = 0.5 if lost else 0.25
    await asyncio.sleep(random.uniform(0, min(0.002 * 2 ** min(tries, 8), ceiling)) + (0.05 if lost else 0))


def _lost(dsn: str, exc: BaseException, tries: int, started: float) -> PostgresUnreachableError:
    return PostgresUnreachableError(
        f"PostgreSQL at {redact(dsn)} could not be reached for {time.monotonic() - started:.1f} s ({tries} tries: "
        f"{_reason(exc)}); nothing of the change was written. Check the server, or raise store.transaction_timeout"
    )


async def run_transaction(
    pool: AsyncConnectionPool[Conn],
    op: Callable[[Tx], Awaitable[T]],
    *,
    dsn: str,
    timeout: float,
    max_tries: int,
    notify: Callable[[Tx], Sequence[str]],
    on_commit: Callable[[Tx], None],
) -> T:
    """Run ``op`` in a transaction and commit it; retry the whole of it on a serialization failure, a deadlock or a
    connection lost before the commit (``op`` reads everything it decides on inside the transaction). ``notify``
    names the channels to notify for what ``op`` did."""
    started = time.monotonic()
    tries = 0
    while True:
        tries += 1
        committing = False
        try:
            async with pool.connection() as conn:
                tx = Tx(conn)
                async with conn.transaction():
                    result = await op(tx)
                    for channel in notify(tx):
                        await conn.execute("SELECT agl_notify(%s)", (channel,))  # if anyone listens
                    committing = True
        except (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected) as exc:
            if _may_retry(tries, max_tries, started, timeout):
                await _backoff(tries, False)
                continue
            raise PostgresStoreError(
                f"a transaction of the store kept conflicting with others and was given up after {tries} tries in "
                f"{time.monotonic() - started:.1f} s ({_reason(exc)}); nothing of it was written. Try again"
            ) from exc
        except (psycopg.OperationalError, PoolTimeout) as exc:
            if committing:
                raise PostgresUnreachableError(
                    f"the connection to PostgreSQL at {redact(dsn)} was lost while a change was committed "
                    f"({_reason(exc)}): it may or may not have been written. Read it back before trying again"
                ) from exc
            if not _lost_connection(exc):
                raise
            if _may_retry(tries, max_tries, started, timeout):
                await _backoff(tries, True)
                continue
            raise _lost(dsn, exc, tries, started) from exc
        on_commit(tx)
        return result


async def run_direct(
    pool: AsyncConnectionPool[Conn], op: Callable[[Tx], Awaitable[T]], *, dsn: str, timeout: float
) -> T:
    """Run ``op`` outside a transaction: a read, or one statement that is a transaction by itself (the schema's
    functions). Retried on a deadlock and on a lost connection within ``timeout``: such a statement may be sent
    again after a commit whose answer was lost, so each one is written to do nothing the second time."""
    started = time.monotonic()
    tries = 0
    while True:
        tries += 1
        try:
            # getconn/putconn rather than pool.connection(): an autocommit connection has nothing to commit or roll
            # back at the end, and the context managers cost a tenth of a hot call's client CPU.
            conn = await pool.getconn()
            try:
                return await op(Tx(conn))
            finally:
                await pool.putconn(conn)
        except psycopg.errors.DeadlockDetected:
            if time.monotonic() - started < timeout:
                await _backoff(tries, False)
                continue
            raise
        except (psycopg.OperationalError, PoolTimeout) as exc:
            if not _lost_connection(exc):
                raise
            if time.monotonic() - started < timeout:
                await _backoff(tries, True)
                continue
            raise _lost(dsn, exc, tries, started) from exc


def _lost_connection(exc: BaseException) -> bool:
    """A connection failure (a pool timeout, a closed or restarting server), not a refused statement."""
    if isinstance(exc, PoolTimeout):
        return True
    state = getattr(exc, "sqlstate", None)
    # admin_shutdown, crash_shutdown, cannot_connect_now, connection exceptions (08xxx), or no SQLSTATE at all.
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")
