"""The watchdog: timeouts and unresponsive attempts, found on its own schedule, and what heartbeats do to them.

These tests use the ``fast_store`` fixture (watchdog every 0.05 s) and 0.3 s limits. Where a test checks that the
watchdog acts *on its own*, it only sleeps (no store call at all) and then checks that the attempt's ``end_time``
lies before the first call made after the sleep.
"""

from __future__ import annotations

import asyncio
import time

from agl_kernel.models import AttemptStatus, RolloutConfig, RolloutStatus, WorkerStatus
from agl_kernel.store.base import LightningStore
from agl_kernel.testing._base import SuiteBase, make_span

LIMIT = 0.3
"""Timeout / unresponsive limit used by the watchdog tests (seconds)."""
QUIET_SLEEP = LIMIT + 1.2
"""How long the tests sleep without touching the store before they look."""


class WatchdogTests(SuiteBase):
    async def test_timeout_found_without_store_calls(self, fast_store: LightningStore) -> None:
        store = fast_store
        config = RolloutConfig(timeout_seconds=LIMIT, max_attempts=1)
        attempted = await self.start_running(store, config=config, worker_id="w-timeout")
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        worker = await store.get_worker("w-timeout")
        assert worker.status is WorkerStatus.BUSY and worker.current_rollout_id == rid

        await asyncio.sleep(QUIET_SLEEP)  # nobody calls the store meanwhile
        looked_at = time.time()
        attempt = await store.get_attempt(rid, aid)
        assert attempt.status is AttemptStatus.TIMEOUT
        assert attempt.end_time is not None
        assert attempt.end_time < looked_at, "the watchdog must act on its own, not when the store is next called"
        assert attempt.end_time - attempt.start_time >= LIMIT - 0.05
        rollout = await store.get_rollout(rid)
        assert rollout.status is RolloutStatus.FAILED
        assert rollout.end_time is not None
        assert (await store.get_worker("w-timeout")).status is WorkerStatus.IDLE

    async def test_timeout_retries(self, fast_store: LightningStore) -> None:
        store = fast_store
        config = RolloutConfig(timeout_seconds=LIMIT, max_attempts=2)
        attempted = await self.start_running(store, config=config)
        rid = attempted.rollout_id
        await asyncio.sleep(QUIET_SLEEP)
        assert await self.rollout_status(store, rid) in (RolloutStatus.REQUEUING,)
        again = await store.dequeue_rollout()
        assert again is not None and again.rollout_id == rid
        assert again.attempt.sequence_id == 2
        assert (await store.get_attempt(rid, attempted.attempt.attempt_id)).status is AttemptStatus.TIMEOUT
        # The second attempt times out too; then the rollout fails.
        await store.update_attempt(rid, again.attempt.attempt_id, status=AttemptStatus.RUNNING)
        final = await self.eventually(
            lambda: store.get_rollout(rid), lambda r: r.status is RolloutStatus.FAILED, what="rollout failed"
        )
        assert final.attempt_count == 2
        assert (await store.get_attempt(rid)).status is AttemptStatus.TIMEOUT

    async def test_unresponsive_found_without_store_calls(self, fast_store: LightningStore) -> None:
        store = fast_store
        config = RolloutConfig(unresponsive_seconds=LIMIT, max_attempts=1)
        attempted = await self.start_running(store, config=config, worker_id="w-silent")
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id

        await asyncio.sleep(QUIET_SLEEP)
        attempt = await store.get_attempt(rid, aid)
        assert attempt.status is AttemptStatus.UNRESPONSIVE
        assert (await store.get_rollout(rid)).status is RolloutStatus.FAILED
        assert (await store.get_worker("w-silent")).status is WorkerStatus.UNRESPONSIVE

        # A worker heartbeat revives the worker.
        revived = await store.update_worker("w-silent")
        assert revived.status in (WorkerStatus.IDLE, WorkerStatus.BUSY)
        assert (await store.get_worker("w-silent")).status is not WorkerStatus.UNRESPONSIVE

        # A late span revives the attempt, and the rollout that failed only because of it.
        await store.add_span(make_span(rid, aid))
        assert (await store.get_attempt(rid, aid)).status is AttemptStatus.RUNNING
        assert (await store.get_rollout(rid)).status is RolloutStatus.RUNNING

    async def test_unresponsive_requeuing_revived_by_span(self, fast_store: LightningStore) -> None:
        store = fast_store
        config = RolloutConfig(unresponsive_seconds=LIMIT, max_attempts=2)
        attempted = await self.start_running(store, config=config)
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        await asyncio.sleep(QUIET_SLEEP)
        assert (await store.get_attempt(rid, aid)).status is AttemptStatus.UNRESPONSIVE
        assert await self.rollout_status(store, rid) is RolloutStatus.REQUEUING

        stored = await store.add_span(make_span(rid, aid))
        assert stored.sequence_id >= 1
        assert (await store.get_attempt(rid, aid)).status is AttemptStatus.RUNNING
        rollout = await store.get_rollout(rid)
        assert rollout.status is RolloutStatus.RUNNING and rollout.attempt_count == 1
        # Revived: its queue entry is stale and skipped.
        assert await store.dequeue_rollout() is None

    async def test_unresponsive_old_attempt_span_does_not_touch_rollout(self, fast_store: LightningStore) -> None:
        store = fast_store
        config = RolloutConfig(unresponsive_seconds=LIMIT, max_attempts=3)
        attempted = await self.start_running(store, config=config)
        rid, old = attempted.rollout_id, attempted.attempt.attempt_id
        await self.eventually(
            lambda: store.get_rollout(rid), lambda r: r.status is RolloutStatus.REQUEUING, what="requeuing"
        )
        newer = await store.dequeue_rollout()
        assert newer is not None and newer.attempt.sequence_id == 2
        await store.add_span(make_span(rid, old))
        assert (await store.get_attempt(rid, old)).status is AttemptStatus.RUNNING
        rollout = await store.get_rollout(rid)
        assert rollout.status is RolloutStatus.PREPARING and rollout.attempt_count == 2

    async def test_timeout_stays_timeout_on_span(self, fast_store: LightningStore) -> None:
        store = fast_store
        config = RolloutConfig(timeout_seconds=LIMIT, max_attempts=1)
        attempted = await self.start_running(store, config=config)
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        await self.eventually(
            lambda: store.get_attempt(rid, aid), lambda a: a.status is AttemptStatus.TIMEOUT, what="timeout"
        )
        stored = await store.add_span(make_span(rid, aid))
        assert stored.sequence_id >= 1
        assert (await store.get_attempt(rid, aid)).status is AttemptStatus.TIMEOUT
        assert await self.rollout_status(store, rid) is RolloutStatus.FAILED

    async def test_heartbeats_keep_attempt_alive(self, fast_store: LightningStore) -> None:
        store = fast_store
        config = RolloutConfig(unresponsive_seconds=0.5, max_attempts=1)
        by_span = await self.start_running(store, config=config)
        by_update = await self.start_running(store, config=config)
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline:
            await store.add_span(make_span(by_span.rollout_id, by_span.attempt.attempt_id))
            await store.update_attempt(by_update.rollout_id, by_update.attempt.attempt_id)
            await asyncio.sleep(0.1)
        for attempted in (by_span, by_update):
            attempt = await store.get_attempt(attempted.rollout_id, attempted.attempt.attempt_id)
            assert attempt.status is AttemptStatus.RUNNING
            assert await self.rollout_status(store, attempted.rollout_id) is RolloutStatus.RUNNING
        # Once the heartbeats stop, the watchdog notices.
        await self.eventually(
            lambda: store.get_attempt(by_span.rollout_id, by_span.attempt.attempt_id),
            lambda a: a.status is AttemptStatus.UNRESPONSIVE,
            what="unresponsive after heartbeats stopped",
        )

    async def test_watchdog_leaves_ended_and_unlimited_attempts_alone(self, fast_store: LightningStore) -> None:
        store = fast_store
        done = await self.start_running(store, config=RolloutConfig(timeout_seconds=LIMIT, unresponsive_seconds=LIMIT))
        await store.update_attempt(done.rollout_id, "latest", status=AttemptStatus.SUCCEEDED)
        unlimited = await self.start_running(store, config=RolloutConfig(unresponsive_seconds=None))
        await asyncio.sleep(QUIET_SLEEP)
        assert (await store.get_attempt(done.rollout_id)).status is AttemptStatus.SUCCEEDED
        assert await self.rollout_status(store, done.rollout_id) is RolloutStatus.SUCCEEDED
        assert (await store.get_attempt(unlimited.rollout_id)).status is AttemptStatus.RUNNING
        assert await self.rollout_status(store, unlimited.rollout_id) is RolloutStatus.RUNNING

    async def test_default_config_retries_a_silent_attempt(self, fast_store: LightningStore) -> None:
        """With ``RolloutConfig()``, what every algorithm uses unless told otherwise, an attempt whose runner has
        been silent for ``unresponsive_seconds`` is retried: a dead runner never leaves its rollout running."""
        store = fast_store
        default = RolloutConfig()
        assert default.unresponsive_seconds is not None and default.max_attempts > 1
        attempted = await self.start_running(store, worker_id="w-dead")
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        # Its last sign of life lies a whole window back (its runner died then), so the test need not wait it out.
        silent_since = time.time() - default.unresponsive_seconds - 1
        await store.update_attempt(rid, aid, last_heartbeat_time=silent_since)
        await self.eventually(
            lambda: store.get_rollout(rid), lambda r: r.status is RolloutStatus.REQUEUING, what="requeuing"
        )
        assert (await store.get_attempt(rid, aid)).status is AttemptStatus.UNRESPONSIVE
        again = await store.dequeue_rollout(worker_id="w-alive")
        assert again is not None and again.rollout_id == rid and again.attempt.sequence_id == 2

    async def test_watchdog_wakes_waiters(self, fast_store: LightningStore) -> None:
        store = fast_store
        timed = await self.start_running(store, config=RolloutConfig(timeout_seconds=LIMIT, max_attempts=1))
        silent = await self.start_running(store, config=RolloutConfig(unresponsive_seconds=LIMIT, max_attempts=1))
        started = time.monotonic()
        ended = await store.wait_for_rollouts([silent.rollout_id, timed.rollout_id], timeout=10)
        assert time.monotonic() - started < 4.0
        assert [r.rollout_id for r in ended] == [silent.rollout_id, timed.rollout_id]
        assert all(r.status is RolloutStatus.FAILED for r in ended)
