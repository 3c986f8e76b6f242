"""The kernel's own hook implementations, registered first in every plugin manager under the name
``agl-kernel``: the built-in ``agl`` commands arrive through ``agl_register_commands`` exactly as a plugin's do."""

from __future__ import annotations

import click

from agl_kernel.plugins.hookspecs import hookimpl


@hookimpl
def agl_register_commands(cli: click.Group) -> None:
    from agl_kernel._commands import BUILTIN_COMMANDS
    from agl_kernel._train_cli import config_command, dev_command, runner_command, train_command
    from agl_kernel.server._cli import proxy_command, store_group

    for command in (*BUILTIN_COMMANDS, train_command, dev_command, runner_command, config_command):
        cli.add_command(command)
    cli.add_command(store_group)
    cli.add_command(proxy_command)
