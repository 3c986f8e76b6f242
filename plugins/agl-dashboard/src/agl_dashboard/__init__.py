"""agl-dashboard: a web app on the store server (``/``) that shows rollouts, traces, rewards, resources, workers
and training progress, live. ``agl dashboard --store PATH`` serves a store file and opens it; any ``agl store
serve`` shows it too once this plugin is installed. See ``docs/dashboard.md``.

The names below load the server packages on first use, so that ``agl --help`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["API_PREFIX", "STATIC_DIR", "assets_built", "dashboard_routes"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'agl_dashboard' has no attribute {name!r}")
    return getattr(importlib.import_module("agl_dashboard._routes"), name)
