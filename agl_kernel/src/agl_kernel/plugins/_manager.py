"""The process-wide pluggy manager: built on first use, with the hook plugins of the ``agl.plugins`` group.

Hooks are called through :func:`call_hook`, which isolates each implementation: one that raises is logged once
(with its plugin's distribution) and skipped, and the run goes on; one bad plugin must not take down every run in
the environment. Plugin authors set ``AGL_STRICT_PLUGINS=1`` to have the error raised instead.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from typing import Any

import pluggy

from agl_kernel.errors import PluginError
from agl_kernel.plugins import hookspecs
from agl_kernel.plugins._loading import AglPluginWarning, _clear_discovery_cache, _entries, _Entry, _load_entries

__all__ = ["BUILTIN_HOOKS", "STRICT_ENV", "call_hook", "get_plugin_manager", "reset_plugin_manager", "strict_plugins"]

BUILTIN_HOOKS = "agl-kernel"
"""The name the kernel's own hook implementations (:mod:`agl_kernel._builtin_hooks`) are registered under."""

STRICT_ENV = "AGL_STRICT_PLUGINS"
"""Set to 1 to have a hook implementation's error raised instead of logged and skipped (for plugin authors)."""

log = logging.getLogger(__name__)

_lock = threading.RLock()
_manager: pluggy.PluginManager | None = None
_distributions: dict[str, str] = {}  # registered plugin name -> "distribution version"
_reported: set[tuple[str, str]] = set()  # (plugin name, hook) whose failure was logged already


def get_plugin_manager() -> pluggy.PluginManager:
    """The plugin manager, built on the first call: hook specs, the kernel's own hook implementations, then every
    visible ``agl.plugins`` entry point.

    A plugin that fails to import or register is skipped with an :class:`AglPluginWarning`; the rest work.
    """
    global _manager
    with _lock:
        if _manager is None:
            manager = pluggy.PluginManager("agl")
            manager.add_hookspecs(hookspecs)
            from agl_kernel import _builtin_hooks

            manager.register(_builtin_hooks, name=BUILTIN_HOOKS)  # the built-ins first, through the same hooks
            _register_hook_plugins(manager)
            _manager = manager
        return _manager


def reset_plugin_manager() -> None:
    """Forget the plugin manager and the discovered entry points; the next use rediscovers both (for tests, and
    after installing a plugin into a running process)."""
    global _manager
    with _lock:
        _manager = None
        _distributions.clear()
        _reported.clear()
    _clear_discovery_cache()


def strict_plugins() -> bool:
    """Whether ``AGL_STRICT_PLUGINS`` asks for a failing hook implementation to raise."""
    return os.environ.get(STRICT_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def call_hook(hook: str, **kwargs: Any) -> list[Any]:
    """Call every implementation of ``hook`` with the keyword arguments it accepts, in pluggy's order; the results
    that are not ``None``. An implementation that raises is logged once per plugin and hook, naming its
    distribution, and skipped; with ``AGL_STRICT_PLUGINS=1`` the error is raised instead."""
    caller = getattr(get_plugin_manager().hook, hook)
    results = []
    for impl in reversed(caller.get_hookimpls()):  # pluggy calls the last registered first
        try:
            result = impl.function(**{name: kwargs[name] for name in impl.argnames if name in kwargs})
        except Exception as err:
            if strict_plugins():
                raise
            report_hook_failure(impl.plugin_name, hook, err)
            continue
        if result is not None:
            results.append(result)
    return results


def report_hook_failure(plugin_name: str, hook: str, err: BaseException) -> None:
    """Log (once per plugin and hook) that ``plugin_name``'s ``hook`` raised ``err`` and was skipped."""
    with _lock:
        if (plugin_name, hook) in _reported:
            return
        _reported.add((plugin_name, hook))
        source = _distributions.get(plugin_name, "a plugin registered by hand")
    log.error(
        "the agl hook plugin %r (from %s) raised in %s and is skipped: %s: %s. The run goes on; set %s=1 to raise "
        "such errors instead.",
        plugin_name,
        source,
        hook,
        type(err).__name__,
        err,
        STRICT_ENV,
        exc_info=err,
    )


def _register_hook_plugins(manager: pluggy.PluginManager) -> None:
    skipped: list[str] = []

    def skip_broken(_entry: _Entry, error: PluginError) -> None:
        skipped.append(f"{error} The plugin is skipped; the others work.")

    usable = []
    for entry in _entries("plugins")[0]:
        if entry.incompatible:
            skipped.append(f"The hook plugin {entry.name!r}: {entry.incompatible}")
        else:
            usable.append(entry)
    for entry, plugin in _load_entries(usable, skip_broken):
        what = f"The hook plugin {entry.name!r} from {entry.distribution} {entry.version}"
        name = entry.name if manager.get_plugin(entry.name) is None else f"{entry.distribution}:{entry.name}"
        _distributions[name] = f"{entry.distribution} {entry.version}"
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
