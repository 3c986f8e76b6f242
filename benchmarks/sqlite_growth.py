"""Does the SQLite store slow down as its file grows? Cycle throughput on an empty file vs. a full one.

    python benchmarks/sqlite_growth.py                      # 100,000 rollouts x 10 spans, then measure
    python benchmarks/sqlite_growth.py --rollouts 20000     # a quicker look

Fills a file through the store API's batch methods (enqueue_many_rollouts, dequeue_many_rollouts,
add_many_spans, then every attempt succeeded), reopens it, and runs the same full cycle as store_cycle.py
(enqueue → dequeue → 10 spans → succeed, ``--workers`` asyncio tasks sharing one store) on it and on an empty
file, alternating, median of ``--repeat`` runs each. Also reports the file's size per stored span.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _cycle import median_of, run_cycles
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from store_cycle import AglOps

from agl_kernel.models import AttemptStatus, EnqueueRequest, Span
from agl_store_sqlite import SqliteLightningStore

SPANS = 10


def fill_span(rollout_id: str, attempt_id: str, index: int) -> Span:
    """The same span shape as the cycle's (store_cycle.AglOps.add_span)."""
    return Span(
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        trace_id=attempt_id,
        span_id=uuid.uuid4().hex[:16],
        name=f"step-{index}",
        attributes={"index": index},
    )


async def fill(path: str, rollouts: int, chunk: int, progress: Progress) -> None:
    task = progress.add_task("filling", total=rollouts)
    async with SqliteLightningStore(path) as store:
        done = 0
        while done < rollouts:
            n = min(chunk, rollouts - done)
            await store.enqueue_many_rollouts([EnqueueRequest(input={"task": done + i}) for i in range(n)])
            attempted = await store.dequeue_many_rollouts(limit=n, worker_id="filler")
            spans = [fill_span(a.rollout_id, a.attempt.attempt_id, i) for a in attempted for i in range(SPANS)]
            await store.add_many_spans(spans)
            await asyncio.gather(
                *(
                    store.update_attempt(a.rollout_id, a.attempt.attempt_id, status=AttemptStatus.SUCCEEDED)
                    for a in attempted
                )
            )
            done += n
            progress.update(task, completed=done)


async def measure(path: str, workers: int, rollouts: int) -> dict[str, float]:
    store = SqliteLightningStore(path)
    try:
        return await run_cycles(AglOps(store), workers=workers, rollouts=rollouts, spans_per_rollout=SPANS)
    finally:
        await store.close()


def span_bytes(path: str) -> dict[str, float]:
    conn = sqlite3.connect(path)
    try:
        spans = conn.execute("SELECT COUNT(*) FROM spans").fetchone()[0]
        pages = dict(conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall())
    finally:
        conn.close()
    size = os.path.getsize(path)
    return {
        "spans": spans,
        "file_bytes": size,
        "file_bytes_per_span": size / max(spans, 1),
        "span_table_and_index_bytes_per_span": (pages.get("spans", 0) + pages.get("spans_key", 0)) / max(spans, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollouts", type=int, default=100_000, help="rollouts stored before measuring")
    parser.add_argument("--chunk", type=int, default=2000, help="rollouts per batch while filling")
    parser.add_argument("--workers", type=int, default=8, help="concurrent workers in the measured cycle")
    parser.add_argument("--cycle-rollouts", type=int, default=3000, help="rollouts per measured run")
    parser.add_argument("--repeat", type=int, default=3, help="measured runs per file; the median is reported")
    parser.add_argument("--dir", default=None, help="where to put the files (default: a temporary directory)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()

    console = Console(stderr=True)
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        full = os.path.join(scratch, "full.db")
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console) as progress:
            started = time.perf_counter()
            asyncio.run(fill(full, args.rollouts, args.chunk, progress))
            fill_seconds = time.perf_counter() - started
            size = span_bytes(full)
            runs: dict[str, list[dict[str, float]]] = {"empty": [], "full": []}
            task = progress.add_task("measuring", total=2 * args.repeat)
            for run in range(args.repeat):  # alternate, so that drifts of the machine hit both alike
                empty = os.path.join(scratch, f"empty-{run}.db")
                runs["empty"].append(asyncio.run(measure(empty, args.workers, args.cycle_rollouts)))
                progress.advance(task)
                runs["full"].append(asyncio.run(measure(full, args.workers, args.cycle_rollouts)))
                progress.advance(task)
    results = {name: median_of(r) for name, r in runs.items()}
    ratio = results["empty"]["rollouts_per_s"] / results["full"]["rollouts_per_s"]
    report = {
        "stored_rollouts": args.rollouts,
        "stored_spans": size["spans"],
        "fill_seconds": fill_seconds,
        "workers": args.workers,
        "results": results,
        "slowdown_full_vs_empty": ratio,
        **size,
    }
    if args.json:
        print(json.dumps(report))
        return
    table = Table(title=f"sqlite_growth: cycle with {args.workers} workers, median of {args.repeat}")
    for column in ("file", "rollouts/s", "spans/s", "dequeue p50 ms", "dequeue p99 ms"):
        table.add_column(column, justify="right")
    for name, r in results.items():
        label = "empty" if name == "empty" else f"{args.rollouts:,} rollouts"
        table.add_row(
            label,
            f"{r['rollouts_per_s']:,.0f}",
            f"{r['spans_per_s']:,.0f}",
            f"{r['dequeue_p50_ms']:.3f}",
            f"{r['dequeue_p99_ms']:.3f}",
        )
    out = Console()
    out.print(table)
    out.print(
        f"slowdown full/empty: {ratio:.2f}x   filled in {fill_seconds:.0f} s   "
        f"file: {size['file_bytes'] / 1e6:,.0f} MB = {size['file_bytes_per_span']:.0f} bytes per span "
        f"(span rows + index: {size['span_table_and_index_bytes_per_span']:.0f})"
    )


if __name__ == "__main__":
    main()
