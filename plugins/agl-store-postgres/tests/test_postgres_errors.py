"""What a user meets when something is wrong: one-line errors within seconds that say what to do, a schema from a
newer version refused before anything is written, and a store that rides through a dropped listener connection and
a restart of the server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import psycopg
import pytest
from _cluster import PostgresCluster, free_port

from agl_kernel.errors import AglError, ConfigError
from agl_kernel.models import AttemptStatus, RolloutConfig, RolloutStatus
from agl_kernel.plugins import create_component
from agl_store_postgres import (
    SCHEMA_VERSION,
    DatabaseMissingError,
    PostgresAuthError,
    PostgresLightningStore,
    PostgresUnreachableError,
    SchemaVersionError,
)


def test_an_unreachable_server_is_one_clear_error() -> None:
    with pytest.raises(PostgresUnreachableError, match="no PostgreSQL server answered") as caught:
        PostgresLightningStore(f"postgresql://agl:pw@127.0.0.1:{free_port()}/agl", connect_timeout=1)
    assert "store.connect_timeout" in str(caught.value) and "\n" not in str(caught.value)
    assert "pw@" not in str(caught.value)  # the password never shows


def test_refused_credentials_say_so(postgres_dsn: str) -> None:
    bad = postgres_dsn.replace(":agl-test@", ":wrong@")
    if bad == postgres_dsn:
        pytest.skip("AGL_TEST_POSTGRES_DSN has no password to change")
    with pytest.raises(PostgresAuthError, match="refused the credentials") as caught:
        PostgresLightningStore(bad, connect_timeout=2)
    assert "wrong" not in str(caught.value)


def test_a_missing_database_says_how_to_create_it(postgres_dsn: str) -> None:
    missing = postgres_dsn.rsplit("/", 1)[0] + "/no_such_database"
    with pytest.raises(DatabaseMissingError, match="CREATE DATABASE"):
        PostgresLightningStore(missing, connect_timeout=2)


def test_a_newer_schema_is_refused_before_anything_is_written(postgres_dsn: str, schema: str) -> None:
    async def main() -> None:
        async with PostgresLightningStore(postgres_dsn, schema=schema) as store:
            await store.enqueue_rollout("kept")

    asyncio.run(main())
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"UPDATE \"{schema}\".meta SET value = %s WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,))
        with pytest.raises(SchemaVersionError, match="newer agl-store-postgres"):
            PostgresLightningStore(postgres_dsn, schema=schema)
        version = conn.execute(f"SELECT value FROM \"{schema}\".meta WHERE key = 'schema_version'").fetchone()
        assert version == (SCHEMA_VERSION + 1,)
        assert conn.execute(f'SELECT count(*) FROM "{schema}".rollouts').fetchone() == (1,)


def test_bad_options_name_the_option() -> None:
    with pytest.raises(ConfigError, match="store.schema"):
        create_component("stores", "postgres", options={"schema": "Not-Allowed"})
    with pytest.raises(ConfigError, match="store.pool_size"):
        create_component("stores", "postgres", options={"pool_size": 0})


def test_the_cli_prints_one_line_for_an_unreachable_server() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agl_kernel.cli", "store", "serve", "--backend", "postgres", "--port", str(free_port()),
         "--set", f"store.dsn=postgresql://agl:pw@127.0.0.1:{free_port()}/agl", "--set", "store.connect_timeout=1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "no PostgreSQL server answered" in done.stderr and "Traceback" not in done.stderr


async def _wait_until(condition, what: str, seconds: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(seconds / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {seconds:g} s")


def test_the_listener_reconnects_after_its_connection_is_dropped(postgres_dsn: str, schema: str) -> None:
    async def main() -> None:
        async with (
            PostgresLightningStore(postgres_dsn, schema=schema) as waiter,
            PostgresLightningStore(postgres_dsn, schema=schema) as other,
        ):
            await _wait_until(lambda: waiter.listener_pid is not None, "the listener's connection")
            first = waiter.listener_pid
            with psycopg.connect(postgres_dsn, autocommit=True) as conn:
                conn.execute("SELECT pg_terminate_backend(%s)", (first,))
            # Meanwhile, a waiter still wakes (by polling), and the listener comes back on a new connection.
            waiting = asyncio.create_task(waiter.dequeue_rollout(worker_id="w", timeout=30))
            queued = await other.enqueue_rollout("after the drop")
            got = await waiting
            assert got is not None and got.rollout_id == queued.rollout_id
            await _wait_until(lambda: waiter.listener_pid not in (None, first), "the listener's reconnection")
            waiting = asyncio.create_task(waiter.dequeue_rollout(worker_id="w", timeout=30))
            queued = await other.enqueue_rollout("after the reconnection")
            got = await waiting
            assert got is not None and got.rollout_id == queued.rollout_id

    asyncio.run(main())


def _listeners(dsn: str, schema: str) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [r[0] for r in conn.execute(f'SELECT channel FROM "{schema}".listeners ORDER BY channel').fetchall()]


def test_notifications_go_out_only_while_someone_waits(postgres_dsn: str, schema: str) -> None:
    """A store LISTENs (and is registered, so that others send their NOTIFY) only once something in it waits; a
    waiter is then woken by another store's enqueue at once, not at the end of its timeout."""

    async def main() -> None:
        async with (
            PostgresLightningStore(postgres_dsn, schema=schema) as waiter,
            PostgresLightningStore(postgres_dsn, schema=schema) as other,
        ):
            await _wait_until(lambda: waiter.listener_pid is not None, "the listener's connection")
            await other.enqueue_rollout("nobody waits")
            assert await waiter.dequeue_rollout(worker_id="w") is not None  # found at once: no wait, no LISTEN
            assert await asyncio.to_thread(_listeners, postgres_dsn, schema) == []
            queue_channel = f"agl:{schema}:queue"
            waiting = asyncio.create_task(waiter.dequeue_rollout(worker_id="w", timeout=60))
            await _registered(postgres_dsn, schema, [queue_channel])
            started = time.monotonic()
            queued = await other.enqueue_rollout("someone waits")
            got = await waiting
            assert got is not None and got.rollout_id == queued.rollout_id
            assert time.monotonic() - started < 10
            ended = asyncio.create_task(waiter.wait_for_rollouts([queued.rollout_id], timeout=60))
            await asyncio.sleep(0.5)  # the waiter registers on the ended channel meanwhile
            started = time.monotonic()
            await other.update_attempt(got.rollout_id, got.attempt.attempt_id, status=AttemptStatus.SUCCEEDED)
            assert [r.status for r in await ended] == [RolloutStatus.SUCCEEDED]
            assert time.monotonic() - started < 10
            gone = waiter.listener_pid
        # Once its listener's backend has gone, the next registration drops its rows.
        await _wait_until(lambda: not _backend_alive(postgres_dsn, gone), "the closed listener's exit")
        async with PostgresLightningStore(postgres_dsn, schema=schema) as later:
            waiting = asyncio.create_task(later.dequeue_rollout(worker_id="w", timeout=60))
            await _registered(postgres_dsn, schema, [queue_channel])
            await _enqueue_from_another_store(postgres_dsn, schema)
            assert await waiting is not None

    asyncio.run(main())


async def _registered(dsn: str, schema: str, channels: list[str]) -> None:
    for _ in range(600):
        if await asyncio.to_thread(_listeners, dsn, schema) == channels:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the listeners of {schema!r} did not become {channels}")


def _backend_alive(dsn: str, pid: int | None) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() is not None


async def _enqueue_from_another_store(dsn: str, schema: str) -> None:
    async with PostgresLightningStore(dsn, schema=schema) as other:
        await other.enqueue_rollout("for the later store")


def test_close_returns_whenever_it_comes(postgres_dsn: str, schema: str) -> None:
    """Closing stops the listener and the watchdog wherever they are (waiting for a notification, checking its
    connection, between rounds): psycopg's notifies() can end quietly when cancelled, and a close() once waited for
    ever on a listener that carried on. Stores are opened and closed at varied moments; each close must return."""

    async def main() -> None:
        for round_ in range(12):
            store = PostgresLightningStore(postgres_dsn, schema=schema, watchdog_interval=0.05)
            await _wait_until(lambda: store.listener_pid is not None, "the listener's connection")  # noqa: B023
            await asyncio.sleep(0.013 * round_)  # somewhere in the listener's wait, or the watchdog's round
            await asyncio.wait_for(store.close(), 30)

    asyncio.run(main())


@pytest.mark.slow
def test_the_store_and_its_watchdog_ride_through_a_server_restart(own_cluster: PostgresCluster) -> None:
    async def main() -> None:
        store = PostgresLightningStore(own_cluster.dsn(), watchdog_interval=0.1, connect_timeout=2)
        try:
            config = RolloutConfig(timeout_seconds=1.0, max_attempts=1)
            got = await store.start_rollout("slow", config=config)
            own_cluster.restart("immediate")
            # The watchdog times the attempt out after the restart, by itself.
            ended = await store.wait_for_rollouts([got.rollout_id], timeout=60)
            assert [r.status for r in ended] == [RolloutStatus.FAILED]
            assert (await store.get_attempt(got.rollout_id)).status is AttemptStatus.TIMEOUT
            await _wait_until(lambda: store.listening, "the listener's reconnection")
        finally:
            await store.close()

    asyncio.run(main())


def test_errors_are_agl_errors() -> None:
    assert issubclass(PostgresUnreachableError, AglError)
    assert issubclass(SchemaVersionError, AglError)
