"""``agl dashboard``: serve a store file with the dashboard and open it in a browser."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import webbrowser

import click

__all__ = ["dashboard_command"]


@click.command("dashboard")
@click.option(
    "--store",
    "store_path",
    default=os.path.join(".agl", "agl.db"),
    show_default=True,
    help="The SQLite store file of a run (what Trainer and `agl store serve` write).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option("--port", default=4748, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option(
    "--token",
    envvar="AGL_STORE_TOKEN",
    default=None,
    help="Require 'Authorization: Bearer TOKEN' on the data routes (default: $AGL_STORE_TOKEN); the browser "
    "opened here gets it in the address fragment, which is never sent to the server.",
)
@click.option("--no-open", is_flag=True, help="Do not open a browser; just print the address.")
def dashboard_command(store_path: str, host: str, port: int, token: str | None, no_open: bool) -> None:
    """Serve an existing store with the dashboard (rollouts, traces, resources, workers, training curves) and
    open it. The server is a full store server: runners may keep writing to the same file while you watch."""
    from agl_kernel.server import ServerThread, create_app, require_server_dependencies
    from agl_kernel.store.defaults import describe_store, make_store

    from agl_dashboard._routes import assets_built

    require_server_dependencies()
    if not os.path.isfile(store_path):
        raise click.BadParameter(
            f"there is no store file at {store_path!r}; run training first (it writes ./.agl/agl.db) or pass "
            "--store PATH",
            param_hint="--store",
        )
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        raise click.UsageError(
            f"refusing to listen on {host} without a token: anyone who can reach it could read the store. "
            "Set --token (or AGL_STORE_TOKEN), or listen on 127.0.0.1."
        )
    store = make_store("sqlite", path=store_path)
    try:
        server = ServerThread(create_app(store, token=token or None), host=host, port=port)
    except OSError as err:
        asyncio.run(store.close())
        raise click.UsageError(f"{err}; pick another --port (0: any free one)") from err
    server.start()
    url = server.url + "/"
    click.echo(f"agl dashboard: {describe_store(store)}")
    click.echo(f"open {url}" + ("  (the page asks for the token)" if token else ""))
    if not assets_built():
        click.echo(
            "warning: the dashboard's page is not built (npm ci && npm run build in plugins/agl-dashboard/frontend);"
            " the server runs and / says so",
            err=True,
        )
    if not no_open:
        webbrowser.open(url + (f"#token={token}" if token else ""))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    click.echo("agl dashboard stopped; the store is closed")
