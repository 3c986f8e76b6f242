"""``agl store serve --backend mongo --set store.uri=...``: runners anywhere reach one Mongo-backed server, while
other processes open the same partition directly."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from _secantus import free_port

from agl_kernel.client import LightningStoreClient
from agl_kernel.models import AttemptStatus, RolloutStatus
from agl_store_mongo import MongoLightningStore


@pytest.mark.slow
def test_store_serve_with_the_mongo_backend(mongo_uri: str, database: str, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("wb")
    command = [sys.executable, "-m", "agl_kernel.cli", "store", "serve", "--backend", "mongo", "--port", str(port)]
    command += [
        "--set",
        f"store.uri={mongo_uri}",
        "--set",
        f"store.database={database}",
        "--set",
        "store.partition=served",
    ]
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"{url}/health", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)

        async def main() -> None:
            direct = MongoLightningStore(mongo_uri, database=database, partition="served")
            client = LightningStoreClient(url)
            try:
                queued = await direct.enqueue_rollout({"q": 1})
                taken = await client.dequeue_rollout(worker_id="remote", timeout=10)
                assert taken is not None and taken.rollout_id == queued.rollout_id
                await client.update_attempt(taken.rollout_id, "latest", status=AttemptStatus.SUCCEEDED)
                ended = await direct.wait_for_rollouts([queued.rollout_id], timeout=10)
                assert [r.status for r in ended] == [RolloutStatus.SUCCEEDED]
            finally:
                await client.close()
                await direct.close()

        asyncio.run(main())
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def test_a_bad_uri_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agl_kernel.cli", "store", "serve", "--backend", "mongo", "--port", str(free_port()),
         "--set", f"store.uri=mongodb://127.0.0.1:{free_port()}/?replicaSet=rs0", "--set", "store.connect_timeout=1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "no MongoDB server answered" in done.stderr and "Traceback" not in done.stderr
