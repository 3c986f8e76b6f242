"""Exactly-once dequeue, sequence ids and resource versions under concurrent tasks and threads."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any

from agl_kernel.models import AttemptedRollout, AttemptStatus, EnqueueRequest, PromptTemplate
from agl_kernel.store.base import LightningStore
from agl_kernel.testing._base import SuiteBase, make_span


def _assert_exactly_once(got: list[AttemptedRollout | None], expected_ids: list[str]) -> None:
    handed_out = [a.rollout_id for a in got if a is not None]
    duplicates = [rid for rid, n in Counter(handed_out).items() if n > 1]
    assert not duplicates, f"handed out more than once: {duplicates}"
    assert sorted(handed_out) == sorted(expected_ids)


async def run_threads(threads: list[threading.Thread], timeout: float = 30.0) -> None:
    """Start the threads and wait for them without blocking this event loop."""
    for thread in threads:
        thread.daemon = True
        thread.start()

    def join() -> None:
        for thread in threads:
            thread.join(timeout)

    await asyncio.to_thread(join)
    assert not any(t.is_alive() for t in threads), "threads did not finish"


class ConcurrentDequeueTests(SuiteBase):
    async def test_concurrent_dequeues_exactly_once(self, store: LightningStore) -> None:
        self.require(store.capabilities.async_safe, "store is not async-safe")
        rollouts = await store.enqueue_many_rollouts([EnqueueRequest(input=i) for i in range(20)])
        got = await asyncio.gather(*(store.dequeue_rollout(worker_id=f"w-{i}") for i in range(30)))
        _assert_exactly_once(list(got), [r.rollout_id for r in rollouts])
        assert sum(1 for a in got if a is None) == 10
        assert all(a.attempt.sequence_id == 1 for a in got if a is not None)
        for r in rollouts:
            assert (await store.get_rollout(r.rollout_id)).attempt_count == 1
        assert (await store.statistics()).queue_depth == 0

    async def test_waiting_dequeues_exactly_once(self, store: LightningStore) -> None:
        self.require(store.capabilities.async_safe, "store is not async-safe")
        waiters = [asyncio.create_task(store.dequeue_rollout(timeout=1.0)) for _ in range(30)]
        await asyncio.sleep(0.1)
        rollouts = await store.enqueue_many_rollouts([EnqueueRequest(input=i) for i in range(20)])
        got = await asyncio.gather(*waiters)
        _assert_exactly_once(list(got), [r.rollout_id for r in rollouts])
        assert sum(1 for a in got if a is None) == 10

    async def test_concurrent_dequeue_many_exactly_once(self, store: LightningStore) -> None:
        self.require(store.capabilities.async_safe, "store is not async-safe")
        rollouts = await store.enqueue_many_rollouts([EnqueueRequest(input=i) for i in range(20)])
        batches = await asyncio.gather(*(store.dequeue_many_rollouts(limit=5) for _ in range(6)))
        flat: list[AttemptedRollout | None] = [a for batch in batches for a in batch]
        _assert_exactly_once(flat, [r.rollout_id for r in rollouts])
        position = {r.rollout_id: i for i, r in enumerate(rollouts)}
        for batch in batches:
            assert len(batch) <= 5
            order = [position[a.rollout_id] for a in batch]
            assert order == sorted(order), "each batch is oldest first"

    async def test_producers_and_consumers(self, store: LightningStore) -> None:
        self.require(store.capabilities.async_safe, "store is not async-safe")
        produced: list[str] = []
        consumed: list[AttemptedRollout] = []
        producing = True

        async def producer(p: int) -> None:
            for i in range(10):
                produced.append((await store.enqueue_rollout({"p": p, "i": i})).rollout_id)
                await asyncio.sleep(0)

        async def consumer() -> None:
            while True:
                got = await store.dequeue_rollout(timeout=0.3)
                if got is not None:
                    consumed.append(got)
                elif not producing:
                    return

        consumers = [asyncio.create_task(consumer()) for _ in range(5)]
        await asyncio.gather(*(producer(p) for p in range(4)))
        producing = False
        await asyncio.gather(*consumers)
        consumed += await self.drain(store)
        _assert_exactly_once(list(consumed), produced)

    async def test_concurrent_enqueues(self, store: LightningStore) -> None:
        self.require(store.capabilities.async_safe, "store is not async-safe")
        rollouts = await asyncio.gather(*(store.enqueue_rollout(i) for i in range(40)))
        assert len({r.rollout_id for r in rollouts}) == 40
        assert (await store.statistics()).queue_depth == 40
        assert len(await self.drain(store)) == 40

    async def test_threads_dequeue_exactly_once(self, store: LightningStore) -> None:
        self.require(store.capabilities.thread_safe, "store is not thread-safe")
        rollouts = await store.enqueue_many_rollouts([EnqueueRequest(input=i) for i in range(40)])
        results: list[list[AttemptedRollout | None]] = [[] for _ in range(8)]
        errors: list[BaseException] = []
        barrier = threading.Barrier(8)

        def run(index: int) -> None:
            async def loop() -> None:
                barrier.wait(timeout=10)
                while (got := await store.dequeue_rollout(worker_id=f"t-{index}")) is not None:
                    results[index].append(got)

            try:
                asyncio.run(loop())
            except BaseException as exc:
                errors.append(exc)

        await run_threads([threading.Thread(target=run, args=(i,)) for i in range(8)])
        assert not errors, errors
        _assert_exactly_once([a for r in results for a in r], [r.rollout_id for r in rollouts])

    async def test_threads_add_spans(self, store: LightningStore) -> None:
        self.require(store.capabilities.thread_safe, "store is not thread-safe")
        attempted = await store.start_rollout("x")
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        stored: list[int] = []
        lock = threading.Lock()
        errors: list[BaseException] = []

        def run() -> None:
            async def loop() -> None:
                for _ in range(10):
                    span = await store.add_span(make_span(rid, aid))
                    with lock:
                        stored.append(span.sequence_id)

            try:
                asyncio.run(loop())
            except BaseException as exc:
                errors.append(exc)

        await run_threads([threading.Thread(target=run) for _ in range(6)])
        assert not errors, errors
        assert sorted(stored) == list(range(1, 61))

    async def test_waiters_woken_from_other_threads(self, store: LightningStore) -> None:
        self.require(store.capabilities.thread_safe, "store is not thread-safe")
        running = await store.start_rollout("x")
        rollout_waiter = asyncio.create_task(store.wait_for_rollouts([running.rollout_id], timeout=10))
        dequeue_waiter = asyncio.create_task(store.dequeue_rollout(timeout=10))
        await asyncio.sleep(0.2)
        assert not rollout_waiter.done() and not dequeue_waiter.done()
        created: list[str] = []
        errors: list[BaseException] = []

        def run() -> None:
            async def act() -> None:
                created.append((await store.enqueue_rollout("from a thread")).rollout_id)
                await store.update_attempt(running.rollout_id, "latest", status=AttemptStatus.SUCCEEDED)

            try:
                asyncio.run(act())
            except BaseException as exc:
                errors.append(exc)

        await run_threads([threading.Thread(target=run)])
        assert not errors, errors
        ended, attempted = await asyncio.wait_for(asyncio.gather(rollout_waiter, dequeue_waiter), 2.0)
        assert [r.rollout_id for r in ended] == [running.rollout_id]
        assert attempted is not None and attempted.rollout_id == created[0]


class ConcurrentSequenceTests(SuiteBase):
    async def test_concurrent_add_span_sequence_ids(self, store: LightningStore) -> None:
        self.require(store.capabilities.async_safe, "store is not async-safe")
        attempted = await store.start_rollout("x")
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        stored = await asyncio.gather(*(store.add_span(make_span(rid, aid)) for _ in range(50)))
        assert sorted(s.sequence_id for s in stored) == list(range(1, 51))
        page = await store.query_spans(rid, aid)
        assert [s.sequence_id for s in page.items] == list(range(1, 51))

    async def test_concurrent_next_sequence_id(self, store: LightningStore) -> None:
        self.require(store.capabilities.async_safe, "store is not async-safe")
        attempted = await store.start_rollout("x")
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        ids = await asyncio.gather(*(store.get_next_span_sequence_id(rid, aid) for _ in range(50)))
        assert sorted(ids) == list(range(1, 51))

    async def test_concurrent_many_sequence_ids(self, store: LightningStore) -> None:
        self.require(store.capabilities.async_safe, "store is not async-safe")
        attempted = await store.start_rollout("x")
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        groups = await asyncio.gather(*(store.get_many_span_sequence_ids(rid, aid, 3) for _ in range(20)))
        for group in groups:
            assert len(group) == 3 and group == list(range(group[0], group[0] + 3))
        assert sorted(i for g in groups for i in g) == list(range(1, 61))

    async def test_concurrent_add_many_spans(self, store: LightningStore) -> None:
        self.require(store.capabilities.async_safe, "store is not async-safe")
        attempted = await store.start_rollout("x")
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        batches = await asyncio.gather(
            *(store.add_many_spans([make_span(rid, aid) for _ in range(5)]) for _ in range(10))
        )
        for batch in batches:
            seq = [s.sequence_id for s in batch]
            assert seq == sorted(seq) and len(set(seq)) == 5
        assert sorted(s.sequence_id for b in batches for s in b) == list(range(1, 51))

    async def test_concurrent_duplicate_spans(self, store: LightningStore) -> None:
        self.require(store.capabilities.async_safe, "store is not async-safe")
        attempted = await store.start_rollout("x")
        span = make_span(attempted.rollout_id, attempted.attempt.attempt_id)
        stored = await asyncio.gather(*(store.add_span(span) for _ in range(20)))
        assert all(s == stored[0] for s in stored)
        assert (await store.query_spans(attempted.rollout_id)).total == 1


class ConcurrentResourceTests(SuiteBase):
    async def test_concurrent_update_resources(self, store: LightningStore) -> None:
        self.require(store.capabilities.async_safe, "store is not async-safe")
        n = 20
        updates = await asyncio.gather(
            *(store.update_resources("shared", {"p": PromptTemplate(template=f"t{i}")}) for i in range(n))
        )
        assert sorted(u.version for u in updates) == list(range(1, n + 1))
        page = await store.query_resources(resources_id="shared")
        assert page.total == n
        assert sorted(u.version for u in page.items) == list(range(1, n + 1))
        templates: dict[int, Any] = {u.version: u.resources for u in updates}
        for version, resources in templates.items():
            assert (await store.get_resources("shared", version)).resources == resources
        newest = await store.get_resources("shared")
        assert newest.version == n
        latest = await store.get_latest_resources()
        assert latest is not None and latest.resources_id == "shared" and latest.version == n
