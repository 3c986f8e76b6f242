"""The app factory: the REST routes, OTLP ingestion, health, metrics, auth, errors and plugin routes in one app."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from litestar import Litestar, Request, Response, get, post
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.routes import HTTPRoute
from litestar.types import ControllerRouterHandler

from agl_kernel.server._auth import bearer_auth, unrouted_refusal
from agl_kernel.server._errors import error_body, handle_exception, logger
from agl_kernel.server._metrics import CONTENT_TYPE_LATEST, UNMATCHED, ServerMetrics
from agl_kernel.server._openapi import OPENAPI, render_plugins
from agl_kernel.server._otlp import OtlpError, decode_request, decompress, encode_error, encode_success, is_protobuf
from agl_kernel.server._routes import ServerContext
from agl_kernel.server._wire import API_PREFIX, MAX_WAIT_SECONDS, ServerInfo
from agl_kernel.store.base import LightningStore

__all__ = ["create_app", "server_context"]

DEFAULT_MAX_BODY_SIZE = 64 * 1024 * 1024

_OTLP_MEDIA = "application/x-protobuf", "application/json"
_OTLP_STATUS = {
    "title": "OtlpStatus",
    "description": "A google.rpc.Status as OTLP answers a refused export (code, message), with agl's error fields.",
    "type": "object",
    "properties": {
        "code": {"type": "integer", "description": "The gRPC status code"},
        "message": {"type": "string", "minLength": 1},
        "status": {"type": "integer", "description": "The HTTP status"},
        "error": {"type": "string", "description": "A stable code, as in the store API's errors"},
    },
    "required": ["code", "message"],
}
_BINARY = {"schema": {"type": "string", "format": "binary"}}


def _otlp_answer(description: str, json_schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {_OTLP_MEDIA[0]: _BINARY, _OTLP_MEDIA[1]: {"schema": json_schema}}}


_OTLP_OPENAPI = {
    "requestBody": {
        "required": True,
        "description": (
            "An OTLP ExportTraceServiceRequest (https://opentelemetry.io/docs/specs/otlp/#otlphttp) as protobuf or "
            "JSON (lowerCamelCase or snake_case field names), optionally with Content-Encoding gzip or deflate. "
            "Every span names its rollout and attempt with the attributes agl.rollout_id and agl.attempt_id (on "
            "the span or on its resource) and may carry agl.sequence_id; a request is stored whole or not at all."
        ),
        "content": {
            _OTLP_MEDIA[0]: _BINARY,
            _OTLP_MEDIA[1]: {
                "schema": {
                    "title": "ExportTraceServiceRequest",
                    "type": "object",
                    "properties": {
                        "resourceSpans": {
                            "anyOf": [
                                {
                                    "type": "array",
                                    "items": {
                                        "description": "A ResourceSpans: resource.attributes, scopeSpans[].spans[]"
                                    },
                                },
                                {"type": "null"},
                            ]
                        }
                    },
                }
            },
        },
    },
    "responses": {
        "200": _otlp_answer(
            "Stored; an empty ExportTraceServiceResponse in the request's encoding", {"type": "object"}
        ),
        "400": _otlp_answer(
            "The body is not a valid export, or a span lacks its ids (the message says which)", _OTLP_STATUS
        ),
        "404": _otlp_answer("A span names a rollout or attempt the store does not have", _OTLP_STATUS),
        "413": _otlp_answer(
            "The body, or what it decompresses to, is larger than the server accepts",
            {"anyOf": [_OTLP_STATUS, {"$ref": "#/components/schemas/ErrorBody"}]},
        ),
        "415": _otlp_answer("Neither protobuf nor JSON, or an unknown Content-Encoding", _OTLP_STATUS),
        "500": _otlp_answer("Unexpected server error; the server's log has the details", _OTLP_STATUS),
        "503": _otlp_answer("The server is shutting down or its store is closed", _OTLP_STATUS),
    },
}
"""What the OTLP route takes and answers: it reads the raw request, so litestar cannot see its bodies."""


class _App(Litestar):
    """Litestar, without its pydantic and attrs plugins unless a route handler's module already uses pydantic:
    agl's routes are msgspec end to end, and importing pydantic would add half a second to the start-up."""

    @staticmethod
    def _get_default_plugins(plugins: list[Any]) -> list[Any]:
        if "pydantic" in sys.modules:
            return Litestar._get_default_plugins(plugins)
        from litestar.plugins.core import MsgspecDIPlugin

        plugins.append(MsgspecDIPlugin())
        return plugins


def _server_info(store: LightningStore) -> ServerInfo:
    """Which store this is: its registered name (found by its class among the ``agl.stores`` entry points) and
    the absolute path of its file."""
    import os

    from agl_kernel import __version__
    from agl_kernel.plugins import list_plugins

    cls = type(store)
    backend = cls.__name__
    for info in list_plugins("stores"):
        module, _, attr = info.module.partition(":")
        if attr == cls.__qualname__ and (cls.__module__ == module or cls.__module__.startswith(module + ".")):
            backend = info.name
            break
    path = getattr(store, "path", None)
    location = os.path.abspath(path) if isinstance(path, (str, os.PathLike)) else None
    return ServerInfo(backend=backend, store=cls.__name__, location=location, version=__version__)


def server_context(app: Litestar) -> ServerContext:
    """The :class:`ServerContext` of an app made by :func:`create_app`."""
    ctx: ServerContext = app.state["agl"]
    return ctx


def _hook_routes(
    ctx: ServerContext, plugins: bool
) -> tuple[list[ControllerRouterHandler], list[ControllerRouterHandler]]:
    """The routes of the ``agl_register_routes`` implementations: (the kernel's own: the store API, always, its
    errors raised; with ``plugins``, each plugin's, called on its own: a broken plugin is skipped with a warning and
    the others' routes stay)."""
    from agl_kernel.plugins import BUILTIN_HOOKS, AglPluginWarning, get_plugin_manager, strict_plugins

    impls = get_plugin_manager().hook.agl_register_routes.get_hookimpls()
    builtin = [impl for impl in impls if impl.plugin_name == BUILTIN_HOOKS]
    others = [impl for impl in impls if impl.plugin_name != BUILTIN_HOOKS] if plugins else []
    kernel: list[ControllerRouterHandler] = []
    collected: list[ControllerRouterHandler] = []
    for impl in [*builtin, *others]:
        mine: list[ControllerRouterHandler] = []

        def register(*handlers: ControllerRouterHandler, _into: list[ControllerRouterHandler] = mine) -> None:
            if not handlers:
                raise TypeError("register() takes one or more litestar route handlers, routers or controllers")
            _into.extend(handlers)

        arguments = {"register": register, "server": ctx}
        try:
            impl.function(**{name: arguments[name] for name in impl.argnames})
        except Exception as err:
            if impl.plugin_name == BUILTIN_HOOKS or strict_plugins():
                raise
            warnings.warn(
                f"The agl plugin {impl.plugin_name!r} failed to add its server routes ({type(err).__name__}: {err});"
                " the server runs without them.",
                AglPluginWarning,
                stacklevel=3,
            )
            continue
        (kernel if impl.plugin_name == BUILTIN_HOOKS else collected).extend(mine)
    return kernel, collected


def create_app(
    store: LightningStore,
    *,
    token: str | None = None,
    route_handlers: Sequence[ControllerRouterHandler] = (),
    plugins: bool = True,
    close_store: bool = True,
    max_wait: float = MAX_WAIT_SECONDS,
    poll_slice: float = 1.0,
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    debug: bool = False,
) -> Litestar:
    """A litestar app serving ``store``: the REST API under ``/api/v1`` (and ``/api/v1/server``: which store it
    is), OTLP at ``/v1/traces``, ``/health``, ``/metrics``, the OpenAPI document at ``/schema/openapi.json`` and
    a page of it at ``/schema``.

    - ``token``: require ``Authorization: Bearer <token>`` on every route but ``/health`` (checked before the
      method: without the token, a wrong method or an unknown path is 401 too, not 405/404).
    - ``route_handlers``: more routes (litestar handlers, routers or controllers). The store API comes from the
      kernel's own ``agl_register_routes`` implementation; with ``plugins``, every plugin's routes too.
      Handlers may take a ``store: LightningStore`` parameter (it is injected).
    - ``close_store``: close the store when the app shuts down (after in-flight requests have finished).
    - ``max_wait``: the longest a long-poll request is held (clients ask again); ``poll_slice``: how often a long
      poll looks whether the server is shutting down or the client has gone.
    - ``max_body_size``: the largest request body accepted (413 beyond).
    """
    if max_wait <= 0 or poll_slice <= 0:
        raise ValueError("max_wait and poll_slice must be positive numbers of seconds")
    metrics = ServerMetrics()
    ctx = ServerContext(
        store=store, metrics=metrics, max_wait=max_wait, poll_slice=poll_slice, token_required=bool(token)
    )

    @get("/health", tags=["server"], summary="Liveness: 200 while the server serves (no auth)")
    async def health() -> dict[str, str]:
        if ctx.draining:
            raise HTTPException(status_code=503, detail="the server is shutting down")
        return {"status": "ok"}

    @get(f"{API_PREFIX}/server", tags=["server"], summary="The store this server serves: its backend and file")
    async def server_info() -> ServerInfo:
        if "server_info" not in ctx.extra:
            ctx.extra["server_info"] = _server_info(store)
        info: ServerInfo = ctx.extra["server_info"]
        return info

    @get("/metrics", tags=["server"], summary="Prometheus metrics", media_type=CONTENT_TYPE_LATEST)
    async def prometheus_metrics() -> Response[Any]:  # Any: the OpenAPI document gives no schema for it
        stats = await metrics.timed("statistics", store.statistics())
        return Response(content=metrics.render(stats), media_type=CONTENT_TYPE_LATEST)

    @post(
        "/v1/traces",
        tags=["otlp"],
        summary="OTLP/HTTP trace export (protobuf or JSON)",
        status_code=200,
        opt={OPENAPI: _OTLP_OPENAPI},
    )
    async def otlp_traces(request: Request[Any, Any, Any]) -> Response[bytes]:
        content_type = request.headers.get("content-type", "")
        protobuf = is_protobuf(content_type)
        try:
            body = decompress(await request.body(), request.headers.get("content-encoding", ""), max_body_size)
            spans = decode_request(body, content_type)
            if spans:
                await metrics.timed("add_many_spans", store.add_many_spans(spans))
                metrics.otlp_spans.inc(len(spans))
        except OtlpError as exc:
            content, media = encode_error(exc.status, str(exc), protobuf, {"error": "invalid_otlp"})
            return Response(content=content, status_code=exc.status, media_type=media)
        except Exception as exc:
            status, error = error_body(exc)
            if status >= 500 and error.error_id:
                logger.error("error id %s: OTLP export failed: %s", error.error_id, exc, exc_info=exc)
            content, media = encode_error(status, error.message, protobuf, {"error": error.error})
            return Response(content=content, status_code=status, media_type=media)
        content, media = encode_success(protobuf)
        return Response(content=content, status_code=200, media_type=media)

    def count_unmatched(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
        refusal = None if "route_handler" in request.scope else unrouted_refusal(request.scope, token)
        if refusal is not None:  # no route takes it (404, 405): without the token, that is not told
            status, body, headers = refusal
            response = Response(content=body, status_code=status, headers=headers, media_type="application/json")
        else:
            response = handle_exception(request, exc)
        if "route_handler" not in request.scope:  # no route matched: the metrics middleware never saw it
            metrics.observe_request(request.method, UNMATCHED, response.status_code, 0.0)
        return response

    async def shutdown() -> None:
        ctx.draining = True
        if close_store:
            try:
                await store.close()
            except Exception:
                logger.exception("closing the store failed")

    handlers: list[ControllerRouterHandler] = [
        health,
        server_info,
        prometheus_metrics,
        otlp_traces,
    ]
    store_api, plugin_routes = _hook_routes(ctx, plugins)
    handlers += [*store_api, *route_handlers, *plugin_routes]
    middleware: list[Any] = [metrics.middleware]
    if token:
        middleware.append(bearer_auth(token))
    from agl_kernel import __version__

    app = _App(
        route_handlers=handlers,
        middleware=middleware,
        exception_handlers={Exception: count_unmatched, HTTPException: count_unmatched},
        dependencies={"store": Provide(lambda: store, use_cache=True, sync_to_thread=False)},
        on_shutdown=[shutdown],
        openapi_config=OpenAPIConfig(
            title="agl store server",
            version=__version__,
            description="The agl store contract over HTTP (see docs/server.md), OTLP trace ingestion and metrics.",
            path="/schema",
            render_plugins=render_plugins(),
        ),
        request_max_body_size=max_body_size,
        debug=debug,
        logging_config=None,
    )
    app.state["agl"] = ctx
    _repair_options(app)
    return app


def _repair_options(app: Litestar) -> None:
    """Make every automatic ``OPTIONS`` answer list all the methods of its path.

    Litestar 2 makes a path's ``OPTIONS`` handler when the path's first handler is registered and keeps it when
    handlers for other methods join the path (``GET`` then ``PATCH`` on ``/api/v1/rollouts/{rollout_id}``): the
    handler reads the methods of the route it was made for, which the merged route replaced, so its ``Allow``
    header named only the first handler's methods. Pointed at the route as it is now, it names them all.
    """
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or "OPTIONS" not in route.route_handler_map:
            continue
        handler = route.route_handler_map["OPTIONS"][0]
        for cell in getattr(getattr(handler, "fn", None), "__closure__", None) or ():
            if isinstance(cell.cell_contents, HTTPRoute) and cell.cell_contents is not route:
                cell.cell_contents = route


logging.getLogger("agl_kernel.server").addHandler(logging.NullHandler())
