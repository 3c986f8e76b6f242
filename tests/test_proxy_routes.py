"""The LLM proxy's routes besides the completions (models, backends, pause), a stream that a backend breaks off, and
the request checks called directly. tests/proxy/test_proxy.py covers the completions end to end."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

pytest.importorskip("litestar", reason="the proxy runs in the store server: pip install 'agl-kernel[server]'")
httpx = pytest.importorskip("httpx")

from agl_kernel.models import ProxyLLM  # noqa: E402
from agl_kernel.proxy import LLMProxy, ProxyError, check_request, serve_backends_option  # noqa: E402
from agl_kernel.server import create_app, running_server  # noqa: E402
from agl_kernel.store.memory import InMemoryLightningStore  # noqa: E402

MODELS = {"object": "list", "data": [{"id": "m", "object": "model"}]}


class RawBackend:
    """A backend on a plain socket: ``GET /v1/models`` answers :data:`MODELS`; a POST gets the head of an event
    stream and one event, then the connection is closed mid-answer."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                head = connection.recv(65536)
                if head.startswith(b"GET"):
                    body = httpx.Response(200, json=MODELS).content
                    connection.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                        + f"Content-Length: {len(body)}\r\n\r\n".encode()
                        + body
                    )
                else:
                    event = b'data: {"choices": [{"index": 0, "delta": {"content": "par"}}]}\n\n'
                    connection.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (len(event), event)
                    )

    def close(self) -> None:
        self.listener.close()


def free_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


async def serve(backends, body):
    async with InMemoryLightningStore() as store:
        proxy = LLMProxy(store, backends, retry_after=60)
        attempted = await store.start_rollout({"q": 1})
        async with running_server(store, route_handlers=proxy.routes()) as url:
            try:
                base = ProxyLLM(endpoint=url, model="m").get_base_url(
                    attempted.rollout_id, attempted.attempt.attempt_id
                )
                answers = await asyncio.to_thread(body, proxy, url, base)
                return answers, (await store.query_spans(attempted.rollout_id)).items
            finally:
                await proxy.aclose()


def test_models_come_from_the_first_backend_that_answers_and_a_refused_backend_is_skipped():
    backend, down = RawBackend(), free_url()
    try:

        def calls(proxy, url, base):
            with httpx.Client(timeout=10) as client:
                answers = [client.get(f"{url}/v1/models"), client.get(f"{base}/models")]
                proxy.set_backends([down])
                answers.append(client.get(f"{url}/v1/models"))
                request = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
                answers.append(client.post(f"{base}/chat/completions", json=request))
                return answers

        answers, _ = asyncio.run(serve([down, backend.url], calls))
    finally:
        backend.close()
    assert [a.status_code for a in answers] == [200, 200, 503, 503]
    assert answers[0].json() == answers[1].json() == MODELS
    assert "every backend is unreachable" in answers[3].json()["error"]["message"]  # the refused one is skipped
    error = answers[2].json()["error"]
    assert error == {
        "message": "no backend answered /models",
        "type": "service_unavailable",
        "param": None,
        "code": 503,
    }


def test_backends_are_listed_replaced_and_checked_and_pause_shows():
    def calls(proxy, url, base):
        with httpx.Client(timeout=10) as client:
            put = lambda body: client.put(f"{url}/api/v1/proxy/backends", json=body)  # noqa: E731
            answers = {"initial": client.get(f"{url}/api/v1/proxy/backends").json()}
            answers["replaced"] = put({"backends": ["http://a:1/v1/", "http://b:2/v1"]}).json()
            answers["not a list"] = put({"backends": "http://a:1/v1"})
            answers["not a url"] = put({"backends": ["a:1"]})
            client.post(f"{url}/api/v1/proxy/pause")
            answers["paused"] = client.get(f"{url}/api/v1/proxy/backends").json()
            answers["resumed"] = client.post(f"{url}/api/v1/proxy/resume").json()
        return answers

    answers, _ = asyncio.run(serve(["http://first:1/v1"], calls))
    assert answers["initial"] == {"backends": ["http://first:1/v1"], "paused": False}
    assert answers["replaced"] == {"backends": ["http://a:1/v1", "http://b:2/v1"]}
    for key in ("not a list", "not a url"):
        assert answers[key].status_code == 400 and answers[key].json()["error"]["param"] == "backends"
    assert "http(s) URL" in answers["not a url"].json()["error"]["message"]
    assert answers["paused"] == {"backends": ["http://a:1/v1", "http://b:2/v1"], "paused": True}
    assert answers["resumed"] == {"paused": False}


def test_a_stream_the_backend_breaks_off_ends_the_agents_stream_and_is_recorded_as_failed():
    backend = RawBackend()
    try:

        def calls(proxy, url, base):
            request = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
            received = []
            with httpx.Client(timeout=10) as client:
                try:
                    with client.stream("POST", f"{base}/chat/completions", json=request) as answer:
                        received.append(answer.status_code)
                        received.extend(answer.iter_lines())
                except httpx.HTTPError:
                    received.append("broken")
            return received

        received, spans = asyncio.run(serve([backend.url], calls))
    finally:
        backend.close()
    assert received[0] == 200 and received[-1] == "broken"
    assert any(line.startswith("data:") and "par" in line for line in received[1:-1])
    (span,) = spans
    assert span.status.status_code == "ERROR" and "closed the connection" in span.status.description
    assert span.attributes["error.type"] == "ProxyError" and span.attributes["agl.llm.backend"] == backend.url
    assert span.attributes["agl.llm.latency_seconds"] >= 0


def test_the_proxy_routes_in_the_openapi_document():
    async def paths():
        async with InMemoryLightningStore() as store:
            proxy = LLMProxy(store)
            try:
                schema = create_app(store, route_handlers=proxy.routes(), plugins=False).openapi_schema.to_schema()
            finally:
                await proxy.aclose()
        return {
            (method, path, operation["operationId"], operation["summary"])
            for path, item in schema["paths"].items()
            for method, operation in item.items()
            if "proxy" in path or "/attempt/" in path or path == "/v1/models"
        }

    attempt = "/rollout/{rollout_id}/attempt/{attempt_id}/v1"
    prefix = "RolloutRolloutIdAttemptAttemptIdV1"
    assert asyncio.run(paths()) == {
        ("post", f"{attempt}/chat/completions", f"{prefix}ChatCompletionsChat", "OpenAI chat completions, recorded"),
        ("post", f"{attempt}/completions", f"{prefix}CompletionsCompletions", "OpenAI completions, recorded"),
        ("get", f"{attempt}/models", f"{prefix}ModelsAttemptModels", "The backends' models"),
        ("get", "/v1/models", "V1ModelsModels", "The backends' models"),
        ("get", "/api/v1/proxy/backends", "ApiV1ProxyBackendsGetBackends", "The proxy's backends"),
        ("put", "/api/v1/proxy/backends", "ApiV1ProxyBackendsPutBackends", "Replace the proxy's backends"),
        ("post", "/api/v1/proxy/pause", "ApiV1ProxyPausePause", "Hold new LLM calls; returns when none is in flight"),
        ("post", "/api/v1/proxy/resume", "ApiV1ProxyResumeResume", "Let LLM calls through again"),
    }


def test_the_attempt_path_is_the_one_proxy_llm_builds():
    from agl_kernel.models import PROXY_ATTEMPT_PATH

    assert ProxyLLM(endpoint="http://h:1/v1", model="m").get_base_url("r", "a") == "http://h:1" + (
        PROXY_ATTEMPT_PATH.format(rollout_id="r", attempt_id="a")
    )


# ------------------------------------------------------------------------------------------------ check_request


@pytest.mark.parametrize(
    "operation, body, param",
    [
        ("chat", [], None),
        ("chat", {}, "messages"),
        ("chat", {"messages": [{"role": "user", "content": None, "tool_calls": {"a": 1}}]}, "messages[0].tool_calls"),
        ("chat", {"messages": [{"role": "tool", "content": "x", "tool_call_id": 3}]}, "messages[0].tool_call_id"),
        ("chat", {"messages": [{"role": "user", "content": "x", "name": []}]}, "messages[0].name"),
        ("chat", {"messages": [{"role": "user", "content": "x"}], "temperature": True}, "temperature"),
        ("chat", {"messages": [{"role": "user", "content": "x"}], "n": 1.5}, "n"),
        ("chat", {"messages": [{"role": "user", "content": "x"}], "stop": ["a", 1]}, "stop"),
        ("chat", {"messages": [{"role": "user", "content": "x"}], "tools": ["f"]}, "tools[0]"),
        ("text_completion", {}, "prompt"),
        ("text_completion", {"prompt": [1, True]}, "prompt"),
    ],
)
def test_check_request_names_the_field(operation, body, param):
    with pytest.raises(ProxyError) as caught:
        check_request(operation, body)
    assert caught.value.status == 400 and caught.value.param == param
    assert caught.value.body()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "operation, body",
    [
        ("chat", {"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}], "stop": "x"}),
        ("chat", {"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]}], "top_k": 3}),
        ("text_completion", {"prompt": "x", "temperature": 0, "seed": None}),
        ("text_completion", {"prompt": ["a", "b"]}),
        ("text_completion", {"prompt": [1, 2]}),
        ("text_completion", {"prompt": [[1], [2, 3]]}),
    ],
)
def test_check_request_lets_openai_shapes_through(operation, body):
    check_request(operation, body)


def test_backend_options_split_on_commas():
    assert serve_backends_option(["http://a/v1, http://b/v1", " ", "http://c/v1"]) == [
        "http://a/v1",
        "http://b/v1",
        "http://c/v1",
    ]
