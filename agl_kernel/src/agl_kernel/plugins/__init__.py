"""agl's plugin system: entry-point discovery and loading by name, and pluggy hooks (project ``agl``).

Components are picked by name from the entry-point groups ``agl.<kind>`` (see :data:`KINDS`) with
:func:`load_component` / :func:`create_component`; hook implementations live in the ``agl.plugins`` group and
are called through :func:`get_plugin_manager`. Two environment switches limit what is visible:
``AGL_DISABLE_PLUGIN_AUTOLOAD=1`` (only the kernel's built-ins) and ``AGL_PLUGINS=dist-or-name,...`` (only those,
plus the built-ins). Hook implementations are isolated (:func:`call_hook`); ``AGL_STRICT_PLUGINS=1`` makes their
errors raise. See ``docs/writing-plugins.md``.
"""

from agl_kernel.plugins._loading import (
    DISABLE_AUTOLOAD_ENV,
    KERNEL_DISTRIBUTION,
    KINDS,
    PLUGIN_API_VERSION,
    PLUGINS_ENV,
    AglPluginWarning,
    PluginInfo,
    create_component,
    entry_point_group,
    interface_of,
    kernel_version,
    list_plugins,
    load_component,
    resolve_name,
)
from agl_kernel.plugins._manager import (
    BUILTIN_HOOKS,
    STRICT_ENV,
    call_hook,
    get_plugin_manager,
    reset_plugin_manager,
    strict_plugins,
)
from agl_kernel.plugins.hookspecs import hookimpl, hookspec

__all__ = [
    "BUILTIN_HOOKS",
    "DISABLE_AUTOLOAD_ENV",
    "KERNEL_DISTRIBUTION",
    "KINDS",
    "PLUGINS_ENV",
    "PLUGIN_API_VERSION",
    "STRICT_ENV",
    "AglPluginWarning",
    "PluginInfo",
    "call_hook",
    "create_component",
    "entry_point_group",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "interface_of",
    "kernel_version",
    "list_plugins",
    "load_component",
    "reset_plugin_manager",
    "resolve_name",
    "strict_plugins",
]
