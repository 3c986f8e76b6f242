"""agl's ``mongo`` store against Agent Lightning 0.3.0's ``MongoLightningStore``, on one secantus server.

    python benchmarks/mongo_store.py                       # 1, 8 and 32 workers, 3 runs each, medians
    python benchmarks/mongo_store.py --workers 8 --rollouts 200 --repeat 3
    python benchmarks/mongo_store.py --uri 'mongodb://127.0.0.1:27017/?replicaSet=rs0'   # a real mongod instead

Both sides run ``_cycle.run_cycles`` (enqueue → dequeue → 10 spans → succeed, N asyncio workers in one process
sharing one store) against the same server: a secantus server (``pip install 'agl-store-mongo[testing]'``; GPL,
run as a separate process only) started here on a free port of 127.0.0.1 with in-memory storage, presenting itself
as the one-node replica set ``secantus``. Agent Lightning runs in its throw-away venv (``.bench/agentlightning-0.3.0``,
made by compare_agentlightning.py's ``ensure_venv``; pymongo is added to it) through
``_agentlightning_mongo_side.py``. Every run gets a fresh database (none is dropped: secantus drops row by row under
its storage lock, which would stall the next run); runs interleave, the order flipping on odd
repeats. agl's side calls the store exactly as compare_agentlightning.py does (``store_cycle.AglOps``).

It also measures the wake-up latency of agl's store: a dequeue waiting in one store (``timeout=10``) and an enqueue
from another store on the same partition (as from another process), woken through the change stream; p50/p99 of
``--wakeups`` samples.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

BENCHMARKS_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCHMARKS_DIR.parent
sys.path.insert(0, str(BENCHMARKS_DIR))
sys.path.insert(0, str(REPO_ROOT / "plugins" / "agl-store-mongo" / "tests"))

from _cycle import median_of, run_cycles  # noqa: E402
from _secantus import SecantusServer  # noqa: E402
from compare_agentlightning import BenchError, SideProcess, ensure_venv  # noqa: E402
from store_cycle import AglOps  # noqa: E402

from agl_store_mongo import MongoLightningStore  # noqa: E402

SIDE_SCRIPT = BENCHMARKS_DIR / "_agentlightning_mongo_side.py"


async def agl_run(uri: str, workers: int, rollouts: int) -> dict[str, float]:
    store = MongoLightningStore(uri, database="agl_" + uuid.uuid4().hex[:12], partition="p")
    try:
        return await run_cycles(AglOps(store), workers=workers, rollouts=rollouts)
    finally:
        await store.close()


async def wakeups(uri: str, samples: int) -> dict[str, float]:
    partition = "w" + uuid.uuid4().hex[:12]
    waiter = MongoLightningStore(uri, database="agl_bench", partition=partition, poll_interval=3600)
    writer = MongoLightningStore(uri, database="agl_bench", partition=partition)
    latencies = []
    try:
        for _ in range(samples):
            waiting = asyncio.create_task(waiter.dequeue_rollout(timeout=10))
            await asyncio.sleep(0.05)  # the waiter is asleep on its bell
            started = time.perf_counter()
            await writer.enqueue_rollout("wake")
            got = await waiting
            latencies.append(time.perf_counter() - started)
            if got is None:
                raise BenchError("a waiting dequeue was not woken within 10 s")
    finally:
        await waiter.close()
        await writer.close()
    latencies.sort()
    return {
        "wakeup_p50_ms": 1000 * statistics.median(latencies),
        "wakeup_p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "samples": float(len(latencies)),
    }


def agentlightning_side() -> SideProcess:
    python = ensure_venv(False)
    probe = subprocess.run([str(python), "-c", "import pymongo"], capture_output=True)
    if probe.returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", "pymongo"], check=True)
    return SideProcess(python, SIDE_SCRIPT, python.parent.parent / "mongo-side-stderr.log")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,8,32")
    parser.add_argument("--rollouts", type=int, default=200, help="rollouts per run (default 200)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--wakeups", type=int, default=50, help="samples of the wake-up latency (0: skip)")
    parser.add_argument("--uri", default=None, help="a MongoDB replica set to use instead of starting secantus")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    server = None if args.uri else SecantusServer()
    uri = args.uri or server.uri  # type: ignore[union-attr]
    side = agentlightning_side()
    runs: dict[str, dict[int, list[dict[str, float]]]] = {"al": {w: [] for w in counts}, "agl": {w: [] for w in counts}}
    try:
        for workers in counts:
            for repeat in range(args.repeat):
                for name in ("al", "agl") if repeat % 2 == 0 else ("agl", "al"):
                    if name == "al":
                        result = side.run(uri=uri, workers=workers, rollouts=args.rollouts)
                    else:
                        result = asyncio.run(agl_run(uri, workers, args.rollouts))
                    runs[name][workers].append(result)
                    print(f"{workers} workers, run {repeat + 1}, {name}: {result['rollouts_per_s']:.2f} rollouts/s",
                          file=sys.stderr, flush=True)  # fmt: skip
        wake = asyncio.run(wakeups(uri, args.wakeups)) if args.wakeups else None
    finally:
        side.close()
        if server is not None:
            server.close()
    medians = {name: {w: median_of(runs[name][w]) for w in counts} for name in runs}
    report: dict[str, Any] = {
        "server": "secantus (secantusdb 0.7.0b3, in-memory)" if server else args.uri,
        "rollouts": args.rollouts,
        "repeat": args.repeat,
        "agentlightning": {"version": side.version, "results": medians["al"]},
        "agl": medians["agl"],
        "ratio": {w: medians["agl"][w]["rollouts_per_s"] / medians["al"][w]["rollouts_per_s"] for w in counts},
        "wakeup": wake,
    }
    if args.json:
        print(json.dumps(report))
        return
    print(f"Full cycle on {report['server']}, {args.rollouts} rollouts per run, median of {args.repeat}")
    print(
        "| workers | AGL 0.3.0 Mongo rollouts/s | agl mongo rollouts/s | agl / AGL | agl deq p99 ms | AGL deq p99 ms |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for w in counts:
        a, b = medians["al"][w], medians["agl"][w]
        print(f"| {w} | {a['rollouts_per_s']:.2f} | {b['rollouts_per_s']:.2f} | {report['ratio'][w]:.1f}× | "
              f"{b['dequeue_p99_ms']:.0f} | {a['dequeue_p99_ms']:.0f} |")  # fmt: skip
    if wake:
        print(f"wake-up (enqueue in one store → waiting dequeue in another): p50 {wake['wakeup_p50_ms']:.1f} ms, "
              f"p99 {wake['wakeup_p99_ms']:.1f} ms over {wake['samples']:.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
