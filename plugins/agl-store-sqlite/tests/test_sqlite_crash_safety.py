"""Crash safety: a process killed with SIGKILL mid-load loses nothing it acknowledged, and leaves no corruption or
stuck lock behind."""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agl_kernel.models import AttemptStatus, RolloutStatus
from agl_store_sqlite import SqliteLightningStore

pytestmark = pytest.mark.asyncio

# The load: 8 workers, each enqueues, dequeues, adds spans one by one (single and batched) and finishes its
# rollouts. A line is printed only after the store call returned: that is the acknowledgement.
#   R <rollout>                           enqueued
#   S <rollout> <attempt> <span> <seq>    span stored
#   D <rollout>                           rollout succeeded
WRITER = r"""
import asyncio, sys, uuid
from agl_kernel.models import Span
from agl_store_sqlite import SqliteLightningStore

def ack(*parts):
    sys.stdout.write(" ".join(map(str, parts)) + "\n")
    sys.stdout.flush()

def span(rollout_id, attempt_id, i):
    return Span(rollout_id=rollout_id, attempt_id=attempt_id, trace_id=uuid.uuid4().hex,
                span_id=uuid.uuid4().hex[:16], name=f"step-{i}", attributes={"i": i, "text": "x" * (i * 50)})

async def worker(store, w):
    n = 0
    while True:
        n += 1
        rollout = await store.enqueue_rollout({"worker": w, "n": n}, metadata={"w": w})
        ack("R", rollout.rollout_id)
        attempted = await store.dequeue_rollout(worker_id=f"w{w}")
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        for i in range(5):
            stored = await store.add_span(span(rid, aid, i))
            ack("S", rid, aid, stored.span_id, stored.sequence_id)
        for stored in await store.add_many_spans([span(rid, aid, i) for i in range(5, 9)]):
            ack("S", rid, aid, stored.span_id, stored.sequence_id)
        await store.update_attempt(rid, aid, status="succeeded")
        ack("D", rid)

async def main():
    store = SqliteLightningStore(sys.argv[1])
    ack("ready")
    await asyncio.gather(*(worker(store, w) for w in range(8)))

asyncio.run(main())
"""


def run_and_kill(path: Path, kill_after: float) -> list[list[str]]:
    """Start the writer, SIGKILL it ``kill_after`` seconds into its load, return its acknowledged lines."""
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None
    lines: list[bytes] = []
    started = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if line == b"ready\n":
                started.set()
            else:
                lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not started.wait(30):
        process.kill()
        raise AssertionError(f"the writer did not start: {process.stderr.read() if process.stderr else b''!r}")
    time.sleep(kill_after)
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    reader.join(10)
    assert process.returncode == -signal.SIGKILL, process.stderr.read() if process.stderr else ""
    # Only complete lines were acknowledged; a line cut by the kill was not.
    return [line.decode().split() for line in lines if line.endswith(b"\n")]


async def check_acknowledged(path: Path, acks: list[list[str]]) -> None:
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    started = time.monotonic()
    async with SqliteLightningStore(path) as store:
        assert time.monotonic() - started < 5, "reopening took too long: a stuck lock?"
        rollouts = {a[1] for a in acks if a[0] == "R"}
        done = {a[1] for a in acks if a[0] == "D"}
        spans = [a for a in acks if a[0] == "S"]
        assert rollouts, "the writer acknowledged nothing before it was killed; kill it later"
        found = await store.query_rollouts(rollout_id_in=sorted(rollouts))
        assert {r.rollout_id for r in found.items} == rollouts
        for rollout in found.items:
            assert rollout.metadata == {"w": rollout.input["worker"]}
            if rollout.rollout_id in done:
                assert rollout.status is RolloutStatus.SUCCEEDED
        by_rollout: dict[str, dict[str, int]] = {}
        for _, rollout_id, _, span_id, sequence_id in spans:
            by_rollout.setdefault(rollout_id, {})[span_id] = int(sequence_id)
        for rollout_id, expected in by_rollout.items():
            stored = {s.span_id: s.sequence_id for s in (await store.query_spans(rollout_id)).items}
            assert expected.items() <= stored.items(), f"acknowledged spans of {rollout_id} are missing"

        # Still fully usable: the queue, new writes, and the interrupted rollouts.
        await store.enqueue_rollout("after the crash")
        while (attempted := await store.dequeue_rollout(worker_id="survivor")) is not None:
            await store.update_attempt(
                attempted.rollout_id, attempted.attempt.attempt_id, status=AttemptStatus.SUCCEEDED
            )
        interrupted = await store.query_rollouts(status_in=[RolloutStatus.PREPARING, RolloutStatus.RUNNING])
        for rollout in interrupted.items:
            await store.update_rollout(rollout.rollout_id, status=RolloutStatus.CANCELLED)
        stats = await store.statistics()
        assert stats.queue_depth == 0 and stats.total_rollouts >= len(rollouts) + 1


async def test_sigkill_mid_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    path = tmp_path / "crash.db"  # one file, crashed into again and again
    total = 0
    for round_ in range(5):
        kill_after = rng.uniform(0.2, 1.5)
        acks = run_and_kill(path, kill_after)
        total += len(acks)
        try:
            await check_acknowledged(path, acks)
        except AssertionError as exc:
            raise AssertionError(f"round {round_} (seed {seed}, killed after {kill_after:.2f} s): {exc}") from exc
    assert total > 100
