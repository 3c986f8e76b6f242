"""The ``agl`` command group. Every command reaches it through the ``agl_register_commands`` hook: the kernel's own
(:mod:`agl_kernel._builtin_hooks`: train, dev, runner, config, store, proxy, plugins, demo, rollouts, runs,
resources) first, then each plugin's, so a plugin can add anything a built-in is, and never replace a built-in.
Commands are added the first time one is looked up (or ``--help`` lists them). Any :class:`AglError` a command
raises, a store server refusing the token included, is one line with exit code 2."""

from __future__ import annotations

import warnings
from typing import Any

import click

from agl_kernel._cli_token import refused_token
from agl_kernel.errors import AglError

__all__ = ["cli", "main"]


class _AglGroup(click.Group):
    """A click group whose commands come from the ``agl_register_commands`` hook (lazily), and that shows agl
    errors as one line without a traceback."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._commands_from: Any = None  # the plugin manager whose commands were added

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self.add_hook_commands()
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self.add_hook_commands()
        return super().list_commands(ctx)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as err:
            refused = refused_token(err)  # a store server refused the token, wherever in the command
            if refused is not None:
                raise _ConfigExit(refused) from err
            if isinstance(err, AglError):  # agl's own errors say what to do: one line, as for a bad flag
                raise _ConfigExit(str(err)) from err
            raise

    def add_hook_commands(self) -> None:
        """The commands of every ``agl_register_commands`` implementation (again if the plugin manager was reset):
        the kernel's own first (its errors are the kernel's bugs: raised), then each plugin's on its own, so that
        one broken plugin does not hide the others' commands. A plugin that fails, or that tries to replace a
        built-in command, is reported with a warning; the built-in stays."""
        from agl_kernel.plugins import BUILTIN_HOOKS, AglPluginWarning, get_plugin_manager, strict_plugins

        manager = get_plugin_manager()
        if manager is self._commands_from:
            return
        self.commands.clear()
        impls = manager.hook.agl_register_commands.get_hookimpls()
        for impl in impls:
            if impl.plugin_name == BUILTIN_HOOKS:
                impl.function(**{name: self for name in impl.argnames})
        builtins = dict(self.commands)
        for impl in impls:
            if impl.plugin_name == BUILTIN_HOOKS:
                continue
            try:
                impl.function(**{name: self for name in impl.argnames})
            except Exception as err:
                if strict_plugins():
                    raise
                warnings.warn(
                    f"The agl plugin {impl.plugin_name!r} failed to add its commands: {type(err).__name__}: {err}",
                    AglPluginWarning,
                    stacklevel=2,
                )
            for name, command in builtins.items():
                if self.commands.get(name) is not command:
                    self.commands[name] = command
                    warnings.warn(
                        f"The agl plugin {impl.plugin_name!r} tried to replace the built-in command {name!r}; "
                        f"the built-in is kept. Give the plugin's command another name.",
                        AglPluginWarning,
                        stacklevel=2,
                    )
        self._commands_from = manager


class _ConfigExit(click.ClickException):
    """A configuration mistake or any other :class:`AglError`: one line, exit code 2 (as for a bad flag)."""

    exit_code = 2


@click.group(cls=_AglGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="agl-kernel", prog_name="agl")
def cli() -> None:
    """agl: train AI agents with reinforcement learning and prompt optimization."""


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``agl`` console script."""
    cli.main(args=argv, prog_name="agl")


if __name__ == "__main__":
    main()
