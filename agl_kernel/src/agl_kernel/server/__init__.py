"""The store server: the store contract as a REST API, OTLP trace ingestion, Prometheus metrics and health, in one
litestar app (``agl store serve``). See ``docs/server.md``.

Needs the ``server`` extra (``pip install 'agl-kernel[server]'``); importing this package does not, and the names
below are loaded on first use, so that ``agl --help`` and the client stay light.

- :func:`create_app` ``(store, *, token=None, ...) -> litestar.Litestar``
- :func:`serve` ``(store_or_app, *, host, port, token, ...)``: run it with uvicorn until SIGINT/SIGTERM.
- :func:`running_server`: ``async with running_server(store) as url:`` serves from the current event loop.
- :class:`ServerThread`: run it on a background thread (tests, embedding).
- :data:`PUBLIC`: ``opt={PUBLIC: True}`` on a route handler serves it without the bearer token (static files only).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from agl_kernel.server._auth import PUBLIC
from agl_kernel.server._wire import API_PREFIX

__all__ = [
    "API_PREFIX",
    "PUBLIC",
    "ServerContext",
    "ServerThread",
    "create_app",
    "make_server",
    "running_server",
    "serve",
    "server_context",
]

_LAZY = {
    "create_app": "agl_kernel.server._app",
    "serve": "agl_kernel.server._serve",
    "make_server": "agl_kernel.server._serve",
    "running_server": "agl_kernel.server._serve",
    "ServerThread": "agl_kernel.server._serve",
    "ServerContext": "agl_kernel.server._context",
    "server_context": "agl_kernel.server._app",
}


def require_server_dependencies() -> None:
    """Raise :class:`~agl_kernel.errors.MissingDependencyError` naming the extra when a server package is missing."""
    from agl_kernel.errors import MissingDependencyError

    for module in ("litestar", "uvicorn", "prometheus_client"):
        if importlib.util.find_spec(module) is None:
            raise MissingDependencyError(
                f"the agl store server needs {module!r}, which is not installed: pip install 'agl-kernel[server]'"
            )


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'agl_kernel.server' has no attribute {name!r}")
    require_server_dependencies()
    return getattr(importlib.import_module(_LAZY[name]), name)
