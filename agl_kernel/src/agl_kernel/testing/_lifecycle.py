"""Deletion and retention, statistics, close(), frozen snapshots and JSON/msgpack round-trips."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from agl_kernel.errors import InvalidStatusTransitionError, NotFoundError, StoreClosedError
from agl_kernel.models import (
    LLM,
    Attempt,
    AttemptedRollout,
    AttemptStatus,
    PaginatedResult,
    PromptTemplate,
    ProxyLLM,
    ResourcesUpdate,
    Rollout,
    RolloutConfig,
    RolloutMode,
    RolloutStatus,
    Span,
    SpanEvent,
    SpanLink,
    StoreCapabilities,
    StoreStatistics,
    Worker,
    decode_json,
    decode_msgpack,
    encode_json,
    encode_msgpack,
)
from agl_kernel.store.base import LightningStore
from agl_kernel.testing._base import NO_RETRY, SuiteBase, make_span


class DeletionTests(SuiteBase):
    async def _ended(self, store: LightningStore, status: AttemptStatus = AttemptStatus.SUCCEEDED) -> str:
        attempted = await self.start_running(store, config=NO_RETRY)
        await store.add_span(make_span(attempted.rollout_id, attempted.attempt.attempt_id))
        await store.add_span(make_span(attempted.rollout_id, attempted.attempt.attempt_id))
        await self.finish(store, attempted.rollout_id, status)
        return attempted.rollout_id

    async def test_delete_ended_rollouts(self, store: LightningStore) -> None:
        succeeded = await self._ended(store)
        failed = await self._ended(store, AttemptStatus.FAILED)
        cancelled = (await store.enqueue_rollout("never run")).rollout_id
        await store.cancel_rollout(cancelled)
        running = await self.start_running(store)
        await store.add_span(make_span(running.rollout_id, running.attempt.attempt_id))
        assert (await store.statistics()).total_spans == 5

        assert await store.delete_rollouts([succeeded, failed, cancelled]) == 3
        for rid in (succeeded, failed, cancelled):
            with pytest.raises(NotFoundError):
                await store.get_rollout(rid)
            with pytest.raises(NotFoundError):
                await store.query_attempts(rid)
            with pytest.raises(NotFoundError):
                await store.query_spans(rid)
            with pytest.raises(NotFoundError):
                await store.get_attempt(rid)
            with pytest.raises(NotFoundError):
                await store.wait_for_rollouts([rid], timeout=0)
        page = await store.query_rollouts()
        assert [r.rollout_id for r in page.items] == [running.rollout_id] and page.total == 1
        stats = await store.statistics()
        assert stats.total_rollouts == 1 and stats.total_attempts == 1 and stats.total_spans == 1
        # The cancelled rollout's old queue entry does not bring it back.
        assert await store.dequeue_rollout() is None
        # The survivor is intact.
        assert (await store.query_spans(running.rollout_id)).total == 1

    async def test_delete_checks_everything_first(self, store: LightningStore) -> None:
        ended = await self._ended(store)
        running = (await self.start_running(store)).rollout_id
        requeuing = (await self.start_running(store, config=RolloutConfig(max_attempts=2))).rollout_id
        await self.finish(store, requeuing, AttemptStatus.FAILED)
        queued = (await store.enqueue_rollout("q")).rollout_id
        assert await self.rollout_status(store, requeuing) is RolloutStatus.REQUEUING
        for not_ended in (running, queued, requeuing):
            with pytest.raises(InvalidStatusTransitionError):
                await store.delete_rollouts([ended, not_ended])
            assert (await store.get_rollout(ended)).rollout_id == ended
        with pytest.raises(NotFoundError, match="ro-missing"):
            await store.delete_rollouts([ended, "ro-missing"])
        assert (await store.get_rollout(ended)).status is RolloutStatus.SUCCEEDED
        assert (await store.query_spans(ended)).total == 2
        assert (await store.statistics()).total_rollouts == 4
        # An empty list deletes nothing (it is not "no filter").
        assert await store.delete_rollouts([]) == 0
        assert (await store.statistics()).total_rollouts == 4

    async def test_retention_ended_before(self, store: LightningStore) -> None:
        old = await self._ended(store)
        old_cancelled = (await store.enqueue_rollout("c")).rollout_id
        await store.cancel_rollout(old_cancelled)
        await asyncio.sleep(0.05)
        cutoff = time.time()
        await asyncio.sleep(0.05)
        new = await self._ended(store, AttemptStatus.FAILED)
        running = (await self.start_running(store)).rollout_id
        queued = (await store.enqueue_rollout("q")).rollout_id

        assert await store.delete_rollouts(ended_before=cutoff) == 2
        for rid in (old, old_cancelled):
            with pytest.raises(NotFoundError):
                await store.get_rollout(rid)
        assert {r.rollout_id for r in (await store.query_rollouts()).items} == {new, running, queued}
        assert await store.delete_rollouts(ended_before=time.time() + 10) == 1
        assert {r.rollout_id for r in (await store.query_rollouts()).items} == {running, queued}

    async def test_delete_named_and_ended_before(self, store: LightningStore) -> None:
        old = await self._ended(store)
        await asyncio.sleep(0.05)
        cutoff = time.time()
        await asyncio.sleep(0.05)
        new = await self._ended(store)
        other_old_is_new = await self._ended(store)
        assert await store.delete_rollouts([old, new], ended_before=cutoff) == 1
        with pytest.raises(NotFoundError):
            await store.get_rollout(old)
        assert (await store.get_rollout(new)).rollout_id == new
        assert (await store.get_rollout(other_old_is_new)).rollout_id == other_old_is_new


class StatisticsTests(SuiteBase):
    async def test_statistics_counts(self, store: LightningStore) -> None:
        empty = await store.statistics()
        assert isinstance(empty, StoreStatistics)
        assert (empty.total_rollouts, empty.total_attempts, empty.total_spans) == (0, 0, 0)
        assert (empty.queue_depth, empty.total_resources, empty.total_workers) == (0, 0, 0)
        assert sum(empty.rollouts_by_status.values()) == 0 and sum(empty.attempts_by_status.values()) == 0

        await store.add_resources({"p": PromptTemplate(template="t")})
        preparing = await store.enqueue_rollout("preparing")
        await store.enqueue_rollout("queued")
        dequeued = await store.dequeue_rollout(worker_id="w-1")
        assert dequeued is not None and dequeued.rollout_id == preparing.rollout_id
        running = await store.start_rollout("running")
        await store.add_span(make_span(running.rollout_id, running.attempt.attempt_id))
        await store.add_span(make_span(running.rollout_id, running.attempt.attempt_id))
        done = await store.start_rollout("done")
        await self.finish(store, done.rollout_id)
        retry = await store.start_rollout("retry", config=RolloutConfig(max_attempts=2))
        await self.finish(store, retry.rollout_id, AttemptStatus.FAILED)
        await store.update_worker("w-2")

        stats = await store.statistics()
        assert stats.total_rollouts == 5
        by_status = {k: v for k, v in stats.rollouts_by_status.items() if v}
        assert by_status == {"queuing": 1, "preparing": 1, "running": 1, "succeeded": 1, "requeuing": 1}
        assert stats.total_attempts == 4
        by_attempt = {k: v for k, v in stats.attempts_by_status.items() if v}
        assert by_attempt == {"preparing": 1, "running": 1, "succeeded": 1, "failed": 1}
        assert stats.total_spans == 2
        assert stats.queue_depth == 2
        assert stats.total_resources == 1
        assert stats.total_workers == 2


class CloseTests(SuiteBase):
    async def test_calls_after_close_raise(self, store: LightningStore) -> None:
        rollout = await store.enqueue_rollout("x")
        await store.close()
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: store.get_rollout(rollout.rollout_id),
            lambda: store.enqueue_rollout("y"),
            lambda: store.dequeue_rollout(),
            lambda: store.query_rollouts(),
            lambda: store.add_resources({"p": PromptTemplate(template="t")}),
            lambda: store.update_worker("w"),
            lambda: store.statistics(),
            lambda: store.wait_for_rollouts([rollout.rollout_id], timeout=0),
        ]
        for call in calls:
            with pytest.raises(StoreClosedError):
                await call()
        await store.close()  # twice is harmless

    async def test_async_context_manager_closes(self) -> None:
        store = await self.make_store()
        async with store as entered:
            assert entered is store
            await store.enqueue_rollout("x")
        with pytest.raises(StoreClosedError):
            await store.query_rollouts()
        await store.close()


class SnapshotAndCodecTests(SuiteBase):
    async def test_snapshots_do_not_change(self, store: LightningStore) -> None:
        rollout = await store.enqueue_rollout("x", metadata={"a": 1})
        page = await store.query_rollouts()
        attempted = await store.dequeue_rollout()
        assert attempted is not None
        attempt = await store.get_attempt(rollout.rollout_id)
        await store.update_rollout(rollout.rollout_id, metadata={"b": 2})
        await store.update_attempt(rollout.rollout_id, "latest", status=AttemptStatus.SUCCEEDED, metadata={"c": 3})
        assert rollout.status is RolloutStatus.QUEUING and rollout.metadata == {"a": 1}
        assert page.items[0].status is RolloutStatus.QUEUING and page.items[0].attempt_count == 0
        assert attempted.status is RolloutStatus.PREPARING and attempted.metadata == {"a": 1}
        assert attempt.status is AttemptStatus.PREPARING and attempt.metadata == {} and attempt.end_time is None

    async def test_everything_round_trips(self, store: LightningStore) -> None:
        resources = await store.add_resources(
            {
                "prompt": PromptTemplate(template="Q: {q}", engine="f-string"),
                "llm": LLM(endpoint="http://x/v1", model="m", sampling_parameters={"t": 0.5}),
                "proxy": ProxyLLM(endpoint="http://p/v1", model="p"),
            }
        )
        rollout = await store.enqueue_rollout(
            {"q": "2+2", "list": [1, 2.5, None, True], "nested": {"k": ["v"]}},
            mode=RolloutMode.TRAIN,
            config=RolloutConfig(
                timeout_seconds=30.0, unresponsive_seconds=5.0, max_attempts=3, retry_condition=(AttemptStatus.TIMEOUT,)
            ),
            metadata={"m": {"x": 1}},
        )
        attempted = await store.dequeue_rollout(worker_id="w-codec")
        assert attempted is not None
        span = Span(
            rollout_id=rollout.rollout_id,
            attempt_id=attempted.attempt.attempt_id,
            trace_id="ab" * 16,
            span_id="cd" * 8,
            name="llm",
            attributes={"tokens": [1, 2], "reward": 1.0},
            events=[SpanEvent(name="e", timestamp=1.5, attributes={"a": "b"})],
            links=[SpanLink(trace_id="ef" * 16, span_id="01" * 8)],
            start_time=10.0,
            end_time=11.0,
            resource={"service.name": "svc"},
        )
        stored_span = await store.add_span(span)
        attempt = await store.update_attempt(rollout.rollout_id, "latest", metadata={"k": [1]})
        worker = await store.update_worker("w-codec", heartbeat_stats={"load": [0.1, 0.2]})
        cases: list[tuple[Any, Any]] = [
            (await store.get_rollout(rollout.rollout_id), Rollout),
            (attempted, AttemptedRollout),
            (attempt, Attempt),
            (stored_span, Span),
            (resources, ResourcesUpdate),
            (await store.get_resources(resources.resources_id), ResourcesUpdate),
            (worker, Worker),
            (await store.get_worker("w-codec"), Worker),
            (await store.query_rollouts(limit=5), PaginatedResult[Rollout]),
            (await store.query_attempts(rollout.rollout_id), PaginatedResult[Attempt]),
            (await store.query_spans(rollout.rollout_id), PaginatedResult[Span]),
            (await store.query_resources(), PaginatedResult[ResourcesUpdate]),
            (await store.query_workers(), PaginatedResult[Worker]),
            (await store.statistics(), StoreStatistics),
            (store.capabilities, StoreCapabilities),
        ]
        for obj, typ in cases:
            assert decode_json(encode_json(obj), type=typ) == obj, typ
            assert decode_msgpack(encode_msgpack(obj), type=typ) == obj, typ
        decoded = decode_json(encode_json(resources), type=ResourcesUpdate)
        assert type(decoded.resources["proxy"]) is ProxyLLM
