"""Push-based waiting: wait_for_rollouts, dequeue with a timeout, and close() waking waiters."""

from __future__ import annotations

import asyncio
import time

import pytest

from agl_kernel.errors import NotFoundError
from agl_kernel.models import AttemptStatus, EnqueueRequest, RolloutConfig, RolloutStatus
from agl_kernel.store.base import LightningStore
from agl_kernel.testing._base import NO_RETRY, SuiteBase

PROMPT = 2.0
"""A woken waiter must return within this many seconds of the event (its own timeout is far longer)."""


class WaitForRolloutsTests(SuiteBase):
    async def test_timeout_zero_returns_ended_only(self, store: LightningStore) -> None:
        done = await store.start_rollout("done")
        await self.finish(store, done.rollout_id)
        running = await self.start_running(store)
        cancelled = await store.enqueue_rollout("cancelled")
        await store.cancel_rollout(cancelled.rollout_id)
        failed = await store.start_rollout("failed", config=NO_RETRY)
        await self.finish(store, failed.rollout_id, AttemptStatus.FAILED)
        requeuing = await self.start_running(store, config=RolloutConfig(max_attempts=2))
        await self.finish(store, requeuing.rollout_id, AttemptStatus.FAILED)
        queued = await store.enqueue_rollout("queued")

        order = [
            cancelled.rollout_id,
            running.rollout_id,
            queued.rollout_id,
            done.rollout_id,
            requeuing.rollout_id,
            failed.rollout_id,
        ]
        started = time.monotonic()
        ended = await store.wait_for_rollouts(order, timeout=0)
        assert time.monotonic() - started < 1.0
        assert [r.rollout_id for r in ended] == [cancelled.rollout_id, done.rollout_id, failed.rollout_id]
        assert [r.status for r in ended] == [RolloutStatus.CANCELLED, RolloutStatus.SUCCEEDED, RolloutStatus.FAILED]

    async def test_already_ended_returns_at_once(self, store: LightningStore) -> None:
        done = await store.start_rollout("done")
        await self.finish(store, done.rollout_id)
        ended = await asyncio.wait_for(store.wait_for_rollouts([done.rollout_id], timeout=None), PROMPT)
        assert [r.status for r in ended] == [RolloutStatus.SUCCEEDED]

    async def test_returns_when_all_have_ended(self, store: LightningStore) -> None:
        a = await self.start_running(store)
        b = await self.start_running(store, config=NO_RETRY)
        waiter = asyncio.create_task(store.wait_for_rollouts([b.rollout_id, a.rollout_id], timeout=10))
        await asyncio.sleep(0.1)
        await self.finish(store, a.rollout_id)
        await asyncio.sleep(0.3)
        assert not waiter.done(), "must wait for every named rollout"
        await self.finish(store, b.rollout_id, AttemptStatus.FAILED)
        ended = await asyncio.wait_for(waiter, PROMPT)
        assert [r.rollout_id for r in ended] == [b.rollout_id, a.rollout_id]
        assert [r.status for r in ended] == [RolloutStatus.FAILED, RolloutStatus.SUCCEEDED]

    async def test_partial_result_at_timeout(self, store: LightningStore) -> None:
        a = await self.start_running(store)
        b = await self.start_running(store)

        async def finish_a_later() -> None:
            await asyncio.sleep(0.1)
            await self.finish(store, a.rollout_id)

        finisher = asyncio.create_task(finish_a_later())
        started = time.monotonic()
        ended = await store.wait_for_rollouts([a.rollout_id, b.rollout_id], timeout=0.6)
        elapsed = time.monotonic() - started
        await finisher
        assert 0.5 <= elapsed < 0.6 + PROMPT
        assert [r.rollout_id for r in ended] == [a.rollout_id]
        assert ended[0].status is RolloutStatus.SUCCEEDED

    async def test_many_waiters_on_overlapping_ids(self, store: LightningStore) -> None:
        rollouts = [await self.start_running(store, config=NO_RETRY) for _ in range(6)]
        r = [x.rollout_id for x in rollouts]
        groups = [[r[0], r[1]], [r[1], r[2], r[3]], [r[3]], list(reversed(r)), [r[5], r[4]], [r[2], r[0]]]
        waiters = [asyncio.create_task(store.wait_for_rollouts(g, timeout=10)) for g in groups]
        await asyncio.sleep(0.1)
        # End them in every possible way.
        await self.finish(store, r[0])
        await self.finish(store, r[1], AttemptStatus.FAILED)
        await store.update_rollout(r[2], status=RolloutStatus.SUCCEEDED)
        await store.cancel_rollout(r[3])
        await store.update_rollout(r[4], status=RolloutStatus.FAILED)
        await self.finish(store, r[5], AttemptStatus.TIMEOUT)
        started = time.monotonic()
        results = await asyncio.wait_for(asyncio.gather(*waiters), PROMPT)
        assert time.monotonic() - started < PROMPT
        for group, ended in zip(groups, results):
            assert [x.rollout_id for x in ended] == group
            assert all(x.status.is_terminal for x in ended)

    async def test_unknown_id_raises_before_waiting(self, store: LightningStore) -> None:
        known = await self.start_running(store)
        started = time.monotonic()
        with pytest.raises(NotFoundError, match="ro-missing"):
            await asyncio.wait_for(store.wait_for_rollouts([known.rollout_id, "ro-missing"], timeout=None), PROMPT)
        assert time.monotonic() - started < PROMPT


class DequeueWaitTests(SuiteBase):
    async def test_dequeue_wakes_on_enqueue(self, store: LightningStore) -> None:
        waiter = asyncio.create_task(store.dequeue_rollout(worker_id="w-wait", timeout=10))
        await asyncio.sleep(0.2)
        assert not waiter.done()
        rollout = await store.enqueue_rollout("arrives")
        started = time.monotonic()
        attempted = await asyncio.wait_for(waiter, PROMPT)
        assert time.monotonic() - started < PROMPT
        assert attempted is not None and attempted.rollout_id == rollout.rollout_id
        assert attempted.attempt.worker_id == "w-wait"

    async def test_dequeue_many_wakes_on_first_item(self, store: LightningStore) -> None:
        waiter = asyncio.create_task(store.dequeue_many_rollouts(limit=5, timeout=10))
        await asyncio.sleep(0.2)
        assert not waiter.done()
        batch = await store.enqueue_many_rollouts([EnqueueRequest(input=1), EnqueueRequest(input=2)])
        got = await asyncio.wait_for(waiter, PROMPT)
        assert 1 <= len(got) <= 2
        assert [a.rollout_id for a in got] == [b.rollout_id for b in batch][: len(got)]

    async def test_dequeue_wakes_on_requeue(self, store: LightningStore) -> None:
        attempted = await self.start_running(store, config=RolloutConfig(max_attempts=2))
        waiter = asyncio.create_task(store.dequeue_rollout(timeout=10))
        await asyncio.sleep(0.2)
        assert not waiter.done()
        await self.finish(store, attempted.rollout_id, AttemptStatus.FAILED)
        again = await asyncio.wait_for(waiter, PROMPT)
        assert again is not None and again.rollout_id == attempted.rollout_id
        assert again.attempt.sequence_id == 2

    async def test_dequeue_timeout_returns_none(self, store: LightningStore) -> None:
        started = time.monotonic()
        assert await store.dequeue_rollout(timeout=0.3) is None
        elapsed = time.monotonic() - started
        assert 0.25 <= elapsed < 0.3 + PROMPT
        started = time.monotonic()
        assert await store.dequeue_many_rollouts(limit=3, timeout=0.3) == []
        elapsed = time.monotonic() - started
        assert 0.25 <= elapsed < 0.3 + PROMPT

    async def test_dequeue_with_timeout_takes_available_work_at_once(self, store: LightningStore) -> None:
        rollout = await store.enqueue_rollout("ready")
        started = time.monotonic()
        attempted = await store.dequeue_rollout(timeout=10)
        assert time.monotonic() - started < 1.0
        assert attempted is not None and attempted.rollout_id == rollout.rollout_id


class CloseWakesWaitersTests(SuiteBase):
    async def test_close_wakes_waiters(self, store: LightningStore) -> None:
        running = await self.start_running(store)
        rollout_waiter = asyncio.create_task(store.wait_for_rollouts([running.rollout_id], timeout=30))
        dequeue_waiter = asyncio.create_task(store.dequeue_rollout(timeout=30))
        await asyncio.sleep(0.2)
        assert not rollout_waiter.done() and not dequeue_waiter.done()
        await store.close()
        results = await asyncio.wait_for(asyncio.gather(rollout_waiter, dequeue_waiter), PROMPT)
        assert list(results) == [[], None]
