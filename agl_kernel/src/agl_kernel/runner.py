"""The runner interface, and the kernel's runner for LitAgents (entry point ``litagent`` in ``agl.runners``).

A runner takes rollouts from the store (waiting on the store's push notification, never sleep-polling), runs the
agent on each inside the tracer's context, and reports the outcome. :class:`LitAgentRunner` also sends heartbeats
with system stats, stops an agent that runs past its rollout's ``timeout_seconds`` or whose rollout is
cancelled, stores a failed agent's exception as a span, and calls the ``agl_on_rollout_start/end`` hooks.

It rides out outages of the store (a store server restarting, the network down): a call that fails with a
transient error (see :func:`is_transient`) is retried with backoff for up to ``store_outage_seconds``, while the
agent in flight keeps running, and its result is reported once the store is back.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import contextvars
import ctypes
import logging
import os
import socket
import threading
import time
import traceback
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import attrs

from agl_kernel import semconv
from agl_kernel.agent import LitAgent, as_lit_agent
from agl_kernel.errors import (
    AglError,
    ConfigError,
    InvalidStatusTransitionError,
    LLMUnreachableError,
    NotFoundError,
)
from agl_kernel.models import LLM, AttemptedRollout, AttemptStatus, ResourcesUpdate, Span, SpanStatus
from agl_kernel.store.base import LightningStore
from agl_kernel.tracer import NoOpTracer, Tracer

__all__ = ["AgentStopped", "LitAgentRunner", "Runner", "RunnerSpec", "is_transient", "run_runners"]

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_STORE_OUTAGE_SECONDS = 300.0
"""How long a runner rides out a store it cannot reach, by default: long enough for a server restart."""
_TRANSIENT_STATUS = frozenset({408, 425, 429})
"""4xx answers that say "try again later" rather than "this request is wrong"."""


def is_transient(exc: BaseException) -> bool:
    """Whether a store call that raised ``exc`` may succeed if tried again later: the store server could not be
    reached or the connection broke (``StoreConnectionError``, any ``ConnectionError`` or ``TimeoutError``), it
    answered 5xx (restarting, shutting down, overloaded) or 408/425/429. Everything else is permanent: a wrong
    token (``StoreAuthError``), another 4xx, the kernel's own errors (``NotFoundError``,
    ``InvalidStatusTransitionError``, ...), a closed client."""
    if isinstance(exc, (ConnectionError, TimeoutError)):  # the http client's StoreConnectionError is one
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(exc, AglError) and isinstance(status, int) and (status >= 500 or status in _TRANSIENT_STATUS)


_REACHED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, asyncio.Event]] = weakref.WeakKeyDictionary()
"""Per event loop and store (by id): the event set the next time a runner reaches the store."""


def _store_reached(store: object) -> asyncio.Event:
    """The event set when a runner of this event loop next reaches ``store``: the runners of the loop that wait
    out an outage of the store wake then, instead of at the end of their backoff pause (up to 5 s)."""
    events = _REACHED.setdefault(asyncio.get_running_loop(), {})
    event = events.get(id(store))
    if event is None:
        event = events[id(store)] = asyncio.Event()
    return event


def _note_reached(store: object) -> None:
    events = _REACHED.get(asyncio.get_running_loop())
    event = events.pop(id(store), None) if events else None
    if event is not None:
        event.set()


class _StoreLink:
    """Retries a runner's store calls through outages: a transient failure is retried with backoff (0.25 s, then
    doubling up to 5 s) until the store has been unreachable for ``window`` seconds, counted from the first
    failure since the last success of any call (heartbeats included). A pause ends early when another runner of
    the process (same event loop) reaches the store. Logs once when the store is lost, once when it is back."""

    def __init__(self, worker_id: str, window: float) -> None:
        self.worker_id = worker_id
        self.window = window
        self.down_since: float | None = None  # time.monotonic() of the first failure of the current outage

    def failed(self, exc: BaseException, what: str) -> float:
        """Note a transient failure of ``what``; the seconds left of the window (<= 0: give up)."""
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
            log.warning(
                "runner %s: the store is unreachable (%s: %s: %s); retrying for up to %.0f s, the agent in flight "
                "keeps running",
                self.worker_id,
                what,
                type(exc).__name__,
                exc,
                self.window,
            )
        return self.window - (now - self.down_since)

    def succeeded(self, store: object) -> None:
        _note_reached(store)
        if self.down_since is not None:
            outage = time.monotonic() - self.down_since
            log.warning("runner %s: the store is reachable again after %.1f s", self.worker_id, outage)
            self.down_since = None

    async def call(
        self, store: object, what: str, fn: Callable[[], Awaitable[T]], *, stop: asyncio.Event | None = None
    ) -> T:
        """``await fn()`` (a call to ``store``), retried through transient failures until the window closes (then
        the last error is raised). With ``stop``: returns ``None`` if it is set while the store is unreachable."""
        delay = 0.25
        while True:
            try:
                result = await fn()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                left = self.failed(exc, what)
                if left <= 0:
                    log.error(
                        "runner %s: the store has been unreachable for %.0f s (store_outage_seconds); giving up",
                        self.worker_id,
                        self.window,
                    )
                    raise
                pause = min(delay, left)
                delay = min(delay * 2, 5.0)
                wakes = [asyncio.ensure_future(_store_reached(store).wait())]
                if stop is not None:
                    wakes.append(asyncio.ensure_future(stop.wait()))
                try:
                    await asyncio.wait(wakes, timeout=pause, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for wake in wakes:
                        wake.cancel()
                if stop is not None and stop.is_set():
                    return None  # type: ignore[return-value]
            else:
                self.succeeded(store)
                return result


class Runner(abc.ABC):
    """Takes rollouts from the store and runs the agent on them (plugins in ``agl.runners``).

    A runner class is made with the keyword arguments ``worker_id`` (the id it registers under) and ``tracer`` (the
    run's tracer), plus the fields of its ``Options`` class when it declares one. Strategies make one per runner
    slot, in this process (``shm``) or in runner processes (``cs``), through :class:`RunnerSpec`.
    """

    @abc.abstractmethod
    async def run(self, store: LightningStore, agent: Any, *, stop: asyncio.Event) -> int:
        """Run rollouts from ``store`` until ``stop`` is set; returns how many this runner finished."""


@attrs.frozen
class RunnerSpec:
    """Which runner serves the agent: a registered name (``NAME@DISTRIBUTION`` and ``module:attr`` work too) or a
    runner class, with its options. Strategies make runners from it, here or in other processes."""

    component: str | type = "litagent"
    options: Mapping[str, Any] = attrs.field(factory=dict, converter=dict)

    def make(self, *, worker_id: str, tracer: Tracer | None = None) -> Runner:
        """A runner registered as ``worker_id``; options are validated by the runner's options class."""
        from agl_kernel.plugins import create_component

        runner: Runner = create_component(
            "runners", self.component, options=self.options, worker_id=worker_id, tracer=tracer
        )
        return runner

    def check(self) -> None:
        """Raise what :meth:`make` would for an unknown runner or a bad option, without making a runner."""
        from agl_kernel.config import build_options, options_class
        from agl_kernel.plugins import resolve_name

        component = resolve_name("runners", self.component) if isinstance(self.component, str) else self.component
        cls = options_class(component)
        if cls is not None:
            build_options(cls, self.options, path="runner")
        elif self.options:
            raise ConfigError(f"runner.{sorted(self.options)[0]}: the runner {self.component!r} takes no options")

    def command_args(self) -> list[str]:
        """The ``agl runner`` arguments that make the same runner in another process."""
        import json

        from agl_kernel.imports import object_spec

        name = self.component if isinstance(self.component, str) else object_spec(self.component)
        return ["--runner", name, "--runner-options", json.dumps(dict(self.options))]


class AgentStopped(BaseException):
    """Raised inside a sync agent's thread to stop it (timeout or cancelled rollout). A BaseException, so that
    an agent's ``except Exception`` does not swallow it."""


def _span(
    attempted: AttemptedRollout,
    name: str,
    attributes: dict[str, Any],
    status: SpanStatus,
    parent: tuple[str, str] | None = None,
) -> Span:
    """A span the runner records itself; ``parent``: ``(trace id, span id)`` to put it under (the attempt's root)."""
    now = time.time()
    return Span(
        rollout_id=attempted.rollout_id,
        attempt_id=attempted.attempt.attempt_id,
        trace_id=parent[0] if parent else uuid.uuid4().hex,
        span_id=uuid.uuid4().hex[:16],
        parent_id=parent[1] if parent else None,
        name=name,
        attributes=attributes,
        status=status,
        start_time=now,
        end_time=now,
    )


def exception_span(
    attempted: AttemptedRollout,
    exc: BaseException,
    message: str | None = None,
    parent: tuple[str, str] | None = None,
) -> Span:
    """The ``agl.exception`` span that records why an attempt failed."""
    message = message or str(exc)
    attributes = {
        semconv.EXCEPTION_TYPE: type(exc).__qualname__,
        semconv.EXCEPTION_MESSAGE: message,
        semconv.EXCEPTION_STACKTRACE: "".join(traceback.format_exception(exc)),
    }
    status = SpanStatus(status_code="ERROR", description=message)
    return _span(attempted, semconv.EXCEPTION_SPAN, attributes, status, parent)


_CONNECT_FAILURES = frozenset({"APIConnectionError", "ConnectError", "ConnectTimeout", "ClientConnectorError"})
"""Type names (in the MRO) of the errors HTTP clients raise when no connection could be made (openai, httpx,
aiohttp), recognised without importing them."""


def _connect_failure(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError) or _CONNECT_FAILURES & {
            t.__name__ for t in type(current).__mro__
        }:
            return True
        current = current.__cause__ or current.__context__
    return False


async def _answers(endpoint: str, timeout: float = 2.0) -> bool:
    """Whether anything accepts a TCP connection at ``endpoint``'s host and port."""
    from urllib.parse import urlsplit

    parts = urlsplit(endpoint)
    if not parts.hostname:
        return False
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    return True


async def unreachable_llm(
    exc: BaseException, update: ResourcesUpdate | None, attempted: AttemptedRollout
) -> LLMUnreachableError | None:
    """For an agent that failed to connect (``exc``): an error naming the rollout's LLM resource whose endpoint
    does not answer, its resources id and version, the run and the endpoint; ``None`` when ``exc`` is no connection
    failure or every LLM endpoint answers (the agent called something else)."""
    if update is None or not _connect_failure(exc):
        return None
    from agl_kernel.runs import run_of

    for name, resource in update.resources.items():
        if isinstance(resource, LLM) and not await _answers(resource.endpoint):
            run = run_of(attempted)
            if run == update.resources_id:  # the resources the run started with
                version = f"run {run}'s resources v{update.version}"
            else:
                version = f"resources {update.resources_id} v{update.version}" + (f", run {run}" if run else "")
            error = LLMUnreachableError(
                f"LLM resource {name!r} ({version}) at {resource.endpoint} does not answer ({exc}); start that "
                f"server, or give the run a live one: agl dev/train --llm URL --llm-model NAME, or "
                f"Trainer(initial_resources={{{name!r}: LLM(endpoint=..., model=...)}})"
            )
            error.__cause__ = exc
            return error
    return None


def system_stats() -> dict[str, Any]:
    """Cheap facts about this worker process, sent with every heartbeat."""
    stats: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname()}
    try:
        stats["load_1m"] = os.getloadavg()[0]
        with open("/proc/self/statm") as statm:
            stats["rss_mb"] = round(int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, AttributeError, ValueError):  # not Linux: the stats that exist are enough
        pass
    return stats


class _AgentThread:
    """Runs a sync agent in its own daemon thread so that the event loop stays free and the agent can be stopped:
    :meth:`stop` raises :class:`AgentStopped` inside the thread at its next Python bytecode (a call blocked in C
    finishes first)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        loop = self.future.get_loop()
        context = contextvars.copy_context()

        def target() -> None:
            try:
                result: Any = context.run(fn)
            except BaseException as exc:  # handed to the loop, which re-raises it in the runner
                loop.call_soon_threadsafe(_settle, self.future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, self.future, result, None)

        self.thread = threading.Thread(target=target, name="agl-agent", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread.ident is not None and self.thread.is_alive():
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(self.thread.ident), ctypes.py_object(AgentStopped)
            )


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if not future.done():
        future.set_exception(exc) if exc is not None else future.set_result(result)


@attrs.define(kw_only=True)
class LitAgentRunnerOptions:
    """Options of the kernel's runner (``litagent``)."""

    heartbeat_interval: float = attrs.field(default=5.0, validator=attrs.validators.gt(0))
    """Seconds between heartbeats (worker stats, and the attempt's sign of life)."""
    wait_seconds: float = attrs.field(default=0.5, validator=attrs.validators.gt(0))
    """How long one dequeue call waits for work before the runner checks whether it should stop."""
    stop_grace: float = attrs.field(default=1.0, validator=attrs.validators.ge(0))
    """Seconds a stopped agent (timeout, cancelled rollout) gets to finish before the runner moves on."""
    store_outage_seconds: float = attrs.field(default=DEFAULT_STORE_OUTAGE_SECONDS, validator=attrs.validators.ge(0))
    """Seconds the runner keeps retrying a store it cannot reach (a server restarting, the network down), with
    backoff, before it gives up and exits; the agent in flight keeps running meanwhile and its result is reported
    once the store is back. Only errors that may pass count (connection errors, 5xx, 408/429); any other error
    ends the runner at once. 0: give up at the first failure."""


class LitAgentRunner(Runner):
    """Runs a :class:`~agl_kernel.agent.LitAgent` (or a plain function) on rollouts from the store, one at a time.

    - ``tracer``: records what the agent does (default: the no-op tracer; rewards are stored either way).
    - ``heartbeat_interval``: seconds between heartbeats (worker stats, and the attempt's sign of life).
    - ``wait_seconds``: how long one dequeue call waits for work before the runner checks ``stop`` again.
    - ``stop_grace``: seconds a stopped agent gets to finish before the runner gives up on it and moves on.
    - ``store_outage_seconds``: how long the runner retries a store it cannot reach before it gives up (default
      300); its agent keeps running meanwhile, and the result is reported once the store is back.
    """

    Options = LitAgentRunnerOptions

    def __init__(
        self,
        *,
        worker_id: str | None = None,
        tracer: Tracer | None = None,
        heartbeat_interval: float = 5.0,
        wait_seconds: float = 0.5,
        stop_grace: float = 1.0,
        store_outage_seconds: float = DEFAULT_STORE_OUTAGE_SECONDS,
    ) -> None:
        self.worker_id = worker_id or f"worker-{uuid.uuid4().hex[:8]}"
        self.tracer = tracer or NoOpTracer()
        self.heartbeat_interval = heartbeat_interval
        self.wait_seconds = wait_seconds
        self.stop_grace = stop_grace
        self.store_outage_seconds = store_outage_seconds
        self.finished = 0
        self._link = _StoreLink(self.worker_id, store_outage_seconds)

    async def run(self, store: LightningStore, agent: Any, *, stop: asyncio.Event) -> int:
        lit_agent = as_lit_agent(agent)
        link = self._link
        await link.call(store, "register", lambda: store.update_worker(self.worker_id, heartbeat_stats=system_stats()))
        while not stop.is_set():
            attempted = await link.call(
                store,
                "dequeue",
                lambda: store.dequeue_rollout(worker_id=self.worker_id, timeout=self.wait_seconds),
                stop=stop,
            )
            if attempted is not None:
                await self.run_one(store, lit_agent, attempted)
        return self.finished

    async def run_one(self, store: LightningStore, agent: Any, attempted: AttemptedRollout) -> AttemptStatus:
        """Run the agent on one dequeued rollout and mark its attempt; returns the attempt's final status."""
        from agl_kernel.plugins import call_hook

        agent = as_lit_agent(agent)
        rollout_id, attempt_id = attempted.rollout_id, attempted.attempt.attempt_id
        call_hook("agl_on_rollout_start", rollout=attempted, attempt=attempted.attempt, runner=self)
        status = AttemptStatus.FAILED
        running = AttemptStatus.RUNNING
        try:
            try:
                await self._link.call(
                    store, "start", lambda: store.update_attempt(rollout_id, attempt_id, status=running)
                )
            except (InvalidStatusTransitionError, NotFoundError) as exc:  # it ended (or went) before it began
                log.info("runner %s: attempt %s ended before it started (%s)", self.worker_id, attempt_id, exc)
                return AttemptStatus.FAILED
            status, spans = await self._execute(store, agent, attempted)
            await self._report(store, attempted, status, spans)
            self.finished += 1
        except asyncio.CancelledError:  # the runner is stopped mid-rollout: fail the attempt so it is retried now
            await self._abandon(store, attempted)
            raise
        finally:
            call_hook("agl_on_rollout_end", rollout=attempted, attempt=attempted.attempt, runner=self, status=status)
        return status

    async def _execute(
        self, store: LightningStore, agent: LitAgent, attempted: AttemptedRollout
    ) -> tuple[AttemptStatus, list[Span]]:
        """Run the agent to its end, its timeout or its rollout's cancellation; the status and spans to store."""
        try:
            update = await self._link.call(store, "resources", lambda: self._resources(store, attempted))
        except Exception as exc:  # e.g. the pinned resources were deleted: the attempt fails, the runner goes on
            return AttemptStatus.FAILED, [exception_span(attempted, exc)]
        resources = dict(update.resources) if update is not None else {}
        method = agent.rollout_for(attempted)
        is_async = agent.is_async(attempted)
        scopes: list[Any] = []  # the trace scope, for the parent of the spans recorded here

        @contextlib.contextmanager
        def trace() -> Iterator[None]:
            ids = {"rollout_id": attempted.rollout_id, "attempt_id": attempted.attempt.attempt_id}
            with self.tracer.trace_context(**ids, store=store) as scope:
                scopes.append(scope)
                yield

        def run_sync() -> Any:
            with trace():
                return method(attempted.input, resources, attempted)

        async def run_async() -> Any:
            with trace():
                return await method(attempted.input, resources, attempted)

        def parent() -> tuple[str, str] | None:
            return getattr(scopes[0], "parent", None) if scopes else None

        thread = None if is_async else _AgentThread(run_sync)
        work: asyncio.Future[Any] = thread.future if thread is not None else asyncio.ensure_future(run_async())
        watch = asyncio.create_task(self._watch(store, attempted))
        deadline = attempted.config.timeout_seconds
        remaining = None if deadline is None else max(0.0, attempted.attempt.start_time + deadline - time.time())
        try:
            done, _ = await asyncio.wait({work, watch}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the runner itself is stopped (Ctrl-C): stop the agent too
            await self._stop_agent(work, thread)
            raise
        finally:
            watch.cancel()
        if work in done:
            try:
                status, spans = AttemptStatus.SUCCEEDED, self._result_spans(attempted, work.result(), parent())
            except Exception as exc:  # the agent's failure is the rollout's outcome, not the runner's
                exc = await unreachable_llm(exc, update, attempted) or exc
                status, spans = AttemptStatus.FAILED, [exception_span(attempted, exc, parent=parent())]
            await self.tracer.flush()
            return status, spans
        await self._stop_agent(work, thread)
        await self.tracer.flush()
        if watch in done:
            message = f"the rollout ended ({watch.result()}) while the agent ran; the agent was stopped"
            return AttemptStatus.FAILED, [exception_span(attempted, AgentStopped(message), parent=parent())]
        message = f"the agent ran past timeout_seconds={deadline} and was stopped"
        return AttemptStatus.TIMEOUT, [exception_span(attempted, TimeoutError(message), parent=parent())]

    async def _report(
        self, store: LightningStore, attempted: AttemptedRollout, status: AttemptStatus, spans: list[Span]
    ) -> None:
        """Store the attempt's spans and final status, through outages. The store may have moved on meanwhile:
        an attempt it ended itself (a timeout, a cancelled or deleted rollout) keeps the store's verdict, and the
        result of an attempt it retried elsewhere (unresponsive while the store was out of reach) is kept with
        that attempt without changing the rollout. Either way the runner goes on quietly."""
        rollout_id, attempt_id = attempted.rollout_id, attempted.attempt.attempt_id
        link = self._link
        try:
            if spans:
                await link.call(store, "report spans", lambda: store.add_many_spans(spans))
            await link.call(store, "report status", lambda: store.update_attempt(rollout_id, attempt_id, status=status))
        except (InvalidStatusTransitionError, NotFoundError) as exc:
            log.info(
                "runner %s: the store ended attempt %s of rollout %s meanwhile; its result (%s) is discarded: %s",
                self.worker_id,
                attempt_id,
                rollout_id,
                status.value,
                exc,
            )

    async def _abandon(self, store: LightningStore, attempted: AttemptedRollout) -> None:
        """Mark the attempt failed (with why) before the runner goes away, within a second or not at all."""
        stopped = AgentStopped(f"runner {self.worker_id} was stopped while the agent ran")
        rollout_id, attempt_id = attempted.rollout_id, attempted.attempt.attempt_id
        try:
            await asyncio.wait_for(store.add_span(exception_span(attempted, stopped)), 1.0)
            await asyncio.wait_for(store.update_attempt(rollout_id, attempt_id, status=AttemptStatus.FAILED), 1.0)
        except InvalidStatusTransitionError:  # it ended already (the final update got through): nothing to do
            pass
        except (Exception, asyncio.CancelledError) as exc:  # the watchdog's unresponsive check is the fallback
            log.warning(
                "could not mark attempt %s failed on the way out (%r); the store retries it once it has had no "
                "heartbeat for the rollout's unresponsive_seconds",
                attempt_id,
                exc,
            )

    async def _resources(self, store: LightningStore, attempted: AttemptedRollout) -> ResourcesUpdate | None:
        if attempted.resources_id is None:
            return None
        return await store.get_resources(attempted.resources_id)

    async def _watch(self, store: LightningStore, attempted: AttemptedRollout) -> str:
        """Heartbeats while the agent runs; returns the rollout's status if it ends (e.g. cancelled) meanwhile."""
        rollout_id, attempt_id = attempted.rollout_id, attempted.attempt.attempt_id
        interval = self.heartbeat_interval
        if attempted.config.unresponsive_seconds is not None:  # beat well within the store's patience
            interval = min(interval, attempted.config.unresponsive_seconds / 3)
        link = self._link
        while True:
            try:
                ended = await store.wait_for_rollouts([rollout_id], timeout=interval)
                if ended:
                    return ended[0].status.value
                await store.update_attempt(rollout_id, attempt_id)  # a heartbeat
                await store.update_worker(self.worker_id, heartbeat_stats=system_stats())
                link.succeeded(store)
            except Exception as exc:  # a missed heartbeat must not stop the agent; the next one may get through
                if is_transient(exc):  # logged once per outage, not once per beat; try again soon after it
                    link.failed(exc, "heartbeat")
                    await asyncio.sleep(min(interval, 1.0))
                else:
                    log.warning("heartbeat of %s on worker %s failed: %s", attempt_id, self.worker_id, exc)
                    await asyncio.sleep(interval)

    async def _stop_agent(self, work: asyncio.Future[Any], thread: _AgentThread | None) -> None:
        if thread is not None:
            thread.stop()
        else:
            work.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(work), self.stop_grace)
        except asyncio.TimeoutError:
            log.warning(
                "agent on worker %s did not stop within %.1fs; leaving it behind", self.worker_id, self.stop_grace
            )
        except BaseException:  # its AgentStopped / CancelledError / own error: it has stopped, which is the point
            pass

    @staticmethod
    def _result_spans(attempted: AttemptedRollout, result: Any, parent: tuple[str, str] | None = None) -> list[Span]:
        """Spans for what the agent returned: a reward span (under ``parent``) for a number, the spans themselves
        for spans."""
        if result is None:
            return []
        if isinstance(result, (bool, int, float)):
            attributes = {semconv.REWARD_VALUE: float(result)}
            return [_span(attempted, semconv.REWARD_SPAN, attributes, SpanStatus(status_code="OK"), parent)]
        if isinstance(result, Sequence) and all(isinstance(s, Span) for s in result):
            import msgspec

            ids = {"rollout_id": attempted.rollout_id, "attempt_id": attempted.attempt.attempt_id, "sequence_id": 0}
            return [msgspec.structs.replace(span, **ids) for span in result]
        raise TypeError(f"an agent returns a reward (a number), None or a list of Spans, not {type(result).__name__}")


async def run_runners(
    store: LightningStore,
    agent: Any,
    *,
    n_runners: int = 1,
    tracer: Tracer | None = None,
    worker_prefix: str | None = None,
    parent_pid: int | None = None,
    stop: asyncio.Event | None = None,
    runner: RunnerSpec | None = None,
) -> int:
    """Serve ``agent`` with ``n_runners`` runners on ``store`` until ``stop`` is set (or SIGINT/SIGTERM, or the
    process ``parent_pid`` is gone: a runner started by a trainer never outlives it); how many rollouts they ran.
    On the way out, an agent still running is stopped and its attempt marked failed, so it is retried at once."""
    import signal

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or not Unix
            pass
    prefix = worker_prefix or f"{socket.gethostname()}-{os.getpid()}"
    spec = runner or RunnerSpec()
    runners = [
        spec.make(worker_id=f"{prefix}-{i}" if n_runners > 1 else prefix, tracer=tracer) for i in range(n_runners)
    ]
    tasks = [asyncio.create_task(r.run(store, agent, stop=asyncio.Event())) for r in runners]

    async def orphan_check() -> None:
        while parent_pid is not None and os.getppid() == parent_pid:
            await asyncio.sleep(0.5)
        if parent_pid is not None:
            log.warning("the process that started these runners (pid %s) is gone; stopping", parent_pid)
            stop.set()

    watchers = [asyncio.create_task(stop.wait()), asyncio.create_task(orphan_check())]
    try:
        await asyncio.wait([*tasks, watchers[0]], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in [*tasks, *watchers]:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception):
            raise result
    return sum(getattr(r, "finished", 0) for r in runners)
