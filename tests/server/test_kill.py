"""Crash safety through the server: `agl store serve` (SQLite) is SIGKILLed in the middle of a load of concurrent
clients and restarted on the same port. Every write a client saw acknowledged is there afterwards, and the same
client objects carry on by themselves (their retries ride out the restart)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from agl_kernel.client import LightningStoreClient, StoreConnectionError, StoreServerError
from agl_kernel.models import AttemptStatus, RolloutStatus
from agl_kernel.testing import make_span

WORKERS = 16


@pytest.mark.asyncio
@pytest.mark.timeout(180)
@pytest.mark.slow
async def test_sigkill_mid_load_loses_no_acknowledged_write(tmp_path: Path, server_process: Any) -> None:
    pytest.importorskip("agl_store_sqlite", reason="pip install agl-store-sqlite")
    server = server_process("--backend", "sqlite", "--path", str(tmp_path / "kill.db"))
    await asyncio.to_thread(server.start)

    enqueued: set[str] = set()
    spans: set[tuple[str, str, str]] = set()
    succeeded: set[str] = set()
    cycles_after_restart = [0] * WORKERS
    ambiguous: list[BaseException] = []
    restarted_at = float("inf")
    stop = False

    async def worker(index: int, client: LightningStoreClient) -> None:
        while not stop:
            try:
                rollout = await client.enqueue_rollout({"worker": index})
                enqueued.add(rollout.rollout_id)
                attempted = await client.dequeue_rollout(worker_id=f"w-{index}")
                if attempted is None:
                    continue
                for step in range(3):
                    span = make_span(attempted.rollout_id, attempted.attempt.attempt_id, name=f"step-{step}")
                    await client.add_span(span)
                    spans.add((attempted.rollout_id, attempted.attempt.attempt_id, span.span_id))
                await client.update_attempt(
                    attempted.rollout_id, attempted.attempt.attempt_id, status=AttemptStatus.SUCCEEDED
                )
                succeeded.add(attempted.rollout_id)
                if time.monotonic() > restarted_at:
                    cycles_after_restart[index] += 1
            except (StoreConnectionError, StoreServerError) as exc:
                # A write on the wire when the server died: it may or may not have happened, and the client
                # says so instead of guessing. It was never acknowledged, so the checks below do not count it.
                ambiguous.append(exc)

    clients = [LightningStoreClient(server.url) for _ in range(4)]
    tasks = [asyncio.ensure_future(worker(i, clients[i % 4])) for i in range(WORKERS)]
    await asyncio.sleep(2.0)
    before_kill = len(succeeded)
    assert before_kill > 0, "no cycle finished before the kill"
    server.kill()  # SIGKILL: no shutdown, no flush
    await asyncio.sleep(0.5)
    await asyncio.to_thread(server.start)
    restarted_at = time.monotonic()
    await asyncio.sleep(3.0)
    stop = True
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    for client in clients:
        await client.close()

    assert all(n > 0 for n in cycles_after_restart), f"some clients did not recover: {cycles_after_restart}"
    async with LightningStoreClient(server.url) as checker:
        found = {r.rollout_id: r for r in (await checker.query_rollouts(rollout_id_in=sorted(enqueued))).items}
        missing = enqueued - set(found)
        assert not missing, f"{len(missing)} acknowledged rollouts lost, e.g. {sorted(missing)[:3]}"
        not_succeeded = [
            rid for rid in succeeded if (await checker.get_rollout(rid)).status is not RolloutStatus.SUCCEEDED
        ]
        assert not not_succeeded, f"acknowledged successes lost: {not_succeeded[:3]}"
        stored: set[tuple[str, str, str]] = set()
        for rid in {rid for rid, _, _ in spans}:
            stored |= {(s.rollout_id, s.attempt_id, s.span_id) for s in (await checker.query_spans(rid)).items}
        lost = spans - stored
        assert not lost, f"{len(lost)} acknowledged spans lost"
    print(
        f"kill test: {len(enqueued)} rollouts, {len(spans)} spans, {len(succeeded)} successes acknowledged; "
        f"{before_kill} before the kill; {len(ambiguous)} writes reported as uncertain: "
        f"{sorted(set(str(e)[:150] for e in ambiguous))[:3]}"
    )
