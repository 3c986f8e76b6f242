"""Several processes on one partition: exactly-once claims, a writer killed with SIGKILL in the middle of its
transactions, and a server restarted on its storage directory."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any

import pytest
from _secantus import SecantusServer, executable
from pymongo import MongoClient

from agl_kernel.models import AttemptStatus, EnqueueRequest, PromptTemplate, RolloutStatus, Span
from agl_store_mongo import MongoLightningStore

WORKER = Path(__file__).parent / "_worker.py"

pytestmark = pytest.mark.timeout(300)


def start_worker(mode: str, uri: str, database: str, name: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, str(WORKER), mode, uri, database, name], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready", f"worker {name} did not start"
    return process


def lines(stream: IO[str] | None) -> list[str]:
    assert stream is not None
    return [line.strip() for line in stream.read().splitlines() if line.strip()]


@pytest.mark.slow
def test_two_processes_claim_every_rollout_exactly_once(mongo_uri: str, database: str) -> None:
    workers = [start_worker("drain", mongo_uri, database, f"p{i}") for i in range(2)]

    async def enqueue() -> list[str]:
        async with MongoLightningStore(mongo_uri, database=database) as store:
            ids = []
            for start in range(0, 300, 50):  # while the workers wait, then drain, in batches
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
        async with MongoLightningStore(mongo_uri, database=database) as store:
            done = await store.query_rollouts(status_in=[RolloutStatus.SUCCEEDED])
            assert done.total == 300
            assert (await store.statistics()).attempts_by_status == {"succeeded": 300}

    asyncio.run(check())


@pytest.mark.slow
def test_a_writer_killed_mid_transaction_leaves_no_partial_rollout(mongo_uri: str, database: str) -> None:
    written: list[str] = []
    for round_ in range(3):
        writer = start_worker("write", mongo_uri, database, f"w{round_}")
        time.sleep(random.uniform(0.8, 1.6))
        writer.send_signal(signal.SIGKILL)
        writer.wait(30)
        written += [line.split()[1] for line in lines(writer.stdout) if line.startswith("batch ")]
    assert written, "the writer wrote no whole batch before it was killed"

    with MongoClient(mongo_uri) as client:
        db = client[database]
        rollouts = list(db["default.rollouts"].find())
        attempts = Counter(a["rollout_id"] for a in db["default.attempts"].find())
        spans = list(db["default.spans"].find())
        workers = list(db["default.workers"].find())
        attempt_ids = {a["_id"] for a in db["default.attempts"].find()}

    async def check() -> None:
        async with MongoLightningStore(mongo_uri, database=database) as store:
            batches = Counter([(await store.get_rollout(r["_id"])).metadata["batch"] for r in rollouts])
            assert set(batches.values()) == {5}, f"a batch of 5 was half written: {batches}"
            for tag in written:  # every batch the writer reported is there, finished
                assert batches[tag] == 5
            for r in rollouts:
                assert r.get("attempt_count", 0) == attempts[r["_id"]], f"rollout without its attempt: {r['_id']}"
                queued = r["status"] in ("queuing", "requeuing")
                assert queued == ("ticket" in r), f"queue ticket out of step with status: {r}"
                if r["attempt_count"] == 0:
                    assert r["status"] == "queuing"
            by_batch = Counter(s["name"] for s in spans)
            assert set(by_batch.values()) <= {10}, f"a batch of spans was half written: {by_batch}"
            for w in workers:
                assert w.get("current_attempt_id") in (None, *attempt_ids)

    asyncio.run(check())


@pytest.mark.slow
@pytest.mark.skipif(executable() is None, reason="pip install 'agl-store-mongo[testing]' (secantusdb)")
def test_a_restarted_server_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    # mongod journals a commit acknowledged by a majority; secantus does so only with --sync-on-commit (without it,
    # a crash of the server loses recent commits, as mongod with j:false would).
    server = SecantusServer(str(tmp_path / "data"), extra=("--sync-on-commit",))
    try:

        async def write(store: MongoLightningStore) -> dict[str, Any]:
            resources = await store.add_resources({"p": PromptTemplate(template="v1")})
            await store.update_resources(resources.resources_id, {"p": PromptTemplate(template="v2")})
            queued = await store.enqueue_many_rollouts([EnqueueRequest(input=i) for i in range(40)])
            finished = []
            for _ in range(20):
                got = await store.dequeue_rollout(worker_id="w")
                assert got is not None
                now = time.time()
                for i in range(3):
                    await store.add_span(
                        Span(rollout_id=got.rollout_id, attempt_id=got.attempt.attempt_id, trace_id="ab" * 16,
                             span_id=f"{i:016x}", name=f"s{i}", start_time=now, end_time=now)
                    )  # fmt: skip
                await store.update_attempt(got.rollout_id, "latest", status=AttemptStatus.SUCCEEDED)
                finished.append(got.rollout_id)
            return {"resources": resources.resources_id, "queued": [r.rollout_id for r in queued], "done": finished}

        async def read(store: MongoLightningStore, acked: dict[str, Any]) -> None:
            assert [r.rollout_id for r in (await store.query_rollouts()).items] == acked["queued"]
            for rollout_id in acked["done"]:
                assert (await store.get_rollout(rollout_id)).status is RolloutStatus.SUCCEEDED
                assert [s.sequence_id for s in (await store.query_spans(rollout_id)).items] == [1, 2, 3]
            assert (await store.get_resources(acked["resources"])).version == 2
            assert (await store.statistics()).queue_depth == 40 - len(acked["done"])

        async def main() -> None:
            store = MongoLightningStore(server.uri, database="durable", connect_timeout=10)
            try:
                acked = await write(store)
                for how in (signal.SIGTERM, signal.SIGKILL):  # a clean stop, then a crash of the server
                    server.restart(how)
                    async with MongoLightningStore(server.uri, database="durable") as again:
                        await read(again, acked)
                    # The store that was open across the restart reconnects and goes on.
                    got = await store.dequeue_rollout(worker_id="w", timeout=10)
                    assert got is not None
                    for i in range(3):
                        await store.add_span(
                            Span(rollout_id=got.rollout_id, attempt_id=got.attempt.attempt_id, trace_id="ab" * 16,
                                 span_id=f"{i:016x}", name=f"s{i}", start_time=1.0, end_time=1.0)
                        )  # fmt: skip
                    await store.update_attempt(got.rollout_id, "latest", status=AttemptStatus.SUCCEEDED)
                    acked["done"].append(got.rollout_id)
            finally:
                await store.close()

        asyncio.run(main())
    finally:
        server.close()
