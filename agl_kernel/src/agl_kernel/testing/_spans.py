"""Spans: sequence ids, idempotency, batches, heartbeats and span queries."""

from __future__ import annotations

import time

import msgspec
import pytest

from agl_kernel.errors import NotFoundError
from agl_kernel.models import (
    AttemptStatus,
    PaginatedResult,
    RolloutConfig,
    RolloutStatus,
    Span,
    SpanEvent,
    SpanLink,
    SpanStatus,
)
from agl_kernel.store.base import LightningStore
from agl_kernel.testing._base import NO_RETRY, SuiteBase, make_span


class SpanTests(SuiteBase):
    async def test_sequence_ids_assigned_from_one(self, store: LightningStore) -> None:
        attempted = await store.start_rollout("x")
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        stored = [await store.add_span(make_span(rid, aid, name=f"s{i}")) for i in range(4)]
        assert [s.sequence_id for s in stored] == [1, 2, 3, 4]
        assert [s.name for s in stored] == ["s0", "s1", "s2", "s3"]
        # Each attempt counts on its own.
        other = await store.start_attempt(rid)
        first = await store.add_span(make_span(rid, other.attempt.attempt_id))
        assert first.sequence_id == 1

    async def test_span_round_trips_all_fields(self, store: LightningStore) -> None:
        attempted = await store.start_rollout("x")
        span = Span(
            rollout_id=attempted.rollout_id,
            attempt_id=attempted.attempt.attempt_id,
            trace_id="0af7651916cd43dd8448eb211c80319c",
            span_id="b7ad6b7169203331",
            parent_id="00f067aa0ba902b7",
            name="openai.chat",
            kind="CLIENT",
            status=SpanStatus(status_code="ERROR", description="boom"),
            attributes={"gen_ai.prompt": "hi", "tokens": [1, 2, 3], "reward": 0.5, "ok": True},
            events=[SpanEvent(name="exception", timestamp=1700000000.5, attributes={"msg": "x"})],
            links=[SpanLink(trace_id="1" * 32, span_id="2" * 16, attributes={"rel": "follows"})],
            start_time=1700000000.0,
            end_time=1700000001.25,
            resource={"service.name": "agent"},
        )
        stored = await store.add_span(span)
        assert stored.sequence_id == 1
        assert stored == msgspec.structs.replace(span, sequence_id=1)
        page = await store.query_spans(attempted.rollout_id)
        assert page.items == [stored]

    async def test_given_sequence_ids_kept_and_continued(self, store: LightningStore) -> None:
        attempted = await store.start_rollout("x")
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        assert (await store.add_span(make_span(rid, aid))).sequence_id == 1
        given = await store.add_span(make_span(rid, aid, sequence_id=10))
        assert given.sequence_id == 10
        assert (await store.add_span(make_span(rid, aid))).sequence_id == 11
        reserved = await store.get_many_span_sequence_ids(rid, aid, 3)
        assert reserved == [12, 13, 14]
        assert await store.get_next_span_sequence_id(rid, aid) == 15
        assert (await store.add_span(make_span(rid, aid))).sequence_id == 16

    async def test_reserved_ids_start_at_one(self, store: LightningStore) -> None:
        attempted = await store.start_rollout("x")
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        assert await store.get_next_span_sequence_id(rid, aid) == 1
        assert await store.get_many_span_sequence_ids(rid, aid, 2) == [2, 3]
        # A reserved id is never handed out again, not even to an auto-numbered span.
        assert (await store.add_span(make_span(rid, aid))).sequence_id == 4
        with pytest.raises(NotFoundError, match="ro-missing"):
            await store.get_many_span_sequence_ids("ro-missing", aid, 1)
        with pytest.raises(NotFoundError, match="at-missing"):
            await store.get_next_span_sequence_id(rid, "at-missing")

    async def test_duplicate_span_is_idempotent(self, store: LightningStore) -> None:
        attempted = await store.start_rollout("x")
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        span = make_span(rid, aid, span_id="aaaaaaaaaaaaaaaa", name="original")
        first = await store.add_span(span)
        again = await store.add_span(span)
        assert again == first
        changed = await store.add_span(make_span(rid, aid, span_id="aaaaaaaaaaaaaaaa", name="changed"))
        assert changed == first and changed.name == "original"
        assert (await store.query_spans(rid)).total == 1
        assert (await store.statistics()).total_spans == 1
        # The duplicate did not use up a sequence id.
        assert (await store.add_span(make_span(rid, aid))).sequence_id == 2
        # Same span id in another attempt is another span.
        other = await store.start_attempt(rid)
        elsewhere = await store.add_span(make_span(rid, other.attempt.attempt_id, span_id="aaaaaaaaaaaaaaaa"))
        assert elsewhere.attempt_id == other.attempt.attempt_id and elsewhere.sequence_id == 1
        assert (await store.query_spans(rid)).total == 3

    async def test_add_many_spans_across_rollouts(self, store: LightningStore) -> None:
        a = await store.start_rollout("a")
        b = await store.start_rollout("b")
        dup = make_span(a.rollout_id, a.attempt.attempt_id, name="a1")
        spans = [
            dup,
            make_span(b.rollout_id, b.attempt.attempt_id, name="b1"),
            make_span(a.rollout_id, a.attempt.attempt_id, name="a2"),
            make_span(b.rollout_id, b.attempt.attempt_id, name="b2", sequence_id=7),
            make_span(b.rollout_id, b.attempt.attempt_id, name="b3"),
            dup,
        ]
        stored = await store.add_many_spans(spans)
        assert [s.name for s in stored] == ["a1", "b1", "a2", "b2", "b3", "a1"]
        assert [s.sequence_id for s in stored] == [1, 1, 2, 7, 8, 1]
        assert stored[5] == stored[0]
        assert [s.name for s in (await store.query_spans(a.rollout_id)).items] == ["a1", "a2"]
        assert [s.name for s in (await store.query_spans(b.rollout_id)).items] == ["b1", "b2", "b3"]
        assert await store.add_many_spans([]) == []

    async def test_add_many_spans_is_atomic(self, store: LightningStore) -> None:
        a = await store.start_rollout("a")
        good = make_span(a.rollout_id, a.attempt.attempt_id)
        with pytest.raises(NotFoundError, match="ro-missing"):
            await store.add_many_spans([good, make_span("ro-missing", a.attempt.attempt_id)])
        assert (await store.query_spans(a.rollout_id)).total == 0
        assert (await store.add_span(good)).sequence_id == 1

    async def test_unknown_rollout_or_attempt(self, store: LightningStore) -> None:
        attempted = await store.start_rollout("x")
        with pytest.raises(NotFoundError, match="ro-missing"):
            await store.add_span(make_span("ro-missing", attempted.attempt.attempt_id))
        with pytest.raises(NotFoundError, match="at-missing"):
            await store.add_span(make_span(attempted.rollout_id, "at-missing"))
        # An attempt of another rollout is unknown here too.
        other = await store.start_rollout("y")
        with pytest.raises(NotFoundError):
            await store.add_span(make_span(attempted.rollout_id, other.attempt.attempt_id))
        queued = await store.enqueue_rollout("q")
        with pytest.raises(NotFoundError):
            await store.add_span(make_span(queued.rollout_id, attempted.attempt.attempt_id))
        assert (await store.statistics()).total_spans == 0

    async def test_span_is_heartbeat_preparing_to_running(self, store: LightningStore) -> None:
        await store.enqueue_rollout("x")
        attempted = await store.dequeue_rollout()
        assert attempted is not None
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        before = time.time()
        await store.add_span(make_span(rid, aid))
        attempt = await store.get_attempt(rid, aid)
        assert attempt.status is AttemptStatus.RUNNING
        assert attempt.last_heartbeat_time is not None and attempt.last_heartbeat_time >= before - 1
        assert await self.rollout_status(store, rid) is RolloutStatus.RUNNING

    async def test_span_on_final_attempt_keeps_status(self, store: LightningStore) -> None:
        for final in (AttemptStatus.SUCCEEDED, AttemptStatus.FAILED, AttemptStatus.TIMEOUT):
            attempted = await self.start_running(store, config=NO_RETRY)
            rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
            await store.update_attempt(rid, aid, status=final)
            rollout_before = await store.get_rollout(rid)
            stored = await store.add_span(make_span(rid, aid))
            assert stored.sequence_id >= 1
            assert (await store.get_attempt(rid, aid)).status is final
            rollout_after = await store.get_rollout(rid)
            assert rollout_after.status is rollout_before.status
            assert rollout_after.end_time == rollout_before.end_time

    async def test_span_revives_unresponsive_attempt(self, store: LightningStore) -> None:
        attempted = await self.start_running(store, config=RolloutConfig(max_attempts=2))
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        await store.update_attempt(rid, aid, status=AttemptStatus.UNRESPONSIVE)
        assert await self.rollout_status(store, rid) is RolloutStatus.REQUEUING
        await store.add_span(make_span(rid, aid))
        assert (await store.get_attempt(rid, aid)).status is AttemptStatus.RUNNING
        assert await self.rollout_status(store, rid) is RolloutStatus.RUNNING
        assert await store.dequeue_rollout() is None

    async def test_span_does_not_revive_rollout_failed_otherwise(self, store: LightningStore) -> None:
        attempted = await self.start_running(store)
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        # The rollout failed by an explicit update, not because the attempt went unresponsive.
        await store.update_rollout(rid, status=RolloutStatus.FAILED)
        await store.add_span(make_span(rid, aid))
        assert await self.rollout_status(store, rid) is RolloutStatus.FAILED
        cancelled = await self.start_running(store)
        await store.cancel_rollout(cancelled.rollout_id)
        await store.update_attempt(cancelled.rollout_id, "latest", status=AttemptStatus.UNRESPONSIVE)
        await store.add_span(make_span(cancelled.rollout_id, cancelled.attempt.attempt_id))
        assert await self.rollout_status(store, cancelled.rollout_id) is RolloutStatus.CANCELLED


class SpanQueryTests(SuiteBase):
    async def test_query_spans_by_attempt(self, store: LightningStore) -> None:
        first = await store.start_rollout("x")
        rid = first.rollout_id
        second = await store.start_attempt(rid)
        a1, a2 = first.attempt.attempt_id, second.attempt.attempt_id
        # Added interleaved, newest attempt first: the default order is (attempt, sequence id).
        await store.add_span(make_span(rid, a2, name="a2-1"))
        await store.add_span(make_span(rid, a1, name="a1-1"))
        await store.add_span(make_span(rid, a2, name="a2-2"))
        await store.add_span(make_span(rid, a1, name="a1-2"))

        def names(page: PaginatedResult[Span]) -> list[str]:
            return [s.name for s in page.items]

        assert names(await store.query_spans(rid)) == ["a1-1", "a1-2", "a2-1", "a2-2"]
        assert names(await store.query_spans(rid, a1)) == ["a1-1", "a1-2"]
        assert names(await store.query_spans(rid, "latest")) == ["a2-1", "a2-2"]
        assert names(await store.query_spans(rid, name="a1-2")) == ["a1-2"]
        assert names(await store.query_spans(rid, a2, name="a1-2")) == []
        page = await store.query_spans(rid, limit=2, offset=1)
        assert names(page) == ["a1-2", "a2-1"] and page.total == 4

    async def test_query_spans_unknown(self, store: LightningStore) -> None:
        with pytest.raises(NotFoundError, match="ro-missing"):
            await store.query_spans("ro-missing")
        attempted = await store.start_rollout("x")
        with pytest.raises(NotFoundError, match="at-missing"):
            await store.query_spans(attempted.rollout_id, "at-missing")
        empty = await store.query_spans(attempted.rollout_id)
        assert empty.items == [] and empty.total == 0
