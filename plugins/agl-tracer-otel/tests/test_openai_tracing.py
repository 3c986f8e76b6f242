"""Unmodified agents calling a real OpenAI-compatible server on loopback with the real ``openai`` client, traced by
OtelTracer into a real SQLite store; the stored spans become triplets with exactly the server's token ids."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
import pytest

from agl_kernel import semconv
from agl_kernel.adapters import CallReason, MessagesAdapter, TripletAdapter
from agl_kernel.emit import emit_reward, last_llm_call, operation
from agl_kernel.testing.openai_server import render_chat, tokenize
from agl_store_sqlite import SqliteLightningStore

ASK_IDS = {"extra_body": {"return_token_ids": True}, "logprobs": True}


async def spans_of(store: Any, rollout_id: str) -> list[Any]:
    return (await store.query_spans(rollout_id)).items


def llm_spans(spans: list[Any]) -> list[Any]:
    return [s for s in spans if s.attributes.get(semconv.GEN_AI_OPERATION_NAME)]


def test_sync_agent_triplets_have_the_servers_token_ids_and_logprobs(openai_server, make_tracer, serve, db):
    def agent(task: str, resources: Any) -> float:  # an ordinary agent; the runner runs it in a thread
        client = openai.OpenAI(base_url=openai_server.base_url, api_key="test")
        reply = client.chat.completions.create(
            model="qwen",
            messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": task}],
            **ASK_IDS,
        )
        return 1.0 if reply.choices[0].message.content.endswith(task) else 0.0

    async def main() -> None:
        async with SqliteLightningStore(db) as store:
            tracer = make_tracer()
            [rollout_id] = await serve(store, agent, ["2+2"], tracer=tracer)
            spans = await spans_of(store, rollout_id)
            result = TripletAdapter().adapt(spans)
            [call] = openai_server.calls
            [triplet] = result.triplets
            assert triplet.prompt_token_ids == call["prompt_token_ids"]
            assert triplet.prompt_token_ids == tokenize(render_chat(call["request"]["messages"]))
            assert triplet.response_token_ids == call["token_ids"] == tokenize("echo: 2+2")
            assert triplet.response_logprobs == pytest.approx(call["logprobs"])
            assert triplet.reward == 1.0 and triplet.response_text == "echo: 2+2"
            [llm] = llm_spans(spans)
            assert llm.name == "chat qwen" and llm.kind == "CLIENT"
            assert llm.attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] == len(call["prompt_token_ids"])
            assert llm.attributes[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == ["stop"]
            assert json.loads(llm.attributes[semconv.GEN_AI_INPUT_MESSAGES])[0] == {
                "role": "system",
                "parts": [{"type": "text", "content": "be brief"}],
            }
            assert [s.name for s in spans] == ["chat qwen", semconv.ATTEMPT_SPAN, semconv.REWARD_SPAN]
            assert [s.sequence_id for s in spans] == [1, 2, 3]

    asyncio.run(main())


def test_async_streaming_agent_triplets_match_the_streamed_tokens(openai_server, make_tracer, serve, db):
    async def agent(task: str, resources: Any) -> None:
        client = openai.AsyncOpenAI(base_url=openai_server.base_url, api_key="test")
        stream = await client.chat.completions.create(
            model="qwen",
            messages=[{"role": "user", "content": task}],
            stream=True,
            stream_options={"include_usage": True},
            **ASK_IDS,
        )
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
        emit_reward(0.5, step=last_llm_call())
        emit_reward(float(len(text)))

    async def main() -> None:
        async with SqliteLightningStore(db) as store:
            [rollout_id] = await serve(store, agent, ["stream this please"], tracer=make_tracer())
            spans = await spans_of(store, rollout_id)
            [call] = openai_server.calls
            [triplet] = TripletAdapter().adapt(spans).triplets
            assert triplet.prompt_token_ids == call["prompt_token_ids"]
            assert triplet.response_token_ids == call["token_ids"]
            assert len(call["token_ids"]) > 3 * openai_server.chunk_chars  # it really came in several chunks
            assert triplet.response_logprobs == pytest.approx(call["logprobs"])
            assert triplet.step_reward == 0.5 and triplet.final_reward == len(call["text"])
            [llm] = llm_spans(spans)
            assert llm.attributes[semconv.GEN_AI_REQUEST_STREAM] is True
            assert llm.attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == len(call["token_ids"])
            assert llm.attributes[semconv.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] > 0

    asyncio.run(main())


def test_completions_streaming_and_not_with_ids_requested_by_the_tracer(openai_server, make_tracer, db):
    async def main() -> None:
        tracer = make_tracer(request_token_ids=True, request_logprobs=True)
        client = openai.OpenAI(base_url=openai_server.base_url, api_key="test")
        async with SqliteLightningStore(db) as store:
            attempted = await store.start_rollout("t")
            with tracer.trace_context(
                rollout_id=attempted.rollout_id, attempt_id=attempted.attempt.attempt_id, store=store
            ):
                client.completions.create(model="base", prompt="1+1=", max_tokens=4)  # no ids asked by the agent
                for _ in client.completions.create(model="base", prompt="3+3=", stream=True):
                    pass
                emit_reward(1.0)
            await tracer.flush()
            spans = await spans_of(store, attempted.rollout_id)
        result = TripletAdapter().adapt(spans)
        assert [t.prompt_token_ids for t in result.triplets] == [tokenize("1+1="), tokenize("3+3=")]
        assert [t.response_token_ids for t in result.triplets] == [c["token_ids"] for c in openai_server.calls]
        assert result.triplets[0].response_token_ids == tokenize("echo")  # cut at max_tokens=4
        assert [t.response_logprobs for t in result.triplets] == [
            pytest.approx(c["logprobs"]) for c in openai_server.calls
        ]
        assert all(c["request"]["return_token_ids"] is True for c in openai_server.calls)
        assert [t.prompt_text for t in result.triplets] == ["1+1=", "3+3="]

    asyncio.run(main())


def test_without_token_ids_the_reason_is_clear(openai_server, make_tracer, serve, db):
    def agent(task: str, resources: Any) -> float:
        openai.OpenAI(base_url=openai_server.base_url, api_key="test").chat.completions.create(
            model="gpt", messages=[{"role": "user", "content": task}]
        )
        return 1.0

    async def main() -> None:
        async with SqliteLightningStore(db) as store:
            [rollout_id] = await serve(store, agent, ["hi"], tracer=make_tracer())
            result = TripletAdapter().adapt(await spans_of(store, rollout_id))
        assert result.triplets == [] and [c.reason for c in result.calls] == [CallReason.NO_TOKEN_IDS]
        assert "return_token_ids" in result.why()[0]

    asyncio.run(main())


def test_failed_calls_raw_responses_and_closed_streams_are_recorded(openai_server, make_tracer, db):
    async def main() -> None:
        tracer = make_tracer()
        client = openai.OpenAI(base_url=openai_server.base_url, api_key="test", max_retries=0)
        messages = [{"role": "user", "content": "abcdefghijklmnop"}]
        async with SqliteLightningStore(db) as store:
            attempted = await store.start_rollout("t")
            with tracer.trace_context(
                rollout_id=attempted.rollout_id, attempt_id=attempted.attempt.attempt_id, store=store
            ):
                with pytest.raises(openai.InternalServerError):
                    client.chat.completions.create(model="fail", messages=messages)
                raw = client.chat.completions.with_raw_response.create(model="raw", messages=messages, **ASK_IDS)
                assert raw.parse().choices[0].message.content == "echo: abcdefghijklmnop"
                with client.chat.completions.create(model="early", messages=messages, stream=True, **ASK_IDS) as stream:
                    next(iter(stream))  # read one chunk, then leave
                client.chat.completions.create(model="unread", messages=messages, stream=True).close()
                emit_reward(1.0)
            await tracer.flush()
            spans = await spans_of(store, attempted.rollout_id)
        failed, raw_span, early, unread = llm_spans(spans)
        assert failed.status.status_code == "ERROR" and failed.attributes["error.type"] == "InternalServerError"
        assert raw_span.attributes[semconv.LLM_RESPONSE_TOKEN_IDS] == openai_server.calls[0]["token_ids"]
        assert early.attributes[semconv.LLM_RESPONSE_TOKEN_IDS] == openai_server.calls[1]["token_ids"][:3]
        assert unread.attributes[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == []
        result = TripletAdapter().adapt(spans)
        assert result.calls[0].reason is CallReason.CALL_FAILED and "InternalServerError" in result.calls[0].detail
        assert len(result.triplets) == 2

    asyncio.run(main())


def test_calls_outside_a_trace_context_are_plain_calls(openai_server, make_tracer):
    tracer = make_tracer()
    client = openai.OpenAI(base_url=openai_server.base_url, api_key="test")
    reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], **ASK_IDS)
    assert reply.choices[0].token_ids == openai_server.calls[0]["token_ids"]
    assert tracer.writer._open == {} and tracer.writer.written == 0


def test_operations_name_the_agent_and_the_messages_adapter_reads_the_calls(openai_server, make_tracer, serve, db):
    @operation(agent="planner")
    async def plan(client: Any, task: str) -> str:
        reply = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": task}], **ASK_IDS)
        return reply.choices[0].message.content

    async def agent(task: str, resources: Any) -> float:
        client = openai.AsyncOpenAI(base_url=openai_server.base_url, api_key="test")
        await plan(client, task)
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "solo"}], **ASK_IDS)
        return 1.0

    async def main() -> None:
        async with SqliteLightningStore(db) as store:
            [rollout_id] = await serve(store, agent, ["go"], tracer=make_tracer())
            spans = await spans_of(store, rollout_id)
        planner_only = TripletAdapter(agent_match="^planner$").adapt(spans)
        assert [t.metadata["agent"] for t in planner_only.triplets] == ["planner"]
        assert [c.reason for c in planner_only.calls] == [None, CallReason.FILTERED_OUT]
        samples = MessagesAdapter().adapt(spans)
        assert [s.messages for s in samples] == [
            [{"role": "user", "content": "go"}, {"role": "assistant", "content": "echo: go"}],
            [{"role": "user", "content": "solo"}, {"role": "assistant", "content": "echo: solo"}],
        ]
        assert [s.reward for s in samples] == [1.0, 1.0]

    asyncio.run(main())


def test_multi_turn_calls_merge_into_one_sequence(openai_server, make_tracer, serve, db):
    def agent(task: str, resources: Any) -> float:
        client = openai.OpenAI(base_url=openai_server.base_url, api_key="test")
        messages = [{"role": "user", "content": task}]
        for turn in range(3):
            reply = client.chat.completions.create(model="m", messages=messages, **ASK_IDS)
            messages += [
                {"role": "assistant", "content": reply.choices[0].message.content},
                {"role": "user", "content": f"more {turn}"},
            ]
        return 1.0

    async def main() -> None:
        async with SqliteLightningStore(db) as store:
            [rollout_id] = await serve(store, agent, ["start"], tracer=make_tracer())
            spans = await spans_of(store, rollout_id)
        [merged] = TripletAdapter(merge=True).adapt(spans).triplets
        calls = openai_server.calls
        assert merged.prompt_token_ids == calls[0]["prompt_token_ids"]
        full = calls[-1]["prompt_token_ids"] + calls[-1]["token_ids"]
        assert merged.prompt_token_ids + merged.response_token_ids == full
        generated = [t for t, keep in zip(merged.response_token_ids, merged.response_mask) if keep]
        assert generated == calls[0]["token_ids"] + calls[1]["token_ids"] + calls[2]["token_ids"]

    asyncio.run(main())
