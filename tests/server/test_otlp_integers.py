"""OTLP/JSON numbers beyond 64 bits: refused with a 400 that names them, the same in front of every store.

OTLP's ``intValue`` is an int64, times are fixed64 nanoseconds; JSON can carry any integer, so the server checks
the range itself instead of leaving it to the backend (the memory store used to keep what SQLite refused).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("litestar", reason="pip install 'agl-kernel[server]'")

from agl_kernel import semconv
from agl_kernel.server import ServerThread, create_app
from agl_kernel.store.memory import InMemoryLightningStore


@pytest.fixture(params=["memory", "sqlite"])
def served(request: Any, tmp_path: Path) -> Iterator[tuple[str, Any, str, str]]:
    if request.param == "memory":
        store = InMemoryLightningStore()
    else:
        sqlite = pytest.importorskip("agl_store_sqlite")
        store = sqlite.SqliteLightningStore(tmp_path / "otlp.db")
    attempted = asyncio.run(store.start_rollout("traced"))
    with ServerThread(create_app(store, plugins=False)) as server:
        yield server.url, store, attempted.rollout_id, attempted.attempt.attempt_id


def document(rid: str, aid: str, *attributes: dict[str, Any], start: str = "1700000000000000000") -> dict[str, Any]:
    ids = [
        {"key": semconv.ROLLOUT_ID, "value": {"stringValue": rid}},
        {"key": semconv.ATTEMPT_ID, "value": {"stringValue": aid}},
    ]
    span = {
        "traceId": "0af7651916cd43dd8448eb211c80319c",
        "spanId": "b7ad6b7169203331",
        "name": "tool",
        "startTimeUnixNano": start,
        "attributes": [*ids, *attributes],
    }
    return {"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}


def int_attribute(key: str, value: Any) -> dict[str, Any]:
    return {"key": key, "value": {"intValue": value}}


@pytest.mark.parametrize(
    "attribute, named",
    [
        (int_attribute("n", str(2**63)), "'n': intValue must be a signed 64-bit integer"),
        (int_attribute("n", 2**64), "'n': intValue must be a signed 64-bit integer"),
        (int_attribute("n", str(-(2**63) - 1)), "'n': intValue must be a signed 64-bit integer"),
        (int_attribute("n", "1" * 200), "an integer of"),
        ({"key": "xs", "value": {"arrayValue": {"values": [{"intValue": str(2**64)}]}}}, "'xs': intValue"),
        (int_attribute(semconv.SEQUENCE_ID, str(2**63)), f"{semconv.SEQUENCE_ID!r}: intValue must be a signed 64-bit"),
        (  # a sequence id sent as a string is read as a number, and held to the same range
            {"key": semconv.SEQUENCE_ID, "value": {"stringValue": str(2**63)}},
            f"{semconv.SEQUENCE_ID} must be an integer from 0 to 2**63-1",
        ),
    ],
)
def test_integers_beyond_64_bits_are_refused_naming_them(served: Any, attribute: dict[str, Any], named: str) -> None:
    url, store, rid, aid = served
    answer = httpx.post(f"{url}/v1/traces", json=document(rid, aid, attribute))
    assert answer.status_code == 400, answer.text
    assert named in answer.json()["message"]
    assert asyncio.run(store.query_spans(rid)).items == []


def test_times_beyond_64_bits_are_refused(served: Any) -> None:
    url, _, rid, aid = served
    answer = httpx.post(f"{url}/v1/traces", json=document(rid, aid, start=str(2**64)))
    assert answer.status_code == 400, answer.text
    assert "unsigned 64-bit number of nanoseconds" in answer.json()["message"]


def test_integers_at_the_edges_are_kept(served: Any) -> None:
    url, store, rid, aid = served
    edges = [int_attribute("min", str(-(2**63))), int_attribute("max", str(2**63 - 1))]
    answer = httpx.post(
        f"{url}/v1/traces", json=document(rid, aid, *edges, int_attribute(semconv.SEQUENCE_ID, str(2**62)))
    )
    assert answer.status_code == 200, answer.text
    [span] = asyncio.run(store.query_spans(rid)).items
    assert (span.attributes["min"], span.attributes["max"], span.sequence_id) == (-(2**63), 2**63 - 1, 2**62)
