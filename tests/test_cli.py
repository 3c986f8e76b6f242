"""The ``agl`` command line, in-process with click's runner (the third-party plugin's command is tested from a
subprocess in test_plugins.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

import agl_kernel
from agl_kernel.cli import cli
from agl_kernel.plugins import (
    AglPluginWarning,
    get_plugin_manager,
    hookimpl,
    load_component,
    reset_plugin_manager,
)

BUILTINS = {"stores/memory", "tracers/noop", "algorithms/baseline", "strategies/shm", "runners/litagent"}


@pytest.fixture(autouse=True)
def clean_plugin_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for switch in ("AGL_PLUGINS", "AGL_DISABLE_PLUGIN_AUTOLOAD"):
        monkeypatch.delenv(switch, raising=False)
    reset_plugin_manager()
    yield
    reset_plugin_manager()


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), prog_name="agl", catch_exceptions=False)


class GreetPlugin:
    @hookimpl
    def agl_register_commands(self, cli: click.Group) -> None:
        @cli.command("greet")
        def greet() -> None:
            """Greet."""
            click.echo("hi")

        @cli.command("find-store")
        @click.argument("name")
        def find_store(name: str) -> None:
            """Load a store by name."""
            click.echo(load_component("stores", name).__name__)


class BrokenCommandsPlugin:
    @hookimpl
    def agl_register_commands(self, cli: click.Group) -> None:
        raise RuntimeError("boom")


class HijackingPlugin:
    @hookimpl
    def agl_register_commands(self, cli: click.Group) -> None:
        @cli.command("plugins")
        def fake() -> None:
            click.echo("hijacked")


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"agl, version {agl_kernel.__version__}"


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("agl")
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == f"agl, version {agl_kernel.__version__}"


def test_plugins_table_shows_builtins_with_their_distribution() -> None:
    result = CliRunner(env={"COLUMNS": "200"}).invoke(cli, ["plugins"])
    assert result.exit_code == 0, result.output
    for column in ("kind", "name", "distribution", "version", "module"):
        assert column in result.output
    lines = result.output.splitlines()
    memory = next(line for line in lines if " memory " in line)
    assert "stores" in memory and "agl-kernel" in memory and agl_kernel.__version__ in memory
    assert "agl_kernel.store.memory:InMemoryLightningStore" in memory


def test_plugins_json_and_kind_filter() -> None:
    listed = json.loads(invoke("plugins", "--json").output)
    assert {f"{item['kind']}/{item['name']}" for item in listed} >= BUILTINS
    assert all(
        set(item) == {"kind", "name", "distribution", "version", "module", "error", "requires_kernel", "note"}
        for item in listed
    )
    stores = json.loads(invoke("plugins", "--json", "--kind", "stores").output)
    assert {item["kind"] for item in stores} == {"stores"} and "memory" in {item["name"] for item in stores}


def test_plugins_check_imports_each_builtin() -> None:
    result = invoke("plugins", "--json", "--check")
    assert result.exit_code == 0
    checked = json.loads(result.output)
    builtins = [item for item in checked if f"{item['kind']}/{item['name']}" in BUILTINS]
    assert len(builtins) == len(BUILTINS) and all(item["error"] is None for item in builtins)


def test_unknown_kind_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["plugins", "--kind", "widgets"])
    assert result.exit_code == 2 and "stores" in result.output and "algorithms" in result.output


def test_builtin_commands_arrive_through_the_hook_like_a_plugins() -> None:
    from agl_kernel.plugins import BUILTIN_HOOKS

    impls = get_plugin_manager().hook.agl_register_commands.get_hookimpls()
    assert BUILTIN_HOOKS in {impl.plugin_name for impl in impls}
    names = set(cli.list_commands(click.Context(cli)))
    builtin = {"train", "dev", "runner", "config", "store", "proxy", "plugins", "demo", "rollouts", "runs", "resources"}
    assert builtin <= names, builtin - names
    assert invoke("plugins", "--json").exit_code == 0


def test_help_lists_builtin_and_plugin_commands() -> None:
    get_plugin_manager().register(GreetPlugin())
    result = invoke("--help")
    assert "plugins" in result.output and "demo" in result.output and "greet" in result.output


def test_plugin_commands_run_and_agl_errors_are_reported_without_traceback() -> None:
    get_plugin_manager().register(GreetPlugin())
    assert invoke("greet").output == "hi\n"
    assert invoke("find-store", "memory").output.strip() == "InMemoryLightningStore"
    result = CliRunner().invoke(cli, ["find-store", "nope"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "Error: No stores plugin named 'nope'. Available stores:" in result.output and "memory" in result.output


def test_a_failing_plugin_warns_and_the_others_commands_stay() -> None:
    manager = get_plugin_manager()
    manager.register(GreetPlugin())
    manager.register(BrokenCommandsPlugin(), name="broken-commands")
    with pytest.warns(AglPluginWarning, match="'broken-commands' failed to add its commands: RuntimeError: boom"):
        result = invoke("greet")
    assert result.output == "hi\n"


def test_a_plugin_cannot_replace_a_builtin_command() -> None:
    get_plugin_manager().register(HijackingPlugin(), name="hijacker")
    with pytest.warns(AglPluginWarning, match="'hijacker' tried to replace the built-in command 'plugins'"):
        assert "plugins" in invoke("--help").output
    result = invoke("plugins", "--json")
    assert "hijacked" not in result.output and json.loads(result.output)


def test_plugin_commands_follow_a_reset_of_the_plugin_manager() -> None:
    get_plugin_manager().register(GreetPlugin())
    assert invoke("greet").exit_code == 0
    reset_plugin_manager()
    result = CliRunner().invoke(cli, ["greet"])
    assert result.exit_code == 2 and "No such command 'greet'" in result.output


def _agl(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "agl_kernel.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", **env},
    )


def test_demo_defaults_to_the_sqlite_file_and_says_where_it_is(tmp_path: Path) -> None:
    import asyncio

    from agl_kernel.store.defaults import make_store

    result = _agl(tmp_path, "demo", "--tasks", "4", "--workers", "2")
    assert result.returncode == 0, result.stderr
    db = tmp_path / ".agl" / "agl.db"
    assert f"at {db}" in result.stdout
    assert db.is_file()

    async def stored_statuses() -> list[str]:
        async with make_store(path=db) as store:  # a later process finds the run's rollouts in the file
            return [r.status.value for r in (await store.query_rollouts()).items]

    assert asyncio.run(stored_statuses()) == ["succeeded"] * 4


def test_demo_without_the_sqlite_plugin_warns_that_nothing_is_kept(tmp_path: Path) -> None:
    result = _agl(tmp_path, "demo", "--tasks", "2", AGL_DISABLE_PLUGIN_AUTOLOAD="1")
    assert result.returncode == 0, result.stderr
    assert "(in memory)" in result.stdout and "pip install agl-store-sqlite" in result.stderr
    assert not (tmp_path / ".agl").exists()
