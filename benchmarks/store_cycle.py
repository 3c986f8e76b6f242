"""Full rollout-cycle throughput of a store: enqueue → dequeue → 10 spans → succeed, with 1, 8 and 32 workers.

    python benchmarks/store_cycle.py --store memory
    python benchmarks/store_cycle.py --store sqlite --option synchronous=FULL
    python benchmarks/store_cycle.py --store sqlite --remote   # through `agl store serve` and HTTP

Every worker is an asyncio task in this process sharing one store instance. With --remote, the store runs in an
`agl store serve` subprocess (a fresh one per run, on a free port) and the workers share one LightningStoreClient;
the table then also shows the server's start-up time (process start to /health OK) and its RSS after the run.
Prints the median of --repeat runs (a fresh store for each) as a table, or JSON with --json.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import sys
import tempfile
import uuid
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _cycle import free_port, median_of, rss_mb, run_cycles
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from agl_kernel.models import AttemptStatus, Span
from agl_kernel.plugins import create_component, load_component


class AglOps:
    """The cycle's four steps on an agl store."""

    def __init__(self, store: Any) -> None:
        self.store = store

    async def enqueue(self, index: int) -> Any:
        return await self.store.enqueue_rollout({"task": index})

    async def dequeue(self, worker_id: str) -> Any:
        return await self.store.dequeue_rollout(worker_id=worker_id)

    async def add_span(self, attempted: Any, index: int) -> Any:
        return await self.store.add_span(
            Span(
                rollout_id=attempted.rollout_id,
                attempt_id=attempted.attempt.attempt_id,
                trace_id=attempted.attempt.attempt_id,
                span_id=uuid.uuid4().hex[:16],
                name=f"step-{index}",
                attributes={"index": index},
            )
        )

    async def succeed(self, attempted: Any) -> Any:
        return await self.store.update_attempt(
            attempted.rollout_id, attempted.attempt.attempt_id, status=AttemptStatus.SUCCEEDED
        )


def parse_options(store_name: str, pairs: list[str], scratch: str) -> dict[str, Any]:
    """``key=value`` pairs; values that read as JSON (numbers, true/false) are converted. A store that keeps a file
    gets one in the scratch directory unless ``path`` is given, so runs never share or litter a file."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--option takes key=value, not {pair!r}")
        value = value.replace("{tmp}", scratch)
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    if "path" not in options and "path" in inspect.signature(load_component("stores", store_name)).parameters:
        options["path"] = os.path.join(scratch, "bench.db")
    return options


async def measure(store_name: str, options: dict[str, Any], workers: int, rollouts: int) -> dict[str, float]:
    store = create_component("stores", store_name, **options)
    try:
        return await run_cycles(AglOps(store), workers=workers, rollouts=rollouts)
    finally:
        await store.close()


async def measure_remote(store_name: str, options: dict[str, Any], workers: int, rollouts: int) -> dict[str, float]:
    """The same cycle through `agl store serve` (a subprocess) and LightningStoreClient."""
    import subprocess
    import time

    import httpx

    from agl_kernel.client import LightningStoreClient

    port = free_port()
    command = [sys.executable, "-m", "agl_kernel.cli", "store", "serve", "--backend", store_name, "--port", str(port)]
    for key, value in options.items():
        command += ["--path", str(value)] if key == "path" else ["--option", f"{key}={json.dumps(value)}"]
    started = time.perf_counter()
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as probe:
            while True:
                if server.poll() is not None:
                    output = server.stderr.read().decode() if server.stderr else ""
                    raise SystemExit(f"agl store serve exited: {output}")
                try:
                    if (await probe.get(f"{url}/health", timeout=1)).status_code == 200:
                        break
                except httpx.HTTPError:
                    await asyncio.sleep(0.01)
        startup = time.perf_counter() - started
        client = LightningStoreClient(url)
        try:
            result = await run_cycles(AglOps(client), workers=workers, rollouts=rollouts)
        finally:
            await client.close()
        return {**result, "server_startup_s": startup, "server_rss_mb": rss_mb(server.pid)}
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default="memory", help="store plugin name (agl plugins --kind stores)")
    parser.add_argument("--option", action="append", default=[], help="store option key=value ({tmp} = scratch dir)")
    parser.add_argument("--workers", default="1,8,32", help="comma-separated worker counts")
    parser.add_argument("--rollouts", type=int, default=3000, help="rollouts per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per worker count; the median is reported")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--remote", action="store_true", help="run the store in `agl store serve`, over HTTP")
    args = parser.parse_args()
    worker_counts = [int(w) for w in args.workers.split(",")]

    results: dict[int, dict[str, float]] = {}
    console = Console(stderr=True)
    # No auto-refresh: a 10 Hz refresh thread would take the GIL during the measurement and show up in the p99.
    progress_bar = Progress(console=console, transient=True, auto_refresh=False)
    with tempfile.TemporaryDirectory() as scratch, progress_bar as progress:
        task = progress.add_task(f"store={args.store}", total=len(worker_counts) * args.repeat)
        for workers in worker_counts:
            runs = []
            for run in range(args.repeat):
                run_dir = os.path.join(scratch, f"w{workers}-r{run}")
                os.makedirs(run_dir)
                options = parse_options(args.store, args.option, run_dir)
                run_once = measure_remote if args.remote else measure
                runs.append(asyncio.run(run_once(args.store, options, workers, args.rollouts)))
                progress.advance(task)
                progress.refresh()
            results[workers] = median_of(runs)

    if args.json:
        print(
            json.dumps(
                {
                    "store": args.store,
                    "remote": args.remote,
                    "rollouts": args.rollouts,
                    "repeat": args.repeat,
                    "results": results,
                }
            )
        )
        return
    where = " over HTTP (agl store serve)" if args.remote else ""
    title = f"store_cycle: store={args.store}{where}, {args.rollouts} rollouts x 10 spans, median of {args.repeat}"
    table = Table(title=title)
    columns = ["workers", "rollouts/s", "spans/s", "dequeue p50 ms", "dequeue p99 ms"]
    for column in columns + (["server start s", "server RSS MB"] if args.remote else []):
        table.add_column(column, justify="right")
    for workers, r in results.items():
        remote_cells = [f"{r['server_startup_s']:.2f}", f"{r['server_rss_mb']:.0f}"] if args.remote else []
        table.add_row(
            str(workers),
            f"{r['rollouts_per_s']:,.0f}",
            f"{r['spans_per_s']:,.0f}",
            f"{r['dequeue_p50_ms']:.3f}",
            f"{r['dequeue_p99_ms']:.3f}",
            *remote_cells,
        )
    Console(width=max(120, Console().width)).print(table)


if __name__ == "__main__":
    main()
