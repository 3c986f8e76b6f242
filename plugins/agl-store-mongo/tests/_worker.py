"""A separate process for the multi-process tests: ``python _worker.py MODE URI DATABASE NAME``.

- ``drain``: dequeue rollouts (waiting up to 3 s for more) and finish each; print each claimed rollout id.
- ``write``: loop until killed: enqueue a batch of 5 (one transaction), claim them, add 2 spans to each in one
  batch, finish them; print ``batch N`` after each batch is fully written.

It prints ``ready`` once its store is open.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
import uuid

from agl_kernel.models import AttemptStatus, EnqueueRequest, Span
from agl_store_mongo import MongoLightningStore


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def drain(store: MongoLightningStore, name: str) -> None:
    while True:
        got = await store.dequeue_rollout(worker_id=name, timeout=3)
        if got is None:
            return
        say(got.rollout_id)
        await store.update_attempt(got.rollout_id, got.attempt.attempt_id, status=AttemptStatus.SUCCEEDED)


async def write(store: MongoLightningStore, name: str) -> None:
    for batch in itertools.count():
        tag = f"{name}-{batch}"
        await store.enqueue_many_rollouts([EnqueueRequest(input=i, metadata={"batch": tag}) for i in range(5)])
        taken = await store.dequeue_many_rollouts(limit=5, worker_id=name)
        now = time.time()
        spans = [
            Span(rollout_id=t.rollout_id, attempt_id=t.attempt.attempt_id, trace_id=uuid.uuid4().hex,
                 span_id=uuid.uuid4().hex[:16], name=f"span {tag}", start_time=now, end_time=now)
            for t in taken
            for _ in range(2)
        ]  # fmt: skip
        await store.add_many_spans(spans)
        for t in taken:
            await store.update_attempt(t.rollout_id, t.attempt.attempt_id, status=AttemptStatus.SUCCEEDED)
        say(f"batch {tag}")


async def main(mode: str, uri: str, database: str, name: str) -> None:
    async with MongoLightningStore(uri, database=database) as store:
        say("ready")
        await (drain if mode == "drain" else write)(store, name)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
