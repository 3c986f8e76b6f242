"""Discovery and loading of plugins: every component agl loads by name goes through :func:`load_component`.

Discovery reads entry points from :mod:`importlib.metadata` (with the distribution that declares each) and
loading goes through stevedore's managers, fed those entry points. stevedore's own discovery cache is bypassed on
purpose: it drops the distribution of each entry point (``agl plugins`` and the error messages need it), and its
per-process cache (``ExtensionManager.ENTRY_POINT_CACHE``) is never invalidated, so a plugin installed while the
process runs would stay invisible. Our snapshot is keyed on ``sys.path`` and cleared by
:func:`~agl_kernel.plugins.reset_plugin_manager`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from typing import Any, Optional

import msgspec
from stevedore.extension import Extension
from stevedore.named import NamedExtensionManager

from agl_kernel.errors import MissingDependencyError, PluginError, PluginNotFoundError

__all__ = [
    "KINDS",
    "KERNEL_DISTRIBUTION",
    "DISABLE_AUTOLOAD_ENV",
    "PLUGINS_ENV",
    "AglPluginWarning",
    "PluginInfo",
    "entry_point_group",
    "load_component",
    "create_component",
    "list_plugins",
]

KINDS: tuple[str, ...] = ("stores", "tracers", "runners", "strategies", "algorithms", "adapters", "plugins")
"""The plugin kinds; kind ``k`` is registered in the entry-point group ``agl.k``."""

KERNEL_DISTRIBUTION = "agl-kernel"
DISABLE_AUTOLOAD_ENV = "AGL_DISABLE_PLUGIN_AUTOLOAD"
PLUGINS_ENV = "AGL_PLUGINS"

# What a third-party distribution of each kind is usually called (for "pip install ..." hints).
_DIST_PREFIX = {
    "stores": "agl-store-",
    "tracers": "agl-tracer-",
    "runners": "agl-runner-",
    "strategies": "agl-strategy-",
    "algorithms": "agl-algo-",
    "adapters": "agl-adapter-",
    "plugins": "agl-",
}

_KIND_LABEL = {
    "stores": "store",
    "tracers": "tracer",
    "runners": "runner",
    "strategies": "strategy",
    "algorithms": "algorithm",
    "adapters": "adapter",
    "plugins": "hook",
}


class AglPluginWarning(UserWarning):
    """A plugin failed to load or register and was skipped; everything else keeps working."""


class PluginInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One entry point of an agl plugin kind, as ``agl plugins`` lists it."""

    kind: str
    name: str
    distribution: str
    version: str
    module: str
    """The entry point's value, ``"module:attr"``."""
    error: Optional[str] = None
    """Why importing it failed; only filled in by ``list_plugins(check=True)``."""


def entry_point_group(kind: str) -> str:
    """The entry-point group of ``kind`` (``"stores"`` → ``"agl.stores"``); ``ValueError`` for an unknown kind."""
    _check_kind(kind)
    return f"agl.{kind}"


# ------------------------------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class _Entry:
    kind: str
    entry_point: EntryPoint
    distribution: str
    version: str

    @property
    def name(self) -> str:
        return self.entry_point.name

    def info(self, error: Optional[str] = None) -> PluginInfo:
        return PluginInfo(
            kind=self.kind,
            name=self.name,
            distribution=self.distribution,
            version=self.version,
            module=self.entry_point.value,
            error=error,
        )

    def describe(self) -> str:
        return f"{self.distribution} {self.version} ({self.entry_point.value})"


_lock = threading.RLock()
_snapshot: Optional[tuple[tuple[str, ...], tuple[_Entry, ...]]] = None


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _all_entries() -> tuple[_Entry, ...]:
    """Every agl entry point on ``sys.path`` (the first distribution of a name wins, as imports do)."""
    global _snapshot
    key = tuple(sys.path)
    with _lock:
        if _snapshot is not None and _snapshot[0] == key:
            return _snapshot[1]
        found = importlib.metadata.entry_points()
        entries: list[_Entry] = []
        seen: set[tuple[str, str, str]] = set()
        for kind in KINDS:
            for ep in found.select(group=f"agl.{kind}"):
                dist = getattr(ep, "dist", None)
                dist_name = (dist.metadata["Name"] if dist is not None else None) or "unknown"
                version = (dist.version if dist is not None else None) or "unknown"
                marker = (kind, ep.name, _normalize(dist_name))
                if marker in seen:
                    continue
                seen.add(marker)
                entries.append(_Entry(kind=kind, entry_point=ep, distribution=dist_name, version=version))
        _snapshot = (key, tuple(entries))
        return _snapshot[1]


def _clear_discovery_cache() -> None:
    global _snapshot
    with _lock:
        _snapshot = None
    importlib.invalidate_caches()


def _selection() -> tuple[Optional[frozenset[str]], str]:
    """The names the environment switches allow (``None``: all) and how to describe the switch in use."""
    chosen = [p.strip() for p in os.environ.get(PLUGINS_ENV, "").split(",") if p.strip()]
    if chosen:
        return frozenset(chosen) | {_normalize(p) for p in chosen}, f"{PLUGINS_ENV}={','.join(chosen)}"
    if os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() not in ("", "0", "false", "no", "off"):
        return frozenset(), f"{DISABLE_AUTOLOAD_ENV}={os.environ[DISABLE_AUTOLOAD_ENV]}"
    return None, ""


def _is_visible(entry: _Entry, allowed: Optional[frozenset[str]]) -> bool:
    if allowed is None or _normalize(entry.distribution) == KERNEL_DISTRIBUTION:
        return True
    return _normalize(entry.distribution) in allowed or entry.name in allowed


def _entries(kind: Optional[str]) -> tuple[list[_Entry], list[_Entry], str]:
    """(visible, hidden by the environment switches, the switch in use) for ``kind`` (``None``: every kind)."""
    allowed, switch = _selection()
    visible: list[_Entry] = []
    hidden: list[_Entry] = []
    for entry in _all_entries():
        if kind is None or entry.kind == kind:
            (visible if _is_visible(entry, allowed) else hidden).append(entry)
    return visible, hidden, switch


def _check_kind(kind: str) -> None:
    if kind in KINDS:
        return
    singular = {label: plural for plural, label in _KIND_LABEL.items()} | {"plugin": "plugins", "algo": "algorithms"}
    hint = f" Did you mean {singular[kind]!r}?" if kind in singular else ""
    raise ValueError(f"Unknown plugin kind {kind!r}; the kinds are: {', '.join(KINDS)}.{hint}")


# --------------------------------------------------------------------------------------------------- loading


class _Manager(NamedExtensionManager):
    """stevedore's manager, fed the entry points we discovered instead of stevedore's cached scan."""

    def __init__(
        self,
        group: str,
        entry_points: Sequence[EntryPoint],
        on_load_failure_callback: Callable[[Any, EntryPoint, BaseException], None],
    ) -> None:
        self._agl_entry_points = list(entry_points)
        super().__init__(
            group,
            names=sorted({ep.name for ep in self._agl_entry_points}),
            on_load_failure_callback=on_load_failure_callback,
            on_missing_entrypoints_callback=None,
        )

    def list_entry_points(self) -> list[EntryPoint]:
        return self._agl_entry_points


def _load_entries(
    entries: Sequence[_Entry], on_failure: Callable[[_Entry, PluginError], None]
) -> list[tuple[_Entry, Any]]:
    """Import each entry point; a failure is turned into a :class:`PluginError` and handed to ``on_failure``."""
    by_ep = {id(e.entry_point): e for e in entries}
    loaded: list[tuple[_Entry, Any]] = []
    for kind in dict.fromkeys(e.kind for e in entries):
        of_kind = [e for e in entries if e.kind == kind]

        def failed(_manager: Any, ep: EntryPoint, err: BaseException) -> None:
            on_failure(by_ep[id(ep)], _load_error(by_ep[id(ep)], err))

        manager = _Manager(f"agl.{kind}", [e.entry_point for e in of_kind], failed)
        extensions: list[Extension] = manager.extensions
        loaded.extend((by_ep[id(ext.entry_point)], ext.plugin) for ext in extensions)
    return loaded


def _load_error(entry: _Entry, err: BaseException) -> PluginError:
    error = _describe_load_error(entry, err)
    error.__cause__ = err
    return error


def _describe_load_error(entry: _Entry, err: BaseException) -> PluginError:
    what = f"The {_KIND_LABEL[entry.kind]} plugin {entry.name!r} from {entry.distribution} {entry.version}"
    if isinstance(err, ModuleNotFoundError) and err.name:
        missing = err.name
        if missing.split(".")[0] == entry.entry_point.module.split(".")[0]:
            return PluginError(
                f"{what} points to {entry.entry_point.value!r}, but its module {missing!r} does not exist: the "
                f"distribution is incomplete or out of date. Reinstall it (pip install --force-reinstall "
                f"{entry.distribution}) or report this to its authors."
            )
        return MissingDependencyError(
            f"{what} needs the module {missing!r}, which is not installed. "
            f"Install it with: {_install_hint(entry, missing.split('.')[0])}"
        )
    return PluginError(
        f"{what} ({entry.entry_point.value}) failed to load: {type(err).__name__}: {err}. "
        f"Reinstall {entry.distribution} or report this to its authors; `agl plugins --check` lists every "
        f"plugin that fails to load."
    )


_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


def _install_hint(entry: _Entry, top_module: str) -> str:
    """What to pip install for a missing module: the entry point's extras, the extra that requires it, or it."""
    if entry.entry_point.extras:
        return f"pip install '{entry.distribution}[{','.join(entry.entry_point.extras)}]'"
    dist = getattr(entry.entry_point, "dist", None)
    for requirement in (dist.requires if dist is not None else None) or ():
        name = _REQUIREMENT_NAME.match(requirement)
        if name is None or _normalize(name.group(1)) != _normalize(top_module):
            continue
        extra = _EXTRA_MARKER.search(requirement)
        if extra:
            return f"pip install '{entry.distribution}[{extra.group(1)}]'"
        return f"pip install {name.group(1)}  (a dependency of {entry.distribution})"
    return f"pip install {top_module}  (or the package that provides the module {top_module!r})"


def load_component(kind: str, name: str) -> Any:
    """The object (class or factory) registered as ``name`` in the entry-point group of ``kind``.

    Raises ``ValueError`` for an unknown kind; :class:`PluginNotFoundError` (listing the available names) when
    nothing visible has that name; :class:`MissingDependencyError` (naming what to pip install) when the plugin
    needs a package that is not installed; :class:`PluginError` for any other failure to import it.
    """
    _check_kind(kind)
    visible, hidden, switch = _entries(kind)
    matches = [e for e in visible if e.name == name]
    if not matches:
        raise PluginNotFoundError(_not_found_message(kind, name, visible, hidden, switch))
    if len(matches) > 1:
        listed = "; ".join(e.describe() for e in sorted(matches, key=lambda e: e.distribution))
        raise PluginError(
            f"Several distributions provide the {kind} plugin {name!r}: {listed}. Uninstall all but one, or "
            f"choose one with {PLUGINS_ENV}=<distribution>."
        )

    def raise_error(_entry: _Entry, error: PluginError) -> None:
        raise error

    [(_entry, obj)] = _load_entries(matches, raise_error)
    return obj


def _not_found_message(kind: str, name: str, visible: list[_Entry], hidden: list[_Entry], switch: str) -> str:
    available = ", ".join(sorted({e.name for e in visible})) or "none"
    message = f"No {kind} plugin named {name!r}. Available {kind}: {available}."
    hidden_here = [e for e in hidden if e.name == name]
    if hidden_here:
        message += (
            f" {name!r} is installed (from {hidden_here[0].distribution}) but hidden by {switch}; add "
            f"{hidden_here[0].distribution} to {PLUGINS_ENV} or unset the switch."
        )
    else:
        message += (
            f" Install a distribution that provides it (e.g. pip install {_DIST_PREFIX[kind]}{name}) and check "
            f"with `agl plugins --kind {kind}`."
        )
    return message


def create_component(kind: str, spec: Any, **kwargs: Any) -> Any:
    """Make a component from ``spec``: a name (loaded with :func:`load_component`, then called with
    ``**kwargs``), a class (called with ``**kwargs``), or an instance (returned as is; ``kwargs`` must be empty).

    A store made from a name or a class is announced with the ``agl_store_created`` hook.
    """
    _check_kind(kind)
    if isinstance(spec, str):
        obj = load_component(kind, spec)(**kwargs)
    elif isinstance(spec, type):
        obj = spec(**kwargs)
    else:
        if kwargs:
            raise TypeError(
                f"Options {sorted(kwargs)} were given with an already created {kind} object "
                f"({type(spec).__name__}); pass a name or a class to have them applied, or drop them."
            )
        return spec
    if kind == "stores":
        from agl_kernel.plugins._manager import get_plugin_manager

        get_plugin_manager().hook.agl_store_created(store=obj)
    return obj


def list_plugins(kind: Optional[str] = None, *, check: bool = False) -> list[PluginInfo]:
    """The visible plugins of ``kind`` (``None``: every kind), sorted by kind and name.

    Listing reads installed metadata only and imports nothing, so a broken plugin is listed like any other.
    With ``check=True`` each one is imported and ``error`` says why it failed to load (``None`` when it loaded).
    """
    if kind is not None:
        _check_kind(kind)
    visible, _hidden, _switch = _entries(kind)
    errors: dict[int, str] = {}
    if check:
        _load_entries(visible, lambda entry, error: errors.__setitem__(id(entry), str(error)))
    infos = [e.info(errors.get(id(e))) for e in visible]
    return sorted(infos, key=lambda i: (i.kind, i.name, i.distribution))


def _visible_hook_entries() -> list[_Entry]:
    return _entries("plugins")[0]
