"""LightningStoreClient on the network: retries that are safe, errors that say what happened, batching of
concurrent calls, and any httpx transport."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from agl_kernel.client import LightningStoreClient, StoreConnectionError
from agl_kernel.errors import NotFoundError
from agl_kernel.models import AttemptStatus
from agl_kernel.server import ServerThread, create_app
from agl_kernel.store.memory import InMemoryLightningStore
from agl_kernel.testing import make_span

from .conftest import free_port
from .test_metrics import sample


@pytest.mark.asyncio
async def test_a_server_that_comes_up_later_is_waited_for() -> None:
    port = free_port()
    client = LightningStoreClient(f"http://127.0.0.1:{port}", retries=10, backoff=0.05, max_backoff=0.5)
    # Never reached the server, so even a write is safe to send again.
    pending = asyncio.ensure_future(client.enqueue_rollout("early"))
    await asyncio.sleep(0.6)
    assert not pending.done()
    store = InMemoryLightningStore()
    server = await asyncio.to_thread(ServerThread(create_app(store, plugins=False), port=port).start)
    try:
        rollout = await asyncio.wait_for(pending, 10)
        assert (await store.get_rollout(rollout.rollout_id)).input == "early"
        assert (await store.statistics()).total_rollouts == 1
    finally:
        await client.close()
        await asyncio.to_thread(server.stop)


@pytest.mark.asyncio
async def test_unreachable_server_is_reported() -> None:
    client = LightningStoreClient(f"http://127.0.0.1:{free_port()}", retries=2, backoff=0.01)
    started = time.monotonic()
    with pytest.raises(StoreConnectionError, match="failed after 3 tries") as info:
        await client.get_rollout("ro-x")
    assert "agl store serve" in str(info.value) and "may or may not" not in str(info.value)
    assert time.monotonic() - started < 5
    await client.close()


class HangUp:
    """A fake server that reads each request and closes the connection without answering."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(
                next(
                    (line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")),
                    b"0",
                )
            )
            await reader.readexactly(length)
            self.requests.append(head.split(b"\r\n")[0])
        finally:
            writer.close()


@pytest.mark.asyncio
async def test_only_idempotent_calls_are_retried_after_an_ambiguous_failure() -> None:
    fake = HangUp()
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = LightningStoreClient(f"http://127.0.0.1:{port}", retries=3, backoff=0.01, batch_calls=False)
    client._server_capabilities = client.capabilities  # skip the first-contact request the fake cannot answer
    try:
        with pytest.raises(StoreConnectionError, match="may or may not have taken effect"):
            await client.enqueue_rollout("x")
        assert len(fake.requests) == 1, "a write that may have happened must not be sent twice"
        fake.requests.clear()
        with pytest.raises(StoreConnectionError, match="failed after 4 tries"):
            await client.get_rollout("ro-x")
        assert len(fake.requests) == 4 and all(b"GET /api/v1/rollouts/ro-x" in r for r in fake.requests)
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
async def test_concurrent_calls_share_requests_and_keep_their_own_errors() -> None:
    store = InMemoryLightningStore()
    with ServerThread(create_app(store, plugins=False)) as server:
        async with LightningStoreClient(server.url) as client:
            attempted = await client.start_rollout("x")
            rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
            spans = [make_span(rid, aid) for _ in range(100)]
            calls = [client.add_span(span) for span in spans] + [client.add_span(make_span(rid, "at-missing"))]
            calls += [client.enqueue_rollout(i) for i in range(20)] + [client.get_rollout("ro-missing")]
            results = await asyncio.gather(*calls, return_exceptions=True)
            assert sorted(r.sequence_id for r in results[:100]) == list(range(1, 101))
            assert isinstance(results[100], NotFoundError) and "at-missing" in str(results[100])
            assert all(r.rollout_id for r in results[101:121])
            assert isinstance(results[121], NotFoundError) and "ro-missing" in str(results[121])
            await client.update_attempt(rid, aid, status=AttemptStatus.SUCCEEDED)
        metrics = httpx.get(f"{server.url}/metrics").text
        batches = sample(metrics, "agl_http_requests_total", method="POST", route="/api/v1/batch", status="200")
        assert 1 <= batches <= 10, f"{len(calls)} concurrent calls took {batches} requests"


@pytest.mark.asyncio
async def test_any_httpx_transport() -> None:
    store = InMemoryLightningStore()
    app = create_app(store, plugins=False)
    client = LightningStoreClient("http://agl.test", transport_factory=lambda: httpx.ASGITransport(app=app))
    try:
        rollout = await client.enqueue_rollout({"in": "process"})
        taken = await client.dequeue_rollout(worker_id="w")
        assert taken is not None and taken.rollout_id == rollout.rollout_id
        with pytest.raises(NotFoundError):
            await client.get_attempt(rollout.rollout_id, "at-missing")
    finally:
        await client.close()
        await store.close()


def test_bad_urls_are_refused() -> None:
    for url in ("localhost:4747", "ftp://x", "http://"):
        with pytest.raises(ValueError, match="http://host:port"):
            LightningStoreClient(url)


def test_store_plugin_entry_point(monkeypatch: Any) -> None:
    from agl_kernel.plugins import create_component

    monkeypatch.setenv("AGL_STORE_URL", "http://127.0.0.1:1")
    client = create_component("stores", "http")
    assert isinstance(client, LightningStoreClient) and client.url == "http://127.0.0.1:1"
    assert client.capabilities.remote and client.capabilities.multi_process


def test_sync_facade() -> None:
    from agl_kernel.client import SyncLightningStoreClient

    store = InMemoryLightningStore()
    with ServerThread(create_app(store, plugins=False)) as server, SyncLightningStoreClient(server.url) as client:
        rollout = client.enqueue_rollout({"sync": True})
        taken = client.dequeue_rollout(worker_id="w")
        assert taken is not None and taken.rollout_id == rollout.rollout_id
        assert client.statistics().total_rollouts == 1
        assert client.url == server.url and client.capabilities.remote
        with pytest.raises(NotFoundError):
            client.get_rollout("ro-missing")
