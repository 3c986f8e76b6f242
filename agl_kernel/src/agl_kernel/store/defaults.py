"""Which store a run uses when the user names none: the SQLite plugin's file at ``./.agl/agl.db``."""

from __future__ import annotations

import os
import warnings
from typing import Any, Optional, Union

from agl_kernel.errors import PluginNotFoundError
from agl_kernel.store.base import LightningStore

__all__ = ["DEFAULT_STORE", "DEFAULT_STORE_PATH", "describe_store", "make_store"]

DEFAULT_STORE = "sqlite"
DEFAULT_STORE_PATH = os.path.join(".agl", "agl.db")


def make_store(
    spec: Union[str, type, LightningStore, None] = None,
    *,
    path: Union[str, os.PathLike, None] = None,
    **options: Any,
) -> LightningStore:
    """The store for ``spec``: a registered name, a class, or an instance (returned as is).

    With no ``spec`` it is the durable default, the ``sqlite`` plugin with its file at ``path`` (default
    ``./.agl/agl.db``); when that plugin is not installed, the in-memory store, with a warning that nothing will
    be kept. ``path`` is passed to stores that keep a file.
    """
    from agl_kernel.plugins import create_component

    if path is not None:
        options["path"] = path
    if spec is not None:
        return create_component("stores", spec, **options)
    try:
        return create_component("stores", DEFAULT_STORE, **{"path": DEFAULT_STORE_PATH, **options})
    except PluginNotFoundError:
        warnings.warn(
            "agl-store-sqlite is not installed, so this run uses the in-memory store and keeps nothing after it "
            "ends. `pip install agl-store-sqlite` for a durable store.",
            stacklevel=2,
        )
        options.pop("path", None)
        return create_component("stores", "memory", **options)


def describe_store(store: LightningStore) -> str:
    """One line for the console: the store's class and, for a store that keeps a file, its absolute path."""
    path: Optional[Any] = getattr(store, "path", None)
    name = type(store).__name__
    return f"{name} at {os.path.abspath(path)}" if path is not None else f"{name} (in memory)"
