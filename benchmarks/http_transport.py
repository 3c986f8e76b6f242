"""The store's HTTP cycle through LightningStoreClient on each HTTP transport, side by side in one run.

    python benchmarks/http_transport.py                          # 1 and 16 workers, 5 repetitions
    python benchmarks/http_transport.py --workers 1,16,64 --repeat 7 --no-batch

The cycle is store_cycle.py's (enqueue → dequeue → 10 spans → succeed) against a memory store in an
`agl store serve` subprocess, so the client's transport is the only thing that changes between rows:

- ``fasthttp``: the client's own default, :class:`agl_kernel._fasthttp.FastHTTPTransport`, with the client writing
  request bytes itself (no httpx request or response objects);
- ``fasthttp via httpx.Request``: the same transport reached through httpx's request objects, as any other
  transport is (separates the transport from the client's short cut);
- ``httpx``: plain ``httpx.AsyncHTTPTransport`` (httpcore over anyio);
- ``httpx-aiohttp``: ``httpx_aiohttp.AiohttpTransport`` (aiohttp's connection pool behind httpx's interface).

Every measurement gets a fresh server; within a repetition the transports run in a rotated order, so that a
machine that slows down (or speeds up) during the run does not favour one of them. The table shows medians of
--repeat runs: rollouts per second (and the best run's: on a shared machine, the least disturbed one), and the
client process's CPU time per rollout (12 store calls; the part of the cost the transport is responsible for, and
the steadiest figure when other work shares the machine). The last column is each transport's median throughput
relative to the faster maintained one (httpx or httpx-aiohttp) at the same concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import httpx
from _cycle import free_port, run_cycles
from store_cycle import AglOps

from agl_kernel.client import LightningStoreClient

MAX_CONNECTIONS = 256
KEEPALIVE_EXPIRY = 2.0


def _limits() -> httpx.Limits:
    return httpx.Limits(
        max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS, keepalive_expiry=KEEPALIVE_EXPIRY
    )


class _Wrapped(httpx.AsyncBaseTransport):
    """Hides a transport's type from the client, so that it goes through httpx.Request like any other."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def transports() -> dict[str, Callable[[], httpx.AsyncBaseTransport] | None]:
    """name → transport factory for LightningStoreClient (None: the client's default)."""
    found: dict[str, Callable[[], httpx.AsyncBaseTransport] | None] = {}
    try:
        from agl_kernel._fasthttp import FastHTTPTransport
    except ImportError:  # the hand-written transport is gone: the default is a maintained one
        pass
    else:
        found["fasthttp"] = None
        found["fasthttp via httpx.Request"] = lambda: _Wrapped(
            FastHTTPTransport(max_connections=MAX_CONNECTIONS, keepalive_expiry=KEEPALIVE_EXPIRY)
        )
    found["httpx"] = lambda: httpx.AsyncHTTPTransport(limits=_limits())
    try:
        from httpx_aiohttp import AiohttpTransport
    except ImportError:
        print("httpx-aiohttp is not installed (pip install httpx-aiohttp): its row is left out", file=sys.stderr)
    else:
        found["httpx-aiohttp"] = lambda: AiohttpTransport(limits=_limits())
    return found


def start_server() -> tuple[subprocess.Popen[bytes], str]:
    """`agl store serve` with a memory store on a free port; returns once /health answers."""
    port = free_port()
    command = [sys.executable, "-m", "agl_kernel.cli", "store", "serve", "--backend", "memory", "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if server.poll() is not None:
            output = server.stderr.read().decode() if server.stderr else ""
            raise SystemExit(f"agl store serve exited: {output}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return server, url
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                server.kill()
                raise SystemExit("agl store serve did not answer /health within 60 s") from None
            time.sleep(0.02)


async def measure(
    url: str, factory: Callable[[], httpx.AsyncBaseTransport] | None, workers: int, rollouts: int, batch: bool
) -> dict[str, float]:
    client = LightningStoreClient(url, transport_factory=factory, max_connections=MAX_CONNECTIONS, batch_calls=batch)
    try:
        await client.server_capabilities()  # connect before the clock starts
        cpu = time.process_time()
        result = await run_cycles(AglOps(client), workers=workers, rollouts=rollouts)
        result["client_cpu_ms_per_rollout"] = 1000 * (time.process_time() - cpu) / rollouts
        return result
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,16", help="comma-separated numbers of concurrent workers")
    parser.add_argument("--rollouts", type=int, default=400, help="rollouts per run (12 store calls each)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per transport and worker count (median shown)")
    parser.add_argument("--no-batch", action="store_true", help="batch_calls=False: one HTTP request per call")
    parser.add_argument("--only", default="", help="comma-separated transport names to run (default: all)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a markdown table")
    args = parser.parse_args()
    worker_counts = [int(w) for w in args.workers.split(",")]
    factories = transports()
    if args.only:
        factories = {name: factories[name] for name in args.only.split(",")}
    names = list(factories)

    runs: dict[tuple[str, int], list[dict[str, float]]] = {(n, w): [] for n in names for w in worker_counts}
    for repetition in range(args.repeat):
        for workers in worker_counts:
            shift = repetition % len(names)
            for name in names[shift:] + names[:shift]:
                server, url = start_server()
                try:
                    result = asyncio.run(measure(url, factories[name], workers, args.rollouts, not args.no_batch))
                finally:
                    server.terminate()
                    server.wait(30)
                runs[(name, workers)].append(result)
                print(
                    f"run {repetition + 1}/{args.repeat} workers={workers} {name}: "
                    f"{result['rollouts_per_s']:.0f} rollouts/s",
                    file=sys.stderr,
                )

    medians = {
        key: {metric: statistics.median(run[metric] for run in values) for metric in values[0]}
        for key, values in runs.items()
    }
    for key, values in runs.items():  # the least disturbed run: on a shared machine, closest to what it can do
        medians[key]["best_rollouts_per_s"] = max(run["rollouts_per_s"] for run in values)
    if args.json:
        print(
            json.dumps(
                {
                    "rollouts": args.rollouts,
                    "repeat": args.repeat,
                    "batch_calls": not args.no_batch,
                    "results": [{"transport": n, "workers": w, **medians[(n, w)]} for (n, w) in medians],
                }
            )
        )
        return
    batching = "one request per call" if args.no_batch else "batch_calls on (the default)"
    print(
        f"\nhttp_transport: memory store over `agl store serve`, {args.rollouts} rollouts x (enqueue, dequeue, "
        f"10 spans, update), {batching}, median of {args.repeat}\n"
    )
    print(
        "| workers | transport | rollouts/s | best run | client CPU ms/rollout | dequeue p99 ms | vs best maintained |"
    )
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for workers in worker_counts:
        maintained = [medians[(n, workers)]["rollouts_per_s"] for n in names if n in ("httpx", "httpx-aiohttp")]
        best = max(maintained) if maintained else float("nan")
        for name in names:
            r = medians[(name, workers)]
            print(
                f"| {workers} | {name} | {r['rollouts_per_s']:,.0f} | {r['best_rollouts_per_s']:,.0f} "
                f"| {r['client_cpu_ms_per_rollout']:.2f} | {r['dequeue_p99_ms']:.2f} "
                f"| {r['rollouts_per_s'] / best:.2f}x |"
            )


if __name__ == "__main__":
    main()
