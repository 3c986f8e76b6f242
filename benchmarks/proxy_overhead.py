"""What the LLM proxy adds to one LLM call: the same chat completion called directly on a backend and through the
proxy (store server on 127.0.0.1, span recorded in the store), sequentially, with the `openai` client.

    python benchmarks/proxy_overhead.py                      # 200 calls per side, median of 3 rounds
    python benchmarks/proxy_overhead.py --store sqlite --calls 500

The backend is agl's small OpenAI-compatible test server (token ids and logprobs, answers in well under a
millisecond), so the difference is the proxy's own cost: routing, the store lookups, the forward, the span write.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time

import openai
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from agl_kernel.models import ProxyLLM
from agl_kernel.proxy import LLMProxy
from agl_kernel.server import running_server
from agl_kernel.store.defaults import make_store
from agl_kernel.testing.openai_server import FakeOpenAIServer

MESSAGES = [{"role": "user", "content": "hello there"}]


async def timed_calls(base_url: str, calls: int) -> list[float]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
    await client.chat.completions.create(model="m", messages=MESSAGES)  # warm the connection
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        await client.chat.completions.create(model="m", messages=MESSAGES, extra_body={"return_token_ids": True})
        times.append(time.perf_counter() - t0)
    await client.close()
    return times


async def one_round(store_name: str, calls: int, scratch: str) -> tuple[float, float]:
    with FakeOpenAIServer() as backend:
        store = make_store(store_name, path=f"{scratch}/proxy.db") if store_name == "sqlite" else make_store(store_name)
        async with store:
            proxy = LLMProxy(store, [backend.base_url])
            attempted = await store.start_rollout("bench")
            async with running_server(store, route_handlers=proxy.routes()) as url:
                through = ProxyLLM(endpoint=url, model="m").get_base_url(
                    attempted.rollout_id, attempted.attempt.attempt_id
                )
                direct = await timed_calls(backend.base_url, calls)
                proxied = await timed_calls(through, calls)
            await proxy.aclose()
    return statistics.median(direct) * 1000, statistics.median(proxied) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default="memory", help="memory or sqlite")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rounds = []
    with tempfile.TemporaryDirectory() as scratch, Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("rounds", total=args.rounds)
        for _ in range(args.rounds):
            rounds.append(asyncio.run(one_round(args.store, args.calls, scratch)))
            progress.advance(task)
    direct = statistics.median(r[0] for r in rounds)
    proxied = statistics.median(r[1] for r in rounds)
    table = Table(title=f"LLM proxy overhead, store={args.store}, {args.calls} calls x {args.rounds} rounds (medians)")
    for column in ("direct ms/call", "through the proxy ms/call", "overhead ms/call"):
        table.add_column(column, justify="right")
    table.add_row(f"{direct:.2f}", f"{proxied:.2f}", f"{proxied - direct:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
