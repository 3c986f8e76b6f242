"""The full rollout cycle, shared by every store benchmark: enqueue → dequeue → N spans → succeed.

It only needs an object with four coroutines (see :class:`CycleOps`), so the same loop measures agl's stores and,
in compare_agentlightning.py, Agent Lightning's, under identical conditions. Kept free of agl imports for that.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
from typing import Any, Protocol


class CycleOps(Protocol):
    async def enqueue(self, index: int) -> Any: ...
    async def dequeue(self, worker_id: str) -> Any: ...
    async def add_span(self, attempted: Any, index: int) -> Any: ...
    async def succeed(self, attempted: Any) -> Any: ...


async def run_cycles(ops: CycleOps, *, workers: int, rollouts: int, spans_per_rollout: int = 10) -> dict[str, float]:
    """Run ``rollouts`` full cycles spread over ``workers`` concurrent tasks; return throughput and latencies."""
    remaining = rollouts
    dequeue_latencies: list[float] = []

    async def worker(worker_index: int) -> None:
        nonlocal remaining
        worker_id = f"bench-worker-{worker_index}"
        while remaining > 0:
            remaining -= 1
            await ops.enqueue(remaining)
            started = time.perf_counter()
            attempted = await ops.dequeue(worker_id)
            dequeue_latencies.append(time.perf_counter() - started)
            if attempted is None:  # each worker enqueues before it dequeues, so FIFO always has one for it
                raise RuntimeError("dequeue found the queue empty right after an enqueue: the store lost a rollout")
            for span_index in range(spans_per_rollout):
                await ops.add_span(attempted, span_index)
            await ops.succeed(attempted)

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(workers)))
    elapsed = time.perf_counter() - started
    dequeue_latencies.sort()
    return {
        "seconds": elapsed,
        "rollouts_per_s": rollouts / elapsed,
        "spans_per_s": rollouts * spans_per_rollout / elapsed,
        "dequeue_p50_ms": 1000 * dequeue_latencies[len(dequeue_latencies) // 2],
        "dequeue_p99_ms": 1000 * dequeue_latencies[min(len(dequeue_latencies) - 1, int(len(dequeue_latencies) * 0.99))],
    }


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for a server subprocess)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB, from /proc (NaN where there is no /proc)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")
