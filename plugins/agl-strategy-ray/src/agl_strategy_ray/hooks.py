"""The Ray strategy's pluggy hooks: the ``agl ray`` commands."""

from __future__ import annotations

from typing import Any

from agl_kernel.plugins import hookimpl


@hookimpl
def agl_register_commands(cli: Any) -> None:
    from agl_strategy_ray._cli import ray_group

    cli.add_command(ray_group)
