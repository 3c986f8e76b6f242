"""The kernel's built-in ``agl`` commands besides training (``_train_cli``) and serving (``server._cli``):
``agl plugins``, ``agl demo``, ``agl rollouts``, ``agl runs`` and ``agl resources``. They reach the ``agl`` group
through the ``agl_register_commands`` hook, as a plugin's commands do (:mod:`agl_kernel._builtin_hooks`)."""

from __future__ import annotations

import json
from typing import Any

import click

from agl_kernel._cli_token import token_option
from agl_kernel.errors import ConfigError
from agl_kernel.plugins import KINDS

__all__ = ["BUILTIN_COMMANDS"]


@click.group("plugins", invoke_without_command=True)
@click.option("--kind", type=click.Choice(KINDS), default=None, help="Only plugins of this kind.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@click.option("--check", is_flag=True, help="Import every plugin and report the ones that fail to load.")
@click.pass_context
def plugins_command(ctx: click.Context, kind: str | None, as_json: bool, check: bool) -> None:
    """List installed plugins: kind, name, distribution, version and module; `agl plugins show NAME` prints one
    component's options.

    --check imports each one and checks that it implements its kind's interface. A plugin whose distribution
    needs another agl-kernel version is listed with why and skipped; a name that two distributions register is
    listed with which one is used (the kernel's built-ins win; NAME@DISTRIBUTION picks another).
    AGL_DISABLE_PLUGIN_AUTOLOAD=1 hides all but the kernel's built-ins; AGL_PLUGINS=a,b shows only those
    distributions or entry-point names (and the built-ins).
    """
    if ctx.invoked_subcommand is not None:
        return
    import msgspec

    from agl_kernel.plugins import PLUGIN_API_VERSION, kernel_version, list_plugins

    infos = list_plugins(kind, check=check)
    failed = [info for info in infos if info.error]
    if as_json:
        click.echo(json.dumps([msgspec.structs.asdict(info) for info in infos], indent=2))
        raise SystemExit(1 if failed and check else 0)

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"agl plugins (agl-kernel {kernel_version()}, plugin API {PLUGIN_API_VERSION})")
    for column in ("kind", "name", "distribution", "version"):
        table.add_column(column)
    table.add_column("module", overflow="fold")
    if check:
        table.add_column("loads")
    for info in infos:
        row = [escape(text) for text in (info.kind, info.name, info.distribution, info.version, info.module)]
        loads = "[red]no[/red]" if info.error else "[green]yes[/green]"
        if not info.error and (info.note or "").startswith("not usable without an extra"):
            loads = "[yellow]needs an extra[/yellow]"
        table.add_row(*row, *([loads] if check else []))
    console = Console()
    console.print(table)
    for info in failed:
        console.print(
            f"[red]{escape(info.kind)}/{escape(info.name)}[/red]: {escape(info.error or '')}", highlight=False
        )
    for info in infos:
        if info.note:
            console.print(
                f"[yellow]{escape(info.kind)}/{escape(info.name)}[/yellow] from {escape(info.distribution)}: "
                f"{escape(info.note)}",
                highlight=False,
            )
    if failed and check:
        raise SystemExit(1)


@plugins_command.command("show")
@click.argument("name")
@click.option("--kind", type=click.Choice(KINDS), default=None, help="The kind, when NAME is used by several.")
def plugins_show_command(name: str, kind: str | None) -> None:
    """One component's options: name, type, default and what it does (from its options class), as a run file's
    table takes them (`[algorithm] name = "NAME"`, then the options; or --set algorithm.OPTION=VALUE)."""
    import attrs
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from agl_kernel.config import COMPONENT_TABLES, describe_options, options_class
    from agl_kernel.plugins import list_plugins, load_component

    plain = name.partition("@")[0]
    infos = [i for i in list_plugins(kind) if i.name == plain and i.kind != "plugins"]
    if not infos:
        raise ConfigError(f"no component named {plain!r}{f' of kind {kind}' if kind else ''}; `agl plugins` lists them")
    table_of = {plural: table for table, plural in COMPONENT_TABLES.items()}
    console = Console()
    for info in infos:
        if "@" in name and info.distribution.lower() != name.partition("@")[2].lower():
            continue
        component = load_component(info.kind, f"{info.name}@{info.distribution}")
        doc = (getattr(component, "__doc__", None) or "").strip().split("\n")[0]
        console.print(
            f"[bold]{escape(info.name)}[/bold]: {escape(table_of[info.kind])} from {escape(info.distribution)} "
            f"{escape(info.version)} ({escape(info.module)})",
            highlight=False,
        )
        if doc:
            console.print(escape(doc), highlight=False)
        options = describe_options(options_class(component))
        if not options:
            console.print("no options\n", highlight=False)
            continue
        table = Table(show_header=True, box=None, pad_edge=False)
        for column in ("option", "type", "default", "doc"):
            table.add_column(column, overflow="fold")
        for option in options:
            default = "(required)" if option.default is attrs.NOTHING else repr(option.default)
            table.add_row(escape(option.name), escape(option.type), escape(default), escape(option.doc))
        console.print(table)
        console.print(
            f"set with: --set {table_of[info.kind]}.OPTION=VALUE, or in a run file's "
            f"{escape('[' + table_of[info.kind] + ']')} table\n",
            highlight=False,
        )


@click.command("demo")
@click.option("--store", default=None, help="The store, by name (see `agl plugins`). Default: sqlite.")
@click.option("--path", default=None, help="The store's file, for stores that keep one. Default: ./.agl/agl.db.")
@click.option("--tasks", "n_tasks", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--workers", "n_workers", type=click.IntRange(min=1), default=4, show_default=True)
def demo_command(store: str | None, path: str | None, n_tasks: int, n_workers: int) -> None:
    """Train the baseline algorithm on a toy arithmetic agent, in this process."""
    from agl_kernel._demo import run_demo

    run_demo(store=store, path=path, n_tasks=n_tasks, n_workers=n_workers)


_store_options = [
    click.option("--store", default=None, help="The store, by name (see `agl plugins`). Default: sqlite."),
    click.option("--path", default=None, help="The store's file. Default: ./.agl/agl.db."),
    click.option("--url", default=None, help="The URL of a store server (`agl store serve`), instead of a file."),
]


def _with_store_options(command: Any) -> Any:
    for option in reversed(_store_options):
        command = option(command)
    return command


def _run_on_store(coroutine: Any, url: str | None = None) -> Any:
    """Run a read of the store (a server refusing the token is one line: the ``agl`` group turns it into one)."""
    import asyncio

    return asyncio.run(coroutine)


_token_option = token_option


@click.group("rollouts")
def rollouts_group() -> None:
    """Inspect the rollouts in a store."""


@rollouts_group.command("why")
@click.argument("rollout_id")
@_with_store_options
@_token_option
@click.option("--attempt", "attempt_id", default="latest", show_default=True, help="Which attempt.")
@click.option("--agent-match", default=None, help="Only LLM calls of agents whose name matches this regex.")
@click.option("--merge", is_flag=True, help="Merge consecutive calls whose tokens continue each other.")
@click.option("--final-reward", type=click.Choice(["all", "last", "none"]), default="all", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def rollouts_why_command(
    rollout_id: str,
    store: str | None,
    path: str | None,
    url: str | None,
    token: str | None,
    attempt_id: str,
    agent_match: str | None,
    merge: bool,
    final_reward: str,
    as_json: bool,
) -> None:
    """Show the training data (triplets) a rollout gives, and why each LLM call that gave none did not."""
    from agl_kernel import _why
    from agl_kernel.adapters import TripletAdapter

    try:
        adapter = TripletAdapter(agent_match=agent_match, merge=merge, final_reward=final_reward)  # type: ignore[arg-type]
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--agent-match") from err
    report = _run_on_store(_why.explain(_why.open_store(store, path, url, token), rollout_id, attempt_id, adapter), url)
    if as_json:
        click.echo(_why.to_json(report))
        return
    from rich.console import Console

    _why.render(report, Console())


_STATUSES = ["queuing", "preparing", "running", "succeeded", "failed", "cancelled", "requeuing"]


@rollouts_group.command("list")
@_with_store_options
@_token_option
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(_STATUSES),
    help="Only rollouts in this status (repeatable).",
)
@click.option(
    "--mode", "modes", multiple=True, type=click.Choice(["train", "val", "test"]), help="Only this mode (repeatable)."
)
@click.option(
    "--since", default=None, help="Only rollouts started since then: a duration ago (10m, 2h) or an ISO time."
)
@click.option(
    "--until", default=None, help="Only rollouts started until then: a duration ago (10m, 2h) or an ISO time."
)
@click.option("--run", "run", default=None, help="Only the rollouts of this run (`agl runs list` shows run ids).")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Show at most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def rollouts_list_command(
    store: str | None,
    path: str | None,
    url: str | None,
    token: str | None,
    statuses: tuple[str, ...],
    modes: tuple[str, ...],
    since: str | None,
    until: str | None,
    run: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """The newest rollouts: id, status, mode, attempts, reward, start time and, for failed ones, the exception."""
    from agl_kernel import _rollouts_view, _why

    since_time = _rollouts_view.parse_time(since, "--since")
    until_time = _rollouts_view.parse_time(until, "--until")
    report = _run_on_store(
        _rollouts_view.list_rollouts(
            _why.open_store(store, path, url, token),
            status=list(statuses) or None,
            mode=list(modes) or None,
            since=since_time,
            until=until_time,
            run=run,
            limit=limit,
        ),
        url,
    )
    if as_json:
        click.echo(_rollouts_view.list_to_json(report))
        return
    from rich.console import Console

    _rollouts_view.render_list(report, Console())


@rollouts_group.command("show")
@click.argument("rollout_id")
@_with_store_options
@_token_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def rollouts_show_command(
    rollout_id: str, store: str | None, path: str | None, url: str | None, token: str | None, as_json: bool
) -> None:
    """One rollout: its attempts, reward and the exception its last failed attempt ended with."""
    from agl_kernel import _rollouts_view, _why

    report = _run_on_store(_rollouts_view.show_rollout(_why.open_store(store, path, url, token), rollout_id), url)
    if as_json:
        click.echo(_rollouts_view.show_to_json(report))
        return
    from rich.console import Console

    _rollouts_view.render_show(report, Console())


@click.group("runs")
def runs_group() -> None:
    """Inspect the runs in a store: each fit/dev/train is one, with its own id."""


@runs_group.command("list")
@_with_store_options
@_token_option
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="Show at most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def runs_list_command(
    store: str | None, path: str | None, url: str | None, token: str | None, limit: int, as_json: bool
) -> None:
    """The newest runs: id, algorithm, start time, rollouts finished / failed / running, the resources they used."""
    from agl_kernel import _rollouts_view, _why

    report = _run_on_store(_rollouts_view.runs_report(_why.open_store(store, path, url, token), limit), url)
    if as_json:
        click.echo(_rollouts_view.runs_to_json(report))
        return
    from rich.console import Console

    _rollouts_view.render_runs(report, Console())


@click.group("resources")
def resources_group() -> None:
    """Inspect the resources (prompts, LLM endpoints) published in a store."""


@resources_group.command("list")
@_with_store_options
@_token_option
def resources_list_command(store: str | None, path: str | None, url: str | None, token: str | None) -> None:
    """Every resources id: its number of versions, when it last changed, and what it holds."""
    from rich.console import Console

    from agl_kernel import _resources_view, _why

    Console().print(_run_on_store(_resources_view.list_table(_why.open_store(store, path, url, token)), url))


@resources_group.command("show")
@click.argument("name")
@click.option("--id", "resources_id", default=None, help="The resources id. Default: that of the latest resources.")
@click.option("--diff", is_flag=True, help="Show each change as a diff against the version before.")
@_with_store_options
@_token_option
def resources_show_command(
    name: str,
    resources_id: str | None,
    diff: bool,
    store: str | None,
    path: str | None,
    url: str | None,
    token: str | None,
) -> None:
    """The history of the resource NAME (a prompt template, an LLM): every version of the resources id in which it
    changed, oldest first."""
    from rich.console import Console

    from agl_kernel import _resources_view, _why

    _resources_view.print_history(
        _run_on_store(_resources_view.history(_why.open_store(store, path, url, token), name, resources_id), url),
        Console(),
        diff,
    )


BUILTIN_COMMANDS = [plugins_command, demo_command, rollouts_group, runs_group, resources_group]
"""This module's commands, in the order ``agl --help`` lists them (alphabetical anyway)."""
