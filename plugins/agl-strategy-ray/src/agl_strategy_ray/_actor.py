"""The runner actor: one runner of the chosen kind, serving the agent from the run's store server over HTTP.

The class is plain Python; the strategy makes it a Ray actor (``ray.remote(RunnerActor).options(...)``) with the
resources, runtime environment and restart policy of its options. Its methods are async, so Ray runs them on one
event loop in the actor's process: ``run`` (the runner's loop, until stopped) and ``status``/``stop`` alongside.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Any

from agl_kernel.models import WorkerStatus
from agl_kernel.runner import RunnerSpec


class RunnerActor:
    """Runs ``runners`` runners made from ``runner`` (a :class:`RunnerSpec`) on the store at ``url``, as worker
    ``worker_id`` (``worker_id-0``, ``worker_id-1``, ... for several: asyncio tasks of the actor's loop, for agents
    that mostly wait on an LLM)."""

    def __init__(
        self,
        *,
        url: str,
        token: str | None,
        agent: Any,
        runner: RunnerSpec,
        tracer: tuple[str, dict[str, Any]],
        worker_id: str,
        run_id: str,
        runners: int = 1,
    ) -> None:
        self.url = url
        self.token = token
        self.agent = agent
        self.runner_spec = runner
        self.tracer_spec = tracer
        self.worker_ids = worker_ids(worker_id, runners)
        self.run_id = run_id
        self.started_at = time.time()
        self.runners: list[Any] = []
        self.store: Any = None
        self.tasks: list[asyncio.Task[int]] = []
        self.stop_event: asyncio.Event | None = None

    def _agent(self) -> Any:
        if isinstance(self.agent, str):
            from agl_kernel.imports import import_object

            return import_object(self.agent)
        return self.agent

    def finished(self) -> int:
        return sum(int(getattr(r, "finished", 0)) for r in self.runners)

    async def run(self) -> int:
        """Serve rollouts until :meth:`stop`; how many this actor finished."""
        from agl_kernel.client import LightningStoreClient
        from agl_kernel.plugins import create_component

        tracer_name, tracer_options = self.tracer_spec
        tracer = create_component("tracers", tracer_name, options=tracer_options or None)
        self.runners = [self.runner_spec.make(worker_id=w, tracer=tracer) for w in self.worker_ids]
        self.store = LightningStoreClient(self.url, token=self.token)
        self.stop_event = asyncio.Event()
        agent = self._agent()
        self.tasks = [asyncio.create_task(r.run(self.store, agent, stop=self.stop_event)) for r in self.runners]
        try:
            done, _ = await asyncio.wait(self.tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]  # the runner's own error goes to the driver
            await asyncio.wait(self.tasks)
            return self.finished()
        finally:
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            await self.store.close()

    async def stop(self, graceful: bool = False) -> int:
        """Stop serving: ``graceful`` lets the rollouts in flight finish; otherwise they are stopped and their
        attempts marked failed, so that the store retries them at once. How many rollouts this actor finished."""
        if not self.tasks or self.stop_event is None:
            return 0
        self.stop_event.set()
        if not graceful:
            for task in self.tasks:
                task.cancel()
        await asyncio.wait(self.tasks)
        return self.finished()

    async def status(self) -> dict[str, Any]:
        """What ``agl ray status`` shows: who and where this actor is, its rollouts finished and in flight."""
        import ray

        current: dict[str, Any] = {"rollout_ids": []}
        if self.store is not None:
            try:
                workers = (await self.store.query_workers()).items
            except Exception as exc:  # the status of an actor whose store is gone is still worth showing
                current["store_error"] = f"{type(exc).__name__}: {exc}"
            else:
                current["rollout_ids"] = [
                    w.current_rollout_id
                    for w in workers
                    if w.worker_id in self.worker_ids and w.status == WorkerStatus.BUSY and w.current_rollout_id
                ]
        context = ray.get_runtime_context()
        return {
            "run_id": self.run_id,
            "worker_ids": self.worker_ids,
            "actor_id": context.get_actor_id(),
            "node_id": context.get_node_id(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "restarted": bool(context.was_current_actor_reconstructed),
            "started_at": self.started_at,
            "running": any(not t.done() for t in self.tasks),
            "finished": self.finished(),
            "store": self.url,
            **current,
        }


def worker_ids(worker_id: str, runners: int) -> list[str]:
    """The worker ids of an actor's runners."""
    return [worker_id] if runners == 1 else [f"{worker_id}-{j}" for j in range(runners)]
