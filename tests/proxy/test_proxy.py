"""The LLM proxy on a real store server (127.0.0.1), in front of a real OpenAI-compatible test server, called by an
unmodified agent using the `openai` package; the stored spans become triplets."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

pytest.importorskip("litestar", reason="the proxy runs in the store server: pip install 'agl-kernel[server]'")
openai = pytest.importorskip("openai")

from agl_kernel import semconv  # noqa: E402
from agl_kernel.adapters import TripletAdapter  # noqa: E402
from agl_kernel.models import ProxyLLM  # noqa: E402
from agl_kernel.proxy import LLMProxy  # noqa: E402
from agl_kernel.server import running_server  # noqa: E402
from agl_kernel.store.memory import InMemoryLightningStore  # noqa: E402
from agl_kernel.testing.openai_server import FakeOpenAIServer, render_chat, tokenize  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def with_proxy(backends, body):
    """Run ``body(store, proxy, url, rollout_id, attempt_id)`` against a served store + proxy."""
    async with InMemoryLightningStore() as store:
        proxy = LLMProxy(store, backends, retry_after=60)
        update = await store.add_resources({"llm": ProxyLLM(endpoint="http://unused", model="m")})
        attempted = await store.start_rollout({"q": 1}, resources_id=update.resources_id)
        async with running_server(store, route_handlers=proxy.routes()) as url:
            try:
                return await body(store, proxy, url, attempted.rollout_id, attempted.attempt.attempt_id)
            finally:
                await proxy.aclose()


def agent_calls(base_url: str) -> list[str]:
    """An unmodified agent: two chat turns (the second streamed) and a text completion, with the openai package."""
    client = openai.OpenAI(base_url=base_url, api_key="none")
    messages = [{"role": "user", "content": "hello"}]
    first = client.chat.completions.create(model="m", messages=messages)
    messages += [{"role": "assistant", "content": first.choices[0].message.content}, {"role": "user", "content": "more"}]
    stream = client.chat.completions.create(model="m", messages=messages, stream=True)
    second = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    third = client.completions.create(model="m", prompt="complete me", max_tokens=5).choices[0].text
    return [first.choices[0].message.content, second, third]


def test_agent_calls_through_the_proxy_become_triplets_with_the_exact_token_ids():
    with FakeOpenAIServer() as backend:

        async def body(store, proxy, url, rollout_id, attempt_id):
            base = ProxyLLM(endpoint=url, model="m").get_base_url(rollout_id, attempt_id)
            texts = await asyncio.to_thread(agent_calls, base)
            spans = (await store.query_spans(rollout_id)).items
            return texts, spans

        texts, spans = asyncio.run(with_proxy([backend.base_url], body))
        calls = list(backend.calls)
    assert texts == ["echo: hello", "echo: more", "echo:"]  # the completion was cut at max_tokens=5
    llm = [s for s in spans if s.attributes.get(semconv.GEN_AI_OPERATION_NAME)]
    assert [s.name for s in llm] == ["chat m", "chat m", "text_completion m"]
    for span, call, text in zip(llm, calls, texts):
        assert span.attributes[semconv.LLM_PROMPT_TOKEN_IDS] == call["prompt_token_ids"]
        assert span.attributes[semconv.LLM_RESPONSE_TOKEN_IDS] == tokenize(text)  # decodes back to the exact text
        assert len(span.attributes[semconv.LLM_RESPONSE_LOGPROBS]) == len(text)
        assert span.attributes["agl.resources.version"] == 1 and span.status.status_code == "OK"
    assert llm[1].attributes[semconv.GEN_AI_REQUEST_STREAM] is True
    assert llm[0].attributes[semconv.LLM_PROMPT_TOKEN_IDS] == tokenize(render_chat([{"role": "user", "content": "hello"}]))

    result = TripletAdapter(require_reward=False).adapt(spans)
    assert [t.response_token_ids for t in result.triplets] == [tokenize(text) for text in texts]
    assert [t.prompt_token_ids for t in result.triplets] == [call["prompt_token_ids"] for call in calls]


def test_bad_calls_get_openai_errors_and_failed_spans_and_nothing_hangs():
    down = f"http://127.0.0.1:{free_port()}/v1"
    with FakeOpenAIServer() as backend:

        async def body(store, proxy, url, rollout_id, attempt_id):
            def calls():
                errors = {}
                unknown = openai.OpenAI(base_url=f"{url}/rollout/ro-nope/attempt/at-nope/v1", api_key="x", max_retries=0)
                try:
                    unknown.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
                except openai.NotFoundError as exc:
                    errors["unknown"] = exc
                client = openai.OpenAI(
                    base_url=ProxyLLM(endpoint=url, model="m").get_base_url(rollout_id, attempt_id), api_key="x",
                    max_retries=0, timeout=10,
                )
                try:
                    client.chat.completions.create(model="fail", messages=[{"role": "user", "content": "x"}])
                except openai.InternalServerError as exc:
                    errors["backend error"] = exc
                proxy.set_backends([down])
                try:
                    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
                except openai.APIStatusError as exc:
                    errors["backend down"] = exc
                try:
                    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
                except openai.APIStatusError as exc:
                    errors["no healthy backend"] = exc
                import httpx

                malformed = httpx.post(f"{client.base_url}chat/completions", content=b"{not json", timeout=10)
                return errors, malformed

            t0 = time.monotonic()
            errors, malformed = await asyncio.to_thread(calls)
            spans = (await store.query_spans(rollout_id)).items
            return errors, malformed, spans, time.monotonic() - t0

        errors, malformed, spans, elapsed = asyncio.run(with_proxy([backend.base_url], body))
    assert elapsed < 20
    assert "unknown rollout or attempt" in errors["unknown"].message
    assert errors["backend error"].status_code == 500 and "answered with an error" in errors["backend error"].message
    assert errors["backend down"].status_code == 502 and "could not be reached" in errors["backend down"].message
    assert errors["no healthy backend"].status_code == 503
    assert malformed.status_code == 400 and "not valid JSON" in malformed.json()["error"]["message"]
    failed = [s for s in spans if s.status.status_code == "ERROR"]
    assert len(failed) == 2  # the backend's error and the unreachable backend, each recorded with why
    assert all(semconv.EXCEPTION_MESSAGE in s.attributes for s in failed)


def test_rollouts_stick_to_a_backend_and_pause_holds_new_calls():
    with FakeOpenAIServer() as one, FakeOpenAIServer() as two:

        async def body(store, proxy, url, rollout_id, attempt_id):
            others = [await store.start_rollout(i) for i in range(4)]
            base = lambda a: ProxyLLM(endpoint=url, model="m").get_base_url(a.rollout_id, a.attempt.attempt_id)  # noqa: E731

            def call(a):
                client = openai.OpenAI(base_url=base(a), api_key="x", max_retries=0)
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])

            for a in others * 3:
                await asyncio.to_thread(call, a)
            spans = [s for a in others for s in (await store.query_spans(a.rollout_id)).items]
            await proxy.pause()
            held = asyncio.ensure_future(asyncio.to_thread(call, others[0]))
            await asyncio.sleep(0.5)
            was_held = not held.done()
            proxy.resume()
            await asyncio.wait_for(held, 10)
            return spans, was_held, others

        spans, was_held, others = asyncio.run(with_proxy([one.base_url, two.base_url], body))
    by_rollout = {}
    for span in spans:
        by_rollout.setdefault(span.rollout_id, set()).add(span.attributes["agl.llm.backend"])
    assert all(len(backends) == 1 for backends in by_rollout.values())  # sticky
    assert len(set().union(*by_rollout.values())) == 2  # and spread over both backends
    assert was_held


def test_agl_proxy_command_serves_the_proxy_with_its_store(tmp_path):
    """`agl proxy` as a real process: an agent's call through it is recorded in the store file."""
    import os
    import signal
    import subprocess
    import sys

    import httpx

    from agl_store_sqlite import SqliteLightningStore

    db = tmp_path / "agl.db"

    async def start():
        async with SqliteLightningStore(db) as store:
            return await store.start_rollout("q")

    attempted = asyncio.run(start())
    port = free_port()
    with FakeOpenAIServer() as backend:
        command = [sys.executable, "-m", "agl_kernel.cli", "proxy", "--llm-backend", backend.base_url,
                   "--path", str(db), "--port", str(port)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env={**os.environ, "AGL_STORE_TOKEN": ""})
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(200):
                try:
                    if httpx.get(f"{url}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.05)
            base = ProxyLLM(endpoint=url, model="m").get_base_url(attempted.rollout_id, attempted.attempt.attempt_id)
            reply = openai.OpenAI(base_url=base, api_key="x").chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )
        finally:
            process.send_signal(signal.SIGTERM)
            output, _ = process.communicate(timeout=20)
    assert reply.choices[0].message.content == "echo: hi"
    assert "LLM proxy:" in output

    async def spans():
        async with SqliteLightningStore(db) as store:
            return (await store.query_spans(attempted.rollout_id)).items

    (span,) = asyncio.run(spans())
    assert span.attributes[semconv.LLM_RESPONSE_TOKEN_IDS] == tokenize("echo: hi")
