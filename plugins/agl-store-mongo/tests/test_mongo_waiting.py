"""Waiters wake from other writers' changes: by the change stream (push), or by the fallback's checks.

Two stores on one partition stand for two processes: a store rings its own waiters on its commits, so a waiter of
store A is woken by store B's write only through A's change stream (or, without one, A's periodic check). With a
poll interval of an hour, a waiter that returns before its timeout can only have been woken by the stream.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agl_kernel.models import AttemptStatus, PromptTemplate, RolloutConfig
from agl_store_mongo import MongoLightningStore

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]

NO_POLLING = 3600.0


def open_pair(uri: str, database: str, **options: Any) -> tuple[MongoLightningStore, MongoLightningStore]:
    return (
        MongoLightningStore(uri, database=database, **options),
        MongoLightningStore(uri, database=database, **options),
    )


async def test_a_waiting_dequeue_wakes_on_another_stores_enqueue(mongo_uri: str, database: str) -> None:
    waiter, writer = open_pair(mongo_uri, database, poll_interval=NO_POLLING)
    async with waiter, writer:
        assert waiter.streaming
        waiting = asyncio.create_task(waiter.dequeue_rollout(worker_id="w", timeout=30))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        queued = await writer.enqueue_rollout("from another store")
        taken = await asyncio.wait_for(waiting, 30)
        assert taken is not None and taken.rollout_id == queued.rollout_id


async def test_wait_for_rollouts_wakes_on_another_stores_update(mongo_uri: str, database: str) -> None:
    waiter, writer = open_pair(mongo_uri, database, poll_interval=NO_POLLING)
    async with waiter, writer:
        first = await writer.start_rollout("a")
        second = await writer.start_rollout("b", config=RolloutConfig(max_attempts=1))
        waiting = asyncio.create_task(waiter.wait_for_rollouts([first.rollout_id, second.rollout_id], timeout=30))
        await writer.update_attempt(first.rollout_id, "latest", status=AttemptStatus.SUCCEEDED)
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await writer.update_attempt(second.rollout_id, "latest", status=AttemptStatus.FAILED)
        ended = await asyncio.wait_for(waiting, 30)
        assert [r.rollout_id for r in ended] == [first.rollout_id, second.rollout_id]


async def test_without_change_streams_waiters_check_every_poll_interval(mongo_uri: str, database: str) -> None:
    waiter, writer = open_pair(mongo_uri, database, change_streams=False, poll_interval=0.05)
    async with waiter, writer:
        assert not waiter.streaming
        waiting = asyncio.create_task(waiter.dequeue_rollout(timeout=30))
        running = await writer.start_rollout("x")
        ended = asyncio.create_task(waiter.wait_for_rollouts([running.rollout_id], timeout=30))
        await asyncio.sleep(0.2)
        queued = await writer.enqueue_rollout("y")
        await writer.update_attempt(running.rollout_id, "latest", status=AttemptStatus.SUCCEEDED)
        taken = await asyncio.wait_for(waiting, 30)
        assert taken is not None and taken.rollout_id == queued.rollout_id
        assert [r.rollout_id for r in await asyncio.wait_for(ended, 30)] == [running.rollout_id]


async def test_a_timeout_still_returns_nothing(mongo_uri: str, database: str) -> None:
    async with MongoLightningStore(mongo_uri, database=database) as store:
        assert await store.dequeue_rollout(timeout=0.3) is None
        running = await store.start_rollout("x")
        assert await store.wait_for_rollouts([running.rollout_id], timeout=0.3) == []


class TestPartitions:
    """Trainers sharing one database, each in its own partition, never see each other's rollouts."""

    async def test_partitions_are_separate(self, mongo_uri: str, database: str) -> None:
        async with (
            MongoLightningStore(mongo_uri, database=database, partition="team-a") as a,
            MongoLightningStore(mongo_uri, database=database, partition="team-b") as b,
            MongoLightningStore(mongo_uri, database=database, partition="team-a") as a_again,
        ):
            queued = await a.enqueue_rollout("for a")
            await a.update_worker("w-a")
            await a.add_resources({"p": PromptTemplate(template="a")})
            waiting = asyncio.create_task(b.dequeue_rollout(timeout=0.5))
            assert await waiting is None
            assert (await b.query_rollouts()).total == 0
            assert await b.get_latest_resources() is None
            stats = await b.statistics()
            assert (stats.total_rollouts, stats.queue_depth, stats.total_workers, stats.total_resources) == (0, 0, 0, 0)
            assert (await a_again.get_rollout(queued.rollout_id)).input == "for a"
            taken = await a_again.dequeue_rollout()
            assert taken is not None and taken.rollout_id == queued.rollout_id
            on_b = await b.enqueue_rollout("for b")
            assert await a.dequeue_rollout() is None
            assert [r.rollout_id for r in (await b.query_rollouts()).items] == [on_b.rollout_id]


async def test_a_server_refusing_change_streams_falls_back_to_polling_then_streams_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server that refuses the change stream (here a fail point makes secantus answer the stream's ``aggregate``
    with mongod's "change streams are only supported on replica sets" code): the store still opens, says once that
    waiters check every poll_interval, wakes them that way, and streams again once the server lets it."""
    from _secantus import SecantusServer, executable
    from pymongo import AsyncMongoClient

    if executable() is None:
        pytest.skip("needs secantusd-py (pip install 'agl-store-mongo[testing]'): a server with test commands on")
    server = SecantusServer(extra=("--enable-test-commands",))
    admin: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(server.uri)
    try:
        await admin.admin.command(
            {
                "configureFailPoint": "failCommand",
                "mode": "alwaysOn",
                "data": {"failCommands": ["aggregate"], "errorCode": 40573, "appName": "agl-store-mongo"},
            }
        )
        waiter, writer = open_pair(server.uri, "fallback", poll_interval=0.05)
        async with waiter, writer:
            waiting = asyncio.create_task(waiter.dequeue_rollout(timeout=30))
            await asyncio.sleep(0.3)
            assert not waiter.streaming
            assert "no change stream on fallback.default.rollouts" in caplog.text
            assert "waiters check every 0.05 s instead" in caplog.text
            queued = await writer.enqueue_rollout("woken by a check")
            taken = await asyncio.wait_for(waiting, 10)
            assert taken is not None and taken.rollout_id == queued.rollout_id

            await admin.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
            for _ in range(300):  # the store retries the stream every 5 s
                if waiter.streaming:
                    break
                await asyncio.sleep(0.1)
            assert waiter.streaming
    finally:
        await admin.close()
        server.close()
