"""Integers beyond 64 bits: every backend refuses the same ones, and writes nothing.

What a store keeps must survive every backend and every wire (SQLite columns, msgpack, JSON parsers in other
languages), so the contract is:

- values the store keeps as data (rollout input and metadata, attempt metadata, span attributes, events, links and
  resource, worker heartbeat stats, resources) may hold integers from -2**63 to 2**64-1 (msgpack's range); one
  outside it is refused with a ``ValueError`` and nothing is written;
- numbers the store keeps as such (span sequence ids) and the limits of reads lie in the signed 64-bit range,
  -2**63 .. 2**63-1; one beyond it is refused (``ValueError``; ``OverflowError``, which the server also answers with
  400, is accepted too, as the SQLite store lets sqlite3's through for its integer columns).
"""

from __future__ import annotations

import pytest

from agl_kernel.errors import NotFoundError
from agl_kernel.models import ProxyLLM, Span, SpanEvent
from agl_kernel.store.base import LightningStore
from agl_kernel.testing._base import SuiteBase, make_span

INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1
INT64_MIN = -(2**63)

TOO_BIG_FOR_DATA = (UINT64_MAX + 1, INT64_MIN - 1, 2**200)
"""Integers no backend can keep inside a stored value."""

OUT_OF_RANGE = (ValueError, OverflowError)
"""What a store raises for a number it cannot keep as a number (see the module's docstring)."""


class IntegerRangeTests(SuiteBase):
    async def test_integers_in_stored_values_beyond_64_bits_are_refused_and_nothing_is_written(
        self, store: LightningStore
    ) -> None:
        attempted = await store.start_rollout("x")
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        for big in TOO_BIG_FOR_DATA:
            with pytest.raises(ValueError):
                await store.enqueue_rollout({"n": [1, big]})
            with pytest.raises(ValueError):
                await store.enqueue_rollout("x", metadata={"n": big})
            with pytest.raises(ValueError):
                await store.start_rollout(big)
            with pytest.raises(ValueError):
                await store.update_rollout(rid, metadata={"deep": {"n": big}})
            with pytest.raises(ValueError):
                await store.update_attempt(rid, aid, metadata={"n": big})
            with pytest.raises(ValueError):
                await store.add_span(make_span(rid, aid, attributes={"n": big}))
            with pytest.raises(ValueError):
                await store.add_span(
                    msgspec_replace(make_span(rid, aid), events=[SpanEvent(name="e", attributes={"n": [big]})])
                )
            with pytest.raises(ValueError):
                await store.add_span(msgspec_replace(make_span(rid, aid), resource={"n": big}))
            with pytest.raises(ValueError):  # all or nothing: the good span before it is not written either
                await store.add_many_spans(
                    [make_span(rid, aid, name="good"), make_span(rid, aid, attributes={"n": big})]
                )
            with pytest.raises(ValueError):
                await store.update_worker("w-big", heartbeat_stats={"n": big})
            with pytest.raises(ValueError):
                await store.add_resources(
                    {"llm": ProxyLLM(endpoint="http://h/v1", model="m", sampling_parameters={"seed": big})}
                )
        assert (await store.query_rollouts()).total == 1
        assert (await store.get_rollout(rid)).metadata == {}
        assert (await store.get_attempt(rid, aid)).metadata == {}
        assert (await store.query_spans(rid)).items == []
        assert (await store.get_latest_resources()) is None
        with pytest.raises(NotFoundError):
            await store.get_worker("w-big")

    async def test_integers_at_the_edges_of_64_bits_are_kept_exactly(self, store: LightningStore) -> None:
        edges = [INT64_MIN, -1, INT64_MAX, INT64_MAX + 1, UINT64_MAX]
        rollout = await store.enqueue_rollout({"n": edges}, metadata={"n": edges})
        attempted = await store.start_rollout(edges)
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        await store.update_attempt(rid, aid, metadata={"n": edges})
        await store.add_span(make_span(rid, aid, attributes={"n": edges}))
        await store.update_worker("w-edges", heartbeat_stats={"n": edges})
        kept = await store.get_rollout(rollout.rollout_id)
        assert kept.input == {"n": edges} and kept.metadata == {"n": edges}
        assert (await store.get_rollout(rid)).input == edges
        assert (await store.get_attempt(rid, aid)).metadata == {"n": edges}
        assert (await store.query_spans(rid)).items[0].attributes == {"n": edges}
        assert (await store.get_worker("w-edges")).heartbeat_stats == {"n": edges}

    async def test_sequence_ids_beyond_64_bits_are_refused(self, store: LightningStore) -> None:
        attempted = await store.start_rollout("x")
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        for big in (INT64_MAX + 1, UINT64_MAX, UINT64_MAX + 1, 2**200):
            with pytest.raises(OUT_OF_RANGE):
                await store.add_span(make_span(rid, aid, sequence_id=big))
            with pytest.raises(OUT_OF_RANGE):
                await store.add_many_spans([make_span(rid, aid, name="good"), make_span(rid, aid, sequence_id=big)])
        assert (await store.query_spans(rid)).items == []
        # The largest one is kept; the next one (assigned by the store) would not fit and is refused.
        top = await store.add_span(make_span(rid, aid, sequence_id=INT64_MAX))
        assert top.sequence_id == INT64_MAX
        with pytest.raises(OUT_OF_RANGE):
            await store.add_span(make_span(rid, aid))
        assert [s.sequence_id for s in (await store.query_spans(rid)).items] == [INT64_MAX]

    async def test_limits_beyond_64_bits_are_refused(self, store: LightningStore) -> None:
        attempted = await store.start_rollout("x")
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        await store.add_span(make_span(rid, aid))
        await store.add_resources({"llm": ProxyLLM(endpoint="http://h/v1", model="m")})
        await store.enqueue_rollout("queued")
        big = INT64_MAX + 1
        with pytest.raises(OUT_OF_RANGE):
            await store.query_rollouts(limit=big)
        with pytest.raises(OUT_OF_RANGE):
            await store.query_attempts(rid, limit=big)
        with pytest.raises(OUT_OF_RANGE):
            await store.query_spans(rid, limit=big)
        with pytest.raises(OUT_OF_RANGE):
            await store.query_resources(limit=big)
        with pytest.raises(OUT_OF_RANGE):
            await store.dequeue_many_rollouts(limit=big)
        assert (await store.statistics()).queue_depth == 1  # the refused dequeue took nothing
        # The largest limit is a limit like any other.
        assert (await store.query_rollouts(limit=INT64_MAX)).total == 2


def msgspec_replace(span: Span, **changes: object) -> Span:
    import msgspec

    return msgspec.structs.replace(span, **changes)
