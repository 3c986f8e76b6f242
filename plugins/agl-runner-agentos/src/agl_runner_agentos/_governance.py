"""The Agent-OS kernel a runner governs its agents' tools with, and the tools themselves.

One :class:`Governance` per runner: an ``agent_os.KernelSpace`` whose policy engine is the runner's policy and
whose ``FlightRecorder`` keeps the audit log (a SQLite file). Each attempt is an Agent-OS agent
(``create_agent_context``, its id ``ROLLOUT_ID:ATTEMPT_ID``); a tool call is the ``SYS_EXEC`` syscall: the kernel
checks the policy, records the call, and runs the tool only when allowed.

Agent code marks its tools with :func:`governed_tool` (or calls :func:`call_tool`). Inside a governed attempt the
call goes through the kernel; outside one (the agent run on its own, or under another runner) the tool runs as
written, so the agent needs no change to run elsewhere.

Agent-OS kills an agent at its first violation (``SIGPOLICY`` escalates to ``SIGKILL``: the syscall raises
``AgentKernelPanic`` and later syscalls fail). Training wants the agent to go on and learn, so a session whose
call was denied gets a fresh agent context and the agent sees a :class:`PolicyViolationError` for the denied call
only, unless ``fail_on_violation`` asks for the attempt to end there.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import json
import logging
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from agl_kernel.emit import last_llm_call, to_json
from agl_kernel.errors import AglError
from agl_kernel.tracer import current_scope
from agl_runner_agentos._agentos import agent_os
from agl_runner_agentos._policy import AgentOSPolicy, ToolDecision, load_policy

__all__ = [
    "DECISION_SPAN",
    "Governance",
    "GovernedSession",
    "PolicyViolationError",
    "ToolCallError",
    "call_tool",
    "current_session",
    "governed_tool",
]

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

DECISION_SPAN = "agentos.decision"
"""The span recording one policy decision (a child of the attempt's trace)."""

_SESSION: contextvars.ContextVar[GovernedSession | None] = contextvars.ContextVar("agl_agentos_session", default=None)
_IN_KERNEL: contextvars.ContextVar[bool] = contextvars.ContextVar("agl_agentos_in_kernel", default=False)
_KERNEL_LOGGERS = ("agent_control_plane.kernel_space", "agent_control_plane.signals", "FlightRecorder")
_open_lock = threading.Lock()
_open: dict[int, GovernedSession] = {}


class PolicyViolationError(AglError):
    """A tool call the Agent-OS policy denied (``decision`` says which rule, with what severity)."""

    def __init__(self, decision: ToolDecision) -> None:
        super().__init__(decision.describe())
        self.decision = decision


def current_session() -> GovernedSession | None:
    """The governed attempt the calling code runs in (``None`` outside any). A thread that did not inherit the
    context belongs to the process's only open session, when exactly one is open."""
    session = _SESSION.get()
    if session is not None or not _open:
        return session
    with _open_lock:
        if len(_open) == 1:
            return next(iter(_open.values()))
    return None


class _KernelLogsToDebug(logging.Filter):
    """Agent-OS logs every denied call at WARNING to CRITICAL (with "[SIGKILL] Agent ... TERMINATED", though the
    runner lets the agent go on) and every failing tool at ERROR. Inside a governed call each of these is already a
    decision span, an audit span and the exception the agent sees, so its lines go to DEBUG there (shown only where
    DEBUG is on for Agent-OS's loggers). Agent-OS used elsewhere in the process logs as it does."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _IN_KERNEL.get() and record.levelno > logging.DEBUG:
            if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
                return False  # as a DEBUG line would have been
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


_KERNEL_LOG_FILTER = _KernelLogsToDebug()


@contextlib.contextmanager
def _in_kernel() -> Iterator[None]:
    token = _IN_KERNEL.set(True)
    try:
        yield
    finally:
        _IN_KERNEL.reset(token)


class Governance:
    """An Agent-OS kernel with a policy and a flight recorder, shared by the attempts of one runner.

    ``policy``: what :func:`~agl_runner_agentos.load_policy` takes (a file, ``module:attr``, an object, ``None``).
    ``audit_path``: the flight recorder's SQLite file (default: a temporary file removed by :meth:`close`).
    """

    def __init__(self, policy: Any = None, *, default_severity: str = "high", audit_path: str | None = None) -> None:
        agent_os()
        from agent_os import FlightRecorder, KernelSpace

        self.policy: AgentOSPolicy = load_policy(policy, default_severity=default_severity)
        for name in _KERNEL_LOGGERS:  # the same filter object: added once per logger
            logging.getLogger(name).addFilter(_KERNEL_LOG_FILTER)
        self._tempdir: str | None = None
        if audit_path is None:
            self._tempdir = tempfile.mkdtemp(prefix="agl-agentos-")
            audit_path = os.path.join(self._tempdir, "flight_recorder.db")
        self.audit_path = audit_path
        self.recorder = FlightRecorder(db_path=audit_path, enable_batching=False)
        self.kernel = KernelSpace(policy_engine=_KernelPolicy(self), flight_recorder=self.recorder)
        self._sessions: dict[str, GovernedSession] = {}

    def session(self, agent_id: str, *, fail_on_violation: bool = False) -> GovernedSession:
        """A governed agent for one attempt (``agent_id``: unique while it is open); close it when done."""
        session = GovernedSession(self, agent_id, fail_on_violation=fail_on_violation)
        self._sessions[agent_id] = session
        return session

    def audit_rows(self, agent_id: str) -> list[dict[str, Any]]:
        """The flight recorder's entries for one agent (attempt), oldest first, one per tool call
        (:func:`one_entry_per_call`)."""
        import sqlite3

        self.recorder.flush()
        with contextlib.closing(sqlite3.connect(self.audit_path)) as conn:
            conn.row_factory = sqlite3.Row
            rows = conn.execute("SELECT * FROM audit_log WHERE agent_id = ? ORDER BY id", (agent_id,)).fetchall()
        return one_entry_per_call([dict(row) for row in rows])

    def close(self) -> None:
        self.kernel.shutdown()
        try:
            self.recorder.close()
        except Exception as exc:  # the recorder's own connections: nothing left to save at this point
            log.debug("closing the flight recorder: %s", exc)
        if self._tempdir is not None:
            shutil.rmtree(self._tempdir, ignore_errors=True)


def _json(text: Any) -> Any:
    try:
        return json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None


def _pending_request(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """The syscall request of a row the kernel wrote at the syscall and left ``pending``; ``None`` for others."""
    if row.get("policy_verdict") != "pending" or not str(row.get("tool_name") or "").startswith("syscall_"):
        return None
    request = _json(row.get("tool_args"))
    return request if isinstance(request, dict) and "tool" in request else None


def _settles(row: Mapping[str, Any], request: Mapping[str, Any]) -> bool:
    """Whether ``row`` is the outcome of the call ``request`` asked for: the policy check's ``blocked`` row holds
    the request (its call id); the executor's row holds the tool's arguments."""
    if row.get("tool_name") != request["tool"] or row.get("policy_verdict") == "pending":
        return False
    arguments = _json(row.get("tool_args"))
    if isinstance(arguments, dict) and "call_id" in arguments:
        return bool(arguments["call_id"] == request.get("call_id"))
    return (arguments or {}) == (request.get("args") or {})


def one_entry_per_call(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The flight recorder's rows of one agent, one entry per tool call.

    Agent-OS (3.7) writes two rows for one governed call: at the syscall, a ``pending`` row (tool
    ``syscall_SYS_EXEC``, arguments: the request with its ``call_id``) that it never settles; then the outcome's row
    (the tool's name): ``allowed``/``error`` from the executor, or ``blocked`` from the policy check. Each outcome
    row takes its pending row's place, its own fields as recorded (so its hashes still verify), with the call's
    ``call_id`` (the decision span's) and the pending row's ``timestamp``, ``trace_id`` and ``entry_hash`` (the
    hash chain runs through it) as ``pending_*``. A pending row no outcome followed (the kernel refused the call
    before any check) stays as it is; rows of other kinds too.
    """
    entries: list[dict[str, Any]] = []
    waiting: list[tuple[int, dict[str, Any]]] = []  # (index in entries, request) of calls without an outcome yet
    for row in rows:
        request = _pending_request(row)
        if request is not None:
            waiting.append((len(entries), request))
            entries.append({**row, "call_id": request.get("call_id")})
            continue
        match = next((i for i, (_, req) in enumerate(waiting) if _settles(row, req)), None)
        if match is None:
            entries.append(dict(row))
            continue
        index, request = waiting.pop(match)
        pending = entries[index]
        entries[index] = {
            **row,
            "call_id": request.get("call_id"),
            "pending_timestamp": pending.get("timestamp"),
            "pending_trace_id": pending.get("trace_id"),
            "pending_entry_hash": pending.get("entry_hash"),
        }
    return entries


class _KernelPolicy:
    """The ``policy_engine`` the kernel calls (``check_violation``): the runner's policy, with every decision kept
    for the session that asked, by call id."""

    def __init__(self, governance: Governance) -> None:
        self.governance = governance

    def check_violation(self, agent_role: str, tool_name: str, args: Mapping[str, Any]) -> str | None:
        session = self.governance._sessions.get(agent_role)
        arguments = args.get("args") if isinstance(args.get("args"), Mapping) else {}
        decision = self.governance.policy.decide(agent_role, tool_name, arguments or {})
        call_id = str(args.get("call_id") or "")
        decision = _with_call_id(decision, call_id)
        if session is not None:
            session.pending[call_id] = decision
        return None if decision.allowed else decision.describe()


def _with_call_id(decision: ToolDecision, call_id: str) -> ToolDecision:
    import attrs

    return attrs.evolve(decision, call_id=call_id)


class GovernedSession:
    """One attempt as an Agent-OS agent: its kernel context, and the decisions on its tool calls so far."""

    def __init__(self, governance: Governance, agent_id: str, *, fail_on_violation: bool) -> None:
        self.governance = governance
        self.agent_id = agent_id
        self.fail_on_violation = fail_on_violation
        self.context = governance.kernel.create_agent_context(agent_id)
        self.decisions: list[ToolDecision] = []
        """Every decision, in call order."""
        self.steps: list[str | None] = []
        """For each decision, the span it is credit for: the LLM call that asked for the tool, else the decision."""
        self.pending: dict[str, ToolDecision] = {}
        self._token: contextvars.Token[GovernedSession | None] | None = None

    @property
    def denials(self) -> list[ToolDecision]:
        return [d for d in self.decisions if not d.allowed]

    def __enter__(self) -> GovernedSession:
        self._token = _SESSION.set(self)
        with _open_lock:
            _open[id(self)] = self
        return self

    def __exit__(self, *exc_info: Any) -> None:
        with _open_lock:
            _open.pop(id(self), None)
        if self._token is not None:
            try:
                _SESSION.reset(self._token)
            except ValueError:  # left in another context than entered: that context keeps its own value
                pass
        self.governance._sessions.pop(self.agent_id, None)
        self.governance.kernel.destroy_agent_context(self.agent_id)

    # ------------------------------------------------------------------------------------------------ tool calls

    def _request(self, tool: str, fn: Callable[..., Any], arguments: dict[str, Any]) -> tuple[Any, str]:
        agent_os()
        from agent_os import SyscallRequest, SyscallType

        self.governance.kernel.register_tool(tool, fn)
        call_id = uuid.uuid4().hex[:16]
        request = SyscallRequest(
            syscall=SyscallType.SYS_EXEC,
            args={"tool": tool, "args": arguments, "call_id": call_id},
            caller_ring=self.context.ring,
        )
        return request, call_id

    async def acall(self, tool: str, fn: Callable[..., Any], arguments: dict[str, Any]) -> Any:
        """Run ``fn(**arguments)`` as the tool ``tool`` through the kernel (awaiting it when it is async)."""
        request, call_id = self._request(tool, fn, arguments)
        try:
            with _in_kernel():
                result = await self.governance.kernel.syscall(request, self.context)
        except Exception as exc:
            return self._settle_panic(tool, arguments, call_id, exc)
        return self._settle(tool, arguments, call_id, result)

    def call(self, tool: str, fn: Callable[..., Any], arguments: dict[str, Any]) -> Any:
        """:meth:`acall` for a sync tool, from sync code (its own thread) or from code on an event loop."""
        request, call_id = self._request(tool, fn, arguments)
        try:
            with _in_kernel():
                result = _run_to_end(self.governance.kernel.syscall(request, self.context))
        except Exception as exc:
            return self._settle_panic(tool, arguments, call_id, exc)
        return self._settle(tool, arguments, call_id, result)

    def _settle_panic(self, tool: str, arguments: dict[str, Any], call_id: str, exc: Exception) -> Any:
        agent_os()
        from agent_os import AgentKernelPanic

        decision = self.pending.pop(call_id, None)
        if not isinstance(exc, AgentKernelPanic) or decision is None:
            raise exc
        # Agent-OS killed the agent for the violation; training lets it go on, blocked, in a fresh context.
        with _in_kernel():
            self.governance.kernel.destroy_agent_context(self.agent_id)
            self.context = self.governance.kernel.create_agent_context(self.agent_id)
        self._record(decision)
        raise PolicyViolationError(decision) from None

    def _settle(self, tool: str, arguments: dict[str, Any], call_id: str, result: Any) -> Any:
        decision = self.pending.pop(call_id, None)
        if decision is not None:
            self._record(decision)
            if not decision.allowed:
                raise PolicyViolationError(decision)
        if not result.success:
            message = result.error_message or "the tool failed"
            raise ToolCallError(f"tool {tool!r} failed: {message}")
        return result.return_value

    def _record(self, decision: ToolDecision) -> None:
        """Keep the decision and write its span under the attempt's trace (when there is one)."""
        self.decisions.append(decision)
        step = last_llm_call()
        scope = current_scope()
        span_id = None
        if scope is not None:
            attributes: dict[str, Any] = {
                "agentos.tool": decision.tool,
                "agentos.arguments": to_json(dict(decision.arguments)),
                "agentos.allowed": decision.allowed,
                "agentos.action": decision.action,
                "agentos.rule": decision.rule or "",
                "agentos.severity": decision.severity or "",
                "agentos.reason": decision.reason,
                "agentos.policy": decision.policy or "",
                "agentos.agent_id": self.agent_id,
                "agentos.call_id": decision.call_id,
            }
            if step is not None:
                attributes["agentos.llm_call"] = step
            span_id = scope.tracer.emit_span(scope, DECISION_SPAN, attributes)
        self.steps.append(step or span_id)


class ToolCallError(AglError):
    """A governed tool that was allowed but failed (its own exception, or a kernel error)."""


def _run_to_end(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a kernel syscall from sync code: in a fresh event loop when none runs in this thread; on a thread with a
    running loop, step the coroutine to its end (a syscall for a sync tool never suspends)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError(
        "the Agent-OS kernel suspended during a sync tool call made on an event loop; make the tool async "
        "(async def) and await it"
    )


def _arguments(signature: inspect.Signature | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    if signature is None:
        if args:
            raise TypeError("a governed tool without a signature takes keyword arguments only")
        return dict(kwargs)
    bound = signature.bind(*args, **kwargs)
    arguments = dict(bound.arguments)
    for name, parameter in signature.parameters.items():
        if parameter.kind is parameter.VAR_KEYWORD and name in arguments:
            arguments.update(arguments.pop(name))
        elif parameter.kind in (parameter.VAR_POSITIONAL, parameter.POSITIONAL_ONLY) and name in arguments:
            raise TypeError(f"a governed tool's arguments are passed by name: {name!r} cannot be ({parameter.kind})")
    return arguments


def governed_tool(fn: F | None = None, *, name: str | None = None) -> Any:
    """Mark ``fn`` (sync or async) as a tool whose calls the Agent-OS kernel governs inside a governed attempt.

    The tool's arguments are what the policy sees, by parameter name (``query`` for ``run_sql(query)``). A denied
    call raises :class:`PolicyViolationError` (its message says which rule, with what severity); outside a
    governed attempt the tool simply runs.
    """

    def wrap(fn: F) -> F:
        tool = name or fn.__name__
        try:
            signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):
            signature = None

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_tool(*args: Any, **kwargs: Any) -> Any:
                session = current_session()
                if session is None:
                    return await fn(*args, **kwargs)
                return await session.acall(tool, fn, _arguments(signature, args, kwargs))

            return async_tool  # type: ignore[return-value]

        @functools.wraps(fn)
        def sync_tool(*args: Any, **kwargs: Any) -> Any:
            session = current_session()
            if session is None:
                return fn(*args, **kwargs)
            return session.call(tool, fn, _arguments(signature, args, kwargs))

        return sync_tool  # type: ignore[return-value]

    return wrap(fn) if fn is not None else wrap


def call_tool(name: str, fn: Callable[..., Any], /, **arguments: Any) -> Any:
    """Call ``fn(**arguments)`` as the tool ``name`` through the kernel (for a sync ``fn``; ``await
    acall_tool(...)`` style use: ``await governed_tool(fn, name=name)(**arguments)``)."""
    session = current_session()
    if session is None:
        return fn(**arguments)
    return session.call(name, fn, arguments)
