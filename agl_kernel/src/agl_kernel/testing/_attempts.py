"""Attempt status rules: retries, the newest-attempt rule, final statuses, heartbeats and worker bookkeeping."""

from __future__ import annotations

import time

import pytest

from agl_kernel.errors import InvalidStatusTransitionError, NotFoundError
from agl_kernel.models import AttemptStatus, RolloutConfig, RolloutStatus, WorkerStatus
from agl_kernel.store.base import LightningStore
from agl_kernel.testing._base import NO_RETRY, SuiteBase, make_span

FINALS = (AttemptStatus.SUCCEEDED, AttemptStatus.FAILED, AttemptStatus.TIMEOUT)


class RetryTests(SuiteBase):
    async def test_succeeded_attempt_ends_rollout(self, store: LightningStore) -> None:
        attempted = await self.start_running(store)
        rid = attempted.rollout_id
        assert await self.rollout_status(store, rid) is RolloutStatus.RUNNING
        before = time.time()
        attempt = await store.update_attempt(rid, attempted.attempt.attempt_id, status=AttemptStatus.SUCCEEDED)
        assert attempt.status is AttemptStatus.SUCCEEDED
        assert attempt.end_time is not None and before - 1 <= attempt.end_time <= time.time() + 1
        rollout = await store.get_rollout(rid)
        assert rollout.status is RolloutStatus.SUCCEEDED
        assert rollout.end_time is not None

    async def test_failed_attempt_with_retries_requeues(self, store: LightningStore) -> None:
        config = RolloutConfig(max_attempts=2)
        attempted = await self.start_running(store, config=config)
        rid = attempted.rollout_id
        other = await store.enqueue_rollout("other")
        failed = await store.update_attempt(rid, "latest", status=AttemptStatus.FAILED)
        assert failed.status is AttemptStatus.FAILED and failed.end_time is not None
        rollout = await store.get_rollout(rid)
        assert rollout.status is RolloutStatus.REQUEUING
        assert rollout.end_time is None
        # At the back of the queue: the rollout enqueued meanwhile comes first.
        first = await store.dequeue_rollout()
        assert first is not None and first.rollout_id == other.rollout_id
        second = await store.dequeue_rollout()
        assert second is not None and second.rollout_id == rid
        assert second.attempt.sequence_id == 2
        assert second.attempt.attempt_id != attempted.attempt.attempt_id
        assert second.attempt_count == 2
        assert second.status is RolloutStatus.PREPARING
        attempts = await store.query_attempts(rid)
        assert [a.sequence_id for a in attempts.items] == [1, 2]
        assert [a.status for a in attempts.items] == [AttemptStatus.FAILED, AttemptStatus.PREPARING]
        # Attempts exhausted: the rollout fails.
        await store.update_attempt(rid, "latest", status=AttemptStatus.FAILED)
        rollout = await store.get_rollout(rid)
        assert rollout.status is RolloutStatus.FAILED
        assert rollout.end_time is not None
        assert await store.dequeue_rollout() is None

    async def test_single_attempt_fails_rollout(self, store: LightningStore) -> None:
        for status in (AttemptStatus.FAILED, AttemptStatus.TIMEOUT, AttemptStatus.UNRESPONSIVE):
            attempted = await self.start_running(store, config=RolloutConfig(max_attempts=1))
            await store.update_attempt(attempted.rollout_id, "latest", status=status)
            assert await self.rollout_status(store, attempted.rollout_id) is RolloutStatus.FAILED, status
        assert await store.dequeue_rollout() is None

    async def test_timeout_and_unresponsive_retry(self, store: LightningStore) -> None:
        for status in (AttemptStatus.TIMEOUT, AttemptStatus.UNRESPONSIVE):
            attempted = await self.start_running(store, config=RolloutConfig(max_attempts=2))
            await store.update_attempt(attempted.rollout_id, "latest", status=status)
            assert await self.rollout_status(store, attempted.rollout_id) is RolloutStatus.REQUEUING, status
            again = await store.dequeue_rollout()
            assert again is not None and again.rollout_id == attempted.rollout_id
            assert again.attempt.sequence_id == 2

    async def test_retry_condition_respected(self, store: LightningStore) -> None:
        config = RolloutConfig(max_attempts=3, retry_condition=(AttemptStatus.TIMEOUT,))
        attempted = await self.start_running(store, config=config)
        await store.update_attempt(attempted.rollout_id, "latest", status=AttemptStatus.FAILED)
        assert await self.rollout_status(store, attempted.rollout_id) is RolloutStatus.FAILED
        assert await store.dequeue_rollout() is None

        never = await self.start_running(store, config=RolloutConfig(max_attempts=5, retry_condition=()))
        await store.update_attempt(never.rollout_id, "latest", status=AttemptStatus.UNRESPONSIVE)
        assert await self.rollout_status(store, never.rollout_id) is RolloutStatus.FAILED

        retried = await self.start_running(store, config=config)
        await store.update_attempt(retried.rollout_id, "latest", status=AttemptStatus.TIMEOUT)
        assert await self.rollout_status(store, retried.rollout_id) is RolloutStatus.REQUEUING

    async def test_max_attempts_counts_first_attempt(self, store: LightningStore) -> None:
        attempted = await self.start_running(store, config=RolloutConfig(max_attempts=3))
        rid = attempted.rollout_id
        for expected_seq in (2, 3):
            await store.update_attempt(rid, "latest", status=AttemptStatus.FAILED)
            assert await self.rollout_status(store, rid) is RolloutStatus.REQUEUING
            nxt = await store.dequeue_rollout()
            assert nxt is not None and nxt.attempt.sequence_id == expected_seq
        await store.update_attempt(rid, "latest", status=AttemptStatus.FAILED)
        rollout = await store.get_rollout(rid)
        assert rollout.status is RolloutStatus.FAILED and rollout.attempt_count == 3

    async def test_requeuing_rollout_revived_by_update_attempt(self, store: LightningStore) -> None:
        attempted = await self.start_running(store, config=RolloutConfig(max_attempts=2))
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        await store.update_attempt(rid, aid, status=AttemptStatus.UNRESPONSIVE)
        assert await self.rollout_status(store, rid) is RolloutStatus.REQUEUING
        # unresponsive is not final: a late update revives the newest attempt, and the rollout follows.
        revived = await store.update_attempt(rid, aid, status=AttemptStatus.RUNNING)
        assert revived.status is AttemptStatus.RUNNING
        assert await self.rollout_status(store, rid) is RolloutStatus.RUNNING
        # Its queue entry went stale.
        assert await store.dequeue_rollout() is None
        await store.update_attempt(rid, aid, status=AttemptStatus.SUCCEEDED)
        assert await self.rollout_status(store, rid) is RolloutStatus.SUCCEEDED


class NewestAttemptTests(SuiteBase):
    async def test_old_attempt_never_changes_rollout(self, store: LightningStore) -> None:
        attempted = await self.start_running(store, config=RolloutConfig(max_attempts=3))
        rid, old = attempted.rollout_id, attempted.attempt.attempt_id
        await store.update_attempt(rid, old, status=AttemptStatus.UNRESPONSIVE)
        assert await self.rollout_status(store, rid) is RolloutStatus.REQUEUING
        newer = await store.dequeue_rollout()
        assert newer is not None and newer.attempt.sequence_id == 2
        new = newer.attempt.attempt_id

        await store.update_attempt(rid, old, status=AttemptStatus.RUNNING)
        assert await self.rollout_status(store, rid) is RolloutStatus.PREPARING
        await store.update_attempt(rid, old, status=AttemptStatus.SUCCEEDED)
        rollout = await store.get_rollout(rid)
        assert rollout.status is RolloutStatus.PREPARING and rollout.end_time is None
        assert rollout.attempt_count == 2
        assert (await store.get_attempt(rid, old)).status is AttemptStatus.SUCCEEDED
        assert (await store.get_attempt(rid, new)).status is AttemptStatus.PREPARING
        assert (await store.get_attempt(rid)).attempt_id == new

        # The newest attempt still drives the rollout.
        await store.update_attempt(rid, new, status=AttemptStatus.RUNNING)
        assert await self.rollout_status(store, rid) is RolloutStatus.RUNNING

    async def test_old_attempt_failure_does_not_requeue(self, store: LightningStore) -> None:
        first = await store.start_rollout("x", config=RolloutConfig(max_attempts=5))
        rid = first.rollout_id
        second = await store.start_attempt(rid)
        await store.update_attempt(rid, second.attempt.attempt_id, status=AttemptStatus.RUNNING)
        await store.update_attempt(rid, first.attempt.attempt_id, status=AttemptStatus.FAILED)
        rollout = await store.get_rollout(rid)
        assert rollout.status is RolloutStatus.RUNNING and rollout.attempt_count == 2
        assert await store.dequeue_rollout() is None

    async def test_old_attempt_spans_do_not_change_rollout(self, store: LightningStore) -> None:
        first = await store.start_rollout("x")
        rid = first.rollout_id
        await store.start_attempt(rid)
        await store.add_span(make_span(rid, first.attempt.attempt_id))
        assert (await store.get_attempt(rid, first.attempt.attempt_id)).status is AttemptStatus.RUNNING
        assert await self.rollout_status(store, rid) is RolloutStatus.PREPARING


class FinalStatusTests(SuiteBase):
    async def test_final_statuses_cannot_be_left(self, store: LightningStore) -> None:
        for final in FINALS:
            attempted = await self.start_running(store, config=RolloutConfig(max_attempts=1))
            rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
            done = await store.update_attempt(rid, aid, status=final)
            rollout_after = await store.get_rollout(rid)
            for other in AttemptStatus:
                if other is final:
                    continue
                with pytest.raises(InvalidStatusTransitionError):
                    await store.update_attempt(rid, aid, status=other)
            # Same status again: a no-op.
            same = await store.update_attempt(rid, aid, status=final)
            assert same.status is final
            assert same.end_time == done.end_time
            current = await store.get_attempt(rid, aid)
            assert current.status is final and current.end_time == done.end_time
            rollout_now = await store.get_rollout(rid)
            assert rollout_now.status == rollout_after.status
            assert rollout_now.end_time == rollout_after.end_time

    async def test_unresponsive_is_not_final(self, store: LightningStore) -> None:
        attempted = await self.start_running(store, config=RolloutConfig(max_attempts=1))
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        await store.update_attempt(rid, aid, status=AttemptStatus.UNRESPONSIVE)
        for nxt in (AttemptStatus.RUNNING, AttemptStatus.SUCCEEDED):
            assert (await store.update_attempt(rid, aid, status=nxt)).status is nxt

    async def test_update_attempt_latest_and_fields(self, store: LightningStore) -> None:
        first = await store.start_rollout("x")
        rid = first.rollout_id
        second = await store.start_attempt(rid)
        updated = await store.update_attempt(rid, "latest", metadata={"k": "v"}, worker_id="w-x")
        assert updated.attempt_id == second.attempt.attempt_id
        assert updated.metadata == {"k": "v"} and updated.worker_id == "w-x"
        assert (await store.get_attempt(rid, first.attempt.attempt_id)).metadata == {}
        replaced = await store.update_attempt(rid, "latest", metadata={"z": 1})
        assert replaced.metadata == {"z": 1}
        cleared = await store.update_attempt(rid, "latest", worker_id=None)
        assert cleared.worker_id is None

    async def test_update_attempt_is_heartbeat(self, store: LightningStore) -> None:
        attempted = await store.start_rollout("x")
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        before = time.time()
        beat = await store.update_attempt(rid, aid)
        assert beat.last_heartbeat_time is not None
        assert before - 1 <= beat.last_heartbeat_time <= time.time() + 1
        given = await store.update_attempt(rid, aid, last_heartbeat_time=1234.5)
        assert given.last_heartbeat_time == 1234.5
        assert (await store.get_attempt(rid, aid)).last_heartbeat_time == 1234.5

    async def test_update_attempt_unknown(self, store: LightningStore) -> None:
        with pytest.raises(NotFoundError, match="ro-missing"):
            await store.update_attempt("ro-missing", "latest", status=AttemptStatus.RUNNING)
        rollout = await store.enqueue_rollout("x")
        with pytest.raises(NotFoundError):
            await store.update_attempt(rollout.rollout_id, "latest", status=AttemptStatus.RUNNING)
        attempted = await store.start_rollout("y")
        with pytest.raises(NotFoundError, match="at-missing"):
            await store.update_attempt(attempted.rollout_id, "at-missing", status=AttemptStatus.RUNNING)
        with pytest.raises(NotFoundError, match="at-missing"):
            await store.get_attempt(attempted.rollout_id, "at-missing")
        with pytest.raises(NotFoundError, match="ro-missing"):
            await store.get_attempt("ro-missing")

    async def test_attempt_ids_distinct_across_rollouts(self, store: LightningStore) -> None:
        a = await store.start_rollout("a")
        b = await store.start_rollout("b")
        c = await store.start_attempt(a.rollout_id)
        assert len({a.attempt.attempt_id, b.attempt.attempt_id, c.attempt.attempt_id}) == 3


class WorkerTests(SuiteBase):
    async def test_dequeue_with_worker_marks_busy(self, store: LightningStore) -> None:
        rollout = await store.enqueue_rollout("x")
        before = time.time()
        attempted = await store.dequeue_rollout(worker_id="w-1")
        assert attempted is not None
        assert attempted.attempt.worker_id == "w-1"
        worker = await store.get_worker("w-1")
        assert worker.status is WorkerStatus.BUSY
        assert worker.current_rollout_id == rollout.rollout_id
        assert worker.current_attempt_id == attempted.attempt.attempt_id
        assert worker.last_dequeue_time is not None and worker.last_dequeue_time >= before - 1
        await store.update_attempt(rollout.rollout_id, "latest", status=AttemptStatus.SUCCEEDED)
        freed = await store.get_worker("w-1")
        assert freed.status is WorkerStatus.IDLE

    async def test_each_final_status_frees_worker(self, store: LightningStore) -> None:
        for i, final in enumerate(FINALS):
            attempted = await self.start_running(store, worker_id=f"w-{i}", config=NO_RETRY)
            assert (await store.get_worker(f"w-{i}")).status is WorkerStatus.BUSY
            await store.update_attempt(attempted.rollout_id, "latest", status=final)
            assert (await store.get_worker(f"w-{i}")).status is WorkerStatus.IDLE, final

    async def test_update_worker(self, store: LightningStore) -> None:
        with pytest.raises(NotFoundError, match="w-missing"):
            await store.get_worker("w-missing")
        before = time.time()
        worker = await store.update_worker("w-new", heartbeat_stats={"cpu": 0.5, "gpu": [1, 2]})
        assert worker.worker_id == "w-new"
        assert worker.status is WorkerStatus.IDLE
        assert worker.heartbeat_stats == {"cpu": 0.5, "gpu": [1, 2]}
        assert worker.last_heartbeat_time is not None and worker.last_heartbeat_time >= before - 1
        assert await store.get_worker("w-new") == worker
        replaced = await store.update_worker("w-new", heartbeat_stats={"mem": 1})
        assert replaced.heartbeat_stats == {"mem": 1}
        kept = await store.update_worker("w-new")
        assert kept.heartbeat_stats == {"mem": 1}
        assert kept.last_heartbeat_time >= replaced.last_heartbeat_time  # type: ignore[operator]
        assert worker.heartbeat_stats == {"cpu": 0.5, "gpu": [1, 2]}  # snapshot unchanged

    async def test_update_worker_keeps_busy(self, store: LightningStore) -> None:
        await self.start_running(store, worker_id="w-b")
        worker = await store.update_worker("w-b", heartbeat_stats={"x": 1})
        assert worker.status is WorkerStatus.BUSY
