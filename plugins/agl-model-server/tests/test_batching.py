"""Continuous batching: concurrent requests share decode steps, join and leave the batch, and get the answers
they would get alone."""

from __future__ import annotations

import concurrent.futures
from typing import Any

import httpx
import pytest


def _complete(server: Any, body: dict[str, Any]) -> dict[str, Any]:
    with httpx.Client(base_url=server.url, timeout=120) as c:
        response = c.post("/v1/completions", json=body)
        assert response.status_code == 200, response.text
        return response.json()


def test_concurrent_requests_are_batched_and_correct(tiny_server: Any) -> None:
    # Prompts of different lengths (left padding) and different output lengths (rows retire at different steps).
    prompts = [
        "one",
        "the quick brown fox",
        "hello world, this is",
        "what is the answer?",
        "seven",
        "ten nine eight",
        "a",
        "unicode text",
    ]
    bodies = [
        {
            "model": "tiny",
            "prompt": p,
            "max_tokens": 6 + 3 * i,
            "temperature": 0,
            "ignore_eos": True,
            "return_token_ids": True,
            "logprobs": 0,
        }
        for i, p in enumerate(prompts)
    ]
    alone = [_complete(tiny_server, b)["choices"][0] for b in bodies]
    tiny_server.engine.reset_stats()
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        together = [f.result()["choices"][0] for f in [pool.submit(_complete, tiny_server, b) for b in bodies]]
    stats = tiny_server.engine.stats()
    assert stats["max_decode_batch_size"] > 1, stats
    assert stats["generated_tokens"] == sum(b["max_tokens"] for b in bodies)
    for solo, batched in zip(alone, together):
        assert batched["token_ids"] == solo["token_ids"]
        assert batched["text"] == solo["text"]
        for a, b in zip(batched["logprobs"]["token_logprobs"], solo["logprobs"]["token_logprobs"]):
            assert abs(a - b) < 1e-4


def test_requests_join_a_running_batch(tiny_server: Any) -> None:
    """A request that arrives while another is decoding is merged into the running batch (not run after it)."""
    import threading
    import time

    long_body = {
        "model": "tiny",
        "prompt": "one two three four five",
        "max_tokens": 150,
        "temperature": 0,
        "ignore_eos": True,
        "return_token_ids": True,
    }
    short_body = {
        "model": "tiny",
        "prompt": "a",
        "max_tokens": 5,
        "temperature": 0,
        "ignore_eos": True,
        "return_token_ids": True,
    }
    solo_long = _complete(tiny_server, long_body)["choices"][0]["token_ids"]
    solo_short = _complete(tiny_server, short_body)["choices"][0]["token_ids"]
    tiny_server.engine.reset_stats()
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(long=_complete(tiny_server, long_body)))
    thread.start()
    deadline = time.monotonic() + 30
    while tiny_server.engine.stats()["decode_steps"] < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    short = _complete(tiny_server, short_body)["choices"][0]["token_ids"]
    thread.join(60)
    assert short == solo_short
    assert result["long"]["choices"][0]["token_ids"] == solo_long
    assert tiny_server.engine.stats()["decode_batch_sizes"].get(2, 0) >= 1


def test_many_requests_beyond_max_batch_size(tiny_server: Any) -> None:
    """More requests than max_batch_size (16): the rest wait and are admitted as rows retire; all complete."""
    bodies = [{"model": "tiny", "prompt": f"number {i}", "max_tokens": 4 + i % 5, "seed": i} for i in range(40)]
    tiny_server.engine.reset_stats()
    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        results = [f.result() for f in [pool.submit(_complete, tiny_server, b) for b in bodies]]
    assert all(r["choices"][0]["finish_reason"] in ("stop", "length") for r in results)
    assert tiny_server.engine.stats()["max_decode_batch_size"] <= 16


def test_identical_prompts_are_prefilled_once(tiny: tuple[Any, Any]) -> None:
    """A GRPO group (one prompt, several completions) costs one prompt's prefill; each completion is still its own
    (greedy ones equal the solo answer; sampled ones follow their own seed)."""
    import threading

    from agl_model_server._engine import Engine
    from agl_model_server._sampling import SamplingParams

    model, tokenizer = tiny
    group = tokenizer("the quick brown fox")["input_ids"]
    other = tokenizer("seven")["input_ids"]

    def run(requests: list[tuple[list[int], SamplingParams]]) -> tuple[list[list[int]], dict[str, Any]]:
        engine = Engine(model, eos_token_ids=[], max_model_len=256)
        outputs: list[list[int]] = [[] for _ in requests]
        done = threading.Semaphore(0)

        def sink_for(i: int) -> Any:
            def sink(event: Any) -> None:
                if event.token_id >= 0:
                    outputs[i].append(event.token_id)
                if event.finish_reason is not None:
                    done.release()

            return sink

        engine.start()
        with engine._cv:  # (reentrant) the engine thread takes none of them before all are queued: one admission
            for i, (prompt, params) in enumerate(requests):
                engine.submit(prompt, params, sink_for(i))
        for _ in requests:
            assert done.acquire(timeout=60)
        stats = engine.stats()
        engine.stop()
        return outputs, stats

    greedy = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    solo, _ = run([(group, greedy)])
    outputs, stats = run([(group, greedy)] * 4 + [(other, greedy)])
    assert stats["prefill_batch_sizes"] == {5: 1}
    assert stats["prefill_tokens"] == len(group) + len(other)  # not 4 × len(group) + len(other)
    assert outputs[:4] == [solo[0]] * 4
    seeded = [SamplingParams(max_tokens=8, temperature=1.0, ignore_eos=True, seed=s) for s in (1, 2, 1)]
    sampled, _ = run([(group, p) for p in seeded])
    alone, _ = run([(group, seeded[1])])
    assert sampled[0] == sampled[2] and sampled[1] == alone[0]  # the same seed, the same sample; others their own


@pytest.mark.parametrize("static", [False, True])
def test_requests_arriving_together_share_the_first_prefill(tiny: tuple[Any, Any], static: bool) -> None:
    """An idle engine waits for a quiet gap (``gather_s``) before admitting: requests sent one after another by a
    step's agents start together in one prefill instead of the first running alone."""
    import threading
    import time

    from agl_model_server._engine import Engine
    from agl_model_server._sampling import SamplingParams

    model, tokenizer = tiny
    engine = Engine(model, eos_token_ids=[], max_model_len=256, static=static, gather_s=0.2).start()
    done = threading.Semaphore(0)
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    try:
        for i in range(6):  # one by one, 20 ms apart: each gap is shorter than gather_s
            engine.submit(tokenizer(f"request {i}")["input_ids"], params, lambda e: e.finish_reason and done.release())
            time.sleep(0.02)
        for _ in range(6):
            assert done.acquire(timeout=60)
        assert engine.stats()["prefill_batch_sizes"] == {6: 1}
    finally:
        engine.stop()


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_waiting_requests_are_admitted_lowest_priority_first_then_in_order(tiny: tuple[Any, Any], static: bool) -> None:
    """With no room in the batch (one row here), requests wait and are admitted by ``priority`` (lower first; the
    LLM proxy sends each rollout's enqueue time), those of equal priority in the order they came; each as soon as
    the row before it has retired, with no new request to wake the engine (it used to sleep with some waiting)."""
    import threading
    import time

    from agl_model_server import ModelServer

    model, tokenizer = tiny
    server = ModelServer(model=model, tokenizer=tokenizer, max_batch_size=1, static_decode=static).start()
    finished: list[str] = []
    lock = threading.Lock()

    def generate(name: str, priority: int) -> None:
        server.generate(f"request {name}", max_tokens=3, temperature=0, priority=priority)
        with lock:
            finished.append(name)

    try:
        requests = [("b", 5), ("c", -1), ("d", 5), ("e", 0), ("f", 0)]
        threads = [threading.Thread(target=generate, args=request) for request in requests]
        with server.paused(bump_version=False):  # nothing runs: every request is waiting when the engine resumes
            for thread in threads:
                thread.start()
                deadline = time.monotonic() + 30  # each in the queue before the next, so "came first" is defined
                while server.engine.stats()["waiting"] < len(finished) + threads.index(thread) + 1:
                    assert time.monotonic() < deadline, server.engine.stats()
                    time.sleep(0.002)
        for thread in threads:
            thread.join(30)
        assert finished == ["c", "e", "f", "b", "d"]
    finally:
        server.stop()


def test_priority_must_be_an_integer(client: httpx.Client) -> None:
    body = {"model": "tiny", "prompt": "a", "max_tokens": 2, "priority": "high"}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 400, response.text
    assert "priority" in response.text
    assert client.post("/v1/completions", json={**body, "priority": -3}).status_code == 200
