"""Smoke use of agl-model-server installed alone with the kernel (``tools/check_plugins_alone.py`` runs it with a
fresh venv's python; it needs nothing else, not even pytest): serve a tiny random Llama with its own small
tokenizer (built here, nothing downloaded) on 127.0.0.1 and answer one chat completion with token ids."""

from __future__ import annotations

import sys

import httpx
import torch

from agl_model_server import ModelServer
from agl_model_server.testing import make_tiny_model, make_tiny_tokenizer


def check(condition: object, what: str) -> None:
    if not condition:
        sys.exit(f"smoke failed: {what}")


def main() -> None:
    torch.set_num_threads(1)  # a tiny model: threads only cost
    tokenizer = make_tiny_tokenizer()
    server = ModelServer(model=make_tiny_model(len(tokenizer)), tokenizer=tokenizer, model_name="tiny")
    server.start(host="127.0.0.1", port=0)
    try:
        request = {
            "model": "tiny",
            "messages": [{"role": "user", "content": "what is the answer?"}],
            "max_tokens": 8,
            "temperature": 0,
            "return_token_ids": True,
        }
        response = httpx.post(f"{server.base_url}/chat/completions", json=request, timeout=60)
        check(response.status_code == 200, f"POST /v1/chat/completions: {response.status_code} {response.text}")
        body = response.json()
        choice = body["choices"][0]
        check(body["prompt_token_ids"] and choice["token_ids"], f"no token ids in the response: {body}")
        check(1 <= len(choice["token_ids"]) <= 8, f"{len(choice['token_ids'])} tokens for max_tokens=8")
        check(choice["finish_reason"] in ("stop", "length"), f"finish_reason {choice['finish_reason']!r}")
    finally:
        server.stop()
    print(f"agl-model-server smoke: ok ({server.url}: a chat completion of {len(choice['token_ids'])} tokens)")


if __name__ == "__main__":
    main()
