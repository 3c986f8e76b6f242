"""Which store a run uses when the user names none: the SQLite plugin's file at ``./.agl/agl.db``."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

from agl_kernel.errors import PluginNotFoundError
from agl_kernel.store.base import LightningStore

__all__ = ["DEFAULT_STORE", "DEFAULT_STORE_PATH", "default_store_name", "describe_store", "make_store"]

DEFAULT_STORE = "sqlite"
DEFAULT_STORE_PATH = os.path.join(".agl", "agl.db")


def default_store_name() -> str:
    """``sqlite`` when its plugin is visible, else ``memory`` (what a run that names no store uses)."""
    from agl_kernel.plugins import list_plugins

    return DEFAULT_STORE if any(i.name == DEFAULT_STORE for i in list_plugins("stores")) else "memory"


def make_store(
    spec: str | type | LightningStore | None = None,
    *,
    path: str | os.PathLike[str] | None = None,
    options: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> LightningStore:
    """The store for ``spec``: a registered name, a class, or an instance (returned as is).

    ``options`` (and ``path``, and ``kwargs`` that name an option) are validated by the store's options class: an
    option the store does not take is a :class:`~agl_kernel.errors.ConfigError`. With no ``spec`` it is the
    durable default, the ``sqlite`` plugin with its file at ``path`` (default ``./.agl/agl.db``); when that plugin
    is not installed, the in-memory store, with a warning that nothing will be kept.
    """
    from agl_kernel.plugins import create_component

    options = dict(options or {})
    if path is not None:
        options["path"] = os.fspath(path)
    store: LightningStore
    if spec is not None:
        store = create_component("stores", spec, options=options, **kwargs)
        return store
    try:
        store = create_component("stores", DEFAULT_STORE, options={"path": DEFAULT_STORE_PATH, **options}, **kwargs)
        return store
    except PluginNotFoundError:
        warnings.warn(
            "agl-store-sqlite is not installed, so this run uses the in-memory store and keeps nothing after it "
            "ends. `pip install agl-store-sqlite` for a durable store.",
            stacklevel=2,
        )
        options.pop("path", None)
        store = create_component("stores", "memory", options=options, **kwargs)
        return store


def describe_store(store: LightningStore) -> str:
    """One line for the console: the store's class and, for a store that keeps a file, its absolute path. A store
    that knows better says it itself with a ``describe()`` method: the store server's client gives the server's URL
    and the store behind it, ``http://127.0.0.1:4747 (sqlite /home/me/.agl/agl.db)``, and raises its
    ``StoreAuthError`` when the server refuses the token."""
    describe = getattr(store, "describe", None)
    if callable(describe):
        return str(describe())
    path: Any | None = getattr(store, "path", None)
    name = type(store).__name__
    if path is not None:
        return f"{name} at {os.path.abspath(path)}"
    url = getattr(store, "url", None)
    return f"{name} at {url}" if isinstance(url, str) else f"{name} (in memory)"
