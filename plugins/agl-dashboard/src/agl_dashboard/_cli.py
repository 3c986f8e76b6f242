"""``agl dashboard``: serve a store with the dashboard and open it in a browser.

The store is chosen the way every other ``agl`` command chooses it: ``--store NAME`` (a store plugin, default
``sqlite``), ``--path FILE``, ``--set store.KEY=VALUE``, a run file's ``[store]`` table (``--config``) and
``AGL_STORE__KEY`` variables, resolved by the kernel's configuration (``agl_kernel.config``). The old form,
``--store path/to/agl.db``, still works and means ``--store sqlite --path path/to/agl.db``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import webbrowser
from typing import Any

import click

__all__ = ["dashboard_command"]

_STORE_FILE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _store_flags(store: str | None, path: str | None) -> dict[str, Any]:
    """``--store`` and ``--path`` as configuration keys; the old form ``--store FILE`` becomes the sqlite store at
    that file (with a note on stderr)."""
    from agl_kernel.errors import ConfigError

    if store is not None and store.startswith(("http://", "https://")):  # a store server, as for `agl runner`
        return {"store.name": "http", "store.url": store, "store.path": path}
    if store is not None and _is_store_file(store):
        if path is not None:
            raise ConfigError(
                f"store.path: --store {store!r} is a store file (the old form) and --path {path!r} names another; "
                f"write --store sqlite --path FILE"
            )
        click.echo(
            f"note: `--store {store}` is the old form of `--store sqlite --path {store}`; it still works",
            err=True,
        )
        return {"store.name": "sqlite", "store.path": store}
    return {"store.name": store, "store.path": path}


def _is_store_file(value: str) -> bool:
    """Whether ``--store VALUE`` is the old form: a file's path, not a store plugin's name."""
    if value.lower().endswith(_STORE_FILE_SUFFIXES):
        return True
    if not os.path.isfile(value):
        return False
    from agl_kernel.plugins import list_plugins

    return value not in {info.name for info in list_plugins("stores")}  # a registered name stays a name


def _open_store(
    config_path: str | None, overrides: tuple[str, ...], flags: dict[str, Any], *, where: str = "store.path"
) -> Any:
    """The store the configuration names (``sqlite`` when it names none), checked before anything is made: an
    unknown name or option is a ConfigError, and a store file that does not exist is an error, not a new file."""
    from agl_kernel.config import Choice, load_run_config
    from agl_kernel.errors import ConfigError
    from agl_kernel.store.defaults import DEFAULT_STORE, make_store

    for text in overrides:
        if not text.partition("=")[0].strip().startswith("store."):
            raise ConfigError(f"--set {text!r}: agl dashboard takes store options only (--set store.KEY=VALUE)")
    config = load_run_config(config_path, overrides=overrides, flags=flags)
    chosen = config.choice("store")
    choice = Choice("store", chosen.name or DEFAULT_STORE, chosen.options)
    options = choice.resolve()  # the options with their defaults: the file a store keeps, for one
    path = getattr(options, "path", None)
    if isinstance(path, str) and not os.path.isfile(path):
        raise ConfigError(
            f"{where}: there is no store file at {path!r}; run training first (it writes ./.agl/agl.db) or name "
            "the file with --path FILE"
        )
    return make_store(choice.name, options=choice.options)


@click.command("dashboard")
@click.option(
    "--store",
    "store",
    default=None,
    metavar="NAME",
    help="The store, by name (`agl plugins --kind stores`) [store.name; default sqlite]. A store server's URL "
    "works too, and so does the old form, a store file's path (--store path/to/agl.db).",
)
@click.option("--path", default=None, help="The store's file [store.path; default ./.agl/agl.db].")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="store.KEY=VALUE",
    help="Set one store option, over the run file and AGL_STORE__KEY variables (repeatable).",
)
@click.option("--config", "config_path", default=None, metavar="RUN.TOML", help="A run file: its [store] table.")
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option("--port", default=4748, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option(
    "--token",
    envvar="AGL_STORE_TOKEN",
    default=None,
    help="Require 'Authorization: Bearer TOKEN' on the data routes (default: $AGL_STORE_TOKEN); the browser "
    "opened here gets it in the address fragment, which is never sent to the server. With a store server's URL "
    "for --store, it is the token sent to that server too.",
)
@click.option("--no-open", is_flag=True, help="Do not open a browser; just print the address.")
def dashboard_command(
    store: str | None,
    path: str | None,
    overrides: tuple[str, ...],
    config_path: str | None,
    host: str,
    port: int,
    token: str | None,
    no_open: bool,
) -> None:
    """Serve a store with the dashboard (rollouts, traces, resources, workers, training curves) and open it. The
    server is a full store server: runners may keep writing to the same store while you watch.

    \b
    agl dashboard                                  # the SQLite store at ./.agl/agl.db
    agl dashboard --path runs/a.db                 # another file
    agl dashboard --store NAME --set store.KEY=V   # another store plugin, with its options
    """
    from agl_dashboard._routes import assets_built
    from agl_kernel.server import ServerThread, create_app, require_server_dependencies
    from agl_kernel.store.defaults import describe_store

    require_server_dependencies()
    if host not in _LOOPBACK and not token:
        raise click.UsageError(
            f"refusing to listen on {host} without a token: anyone who can reach it could read the store. "
            "Set --token (or AGL_STORE_TOKEN), or listen on 127.0.0.1."
        )
    flags = _store_flags(store, path)
    if token and flags["store.name"] == "http":  # the store server's token (the client reads AGL_STORE_TOKEN too)
        flags["store.token"] = token
    old_form = store is not None and flags["store.name"] == "sqlite" and flags["store.path"] == store
    opened = _open_store(config_path, overrides, flags, where="--store" if old_form else "store.path")
    described = describe_store(opened)  # a store server that refuses the token stops here, in one line
    try:
        server = ServerThread(create_app(opened, token=token or None), host=host, port=port)
    except OSError as err:
        asyncio.run(opened.close())
        raise click.UsageError(f"{err}; pick another --port (0: any free one)") from err
    server.start()
    url = server.url + "/"
    click.echo(f"agl dashboard: {described}")
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
