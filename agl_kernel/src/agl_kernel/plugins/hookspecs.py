"""The hooks agl calls (pluggy project ``agl``). Implement them in a module registered in the ``agl.plugins`` group.

Every hook is called with keyword arguments only; an implementation may accept any subset of the arguments.
Unless a marker says otherwise, every implementation is called and return values are ignored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import pluggy

if TYPE_CHECKING:
    import click

__all__ = [
    "hookspec",
    "hookimpl",
    "agl_register_commands",
    "agl_server_routes",
    "agl_on_rollout_start",
    "agl_on_rollout_end",
    "agl_on_trace_start",
    "agl_on_trace_end",
    "agl_store_created",
]

hookspec = pluggy.HookspecMarker("agl")
hookimpl = pluggy.HookimplMarker("agl")


@hookspec
def agl_register_commands(cli: "click.Group") -> None:
    """Add subcommands to the ``agl`` CLI with ``cli.add_command(...)`` or ``@cli.command()``."""


@hookspec
def agl_server_routes(register: Callable[..., Any]) -> None:
    """Add HTTP routes to the store server: call ``register(handler, ...)`` once per route handler."""


@hookspec
def agl_on_rollout_start(rollout: Any, attempt: Any, runner: Any) -> None:
    """A runner is about to run the agent on ``rollout`` (its ``attempt`` has just started)."""


@hookspec
def agl_on_rollout_end(rollout: Any, attempt: Any, runner: Any, status: Any) -> None:
    """A runner finished an attempt of ``rollout`` with ``status`` (an ``AttemptStatus``)."""


@hookspec
def agl_on_trace_start(rollout_id: str, attempt_id: str, tracer: Any) -> None:
    """``tracer`` starts recording spans for an attempt."""


@hookspec
def agl_on_trace_end(rollout_id: str, attempt_id: str, tracer: Any, spans: Sequence[Any]) -> None:
    """``tracer`` stopped recording for an attempt; ``spans`` are the spans it recorded."""


@hookspec
def agl_store_created(store: Any) -> None:
    """A store was created by name through ``create_component("stores", ...)``; called once per store."""
