"""Agent Lightning's side of runner_overhead.py: its whole training loop on a no-op agent, timed.

Runs with the throw-away virtual environment's interpreter (the one with ``agentlightning`` installed), never the
project's, and imports nothing from agl.

    .bench/agentlightning-0.3.0/bin/python benchmarks/_agentlightning_runner_side.py --strategy shm --runners 8
    .bench/agentlightning-0.3.0/bin/python benchmarks/_agentlightning_runner_side.py --serve

The first form does one run and prints its result as JSON. ``--serve`` is what runner_overhead.py uses: importing
``agentlightning`` takes ~15 s, so one long-lived process answers requests, one JSON line in → one JSON line out
(``{"strategy": "shm"|"cs", "runners": N, "rollouts": N, "agent": "sync"|"async", "tracer": "noop"|"otel",
"poll_interval": S}``). stdout carries only that protocol; everything else goes to stderr.

One run is ``Trainer(n_runners=R, strategy=S, tracer=T, runner=LitAgentRunner(T, poll_interval=P,
interval_jitter=0), algorithm=EnqueueAllAndWait(...), initial_resources={"prompt": PromptTemplate(...)})
.dev(agent, dataset)`` on a fresh Trainer (so a fresh default ``InMemoryLightningStore``), where

* ``S`` is ``SharedMemoryExecutionStrategy(n_runners=R, main_thread="algorithm")`` (runner threads, each with its
  own event loop, sharing the store behind ``LightningStoreThreaded``; ``main_thread="runner"``, the default, only
  allows one runner) or ``ClientServerExecutionStrategy(n_runners=R, server_host="127.0.0.1", server_port=<free>)``
  (forked runner processes talking HTTP to a ``LightningStoreServer`` thread in this process);
* the agent is a ``LitAgent`` whose ``rollout`` (or ``rollout_async``) returns 1.0;
* ``T`` is :class:`NoOpTracer` (below: a ``Tracer`` that records nothing, like agl's default ``noop``; Agent
  Lightning ships no such tracer that its runner can use: ``DummyTracer`` lacks ``trace_context``) or Agent
  Lightning's ``OtelTracer``. The runner stores the reward span itself (``get_next_span_sequence_id`` +
  ``add_span``), whatever the tracer;
* ``P`` is how long a runner sleeps after finding the queue empty (Agent Lightning's default is 5 s ± 0.5 s);
* the algorithm is :class:`EnqueueAllAndWait`, the same work as agl's ``Baseline``: Agent Lightning's own
  ``Baseline`` paces itself with sleeps (``polling_interval=5`` s, at most ``max_queue_length=4`` queued) and so
  measures its sleeps, not the loop.

The timed window runs from the algorithm's first enqueue (after every runner has polled the store once) to the
algorithm having every rollout's reward; start-up (runners, server) and shut-down are reported separately.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TextIO

# litellm (imported by agentlightning) otherwise tries to download a model cost map on import, retrying for ~10 s.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import agentlightning as agl
from agentlightning.emitter.reward import find_final_reward

READY_TIMEOUT = 60.0


class NoOpTracer(agl.Tracer):
    """A tracer that records nothing (the agent emits no spans; the runner stores the reward span itself)."""

    @asynccontextmanager
    async def trace_context(self, name: str | None = None, **kwargs: Any) -> AsyncIterator[None]:
        yield None

    def get_last_trace(self) -> list:
        return []


class NoOpAgent(agl.LitAgent):
    def rollout(self, task: Any, resources: Any, rollout: Any) -> float:
        return 1.0


class NoOpAsyncAgent(agl.LitAgent):
    async def rollout_async(self, task: Any, resources: Any, rollout: Any) -> float:
        return 1.0


class EnqueueAllAndWait(agl.FastAlgorithm):
    """Publish the initial resources, wait until ``ready_workers`` runners have polled the store, then (timed)
    enqueue every task at once, wait for them all to end and read each one's final reward."""

    def __init__(self, ready_workers: int) -> None:
        super().__init__()
        self.ready_workers = ready_workers
        self.started = self.ended = 0.0
        self.rewards: list[float | None] = []
        self.statuses: dict[str, int] = {}

    async def run(self, train_dataset: Any = None, val_dataset: Any = None) -> None:
        store = self.get_store()
        resources = self.get_initial_resources()
        resources_id = (await store.update_resources("default", resources)).resources_id if resources else None
        deadline = time.monotonic() + READY_TIMEOUT
        while len(await store.query_workers()) < self.ready_workers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {self.ready_workers} runners polled the store in {READY_TIMEOUT}s")
            await asyncio.sleep(0.01)
        self.started = time.perf_counter()
        requests = [
            agl.EnqueueRolloutRequest(input=task, mode="train", resources_id=resources_id) for task in train_dataset
        ]
        pending = [rollout.rollout_id for rollout in await store.enqueue_many_rollouts(requests)]
        ended: list[Any] = []
        while pending:
            done = await store.wait_for_rollouts(rollout_ids=pending, timeout=0.5)
            for rollout in done:
                ended.append(rollout)
                self.rewards.append(find_final_reward(await store.query_spans(rollout.rollout_id, "latest")))
            finished = {rollout.rollout_id for rollout in done}
            pending = [rollout_id for rollout_id in pending if rollout_id not in finished]
        self.ended = time.perf_counter()
        for rollout in ended:
            self.statuses[rollout.status] = self.statuses.get(rollout.status, 0) + 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(
    strategy: str, runners: int, rollouts: int, agent: str = "sync", tracer: str = "noop", poll_interval: float = 0.1
) -> dict[str, Any]:
    """One run on a fresh Trainer; see the module docstring."""
    tracer_obj: agl.Tracer = NoOpTracer() if tracer == "noop" else agl.OtelTracer()
    if strategy == "shm":
        execution: Any = agl.SharedMemoryExecutionStrategy(n_runners=runners, main_thread="algorithm")
        # Every runner thread shares the Trainer's one runner object, whose worker id is the last one set: the
        # store may see only one worker, so wait for the first.
        ready = 1
    elif strategy == "cs":
        execution = agl.ClientServerExecutionStrategy(
            n_runners=runners, server_host="127.0.0.1", server_port=_free_port()
        )
        ready = runners
    else:
        raise ValueError(f"strategy must be shm or cs, not {strategy!r}")
    algorithm = EnqueueAllAndWait(ready)
    trainer = agl.Trainer(
        n_runners=runners,
        strategy=execution,
        tracer=tracer_obj,
        runner=agl.LitAgentRunner(tracer_obj, poll_interval=poll_interval, interval_jitter=0.0),
        algorithm=algorithm,
        initial_resources={"prompt": agl.PromptTemplate(template="{task}", engine="f-string")},
    )
    dataset = [{"task": index} for index in range(rollouts)]
    called = time.perf_counter()
    trainer.dev(NoOpAgent() if agent == "sync" else NoOpAsyncAgent(), dataset)
    returned = time.perf_counter()
    if not algorithm.ended:
        raise RuntimeError("the algorithm did not finish (see the log on stderr)")
    rewarded = sum(reward == 1.0 for reward in algorithm.rewards)
    if algorithm.statuses != {"succeeded": rollouts} or rewarded != rollouts:
        raise RuntimeError(
            f"expected {rollouts} succeeded rollouts with reward 1.0; got {algorithm.statuses}, "
            f"{rewarded} rewards of 1.0"
        )
    seconds = algorithm.ended - algorithm.started
    return {
        "seconds": seconds,
        "rollouts_per_s": rollouts / seconds,
        "startup_s": algorithm.started - called,
        "shutdown_s": returned - algorithm.ended,
        "wall_s": returned - called,
    }


def _version() -> str:
    from importlib.metadata import version

    return version("agentlightning")


def _protocol_stdout() -> TextIO:
    """Keep the real stdout for our JSON and send everything else printed to stdout (library chatter) to stderr."""
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    return protocol


def _run_request(request: dict[str, Any]) -> dict[str, Any]:
    return measure(
        str(request["strategy"]),
        int(request["runners"]),
        int(request["rollouts"]),
        str(request.get("agent", "sync")),
        str(request.get("tracer", "noop")),
        float(request.get("poll_interval", 0.1)),
    )


def serve() -> None:
    out = _protocol_stdout()
    out.write(json.dumps({"ready": True, "version": _version(), "python": sys.version.split()[0]}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            reply: dict[str, Any] = {"ok": True, "result": _run_request(json.loads(line))}
        except Exception:
            reply = {"ok": False, "error": traceback.format_exc()}
        out.write(json.dumps(reply) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", action="store_true", help="answer JSON-line requests on stdin (see docstring)")
    parser.add_argument("--strategy", choices=("shm", "cs"), default="shm")
    parser.add_argument("--runners", type=int, default=1)
    parser.add_argument("--rollouts", type=int, default=1000)
    parser.add_argument("--agent", choices=("sync", "async"), default="sync")
    parser.add_argument("--tracer", choices=("noop", "otel"), default="noop")
    parser.add_argument("--poll-interval", type=float, default=0.1, help="runner sleep on an empty queue (s)")
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    out = _protocol_stdout()
    request = {k: getattr(args, k) for k in ("strategy", "runners", "rollouts", "agent", "tracer", "poll_interval")}
    out.write(json.dumps({"agentlightning": _version(), **request, "result": _run_request(request)}) + "\n")


if __name__ == "__main__":
    main()
