"""The execution-strategy interface and the kernel's strategies: ``shm`` (one process) and ``cs`` (client-server)."""

from __future__ import annotations

import abc
import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from agl_kernel.algorithm import Algorithm
from agl_kernel.runner import Runner, RunnerSpec
from agl_kernel.store.base import LightningStore
from agl_kernel.tracer import Tracer

__all__ = ["ClientServerStrategy", "ExecutionStrategy", "SharedMemoryStrategy"]


class ExecutionStrategy(abc.ABC):
    """Where the algorithm and the runners run: one process, several processes, several machines."""

    def execute(self, **kwargs: Any) -> Any:
        """:meth:`execute_async` in a new event loop."""
        return asyncio.run(self.execute_async(**kwargs))

    @abc.abstractmethod
    async def execute_async(
        self,
        *,
        store: LightningStore,
        algorithm: Algorithm,
        agent: Any,
        train_dataset: Sequence[Any],
        val_dataset: Sequence[Any] | None = None,
        tracer: Tracer | None = None,
        runner: RunnerSpec | None = None,
    ) -> Any:
        """Run the algorithm to completion with runners serving ``agent`` (traced by ``tracer``); returns the
        algorithm's report. ``runner`` says which runner to make for each slot (default: the kernel's
        ``litagent``)."""


class SharedMemoryStrategy(ExecutionStrategy):
    """The algorithm and ``n_runners`` runners as asyncio tasks of one event loop, sharing one store."""

    def __init__(self, *, n_runners: int = 1, runner_factory: Callable[..., Runner] | None = None) -> None:
        if n_runners < 1:
            raise ValueError(f"n_runners must be at least 1, not {n_runners}")
        self.n_runners = n_runners
        self.runner_factory = runner_factory
        """``(index, tracer) -> Runner``, instead of the ``runner`` spec given to :meth:`execute_async`."""

    async def execute_async(
        self,
        *,
        store: LightningStore,
        algorithm: Algorithm,
        agent: Any,
        train_dataset: Sequence[Any],
        val_dataset: Sequence[Any] | None = None,
        tracer: Tracer | None = None,
        runner: RunnerSpec | None = None,
    ) -> Any:
        spec = runner or RunnerSpec()
        factory = self.runner_factory or (lambda index, tracer: spec.make(worker_id=f"runner-{index}", tracer=tracer))
        made = [factory(i, tracer) for i in range(self.n_runners)]  # before any task starts: a bad option fails here
        stop = asyncio.Event()
        runners = [
            asyncio.create_task(r.run(store, agent, stop=stop), name=f"agl-runner-{i}") for i, r in enumerate(made)
        ]
        algo = asyncio.create_task(algorithm.run(store, train_dataset, val_dataset), name="agl-algorithm")
        try:
            while not algo.done():
                watched = {algo, *(r for r in runners if not r.done())}
                done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
                for task in done - {algo}:
                    if task.exception() is not None:  # a dead runner would leave the algorithm waiting forever
                        raise RuntimeError(f"{task.get_name()} crashed; stopping the run") from task.exception()
            return algo.result()
        finally:
            algo.cancel()
            stop.set()
            await asyncio.gather(algo, *runners, return_exceptions=True)


@attrs.define(kw_only=True)
class ClientServerOptions:
    """Options of the client-server strategy (``cs``)."""

    host: str = "127.0.0.1"
    """The address the store server listens on; runners on other machines need a reachable one (and a token)."""
    port: int = attrs.field(default=0, validator=[attrs.validators.ge(0), attrs.validators.le(65535)])
    """The store server's port; 0 picks a free one."""
    token: str | None = attrs.field(default=None, repr=False)
    """A bearer token the server requires (and the runners send)."""
    stop_timeout: float = attrs.field(default=5.0, validator=attrs.validators.ge(0))
    """Seconds runner processes get to stop after SIGTERM before they are killed."""


class ClientServerStrategy(ExecutionStrategy):
    """The store server and the algorithm in this process, ``n_runners`` runner processes talking to the server
    over HTTP (``cs`` in ``agl.strategies``).

    The runners are ``agl runner`` processes, started and stopped here: on the way out (the algorithm done, an
    error, Ctrl-C) they get SIGTERM, then SIGKILL after ``stop_timeout`` seconds, and each one also exits by itself
    when this process is gone, so no runner outlives a run. A runner that dies mid-rollout leaves its attempt to
    the store's watchdog, which finds it unresponsive (``RolloutConfig.unresponsive_seconds``, 30 s by default) and
    retries it on another runner (up to ``max_attempts``, 3 by default). More runners, on other
    machines, can join with ``agl runner --store URL --agent MODULE:NAME`` (``host`` must then be reachable and
    ``token`` set).
    """

    Options = ClientServerOptions

    def __init__(
        self,
        *,
        n_runners: int = 1,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        stop_timeout: float = 5.0,
    ) -> None:
        if n_runners < 1:
            raise ValueError(f"n_runners must be at least 1, not {n_runners}")
        self.n_runners = n_runners
        self.host = host
        self.port = port
        self.token = token
        self.stop_timeout = stop_timeout
        self.url: str | None = None
        self.processes: list[subprocess.Popen[bytes]] = []

    async def execute_async(
        self,
        *,
        store: LightningStore,
        algorithm: Algorithm,
        agent: Any,
        train_dataset: Sequence[Any],
        val_dataset: Sequence[Any] | None = None,
        tracer: Tracer | None = None,
        runner: RunnerSpec | None = None,
    ) -> Any:
        from agl_kernel.imports import object_spec
        from agl_kernel.server import running_server

        agent_spec = agent if isinstance(agent, str) else object_spec(agent)
        tracer_spec = "noop" if tracer is None else object_spec(type(tracer))
        spec = runner or RunnerSpec()
        spec.check()  # a bad runner option fails here, not in every runner process
        runner_args = spec.command_args()
        tracer_options = getattr(tracer, "agl_options", None)
        if tracer_options:
            import json

            runner_args += ["--tracer-options", json.dumps(tracer_options)]
        async with running_server(store, host=self.host, port=self.port, token=self.token) as url:
            self.url = url
            self.processes = [
                self._start_runner(url, agent_spec, tracer_spec, i, runner_args) for i in range(self.n_runners)
            ]
            try:
                await self._wait_for_runners(store)
            except BaseException:
                await asyncio.to_thread(self._stop_runners)
                raise
            algo = asyncio.create_task(algorithm.run(store, train_dataset, val_dataset), name="agl-algorithm")
            try:
                while not algo.done():
                    await asyncio.wait({algo}, timeout=0.5)
                    if all(p.poll() is not None for p in self.processes):
                        codes = ", ".join(str(p.returncode) for p in self.processes)
                        raise RuntimeError(f"every runner process exited (exit codes {codes}); stopping the run")
                return algo.result()
            finally:
                algo.cancel()
                await asyncio.gather(algo, return_exceptions=True)
                await asyncio.to_thread(self._stop_runners)

    async def _wait_for_runners(self, store: LightningStore, timeout: float = 120.0) -> None:
        """Until every runner process has registered with the store, so that the work is spread from the start."""
        expected = {f"runner-{i}" for i in range(self.n_runners)}
        deadline = time.monotonic() + timeout
        while not expected <= {w.worker_id for w in (await store.query_workers()).items}:
            dead = [p for p in self.processes if p.poll() is not None]
            if dead:
                raise RuntimeError(f"a runner process exited while starting (exit code {dead[0].returncode})")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the runner processes did not register within {timeout:.0f} s")
            await asyncio.sleep(0.1)

    def _start_runner(
        self, url: str, agent_spec: str, tracer_spec: str, index: int, runner_args: Sequence[str]
    ) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        # The runner imports the agent by module name: give it this process's import path.
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
        if self.token:
            env["AGL_STORE_TOKEN"] = self.token
        command = [
            sys.executable,
            "-m",
            "agl_kernel.cli",
            "runner",
            "--store",
            url,
            "--agent",
            agent_spec,
            "--tracer",
            tracer_spec,
            "--worker-id",
            f"runner-{index}",
            "--parent-pid",
            str(os.getpid()),
            *runner_args,
        ]
        return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)

    def _stop_runners(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for process in self.processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
