"""The process-wide pluggy manager: built on first use, with the hook plugins of the ``agl.plugins`` group."""

from __future__ import annotations

import threading
import warnings
from typing import Optional

import pluggy

from agl_kernel.errors import PluginError
from agl_kernel.plugins import hookspecs
from agl_kernel.plugins._loading import AglPluginWarning, _clear_discovery_cache, _Entry, _entries, _load_entries

__all__ = ["get_plugin_manager", "reset_plugin_manager"]

_lock = threading.RLock()
_manager: Optional[pluggy.PluginManager] = None


def get_plugin_manager() -> pluggy.PluginManager:
    """The plugin manager, built on the first call: hook specs, then every visible ``agl.plugins`` entry point.

    A plugin that fails to import or register is skipped with an :class:`AglPluginWarning`; the rest work.
    """
    global _manager
    with _lock:
        if _manager is None:
            manager = pluggy.PluginManager("agl")
            manager.add_hookspecs(hookspecs)
            _register_hook_plugins(manager)
            _manager = manager
        return _manager


def reset_plugin_manager() -> None:
    """Forget the plugin manager and the discovered entry points; the next use rediscovers both (for tests, and
    after installing a plugin into a running process)."""
    global _manager
    with _lock:
        _manager = None
    _clear_discovery_cache()


def _register_hook_plugins(manager: pluggy.PluginManager) -> None:
    skipped: list[str] = []

    def skip_broken(_entry: _Entry, error: PluginError) -> None:
        skipped.append(f"{error} The plugin is skipped; the others work.")

    for entry, plugin in _load_entries(_entries("plugins")[0], skip_broken):
        what = f"The hook plugin {entry.name!r} from {entry.distribution} {entry.version}"
        name = entry.name if manager.get_plugin(entry.name) is None else f"{entry.distribution}:{entry.name}"
        try:
            manager.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as err:
            skipped.append(f"{what} is skipped: pluggy refused to register it: {err}")
            continue
        unknown = [
            caller.name
            for caller in manager.get_hookcallers(plugin) or ()
            if not caller.has_spec() and caller.name.startswith("agl_")
        ]
        if unknown:
            manager.unregister(plugin)
            known = ", ".join(sorted(n for n in dir(hookspecs) if n.startswith("agl_")))
            skipped.append(f"{what} is skipped: it implements unknown hooks {unknown}; the agl hooks are: {known}.")
    for message in skipped:
        warnings.warn(message, AglPluginWarning, stacklevel=3)
