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
from agl_kernel.models import ProxyLLM, RolloutMode  # noqa: E402
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
    messages += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "more"},
    ]
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
    assert llm[0].attributes[semconv.LLM_PROMPT_TOKEN_IDS] == tokenize(
        render_chat([{"role": "user", "content": "hello"}])
    )

    result = TripletAdapter(require_reward=False).adapt(spans)
    assert [t.response_token_ids for t in result.triplets] == [tokenize(text) for text in texts]
    assert [t.prompt_token_ids for t in result.triplets] == [call["prompt_token_ids"] for call in calls]


def test_bad_calls_get_openai_errors_and_failed_spans_and_nothing_hangs():
    down = f"http://127.0.0.1:{free_port()}/v1"
    with FakeOpenAIServer() as backend:

        async def body(store, proxy, url, rollout_id, attempt_id):
            def calls():
                errors = {}
                unknown = openai.OpenAI(
                    base_url=f"{url}/rollout/ro-nope/attempt/at-nope/v1", api_key="x", max_retries=0
                )
                try:
                    unknown.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
                except openai.NotFoundError as exc:
                    errors["unknown"] = exc
                client = openai.OpenAI(
                    base_url=ProxyLLM(endpoint=url, model="m").get_base_url(rollout_id, attempt_id),
                    api_key="x",
                    max_retries=0,
                    timeout=10,
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

        spans, was_held, _others = asyncio.run(with_proxy([one.base_url, two.base_url], body))
    by_rollout = {}
    for span in spans:
        by_rollout.setdefault(span.rollout_id, set()).add(span.attributes["agl.llm.backend"])
    assert all(len(backends) == 1 for backends in by_rollout.values())  # sticky
    assert len(set().union(*by_rollout.values())) == 2  # and spread over both backends
    assert was_held


@pytest.mark.requires_plugin("agl_store_sqlite")
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
        command = [
            sys.executable,
            "-m",
            "agl_kernel.cli",
            "proxy",
            "--llm-backend",
            backend.base_url,
            "--path",
            str(db),
            "--port",
            str(port),
        ]
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "AGL_STORE_TOKEN": ""},
        )
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


# ------------------------------------------------------------------------------------------------ status codes


def test_streamed_and_plain_calls_answer_200():
    """Litestar's POST handlers answer 201 unless told otherwise; an OpenAI endpoint answers 200, streamed or not."""
    import httpx

    with FakeOpenAIServer() as backend:

        async def body(store, proxy, url, rollout_id, attempt_id):
            base = ProxyLLM(endpoint=url, model="m").get_base_url(rollout_id, attempt_id)
            chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            text = {"model": "m", "prompt": "hi", "max_tokens": 4}

            def calls():
                codes = {}
                with httpx.Client(timeout=10) as client:
                    codes["chat"] = client.post(f"{base}/chat/completions", json=chat).status_code
                    codes["text"] = client.post(f"{base}/completions", json=text).status_code
                    for name, path, request in (("chat", "chat/completions", chat), ("text", "completions", text)):
                        with client.stream("POST", f"{base}/{path}", json={**request, "stream": True}) as answer:
                            events = [line for line in answer.iter_lines() if line.startswith("data:")]
                            codes[f"streamed {name}"] = answer.status_code
                            codes[f"streamed {name} type"] = answer.headers["content-type"].split(";")[0]
                            codes[f"streamed {name} done"] = events[-1] == "data: [DONE]"
                    codes["pause"] = client.post(f"{url}/api/v1/proxy/pause").status_code
                    codes["resume"] = client.post(f"{url}/api/v1/proxy/resume").status_code
                return codes

            return await asyncio.to_thread(calls)

        codes = asyncio.run(with_proxy([backend.base_url], body))
    assert codes == {
        "chat": 200,
        "text": 200,
        "streamed chat": 200,
        "streamed chat type": "text/event-stream",
        "streamed chat done": True,
        "streamed text": 200,
        "streamed text type": "text/event-stream",
        "streamed text done": True,
        "pause": 200,
        "resume": 200,
    }


# ------------------------------------------------------------------------------------------------ malformed calls


MALFORMED_CHATS = [
    ({"model": "m", "messages": "hi"}, "messages", "must be a list of messages"),
    ({"model": "m", "messages": []}, "messages", "at least one message"),
    ({"model": "m", "messages": ["hi"]}, "messages[0]", "must be an object"),
    ({"model": "m", "messages": [{"content": "hi"}]}, "messages[0].role", "must be a string"),
    ({"model": "m", "messages": [{"role": "user", "content": 3}]}, "messages[0].content", "a list of content parts"),
    ({"model": "m", "messages": [{"role": "user", "content": ["x"]}]}, "messages[0].content[0]", "must be an object"),
    ({"model": 7, "messages": [{"role": "user", "content": "hi"}]}, "model", "must be a string"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, "stream", "true or false"),
    (
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream_options": "x"},
        "stream_options",
        "must be an object",
    ),
    (
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "9"},
        "max_tokens",
        "must be an integer",
    ),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": {"a": 1}}, "tools", "must be a list"),
]
MALFORMED_COMPLETIONS = [
    ({"model": "m", "prompt": 5}, "prompt", "must be a string"),
    ({"model": "m", "prompt": []}, "prompt", "must not be empty"),
    ({"model": "m", "prompt": ["a", 1]}, "prompt", "must be a string"),
    ({"model": "m", "prompt": [[1, "x"]]}, "prompt", "must be a string"),
]


def test_a_malformed_call_gets_a_400_that_says_what_is_wrong_and_reaches_no_backend():
    import httpx

    with FakeOpenAIServer() as backend:

        async def body(store, proxy, url, rollout_id, attempt_id):
            base = ProxyLLM(endpoint=url, model="m").get_base_url(rollout_id, attempt_id)

            def calls():
                cases = [("chat/completions", MALFORMED_CHATS), ("completions", MALFORMED_COMPLETIONS)]
                with httpx.Client(timeout=10) as client:
                    return [
                        client.post(f"{base}/{path}", json=request) for path, group in cases for request, _, _ in group
                    ]

            answers = await asyncio.to_thread(calls)
            return answers, (await store.query_spans(rollout_id)).items

        answers, spans = asyncio.run(with_proxy([backend.base_url], body))
        calls = list(backend.calls)
    for answer, (request, param, message) in zip(answers, MALFORMED_CHATS + MALFORMED_COMPLETIONS):
        assert answer.status_code == 400, (request, answer.text)
        error = answer.json()["error"]
        assert error["type"] == "invalid_request_error" and error["code"] == 400
        assert error["param"] == param and message in error["message"], (request, error)
    assert calls == [] and spans == []  # nothing was forwarded, nothing recorded


def test_a_call_that_breaks_the_backend_does_not_take_it_down_for_the_other_attempts():
    """The issue's case: one attempt's bad request made the backend drop the connection, the proxy marked the backend
    down, and every other attempt got 503 for `retry_after` seconds. Now the malformed request is refused before
    it is forwarded, and a request that passes the checks but still breaks the backend's connection fails alone."""
    import httpx

    def reply_for(request):
        if "boom" in str(request.get("messages")):
            raise RuntimeError("the backend breaks on this request")  # the handler dies: the connection drops
        return "echo: ok"

    with FakeOpenAIServer(reply_for=reply_for) as backend:

        async def body(store, proxy, url, rollout_id, attempt_id):
            other = await store.start_rollout("other")
            bad = ProxyLLM(endpoint=url, model="m").get_base_url(rollout_id, attempt_id)
            good = ProxyLLM(endpoint=url, model="m").get_base_url(other.rollout_id, other.attempt.attempt_id)
            hi = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}

            def calls():
                answers = {}
                with httpx.Client(timeout=10) as client:
                    answers["malformed"] = client.post(f"{bad}/chat/completions", json={"model": "m", "messages": "hi"})
                    answers["after malformed"] = client.post(f"{good}/chat/completions", json=hi)
                    boom = [{"role": "user", "content": "boom"}]
                    answers["breaks"] = client.post(f"{bad}/chat/completions", json={"model": "m", "messages": boom})
                    t0 = time.monotonic()
                    answers["after break"] = client.post(f"{good}/chat/completions", json=hi)
                    answers["same attempt again"] = client.post(f"{bad}/chat/completions", json=hi)
                    answers["elapsed"] = time.monotonic() - t0
                return answers

            answers = await asyncio.to_thread(calls)
            return answers, (await store.query_spans(rollout_id)).items

        answers, spans = asyncio.run(with_proxy([backend.base_url], body))
    assert answers["malformed"].status_code == 400
    assert "messages" in answers["malformed"].json()["error"]["message"]
    assert answers["after malformed"].status_code == 200, answers["after malformed"].text
    assert answers["breaks"].status_code == 502, answers["breaks"].text
    assert "closed the connection" in answers["breaks"].json()["error"]["message"]
    assert answers["after break"].status_code == 200, answers["after break"].text
    assert answers["same attempt again"].status_code == 200
    assert answers["elapsed"] < 5  # at once: no waiting out `retry_after` (60 s here)
    assert [s.status.status_code for s in spans] == ["ERROR", "OK"]  # the broken call is recorded as failed


def test_a_backend_that_is_gone_after_a_failed_call_is_skipped():
    """A call fails mid-way and the backend no longer accepts connections: it is down, not the call's fault. The
    proxy checks that with a new connection, and skips the backend for `retry_after` seconds."""
    import socket as sockets
    import threading

    import httpx

    listener = sockets.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    dying = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"

    def die_on_first_call():
        connection, _ = listener.accept()
        connection.recv(65536)
        listener.close()  # the server is gone: new connections are refused
        connection.close()

    threading.Thread(target=die_on_first_call, daemon=True).start()
    with FakeOpenAIServer() as healthy:

        async def body(store, proxy, url, rollout_id, attempt_id):
            proxy.set_backends([dying])
            base = ProxyLLM(endpoint=url, model="m").get_base_url(rollout_id, attempt_id)
            request = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}

            def calls():
                with httpx.Client(timeout=10) as client:
                    first = client.post(f"{base}/chat/completions", json=request)
                    proxy.set_backends([dying, healthy.base_url])
                    second = client.post(f"{base}/chat/completions", json=request)
                    return first, second

            first, second = await asyncio.to_thread(calls)
            return first, second, (await store.query_spans(rollout_id)).items

        first, second, spans = asyncio.run(with_proxy([healthy.base_url], body))
    assert first.status_code == 502, first.text
    assert second.status_code == 200, second.text  # the rollout moved to the backend that is up
    assert spans[-1].attributes["agl.llm.backend"] == healthy.base_url


def test_with_priority_each_call_is_sent_its_rollouts_enqueue_time_and_an_agents_own_priority_is_kept():
    """``LLMProxy(priority=True)``: the backend gets ``priority`` = when the call's rollout was enqueued (µs), so one
    that schedules by priority serves older rollouts first, and validation and test rollouts before every training
    rollout (an algorithm waits on them); without it, no ``priority`` is sent (vLLM refuses one unless started with
    priority scheduling)."""
    with FakeOpenAIServer() as backend:

        async def body(store, priority):
            proxy = LLMProxy(store, [backend.base_url], priority=priority)
            async with running_server(store, route_handlers=proxy.routes()) as url:
                try:
                    older = await store.start_rollout({"q": "older"}, mode=RolloutMode.TRAIN)
                    newer = await store.start_rollout({"q": "newer"})
                    validation = await store.start_rollout({"q": "validated"}, mode=RolloutMode.VAL)
                    test = await store.start_rollout({"q": "tested"}, mode=RolloutMode.TEST)
                    rollouts = [older, newer, validation, test, older]
                    for i, attempted in enumerate(rollouts):
                        base = ProxyLLM(endpoint=url, model="m").get_base_url(
                            attempted.rollout_id, attempted.attempt.attempt_id
                        )
                        client = openai.AsyncOpenAI(base_url=base, api_key="x", max_retries=0)
                        extra = {"priority": -7} if i == 4 else None  # the agent's own: kept
                        await client.chat.completions.create(
                            model="m", messages=[{"role": "user", "content": "hi"}], extra_body=extra
                        )
                    return [(await store.get_rollout(r.rollout_id)).start_time for r in rollouts]
                finally:
                    await proxy.aclose()

        async def run(priority):
            async with InMemoryLightningStore() as store:
                return await body(store, priority)

        started = asyncio.run(run(True))
        sent = [call["request"].get("priority") for call in backend.calls]
        enqueued = [int(t * 1_000_000) for t in started]
        assert sent == [enqueued[0], enqueued[1], enqueued[2] - (1 << 52), enqueued[3] - (1 << 52), -7]
        assert sent[0] < sent[1]  # the older rollout's calls come first
        assert sent[2] < sent[3] < sent[0]  # evaluations before training, each kind oldest first
        backend.calls.clear()
        asyncio.run(run(False))
        assert [call["request"].get("priority") for call in backend.calls] == [None] * 4 + [-7]


def test_the_proxy_reuses_a_backend_connection_only_while_the_backend_keeps_it_open():
    """The proxy reuses an idle connection to a backend for 2 s, below uvicorn's default 5 s keep-alive (vLLM's and
    agl-model-server's servers): a call right after another goes on the same connection; one 2.5 s later on a new
    one, never on a connection the backend may be closing at that moment."""
    from agl_kernel.proxy._forwarding import BACKEND_KEEPALIVE_SECONDS

    assert BACKEND_KEEPALIVE_SECONDS < 5
    with FakeOpenAIServer() as backend:

        async def body():
            async with InMemoryLightningStore() as store:
                proxy = LLMProxy(store, [backend.base_url])
                async with running_server(store, route_handlers=proxy.routes()) as url:
                    try:
                        attempted = await store.start_rollout({"q": "x"})
                        base = ProxyLLM(endpoint=url, model="m").get_base_url(
                            attempted.rollout_id, attempted.attempt.attempt_id
                        )
                        client = openai.AsyncOpenAI(base_url=base, api_key="x", max_retries=0)
                        for pause in (0.0, 0.1, BACKEND_KEEPALIVE_SECONDS + 0.5):
                            await asyncio.sleep(pause)
                            await client.chat.completions.create(
                                model="m", messages=[{"role": "user", "content": "hi"}]
                            )
                    finally:
                        await proxy.aclose()

        asyncio.run(body())
        first, second, third = (call["peer"] for call in backend.calls)
        assert first == second  # reused while fresh
        assert third != first  # not after the reuse window: a new connection
