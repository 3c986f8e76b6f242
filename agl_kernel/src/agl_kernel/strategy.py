"""The execution-strategy interface, and the kernel's shared-memory strategy (``shm`` in ``agl.strategies``)."""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Optional

from agl_kernel.algorithm import Algorithm
from agl_kernel.runner import LitAgentRunner, Runner
from agl_kernel.store.base import LightningStore
from agl_kernel.tracer import Tracer

__all__ = ["ExecutionStrategy", "SharedMemoryStrategy"]


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
        val_dataset: Optional[Sequence[Any]] = None,
        tracer: Optional[Tracer] = None,
    ) -> Any:
        """Run the algorithm to completion with runners serving ``agent`` (traced by ``tracer``); returns the
        algorithm's report."""


class SharedMemoryStrategy(ExecutionStrategy):
    """The algorithm and ``n_runners`` runners as asyncio tasks of one event loop, sharing one store."""

    def __init__(self, *, n_runners: int = 1, runner_factory: Optional[Callable[..., Runner]] = None) -> None:
        if n_runners < 1:
            raise ValueError(f"n_runners must be at least 1, not {n_runners}")
        self.n_runners = n_runners
        self.runner_factory = runner_factory or (
            lambda index, tracer: LitAgentRunner(worker_id=f"runner-{index}", tracer=tracer, wait_seconds=0.5)
        )

    async def execute_async(
        self,
        *,
        store: LightningStore,
        algorithm: Algorithm,
        agent: Any,
        train_dataset: Sequence[Any],
        val_dataset: Optional[Sequence[Any]] = None,
        tracer: Optional[Tracer] = None,
    ) -> Any:
        stop = asyncio.Event()
        runners = [
            asyncio.create_task(self.runner_factory(i, tracer).run(store, agent, stop=stop), name=f"agl-runner-{i}")
            for i in range(self.n_runners)
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
