"""Smoke use of agl-store-sqlite installed alone with the kernel (``tools/check_plugins_alone.py`` runs it with a
fresh venv's python; it needs nothing else, not even pytest): open a store file by name, enqueue a rollout, start
it, record a span, and read everything back after reopening the file."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time

from agl_kernel.models import AttemptStatus, RolloutStatus, Span
from agl_kernel.plugins import create_component
from agl_store_sqlite import SqliteLightningStore


def check(condition: object, what: str) -> None:
    if not condition:
        sys.exit(f"smoke failed: {what}")


async def main(directory: str) -> None:
    path = os.path.join(directory, "runs", "smoke.db")
    store = create_component("stores", "sqlite", path=path, watchdog_interval="0.2")
    check(isinstance(store, SqliteLightningStore), f"the `sqlite` store is a {type(store).__name__}")
    async with store:
        queued = await store.enqueue_rollout({"question": "2+2"})
        attempted = await store.dequeue_rollout(worker_id="smoke", timeout=5)
        check(attempted is not None and attempted.rollout_id == queued.rollout_id, "the rollout was not dequeued")
        now = time.time()
        span = Span(
            rollout_id=attempted.rollout_id, attempt_id=attempted.attempt.attempt_id, trace_id="ab" * 16,
            span_id="cd" * 8, name="smoke", attributes={"answer": 4}, start_time=now, end_time=now,
        )  # fmt: skip
        stored = await store.add_span(span)
        check(stored.sequence_id == 1, f"the span's sequence id is {stored.sequence_id}")
        await store.update_attempt(attempted.rollout_id, attempted.attempt.attempt_id, status=AttemptStatus.SUCCEEDED)
    check(os.path.isfile(path), f"no store file at {path}")
    async with SqliteLightningStore(path) as store:
        rollout = await store.get_rollout(queued.rollout_id)
        check(rollout.status is RolloutStatus.SUCCEEDED, f"the rollout is {rollout.status} after reopening")
        spans = (await store.query_spans(queued.rollout_id)).items
        check([(s.name, s.attributes) for s in spans] == [("smoke", {"answer": 4})], f"spans read back: {spans}")
    print(f"agl-store-sqlite smoke: ok (rollout {queued.rollout_id}, 1 span, {path})")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(tmp))
