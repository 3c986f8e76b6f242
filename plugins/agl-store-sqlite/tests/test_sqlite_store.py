"""What is particular to the SQLite store: the file, its options, durability across reopening, waiting for other
processes without blocking the loop, and query plans that stay indexed as the file grows."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from agl_kernel.errors import StoreClosedError
from agl_kernel.models import AttemptStatus, PromptTemplate, RolloutConfig, RolloutStatus, WorkerStatus
from agl_kernel.plugins import create_component
from agl_kernel.testing import make_span
from agl_store_sqlite import SqliteLightningStore

pytestmark = pytest.mark.asyncio


async def test_entry_point_and_capabilities(tmp_path: Path) -> None:
    store = create_component("stores", "sqlite", path=str(tmp_path / "ep.db"), watchdog_interval="0.2")
    try:
        assert isinstance(store, SqliteLightningStore)
        assert store.path == tmp_path / "ep.db"
        caps = store.capabilities
        assert caps.durable and caps.multi_process and caps.thread_safe and caps.async_safe and not caps.remote
    finally:
        await store.close()


async def test_default_path_under_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    async with SqliteLightningStore() as store:
        await store.enqueue_rollout("x")
        assert store.path == tmp_path / ".agl" / "agl.db"
    assert (tmp_path / ".agl" / "agl.db").is_file()


async def test_invalid_options(tmp_path: Path) -> None:
    for options in (
        {"watchdog_interval": 0},
        {"watchdog_interval": "soon"},
        {"cross_process_poll": -1},
        {"synchronous": "SOMETIMES"},
        {"busy_timeout": 0},
    ):
        with pytest.raises(ValueError):
            SqliteLightningStore(tmp_path / "x.db", **options)


async def test_everything_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "durable.db"
    async with SqliteLightningStore(path) as store:
        resources = await store.update_resources("main", {"p": PromptTemplate(template="v1")})
        latest = await store.update_resources("main", {"p": PromptTemplate(template="v2")})
        queued = await store.enqueue_rollout({"q": 1}, config=RolloutConfig(max_attempts=3))
        running = await store.start_rollout("r", worker_id="w-1")
        rid, aid = running.rollout_id, running.attempt.attempt_id
        spans = [await store.add_span(make_span(rid, aid, name=f"s{i}")) for i in range(3)]
        await store.update_worker("w-1", heartbeat_stats={"gpu": 1})
    async with SqliteLightningStore(path) as store:
        assert (await store.get_rollout(queued.rollout_id)).config.max_attempts == 3
        assert (await store.get_rollout(rid)).status is RolloutStatus.RUNNING
        assert (await store.query_spans(rid)).items == spans
        assert (await store.add_span(make_span(rid, aid))).sequence_id == 4
        assert await store.get_latest_resources() == latest
        assert await store.get_resources("main", 1) == resources
        worker = await store.get_worker("w-1")
        assert worker.status is WorkerStatus.BUSY and worker.heartbeat_stats == {"gpu": 1}
        again = await store.dequeue_rollout()
        assert again is not None and again.rollout_id == queued.rollout_id


async def test_close_stops_threads_and_fails_later_calls(tmp_path: Path) -> None:
    before = {t.name for t in threading.enumerate()}
    store = SqliteLightningStore(tmp_path / "x.db")
    await store.enqueue_rollout("x")
    await store.close()
    time.sleep(0.05)
    leftovers = [t for t in threading.enumerate() if t.name not in before and t.name.startswith("agl-sqlite")]
    assert not [t for t in leftovers if t.is_alive()], leftovers
    with pytest.raises(StoreClosedError, match="x.db"):
        await store.add_span(make_span("ro-x", "at-x"))
    assert store.check_deadlines(time.time()) == 0


async def test_loop_keeps_running_while_another_process_holds_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    async with SqliteLightningStore(path) as store:
        holder = sqlite3.connect(path, isolation_level=None)  # stands in for another process
        holder.execute("BEGIN IMMEDIATE")
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticking = asyncio.create_task(ticker())
        write = asyncio.create_task(store.enqueue_rollout("waits for the lock"))
        await asyncio.sleep(0.4)
        assert not write.done()
        assert ticks >= 10, "the event loop was blocked while the file was locked"
        holder.execute("COMMIT")
        holder.close()
        rollout = await asyncio.wait_for(write, 5)
        ticking.cancel()
        assert (await store.get_rollout(rollout.rollout_id)).status is RolloutStatus.QUEUING


async def test_a_new_connection_waits_while_another_process_holds_the_file_for_a_moment(tmp_path: Path) -> None:
    """Opening a connection reads the schema, which another process's last connection holds exclusively while it
    copies and removes the log as it closes. A thread's first statement waits for that."""
    path = tmp_path / "exclusive.db"
    async with SqliteLightningStore(path) as store:  # opened, and its threads hold no connection yet
        holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)  # another process
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        threading.Timer(0.3, lambda: (holder.execute("COMMIT"), holder.close())).start()
        started = time.monotonic()
        rollout = await store.enqueue_rollout("written once the file is free")
        assert time.monotonic() - started >= 0.25
        assert (await store.get_rollout(rollout.rollout_id)).status is RolloutStatus.QUEUING


async def test_failure_in_a_group_commit_fails_only_its_caller(tmp_path: Path) -> None:
    """Writes of one loop iteration share a transaction; one that raises must not take the others down."""
    async with SqliteLightningStore(tmp_path / "group.db") as store:
        attempted = await store.start_rollout("x")
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        results = await asyncio.gather(
            store.add_span(make_span(rid, aid, name="first")),
            store.add_span(make_span("ro-missing", aid)),
            store.enqueue_rollout("queued meanwhile"),
            store.update_attempt(rid, "at-missing", status=AttemptStatus.RUNNING),
            store.add_span(make_span(rid, aid, name="second")),
            return_exceptions=True,
        )
        assert [type(r).__name__ for r in results] == ["Span", "NotFoundError", "Rollout", "NotFoundError", "Span"]
        assert "ro-missing" in str(results[1]) and "at-missing" in str(results[3])
        names = [s.name for s in (await store.query_spans(rid)).items]
        assert names == ["first", "second"]
        assert [s.sequence_id for s in (await store.query_spans(rid)).items] == [1, 2]
        assert (await store.get_attempt(rid, aid)).status is AttemptStatus.RUNNING
        assert (await store.dequeue_rollout()) is not None


async def test_watchdog_runs_on_its_own(tmp_path: Path) -> None:
    async with SqliteLightningStore(tmp_path / "wd.db", watchdog_interval=0.05) as store:
        attempted = await store.start_rollout("x", config=RolloutConfig(timeout_seconds=0.2))
        await asyncio.sleep(0.6)
        attempt = await store.get_attempt(attempted.rollout_id)
        assert attempt.status is AttemptStatus.TIMEOUT


# ---------------------------------------------------------------------------------------------------- growth


async def test_hot_statements_use_indexes(tmp_path: Path) -> None:
    """Every statement of the rollout cycle is an index search, never a scan of a table that grows: throughput
    must not depend on how much the file holds."""
    path = tmp_path / "plans.db"
    statements: list[str] = []
    async with SqliteLightningStore(path) as store:
        await store.add_resources({"p": PromptTemplate(template="t")})
        store._engine.connection().set_trace_callback(statements.append)
        for _ in range(2):
            await store.enqueue_rollout("x", config=RolloutConfig(timeout_seconds=60))
            attempted = await store.dequeue_rollout(worker_id="w")
            assert attempted is not None
            rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
            await store.add_span(make_span(rid, aid))
            await store.add_many_spans([make_span(rid, aid), make_span(rid, aid)])
            await store.update_attempt(rid, aid, status=AttemptStatus.SUCCEEDED)
            await store.get_rollout(rid)
            await store.query_spans(rid)
            await store.update_worker("w")
        store._engine.connection().set_trace_callback(None)
        store.check_deadlines(time.time())
    conn = sqlite3.connect(path)
    scans = []
    for sql in dict.fromkeys(statements):
        if not sql.lstrip().upper().startswith(("SELECT", "INSERT", "UPDATE", "DELETE")):
            continue
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
        scans += [
            (sql, step)
            for step in plan
            if step.startswith("SCAN ") and "json_each" not in step and " USING " not in step
        ]
    conn.close()
    assert not scans, "\n".join(f"{step}: {sql}" for sql, step in scans)


async def test_integers_beyond_64_bits_are_refused_with_a_reason(tmp_path: Path) -> None:
    from agl_kernel.models import Span

    async with SqliteLightningStore(tmp_path / "big.db") as store:
        with pytest.raises(ValueError, match=r"integer outside -2\*\*63 .. 2\*\*64-1.*as strings"):
            await store.enqueue_rollout({"n": 2**70})
        assert (await store.statistics()).total_rollouts == 0  # nothing half-written
        fits = await store.enqueue_rollout({"n": 2**64 - 1})
        taken = await store.dequeue_rollout(worker_id="w")
        assert taken is not None and taken.input == {"n": 2**64 - 1} and taken.rollout_id == fits.rollout_id
        span = Span(
            rollout_id=taken.rollout_id,
            attempt_id=taken.attempt.attempt_id,
            trace_id="t",
            span_id="s1",
            name="n",
            attributes={"big": -(2**64)},
        )
        with pytest.raises(ValueError, match="integer outside"):
            await store.add_span(span)
        assert (await store.query_spans(taken.rollout_id)).items == []
