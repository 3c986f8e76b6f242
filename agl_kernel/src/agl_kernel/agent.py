"""Agents the runners can train: :class:`LitAgent`, and decorators that make one from a plain function.

An agent's rollout gets the task, what it needs from the rollout's resources and, if it asks for it, the
rollout itself (an :class:`~agl_kernel.models.AttemptedRollout`); it may be sync or async. It returns a reward
(a number), nothing (rewards then come from emitted spans), or a list of :class:`~agl_kernel.models.Span`.

    @rollout
    def agent(task, resources): ...            # resources: dict of name -> resource

    @llm_rollout
    async def agent(task, llm): ...            # llm: an LLM whose endpoint is this attempt's own (proxy) URL

    @prompt_rollout
    def agent(task, prompt_template, rollout): ...

:func:`openai_client` gives an agent an ``openai.AsyncOpenAI`` client for its LLM without the cost of making one.
"""

from __future__ import annotations

import abc
import asyncio
import functools
import inspect
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, overload

from agl_kernel.models import LLM, AttemptedRollout, PromptTemplate, ProxyLLM, Resource, RolloutMode, Span

__all__ = ["LitAgent", "RolloutResult", "as_lit_agent", "llm_rollout", "openai_client", "prompt_rollout", "rollout"]

RolloutResult = float | int | bool | Sequence[Span] | None
"""What a rollout returns: a reward, nothing, or spans to store for the attempt."""

Resources = Mapping[str, Resource]
F = TypeVar("F", bound=Callable[..., Any])


class LitAgent(abc.ABC):
    """An agent. Override :meth:`rollout`, or :meth:`training_rollout` and :meth:`validation_rollout` to behave
    differently in training and validation. Each may be a plain or an ``async`` method."""

    @abc.abstractmethod
    def rollout(self, task: Any, resources: Resources, rollout: AttemptedRollout) -> Any:
        """Run the agent once on ``task`` with ``resources``; return a :data:`RolloutResult`."""

    def training_rollout(self, task: Any, resources: Resources, rollout: AttemptedRollout) -> Any:
        return self.rollout(task, resources, rollout)

    def validation_rollout(self, task: Any, resources: Resources, rollout: AttemptedRollout) -> Any:
        return self.rollout(task, resources, rollout)

    def rollout_for(self, attempted: AttemptedRollout) -> Callable[..., Any]:
        """The method that runs ``attempted``: validation rollouts go to :meth:`validation_rollout`."""
        return self.validation_rollout if attempted.mode is RolloutMode.VAL else self.training_rollout

    def is_async(self, attempted: AttemptedRollout) -> bool:
        """Whether the method that runs ``attempted`` is a coroutine function (runs on the event loop)."""
        return inspect.iscoroutinefunction(self.rollout_for(attempted))


class _FunctionAgent(LitAgent):
    """A LitAgent around a function ``fn(task, <what it needs>[, rollout])``; calling it calls the function."""

    def __init__(self, fn: Callable[..., Any], pick: Callable[[Resources, AttemptedRollout], Any]) -> None:
        functools.update_wrapper(self, fn)
        self._fn = fn
        self._pick = pick
        params = list(inspect.signature(fn).parameters.values())
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if len(positional) < 2 and not any(p.kind is p.VAR_POSITIONAL for p in params):
            raise TypeError(
                f"{getattr(fn, '__qualname__', fn)!r} must take (task, <resource>) and optionally rollout; "
                f"it takes {len(positional)} positional argument(s)"
            )
        self._wants_rollout = len(positional) >= 3 or any(p.kind is p.VAR_POSITIONAL for p in params)
        self._is_async = inspect.iscoroutinefunction(fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn(*args, **kwargs)

    def rollout(self, task: Any, resources: Resources, rollout: AttemptedRollout) -> Any:
        needed = self._pick(resources, rollout)
        return self._fn(task, needed, rollout) if self._wants_rollout else self._fn(task, needed)

    def is_async(self, attempted: AttemptedRollout) -> bool:
        return self._is_async

    def __repr__(self) -> str:
        return f"<agl agent {getattr(self._fn, '__qualname__', self._fn)!r}>"


def _one_of(kinds: tuple[type, ...], label: str, name: str | None) -> Callable[[Resources, AttemptedRollout], Any]:
    def pick(resources: Resources, attempted: AttemptedRollout) -> Any:
        if name is not None:
            if name not in resources:
                raise LookupError(
                    f"the rollout's resources have no {name!r}; they have: {', '.join(resources) or 'none'}. "
                    f"Publish it (Trainer(initial_resources={{{name!r}: ...}}) or store.add_resources)."
                )
            found = resources[name]
            if not isinstance(found, kinds):
                raise TypeError(f"resource {name!r} is a {type(found).__name__}, not a {label}")
            return found
        matches = [r for r in resources.values() if isinstance(r, kinds)]
        if len(matches) != 1:
            names = ", ".join(f"{k} ({type(v).__name__})" for k, v in resources.items()) or "none"
            if matches:
                fix = f"name the one to use, e.g. @{'llm' if label == 'LLM' else 'prompt'}_rollout(resource_name=...)"
            elif label == "LLM":
                fix = (
                    "give the run one: agl dev/train --llm URL --llm-model NAME (e.g. `agl serve-model --model "
                    "smollm2`), or Trainer(initial_resources={'main_llm': LLM(endpoint=..., model=...)})"
                )
            else:
                fix = "give the run one: Trainer(initial_resources={'prompt': PromptTemplate(template=...)})"
            problem = "no" if not matches else "more than one"
            raise LookupError(f"the rollout's resources have {problem} {label} (resources: {names}); {fix}")
        return matches[0]

    return pick


def _resolve_llm(llm: LLM, attempted: AttemptedRollout) -> LLM:
    """A :class:`ProxyLLM` becomes a plain :class:`LLM` whose endpoint is this attempt's own proxy URL."""
    if isinstance(llm, ProxyLLM):
        return LLM(
            endpoint=llm.get_base_url(attempted.rollout_id, attempted.attempt.attempt_id),
            model=llm.model,
            sampling_parameters=llm.sampling_parameters,
            api_key=llm.api_key,
        )
    return llm


@overload
def rollout(fn: F) -> LitAgent: ...
@overload
def rollout(fn: None = None) -> Callable[[F], LitAgent]: ...
def rollout(fn: F | None = None) -> Any:
    """``fn(task, resources[, rollout])``: the agent gets every resource of the rollout, by name."""

    def make(f: F) -> LitAgent:
        return _FunctionAgent(f, lambda resources, attempted: dict(resources))

    return make(fn) if fn is not None else make


def llm_rollout(fn: F | None = None, *, resource_name: str | None = None) -> Any:
    """``fn(task, llm[, rollout])``: the agent gets the rollout's LLM (the only one, or ``resource_name``); a
    :class:`ProxyLLM` arrives with its endpoint already set to this attempt's URL, ready for an OpenAI client."""
    pick = _one_of((LLM,), "LLM", resource_name)

    def make(f: F) -> LitAgent:
        return _FunctionAgent(f, lambda res, attempted: _resolve_llm(pick(res, attempted), attempted))

    return make(fn) if fn is not None else make


_OPENAI_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()


def openai_client(llm: LLM, **options: Any) -> Any:
    """An ``openai.AsyncOpenAI`` client for ``llm`` (its endpoint and key), for use on the running event loop.

    Every client made here on one event loop shares one connection pool: a new ``AsyncOpenAI`` costs ~50 ms of CPU
    (an SSL context, a connection pool), which an agent making one per rollout pays on every rollout, on the event
    loop that its siblings share (64 agents: seconds per training step); this costs ~0.1 ms, and reuses keep-alive
    connections to the proxy. ``options`` (``timeout``, ``max_retries``, ``default_headers``, ...) apply to this
    client only. Do not close it: the pool outlives it."""
    try:
        import openai
    except ImportError as err:
        from agl_kernel.errors import MissingDependencyError

        raise MissingDependencyError("openai_client needs the openai package: `pip install openai`") from err
    loop = asyncio.get_running_loop()
    shared = _OPENAI_CLIENTS.get(loop)
    if shared is None:
        shared = _OPENAI_CLIENTS[loop] = openai.AsyncOpenAI(base_url=llm.endpoint, api_key="-")
    return shared.with_options(base_url=llm.endpoint, api_key=llm.api_key or "-", **options)


def prompt_rollout(fn: F | None = None, *, resource_name: str | None = None) -> Any:
    """``fn(task, prompt_template[, rollout])``: the agent gets the rollout's prompt template (the only one, or
    ``resource_name``)."""
    pick = _one_of((PromptTemplate,), "prompt template", resource_name)

    def make(f: F) -> LitAgent:
        return _FunctionAgent(f, pick)

    return make(fn) if fn is not None else make


def as_lit_agent(agent: Any) -> LitAgent:
    """``agent`` as a LitAgent: a LitAgent as is; a plain function ``f(task, resources[, rollout])`` as if it
    were decorated with :func:`rollout`; a ``module:name`` (or ``file.py:name``) string, the object it names."""
    if isinstance(agent, str):
        from agl_kernel.imports import import_object

        agent = import_object(agent)
    if isinstance(agent, LitAgent):
        return agent
    if isinstance(agent, type) and issubclass(agent, LitAgent):
        return agent()
    if callable(agent):
        function_agent: LitAgent = rollout(agent)
        return function_agent
    raise TypeError(f"an agent must be a LitAgent or a function (task, resources), not {type(agent).__name__}")
