"""The REST API on a real server: errors that name what was wrong, long polls, batches, ids that need escaping,
OpenAPI, graceful shutdown, and routes added by plugins."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from litestar import get
from litestar.di import NamedDependency

from agl_kernel.client import LightningStoreClient, StoreRequestError, StoreServerError
from agl_kernel.errors import InvalidStatusTransitionError, NotFoundError, StoreClosedError
from agl_kernel.models import AttemptStatus, PromptTemplate
from agl_kernel.plugins import hookimpl
from agl_kernel.server import ServerThread, create_app
from agl_kernel.store.base import LightningStore
from agl_kernel.store.memory import InMemoryLightningStore


class FlakyStore(InMemoryLightningStore):
    """A store with a bug in ``statistics`` and a slow ``get_worker``."""

    async def statistics(self) -> Any:
        raise RuntimeError("boom: secret internals")

    async def get_worker(self, worker_id: str) -> Any:
        await asyncio.sleep(0.8)
        return await super().get_worker(worker_id)


@pytest.fixture
def served() -> Iterator[tuple[ServerThread, LightningStore]]:
    store = FlakyStore(watchdog_interval=0.1)
    with ServerThread(create_app(store, plugins=False, poll_slice=0.1)) as server:
        yield server, store


@pytest.fixture
def http(served: tuple[ServerThread, LightningStore]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served[0].url, timeout=10) as client:
        yield client


def error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and body["message"].strip(), body
    return body


# ------------------------------------------------------------------------------------------------ bad input


def test_malformed_json_is_a_400(http: httpx.Client) -> None:
    body = error(
        http.post("/api/v1/rollouts/query", content=b'{"limit": 3', headers={"content-type": "application/json"}), 400
    )
    assert "not valid JSON" in body["message"]


def test_wrong_type_names_the_field(http: httpx.Client) -> None:
    body = error(http.post("/api/v1/rollouts/query", json={"limit": "ten"}), 400)
    assert "`$.limit`" in body["message"] and "int" in body["message"]
    body = error(http.post("/api/v1/rollouts", json={"input": 1, "config": {"max_attempts": 0}}), 400)
    assert "max_attempts" in body["message"] and ">= 1" in body["message"]
    body = error(http.post("/api/v1/rollouts/dequeue", json={"timeout": -1}), 400)
    assert "timeout" in body["message"]


def test_unknown_field_is_named(http: httpx.Client) -> None:
    body = error(http.post("/api/v1/rollouts/query", json={"limt": 5}), 400)
    assert "limt" in body["message"]


def test_missing_body_field_is_named(http: httpx.Client) -> None:
    body = error(http.post("/api/v1/rollouts/wait", json={}), 400)
    assert "rollout_ids" in body["message"]


def test_store_errors_keep_their_meaning(http: httpx.Client) -> None:
    body = error(http.get("/api/v1/rollouts/ro-nope"), 404)
    assert body["error"] == "NotFoundError" and "ro-nope" in body["message"]
    rollout = http.post("/api/v1/rollouts/start", json={"input": "x"}).json()
    rid = rollout["rollout_id"]
    assert http.patch(f"/api/v1/rollouts/{rid}/attempts/latest", json={"status": "succeeded"}).status_code == 200
    body = error(http.patch(f"/api/v1/rollouts/{rid}/attempts/latest", json={"status": "failed"}), 409)
    assert body["error"] == "InvalidStatusTransitionError" and "final" in body["message"]
    body = error(http.post("/api/v1/rollouts/query", json={"sort_by": "input"}), 400)
    assert body["error"] == "InvalidQueryError" and "input" in body["message"]


def test_unknown_route_and_wrong_method(http: httpx.Client) -> None:
    body = error(http.get("/api/v2/rollouts"), 404)
    assert "/api/v2/rollouts" in body["message"] and "/schema/openapi.json" in body["message"]
    body = error(http.delete("/api/v1/statistics"), 405)
    assert "DELETE" in body["message"] and "GET" in body["message"]


def test_unexpected_error_is_a_500_with_an_id_and_no_traceback(
    http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="agl_kernel.server"):
        body = error(http.get("/api/v1/statistics"), 500)
    assert body["error"] == "internal" and body["error_id"] in body["message"]
    assert "boom" not in body["message"] and "Traceback" not in http.get("/api/v1/statistics").text
    logged = [r for r in caplog.records if body["error_id"] in r.getMessage()]
    assert logged and logged[0].exc_info is not None and "boom: secret internals" in str(logged[0].exc_info[1])


# ------------------------------------------------------------------------------------------------ client mapping


@pytest.mark.asyncio
async def test_client_raises_the_kernel_errors_with_the_server_message(served: Any) -> None:
    server, _ = served
    async with LightningStoreClient(server.url, retries=0) as client:
        with pytest.raises(NotFoundError, match="ro-missing"):
            await client.get_rollout("ro-missing")
        started = await client.start_rollout("x")
        await client.update_attempt(started.rollout_id, "latest", status=AttemptStatus.SUCCEEDED)
        with pytest.raises(InvalidStatusTransitionError):
            await client.update_attempt(started.rollout_id, started.attempt.attempt_id, status=AttemptStatus.FAILED)
        with pytest.raises(StoreRequestError, match="count") as info:
            await client.get_many_span_sequence_ids(started.rollout_id, started.attempt.attempt_id, 0)
        assert info.value.status_code == 400 and isinstance(info.value, ValueError)
        with pytest.raises(StoreServerError) as failure:
            await client.statistics()
        assert failure.value.status_code == 500 and failure.value.error_id
    with pytest.raises(StoreClosedError):
        await client.get_rollout(started.rollout_id)


# ------------------------------------------------------------------------------------------------ batches, ids


def test_batch_answers_each_call(http: httpx.Client) -> None:
    started = http.post("/api/v1/rollouts/start", json={"input": "x"}).json()
    rid, aid = started["rollout_id"], started["attempt"]["attempt_id"]
    span = {"rollout_id": rid, "attempt_id": aid, "trace_id": "ab" * 16, "span_id": "cd" * 8, "name": "step"}
    bad_span = {**span, "attempt_id": "at-missing", "span_id": "ef" * 8}
    ops = [
        {"op": "add_span", "span": span},
        {"op": "add_span", "span": bad_span},
        {"op": "get_rollout", "rollout_id": "ro-missing"},
        {"op": "dequeue_rollout", "worker_id": "w"},
        {"op": "enqueue_rollout", "request": {"input": {"n": 1}}},
        {"op": "update_attempt", "rollout_id": rid, "attempt_id": aid, "patch": {"status": "running"}},
    ]
    results = http.post("/api/v1/batch", json={"ops": ops}).json()
    assert len(results) == len(ops)
    assert results[0]["result"]["sequence_id"] == 1
    assert results[1]["error"]["error"] == "NotFoundError" and "at-missing" in results[1]["error"]["message"]
    assert results[2]["error"]["status"] == 404
    assert "result" not in results[3] or results[3]["result"] is None or results[3]["result"]["status"] == "preparing"
    assert results[4]["result"]["status"] in ("queuing", "preparing")
    assert results[5]["result"]["status"] == "running"
    body = error(http.post("/api/v1/batch", json={"ops": [{"op": "drop_tables"}]}), 400)
    assert "drop_tables" in body["message"]


@pytest.mark.asyncio
async def test_ids_with_any_character(served: Any) -> None:
    server, _ = served
    async with LightningStoreClient(server.url) as client:
        for worker_id in ("a/b c", "ü?&#%", "../x"):
            worker = await client.update_worker(worker_id, heartbeat_stats={"k": 1})
            assert worker.worker_id == worker_id
            assert (await client.get_worker(worker_id)).heartbeat_stats == {"k": 1}
        first = await client.update_resources("team/prompt v1", {"p": PromptTemplate(template="{x}")})
        second = await client.update_resources("team/prompt v1", {"p": PromptTemplate(template="{x}!")})
        assert (first.version, second.version) == (1, 2)
        assert (await client.get_resources("team/prompt v1", 1)).resources == first.resources
        latest = await client.get_latest_resources()
        assert latest is not None and latest.resources_id == "team/prompt v1" and latest.version == 2


def test_openapi_document(http: httpx.Client) -> None:
    document = http.get("/schema/openapi.json").json()
    paths = document["paths"]
    for path in (
        "/api/v1/rollouts",
        "/api/v1/rollouts/dequeue",
        "/api/v1/batch",
        "/api/v1/spans/batch",
        "/api/v1/rollouts/{rollout_id}/attempts/{attempt_id}",
        "/v1/traces",
        "/health",
        "/metrics",
    ):
        assert path in paths, path
    get_rollout = paths["/api/v1/rollouts/{rollout_id}"]["get"]
    assert get_rollout["responses"]["404"]["content"]["application/json"]["schema"]["$ref"].endswith("ErrorBody")


# ------------------------------------------------------------------------------------------------ long polls


@pytest.mark.asyncio
async def test_dequeue_long_poll_is_woken_by_enqueue(served: Any) -> None:
    server, _ = served
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        waiting = asyncio.ensure_future(http.post("/api/v1/rollouts/dequeue", json={"worker_id": "w", "timeout": 5}))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        rollout = (await http.post("/api/v1/rollouts", json={"input": "late"})).json()
        started = time.monotonic()
        answer = await asyncio.wait_for(waiting, 2)
        assert time.monotonic() - started < 1.0
        assert answer.json()["rollout_id"] == rollout["rollout_id"]
        started = time.monotonic()
        empty = await http.post("/api/v1/rollouts/dequeue", json={"timeout": 0.4})
        assert empty.json() is None and 0.35 <= time.monotonic() - started < 2


@pytest.mark.asyncio
async def test_rollout_dequeued_for_a_departed_client_goes_back(served: Any) -> None:
    server, store = served
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        waiting = asyncio.ensure_future(http.post("/api/v1/rollouts/dequeue", json={"worker_id": "gone", "timeout": 5}))
        await asyncio.sleep(0.3)
        waiting.cancel()  # the client goes away: its connection closes
        await asyncio.sleep(0.3)
        rollout = await store.enqueue_rollout("for whoever is there")
        await asyncio.sleep(0.5)  # the abandoned long poll takes it within its slice, then puts it back
        again = await store.dequeue_rollout(worker_id="present", timeout=2)
        assert again is not None and again.rollout_id == rollout.rollout_id


@pytest.mark.asyncio
async def test_wait_for_rollouts_long_poll(served: Any) -> None:
    server, store = served
    running = await store.start_rollout("x")
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        waiting = asyncio.ensure_future(
            http.post("/api/v1/rollouts/wait", json={"rollout_ids": [running.rollout_id], "timeout": 5})
        )
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await store.update_attempt(running.rollout_id, "latest", status=AttemptStatus.SUCCEEDED)
        ended = (await asyncio.wait_for(waiting, 2)).json()
        assert [r["status"] for r in ended] == ["succeeded"]


# ------------------------------------------------------------------------------------------------ shutdown


def test_graceful_shutdown_finishes_requests_then_closes_the_store() -> None:
    store = FlakyStore()
    server = ServerThread(create_app(store, plugins=False, poll_slice=0.1)).start()
    asyncio.run(store.update_worker("w-slow"))
    results: dict[str, Any] = {}

    def slow_request() -> None:
        results["slow"] = httpx.get(f"{server.url}/api/v1/workers/id/w-slow", timeout=10)

    def long_poll() -> None:
        results["poll"] = httpx.post(f"{server.url}/api/v1/rollouts/dequeue", json={"timeout": 30}, timeout=40)

    threads = [threading.Thread(target=slow_request), threading.Thread(target=long_poll)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    server.stop()
    for thread in threads:
        thread.join(10)
    assert time.monotonic() - started < 5, "a long poll held the shutdown"
    assert results["slow"].status_code == 200 and results["slow"].json()["worker_id"] == "w-slow"
    assert results["poll"].status_code == 200 and results["poll"].json() is None
    with pytest.raises(StoreClosedError):
        asyncio.run(store.get_rollout("x"))
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health")


# ------------------------------------------------------------------------------------------------ plugins


class RoutesPlugin:
    """A plugin adding a route through the ``agl_register_routes`` hook."""

    @hookimpl
    def agl_register_routes(self, register: Any) -> None:
        @get("/plugin/queue-depth")
        async def queue_depth(store: NamedDependency[LightningStore]) -> dict[str, int]:
            return {"queue_depth": (await store.statistics()).queue_depth}

        register(queue_depth)


@pytest.mark.asyncio
async def test_plugin_routes() -> None:
    from agl_kernel.plugins import get_plugin_manager

    manager = get_plugin_manager()
    plugin = RoutesPlugin()
    manager.register(plugin, name="test-routes")
    try:
        store = InMemoryLightningStore()
        await store.enqueue_rollout("a")
        with ServerThread(create_app(store, token="t0k")) as server:
            async with httpx.AsyncClient(base_url=server.url) as http:
                answer = await http.get("/plugin/queue-depth", headers={"Authorization": "Bearer t0k"})
                assert answer.json() == {"queue_depth": 1}
                assert (await http.get("/plugin/queue-depth")).status_code == 401  # plugin routes are guarded too
    finally:
        manager.unregister(plugin)
    store = InMemoryLightningStore()
    with ServerThread(create_app(store)) as server:
        assert httpx.get(f"{server.url}/plugin/queue-depth").status_code == 404


class BrokenRoutesPlugin:
    @hookimpl
    def agl_register_routes(self, register: Any) -> None:
        raise RuntimeError("plugin bug")


def test_a_broken_plugin_does_not_take_the_server_down() -> None:
    from agl_kernel.plugins import AglPluginWarning, get_plugin_manager

    manager = get_plugin_manager()
    broken, working = BrokenRoutesPlugin(), RoutesPlugin()
    manager.register(broken, name="test-broken-routes")
    manager.register(working, name="test-working-routes")
    try:
        store = InMemoryLightningStore()
        with pytest.warns(AglPluginWarning, match="test-broken-routes.*plugin bug"):
            app = create_app(store)
        with ServerThread(app) as server:
            assert httpx.get(f"{server.url}/plugin/queue-depth").json() == {"queue_depth": 0}
    finally:
        manager.unregister(broken)
        manager.unregister(working)


def test_deeply_nested_body_is_a_400(http: httpx.Client) -> None:
    nested = "1"
    for _ in range(3000):
        nested = f"[{nested}]"
    answer = http.post(
        "/api/v1/rollouts", content=f'{{"input": {nested}}}', headers={"content-type": "application/json"}
    )
    assert "nested too deeply" in error(answer, 400)["message"]
