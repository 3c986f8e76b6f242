"""Several LoRA adapters over one base model: served together in one decode batch, each row with its own low-rank
delta, on both decode paths; each adapter's weights swapped alone."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import torch

from agl_model_server.testing import make_tiny_model

_TARGETS = ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")


def _adapter(model: Any, seed: int, rank: int = 4, targets: tuple[str, ...] = _TARGETS) -> dict[str, torch.Tensor]:
    """Random LoRA pairs on ``targets`` of every layer: big enough to change greedy tokens."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(targets):
            state[f"{name}.lora_A"] = torch.randn(rank, module.in_features, generator=generator) * 0.3
            state[f"{name}.lora_B"] = torch.randn(module.out_features, rank, generator=generator) * 0.3
    return state


@pytest.fixture(params=["dynamic", "static"])
def lora_server(request: pytest.FixtureRequest, tiny: tuple[Any, Any]) -> Iterator[Any]:
    """A server of its own (adapters change it) on a fresh copy of the tiny model, with two adapters."""
    from agl_model_server import ModelServer

    _, tokenizer = tiny
    model = make_tiny_model(len(tokenizer))
    server = ModelServer(
        model=model, tokenizer=tokenizer, model_name="tiny", max_batch_size=16, static_decode=request.param == "static"
    ).start()
    server.load_adapter("planner", _adapter(model, 1), scale=2.0)
    server.load_adapter("solver", _adapter(model, 2, rank=8, targets=("self_attn.k_proj", "mlp.up_proj")))
    yield server
    server.stop()


def _complete(server: Any, model: str, prompt: str, max_tokens: int = 12) -> list[int]:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    with httpx.Client(base_url=server.url, timeout=120) as c:
        response = c.post("/v1/completions", json={**body, "return_token_ids": True})
        assert response.status_code == 200, response.text
        assert response.json()["model"] == model
        return list(response.json()["choices"][0]["token_ids"])


def test_adapters_in_one_batch_give_what_each_gives_alone(lora_server: Any) -> None:
    prompts = ["one two", "the quick brown fox", "hello world", "one two"]
    jobs = [(model, prompt) for prompt in prompts for model in ("tiny", "tiny:planner", "tiny:solver")]
    alone = [_complete(lora_server, model, prompt) for model, prompt in jobs]
    lora_server.engine.reset_stats()
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(lambda job: _complete(lora_server, *job), jobs))
    assert lora_server.engine.stats()["max_decode_batch_size"] >= 6  # the adapters' rows really shared steps
    assert together == alone
    # ... and the adapters change the output (a test that could not tell them apart would prove nothing)
    for i in range(0, len(jobs), 3):
        assert len({tuple(alone[i]), tuple(alone[i + 1]), tuple(alone[i + 2])}) == 3, jobs[i]


def test_an_adapter_matches_its_merged_weights(lora_server: Any, tiny: tuple[Any, Any]) -> None:
    """Served as an adapter = the base weights with ``W + s·B·A`` merged in (greedy tokens, one full forward)."""
    _, tokenizer = tiny
    model = make_tiny_model(len(tokenizer))
    state = _adapter(model, 1)
    with torch.no_grad():
        for name, module in model.named_modules():
            if f"{name}.lora_A" in state:
                module.weight += 2.0 * state[f"{name}.lora_B"] @ state[f"{name}.lora_A"]
    prompt = tokenizer("the quick brown fox")["input_ids"]
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(10):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    served = lora_server.generate(prompt, max_tokens=10, temperature=0, adapter="planner")
    assert served["token_ids"] == ids[len(prompt) :]


def test_new_adapter_weights_change_only_that_adapter(lora_server: Any) -> None:
    before = {m: _complete(lora_server, m, "hello world") for m in ("tiny", "tiny:planner", "tiny:solver")}
    version = lora_server.load_adapter("planner", _adapter(lora_server.model, 7), scale=2.0)
    assert version == 2 and lora_server.adapters == {"planner": 2, "solver": 1}
    after = {m: _complete(lora_server, m, "hello world") for m in before}
    assert after["tiny"] == before["tiny"]
    assert after["tiny:solver"] == before["tiny:solver"]
    assert after["tiny:planner"] != before["tiny:planner"]


def test_adapter_errors_are_clear(lora_server: Any) -> None:
    from agl_model_server import WeightsError

    with httpx.Client(base_url=lora_server.url, timeout=60) as c:
        response = c.post("/v1/completions", json={"model": "tiny:critic", "prompt": "one", "max_tokens": 2})
        assert response.status_code == 404
        message = response.json()["error"]["message"]
        assert "'critic' is not loaded" in message and "'tiny:planner'" in message and "'tiny:solver'" in message
        ids = [card["id"] for card in c.get("/v1/models").json()["data"]]
        assert ids == ["tiny", "tiny:planner", "tiny:solver"]
    good = _adapter(lora_server.model, 3)
    wrong_shape = {k: (v[:, :3] if k.endswith("lora_A") else v) for k, v in good.items()}
    with pytest.raises(WeightsError, match="expected|->"):
        lora_server.load_adapter("planner", wrong_shape)
    with pytest.raises(WeightsError, match="not a linear layer"):
        lora_server.load_adapter(
            "planner", {"model.nope.lora_A": torch.zeros(2, 2), "model.nope.lora_B": torch.zeros(2, 2)}
        )
    with pytest.raises(WeightsError, match="not allowed"):
        lora_server.load_adapter("a:b", good)
    assert lora_server.adapters == {"planner": 1, "solver": 1}  # nothing changed
