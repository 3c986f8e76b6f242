"""The ``ray`` execution strategy: the store server and the algorithm in this process (the Ray driver), runners as
Ray actors anywhere on the cluster, talking to the store over HTTP.

What it does and why:

- **Actors.** Each runner slot is a :class:`~agl_strategy_ray._actor.RunnerActor` with the resources, runtime
  environment and restart policy of the options, named ``agl-runner-<run id>-<n>`` in the options' namespace (what
  ``agl ray status`` lists). The actors are owned by this driver, not detached: when the driver dies, Ray kills
  them (and a local cluster the driver started goes with it).
- **Faults.** An actor that dies (killed, out of memory, its node lost) first has its rollout in flight marked
  ``failed`` here, so the store's normal retry path requeues it at once instead of after
  ``unresponsive_seconds``; then Ray restarts the actor (``max_restarts``) and the driver sets it serving again,
  or, once Ray gives up on it, a new actor takes its slot. The store ends each rollout once whatever arrives late.
- **Scaling.** :meth:`RayStrategy.scale` (from any thread, or from the algorithm) sets the number of actors: new
  ones start at once; surplus ones finish their rollout in flight, then stop, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import attrs

from agl_kernel.algorithm import Algorithm
from agl_kernel.errors import AglError, InvalidStatusTransitionError, NotFoundError
from agl_kernel.models import AttemptStatus
from agl_kernel.runner import RunnerSpec
from agl_kernel.store.base import LightningStore
from agl_kernel.strategy import ExecutionStrategy
from agl_kernel.tracer import Tracer
from agl_strategy_ray._actor import RunnerActor, worker_ids
from agl_strategy_ray._cluster import connect, disconnect
from agl_strategy_ray._options import RayStrategyOptions

log = logging.getLogger(__name__)

ACTOR_PREFIX = "agl-runner-"
"""Runner actors are named ``agl-runner-<run id>-<n>``."""


class RayStrategyError(AglError):
    """The ray strategy could not run: an actor that does not start, a runner that crashed."""


@attrs.define
class _Slot:
    """One runner actor, as the driver tracks it."""

    index: int
    name: str
    worker_ids: list[str]
    handle: Any
    run_ref: Any = None
    ping_ref: Any = None
    ping_deadline: float = 0.0
    stopping: bool = False
    restarts: int = 0


class RayStrategy(ExecutionStrategy):
    """Runners as Ray actors over a Ray cluster, the store server and the algorithm in the driver process.

    Registered as ``ray`` in ``agl.strategies``: ``RayStrategy(n_runners=4, address="auto", num_cpus=0.5)``, or
    by name: ``Trainer(strategy="ray", options={"strategy": {"address": "auto"}})``, ``agl train --strategy ray
    --set strategy.runners=8``. The options (:class:`RayStrategyOptions`) say where the cluster is and what each
    actor gets.
    """

    Options = RayStrategyOptions

    def __init__(self, *, n_runners: int = 1, **options: Any) -> None:
        if n_runners < 1:
            raise ValueError(f"n_runners must be at least 1, not {n_runners}")
        self.options = RayStrategyOptions(**options)
        self.n_runners = self.options.runners or n_runners
        self.url: str | None = None
        """The store server the actors use (set while a run goes on)."""
        self.run_id: str | None = None
        self.slots: list[_Slot] = []
        self.replaced = 0
        """Actors that died for good and were replaced by new ones, in the last run."""
        self.restarted = 0
        """Actors that died and were restarted by Ray, in the last run."""
        self._target = self.n_runners
        self._next_index = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    @classmethod
    def from_options(cls, options: RayStrategyOptions, **objects: Any) -> RayStrategy:
        return cls(**objects, **attrs.asdict(options, recurse=False))

    # ------------------------------------------------------------------------------------------------ public

    def scale(self, n_runners: int) -> None:
        """Run ``n_runners`` actors from now on (from any thread): new ones start at once, surplus ones stop after
        their rollout in flight."""
        if n_runners < 1:
            raise ValueError(f"n_runners must be at least 1, not {n_runners}")
        with self._lock:
            self._target = n_runners
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the run is over
                loop.call_soon_threadsafe(wake.set)

    @property
    def actor_names(self) -> list[str]:
        """The runner actors serving now (``agl ray status`` shows them)."""
        return [s.name for s in self.slots if not s.stopping]

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

        spec = runner or RunnerSpec()
        spec.check()  # a bad runner option fails here, not in every actor
        if not isinstance(spec.component, str):
            spec = RunnerSpec(object_spec(spec.component), spec.options)
        tracer_spec: tuple[str, dict[str, Any]] = ("noop", {})
        if tracer is not None:
            tracer_spec = (object_spec(type(tracer)), dict(getattr(tracer, "agl_options", None) or {}))
        agent_spec = _agent_spec(agent)
        options = self.options
        self.run_id = str(getattr(store, "run_id", None) or f"run-{uuid.uuid4().hex[:12]}")
        self.slots, self.replaced, self.restarted, self._next_index = [], 0, 0, 0
        self._target = self.n_runners
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        connected = connect(
            options.address,
            namespace=options.namespace,
            node_ip_address=options.node_ip_address,
            local_cpus=options.local_cpus,
        )
        try:
            async with contextlib.AsyncExitStack() as stack:
                token = options.token
                if options.store_url is not None:
                    url = options.store_url
                else:
                    from agl_kernel.server import running_server

                    token = token or secrets.token_urlsafe(24)
                    served = await stack.enter_async_context(
                        running_server(store, host=options.host, port=options.port, token=token)
                    )
                    url = self._advertised(served)
                self.url = url
                actor_args = {"url": url, "token": token, "agent": agent_spec, "runner": spec, "tracer": tracer_spec}
                try:
                    return await self._supervise(store, algorithm, train_dataset, val_dataset, actor_args)
                finally:
                    await asyncio.to_thread(self._stop_all)
        finally:
            self._loop = self._wake = None
            self.url = None
            disconnect(connected)

    # ------------------------------------------------------------------------------------------------ running

    def _advertised(self, served: str) -> str:
        """The URL actors reach the store server at."""
        parts = urlsplit(served)
        host = self.options.advertise_host
        if host is None and parts.hostname in ("0.0.0.0", "::", ""):
            import ray.util

            host = ray.util.get_node_ip_address()
        if host is None:
            return served
        host = f"[{host}]" if ":" in host else host
        return f"{parts.scheme}://{host}:{parts.port}"

    async def _supervise(
        self,
        store: LightningStore,
        algorithm: Algorithm,
        train_dataset: Sequence[Any],
        val_dataset: Sequence[Any] | None,
        actor_args: dict[str, Any],
    ) -> Any:
        for _ in range(self.n_runners):
            self._start_actor(actor_args)
        await self._wait_registered(store)
        algo = asyncio.create_task(algorithm.run(store, train_dataset, val_dataset), name="agl-algorithm")
        assert self._wake is not None
        try:
            while not algo.done():
                waker = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait({algo, waker}, timeout=0.25, return_when=asyncio.FIRST_COMPLETED)
                waker.cancel()
                self._wake.clear()
                await self._reconcile(store, actor_args)
            return algo.result()
        finally:
            algo.cancel()
            await asyncio.gather(algo, return_exceptions=True)

    def _start_actor(self, actor_args: dict[str, Any], index: int | None = None) -> _Slot:

        options = self.options
        if index is None:
            index, self._next_index = self._next_index, self._next_index + 1
        name = f"{ACTOR_PREFIX}{self.run_id}-{index}"
        worker_id = f"ray-{index}"
        actor_options: dict[str, Any] = {
            "name": name,
            "namespace": options.namespace,
            "num_cpus": options.num_cpus,
            "num_gpus": options.num_gpus,
            "max_restarts": options.max_restarts,
            "max_task_retries": 0,  # a rollout is retried by the store, never by Ray
            "scheduling_strategy": options.scheduling,
        }
        if options.resources:
            actor_options["resources"] = dict(options.resources)
        if options.runtime_env:
            actor_options["runtime_env"] = dict(options.runtime_env)
        handle = (
            _actor_class()
            .options(**actor_options)
            .remote(worker_id=worker_id, run_id=self.run_id, runners=options.runners_per_actor, **actor_args)
        )
        slot = _Slot(index=index, name=name, worker_ids=worker_ids(worker_id, options.runners_per_actor), handle=handle)
        slot.run_ref = handle.run.remote()
        self.slots.append(slot)
        return slot

    async def _wait_registered(self, store: LightningStore) -> None:
        """Until every first actor has registered with the store, so that the work is spread from the start (and
        an actor that cannot start stops the run with its reason)."""
        import ray

        deadline = time.monotonic() + self.options.start_timeout
        expected = {w for s in self.slots for w in s.worker_ids}
        while not expected <= {w.worker_id for w in (await store.query_workers()).items}:
            ready, _ = ray.wait([s.run_ref for s in self.slots], num_returns=len(self.slots), timeout=0)
            for ref in ready:
                slot = next(s for s in self.slots if s.run_ref == ref)
                try:
                    ray.get(ref)
                except Exception as exc:
                    raise RayStrategyError(
                        f"the runner actor {slot.name} failed while starting: {_reason(exc)}"
                    ) from exc
                raise RayStrategyError(f"the runner actor {slot.name} stopped while starting")
            if time.monotonic() > deadline:
                raise RayStrategyError(
                    f"the runner actors did not start within {self.options.start_timeout:.0f} s (start_timeout): "
                    "is the cluster short of the resources each asks for (num_cpus, num_gpus, resources)? "
                    "`ray status` shows what it has"
                )
            await asyncio.sleep(0.1)

    async def _reconcile(self, store: LightningStore, actor_args: dict[str, Any]) -> None:
        """Restart or replace dead actors, set restarted ones serving again, and start or stop actors to match the
        target count."""
        import ray

        serving_refs = [s.run_ref for s in self.slots if s.ping_ref is None]
        ready = set()
        if serving_refs:  # one call for all: this runs 4 times a second in the store server's process
            ready = set(ray.wait(serving_refs, num_returns=len(serving_refs), timeout=0)[0])
        for slot in list(self.slots):
            if slot.ping_ref is not None:
                await self._after_ping(slot, actor_args)
                continue
            if slot.run_ref not in ready:
                continue
            try:
                ray.get(slot.run_ref)
            except ray.exceptions.RayActorError as exc:
                await self._actor_died(store, slot, exc)
                continue
            except Exception as exc:  # the runner itself raised: the same everywhere, so stop the run
                raise RayStrategyError(f"the runner in actor {slot.name} crashed: {_reason(exc)}") from exc
            if slot.stopping:  # scaled down: its rollouts are done
                self.slots.remove(slot)
                ray.kill(slot.handle, no_restart=True)
            else:
                raise RayStrategyError(f"the runner in actor {slot.name} stopped by itself (see its log)")
        with self._lock:
            target = self._target
        serving = [s for s in self.slots if not s.stopping]
        for _ in range(target - len(serving)):
            self._start_actor(actor_args)
        for slot in serving[target:][::-1] if len(serving) > target else []:
            slot.stopping = True
            slot.handle.stop.remote(True)

    async def _actor_died(self, store: LightningStore, slot: _Slot, exc: BaseException) -> None:
        """Fail the dead actor's rollout in flight (retried by the store at once), then ask whether Ray brings it
        back (a ping answers once it is restarted)."""
        import ray

        log.warning("ray: runner actor %s died: %s", slot.name, _reason(exc))
        await _fail_in_flight(store, set(slot.worker_ids))
        if slot.stopping:
            self.slots.remove(slot)
            with contextlib.suppress(Exception):
                ray.kill(slot.handle, no_restart=True)
            return
        slot.ping_ref = slot.handle.status.remote()
        slot.ping_deadline = time.monotonic() + self.options.start_timeout

    async def _after_ping(self, slot: _Slot, actor_args: dict[str, Any]) -> None:
        import ray

        ready, _ = ray.wait([slot.ping_ref], timeout=0)
        if not ready and time.monotonic() < slot.ping_deadline:
            return
        try:
            if not ready:
                raise TimeoutError("not restarted within start_timeout")
            ray.get(slot.ping_ref)
        except Exception as exc:
            if isinstance(exc, ray.exceptions.ActorUnavailableError) and time.monotonic() < slot.ping_deadline:
                slot.ping_ref = slot.handle.status.remote()  # "the actor is restarting": ask again next round
                return
            # gone for good: a new actor takes the slot
            log.warning("ray: runner actor %s is not coming back (%s); starting a new one", slot.name, _reason(exc))
            self.slots.remove(slot)
            with contextlib.suppress(Exception):
                ray.kill(slot.handle, no_restart=True)
            self.replaced += 1
            if self.replaced > 10 + 3 * max(self._target, 1):
                raise RayStrategyError(
                    f"{self.replaced} runner actors died and were replaced in this run; stopping it (see the actors' "
                    "logs: `ray logs`, or the driver's output)"
                ) from exc
            self._start_actor(actor_args)
            return
        log.warning("ray: runner actor %s was restarted by Ray; it serves again", slot.name)
        slot.ping_ref = None
        slot.restarts += 1
        self.restarted += 1
        slot.run_ref = slot.handle.run.remote()

    def _stop_all(self) -> None:
        """Stop every actor: its rollout in flight marked failed (retried at once by whoever serves next), then
        killed after ``stop_timeout`` at the latest, so no actor outlives the run."""
        import ray

        refs = []
        for slot in self.slots:
            with contextlib.suppress(Exception):
                refs.append(slot.handle.stop.remote(False))
        if refs:
            with contextlib.suppress(Exception):
                ray.wait(refs, num_returns=len(refs), timeout=self.options.stop_timeout)
        for slot in self.slots:
            with contextlib.suppress(Exception):
                ray.kill(slot.handle, no_restart=True)
        self.slots = []


async def _fail_in_flight(store: LightningStore, worker_ids: set[str]) -> None:
    """Mark the attempts ``worker_ids`` were running failed: the store retries their rollouts (if attempts are left)
    at once. An attempt that already ended is left as it is."""
    try:
        workers = (await store.query_workers()).items
    except Exception as exc:  # the watchdog will find the attempt unresponsive instead
        log.warning("ray: could not look up what %s were running: %s", sorted(worker_ids), exc)
        return
    for worker in workers:
        if worker.worker_id not in worker_ids or not worker.current_rollout_id or not worker.current_attempt_id:
            continue
        attempts = (await store.query_attempts(worker.current_rollout_id)).items
        attempt = next((a for a in attempts if a.attempt_id == worker.current_attempt_id), None)
        if attempt is None or attempt.status not in (AttemptStatus.PREPARING, AttemptStatus.RUNNING):
            continue
        with contextlib.suppress(InvalidStatusTransitionError, NotFoundError):
            await store.update_attempt(
                worker.current_rollout_id, worker.current_attempt_id, status=AttemptStatus.FAILED
            )
            log.warning(
                "ray: rollout %s (attempt %s) failed with its actor %s; the store retries it",
                worker.current_rollout_id,
                worker.current_attempt_id,
                worker.worker_id,
            )


@functools.cache
def _actor_class() -> Any:
    """:class:`RunnerActor` as a Ray actor class (made once: each ``ray.remote`` exports the class anew)."""
    import ray

    return ray.remote(RunnerActor)


def _agent_spec(agent: Any) -> Any:
    """What the actors import the agent by: its ``module:name`` / ``path.py:name``, or the object itself (sent by
    value) when it has none (a function defined in ``__main__``)."""
    if isinstance(agent, str):
        return agent
    from agl_kernel.imports import object_spec

    try:
        return object_spec(agent)
    except Exception:
        return agent


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
