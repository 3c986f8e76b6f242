"""The dashboard's pluggy hooks: its routes on every store server, and the ``agl dashboard`` command."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agl_kernel.plugins import hookimpl


@hookimpl
def agl_register_routes(register: Callable[..., Any]) -> None:
    from agl_dashboard._routes import dashboard_routes

    register(*dashboard_routes())


@hookimpl
def agl_register_commands(cli: Any) -> None:
    from agl_dashboard._cli import dashboard_command

    cli.add_command(dashboard_command)
