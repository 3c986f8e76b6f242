"""OTLP/HTTP trace ingestion at /v1/traces: protobuf and JSON, gzip, the agl.* attribute mapping, and refusals."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest

trace_service = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList  # noqa: E402
from opentelemetry.proto.resource.v1.resource_pb2 import Resource  # noqa: E402
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status  # noqa: E402

from agl_kernel import semconv  # noqa: E402
from agl_kernel.models import AttemptedRollout, AttemptStatus  # noqa: E402
from agl_kernel.server import ServerThread, create_app  # noqa: E402
from agl_kernel.store.memory import InMemoryLightningStore  # noqa: E402

TRACE = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
PROTO = {"content-type": "application/x-protobuf"}


def kv(key: str, value: Any) -> KeyValue:
    return KeyValue(key=key, value=any_value(value))


def any_value(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, list):
        return AnyValue(array_value=ArrayValue(values=[any_value(v) for v in value]))
    if isinstance(value, dict):
        return AnyValue(kvlist_value=KeyValueList(values=[kv(k, v) for k, v in value.items()]))
    return AnyValue(string_value=value)


@pytest.fixture
def served() -> Iterator[tuple[str, InMemoryLightningStore, AttemptedRollout]]:
    import asyncio

    store = InMemoryLightningStore()
    attempted = asyncio.run(store.start_rollout("traced"))
    with ServerThread(create_app(store, plugins=False)) as server:
        yield server.url, store, attempted


def export(spans: list[Span], resource: dict[str, Any]) -> bytes:
    request = trace_service.ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=[kv(k, v) for k, v in resource.items()]),
                scope_spans=[ScopeSpans(spans=spans)],
            )
        ]
    )
    return request.SerializeToString()


def stored_spans(store: InMemoryLightningStore, rollout_id: str) -> list[Any]:
    import asyncio

    return asyncio.run(store.query_spans(rollout_id)).items


def test_protobuf_export_maps_every_field(served: Any) -> None:
    url, store, attempted = served
    rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
    span = Span(
        trace_id=TRACE,
        span_id=bytes.fromhex("b7ad6b7169203331"),
        parent_span_id=bytes.fromhex("00f067aa0ba902b7"),
        name="openai.chat",
        kind=Span.SpanKind.SPAN_KIND_CLIENT,
        start_time_unix_nano=1_700_000_000_000_000_000,
        end_time_unix_nano=1_700_000_001_250_000_000,
        attributes=[
            kv("gen_ai.prompt", "hi"),
            kv("tokens", [1, 2, 3]),
            kv("reward", 0.5),
            kv("ok", True),
            kv("nested", {"a": 1}),
        ],
        events=[Span.Event(time_unix_nano=1_700_000_000_500_000_000, name="exception", attributes=[kv("m", "x")])],
        links=[Span.Link(trace_id=b"\x11" * 16, span_id=b"\x22" * 8, attributes=[kv("rel", "follows")])],
        status=Status(code=Status.StatusCode.STATUS_CODE_ERROR, message="boom"),
    )
    answer = httpx.post(
        f"{url}/v1/traces",
        content=export([span], {"service.name": "agent", semconv.ROLLOUT_ID: rid, semconv.ATTEMPT_ID: aid}),
        headers=PROTO,
    )
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/x-protobuf"
    trace_service.ExportTraceServiceResponse.FromString(answer.content)  # a valid (empty) response
    [stored] = stored_spans(store, rid)
    assert (stored.rollout_id, stored.attempt_id, stored.sequence_id) == (rid, aid, 1)
    assert (stored.trace_id, stored.span_id, stored.parent_id) == (TRACE.hex(), "b7ad6b7169203331", "00f067aa0ba902b7")
    assert stored.name == "openai.chat" and stored.kind == "CLIENT"
    assert (stored.start_time, stored.end_time) == (1_700_000_000.0, 1_700_000_001.25)
    assert stored.status.status_code == "ERROR" and stored.status.description == "boom"
    assert stored.attributes == {
        "gen_ai.prompt": "hi",
        "tokens": [1, 2, 3],
        "reward": 0.5,
        "ok": True,
        "nested": {"a": 1},
    }
    assert stored.events[0].name == "exception" and stored.events[0].timestamp == 1_700_000_000.5
    assert stored.events[0].attributes == {"m": "x"}
    assert (stored.links[0].trace_id, stored.links[0].span_id) == ("11" * 16, "22" * 8)
    assert stored.resource["service.name"] == "agent"
    assert asyncio_get_attempt(store, rid, aid).status is AttemptStatus.RUNNING  # a span is a heartbeat


def asyncio_get_attempt(store: InMemoryLightningStore, rid: str, aid: str) -> Any:
    import asyncio

    return asyncio.run(store.get_attempt(rid, aid))


def test_json_export_gzip_and_span_attributes(served: Any) -> None:
    url, store, attempted = served
    rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
    document = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "ts-agent"}}]},
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": TRACE.hex().upper(),
                                "spanId": "B7AD6B7169203331",
                                "name": "tool",
                                "kind": 1,
                                "startTimeUnixNano": "1700000000000000000",
                                "endTimeUnixNano": "1700000002000000000",
                                "attributes": [
                                    {"key": semconv.ROLLOUT_ID, "value": {"stringValue": rid}},
                                    {"key": semconv.ATTEMPT_ID, "value": {"stringValue": aid}},
                                    {"key": semconv.SEQUENCE_ID, "value": {"intValue": "7"}},
                                    {"key": "n", "value": {"intValue": "42"}},
                                    {
                                        "key": "xs",
                                        "value": {
                                            "arrayValue": {"values": [{"doubleValue": 1.5}, {"boolValue": False}]}
                                        },
                                    },
                                ],
                                "status": {"code": "STATUS_CODE_OK"},
                            },
                            {
                                "trace_id": TRACE.hex(),
                                "span_id": "00f067aa0ba902b7",
                                "name": "second",
                                "attributes": [
                                    {"key": semconv.ROLLOUT_ID, "value": {"stringValue": rid}},
                                    {"key": semconv.ATTEMPT_ID, "value": {"stringValue": aid}},
                                ],
                            },
                        ]
                    }
                ],
            }
        ]
    }
    answer = httpx.post(
        f"{url}/v1/traces",
        content=gzip.compress(msgspec.json.encode(document)),
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {}
    first, second = stored_spans(store, rid)
    assert first.sequence_id == 7 and second.sequence_id == 8  # a given sequence id is kept, later ones continue
    assert first.span_id == "b7ad6b7169203331" and first.kind == "INTERNAL" and first.status.status_code == "OK"
    assert first.attributes["n"] == 42 and first.attributes["xs"] == [1.5, False]
    assert (first.start_time, first.end_time) == (1_700_000_000.0, 1_700_000_002.0)
    assert first.resource == {"service.name": "ts-agent"}


@pytest.mark.parametrize("missing", [semconv.ROLLOUT_ID, semconv.ATTEMPT_ID])
@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_span_without_ids_is_refused_naming_the_attribute(served: Any, missing: str, encoding: str) -> None:
    url, store, attempted = served
    ids = {semconv.ROLLOUT_ID: attempted.rollout_id, semconv.ATTEMPT_ID: attempted.attempt.attempt_id}
    del ids[missing]
    span = Span(trace_id=TRACE, span_id=b"\x01" * 8, name="orphan")
    if encoding == "protobuf":
        answer = httpx.post(f"{url}/v1/traces", content=export([span], ids), headers=PROTO)
        assert answer.status_code == 400
        message = answer.content.decode("utf-8", "replace")  # a google.rpc.Status: code 3, then the message
        assert answer.content[:2] == b"\x08\x03"
    else:
        resource = {"attributes": [{"key": k, "value": {"stringValue": v}} for k, v in ids.items()]}
        document = {
            "resourceSpans": [
                {
                    "resource": resource,
                    "scopeSpans": [{"spans": [{"traceId": TRACE.hex(), "spanId": "01" * 8, "name": "orphan"}]}],
                }
            ]
        }
        answer = httpx.post(f"{url}/v1/traces", json=document)
        assert answer.status_code == 400
        message = answer.json()["message"]
    assert missing in message and "'orphan'" in message
    assert stored_spans(store, attempted.rollout_id) == []


def test_refusals(served: Any) -> None:
    url, store, attempted = served
    ids = {semconv.ROLLOUT_ID: "ro-unknown", semconv.ATTEMPT_ID: attempted.attempt.attempt_id}
    span = Span(trace_id=TRACE, span_id=b"\x01" * 8, name="lost")
    answer = httpx.post(f"{url}/v1/traces", content=export([span], ids), headers=PROTO)
    assert answer.status_code == 404 and b"ro-unknown" in answer.content
    answer = httpx.post(f"{url}/v1/traces", content=b"\xff\x00garbage", headers=PROTO)
    assert answer.status_code == 400 and b"protobuf" in answer.content
    answer = httpx.post(f"{url}/v1/traces", content=b"{not json", headers={"content-type": "application/json"})
    assert answer.status_code == 400 and "not valid JSON" in answer.json()["message"]
    answer = httpx.post(f"{url}/v1/traces", content=b"x", headers={"content-type": "text/plain"})
    assert answer.status_code == 415 and "application/x-protobuf" in answer.json()["message"]
    answer = httpx.post(f"{url}/v1/traces", content=b"not gzip", headers={**PROTO, "content-encoding": "gzip"})
    assert answer.status_code == 400 and b"gzip" in answer.content
    bad_id = {
        "resourceSpans": [
            {
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": "xyz",
                                "spanId": "01" * 8,
                                "name": "s",
                                "attributes": [
                                    {"key": semconv.ROLLOUT_ID, "value": {"stringValue": attempted.rollout_id}},
                                    {"key": semconv.ATTEMPT_ID, "value": {"stringValue": attempted.attempt.attempt_id}},
                                ],
                            }
                        ]
                    }
                ]
            }
        ]
    }
    answer = httpx.post(f"{url}/v1/traces", json=bad_id)
    assert answer.status_code == 400 and "trace_id" in answer.json()["message"]
    assert stored_spans(store, attempted.rollout_id) == []
    # An empty export is fine.
    answer = httpx.post(f"{url}/v1/traces", content=export([], {}), headers=PROTO)
    assert answer.status_code == 200


def test_gzip_bomb_is_refused() -> None:
    import asyncio

    store = InMemoryLightningStore()
    with ServerThread(create_app(store, plugins=False, max_body_size=1_000_000)) as server:
        bomb = gzip.compress(b"\x00" * 5_000_000)
        answer = httpx.post(f"{server.url}/v1/traces", content=bomb, headers={**PROTO, "content-encoding": "gzip"})
        assert answer.status_code == 413
    asyncio.run(store.close())


def test_deeply_nested_attributes_are_refused(served: Any) -> None:
    url, _, _ = served
    value = "{}"
    for _ in range(600):
        value = f'{{"arrayValue": {{"values": [{value}]}}}}'
    ids = f'"traceId": "{"ab" * 16}", "spanId": "{"cd" * 8}"'
    span = f'{{{ids}, "name": "x", "attributes": [{{"key": "k", "value": {value}}}]}}'
    body = f'{{"resourceSpans": [{{"scopeSpans": [{{"spans": [{span}]}}]}}]}}'
    answer = httpx.post(f"{url}/v1/traces", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 400 and "nested too deeply" in answer.json()["message"]
