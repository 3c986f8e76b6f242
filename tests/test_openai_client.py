"""agl_kernel.agent.openai_client: clients for an agent's LLM that share one connection pool per event loop."""

from __future__ import annotations

import asyncio
from typing import Any

from agl_kernel.agent import openai_client
from agl_kernel.models import LLM
from agl_kernel.testing.openai_server import FakeOpenAIServer


def test_clients_share_a_pool_per_loop_and_keep_their_endpoint_and_key() -> None:
    with FakeOpenAIServer() as server:
        other_url = server.base_url.replace("127.0.0.1", "localhost")  # another endpoint, the same server

        async def calls() -> tuple[Any, Any]:
            plain = openai_client(LLM(endpoint=server.base_url, model="m", api_key="key-1"), max_retries=0)
            routed = openai_client(LLM(endpoint=other_url, model="m"), timeout=5)
            assert (str(plain.base_url), str(routed.base_url)) == (server.base_url + "/", other_url + "/")
            assert plain._client is routed._client  # one httpx pool
            assert (plain.api_key, routed.api_key) == ("key-1", "-")
            assert (plain.max_retries, routed.timeout) == (0, 5)
            for client in (plain, routed):
                reply = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
                assert reply.choices[0].message.content == "echo: hi"
            return plain._client, routed

        first_pool, _routed = asyncio.run(calls())
        assert len(server.calls) == 2
        second_pool, _ = asyncio.run(calls())  # another event loop: its own pool
        assert second_pool is not first_pool


def test_openai_client_needs_a_running_loop() -> None:
    import pytest

    with pytest.raises(RuntimeError, match="no running event loop"):
        openai_client(LLM(endpoint="http://127.0.0.1:9/v1", model="m"))
