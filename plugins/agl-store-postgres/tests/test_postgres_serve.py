"""``agl store serve --backend postgres --set store.dsn=...``: runners anywhere reach one Postgres-backed server,
while other processes open the same schema directly."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from _cluster import free_port

from agl_kernel.client import LightningStoreClient
from agl_kernel.models import AttemptStatus, RolloutStatus
from agl_store_postgres import PostgresLightningStore


@pytest.mark.slow
def test_store_serve_with_the_postgres_backend(postgres_dsn: str, schema: str, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("wb")
    command = [sys.executable, "-m", "agl_kernel.cli", "store", "serve", "--backend", "postgres", "--port", str(port)]
    command += ["--set", f"store.dsn={postgres_dsn}", "--set", f"store.schema={schema}"]
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
            direct = PostgresLightningStore(postgres_dsn, schema=schema)
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
