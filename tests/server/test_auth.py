"""Bearer-token auth: every route but /health needs the token once the server has one."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from agl_kernel.client import LightningStoreClient, StoreAuthError
from agl_kernel.server import ServerThread, create_app
from agl_kernel.store.memory import InMemoryLightningStore

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with ServerThread(create_app(InMemoryLightningStore(), token=TOKEN, plugins=False)) as server:
        yield server.url


GUARDED = [
    ("GET", "/api/v1/statistics", None),
    ("POST", "/api/v1/rollouts", {"input": 1}),
    ("POST", "/api/v1/batch", {"ops": []}),
    ("GET", "/metrics", None),
    ("GET", "/schema/openapi.json", None),
    ("POST", "/v1/traces", None),
]


@pytest.mark.parametrize(("method", "path", "body"), GUARDED)
def test_no_token_is_refused(url: str, method: str, path: str, body: object) -> None:
    answer = httpx.request(method, url + path, json=body)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in answer.json()["message"]


@pytest.mark.parametrize("header", [f"Bearer {TOKEN}x", "Bearer", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN[:-1]}"])
def test_wrong_token_is_refused(url: str, header: str) -> None:
    answer = httpx.get(f"{url}/api/v1/statistics", headers={"Authorization": header})
    assert answer.status_code == 401 and answer.json()["error"] == "unauthorized"


@pytest.mark.parametrize("scheme", ["Bearer", "bearer"])
def test_right_token_is_let_in(url: str, scheme: str) -> None:
    answer = httpx.get(f"{url}/api/v1/statistics", headers={"Authorization": f"{scheme} {TOKEN}"})
    assert answer.status_code == 200 and answer.json()["total_rollouts"] >= 0
    assert httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_health_stays_open(url: str) -> None:
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{url}/health", headers={"Authorization": "Bearer wrong"}).status_code == 200


@pytest.mark.asyncio
async def test_client_with_and_without_token(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGL_STORE_TOKEN", raising=False)
    async with LightningStoreClient(url) as anonymous:
        with pytest.raises(StoreAuthError) as info:
            await anonymous.enqueue_rollout("x")
        assert info.value.status_code == 401 and "token" in str(info.value)
    async with LightningStoreClient(url, token="nope") as wrong:
        with pytest.raises(StoreAuthError, match="wrong"):
            await wrong.statistics()
    async with LightningStoreClient(url, token=TOKEN) as client:
        rollout = await client.enqueue_rollout("x")
        assert (await client.get_rollout(rollout.rollout_id)).input == "x"
    monkeypatch.setenv("AGL_STORE_TOKEN", TOKEN)
    async with LightningStoreClient(url) as from_env:
        assert (await from_env.statistics()).total_rollouts >= 1


def test_a_route_marked_public_is_served_without_the_token() -> None:
    """Static files (the dashboard's page) opt out with ``opt={PUBLIC: True}``; every other route keeps the check."""
    from litestar import get

    from agl_kernel.server import PUBLIC

    @get("/page", opt={PUBLIC: True}, media_type="text/html")
    async def page() -> str:
        return "<html></html>"

    @get("/private", media_type="text/plain")
    async def private() -> str:
        return "data"

    app = create_app(InMemoryLightningStore(), token=TOKEN, plugins=False, route_handlers=[page, private])
    with ServerThread(app) as server:
        assert httpx.get(f"{server.url}/page").status_code == 200
        assert httpx.get(f"{server.url}/private").status_code == 401
        assert httpx.get(f"{server.url}/api/v1/statistics").status_code == 401
        assert httpx.get(f"{server.url}/private", headers={"Authorization": f"Bearer {TOKEN}"}).text == "data"
