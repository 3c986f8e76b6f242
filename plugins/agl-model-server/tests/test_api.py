"""The OpenAI-compatible API on a tiny random Llama: fields, token ids, logprobs, streaming, stops, sampling."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from agl_model_server.testing import forward_logprobs, sse_events

# Incremental decoding (KV cache, one token per step) vs one full forward pass, both float32: they differ by
# rounding only (~1e-6 seen); 1e-4 leaves room for other CPUs' kernels.
LOGPROB_TOL = 1e-4

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "what is the answer?"}]}


def chat(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/chat/completions", json={**CHAT, **body})
    assert response.status_code == 200, response.text
    return response.json()


def complete(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/completions", json={"model": "tiny", **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_health_and_models(client: httpx.Client, tiny_server: Any) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny"
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    card = models["data"][0]
    assert card["id"] == "tiny" and card["max_model_len"] == 256
    assert card["weights_version"] == tiny_server.weights_version


def test_chat_token_ids_and_logprobs(client: httpx.Client, tiny_server: Any, tiny: Any) -> None:
    body = chat(
        client, max_tokens=12, temperature=0, ignore_eos=True, return_token_ids=True, logprobs=True, top_logprobs=3
    )
    model, tokenizer = tiny
    assert body["object"] == "chat.completion"
    prompt_ids = body["prompt_token_ids"]
    assert prompt_ids == tiny_server.chat_prompt_ids(CHAT["messages"])
    choice = body["choices"][0]
    ids = choice["token_ids"]
    assert len(ids) == 12 and choice["finish_reason"] == "length"
    assert tokenizer.decode(ids, skip_special_tokens=True) == choice["message"]["content"]
    assert body["usage"] == {
        "prompt_tokens": len(prompt_ids),
        "completion_tokens": 12,
        "total_tokens": len(prompt_ids) + 12,
    }
    content = choice["logprobs"]["content"]
    assert len(content) == len(ids)
    for entry, _token in zip(content, ids):
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert len(entry["top_logprobs"]) == 3
        # greedy: the chosen token is the most likely one
        assert entry["logprob"] == pytest.approx(entry["top_logprobs"][0]["logprob"], abs=1e-6)
    raw = b"".join(bytes(e["bytes"]) for e in content)
    assert raw.decode("utf-8", errors="replace") == tokenizer.decode(ids)
    # greedy logprobs are the model's (temperature 1), and match a separate forward pass
    expected = forward_logprobs(model, prompt_ids, ids)
    assert [e["logprob"] for e in content] == pytest.approx(expected, abs=LOGPROB_TOL)
    assert choice["model_logprobs"] == pytest.approx(expected, abs=LOGPROB_TOL)
    assert body["weights_version"] == tiny_server.weights_version
    assert body["system_fingerprint"] == f"agl-weights-v{tiny_server.weights_version}"


def test_sampling_logprobs_follow_temperature(client: httpx.Client, tiny: Any) -> None:
    """``logprobs`` are under the sampling distribution (logits / T); ``model_logprobs`` under the model's (T=1)."""
    model, _ = tiny
    body = complete(
        client,
        prompt="the quick brown",
        max_tokens=10,
        temperature=0.7,
        seed=11,
        logprobs=0,
        return_token_ids=True,
        ignore_eos=True,
    )
    choice = body["choices"][0]
    prompt, ids = choice["prompt_token_ids"], choice["token_ids"]
    assert choice["logprobs"]["token_logprobs"] == pytest.approx(
        forward_logprobs(model, prompt, ids, 0.7), abs=LOGPROB_TOL
    )
    assert choice["model_logprobs"] == pytest.approx(forward_logprobs(model, prompt, ids, 1.0), abs=LOGPROB_TOL)


def test_completions_shapes(client: httpx.Client, tiny: Any) -> None:
    _, tokenizer = tiny
    prompt_ids = tokenizer("one two three")["input_ids"]
    body = complete(
        client, prompt=[prompt_ids, "hello world"], n=2, max_tokens=4, seed=3, logprobs=2, return_token_ids=True
    )
    assert body["object"] == "text_completion"
    choices = body["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    assert choices[0]["prompt_token_ids"] == prompt_ids == choices[1]["prompt_token_ids"]
    assert choices[2]["prompt_token_ids"] == tokenizer("hello world")["input_ids"]
    for c in choices:
        lp = c["logprobs"]
        n = len(c["token_ids"])
        assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == n
        assert all(len(top) <= 2 for top in lp["top_logprobs"])
        assert tokenizer.decode(c["token_ids"], skip_special_tokens=True) == c["text"]
    assert body["usage"]["prompt_tokens"] == len(prompt_ids) + len(choices[2]["prompt_token_ids"])
    assert body["usage"]["completion_tokens"] == sum(len(c["token_ids"]) for c in choices)


def test_seed_reproducible(client: httpx.Client) -> None:
    first = complete(client, prompt="hello", max_tokens=16, temperature=1.0, seed=1234, return_token_ids=True)
    again = complete(client, prompt="hello", max_tokens=16, temperature=1.0, seed=1234, return_token_ids=True)
    other = complete(client, prompt="hello", max_tokens=16, temperature=1.0, seed=99, return_token_ids=True)
    assert first["choices"][0]["token_ids"] == again["choices"][0]["token_ids"]
    assert first["choices"][0]["token_ids"] != other["choices"][0]["token_ids"]


def test_top_k_one_is_greedy(client: httpx.Client) -> None:
    greedy = complete(client, prompt="seven eight", max_tokens=8, temperature=0, return_token_ids=True)
    top1 = complete(client, prompt="seven eight", max_tokens=8, temperature=1.5, top_k=1, seed=5, return_token_ids=True)
    nucleus = complete(
        client, prompt="seven eight", max_tokens=8, temperature=1.0, top_p=1e-6, seed=5, return_token_ids=True
    )
    ids = greedy["choices"][0]["token_ids"]
    assert top1["choices"][0]["token_ids"] == ids
    assert nucleus["choices"][0]["token_ids"] == ids


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_stream_equals_non_stream(client: httpx.Client, endpoint: str) -> None:
    base: dict[str, Any] = {"max_tokens": 20, "return_token_ids": True, "ignore_eos": True}
    for sampling in ({"temperature": 0}, {"temperature": 1.0, "seed": 7}):
        body = {**base, **sampling}
        if endpoint == "chat":
            path, body = "/v1/chat/completions", {**CHAT, **body, "logprobs": True}
        else:
            path, body = "/v1/completions", {"model": "tiny", "prompt": "the lazy dog", **body, "logprobs": 1}
        whole = client.post(path, json=body).json()
        with client.stream("POST", path, json={**body, "stream": True, "stream_options": {"include_usage": True}}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            events = sse_events(r)
        usage = events[-1]
        assert usage["choices"] == [] and usage["usage"] == whole["usage"]
        chunks = [e for e in events[:-1] if e["choices"]]
        ids = [t for e in chunks for c in e["choices"] for t in c.get("token_ids", [])]
        choice = whole["choices"][0]
        assert ids == choice["token_ids"]
        if endpoint == "chat":
            assert events[0]["prompt_token_ids"] == whole["prompt_token_ids"]
            assert events[0]["choices"][0]["delta"]["role"] == "assistant"
            text = "".join(c["delta"].get("content", "") for e in chunks for c in e["choices"])
            assert text == choice["message"]["content"]
            lps = [
                x["logprob"] for e in chunks for c in e["choices"] if c["logprobs"] for x in c["logprobs"]["content"]
            ]
            # The streamed request runs only its prompt's last token on the static path (the rest is copied from
            # the first request's, kept in its slot): float32 sums in another order, ~1e-6 apart.
            assert lps == pytest.approx([x["logprob"] for x in choice["logprobs"]["content"]], abs=1e-5)
        else:
            assert chunks[0]["choices"][0]["prompt_token_ids"] == choice["prompt_token_ids"]
            text = "".join(c["text"] for e in chunks for c in e["choices"])
            assert text == choice["text"]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_stop_string_and_stop_token(client: httpx.Client, tiny: Any) -> None:
    _, tokenizer = tiny
    full = complete(client, prompt="one two", max_tokens=24, temperature=0, ignore_eos=True, return_token_ids=True)
    ids, text = full["choices"][0]["token_ids"], full["choices"][0]["text"]
    # a stop string from the middle of the greedy text
    cut = len(tokenizer.decode(ids[:8]))
    stop = text[cut : cut + 2]
    assert len(stop) == 2, text
    stopped = complete(client, prompt="one two", max_tokens=24, temperature=0, ignore_eos=True, stop=[stop, "zzzz"])
    choice = stopped["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == stop
    assert choice["text"] == text[: text.index(stop)]
    kept = complete(
        client,
        prompt="one two",
        max_tokens=24,
        temperature=0,
        ignore_eos=True,
        stop=stop,
        include_stop_str_in_output=True,
    )
    assert kept["choices"][0]["text"] == text[: text.index(stop) + len(stop)]
    # streaming: the same cut, never a piece of the stop string
    with client.stream(
        "POST",
        "/v1/completions",
        json={
            "model": "tiny",
            "prompt": "one two",
            "max_tokens": 24,
            "temperature": 0,
            "ignore_eos": True,
            "stop": [stop],
            "stream": True,
        },
    ) as r:
        streamed = "".join(c["text"] for e in sse_events(r) for c in e["choices"])
    assert streamed == choice["text"]
    # a stop token id: generation ends with it, and it is the stop_reason
    token = ids[5]
    by_token = complete(
        client,
        prompt="one two",
        max_tokens=24,
        temperature=0,
        ignore_eos=True,
        stop_token_ids=[token],
        return_token_ids=True,
    )
    got = by_token["choices"][0]
    assert got["token_ids"] == ids[: ids.index(token) + 1]
    assert got["finish_reason"] == "stop" and got["stop_reason"] == token


def test_eos_ends_generation(client: httpx.Client, tiny_server: Any) -> None:
    # Sampled long enough, the random model may or may not emit EOS: either way the outcome must be consistent.
    assert 2 in tiny_server.engine.eos_token_ids
    body = complete(client, prompt="the", max_tokens=200, temperature=1.0, seed=0, return_token_ids=True)
    choice = body["choices"][0]
    if choice["finish_reason"] == "stop":
        assert choice["token_ids"][-1] == 2 and choice["stop_reason"] is None
    else:
        assert choice["finish_reason"] == "length" and 2 not in choice["token_ids"]


def test_openai_client(tiny_server: Any) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=tiny_server.base_url, api_key="none", max_retries=0)
    out = client.chat.completions.create(
        model="tiny",
        messages=CHAT["messages"],
        max_tokens=5,
        logprobs=True,
        top_logprobs=2,
        extra_body={"return_token_ids": True},
    )
    assert out.choices[0].logprobs.content and len(out.choices[0].logprobs.content[0].top_logprobs) == 2
    assert len(out.model_extra["prompt_token_ids"]) > 0
    stream = client.completions.create(
        model="tiny", prompt="hello", max_tokens=5, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].usage.completion_tokens == 5 or chunks[-1].usage.completion_tokens <= 5
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4o", messages=CHAT["messages"])
    assert "tiny" in str(err.value)


def test_an_idle_connection_stays_open_past_the_clients_reuse_window(tiny: Any) -> None:
    """The server keeps an idle keep-alive connection open 30 s (uvicorn's default, 5 s, equal to httpx's reuse
    window, raced: a request sent on a pooled connection just as the server closed it failed with a read error).
    Here a second request on the same connection 6 s after the first is answered."""
    import http.client
    import time
    from urllib.parse import urlsplit

    from agl_model_server import ModelServer

    model, tokenizer = tiny
    with ModelServer(model=model, tokenizer=tokenizer, model_name="tiny") as server:
        where = urlsplit(server.url)
        connection = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
        try:
            connection.request("GET", "/v1/models")
            assert connection.getresponse().read()
            sock = connection.sock
            time.sleep(6)
            connection.request("GET", "/v1/models")
            response = connection.getresponse()
            assert response.status == 200 and response.read()
            assert connection.sock is sock  # the same connection, not a new one
        finally:
            connection.close()
