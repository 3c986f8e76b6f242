"""The kernel's own hook implementations, registered first in every plugin manager under the name
``agl-kernel``: the built-in ``agl`` commands arrive through ``agl_register_commands`` and the store server's
REST API through ``agl_register_routes``, exactly as a plugin's commands and routes do."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from agl_kernel.plugins.hookspecs import RouteRegistrar, hookimpl

if TYPE_CHECKING:
    from agl_kernel.server import ServerContext


@hookimpl
def agl_register_commands(cli: click.Group) -> None:
    from agl_kernel._commands import BUILTIN_COMMANDS
    from agl_kernel._train_cli import config_command, dev_command, runner_command, train_command
    from agl_kernel.server._cli import proxy_command, store_group

    for command in (*BUILTIN_COMMANDS, train_command, dev_command, runner_command, config_command):
        cli.add_command(command)
    cli.add_command(store_group)
    cli.add_command(proxy_command)


@hookimpl
def agl_register_routes(register: RouteRegistrar, server: ServerContext) -> None:
    from agl_kernel.server._routes import store_routes

    register(*store_routes(server))
