"""Query methods: filters, every allowed sort field in both directions, pagination, invalid queries, unknown ids."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest

from agl_kernel.errors import InvalidQueryError, NotFoundError
from agl_kernel.models import (
    Attempt,
    AttemptStatus,
    PaginatedResult,
    PromptTemplate,
    Resource,
    Rollout,
    RolloutConfig,
    RolloutMode,
    RolloutStatus,
    WorkerStatus,
)
from agl_kernel.store.base import SORT_FIELDS, LightningStore
from agl_kernel.testing._base import SuiteBase, expected_sort, make_span

Query = Callable[..., Awaitable[PaginatedResult[Any]]]


async def check_sorting(
    query: Query,
    creation_order: Sequence[Any],
    fields: Sequence[str],
    key: Callable[[Any], Any],
) -> None:
    """Every field, both directions: items sorted by it, ties in creation order; total counts everything."""
    for field in fields:
        for order in ("asc", "desc"):
            page = await query(sort_by=field, sort_order=order)
            expected = expected_sort(creation_order, field, order)
            assert [key(i) for i in page.items] == [key(i) for i in expected], (field, order)
            assert page.total == len(creation_order)
            window = await query(sort_by=field, sort_order=order, limit=2, offset=1)
            assert [key(i) for i in window.items] == [key(i) for i in expected[1:3]], (field, order, "page")
            assert window.total == len(creation_order)


async def check_pagination(query: Query, everything: Sequence[Any], key: Callable[[Any], Any]) -> None:
    n = len(everything)
    want = [key(i) for i in everything]
    for limit, offset in ((None, 0), (2, 0), (2, 2), (3, n - 1), (0, 0), (None, n), (5, n + 3), (None, 1)):
        page = await query(limit=limit, offset=offset)
        end = n if limit is None else offset + limit
        assert [key(i) for i in page.items] == want[offset:end], (limit, offset)
        assert page.total == n, (limit, offset)


async def check_invalid(query: Query, unlisted_field: str) -> None:
    for kwargs in (
        {"sort_by": "no_such_field"},
        {"sort_by": unlisted_field},
        {"limit": -1},
        {"offset": -1},
        {"sort_by": "no_such_field", "sort_order": "desc"},
    ):
        with pytest.raises(InvalidQueryError):
            await query(**kwargs)


rollout_key = lambda r: r.rollout_id  # noqa: E731


class RolloutQueryTests(SuiteBase):
    async def _rollouts(self, store: LightningStore) -> list[Rollout]:
        """Seven rollouts in every status, with modes and attempt counts that differ from creation order."""
        fail_once = RolloutConfig(max_attempts=1)
        r0 = await store.enqueue_rollout("r0", mode=RolloutMode.TRAIN)  # queuing
        r1 = await store.enqueue_rollout("r1", mode=RolloutMode.VAL)
        await store.start_attempt(r1.rollout_id)
        await store.update_attempt(r1.rollout_id, "latest", status=AttemptStatus.SUCCEEDED)  # succeeded
        r2 = await store.start_rollout("r2", mode=RolloutMode.TEST, config=fail_once)
        await store.update_attempt(r2.rollout_id, "latest", status=AttemptStatus.FAILED)  # failed
        r3 = await store.start_rollout("r3", mode=RolloutMode.TRAIN)
        await store.cancel_rollout(r3.rollout_id)  # cancelled
        r4 = await store.enqueue_rollout("r4", mode=RolloutMode.VAL, config=RolloutConfig(max_attempts=2))
        await store.start_attempt(r4.rollout_id)
        await store.update_attempt(r4.rollout_id, "latest", status=AttemptStatus.FAILED)  # requeuing
        r5 = await store.start_rollout("r5", mode=RolloutMode.TEST)
        await store.start_attempt(r5.rollout_id)
        await store.start_attempt(r5.rollout_id)
        await store.update_attempt(r5.rollout_id, "latest", status=AttemptStatus.RUNNING)  # running, 3 attempts
        r6 = await store.start_rollout("r6", mode=RolloutMode.TRAIN)  # preparing
        ids = [r.rollout_id for r in (r0, r1, r2, r3, r4, r5, r6)]
        return [await store.get_rollout(i) for i in ids]

    async def test_default_order_and_statuses(self, store: LightningStore) -> None:
        rollouts = await self._rollouts(store)
        assert [r.status for r in rollouts] == [
            RolloutStatus.QUEUING,
            RolloutStatus.SUCCEEDED,
            RolloutStatus.FAILED,
            RolloutStatus.CANCELLED,
            RolloutStatus.REQUEUING,
            RolloutStatus.RUNNING,
            RolloutStatus.PREPARING,
        ]
        page = await store.query_rollouts()
        assert page.items == rollouts and page.total == 7

    async def test_filters(self, store: LightningStore) -> None:
        rollouts = await self._rollouts(store)
        ids = [r.rollout_id for r in rollouts]

        async def got(**kwargs: Any) -> list[str]:
            page = await store.query_rollouts(**kwargs)
            assert page.total == len(page.items)
            return [r.rollout_id for r in page.items]

        assert await got(status_in=[RolloutStatus.QUEUING]) == [ids[0]]
        assert await got(status_in=[RolloutStatus.FAILED, RolloutStatus.SUCCEEDED]) == [ids[1], ids[2]]
        assert await got(status_in=[RolloutStatus.REQUEUING, RolloutStatus.PREPARING]) == [ids[4], ids[6]]
        assert await got(status_in=[]) == []
        assert await got(rollout_id_in=[ids[5], ids[0], ids[3]]) == [ids[0], ids[3], ids[5]]
        assert await got(rollout_id_in=[]) == []
        assert await got(mode_in=[RolloutMode.TRAIN]) == [ids[0], ids[3], ids[6]]
        assert await got(mode_in=[RolloutMode.VAL, RolloutMode.TEST]) == [ids[1], ids[2], ids[4], ids[5]]
        assert await got(mode_in=[RolloutMode.TRAIN], status_in=[RolloutStatus.QUEUING, RolloutStatus.RUNNING]) == [
            ids[0]
        ]
        assert await got(rollout_id_in=ids[:4], mode_in=[RolloutMode.TRAIN], status_in=[RolloutStatus.CANCELLED]) == [
            ids[3]
        ]
        page = await store.query_rollouts(mode_in=[RolloutMode.TRAIN], limit=1, offset=1)
        assert [r.rollout_id for r in page.items] == [ids[3]] and page.total == 3

    async def test_sorting(self, store: LightningStore) -> None:
        rollouts = await self._rollouts(store)
        fields = sorted(SORT_FIELDS["rollouts"] - {"end_time"})
        await check_sorting(store.query_rollouts, rollouts, fields, rollout_key)
        ended = [r for r in rollouts if r.status.is_terminal]
        terminal = [RolloutStatus.SUCCEEDED, RolloutStatus.FAILED, RolloutStatus.CANCELLED]

        async def query_ended(**kwargs: Any) -> PaginatedResult[Rollout]:
            return await store.query_rollouts(status_in=terminal, **kwargs)

        await check_sorting(query_ended, ended, ["end_time", *fields], rollout_key)

    async def test_pagination_and_invalid(self, store: LightningStore) -> None:
        rollouts = await self._rollouts(store)
        await check_pagination(store.query_rollouts, rollouts, rollout_key)
        await check_invalid(store.query_rollouts, "input")


class AttemptQueryTests(SuiteBase):
    async def _attempts(self, store: LightningStore) -> tuple[str, list[Any]]:
        first = await store.start_rollout("x", config=RolloutConfig(max_attempts=1), worker_id="w-b")
        rid = first.rollout_id
        await store.start_attempt(rid, worker_id="w-c")
        await store.start_attempt(rid, worker_id="w-a")
        attempts = (await store.query_attempts(rid)).items
        await store.update_attempt(rid, attempts[0].attempt_id, status=AttemptStatus.SUCCEEDED)
        await store.update_attempt(rid, attempts[1].attempt_id, status=AttemptStatus.FAILED)
        await store.update_attempt(rid, attempts[2].attempt_id, status=AttemptStatus.TIMEOUT)
        return rid, [await store.get_attempt(rid, a.attempt_id) for a in attempts]

    async def test_default_order_filters_sorting(self, store: LightningStore) -> None:
        rid, attempts = await self._attempts(store)
        page = await store.query_attempts(rid)
        assert page.items == attempts and page.total == 3
        assert [a.sequence_id for a in attempts] == [1, 2, 3]

        def key(a: Attempt) -> str:
            return a.attempt_id

        failed = await store.query_attempts(rid, status_in=[AttemptStatus.TIMEOUT, AttemptStatus.FAILED])
        assert [key(a) for a in failed.items] == [key(attempts[1]), key(attempts[2])] and failed.total == 2
        assert (await store.query_attempts(rid, status_in=[AttemptStatus.RUNNING])).total == 0
        assert (await store.query_attempts(rid, status_in=[])).items == []

        async def query(**kwargs: Any) -> PaginatedResult[Any]:
            return await store.query_attempts(rid, **kwargs)

        await check_sorting(query, attempts, sorted(SORT_FIELDS["attempts"]), key)
        await check_pagination(query, attempts, key)
        await check_invalid(query, "metadata")

    async def test_other_rollouts_attempts_not_included(self, store: LightningStore) -> None:
        a = await store.start_rollout("a")
        b = await store.start_rollout("b")
        page = await store.query_attempts(a.rollout_id)
        assert [x.attempt_id for x in page.items] == [a.attempt.attempt_id]
        assert b.attempt.attempt_id not in {x.attempt_id for x in page.items}


class SpanSortTests(SuiteBase):
    async def test_span_sorting_and_pagination(self, store: LightningStore) -> None:
        first = await store.start_rollout("x")
        rid = first.rollout_id
        second = await store.start_attempt(rid)
        plan = [
            (first.attempt.attempt_id, "b", 50.0, 53.0, "00000000000000c1"),
            (first.attempt.attempt_id, "a", 10.0, 61.0, "00000000000000a9"),
            (first.attempt.attempt_id, "c", 30.0, 31.0, "00000000000000b2"),
            (second.attempt.attempt_id, "a", 20.0, 22.0, "00000000000000f0"),
            (second.attempt.attempt_id, "b", 40.0, 70.0, "0000000000000001"),
        ]
        for aid, name, start, end, span_id in plan:
            await store.add_span(make_span(rid, aid, name=name, start_time=start, end_time=end, span_id=span_id))
        spans = (await store.query_spans(rid)).items
        assert [s.span_id for s in spans] == [p[4] for p in plan]
        key = lambda s: (s.attempt_id, s.span_id)  # noqa: E731

        async def query(**kwargs: Any) -> PaginatedResult[Any]:
            return await store.query_spans(rid, **kwargs)

        await check_sorting(query, spans, sorted(SORT_FIELDS["spans"]), key)
        await check_pagination(query, spans, key)
        await check_invalid(query, "attributes")
        named = await store.query_spans(rid, name="a", sort_by="start_time", sort_order="desc")
        assert [s.span_id for s in named.items] == ["00000000000000f0", "00000000000000a9"] and named.total == 2


class ResourceAndWorkerQueryTests(SuiteBase):
    async def test_resource_sorting_and_pagination(self, store: LightningStore) -> None:

        def p(t: str) -> dict[str, Resource]:
            return {"p": PromptTemplate(template=t)}

        await store.update_resources("x", p("x1"))
        await store.update_resources("y", p("y1"))
        await store.update_resources("x", p("x2"))
        await store.add_resources(p("added"))
        await store.update_resources("x", p("x3"))
        everything = (await store.query_resources()).items
        assert len(everything) == 5
        key = lambda r: (r.resources_id, r.version)  # noqa: E731
        await check_sorting(store.query_resources, everything, sorted(SORT_FIELDS["resources"]), key)
        await check_pagination(store.query_resources, everything, key)
        await check_invalid(store.query_resources, "resources")

    async def test_worker_queries(self, store: LightningStore) -> None:
        for i in range(3):
            await store.enqueue_rollout(i)
        # First appearance order: w-c, w-a, w-b.
        for worker_id in ("w-c", "w-a", "w-b"):
            assert await store.dequeue_rollout(worker_id=worker_id) is not None
        await store.update_attempt(
            (await store.get_worker("w-a")).current_rollout_id or "", "latest", status=AttemptStatus.SUCCEEDED
        )
        for worker_id in ("w-b", "w-c", "w-a"):
            await store.update_worker(worker_id, heartbeat_stats={"n": worker_id})
        workers = (await store.query_workers()).items
        assert [w.worker_id for w in workers] == ["w-c", "w-a", "w-b"]
        assert [w.status for w in workers] == [WorkerStatus.BUSY, WorkerStatus.IDLE, WorkerStatus.BUSY]
        busy = await store.query_workers(status_in=[WorkerStatus.BUSY])
        assert [w.worker_id for w in busy.items] == ["w-c", "w-b"] and busy.total == 2
        assert (await store.query_workers(status_in=[WorkerStatus.UNRESPONSIVE])).total == 0
        key = lambda w: w.worker_id  # noqa: E731
        await check_sorting(store.query_workers, workers, sorted(SORT_FIELDS["workers"]), key)
        await check_pagination(store.query_workers, workers, key)
        await check_invalid(store.query_workers, "heartbeat_stats")


class NotFoundTests(SuiteBase):
    async def test_missing_ids_named_in_errors(self, store: LightningStore) -> None:
        missing = "id-that-does-not-exist-42"
        attempted = await store.start_rollout("x")
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        calls: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("get_rollout", lambda: store.get_rollout(missing)),
            ("update_rollout", lambda: store.update_rollout(missing, metadata={})),
            ("update_rollout resources", lambda: store.update_rollout(rid, resources_id=missing)),
            ("cancel_rollout", lambda: store.cancel_rollout(missing)),
            ("start_attempt", lambda: store.start_attempt(missing)),
            ("get_attempt rollout", lambda: store.get_attempt(missing)),
            ("get_attempt attempt", lambda: store.get_attempt(rid, missing)),
            ("update_attempt rollout", lambda: store.update_attempt(missing, "latest")),
            ("update_attempt attempt", lambda: store.update_attempt(rid, missing)),
            ("query_attempts", lambda: store.query_attempts(missing)),
            ("query_spans rollout", lambda: store.query_spans(missing)),
            ("query_spans attempt", lambda: store.query_spans(rid, missing)),
            ("get_many_span_sequence_ids", lambda: store.get_many_span_sequence_ids(missing, aid, 1)),
            ("add_span rollout", lambda: store.add_span(make_span(missing, aid))),
            ("add_span attempt", lambda: store.add_span(make_span(rid, missing))),
            ("add_many_spans", lambda: store.add_many_spans([make_span(missing, aid)])),
            ("get_resources", lambda: store.get_resources(missing)),
            ("get_worker", lambda: store.get_worker(missing)),
            ("wait_for_rollouts", lambda: store.wait_for_rollouts([rid, missing], timeout=5)),
            ("delete_rollouts", lambda: store.delete_rollouts([missing])),
            ("enqueue_rollout resources", lambda: store.enqueue_rollout("y", resources_id=missing)),
        ]
        for what, call in calls:
            with pytest.raises(NotFoundError) as info:
                await call()
            assert missing in str(info.value), f"{what}: the error should name the id: {info.value}"
        # Nothing was created by these calls.
        assert (await store.query_rollouts()).total == 1
        assert (await store.query_workers()).total == 0
