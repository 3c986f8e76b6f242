"""Agent Lightning's side of compare_agentlightning.py: the shared rollout cycle on its ``InMemoryLightningStore``.

Runs with the throw-away virtual environment's interpreter (the one that has ``agentlightning`` installed), never
the project's: it imports nothing from agl, only ``_cycle.run_cycles`` (stdlib-only) and Agent Lightning itself.

    .bench/agentlightning-0.3.0/bin/python benchmarks/_agentlightning_side.py --workers 1,8,32 --rollouts 2000
    .bench/agentlightning-0.3.0/bin/python benchmarks/_agentlightning_side.py --serve

The first form runs ``--repeat`` cycles per worker count and prints one JSON object (medians). ``--serve`` is what
compare_agentlightning.py uses: importing ``agentlightning`` takes ~15 s (it pulls in litellm, OpenTelemetry, ...),
so one long-lived process answers requests, one JSON line in → one JSON line out, and the comparison can interleave
its runs with agl's without paying the import each time. Anything the library prints goes to stderr; stdout carries
only the protocol.

Per cycle (see :class:`AgentLightningOps`), mirroring ``store_cycle.AglOps`` as closely as the API allows:

* ``enqueue_rollout(input={"task": index})``
* ``dequeue_rollout(worker_id=...)``
* 10 × (``get_next_span_sequence_id(rollout_id, attempt_id)`` then ``add_span(Span(...))``) — the store-issued
  sequence id is what Agent Lightning's own runner (reward spans in ``runner/agent.py``) and Weave tracer do before
  ``add_span``; ``add_otel_span`` does the same allocation internally but needs an OpenTelemetry ``ReadableSpan``
  built first, which is costlier. agl's ``add_span`` assigns the sequence id itself, so agl needs one call where
  Agent Lightning needs two. ``--span-mode local-seq`` skips the allocation call (sequence id = span index + 1,
  which ``add_span`` accepts and syncs its counter to) to show Agent Lightning's lower bound.
* ``update_attempt(rollout_id, attempt_id, status="succeeded")``

The ``Span`` carries the same content as agl's: trace id = attempt id, a random 16-hex span id, name ``step-{i}``,
attributes ``{"index": i}``, no times; the fields Agent Lightning requires but agl defaults are given their empty
values (status UNSET, no events/links/context/parent, an empty resource). It is built with the normal validating
constructor, as agl's msgspec ``Span`` is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import traceback
import uuid
from typing import Any, TextIO

BENCHMARKS_DIR = os.path.dirname(os.path.abspath(__file__))
if BENCHMARKS_DIR not in sys.path:
    sys.path.insert(0, BENCHMARKS_DIR)

# litellm (imported by agentlightning) otherwise tries to download a model cost map on import, retrying for ~10 s.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from _cycle import free_port, median_of, rss_mb, run_cycles  # noqa: E402

SPAN_MODES = ("store-seq", "local-seq")


class AgentLightningOps:
    """The cycle's four steps on an Agent Lightning store."""

    def __init__(self, store: Any, span_mode: str = "store-seq") -> None:
        from agentlightning.types import OtelResource, Span, TraceStatus

        if span_mode not in SPAN_MODES:
            raise ValueError(f"span_mode must be one of {SPAN_MODES}, not {span_mode!r}")
        self.store = store
        self.span_mode = span_mode
        self._span = Span
        self._status = TraceStatus
        self._resource = OtelResource

    async def enqueue(self, index: int) -> Any:
        return await self.store.enqueue_rollout(input={"task": index})

    async def dequeue(self, worker_id: str) -> Any:
        return await self.store.dequeue_rollout(worker_id=worker_id)

    async def add_span(self, attempted: Any, index: int) -> Any:
        rollout_id = attempted.rollout_id
        attempt_id = attempted.attempt.attempt_id
        if self.span_mode == "store-seq":
            sequence_id = await self.store.get_next_span_sequence_id(rollout_id, attempt_id)
        else:
            sequence_id = index + 1
        return await self.store.add_span(
            self._span(
                rollout_id=rollout_id,
                attempt_id=attempt_id,
                sequence_id=sequence_id,
                trace_id=attempt_id,
                span_id=uuid.uuid4().hex[:16],
                parent_id=None,
                name=f"step-{index}",
                status=self._status(status_code="UNSET"),
                attributes={"index": index},
                events=[],
                links=[],
                start_time=None,
                end_time=None,
                context=None,
                parent=None,
                resource=self._resource(attributes={}, schema_url=""),
            )
        )

    async def succeed(self, attempted: Any) -> Any:
        return await self.store.update_attempt(attempted.rollout_id, attempted.attempt.attempt_id, status="succeeded")


async def measure(workers: int, rollouts: int, span_mode: str = "store-seq") -> dict[str, float]:
    """One run on a fresh default ``InMemoryLightningStore()``, as agl's ``measure`` uses a fresh store."""
    from agentlightning.store.memory import InMemoryLightningStore

    store = InMemoryLightningStore()
    return await run_cycles(AgentLightningOps(store, span_mode), workers=workers, rollouts=rollouts)


async def measure_remote(workers: int, rollouts: int, span_mode: str = "store-seq") -> dict[str, float]:
    """The same cycle through Agent Lightning's own server and client: a fresh ``agl store`` process (its CLI,
    in-memory backend, on a free port of 127.0.0.1) per run, and one ``LightningStoreClient`` shared by the
    workers, as agl's ``store_cycle.measure_remote`` does with ``agl store serve``. Start-up is process start to
    the first 200 from its /v1/agl/health; RSS is the server's after the run."""
    import subprocess
    import time
    import urllib.error
    import urllib.request

    from agentlightning.store.client_server import LightningStoreClient

    port = free_port()
    agl_cli = os.path.join(os.path.dirname(sys.executable), "agl")
    command = [agl_cli, "store", "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"]
    started = time.perf_counter()
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=sys.stderr)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"`{' '.join(command)}` exited with status {server.returncode}")
            try:
                with urllib.request.urlopen(f"{url}/v1/agl/health", timeout=1) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.01)
        startup = time.perf_counter() - started
        client = LightningStoreClient(url)
        try:
            result = await run_cycles(AgentLightningOps(client, span_mode), workers=workers, rollouts=rollouts)
        finally:
            await client.close()
        return {**result, "server_startup_s": startup, "server_rss_mb": rss_mb(server.pid)}
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _version() -> str:
    from importlib.metadata import version

    return version("agentlightning")


def _protocol_stdout() -> TextIO:
    """Keep the real stdout for our JSON and send everything else printed to stdout (library chatter) to stderr."""
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    return protocol


def serve() -> None:
    out = _protocol_stdout()
    import agentlightning.store.client_server
    import agentlightning.store.memory  # noqa: F401

    out.write(json.dumps({"ready": True, "version": _version(), "python": sys.version.split()[0]}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            run_once = measure_remote if request.get("remote") else measure
            result = asyncio.run(
                run_once(int(request["workers"]), int(request["rollouts"]), request.get("span_mode", "store-seq"))
            )
            reply: dict[str, Any] = {"ok": True, "result": result}
        except Exception:
            reply = {"ok": False, "error": traceback.format_exc()}
        out.write(json.dumps(reply) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", action="store_true", help="answer JSON-line requests on stdin (see docstring)")
    parser.add_argument("--workers", default="1,8,32", help="comma-separated worker counts")
    parser.add_argument("--rollouts", type=int, default=2000, help="rollouts per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per worker count; the median is reported")
    parser.add_argument("--span-mode", choices=SPAN_MODES, default="store-seq", help="see the docstring")
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    out = _protocol_stdout()
    results: dict[int, dict[str, float]] = {}
    for workers in (int(w) for w in args.workers.split(",")):
        runs = [asyncio.run(measure(workers, args.rollouts, args.span_mode)) for _ in range(args.repeat)]
        results[workers] = median_of(runs)
    out.write(
        json.dumps(
            {
                "agentlightning": _version(),
                "store": "InMemoryLightningStore",
                "span_mode": args.span_mode,
                "rollouts": args.rollouts,
                "repeat": args.repeat,
                "results": results,
            }
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
