"""Load: 64 concurrent client workers run full rollout cycles (enqueue → dequeue → 10 spans → succeed) against
one `agl store serve` process (SQLite) for AGL_LOAD_SECONDS seconds (default 10; the issue's figure is 30).
At the end everything is counted: nothing lost, nothing handed out twice."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from agl_kernel.client import LightningStoreClient
from agl_kernel.models import AttemptStatus
from agl_kernel.testing import make_span

WORKERS = 64
CLIENTS = 4
SPANS = 10
SECONDS = float(os.environ.get("AGL_LOAD_SECONDS", "10"))


@pytest.mark.asyncio
@pytest.mark.timeout(SECONDS * 4 + 120)
@pytest.mark.slow
async def test_64_workers_full_cycles(tmp_path: Path, server_process: Any) -> None:
    pytest.importorskip("agl_store_sqlite", reason="pip install agl-store-sqlite")
    server = server_process("--backend", "sqlite", "--path", str(tmp_path / "load.db"))
    await asyncio.to_thread(server.start)
    clients = [LightningStoreClient(server.url) for _ in range(CLIENTS)]
    enqueued: list[str] = []
    dequeued: list[str] = []
    spans_acknowledged = 0
    deadline = time.monotonic() + SECONDS

    async def worker(index: int) -> None:
        nonlocal spans_acknowledged
        client = clients[index % CLIENTS]
        while time.monotonic() < deadline:
            enqueued.append((await client.enqueue_rollout({"worker": index})).rollout_id)
            attempted = await client.dequeue_rollout(worker_id=f"load-{index}")
            assert attempted is not None, "the queue was empty right after an enqueue: a rollout was lost"
            dequeued.append(attempted.rollout_id)
            for step in range(SPANS):
                await client.add_span(make_span(attempted.rollout_id, attempted.attempt.attempt_id, name=f"s{step}"))
                spans_acknowledged += 1
            await client.update_attempt(
                attempted.rollout_id, attempted.attempt.attempt_id, status=AttemptStatus.SUCCEEDED
            )

    started = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(WORKERS)))
    elapsed = time.monotonic() - started

    duplicates = [rid for rid, n in Counter(dequeued).items() if n > 1]
    assert not duplicates, f"handed out twice: {duplicates[:5]}"
    assert sorted(dequeued) == sorted(enqueued), "every enqueued rollout is dequeued exactly once"
    stats = await clients[0].statistics()
    n = len(enqueued)
    assert stats.total_rollouts == n and stats.rollouts_by_status.get("succeeded") == n
    assert stats.total_attempts == n and stats.attempts_by_status.get("succeeded") == n
    assert stats.total_spans == spans_acknowledged == n * SPANS
    assert stats.queue_depth == 0
    for client in clients:
        await client.close()
    print(f"load: {WORKERS} workers, {n} rollouts ({n / elapsed:.0f}/s), {stats.total_spans} spans in {elapsed:.1f} s")
