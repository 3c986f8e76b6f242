"""Loading new weights in place: pushed bytes, a directory, the Python API; in-flight requests finish first."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import pytest
import torch

from agl_model_server.testing import forward_logprobs, make_tiny_model, sse_events, state_bytes

TOL = 1e-4  # float32 incremental decoding vs one full forward pass (see test_api)
PROMPT = {
    "model": "tiny",
    "prompt": "the answer is",
    "max_tokens": 8,
    "temperature": 0,
    "ignore_eos": True,
    "logprobs": 0,
    "return_token_ids": True,
}


def greedy(client: httpx.Client) -> tuple[list[int], list[int], list[float], int]:
    body = client.post("/v1/completions", json=PROMPT).json()
    choice = body["choices"][0]
    return (
        choice["prompt_token_ids"],
        choice["token_ids"],
        choice["logprobs"]["token_logprobs"],
        body["weights_version"],
    )


def test_push_weights_changes_logprobs_and_back(client: httpx.Client, tiny_server: Any, tiny: Any) -> None:
    model, tokenizer = tiny
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    prompt, ids, lps, version = greedy(client)
    other = make_tiny_model(len(tokenizer), seed=123)  # different weights, same architecture
    response = client.post(
        "/v1/weights", content=state_bytes(other.state_dict()), headers={"content-type": "application/octet-stream"}
    )
    assert response.status_code == 200, response.text
    info = response.json()
    assert info["version"] == version + 1 and info["previous_version"] == version
    assert info["loaded_tensors"] == len(other.state_dict())
    assert client.get("/v1/models").json()["data"][0]["weights_version"] == version + 1
    assert client.get("/v1/weights").json()["version"] == version + 1

    _, new_ids, new_lps, new_version = greedy(client)
    assert new_version == version + 1
    assert (new_ids, new_lps) != (ids, lps)
    assert new_lps == pytest.approx(forward_logprobs(other, prompt, new_ids), abs=TOL)

    # push the original weights back, with an explicit version: the first completion's logprobs come back
    response = client.post(
        f"/v1/weights?version={version + 10}",
        content=state_bytes(original),
        headers={"content-type": "application/octet-stream"},
    )
    assert response.json()["version"] == version + 10
    _, back_ids, back_lps, back_version = greedy(client)
    assert back_version == version + 10
    assert back_ids == ids and back_lps == pytest.approx(lps, abs=1e-6)


def test_load_from_directory_and_partial(client: httpx.Client, tiny_server: Any, tiny: Any, tmp_path: Any) -> None:
    model, tokenizer = tiny
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    prompt, ids, lps, _ = greedy(client)
    other = make_tiny_model(len(tokenizer), seed=7)
    other.save_pretrained(str(tmp_path / "ckpt"))
    response = client.post("/v1/weights", json={"path": str(tmp_path / "ckpt")})
    assert response.status_code == 200, response.text
    _, new_ids, new_lps, _ = greedy(client)
    assert new_lps == pytest.approx(forward_logprobs(other, prompt, new_ids), abs=TOL)

    # a partial update (one tensor) is refused unless asked for, and changes only that tensor
    one = {"lm_head.weight": original["lm_head.weight"]}
    refused = client.post("/v1/weights", content=state_bytes(one), headers={"content-type": "application/octet-stream"})
    assert refused.status_code == 400 and "partial" in refused.json()["error"]["message"]
    ok = client.post(
        "/v1/weights?partial=true", content=state_bytes(one), headers={"content-type": "application/octet-stream"}
    )
    assert ok.status_code == 200 and ok.json()["loaded_tensors"] == 1
    assert torch.equal(model.lm_head.weight, original["lm_head.weight"])
    assert torch.equal(model.model.embed_tokens.weight, other.model.embed_tokens.weight)

    # wrong shapes and unknown names change nothing
    bad = {"lm_head.weight": torch.zeros(3, 3)}
    r = client.post(
        "/v1/weights?partial=true", content=state_bytes(bad), headers={"content-type": "application/octet-stream"}
    )
    assert r.status_code == 400 and "shape" in r.json()["error"]["message"]
    r = client.post(
        "/v1/weights?partial=true",
        content=state_bytes({"nope.weight": torch.zeros(1)}),
        headers={"content-type": "application/octet-stream"},
    )
    assert r.status_code == 400 and "not in the served model" in r.json()["error"]["message"]

    tiny_server.load_state_dict(original)
    assert greedy(client)[1:3] == (ids, pytest.approx(lps, abs=1e-6))


def test_in_flight_requests_finish_with_old_weights(client: httpx.Client, tiny_server: Any, tiny: Any) -> None:
    """A weight update waits for the running request (generated entirely by the old version); requests that
    arrive meanwhile wait and then run on the new version."""
    model, _ = tiny
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    version = tiny_server.weights_version
    long_body = {
        "model": "tiny",
        "prompt": "one",
        "max_tokens": 120,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "return_token_ids": True,
    }
    results: dict[str, Any] = {}
    started = threading.Event()

    def stream_long() -> None:
        with (
            httpx.Client(base_url=tiny_server.url, timeout=120) as c,
            c.stream("POST", "/v1/completions", json=long_body) as r,
        ):
            events = []
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    started.set()
                if line.startswith("data: "):
                    events.append(line)
            results["long"] = events

    thread = threading.Thread(target=stream_long)
    thread.start()
    assert started.wait(60)
    new_version = tiny_server.load_state_dict(original)  # same values: only the version moves
    thread.join(60)
    assert new_version == version + 1
    final = [json.loads(e[6:]) for e in results["long"] if e.startswith("data: {")]
    assert final[-1]["weights_version"] == version
    assert sum(len(c.get("token_ids", [])) for e in final for c in e["choices"]) == 120
    assert greedy(client)[3] == version + 1


def test_paused_context_for_in_process_trainers(tiny_server: Any, tiny: Any) -> None:
    model, _ = tiny
    version = tiny_server.weights_version
    before = tiny_server.generate("one two", max_tokens=6, temperature=0)
    saved = model.lm_head.weight.detach().clone()
    with tiny_server.paused(), torch.no_grad():
        model.lm_head.weight.mul_(-1.0)  # an "optimizer step" on the shared module
    assert tiny_server.weights_version == version + 1
    after = tiny_server.generate("one two", max_tokens=6, temperature=0)
    assert after["weights_version"] == version + 1
    assert after["model_logprobs"] != before["model_logprobs"]
    with tiny_server.paused(bump_version=False), torch.no_grad():
        model.lm_head.weight.copy_(saved)
    again = tiny_server.generate("one two", max_tokens=6, temperature=0)
    assert again["token_ids"] == before["token_ids"]
    assert again["model_logprobs"] == pytest.approx(before["model_logprobs"], abs=1e-6)


def test_stream_abort_frees_the_engine(tiny_server: Any) -> None:
    body = {"model": "tiny", "prompt": "one", "max_tokens": 200, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=tiny_server.url, timeout=60) as c, c.stream("POST", "/v1/completions", json=body) as r:
        for i, _line in enumerate(r.iter_lines()):
            if i > 4:
                break  # the client goes away mid-stream
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        stats = tiny_server.engine.stats()
        if stats["running"] == 0 and stats["waiting"] == 0:
            break
        time.sleep(0.05)
    assert stats["running"] == 0 and stats["waiting"] == 0
    with httpx.Client(base_url=tiny_server.url, timeout=60) as c:
        assert sse_events(c.post("/v1/completions", json={**body, "max_tokens": 3}))
