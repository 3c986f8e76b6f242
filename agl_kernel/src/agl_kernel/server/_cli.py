"""``agl store serve``: serve a store over HTTP. litestar and uvicorn are imported only when the command runs."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import click

__all__ = ["proxy_command", "store_group"]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.removeprefix("store.")  # --set store.KEY=VALUE, the spelling of `agl train`
        if not sep or not key:
            raise click.BadParameter(f"expected key=value, not {pair!r}", param_hint="--option")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


@click.group("store")
def store_group() -> None:
    """The store: serve it over HTTP for runners, tracers and agents in other processes or languages."""


@store_group.command("serve")
@click.option(
    "--store",
    "--backend",
    "backend",
    default=None,
    help="The store plugin behind the server, by name (`agl plugins --kind stores`). Default: sqlite at --path.",
)
@click.option("--path", default=None, help="The store's file, for stores that keep one. Default: ./.agl/agl.db.")
@click.option(
    "--option",
    "--set",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="A store option (repeatable): --option uri=URI, or --set store.uri=URI as in `agl train`.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option("--port", default=4747, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option(
    "--token",
    envvar="AGL_STORE_TOKEN",
    default=None,
    help="Require 'Authorization: Bearer TOKEN' on every route but /health (default: $AGL_STORE_TOKEN).",
)
@click.option(
    "--insecure-bind",
    is_flag=True,
    help="Allow listening on a non-loopback address without a token (anyone who reaches it can change the store).",
)
@click.option("--max-wait", default=60.0, show_default=True, type=click.FloatRange(min=0.1), help="Longest long poll.")
@click.option(
    "--log-level",
    default="warning",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
@click.option("--access-log", is_flag=True, help="Log every request (slower).")
@click.option(
    "--llm-backend",
    "llm_backends",
    multiple=True,
    metavar="URL",
    help="Serve the LLM proxy too, in front of this OpenAI-compatible server (http://host:port/v1; repeatable).",
)
def serve_command(
    backend: str | None,
    path: str | None,
    options: tuple[str, ...],
    host: str,
    port: int,
    token: str | None,
    insecure_bind: bool,
    max_wait: float,
    log_level: str,
    access_log: bool,
    llm_backends: tuple[str, ...] = (),
) -> None:
    """Serve a store: the REST API under /api/v1, OTLP traces at /v1/traces, /metrics, /health, the OpenAPI
    document at /schema/openapi.json and, with --llm-backend, the LLM proxy under /rollout/ID/attempt/ID/v1.
    Stops gracefully on Ctrl-C or SIGTERM (in-flight requests finish, then the store is closed)."""
    from agl_kernel.server import require_server_dependencies

    require_server_dependencies()
    if not token and not _is_loopback(host) and not insecure_bind:
        raise click.UsageError(
            f"refusing to listen on {host} without a token: anyone who can reach it could read and change the "
            "store. Set --token (or AGL_STORE_TOKEN), listen on 127.0.0.1, or pass --insecure-bind if this network "
            "is trusted."
        )
    import logging

    from agl_kernel.server._app import create_app
    from agl_kernel.server._serve import _bound_socket, _url, make_server
    from agl_kernel.store.defaults import describe_store, make_store

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sock = _bound_socket(host, port)  # before opening the store: a busy port fails fast
    store = make_store(backend, path=path, options=_parse_options(options))
    routes: list[Any] = []
    if llm_backends:
        from agl_kernel.proxy import LLMProxy, serve_backends_option

        try:
            proxy = LLMProxy(store, serve_backends_option(llm_backends))
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--llm-backend") from err
        routes = proxy.routes()
    app = create_app(store, token=token or None, max_wait=max_wait, route_handlers=routes)
    url = _url(host, sock.getsockname()[1])
    click.echo(f"agl store server: {describe_store(store)}")
    click.echo(f"listening on {url}  (API {url}/api/v1, OTLP {url}/v1/traces, metrics {url}/metrics)")
    if llm_backends:
        click.echo(f"LLM proxy: {url}/rollout/<rollout_id>/attempt/<attempt_id>/v1 -> {', '.join(llm_backends)}")
    if token:
        click.echo("auth: bearer token required on every route but /health")
    elif _is_loopback(host):
        click.echo("auth: none (no token); only programs on this machine can reach the server")
    else:
        click.echo(f"auth: NONE, and listening on {host} (--insecure-bind): anyone who reaches it can change the store")
    make_server(app, host=host, port=sock.getsockname()[1], log_level=log_level, access_log=access_log).run(
        sockets=[sock]
    )
    click.echo("agl store server stopped; the store is closed")


@click.command("proxy", context_settings={"ignore_unknown_options": False})
@click.option(
    "--llm-backend",
    "llm_backends",
    multiple=True,
    required=True,
    metavar="URL",
    help="An OpenAI-compatible server (http://host:port/v1; repeatable).",
)
@click.option("--backend", default=None, help="The store plugin the calls are recorded in. Default: sqlite.")
@click.option("--path", default=None, help="The store's file. Default: ./.agl/agl.db.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=4747, show_default=True, type=click.IntRange(0, 65535))
@click.option("--token", envvar="AGL_STORE_TOKEN", default=None, help="Bearer token (default: $AGL_STORE_TOKEN).")
@click.option("--insecure-bind", is_flag=True, help="Allow a non-loopback address without a token.")
@click.pass_context
def proxy_command(
    ctx: click.Context,
    llm_backends: tuple[str, ...],
    backend: str | None,
    path: str | None,
    host: str,
    port: int,
    token: str | None,
    insecure_bind: bool,
) -> None:
    """The LLM proxy with its store (`agl store serve --llm-backend URL`): agents call
    /rollout/ID/attempt/ID/v1/chat/completions and every call is recorded with token ids and logprobs."""
    ctx.invoke(
        serve_command,
        backend=backend,
        path=path,
        options=(),
        host=host,
        port=port,
        token=token,
        insecure_bind=insecure_bind,
        max_wait=60.0,
        log_level="warning",
        access_log=False,
        llm_backends=llm_backends,
    )
