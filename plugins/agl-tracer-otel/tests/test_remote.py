"""OtelTracer with a remote store: spans go over OTLP/HTTP to a real store server (``/v1/traces``) on loopback,
from agents served through the HTTP client."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

pytest.importorskip("litestar", reason="needs the store server: pip install 'agl-kernel[server]'")

from agl_kernel import semconv
from agl_kernel.adapters import TripletAdapter
from agl_kernel.client import LightningStoreClient
from agl_kernel.emit import emit_reward, last_llm_call, operation
from agl_kernel.server import ServerThread, create_app
from agl_store_sqlite import SqliteLightningStore


def test_spans_reach_a_remote_store_over_otlp(openai_server, make_tracer, serve, db, monkeypatch):
    monkeypatch.setenv("AGL_STORE_TOKEN", "s3cret")  # the client and the tracer's exporter both use it

    async def agent(task: int, resources: Any) -> None:
        client = openai.AsyncOpenAI(base_url=openai_server.base_url, api_key="test")
        async with operation("solve", agent="solver"):
            stream = await client.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": f"task {task}"}],
                stream=True,
                extra_body={"return_token_ids": True},
                logprobs=True,
            )
            async for _ in stream:
                pass
        emit_reward(0.5, step=last_llm_call())
        emit_reward(float(task))

    async def main() -> None:
        server = await asyncio.to_thread(
            ServerThread(create_app(SqliteLightningStore(db), token="s3cret", plugins=False)).start
        )
        try:
            async with LightningStoreClient(server.url) as store:
                tracer = make_tracer()
                ids = await serve(store, agent, list(range(8)), tracer=tracer, runners=8)
                assert tracer.writer._sinks[0].endpoint == f"{server.url}/v1/traces"
                for task, rollout_id in enumerate(ids):
                    spans = (await store.query_spans(rollout_id)).items
                    assert [s.sequence_id for s in spans] == list(range(1, len(spans) + 1))
                    assert sorted(s.name for s in spans) == sorted(
                        ["chat m", "solve", semconv.REWARD_SPAN, semconv.REWARD_SPAN, semconv.ATTEMPT_SPAN]
                    )
                    [triplet] = TripletAdapter(agent_match="solver").adapt(spans).triplets
                    call = next(
                        c for c in openai_server.calls if c["request"]["messages"][0]["content"] == f"task {task}"
                    )
                    assert triplet.prompt_token_ids == call["prompt_token_ids"]
                    assert triplet.response_token_ids == call["token_ids"]
                    assert (triplet.step_reward, triplet.final_reward) == (0.5, float(task))
        finally:
            await asyncio.to_thread(server.stop)

    asyncio.run(main())


def test_the_otlp_json_body_decodes_to_the_same_spans_on_the_server(make_tracer):
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode

    from agl_kernel.server._otlp import decode_request
    from agl_tracer_otel._convert import to_span
    from agl_tracer_otel._otlp import encode

    tracer = make_tracer(instrument=(), root_span=False)
    otel = tracer.otel_tracer
    first = otel.start_span("first")
    first.end()
    attributes = {"s": "x", "b": True, "i": 7, "f": 0.5, "ids": [1, 2, 3], "lp": [-0.5, -1.0], "names": ["a", "b"]}
    second = otel.start_span(
        "second", kind=SpanKind.CLIENT, attributes=attributes, links=[Link(first.get_span_context(), {"why": "x"})]
    )
    second.add_event("chunk", {"n": 1})
    second.set_status(Status(StatusCode.ERROR, "boom"))
    second.end()
    decoded = decode_request(encode([(first, "ro-1", "at-1"), (second, "ro-2", "at-2")]), "application/json")
    expected = [to_span(first, "ro-1", "at-1"), to_span(second, "ro-2", "at-2")]
    for got, want in zip(decoded, expected):
        assert (got.rollout_id, got.attempt_id, got.trace_id, got.span_id, got.parent_id, got.name, got.kind) == (
            want.rollout_id,
            want.attempt_id,
            want.trace_id,
            want.span_id,
            want.parent_id,
            want.name,
            want.kind,
        )
        assert got.attributes == want.attributes and got.status == want.status
        assert got.start_time == pytest.approx(want.start_time) and got.end_time == pytest.approx(want.end_time)
        assert [(e.name, e.attributes) for e in got.events] == [(e.name, e.attributes) for e in want.events]
        assert got.links == want.links
    assert decoded[1].attributes["ids"] == [1, 2, 3] and decoded[1].status.description == "boom"


def test_a_refused_or_unreachable_server_is_reported_not_raised(make_tracer, caplog):
    import logging
    import socket

    from agl_tracer_otel._otlp import OtlpJsonClient

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once the socket is closed
    client = OtlpJsonClient(f"http://127.0.0.1:{port}", timeout=1)
    with caplog.at_level(logging.WARNING, logger="agl_tracer_otel"):
        assert client.send(b"{}", 3) is False
    assert f"could not send 3 spans to http://127.0.0.1:{port}/v1/traces" in caplog.text
    assert "ConnectionRefusedError" in caplog.text
    with pytest.raises(ValueError, match="http://host:port"):
        OtlpJsonClient("ftp://x")
