"""Bad input gets an OpenAI-style 4xx error that says what is wrong; nothing hangs; the server keeps serving."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

MSG = [{"role": "user", "content": "hi"}]


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize(
    ("body", "param", "needle"),
    [
        ({"messages": MSG, "temperature": "hot"}, "temperature", "float"),
        ({"messages": MSG, "temperature": -1}, "temperature", "temperature"),
        ({"messages": MSG, "top_p": 0}, "top_p", "top_p"),
        ({"messages": MSG, "top_k": -5}, "top_k", "top_k"),
        ({"messages": MSG, "n": 0}, "n", "n"),
        ({"messages": MSG, "max_tokens": 0}, "max_tokens", "max_tokens"),
        ({"messages": MSG, "presence_penalty": 0.5}, "presence_penalty", "not supported"),
        ({"messages": MSG, "logprobs": True, "top_logprobs": 50}, "top_logprobs", "20"),
        ({"messages": MSG, "top_logprobs": 2}, "top_logprobs", "logprobs"),
        ({"messages": MSG, "stream_options": {"include_usage": True}}, "stream_options", "stream"),
        ({"messages": []}, "messages", "at least one"),
        ({"messages": [{"content": "no role"}]}, "messages[0].role", "role"),
        ({"messages": "hello"}, "messages", "array"),
        ({}, "messages", "messages"),
        ({"messages": MSG, "stop_token_ids": [10**6]}, "stop_token_ids", "vocabulary"),
    ],
)
def test_bad_chat_requests(client: httpx.Client, body: dict[str, Any], param: str, needle: str) -> None:
    error = error_of(client.post("/v1/chat/completions", json={"model": "tiny", **body}), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert needle in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [1, "a"]}, "prompt"),
        ({"prompt": [10**6]}, "prompt"),
        ({"prompt": "x", "echo": True}, "echo"),
        ({"prompt": "x", "logprobs": 21}, "logprobs"),
        ({"prompt": "x", "suffix": "y"}, "suffix"),
    ],
)
def test_bad_completion_requests(client: httpx.Client, body: dict[str, Any], param: str) -> None:
    error = error_of(client.post("/v1/completions", json={"model": "tiny", **body}), 400)
    assert error["param"] == param


def test_malformed_bodies(client: httpx.Client) -> None:
    for raw in (b"{not json", b"", b"[1, 2]", b"null"):
        error = error_of(
            client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"}), 400
        )
        assert error["type"] == "invalid_request_error"


def test_unknown_model_names_the_served_one(client: httpx.Client) -> None:
    error = error_of(client.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": MSG}), 404)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert "'tiny'" in error["message"] and "gpt-4o" in error["message"]
    error_of(client.post("/v1/completions", json={"model": "nope", "prompt": "x"}), 404)


def test_prompt_too_long(client: httpx.Client, tiny_server: Any) -> None:
    limit = tiny_server.max_model_len
    error = error_of(client.post("/v1/completions", json={"model": "tiny", "prompt": [5] * (limit + 3)}), 400)
    assert error["code"] == "context_length_exceeded" and str(limit) in error["message"]
    error = error_of(
        client.post("/v1/completions", json={"model": "tiny", "prompt": [5] * 50, "max_tokens": limit}), 400
    )
    assert error["code"] == "context_length_exceeded" and error["param"] == "max_tokens"
    long_chat = [{"role": "user", "content": "word " * 2000}]
    error = error_of(client.post("/v1/chat/completions", json={"model": "tiny", "messages": long_chat}), 400)
    assert error["code"] == "context_length_exceeded"


def test_unknown_route_and_method(client: httpx.Client) -> None:
    error = error_of(client.get("/v1/nothing"), 404)
    assert "/v1/chat/completions" in error["message"]
    error_of(client.get("/v1/chat/completions"), 405)


def test_bad_weights_requests(client: httpx.Client, tiny_server: Any) -> None:
    version = tiny_server.weights_version
    error_of(client.post("/v1/weights", content=b"abc", headers={"content-type": "text/plain"}), 415)
    error = error_of(
        client.post("/v1/weights", content=b"not safetensors", headers={"content-type": "application/octet-stream"}),
        400,
    )
    assert error["code"] == "invalid_weights"
    error = error_of(client.post("/v1/weights", json={"path": "/nonexistent/dir"}), 400)
    assert "does not exist" in error["message"]
    error_of(client.post("/v1/weights", json={"nopath": 1}), 400)
    error_of(
        client.post("/v1/weights?version=abc", content=b"x", headers={"content-type": "application/octet-stream"}), 400
    )
    assert tiny_server.weights_version == version


def test_server_still_serves_after_errors(client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions", json={"model": "tiny", "messages": MSG, "max_tokens": 3})
    assert response.status_code == 200
    assert client.get("/health").json()["status"] == "ok"
