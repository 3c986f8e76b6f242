"""Several processes on one schema: exactly-once claims, a writer killed with SIGKILL in the middle of its
transactions, and the server crashed (``pg_ctl stop -m immediate``) under a 32-worker load and restarted."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import IO

import psycopg
import pytest
from _cluster import PostgresCluster

from agl_kernel.models import EnqueueRequest, RolloutStatus
from agl_store_postgres import PostgresLightningStore

WORKER = Path(__file__).parent / "_worker.py"

pytestmark = pytest.mark.timeout(300)


def start_worker(mode: str, dsn: str, schema: str, name: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, str(WORKER), mode, dsn, schema, name], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready", f"worker {name} did not start"
    return process


def lines(stream: IO[str] | None) -> list[str]:
    assert stream is not None
    return [line.strip() for line in stream.read().splitlines() if line.strip()]


@pytest.mark.slow
def test_two_processes_claim_every_rollout_exactly_once(postgres_dsn: str, schema: str) -> None:
    asyncio.run(_open_close(postgres_dsn, schema))  # the schema exists before the workers race to create it
    workers = [start_worker("drain", postgres_dsn, schema, f"p{i}") for i in range(2)]

    async def enqueue() -> list[str]:
        async with PostgresLightningStore(postgres_dsn, schema=schema) as store:
            ids = []
            for start in range(0, 400, 50):  # while the workers wait, then drain, in batches
                batch = [EnqueueRequest(input=i) for i in range(start, start + 50)]
                ids += [r.rollout_id for r in await store.enqueue_many_rollouts(batch)]
            return ids

    expected = asyncio.run(enqueue())
    claimed = []
    for worker in workers:
        out, _ = worker.communicate(timeout=240)
        assert worker.returncode == 0
        claimed.append([line for line in out.splitlines() if line.strip()])
    everything = claimed[0] + claimed[1]
    duplicates = [rid for rid, n in Counter(everything).items() if n > 1]
    assert not duplicates, f"claimed twice: {duplicates}"
    assert sorted(everything) == sorted(expected)
    assert all(claimed), f"each process claimed some: {[len(c) for c in claimed]}"

    async def check() -> None:
        async with PostgresLightningStore(postgres_dsn, schema=schema) as store:
            assert (await store.query_rollouts(status_in=[RolloutStatus.SUCCEEDED])).total == 400
            assert (await store.statistics()).attempts_by_status == {"succeeded": 400}

    asyncio.run(check())


async def _open_close(dsn: str, schema: str) -> None:
    async with PostgresLightningStore(dsn, schema=schema):
        pass


@pytest.mark.slow
def test_a_writer_killed_mid_transaction_leaves_no_partial_rollout(postgres_dsn: str, schema: str) -> None:
    written: list[str] = []
    for round_ in range(3):
        writer = start_worker("write", postgres_dsn, schema, f"w{round_}")
        time.sleep(random.uniform(0.8, 1.6))
        writer.send_signal(signal.SIGKILL)
        writer.wait(30)
        written += [line.split()[1] for line in lines(writer.stdout) if line.startswith("batch ")]
    assert written, "the writer wrote no whole batch before it was killed"

    # The server rolls back a killed client's open transaction when it sees the connection close.
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        rollouts = conn.execute("SELECT rollout_id, status, attempt_count, ticket FROM rollouts").fetchall()
        attempts = Counter(r[0] for r in conn.execute("SELECT rollout_id FROM attempts").fetchall())
        spans = Counter(r[0] for r in conn.execute("SELECT name FROM spans").fetchall())
        attempt_ids = {r[0] for r in conn.execute("SELECT attempt_id FROM attempts").fetchall()}
        workers = conn.execute("SELECT current_attempt_id FROM workers").fetchall()

    async def check() -> None:
        async with PostgresLightningStore(postgres_dsn, schema=schema) as store:
            batches = Counter([(await store.get_rollout(r[0])).metadata["batch"] for r in rollouts])
            assert set(batches.values()) == {5}, f"a batch of 5 was half written: {batches}"
            for tag in written:  # every batch the writer reported is there
                assert batches[tag] == 5
            for rollout_id, status, attempt_count, ticket in rollouts:
                assert attempt_count == attempts[rollout_id], f"rollout without its attempt: {rollout_id}"
                assert (status in ("queuing", "requeuing")) == (ticket is not None), "ticket out of step with status"
            assert set(spans.values()) <= {10}, f"a batch of spans was half written: {spans}"
            for (current,) in workers:
                assert current in (None, *attempt_ids)

    asyncio.run(check())


@pytest.mark.slow
def test_a_crashed_server_keeps_every_acknowledged_write_under_32_workers(own_cluster: PostgresCluster) -> None:
    dsn = own_cluster.dsn()
    asyncio.run(_open_close(dsn, "durable"))
    loader = start_worker("load", dsn, "durable", "load")
    acknowledged: list[str] = []

    def read() -> None:
        assert loader.stdout is not None
        for line in loader.stdout:
            if line.startswith("done "):
                acknowledged.append(line.split()[1])

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        while len(acknowledged) < 200:
            assert loader.poll() is None, "the load process died"
            time.sleep(0.05)
        own_cluster.stop("immediate")  # a crash: no checkpoint, recovery from the WAL
        time.sleep(1.0)
        own_cluster.start()
        before = len(acknowledged)
        while len(acknowledged) < before + 200:  # the same store goes on after the restart
            assert loader.poll() is None, "the load process died"
            time.sleep(0.05)
    finally:
        loader.send_signal(signal.SIGKILL)
        loader.wait(30)
        reader.join(10)

    async def check() -> None:
        async with PostgresLightningStore(dsn, schema="durable") as store:
            for rollout_id in acknowledged:
                rollout = await store.get_rollout(rollout_id)
                assert rollout.status is RolloutStatus.SUCCEEDED, f"{rollout_id} lost its acknowledged end"
                assert len((await store.query_spans(rollout_id)).items) == 1

    asyncio.run(check())
