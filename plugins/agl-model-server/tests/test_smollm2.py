"""The real default model, SmolLM2-135M-Instruct (float32 on the CPU): logprobs, batching, streaming, token ids."""

from __future__ import annotations

import concurrent.futures
from typing import Any

import httpx
import pytest
import torch

from agl_model_server.testing import forward_logprobs, sse_events

# Logprobs from the server's incremental decoding vs one full forward pass of the same model on the same tokens,
# float32: they agree to ~1e-5; the test allows 1e-3.
TOL = 1e-3
QUESTIONS = ["What is the capital of France?", "Name three colors.", "What is 2 + 2?", "Say hello in Spanish."]


def _chat(server: Any, question: str, **extra: Any) -> dict[str, Any]:
    body = {
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 16,
        "temperature": 0,
        "return_token_ids": True,
        "logprobs": True,
        **extra,
    }
    with httpx.Client(base_url=server.url, timeout=300) as c:
        response = c.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_default_model_is_cached(smol: Any) -> None:
    from agl_model_server import default_model_dir

    model, tokenizer = smol
    assert (default_model_dir() / "config.json").is_file()
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert tokenizer.chat_template


def test_logprobs_match_a_forward_pass(smol_server: Any, smol: Any) -> None:
    model, tokenizer = smol
    for extra in ({}, {"temperature": 0.8, "seed": 3}):
        body = _chat(smol_server, QUESTIONS[0], **extra)
        choice = body["choices"][0]
        prompt, ids = body["prompt_token_ids"], choice["token_ids"]
        assert tokenizer.decode(ids, skip_special_tokens=True) == choice["message"]["content"]
        temperature = extra.get("temperature", 1.0)
        served = [e["logprob"] for e in choice["logprobs"]["content"]]
        assert served == pytest.approx(forward_logprobs(model, prompt, ids, temperature), abs=TOL)
        assert choice["model_logprobs"] == pytest.approx(forward_logprobs(model, prompt, ids), abs=TOL)
    assert "Paris" in _chat(smol_server, QUESTIONS[0])["choices"][0]["message"]["content"]


@pytest.mark.slow
def test_eight_concurrent_requests_batched_and_equal_to_alone(smol_server: Any) -> None:
    alone = {q: _chat(smol_server, q)["choices"][0] for q in QUESTIONS}
    smol_server.engine.reset_stats()
    questions = QUESTIONS * 2
    with concurrent.futures.ThreadPoolExecutor(len(questions)) as pool:
        together = list(pool.map(lambda q: _chat(smol_server, q)["choices"][0], questions))
    stats = smol_server.engine.stats()
    assert stats["max_decode_batch_size"] > 1, stats
    assert sum(n for size, n in stats["decode_batch_sizes"].items() if size > 1) >= 8, stats
    for question, batched in zip(questions, together):
        assert batched["token_ids"] == alone[question]["token_ids"], question
        assert batched["message"]["content"] == alone[question]["message"]["content"]


def test_stream_matches_non_stream(smol_server: Any) -> None:
    for extra in ({}, {"temperature": 1.0, "seed": 42}):
        whole = _chat(smol_server, QUESTIONS[1], **extra)
        body = {
            "model": "smollm2-135m-instruct",
            "messages": [{"role": "user", "content": QUESTIONS[1]}],
            "max_tokens": 16,
            "temperature": 0,
            "return_token_ids": True,
            "stream": True,
            **extra,
        }
        with (
            httpx.Client(base_url=smol_server.url, timeout=300) as c,
            c.stream("POST", "/v1/chat/completions", json=body) as r,
        ):
            events = sse_events(r)
        assert events[0]["prompt_token_ids"] == whole["prompt_token_ids"]
        ids = [t for e in events for ch in e["choices"] for t in ch.get("token_ids", [])]
        text = "".join(ch["delta"].get("content", "") for e in events for ch in e["choices"])
        assert ids == whole["choices"][0]["token_ids"]
        assert text == whole["choices"][0]["message"]["content"]


def test_partial_weight_update_on_the_real_model(smol_server: Any, smol: Any) -> None:
    from safetensors.torch import save

    model, _ = smol
    name = "model.norm.weight"
    original = model.state_dict()[name].detach().clone()
    before = _chat(smol_server, QUESTIONS[2])
    with httpx.Client(base_url=smol_server.url, timeout=300) as c:
        pushed = c.post(
            "/v1/weights?partial=true",
            content=save({name: original * 0.5}),
            headers={"content-type": "application/octet-stream"},
        )
        assert pushed.status_code == 200, pushed.text
        changed = _chat(smol_server, QUESTIONS[2])
        assert changed["weights_version"] == pushed.json()["version"]
        assert changed["choices"][0]["model_logprobs"] != pytest.approx(
            before["choices"][0]["model_logprobs"], abs=1e-3
        )
        c.post(
            "/v1/weights?partial=true",
            content=save({name: original}),
            headers={"content-type": "application/octet-stream"},
        )
    after = _chat(smol_server, QUESTIONS[2])
    assert after["choices"][0]["token_ids"] == before["choices"][0]["token_ids"]
    assert after["choices"][0]["model_logprobs"] == pytest.approx(before["choices"][0]["model_logprobs"], abs=1e-5)


def test_the_server_answers_to_the_names_it_was_started_with() -> None:
    """`agl serve-model --model smollm2` answers to "smollm2" as well as the full name; another name is a 404."""
    from agl_model_server import ModelServer

    server = ModelServer(model="smollm2", max_batch_size=2).start()
    try:
        for name in ("smollm2", "smollm2-135m", "smollm2-135m-instruct"):
            assert _chat(server, QUESTIONS[2], model=name, max_tokens=2)["model"] == "smollm2-135m-instruct"
        with httpx.Client(base_url=server.url, timeout=60) as c:
            body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
            response = c.post("/v1/chat/completions", json=body)
        assert response.status_code == 404 and "smollm2-135m-instruct" in response.text
    finally:
        server.stop()
