"""The plugin's CLI commands (``agl agentos ...``), registered through the ``agl_register_commands`` hook."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import click

from agl_kernel.errors import AglError
from agl_kernel.plugins import hookimpl

__all__ = ["agl_register_commands"]


def _open_store(store: str | None, path: str | None, url: str | None, token: str | None) -> Any:
    from agl_kernel.store.defaults import DEFAULT_STORE_PATH, make_store

    if url is not None:
        if store is not None or path is not None:
            raise AglError("give either --url or --store/--path, not both")
        return make_store("http", url=url) if token is None else make_store("http", url=url, token=token)
    if store is None or path is not None:
        file = path or DEFAULT_STORE_PATH
        if not os.path.exists(file):
            raise AglError(
                f"there is no store file at {os.path.abspath(file)}; run the command where the training ran, or "
                f"point to the store with --path FILE, --store NAME or --url SERVER_URL"
            )
    return make_store(store, path=path)


@hookimpl
def agl_register_commands(cli: click.Group) -> None:
    @cli.group("agentos")
    def agentos_group() -> None:
        """Agent-OS governance: the audit trail of governed runs (agl-runner-agentos)."""

    @agentos_group.command("audit")
    @click.option("--run", "run", default=None, help="The run whose audit trail to export (`agl runs list`).")
    @click.option("--rollout", "rollouts", multiple=True, help="Only this rollout (repeatable).")
    @click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The JSONL file to write.")
    @click.option("--store", default=None, help="The store, by name. Default: sqlite.")
    @click.option("--path", default=None, help="The store's file. Default: ./.agl/agl.db.")
    @click.option("--url", default=None, help="A store server's URL, instead of --store/--path.")
    @click.option("--token", default=None, envvar="AGL_STORE_TOKEN", help="The store server's token.")
    def audit_command(
        run: str | None,
        rollouts: tuple[str, ...],
        output: str,
        store: str | None,
        path: str | None,
        url: str | None,
        token: str | None,
    ) -> None:
        """Export every policy decision and flight-recorder entry of a run as JSON lines."""
        from agl_runner_agentos._audit import export_audit

        if run is None and not rollouts:
            raise AglError("say which run to export with --run RUN_ID (`agl runs list` shows them) or --rollout ID")
        opened = _open_store(store, path, url, token)

        async def main() -> int:
            async with opened:
                return await export_audit(opened, output, run=run, rollout_ids=list(rollouts) or None)

        count = asyncio.run(main())
        if count == 0:
            click.echo(f"no Agent-OS decisions or audit entries for {run or ', '.join(rollouts)}", err=True)
        click.echo(f"wrote {count} audit record(s) to {output}")
