"""The OpenAPI document says what the server accepts and answers: msgspec's own schema of the structs the handlers
decode (unknown fields refused, constraints inside optional fields, the store contract's sort fields), every error
answer with the server's error body, ``Allow`` on ``OPTIONS`` naming every method of a path, the bearer scheme
when there is a token. (tests/server/test_fuzz.py runs schemathesis against it.)"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agl_kernel.client import LightningStoreClient
from agl_kernel.errors import InvalidQueryError
from agl_kernel.server import ServerThread, create_app
from agl_kernel.server._openapi import openapi_document
from agl_kernel.store.base import SORT_FIELDS
from agl_kernel.store.memory import InMemoryLightningStore

METHODS = ("get", "put", "post", "patch", "delete")


def _routes() -> list[Any]:
    try:
        from agl_dashboard import dashboard_routes
    except ImportError:
        return []
    return dashboard_routes()


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, dict[str, Any]]]:
    app = create_app(InMemoryLightningStore(), plugins=False, route_handlers=_routes())
    assert "agl_openapi_document" not in app.state  # built on first use: starting a server costs nothing for it
    with ServerThread(app) as server:
        yield server.url, httpx.get(f"{server.url}/schema/openapi.json").json()


def _schema(document: dict[str, Any], name: str) -> dict[str, Any]:
    return document["components"]["schemas"][name]


def _body(document: dict[str, Any], path: str, method: str = "post") -> dict[str, Any]:
    ref = document["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    return _schema(document, ref.rsplit("/", 1)[1])


def test_request_bodies_are_msgspec_schemas_of_the_structs(served) -> None:
    _, document = served
    for path in ("/api/v1/rollouts/query", "/api/v1/rollouts/dequeue", "/api/v1/rollouts/wait", "/api/v1/batch"):
        assert _body(document, path)["additionalProperties"] is False, path  # unknown fields are refused
    config = _schema(document, "RolloutConfigInput")["properties"]
    for field in ("timeout_seconds", "unresponsive_seconds"):
        assert {"type": "number", "exclusiveMinimum": 0} in config[field]["anyOf"], config[field]
    query = _body(document, "/api/v1/rollouts/query")["properties"]
    assert {"enum": sorted(SORT_FIELDS["rollouts"])} in query["sort_by"]["anyOf"]
    assert query["sort_order"]["enum"] == ["asc", "desc"]
    assert _body(document, "/api/v1/rollouts/{rollout_id}/spans/query")["properties"]["sort_by"]["anyOf"][0] == {
        "enum": sorted(SORT_FIELDS["spans"])
    }
    # What the stores keep: integers within 64 bits, in any JSON value too (floats are kept whatever they are).
    span = _body(document, "/api/v1/spans")["properties"]
    assert span["sequence_id"]["maximum"] == 2**63 - 1 and "minimum" not in span["sequence_id"]
    assert span["attributes"]["additionalProperties"] == {"$ref": "#/components/schemas/JsonValue"}
    assert _schema(document, "JsonValue")["then"] == {"minimum": -(2**63), "maximum": 2**64 - 1}


def test_every_refusal_is_declared_with_the_servers_error_body(served) -> None:
    _, document = served
    error_body = {"$ref": "#/components/schemas/ErrorBody"}
    for path, item in document["paths"].items():
        for method in METHODS:
            if method not in item:
                continue
            responses = item[method]["responses"]
            assert {"500", "503"} <= set(responses), (method, path)
            if item[method].get("parameters") or "requestBody" in item[method]:
                assert "400" in responses, (method, path)
            if "{" in path:
                assert "404" in responses, (method, path)
            for status, response in responses.items():
                if status.startswith(("4", "5")) and path != "/v1/traces":
                    assert response["content"]["application/json"]["schema"] == error_body, (method, path, status)
    otlp = document["paths"]["/v1/traces"]["post"]
    assert set(otlp["requestBody"]["content"]) == {"application/x-protobuf", "application/json"}
    assert {"400", "413", "415"} <= set(otlp["responses"])
    assert _schema(document, "ErrorBody")["properties"]["message"]["minLength"] == 1


@pytest.mark.skipif(not _routes(), reason="the dashboard plugin is not installed")
def test_the_dashboards_routes_are_documented_as_they_answer(served) -> None:
    url, document = served
    rollouts = document["paths"]["/api/dashboard/rollouts"]["get"]
    parameters = {parameter["name"]: parameter["schema"] for parameter in rollouts["parameters"]}
    assert parameters["limit"]["minimum"] == 1 and parameters["limit"]["maximum"] == 500
    assert parameters["sort_by"]["enum"] == sorted(SORT_FIELDS["rollouts"])
    assert parameters["status"]["items"]["pattern"].startswith("^(cancelled|failed|")
    refused = httpx.get(f"{url}/api/dashboard/rollouts", params={"status": "bogus"})
    assert refused.status_code == 400 and set(refused.json()) >= {"error", "message", "status"}
    detail = document["paths"]["/api/dashboard/rollouts/{rollout_id}"]["get"]["responses"]
    assert detail["404"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}


def test_options_names_every_method_of_the_path(served) -> None:
    url, document = served
    for path, item in document["paths"].items():
        concrete = path.replace("{", "x").replace("}", "")
        answer = httpx.options(url + concrete)
        allowed = {method.strip().lower() for method in answer.headers["allow"].split(",")}
        assert allowed - {"options", "head"} == {method for method in METHODS if method in item}, path


def test_an_invalid_query_is_an_invalid_query_error_that_names_the_choices(served) -> None:
    url, _ = served
    answer = httpx.post(f"{url}/api/v1/rollouts/query", json={"sort_by": ""}).json()
    assert answer["error"] == "InvalidQueryError"
    assert "sort_by may be one of: attempt_count, end_time, mode, rollout_id, start_time, status" in answer["message"]
    assert httpx.post(f"{url}/api/v1/workers/query", json={"limit": -1}).json()["error"] == "InvalidQueryError"
    missing = httpx.post(f"{url}/api/v1/rollouts/query").json()
    assert missing["error"] == "invalid_request" and "needs a JSON body" in missing["message"]
    query = httpx.get(f"{url}/api/v1/resources/id/r", params={"version": str(2**63)}).json()
    assert query["message"].startswith("invalid query parameter:")

    async def through_the_client() -> None:
        async with LightningStoreClient(url) as client:
            with pytest.raises(InvalidQueryError, match="may be one of"):
                await client.query_spans("ro-x", sort_by="bogus")

    asyncio.run(through_the_client())


def test_with_a_token_the_document_declares_the_bearer_scheme() -> None:
    store = InMemoryLightningStore()
    try:
        document = openapi_document(create_app(store, plugins=False, token="t"))
    finally:
        asyncio.run(store.close())
    assert document["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    assert "security" not in document["paths"]["/health"]["get"]
    statistics = document["paths"]["/api/v1/statistics"]["get"]
    assert statistics["security"] == [{"bearer": []}] and "401" in statistics["responses"]
