"""Agent-side cost per span of agl's OpenTelemetry tracer (agl-tracer-otel), writing to a store in this process
(SQLite, memory) or to a store server over OTLP/HTTP.

    python benchmarks/tracer_overhead.py                                  # sqlite, memory and remote
    python benchmarks/tracer_overhead.py --target sqlite --repeat 5 --json

An agent creates spans inside a trace context (``with tracer.start_as_current_span("step") as span:
span.set_attribute(...)``, or agl's ``operation()``):

- ``burst``: back to back, as fast as it can. The writer thread then competes with the agent for the GIL, so
  this is an upper bound that includes most of the writing cost.
- ``paced``: 10 spans, then 1 ms of awaited I/O (an LLM call takes 100-1000x longer), so the writer works while
  the agent waits, as in real agents. This is the cost on the agent's hot path.

Per span: the wall time the agent's thread spent creating and ending spans (µs), and its CPU time. Baselines:
the OpenTelemetry SDK alone (a provider without processors) and agl's no-op tracer for ``operation()``.
``drain`` is how long the final ``flush()`` took; ``stored/s`` is spans stored per second from the first span to
the end of that flush. Every run checks that the store holds every span. Median of --repeat runs.

``--agentops`` adds agl's AgentOps tracer (agl-tracer-agentops, with ``agentops`` installed), writing to the
in-memory store beside the ``otel`` rows of the same store: OTel spans and ``operation()`` through it, and
``@tool``, a function decorated with AgentOps (AgentOps' own decorator work is in that row: it serialises the
call's arguments and result into attributes). One AgentOps tracer serves all its runs: AgentOps is process-wide.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from agl_kernel.emit import operation
from agl_kernel.store.memory import InMemoryLightningStore
from agl_kernel.tracer import NoOpTracer

PACE_EVERY = 10
PACE_SECONDS = 0.001


# ------------------------------------------------------------------------------------------------ targets


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RemoteServer:
    """A store server in a subprocess (SQLite file in ``scratch``), as ``agl store serve`` runs it."""

    def __init__(self, scratch: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        code = (
            "import sys; from agl_kernel.server import serve; from agl_store_sqlite import SqliteLightningStore; "
            "serve(SqliteLightningStore(sys.argv[1]), host='127.0.0.1', port=int(sys.argv[2]))"
        )
        db = os.path.join(scratch, "server.db")
        self.process = subprocess.Popen([sys.executable, "-c", code, db, str(self.port)], stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1):
                    return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the store server exited: {self.process.stderr.read().decode()}") from None
                time.sleep(0.05)
        raise RuntimeError("the store server did not start within 30 s")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(15)


def make_store(target: str, scratch: str, server: RemoteServer | None) -> Any:
    if target == "memory":
        return InMemoryLightningStore()
    if target == "sqlite":
        from agl_store_sqlite import SqliteLightningStore

        return SqliteLightningStore(os.path.join(scratch, f"bench-{time.monotonic_ns()}.db"))
    from agl_kernel.client import LightningStoreClient

    assert server is not None
    return LightningStoreClient(server.url)


# ------------------------------------------------------------------------------------------------ one run


def span_body(kind: str, otel_tracer: Any) -> Callable[[int], None]:
    if kind == "tool":
        from agentops import tool

        @tool
        def step(i: int) -> int:
            return i

        return step
    if kind == "operation":

        def body(i: int) -> None:
            with operation("step", record_io=False) as op:
                op.set_attributes({"i": i})

        return body

    def body(i: int) -> None:
        with otel_tracer.start_as_current_span("step") as span:
            span.set_attribute("i", i)

    return body


async def one_run(tracer: Any, otel_tracer: Any, store: Any, kind: str, mode: str, spans: int) -> dict[str, float]:
    body = span_body(kind, otel_tracer)
    attempted = await store.start_rollout("bench")
    rollout_id, attempt_id = attempted.rollout_id, attempted.attempt.attempt_id
    wall = cpu = 0.0
    started = time.perf_counter()
    with tracer.trace_context(rollout_id=rollout_id, attempt_id=attempt_id, store=store):
        step = spans if mode == "burst" else PACE_EVERY
        for first in range(0, spans, step):
            t0, c0 = time.perf_counter(), time.thread_time()
            for i in range(first, min(first + step, spans)):
                body(i)
            wall += time.perf_counter() - t0
            cpu += time.thread_time() - c0
            if mode == "paced":
                await asyncio.sleep(PACE_SECONDS)
    ended = time.perf_counter()
    await tracer.flush()
    drained = time.perf_counter()
    return {
        "us_per_span": wall / spans * 1e6,
        "cpu_us_per_span": cpu / spans * 1e6,
        "drain_s": drained - ended,
        "stored_per_s": spans / (drained - started),
        "rollout_id": rollout_id,  # type: ignore[dict-item]
    }


async def measure(
    target: str, kind: str, mode: str, spans: int, scratch: str, server: RemoteServer | None
) -> dict[str, float]:
    """One run of ``kind`` spans in ``mode`` through ``target`` (``sdk`` / ``noop``: the baselines)."""
    from opentelemetry.sdk.trace import TracerProvider

    from agl_tracer_otel import OtelTracer

    store = make_store("memory" if target in ("sdk", "noop", "agentops") else target, scratch, server)
    async with store:
        if target in ("sdk", "noop"):
            tracer: Any = NoOpTracer()
            otel_tracer = TracerProvider().get_tracer("bench")  # the SDK without any processor
            result = await one_run(tracer, otel_tracer, store, kind, mode, spans)
            result.pop("rollout_id")
            result["drain_s"] = float("nan")
            result["stored_per_s"] = float("nan")
            return result
        if target == "agentops":
            tracer = agentops_tracer()
            result = await one_run(tracer, tracer.otel_tracer, store, kind, mode, spans)
        else:
            tracer = OtelTracer(instrument=(), root_span=False, install_global=False)
            try:
                result = await one_run(tracer, tracer.otel_tracer, store, kind, mode, spans)
            finally:
                tracer.shutdown()
        stored = (await store.query_spans(result.pop("rollout_id"), limit=1)).total  # type: ignore[arg-type]
        if stored != spans:
            raise RuntimeError(f"{target}: {stored} of {spans} spans were stored")
        return result


_agentops: list[Any] = []


def agentops_tracer() -> Any:
    """The one AgentOps tracer of this process (AgentOps' state is process-wide), offline, without LLM spans."""
    if not _agentops:
        from agl_tracer_agentops import AgentOpsTracer

        _agentops.append(AgentOpsTracer(root_span=False))
    return _agentops[0]


async def processor_hot_path(spans: int = 20000, repeat: int = 5) -> float:
    """µs per span of agl's own work in the agent's thread: the processor's on_start + on_end, called directly on
    spans made beforehand (the rest of a span's cost is the OpenTelemetry SDK's)."""
    from agl_tracer_otel import OtelTracer

    tracer = OtelTracer(instrument=(), root_span=False, schedule_delay=3600, max_batch=spans, max_queue=spans)
    writer = tracer.writer
    results = []
    async with InMemoryLightningStore() as store:
        attempted = await store.start_rollout("bench")
        ids = {"rollout_id": attempted.rollout_id, "attempt_id": attempted.attempt.attempt_id}
        with tracer.trace_context(**ids, store=store):
            for _ in range(repeat):
                made = [tracer.otel_tracer.start_span("step") for _ in range(spans // repeat)]
                started = time.perf_counter()
                for span in made:
                    writer.on_start(span, None)
                    writer.on_end(span)
                results.append((time.perf_counter() - started) / len(made) * 1e6)
                writer._queue.clear()  # measured: not to be written
        tracer.shutdown()  # before the store closes: what the writer took before the clear is written, not lost
    return statistics.median(results)


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


# ------------------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", action="append", choices=["sqlite", "memory", "remote"], help="default: all three")
    parser.add_argument("--spans", type=int, default=20000, help="spans per burst run (paced runs: a quarter)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row; the median is reported")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--agentops", action="store_true", help="add the agentops tracer (memory store) and @tool")
    args = parser.parse_args()
    targets = args.target or ["sqlite", "memory", "remote"]
    if args.agentops and "memory" not in targets:
        targets.append("memory")  # the otel rows the agentops rows compare with
    rows: list[tuple[str, str, str]] = [
        ("sdk", "span", "burst"),
        ("sdk", "span", "paced"),
        ("noop", "operation", "paced"),
    ]
    for target in targets:
        rows += [(target, "span", "burst"), (target, "span", "paced"), (target, "operation", "paced")]
    if args.agentops:
        rows += [(t, "span", m) for t in ("agentops",) for m in ("burst", "paced")]
        rows += [("agentops", "operation", "paced"), ("agentops", "tool", "burst"), ("agentops", "tool", "paced")]

    runs: dict[str, list[dict[str, float]]] = {f"{t}/{k}/{m}": [] for t, k, m in rows}
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="agl-tracer-bench-") as scratch:
        server = RemoteServer(scratch) if "remote" in targets else None
        try:
            with Progress(console=console, transient=True) as progress:
                task = progress.add_task("tracer_overhead", total=len(rows) * args.repeat)
                for _ in range(args.repeat):  # rows interleaved, so that a busy moment does not skew one row
                    for target, kind, mode in rows:
                        spans = args.spans if mode == "burst" else args.spans // 4
                        runs[f"{target}/{kind}/{mode}"].append(
                            asyncio.run(measure(target, kind, mode, spans, scratch, server))
                        )
                        progress.advance(task)
        finally:
            if server is not None:
                server.stop()
            for tracer in _agentops:
                tracer.shutdown()
    results = {key: median_of(values) for key, values in runs.items()}
    hot_path = asyncio.run(processor_hot_path())
    for key, r in results.items():  # the tracer's own share: the same spans with the SDK (or no-op tracer) alone
        _target, kind, mode = key.split("/")
        base = results["sdk/span/" + mode] if kind in ("span", "tool") else results["noop/operation/paced"]
        r["over_baseline_us"] = r["us_per_span"] - base["us_per_span"]

    if args.json:
        print(json.dumps({"spans": args.spans, "repeat": args.repeat, "processor_us": hot_path, "results": results}))
        return
    table = Table(title=f"tracer_overhead: median of {args.repeat}; burst {args.spans} spans, paced {args.spans // 4}")
    columns = (
        "writes to",
        "span",
        "mode",
        "µs/span (agent wall)",
        "µs/span (agent CPU)",
        "+µs vs baseline",
        "drain s",
        "stored/s",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("writes to", "span", "mode") else "right")
    labels = {"sdk": "(OTel SDK alone)", "noop": "(no-op tracer)"}
    names = {"agentops": "memory, agentops tracer"}
    for key, r in results.items():
        target, kind, mode = key.split("/")
        table.add_row(
            labels.get(target, names.get(target, target)),
            {"operation": "operation()", "tool": "AgentOps @tool"}.get(kind, "OTel span"),
            mode,
            f"{r['us_per_span']:.1f}",
            f"{r['cpu_us_per_span']:.1f}",
            "-" if target in labels else f"{r['over_baseline_us']:+.1f}",
            "-" if r["drain_s"] != r["drain_s"] else f"{r['drain_s']:.3f}",
            "-" if r["stored_per_s"] != r["stored_per_s"] else f"{r['stored_per_s']:,.0f}",
        )
    Console(width=max(Console().width, 130)).print(table)
    Console().print(f"agl's processor in the agent's thread (on_start + on_end): {hot_path:.2f} µs/span")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    Console().print(f"{os.cpu_count()} CPUs, load average {load:.2f} at the end (other processes inflate every row)")


if __name__ == "__main__":
    main()
