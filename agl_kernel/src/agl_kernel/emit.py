"""Emitters: what agent code calls to add its own spans (rewards, messages, objects, exceptions, operations).

They write through the tracer of the trace context the code runs in (:func:`agl_kernel.tracer.current_scope`):
plain spans written to the store with the no-op tracer, OpenTelemetry spans with ``agl-tracer-otel``. Outside
any trace context (the agent run on its own, outside training) they do nothing, and each emitter warns once
(:class:`NoTraceContextWarning`), so agent code can call them unconditionally. Bad arguments raise at once,
inside a trace context or not.

    from agl_kernel.emit import emit_reward, operation, last_llm_call

    @operation(agent="solver")                      # a span with the inputs and output of every call
    async def solve(question: str) -> str: ...

    emit_reward(0.2, step=last_llm_call())          # credit for the LLM call just made
    emit_reward({"correct": 1.0, "short": 0.5}, primary="correct")   # the attempt's final reward
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import math
import threading
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

import msgspec

from agl_kernel import semconv
from agl_kernel.rewards import get_reward
from agl_kernel.tracer import SpanHandle, TraceScope, current_scope

__all__ = [
    "NoTraceContextWarning",
    "Operation",
    "emit_exception",
    "emit_message",
    "emit_object",
    "emit_reward",
    "get_reward",
    "last_llm_call",
    "operation",
    "set_last_llm_call",
    "to_json",
]

F = TypeVar("F", bound=Callable[..., Any])

_LAST_LLM_CALL: contextvars.ContextVar[str | None] = contextvars.ContextVar("agl_last_llm_call", default=None)
_warned: set[str] = set()
_warned_lock = threading.Lock()


class NoTraceContextWarning(UserWarning):
    """An emitter was called outside any trace context; it recorded nothing."""


def _scope_or_warn(emitter: str) -> TraceScope | None:
    scope = current_scope()
    if scope is None and emitter not in _warned:
        with _warned_lock:
            first = emitter not in _warned
            _warned.add(emitter)
        if first:
            warnings.warn(
                f"{emitter}() was called outside any agl trace context, so it recorded nothing (this warning is "
                f"shown once). Emitters record only while a runner runs the agent, inside "
                f"Tracer.trace_context(); outside training they do nothing.",
                NoTraceContextWarning,
                stacklevel=3,
            )
    return scope


def to_json(value: Any) -> str:
    """``value`` as JSON for a span attribute: structs, dataclasses, pydantic models (``model_dump``) and
    containers of them; anything else JSON cannot express becomes its ``repr``."""
    try:
        return msgspec.json.encode(value, enc_hook=_json_fallback).decode()
    except (TypeError, ValueError, OverflowError, RecursionError):
        return msgspec.json.encode(repr(value)).decode()


def _json_fallback(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    return repr(value)


def _step_span_id(step: str | Operation | SpanHandle | None) -> str | None:
    if step is None:
        return None
    span_id = step.span_id if isinstance(step, (Operation, SpanHandle)) else step
    if span_id is None:  # an operation that recorded nothing (outside a trace context)
        return None
    if not isinstance(span_id, str) or len(span_id) != 16 or any(c not in "0123456789abcdef" for c in span_id):
        raise ValueError(
            f"step must be a span id (16 lowercase hex digits, e.g. from last_llm_call()), an operation, or None; "
            f"got {step!r}"
        )
    return span_id


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or (not isinstance(value, (int, float)) and not hasattr(value, "__float__")):
        raise TypeError(f"{what} must be a number, not {type(value).__name__} ({value!r})")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{what} must be a finite number, not {number!r}")
    return number


def _reward_attributes(value: float | Mapping[str, float], primary: str | None) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        if primary is not None:
            raise TypeError("primary= names one of several named rewards; a single value needs none")
        return {semconv.REWARD_VALUE: _number(value, "the reward")}
    values = {}
    for name, raw in value.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"reward names must be non-empty strings, not {name!r}")
        values[name] = _number(raw, f"the reward {name!r}")
    if not values:
        raise ValueError("emit_reward() got an empty dict; give at least one named value")
    if primary is None:
        if len(values) > 1:
            raise ValueError(
                f"emit_reward() got several named rewards ({', '.join(values)}); say which one is the reward "
                f"with primary=..."
            )
        primary = next(iter(values))
    elif primary not in values:
        raise ValueError(f"primary={primary!r} is not one of the rewards given: {', '.join(values)}")
    attributes: dict[str, Any] = {semconv.REWARD_NAMED_PREFIX + name: v for name, v in values.items()}
    attributes[semconv.REWARD_PRIMARY] = primary
    attributes[semconv.REWARD_VALUE] = values[primary]
    return attributes


def emit_reward(
    value: float | Mapping[str, float],
    *,
    primary: str | None = None,
    step: str | Operation | SpanHandle | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> str | None:
    """Record a reward; returns its span id (``None`` outside a trace context).

    ``value``: a number, or a dict of named numbers with ``primary`` naming the one that is *the* reward (not
    needed for a dict of one). ``step``: the step the reward is credit for: the span id of an LLM call
    (:func:`last_llm_call`) or an :func:`operation` (its LLM calls share the credit); without it the reward is
    for the whole attempt, and the last such reward is the attempt's final reward.
    """
    reward_attributes = _reward_attributes(value, primary)
    step_id = _step_span_id(step)
    scope = _scope_or_warn("emit_reward")
    if scope is None:
        return None
    if step_id is not None:
        reward_attributes[semconv.REWARD_STEP_SPAN_ID] = step_id
    return scope.tracer.emit_span(scope, semconv.REWARD_SPAN, {**(attributes or {}), **reward_attributes})


def emit_message(message: str, *, attributes: Mapping[str, Any] | None = None) -> str | None:
    """Record a free-form message (a log line worth keeping with the trace); returns its span id."""
    if not isinstance(message, str):
        raise TypeError(f"emit_message() takes a str, not {type(message).__name__}; use emit_object() for objects")
    scope = _scope_or_warn("emit_message")
    if scope is None:
        return None
    return scope.tracer.emit_span(scope, semconv.MESSAGE_SPAN, {**(attributes or {}), semconv.MESSAGE_BODY: message})


def emit_object(obj: Any, *, attributes: Mapping[str, Any] | None = None) -> str | None:
    """Record any object as JSON (see :func:`to_json`); returns its span id."""
    scope = _scope_or_warn("emit_object")
    if scope is None:
        return None
    recorded = {semconv.OBJECT_JSON: to_json(obj), semconv.OBJECT_TYPE: type(obj).__qualname__}
    return scope.tracer.emit_span(scope, semconv.OBJECT_SPAN, {**(attributes or {}), **recorded})


def emit_exception(error: BaseException, *, attributes: Mapping[str, Any] | None = None) -> str | None:
    """Record an exception the agent handled (type, message and stack trace; status ERROR); returns its span id."""
    if not isinstance(error, BaseException):
        raise TypeError(f"emit_exception() takes an exception, not {type(error).__name__}")
    scope = _scope_or_warn("emit_exception")
    if scope is None:
        return None
    return scope.tracer.emit_span(scope, semconv.EXCEPTION_SPAN, dict(attributes or {}), error=error)


def last_llm_call() -> str | None:
    """The span id of the last LLM call made in this context (by an instrumented client), for
    ``emit_reward(..., step=last_llm_call())``; ``None`` when none was recorded."""
    return _LAST_LLM_CALL.get()


def set_last_llm_call(span_id: str | None) -> None:
    """For instrumentations: note the span id of the LLM call just started in this context."""
    _LAST_LLM_CALL.set(span_id)


# ---------------------------------------------------------------------------------------------------- operation

_NOT_GIVEN: Any = object()


class Operation:
    """A step of the agent recorded as a span with its input and output; made by :func:`operation`.

    As a context manager it records one block (``with operation("search", input=q) as op: op.set_output(hits)``);
    as a decorator it records every call of the function, its bound arguments as input and its return value as
    output. An exception ends the span with status ERROR and propagates.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        input: Any = _NOT_GIVEN,
        agent: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        record_io: bool = True,
    ) -> None:
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"an operation's name must be a non-empty str, not {name!r}")
        if agent is not None and (not isinstance(agent, str) or not agent):
            raise TypeError(f"agent must be a non-empty str, not {agent!r}")
        self.name = name
        self.agent = agent
        self.record_io = record_io
        self._input = input
        self._attributes = dict(attributes or {})
        self._handle: SpanHandle | None = None
        self._span_id: str | None = None

    @property
    def span_id(self) -> str | None:
        """The span id of the operation, once it has started (``None`` outside a trace context); it stays after
        the operation ends, for ``emit_reward(..., step=op)``."""
        return self._span_id

    def set_output(self, output: Any) -> None:
        """Record the block's output (a context manager's result)."""
        if self._handle is not None and self.record_io:
            self._handle.set_attributes({semconv.OPERATION_OUTPUT: to_json(output)})

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        if self._handle is not None:
            self._handle.set_attributes(attributes)

    # -------------------------------------------------------------------------------- context manager

    def _start(self, name: str, input: Any) -> None:
        if self._handle is not None:
            raise RuntimeError(f"operation {name!r} is already open; use a new operation(...) for each block")
        scope = _scope_or_warn("operation")
        if scope is None:
            return
        attributes = {**self._attributes, semconv.OPERATION_NAME: name}
        if self.agent is not None:
            attributes[semconv.GEN_AI_AGENT_NAME] = self.agent
        if input is not _NOT_GIVEN and self.record_io:
            attributes[semconv.OPERATION_INPUT] = to_json(input)
        self._handle = scope.tracer.start_span(scope, name, attributes, current=True)
        self._span_id = self._handle.span_id

    def _end(self, error: BaseException | None) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.end(error)

    def __enter__(self) -> Operation:
        self._start(self.name or "operation", self._input)
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self._end(exc)

    async def __aenter__(self) -> Operation:
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self._end(exc)

    # -------------------------------------------------------------------------------- decorator

    def __call__(self, fn: F) -> F:
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(
                f"operation cannot decorate the generator {fn.__qualname__}: its span would end before the "
                f"generator runs. Use `with operation(...)` inside it instead."
            )
        name = self.name or fn.__qualname__
        signature = _signature(fn)

        def fresh(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Operation:
            op = Operation(name, agent=self.agent, attributes=self._attributes, record_io=self.record_io)
            op._start(name, _bound_arguments(signature, args, kwargs) if self.record_io else _NOT_GIVEN)
            return op

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                op = fresh(args, kwargs)
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as error:
                    op._end(error)
                    raise
                op.set_output(result)
                op._end(None)
                return result

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            op = fresh(args, kwargs)
            try:
                result = fn(*args, **kwargs)
            except BaseException as error:
                op._end(error)
                raise
            op.set_output(result)
            op._end(None)
            return result

        return wrapper  # type: ignore[return-value]


@overload
def operation(fn: F, /) -> F: ...


@overload
def operation(
    name: str | None = None,
    /,
    *,
    input: Any = _NOT_GIVEN,
    agent: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    record_io: bool = True,
) -> Operation: ...


def operation(
    name: Any = None,
    /,
    *,
    input: Any = _NOT_GIVEN,
    agent: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    record_io: bool = True,
) -> Any:
    """Record a step of the agent as a span: ``@operation``, ``@operation("name", agent="planner")`` or
    ``with operation("name", input=...) as op``. ``agent`` names the agent the step belongs to
    (``gen_ai.agent.name``: the triplet adapter's ``agent_match`` selects the LLM calls made inside it);
    ``record_io=False`` keeps inputs and outputs out of the span."""
    if callable(name) and not isinstance(name, str):
        return Operation()(name)
    return Operation(name, input=input, agent=agent, attributes=attributes, record_io=record_io)


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def _bound_arguments(signature: inspect.Signature | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if signature is None:
        return {"args": list(args), "kwargs": kwargs}
    try:
        bound = signature.bind_partial(*args, **kwargs)
    except TypeError:  # the call itself is wrong; the function will say so
        return {"args": list(args), "kwargs": kwargs}
    return {k: v for k, v in bound.arguments.items() if k not in ("self", "cls")}
