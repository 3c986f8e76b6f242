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
    """Runs ``runner`` (a :class:`RunnerSpec`) as worker ``worker_id`` on the store at ``url``."""

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
    ) -> None:
        self.url = url
        self.token = token
        self.agent = agent
        self.runner_spec = runner
        self.tracer_spec = tracer
        self.worker_id = worker_id
        self.run_id = run_id
        self.started_at = time.time()
        self.runner: Any = None
        self.store: Any = None
        self.task: asyncio.Task[int] | None = None
        self.stop_event: asyncio.Event | None = None

    def _agent(self) -> Any:
        if isinstance(self.agent, str):
            from agl_kernel.imports import import_object

            return import_object(self.agent)
        return self.agent

    async def run(self) -> int:
        """Serve rollouts until :meth:`stop`; how many this actor finished."""
        from agl_kernel.client import LightningStoreClient
        from agl_kernel.plugins import create_component

        tracer_name, tracer_options = self.tracer_spec
        tracer = create_component("tracers", tracer_name, options=tracer_options or None)
        self.runner = self.runner_spec.make(worker_id=self.worker_id, tracer=tracer)
        self.store = LightningStoreClient(self.url, token=self.token)
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(self.runner.run(self.store, self._agent(), stop=self.stop_event))
        try:
            await asyncio.wait({self.task})
            if not self.task.cancelled():
                self.task.result()  # the runner's own error goes to the driver
            return int(getattr(self.runner, "finished", 0))
        finally:
            await self.store.close()

    async def stop(self, graceful: bool = False) -> int:
        """Stop serving: ``graceful`` lets the rollout in flight finish; otherwise it is stopped and its attempt
        marked failed, so that the store retries it at once. How many rollouts this actor finished."""
        if self.task is None or self.stop_event is None:
            return 0
        self.stop_event.set()
        if not graceful:
            self.task.cancel()
        await asyncio.wait({self.task})
        return int(getattr(self.runner, "finished", 0))

    async def status(self) -> dict[str, Any]:
        """What ``agl ray status`` shows: who and where this actor is, its rollouts finished and in flight."""
        import ray

        current: dict[str, Any] = {}
        if self.store is not None:
            try:
                workers = (await self.store.query_workers()).items
            except Exception as exc:  # the status of an actor whose store is gone is still worth showing
                current = {"store_error": f"{type(exc).__name__}: {exc}"}
            else:
                for worker in workers:
                    if worker.worker_id == self.worker_id:
                        busy = worker.status == WorkerStatus.BUSY
                        current = {
                            "worker_status": worker.status.value,
                            "rollout_id": worker.current_rollout_id if busy else None,
                            "attempt_id": worker.current_attempt_id if busy else None,
                        }
        context = ray.get_runtime_context()
        return {
            "run_id": self.run_id,
            "worker_id": self.worker_id,
            "actor_id": context.get_actor_id(),
            "node_id": context.get_node_id(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "restarted": bool(context.was_current_actor_reconstructed),
            "started_at": self.started_at,
            "running": self.task is not None and not self.task.done(),
            "finished": int(getattr(self.runner, "finished", 0)),
            "store": self.url,
            **current,
        }
