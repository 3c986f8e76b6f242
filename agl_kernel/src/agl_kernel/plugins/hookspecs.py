"""The hooks agl calls (pluggy project ``agl``). Implement them in a module registered in the ``agl.plugins`` group.

Two families, named by what they do:

- ``agl_register_*(...)``: add something to agl (CLI commands, store-server routes). The kernel adds its own
  built-in commands through ``agl_register_commands`` too (:mod:`agl_kernel._builtin_hooks`), so a plugin can do
  everything a built-in does.
- ``agl_on_*(...)``: be told that something happened (a rollout started or ended, a trace started or ended, a
  store was made). Return values are ignored, and an implementation that raises is logged once and skipped
  (``AGL_STRICT_PLUGINS=1`` re-raises): a plugin's bug never fails a rollout.

Every hook is called with keyword arguments only; an implementation may accept any subset of the arguments. The
argument types are the kernel's real classes (docs/reference/hooks.md is generated from this module).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click

    from agl_kernel.models import Attempt, AttemptedRollout, AttemptStatus, Span
    from agl_kernel.runner import Runner
    from agl_kernel.server import ServerContext
    from agl_kernel.store.base import LightningStore
    from agl_kernel.tracer import Tracer

__all__ = [
    "RouteRegistrar",
    "agl_on_rollout_end",
    "agl_on_rollout_start",
    "agl_on_store_created",
    "agl_on_trace_end",
    "agl_on_trace_start",
    "agl_register_commands",
    "agl_register_routes",
    "hookimpl",
    "hookspec",
]

hookspec = pluggy.HookspecMarker("agl")
hookimpl = pluggy.HookimplMarker("agl")

RouteRegistrar = Callable[..., None]
"""``register(handler, ...)``: adds Litestar route handlers, routers or controllers to the store server."""


@hookspec
def agl_register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``agl`` CLI with ``cli.add_command(...)``; a built-in command is never replaced."""


@hookspec
def agl_register_routes(register: RouteRegistrar, server: ServerContext) -> None:
    """Add routes to every store server: ``register(handler, ...)``; ``server``: its context (store, metrics)."""


@hookspec
def agl_on_rollout_start(rollout: AttemptedRollout, attempt: Attempt, runner: Runner) -> None:
    """A runner is about to run the agent on ``rollout`` (its ``attempt`` has just started)."""


@hookspec
def agl_on_rollout_end(rollout: AttemptedRollout, attempt: Attempt, runner: Runner, status: AttemptStatus) -> None:
    """A runner finished ``attempt`` of ``rollout`` with ``status``."""


@hookspec
def agl_on_trace_start(rollout_id: str, attempt_id: str, tracer: Tracer) -> None:
    """``tracer`` starts recording spans for an attempt."""


@hookspec
def agl_on_trace_end(rollout_id: str, attempt_id: str, tracer: Tracer, spans: Sequence[Span]) -> None:
    """``tracer`` stopped recording for an attempt; ``spans`` are the spans it recorded."""


@hookspec
def agl_on_store_created(store: LightningStore) -> None:
    """A store was made by name (``create_component("stores", ...)``, ``--store NAME``), once per store."""
