"""The ``vllm`` backend against a real vLLM server (one per session, see conftest): completions and chat with token
ids and logprobs through agl's LLM proxy into a real store; logprobs that are the model's; weights swapped at
runtime and restored exactly; attaching to a running server; a server that crashes at start."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from agl_kernel import semconv
from agl_kernel.errors import ConfigError
from agl_kernel.models import ProxyLLM
from agl_kernel.plugins import create_component
from agl_llm_vllm import VLLMBackend, VLLMServerError
from agl_llm_vllm.testing import SERVED_NAME, greedy
from agl_model_server.testing import forward_logprobs

# The session fixture starts vLLM (~1-3 min on a loaded 2-core CPU) in whichever test comes first.
pytestmark = pytest.mark.timeout(900)
TOL = 2e-3  # vLLM's float32 CPU kernels against transformers' float32 forward pass


def test_completions_and_chat_go_through_the_proxy_into_the_store_with_token_ids(
    served: VLLMBackend, tmp_path: Path
) -> None:
    from agl_kernel.proxy import LLMProxy
    from agl_kernel.server import running_server

    async def main() -> tuple[list[Any], list[Any]]:
        store = create_component("stores", "sqlite", options={"path": str(tmp_path / "agl.db")})
        try:
            proxy = LLMProxy(store, [served.base_url])
            attempted = await store.start_rollout({"q": 1})
            async with running_server(store, route_handlers=proxy.routes(), plugins=False) as url:
                base = ProxyLLM(endpoint=url, model=SERVED_NAME).get_base_url(
                    attempted.rollout_id, attempted.attempt.attempt_id
                )

                def calls() -> list[Any]:
                    with httpx.Client(base_url=base, timeout=300) as client:
                        chat = client.post(
                            "/chat/completions",
                            json={
                                "model": SERVED_NAME,
                                "messages": [{"role": "user", "content": "What is 2 + 3?"}],
                                "max_tokens": 12,
                                "temperature": 0,
                            },
                        )
                        completion = client.post(
                            "/completions",
                            json={"model": SERVED_NAME, "prompt": "1, 2, 3,", "max_tokens": 6, "temperature": 0},
                        )
                        return [chat, completion]

                answers = await asyncio.to_thread(calls)
            await proxy.aclose()
            spans = (await store.query_spans(attempted.rollout_id)).items
            return answers, spans
        finally:
            await store.close()

    answers, spans = asyncio.run(main())
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    calls = [s for s in spans if semconv.LLM_RESPONSE_TOKEN_IDS in s.attributes]
    assert len(calls) == 2, [s.name for s in spans]
    for span in calls:
        prompt = span.attributes[semconv.LLM_PROMPT_TOKEN_IDS]
        response = span.attributes[semconv.LLM_RESPONSE_TOKEN_IDS]
        logprobs = span.attributes[semconv.LLM_RESPONSE_LOGPROBS]
        assert prompt and response and len(logprobs) == len(response)
        assert all(lp <= 0 for lp in logprobs)
        assert span.attributes[semconv.LLM_BACKEND] == served.base_url
    chat = answers[0].json()
    assert calls[0].attributes[semconv.LLM_RESPONSE_TOKEN_IDS] == chat["choices"][0]["token_ids"]


def test_the_logprobs_are_those_of_the_sampling_distribution(served: VLLMBackend, smol: tuple[Any, Any]) -> None:
    model, _ = smol
    out = greedy(served.base_url, "Water boils at", tokens=8)
    assert len(out["ids"]) == 8
    assert out["logprobs"] == pytest.approx(forward_logprobs(model, out["prompt"], out["ids"]), abs=TOL)
    # sampled at a temperature: the logprobs of the distribution sampled from (as GRPO's trainer computes them)
    sampled = greedy(served.base_url, "Water boils at", tokens=8, temperature=0.7)
    expected = forward_logprobs(model, sampled["prompt"], sampled["ids"], temperature=0.7)
    assert sampled["logprobs"] == pytest.approx(expected, abs=TOL)


def test_new_weights_change_the_output_and_the_old_ones_restore_it_exactly(
    served: VLLMBackend, smol: tuple[Any, Any]
) -> None:
    model, _ = smol
    original = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    before = greedy(served.base_url)
    changed = dict(original)
    generator = torch.Generator().manual_seed(0)
    for name in [n for n in original if n.endswith("mlp.down_proj.weight")]:
        noise = torch.randn(original[name].shape, generator=generator) * original[name].std() * 0.5
        changed[name] = original[name] + noise
    try:
        asyncio.run(served.load_weights(changed, version=1))
        swap = dict(served.last_swap)
        after = greedy(served.base_url)
    finally:
        asyncio.run(served.load_weights(original, version=2))
    restored = greedy(served.base_url)

    assert after["prompt"] == before["prompt"]
    assert after["ids"] != before["ids"] or after["logprobs"] != pytest.approx(before["logprobs"], abs=1e-2)
    assert restored["ids"] == before["ids"]
    assert restored["logprobs"] == pytest.approx(before["logprobs"], abs=1e-5)
    assert swap["total"] > 0 and set(swap) == {"total", "save", "reload"}  # the disk path on a CPU


def test_a_backend_attaches_to_a_running_server(served: VLLMBackend) -> None:
    async def main() -> str:
        attached = VLLMBackend(url=served.base_url)
        try:
            return await attached.start(None, None, model_name=SERVED_NAME)
        finally:
            await attached.stop()

    assert asyncio.run(main()) == served.base_url
    with pytest.raises(ConfigError, match=r"serves \['policy'\], not 'other': start it with --served-model-name"):
        asyncio.run(VLLMBackend(url=served.base_url).start(None, None, model_name="other"))
    assert httpx.get(f"{served.root}/health", timeout=10).status_code == 200  # an attached backend stops nothing


def test_a_server_that_crashes_at_start_is_one_clear_line(vllm_python: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "no-such-architecture", "architectures": ["X"]}))
    backend = VLLMBackend(python=vllm_python, model=str(broken), enforce_eager=True, startup_timeout=300)
    with pytest.raises(VLLMServerError) as caught:
        asyncio.run(backend.start(None, None, model_name="x"))
    message = str(caught.value)
    assert message.startswith("the vLLM server exited with code ") and "\n" not in message
    assert "whole log: " in message
    log = Path(message.rsplit("whole log: ", 1)[1].rstrip(")"))
    assert log.is_file()  # kept for reading after a failed start
    log.unlink()
