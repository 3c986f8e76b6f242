"""Rollout creation, the queue (FIFO, stale entries), start_attempt and update_rollout / cancel_rollout."""

from __future__ import annotations

import time

import pytest

from agl_kernel.errors import InvalidStatusTransitionError, NotFoundError
from agl_kernel.models import (
    AttemptedRollout,
    AttemptStatus,
    EnqueueRequest,
    PromptTemplate,
    Rollout,
    RolloutConfig,
    RolloutMode,
    RolloutStatus,
    StoreCapabilities,
)
from agl_kernel.store.base import LightningStore
from agl_kernel.testing._base import NO_RETRY, SuiteBase


class RolloutCreationTests(SuiteBase):
    async def test_capabilities_is_store_capabilities(self, store: LightningStore) -> None:
        assert isinstance(store.capabilities, StoreCapabilities)

    async def test_enqueue_creates_queuing_rollout_without_attempt(self, store: LightningStore) -> None:
        before = time.time()
        rollout = await store.enqueue_rollout(
            {"question": "2+2", "nested": [1, 2, {"x": None}]},
            mode=RolloutMode.TRAIN,
            metadata={"tag": "a"},
        )
        assert isinstance(rollout, Rollout)
        assert rollout.rollout_id
        assert rollout.status is RolloutStatus.QUEUING
        assert rollout.attempt_count == 0
        assert rollout.end_time is None
        assert rollout.mode is RolloutMode.TRAIN
        assert rollout.metadata == {"tag": "a"}
        assert rollout.input == {"question": "2+2", "nested": [1, 2, {"x": None}]}
        assert rollout.config == RolloutConfig()
        assert rollout.resources_id is None
        assert before - 1 <= rollout.start_time <= time.time() + 1

        fetched = await store.get_rollout(rollout.rollout_id)
        assert fetched == rollout
        with pytest.raises(NotFoundError):
            await store.get_attempt(rollout.rollout_id)
        with pytest.raises(NotFoundError):
            await store.get_attempt(rollout.rollout_id, "latest")
        attempts = await store.query_attempts(rollout.rollout_id)
        assert attempts.total == 0 and attempts.items == []

    async def test_enqueue_gives_distinct_ids(self, store: LightningStore) -> None:
        rollouts = [await store.enqueue_rollout(i) for i in range(10)]
        assert len({r.rollout_id for r in rollouts}) == 10

    async def test_enqueue_keeps_given_config(self, store: LightningStore) -> None:
        config = RolloutConfig(
            timeout_seconds=12.5, unresponsive_seconds=3.0, max_attempts=4, retry_condition=(AttemptStatus.TIMEOUT,)
        )
        rollout = await store.enqueue_rollout("x", config=config)
        assert rollout.config == config
        assert (await store.get_rollout(rollout.rollout_id)).config == config

    async def test_start_rollout_skips_queue(self, store: LightningStore) -> None:
        attempted = await store.start_rollout("x", mode=RolloutMode.VAL, metadata={"k": 1}, worker_id="w-start")
        assert isinstance(attempted, AttemptedRollout)
        assert attempted.status is RolloutStatus.PREPARING
        assert attempted.attempt_count == 1
        assert attempted.mode is RolloutMode.VAL
        assert attempted.metadata == {"k": 1}
        attempt = attempted.attempt
        assert attempt.rollout_id == attempted.rollout_id
        assert attempt.sequence_id == 1
        assert attempt.status is AttemptStatus.PREPARING
        assert attempt.end_time is None
        assert attempt.worker_id == "w-start"
        assert await store.get_attempt(attempted.rollout_id) == attempt
        assert await store.get_attempt(attempted.rollout_id, attempt.attempt_id) == attempt
        assert (await store.get_rollout(attempted.rollout_id)).status is RolloutStatus.PREPARING
        # It never entered the queue.
        assert await store.dequeue_rollout() is None

    async def test_latest_resources_pinned_at_enqueue(self, store: LightningStore) -> None:
        first = await store.add_resources({"prompt": PromptTemplate(template="v1 {x}")})
        a = await store.enqueue_rollout("a")
        s = await store.start_rollout("s")
        assert a.resources_id == first.resources_id
        assert s.resources_id == first.resources_id
        second = await store.update_resources("other", {"prompt": PromptTemplate(template="v2 {x}")})
        b = await store.enqueue_rollout("b")
        assert b.resources_id == second.resources_id == "other"
        # The earlier rollout keeps what it pinned.
        assert (await store.get_rollout(a.rollout_id)).resources_id == first.resources_id
        # An explicit id wins over the latest.
        c = await store.enqueue_rollout("c", resources_id=first.resources_id)
        assert c.resources_id == first.resources_id
        many = await store.enqueue_many_rollouts([EnqueueRequest(input="m")])
        assert many[0].resources_id == "other"

    async def test_unknown_resources_id_rejected(self, store: LightningStore) -> None:
        with pytest.raises(NotFoundError, match="no-such-resources"):
            await store.enqueue_rollout("x", resources_id="no-such-resources")
        with pytest.raises(NotFoundError, match="no-such-resources"):
            await store.start_rollout("x", resources_id="no-such-resources")
        with pytest.raises(NotFoundError, match="no-such-resources"):
            await store.enqueue_many_rollouts(
                [EnqueueRequest(input="ok"), EnqueueRequest(input="bad", resources_id="no-such-resources")]
            )
        # Nothing was created, not even the valid item of the atomic batch.
        assert (await store.query_rollouts()).total == 0
        assert await store.dequeue_rollout() is None

    async def test_enqueue_many_empty(self, store: LightningStore) -> None:
        assert await store.enqueue_many_rollouts([]) == []

    async def test_enqueue_many_fields(self, store: LightningStore) -> None:
        config = RolloutConfig(max_attempts=3)
        rollouts = await store.enqueue_many_rollouts(
            [
                EnqueueRequest(input={"i": 0}, mode=RolloutMode.TEST, config=config, metadata={"m": 0}),
                EnqueueRequest(input={"i": 1}),
            ]
        )
        assert [r.input for r in rollouts] == [{"i": 0}, {"i": 1}]
        assert all(r.status is RolloutStatus.QUEUING and r.attempt_count == 0 for r in rollouts)
        assert rollouts[0].mode is RolloutMode.TEST and rollouts[0].config == config
        assert rollouts[0].metadata == {"m": 0}
        assert rollouts[1].mode is None and rollouts[1].config == RolloutConfig()
        for r in rollouts:
            assert await store.get_rollout(r.rollout_id) == r


class QueueTests(SuiteBase):
    async def test_dequeue_empty_returns_none(self, store: LightningStore) -> None:
        assert await store.dequeue_rollout() is None
        assert await store.dequeue_many_rollouts(limit=5) == []

    async def test_dequeue_starts_attempt(self, store: LightningStore) -> None:
        rollout = await store.enqueue_rollout("x")
        attempted = await store.dequeue_rollout()
        assert attempted is not None
        assert attempted.rollout_id == rollout.rollout_id
        assert attempted.status is RolloutStatus.PREPARING
        assert attempted.attempt_count == 1
        assert attempted.input == "x"
        assert attempted.attempt.sequence_id == 1
        assert attempted.attempt.status is AttemptStatus.PREPARING
        assert attempted.attempt.rollout_id == rollout.rollout_id
        assert await store.get_attempt(rollout.rollout_id) == attempted.attempt
        fetched = await store.get_rollout(rollout.rollout_id)
        assert fetched.status is RolloutStatus.PREPARING and fetched.attempt_count == 1
        # The returned snapshot of the enqueue never changes.
        assert rollout.status is RolloutStatus.QUEUING and rollout.attempt_count == 0
        assert await store.dequeue_rollout() is None

    async def test_fifo_single_enqueues(self, store: LightningStore) -> None:
        rollouts = [await store.enqueue_rollout(i) for i in range(6)]
        dequeued = await self.drain(store)
        assert self.ids(dequeued) == self.ids(rollouts)

    async def test_fifo_enqueue_many_keeps_order(self, store: LightningStore) -> None:
        first = await store.enqueue_rollout("first")
        batch = await store.enqueue_many_rollouts([EnqueueRequest(input=i) for i in range(8)])
        last = await store.enqueue_rollout("last")
        assert [r.input for r in batch] == list(range(8))
        dequeued = await self.drain(store)
        assert self.ids(dequeued) == [first.rollout_id, *self.ids(batch), last.rollout_id]

    async def test_dequeue_many(self, store: LightningStore) -> None:
        rollouts = await store.enqueue_many_rollouts([EnqueueRequest(input=i) for i in range(5)])
        got = await store.dequeue_many_rollouts(limit=3, worker_id="w-many")
        assert self.ids(got) == self.ids(rollouts[:3])
        assert all(a.attempt.sequence_id == 1 and a.attempt.worker_id == "w-many" for a in got)
        assert all(a.status is RolloutStatus.PREPARING for a in got)
        rest = await store.dequeue_many_rollouts(limit=10)
        assert self.ids(rest) == self.ids(rollouts[3:])
        assert await store.dequeue_many_rollouts(limit=10) == []

    async def test_cancelled_queue_entry_skipped(self, store: LightningStore) -> None:
        a, b, c = [await store.enqueue_rollout(i) for i in range(3)]
        await store.cancel_rollout(b.rollout_id)
        dequeued = await self.drain(store)
        assert self.ids(dequeued) == [a.rollout_id, c.rollout_id]
        assert (await store.get_rollout(b.rollout_id)).attempt_count == 0

    async def test_started_by_hand_not_dequeued_again(self, store: LightningStore) -> None:
        a, b = [await store.enqueue_rollout(i) for i in range(2)]
        started = await store.start_attempt(a.rollout_id, worker_id="w-hand")
        assert started.status is RolloutStatus.PREPARING
        assert started.attempt.sequence_id == 1 and started.attempt.worker_id == "w-hand"
        dequeued = await self.drain(store)
        assert self.ids(dequeued) == [b.rollout_id]
        assert (await store.get_rollout(a.rollout_id)).attempt_count == 1

    async def test_update_to_non_queued_status_makes_entry_stale(self, store: LightningStore) -> None:
        a, b = [await store.enqueue_rollout(i) for i in range(2)]
        await store.update_rollout(a.rollout_id, status=RolloutStatus.RUNNING)
        assert self.ids(await self.drain(store)) == [b.rollout_id]

    async def test_update_to_queued_status_puts_at_back(self, store: LightningStore) -> None:
        a = await store.enqueue_rollout("a")
        assert (await store.dequeue_rollout()) is not None
        # A dequeued (preparing) rollout put back into the queue goes to its back and is dequeued again.
        c = await store.enqueue_rollout("c")
        await store.update_rollout(a.rollout_id, status=RolloutStatus.REQUEUING)
        assert (await store.get_rollout(a.rollout_id)).status is RolloutStatus.REQUEUING
        d = await store.enqueue_rollout("d")
        again = await self.drain(store)
        assert self.ids(again) == [c.rollout_id, a.rollout_id, d.rollout_id]
        assert again[1].attempt.sequence_id == 2
        # The same with queuing.
        await store.update_rollout(c.rollout_id, status=RolloutStatus.QUEUING)
        assert self.ids(await self.drain(store)) == [c.rollout_id]

    async def test_requeue_of_queued_rollout_moves_it_back(self, store: LightningStore) -> None:
        # "queuing/requeuing puts it at the back of the queue" also for a rollout that is queuing already;
        # it is still handed out only once.
        a, b = [await store.enqueue_rollout(i) for i in range(2)]
        await store.update_rollout(a.rollout_id, status=RolloutStatus.QUEUING)
        assert self.ids(await self.drain(store)) == [b.rollout_id, a.rollout_id]

    async def test_queue_depth_counts_live_entries(self, store: LightningStore) -> None:
        rollouts = [await store.enqueue_rollout(i) for i in range(4)]
        assert (await store.statistics()).queue_depth == 4
        await store.dequeue_rollout()
        assert (await store.statistics()).queue_depth == 3
        await store.start_attempt(rollouts[2].rollout_id)
        assert (await store.statistics()).queue_depth == 2
        await store.cancel_rollout(rollouts[3].rollout_id)
        assert (await store.statistics()).queue_depth == 1, "a cancelled rollout's entry is not live"
        await store.update_rollout(rollouts[1].rollout_id, status=RolloutStatus.RUNNING)
        assert (await store.statistics()).queue_depth == 0, "a rollout moved to running has no live entry"


class StartAttemptTests(SuiteBase):
    async def test_start_attempt_on_active_rollout(self, store: LightningStore) -> None:
        first = await store.start_rollout("x")
        second = await store.start_attempt(first.rollout_id, worker_id="w2")
        assert second.attempt.sequence_id == 2
        assert second.attempt.attempt_id != first.attempt.attempt_id
        assert second.attempt.worker_id == "w2"
        assert second.attempt.status is AttemptStatus.PREPARING
        assert second.status is RolloutStatus.PREPARING
        assert second.attempt_count == 2
        assert (await store.get_attempt(first.rollout_id)).attempt_id == second.attempt.attempt_id
        # The older attempt is still there, unchanged.
        assert await store.get_attempt(first.rollout_id, first.attempt.attempt_id) == first.attempt

    async def test_start_attempt_on_terminal_rollout_raises(self, store: LightningStore) -> None:
        for status in (RolloutStatus.SUCCEEDED, RolloutStatus.FAILED, RolloutStatus.CANCELLED):
            rollout = await store.start_rollout("x")
            await store.update_rollout(rollout.rollout_id, status=status)
            with pytest.raises(InvalidStatusTransitionError):
                await store.start_attempt(rollout.rollout_id)
            assert (await store.get_rollout(rollout.rollout_id)).attempt_count == 1

    async def test_start_attempt_unknown_rollout(self, store: LightningStore) -> None:
        with pytest.raises(NotFoundError, match="ro-missing"):
            await store.start_attempt("ro-missing")


class UpdateRolloutTests(SuiteBase):
    async def test_update_fields_and_metadata_replaced(self, store: LightningStore) -> None:
        resources = await store.add_resources({"p": PromptTemplate(template="t")})
        rollout = await store.enqueue_rollout("x", metadata={"a": 1, "b": 2})
        config = RolloutConfig(max_attempts=5)
        updated = await store.update_rollout(
            rollout.rollout_id,
            metadata={"c": 3},
            mode=RolloutMode.VAL,
            config=config,
            resources_id=resources.resources_id,
        )
        assert updated.metadata == {"c": 3}
        assert updated.mode is RolloutMode.VAL
        assert updated.config == config
        assert updated.resources_id == resources.resources_id
        assert updated.status is RolloutStatus.QUEUING
        assert await store.get_rollout(rollout.rollout_id) == updated
        # Unset fields are left alone.
        again = await store.update_rollout(rollout.rollout_id, metadata={})
        assert again.metadata == {} and again.mode is RolloutMode.VAL and again.config == config
        # The earlier snapshots did not change.
        assert rollout.metadata == {"a": 1, "b": 2}
        assert updated.metadata == {"c": 3}
        cleared = await store.update_rollout(rollout.rollout_id, mode=None, resources_id=None)
        assert cleared.mode is None and cleared.resources_id is None

    async def test_non_terminal_moves_and_terminal_sets_end_time(self, store: LightningStore) -> None:
        rollout = await store.enqueue_rollout("x")
        running = await store.update_rollout(rollout.rollout_id, status=RolloutStatus.RUNNING)
        assert running.status is RolloutStatus.RUNNING and running.end_time is None
        preparing = await store.update_rollout(rollout.rollout_id, status=RolloutStatus.PREPARING)
        assert preparing.status is RolloutStatus.PREPARING
        before = time.time()
        done = await store.update_rollout(rollout.rollout_id, status=RolloutStatus.SUCCEEDED)
        assert done.status is RolloutStatus.SUCCEEDED
        assert done.end_time is not None and before - 1 <= done.end_time <= time.time() + 1

    async def test_terminal_can_only_be_requeued(self, store: LightningStore) -> None:
        rollout = await store.start_rollout("x")
        await self.finish(store, rollout.rollout_id)
        assert await self.rollout_status(store, rollout.rollout_id) is RolloutStatus.SUCCEEDED
        for bad in (RolloutStatus.RUNNING, RolloutStatus.PREPARING, RolloutStatus.FAILED, RolloutStatus.CANCELLED):
            with pytest.raises(InvalidStatusTransitionError):
                await store.update_rollout(rollout.rollout_id, status=bad)
            assert await self.rollout_status(store, rollout.rollout_id) is RolloutStatus.SUCCEEDED
        with pytest.raises(InvalidStatusTransitionError):
            await store.cancel_rollout(rollout.rollout_id)
        requeued = await store.update_rollout(rollout.rollout_id, status=RolloutStatus.QUEUING)
        assert requeued.status is RolloutStatus.QUEUING
        attempted = await store.dequeue_rollout()
        assert attempted is not None and attempted.rollout_id == rollout.rollout_id
        assert attempted.attempt.sequence_id == 2 and attempted.attempt_count == 2

    async def test_failed_rollout_requeued_with_requeuing(self, store: LightningStore) -> None:
        rollout = await store.start_rollout("x", config=NO_RETRY)
        await self.finish(store, rollout.rollout_id, AttemptStatus.FAILED)
        assert await self.rollout_status(store, rollout.rollout_id) is RolloutStatus.FAILED
        await store.update_rollout(rollout.rollout_id, status=RolloutStatus.REQUEUING)
        attempted = await store.dequeue_rollout()
        assert attempted is not None and attempted.rollout_id == rollout.rollout_id
        assert attempted.status is RolloutStatus.PREPARING

    async def test_cancel_rollout(self, store: LightningStore) -> None:
        queued = await store.enqueue_rollout("q")
        cancelled = await store.cancel_rollout(queued.rollout_id)
        assert cancelled.status is RolloutStatus.CANCELLED and cancelled.end_time is not None
        # A no-op on a cancelled rollout.
        again = await store.cancel_rollout(queued.rollout_id)
        assert again.status is RolloutStatus.CANCELLED and again.end_time == cancelled.end_time
        assert await store.dequeue_rollout() is None

    async def test_cancel_leaves_attempt_to_runner(self, store: LightningStore) -> None:
        attempted = await self.start_running(store, config=RolloutConfig(max_attempts=3))
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        await store.cancel_rollout(rid)
        assert (await store.get_attempt(rid, aid)).status is AttemptStatus.RUNNING
        # The runner then ends the attempt; a terminal rollout is never changed by an attempt.
        await store.update_attempt(rid, aid, status=AttemptStatus.FAILED)
        rollout = await store.get_rollout(rid)
        assert rollout.status is RolloutStatus.CANCELLED and rollout.attempt_count == 1
        assert await store.dequeue_rollout() is None

    async def test_terminal_rollout_not_changed_by_attempt(self, store: LightningStore) -> None:
        attempted = await self.start_running(store, config=RolloutConfig(max_attempts=3))
        rid = attempted.rollout_id
        await store.update_rollout(rid, status=RolloutStatus.SUCCEEDED)
        await store.update_attempt(rid, "latest", status=AttemptStatus.FAILED)
        rollout = await store.get_rollout(rid)
        assert rollout.status is RolloutStatus.SUCCEEDED
        assert await store.dequeue_rollout() is None

    async def test_update_rollout_unknown(self, store: LightningStore) -> None:
        with pytest.raises(NotFoundError, match="ro-missing"):
            await store.update_rollout("ro-missing", metadata={})
        with pytest.raises(NotFoundError, match="ro-missing"):
            await store.cancel_rollout("ro-missing")
