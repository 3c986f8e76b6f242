"""A separate process for the multi-process tests: ``python _worker.py MODE DSN SCHEMA NAME``.

- ``drain``: dequeue rollouts (waiting up to 3 s for more) and finish each; print each claimed rollout id.
- ``write``: loop until killed: enqueue a batch of 5 (one transaction), claim them, add 2 spans to each in one
  batch, finish them; print ``batch N`` after each batch is fully written.
- ``load``: loop until killed with 32 concurrent workers, each: enqueue one rollout, claim one, add a span, finish
  it; print ``done ROLLOUT_ID`` after each acknowledged finish (errors while the server is down are retried).

It prints ``ready`` once its store is open.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
import uuid

from agl_kernel.models import AttemptStatus, EnqueueRequest, Span
from agl_store_postgres import PostgresLightningStore, PostgresStoreError


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def span(rollout_id: str, attempt_id: str, name: str) -> Span:
    now = time.time()
    return Span(rollout_id=rollout_id, attempt_id=attempt_id, trace_id=uuid.uuid4().hex,
                span_id=uuid.uuid4().hex[:16], name=name, start_time=now, end_time=now)  # fmt: skip


async def drain(store: PostgresLightningStore, name: str) -> None:
    while True:
        got = await store.dequeue_rollout(worker_id=name, timeout=3)
        if got is None:
            return
        say(got.rollout_id)
        await store.update_attempt(got.rollout_id, got.attempt.attempt_id, status=AttemptStatus.SUCCEEDED)


async def write(store: PostgresLightningStore, name: str) -> None:
    for batch in itertools.count():
        tag = f"{name}-{batch}"
        await store.enqueue_many_rollouts([EnqueueRequest(input=i, metadata={"batch": tag}) for i in range(5)])
        taken = await store.dequeue_many_rollouts(limit=5, worker_id=name)
        spans = [span(t.rollout_id, t.attempt.attempt_id, f"span {tag}") for t in taken for _ in range(2)]
        await store.add_many_spans(spans)
        for t in taken:
            await store.update_attempt(t.rollout_id, t.attempt.attempt_id, status=AttemptStatus.SUCCEEDED)
        say(f"batch {tag}")


async def load(store: PostgresLightningStore, name: str) -> None:
    async def worker(index: int) -> None:
        while True:
            try:
                await store.enqueue_rollout({"worker": index})
                got = await store.dequeue_rollout(worker_id=f"{name}-{index}", timeout=1)
                if got is None:
                    continue
                await store.add_span(span(got.rollout_id, got.attempt.attempt_id, "load"))
                await store.update_attempt(got.rollout_id, got.attempt.attempt_id, status=AttemptStatus.SUCCEEDED)
                say(f"done {got.rollout_id}")
            except PostgresStoreError as exc:  # the server is down: the write was not acknowledged
                say(f"error {type(exc).__name__}")
                await asyncio.sleep(0.2)

    await asyncio.gather(*(worker(i) for i in range(32)))


async def main(mode: str, dsn: str, schema: str, name: str) -> None:
    store = PostgresLightningStore(dsn, schema=schema)  # default settings: what users run
    async with store:
        say("ready")
        await {"drain": drain, "write": write, "load": load}[mode](store, name)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
