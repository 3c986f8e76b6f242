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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from typing import TYPE_CHECKING, Any

import msgspec
from packaging.requirements import InvalidRequirement, Requirement
from stevedore.extension import Extension
from stevedore.named import NamedExtensionManager

from agl_kernel.errors import MissingDependencyError, PluginError, PluginNotFoundError

__all__ = [
    "DISABLE_AUTOLOAD_ENV",
    "KERNEL_DISTRIBUTION",
    "KINDS",
    "PLUGINS_ENV",
    "PLUGIN_API_VERSION",
    "AglPluginWarning",
    "PluginInfo",
    "create_component",
    "entry_point_group",
    "interface_of",
    "kernel_version",
    "list_plugins",
    "load_component",
    "resolve_name",
]

KINDS: tuple[str, ...] = (
    "stores",
    "tracers",
    "runners",
    "strategies",
    "algorithms",
    "adapters",
    "credit",
    "llm_backends",
    "plugins",
)
"""The plugin kinds; kind ``k`` is registered in the entry-point group ``agl.k``."""

KERNEL_DISTRIBUTION = "agl-kernel"

PLUGIN_API_VERSION = "1.0"
"""The version of what plugins rely on: the entry-point groups, the kinds' interfaces, the hooks, options classes and
the public modules. A minor step only adds; a major step breaks. agl-kernel 0.2.x provides 1.0; a plugin says what
it needs by the ``agl-kernel`` range it depends on (e.g. ``agl-kernel>=0.2,<0.3``)."""

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
    "credit": "agl-credit-",
    "llm_backends": "agl-llm-",
    "plugins": "agl-",
}

_KIND_LABEL = {
    "stores": "store",
    "tracers": "tracer",
    "runners": "runner",
    "strategies": "strategy",
    "algorithms": "algorithm",
    "adapters": "adapter",
    "credit": "credit",
    "llm_backends": "LLM backend",
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
    error: str | None = None
    """Why it cannot be used: needs another kernel version, or (``list_plugins(check=True)``) fails to load."""
    requires_kernel: str | None = None
    """The ``agl-kernel`` versions its distribution declares it works with (``None``: it declares none)."""
    note: str | None = None
    """A name clash (another distribution registers the same name for the same kind, and which one is used), or
    the kernel extra a built-in needs (``list_plugins(check=True)``)."""


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
    requires_kernel: str | None = None
    incompatible: str | None = None
    """Why the installed kernel does not satisfy the distribution's ``agl-kernel`` range (``None``: it does)."""

    @property
    def name(self) -> str:
        return self.entry_point.name

    @property
    def is_builtin(self) -> bool:
        return _normalize(self.distribution) == KERNEL_DISTRIBUTION

    def info(self, error: str | None = None, note: str | None = None) -> PluginInfo:
        return PluginInfo(
            kind=self.kind,
            name=self.name,
            distribution=self.distribution,
            version=self.version,
            module=self.entry_point.value,
            error=error or self.incompatible,
            requires_kernel=self.requires_kernel,
            note=note,
        )

    def describe(self) -> str:
        return f"{self.distribution} {self.version} ({self.entry_point.value})"


_lock = threading.RLock()
_snapshot: tuple[tuple[str, ...], tuple[_Entry, ...]] | None = None


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
                requires, incompatible = _kernel_range(dist, dist_name, version)
                entries.append(
                    _Entry(
                        kind=kind,
                        entry_point=ep,
                        distribution=dist_name,
                        version=version,
                        requires_kernel=requires,
                        incompatible=incompatible,
                    )
                )
        _snapshot = (key, tuple(entries))
        return _snapshot[1]


def kernel_version() -> str:
    """The installed kernel's version (from its metadata; the package's ``__version__`` when not installed)."""
    try:
        return importlib.metadata.version(KERNEL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        from agl_kernel import __version__

        return __version__


def _kernel_range(dist: Any, dist_name: str, version: str) -> tuple[str | None, str | None]:
    """(the ``agl-kernel`` range ``dist`` requires, why the installed kernel is outside it, or ``None``)."""
    if dist is None or _normalize(dist_name) == KERNEL_DISTRIBUTION:
        return None, None
    for line in dist.requires or ():
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if _normalize(requirement.name) != KERNEL_DISTRIBUTION or (
            requirement.marker is not None and not requirement.marker.evaluate({"extra": ""})
        ):
            continue
        wanted = str(requirement.specifier) or None
        installed = kernel_version()
        if wanted and not requirement.specifier.contains(installed, prereleases=True):
            return wanted, (
                f"{dist_name} {version} needs agl-kernel{wanted}, but agl-kernel {installed} is installed (plugin "
                f"API {PLUGIN_API_VERSION}); it is skipped. Install a version of {dist_name} made for this kernel, "
                f"or agl-kernel{wanted}."
            )
        return wanted, None
    return None, None


def _clear_discovery_cache() -> None:
    global _snapshot
    with _lock:
        _snapshot = None
    importlib.invalidate_caches()


def _selection() -> tuple[frozenset[str] | None, str]:
    """The names the environment switches allow (``None``: all) and how to describe the switch in use."""
    chosen = [p.strip() for p in os.environ.get(PLUGINS_ENV, "").split(",") if p.strip()]
    if chosen:
        return frozenset(chosen) | {_normalize(p) for p in chosen}, f"{PLUGINS_ENV}={','.join(chosen)}"
    if os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() not in ("", "0", "false", "no", "off"):
        return frozenset(), f"{DISABLE_AUTOLOAD_ENV}={os.environ[DISABLE_AUTOLOAD_ENV]}"
    return None, ""


def _is_visible(entry: _Entry, allowed: frozenset[str] | None) -> bool:
    if allowed is None or _normalize(entry.distribution) == KERNEL_DISTRIBUTION:
        return True
    return _normalize(entry.distribution) in allowed or entry.name in allowed


def _entries(kind: str | None) -> tuple[list[_Entry], list[_Entry], str]:
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


if TYPE_CHECKING:
    _NamedManager = NamedExtensionManager[Any]
else:  # stevedore is generic only from 5.6 on (the kernel supports 5.1)
    _NamedManager = NamedExtensionManager


class _Manager(_NamedManager):
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
        extensions: list[Extension[Any]] = manager.extensions
        for ext in extensions:
            entry = by_ep[id(ext.entry_point)]
            problem = _interface_problem(kind, ext.plugin)
            if problem is None:
                loaded.append((entry, ext.plugin))
                continue
            base = interface_of(kind)
            label = f"{base.__module__}.{base.__qualname__}" if base is not None else kind
            on_failure(
                entry,
                PluginError(
                    f"The {_KIND_LABEL[kind]} plugin {entry.name!r} from {entry.distribution} {entry.version} "
                    f"({entry.entry_point.value}) {problem}, so it does not implement the {_KIND_LABEL[kind]} "
                    f"interface ({label}); it is refused. Report this to the authors of {entry.distribution}."
                ),
            )
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


def _split_name(name: str) -> tuple[str, str | None]:
    """``"NAME@DISTRIBUTION"`` → (``NAME``, ``DISTRIBUTION``); a plain name → (``name``, ``None``)."""
    plain, sep, distribution = name.partition("@")
    return plain, (distribution.strip() or None) if sep else None


def _pick(kind: str, name: str, visible: list[_Entry]) -> list[_Entry]:
    """The entries ``name`` selects: ``NAME@DIST`` that distribution's; else the kernel's built-in when it has the
    name (a third party cannot replace a built-in by registering the same name), else every one with the name."""
    plain, distribution = _split_name(name)
    matches = [e for e in visible if e.name == plain]
    if distribution is not None:
        return [e for e in matches if _normalize(e.distribution) == _normalize(distribution)]
    builtin = [e for e in matches if e.is_builtin]
    return builtin or matches


def load_component(kind: str, name: str) -> Any:
    """The object (class or factory) registered as ``name`` in the entry-point group of ``kind``.

    ``name`` may be ``NAME@DISTRIBUTION`` to pick one of several distributions that register ``NAME``; a plain
    name that the kernel registers is always the kernel's built-in. Raises ``ValueError`` for an unknown kind;
    :class:`PluginNotFoundError` (listing the available names) when nothing visible has that name;
    :class:`MissingDependencyError` (naming what to pip install) when the plugin needs a package that is not
    installed; :class:`PluginError` when the plugin needs another kernel version, does not implement its kind's
    interface, or fails to import for any other reason.
    """
    _check_kind(kind)
    visible, hidden, switch = _entries(kind)
    matches = _pick(kind, name, visible)
    if not matches:
        raise PluginNotFoundError(_not_found_message(kind, name, visible, hidden, switch))
    if len(matches) > 1:
        listed = "; ".join(e.describe() for e in sorted(matches, key=lambda e: e.distribution))
        choices = ", ".join(f"{e.name}@{e.distribution}" for e in sorted(matches, key=lambda e: e.distribution))
        raise PluginError(
            f"Several distributions provide the {_KIND_LABEL[kind]} plugin {name!r}: {listed}. Name the one you "
            f"mean ({choices}), uninstall all but one, or choose one with {PLUGINS_ENV}=<distribution>."
        )
    [entry] = matches
    if entry.incompatible:
        raise PluginError(f"The {_KIND_LABEL[kind]} plugin {entry.name!r}: {entry.incompatible}")

    def raise_error(_entry: _Entry, error: PluginError) -> None:
        raise error

    [(_entry, obj)] = _load_entries(matches, raise_error)
    return obj


def resolve_name(kind: str, name: str) -> Any:
    """The class or factory ``name`` stands for: ``module:attr`` (or ``path/file.py:attr``) is imported, anything
    else is a registered name (``NAME`` or ``NAME@DISTRIBUTION``) loaded with :func:`load_component`."""
    if ":" in name and "@" not in name:
        from agl_kernel.imports import import_object

        try:
            return import_object(name)
        except (ValueError, ImportError, OSError, AttributeError) as err:
            raise PluginNotFoundError(f"{err}") from None
    return load_component(kind, name)


def interface_of(kind: str) -> type | None:
    """The base class components of ``kind`` implement (``None`` for hook plugins, which are modules)."""
    _check_kind(kind)
    if kind == "plugins":
        return None
    module, attr = _INTERFACES[kind]
    interface: type = getattr(importlib.import_module(module), attr)
    return interface


_INTERFACES = {
    "stores": ("agl_kernel.store.base", "LightningStore"),
    "tracers": ("agl_kernel.tracer", "Tracer"),
    "runners": ("agl_kernel.runner", "Runner"),
    "strategies": ("agl_kernel.strategy", "ExecutionStrategy"),
    "algorithms": ("agl_kernel.algorithm", "Algorithm"),
    "adapters": ("agl_kernel.adapter", "Adapter"),
    "credit": ("agl_kernel.credit", "CreditRule"),
    "llm_backends": ("agl_kernel.llm_backend", "LLMBackend"),
}


def _missing_methods(kind: str, obj: Any) -> str | None:
    """Why ``obj`` (a loaded class or factory, or a made instance) does not implement ``kind``; ``None`` if it does.
    A class that does not subclass the interface passes if it has every abstract method (duck typing)."""
    base = interface_of(kind)
    if base is None:
        return None
    cls = obj if isinstance(obj, type) else type(obj)
    if issubclass(cls, base):
        left = sorted(getattr(cls, "__abstractmethods__", ()))
        return f"leaves {', '.join(left)} unimplemented" if left else None
    missing = [m for m in sorted(getattr(base, "__abstractmethods__", ())) if not callable(getattr(cls, m, None))]
    if missing:
        return f"is not a {base.__module__}.{base.__qualname__} and lacks {', '.join(missing)}"
    return None


def _interface_problem(kind: str, obj: Any) -> str | None:
    if kind == "plugins":
        return None
    if isinstance(obj, type):
        return _missing_methods(kind, obj)
    if callable(obj):
        return None  # a factory: what it makes is checked when it is made (create_component)
    return f"is a {type(obj).__name__}, not a class or a factory function"


def _not_found_message(kind: str, name: str, visible: list[_Entry], hidden: list[_Entry], switch: str) -> str:
    available = ", ".join(sorted({e.name for e in visible})) or "none"
    plain, distribution = _split_name(name)
    providers = sorted(e.distribution for e in visible if e.name == plain)
    if distribution is not None and providers:
        return (
            f"No {kind} plugin named {plain!r} from the distribution {distribution!r}; {plain!r} is provided by: "
            f"{', '.join(providers)}."
        )
    name = plain
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


def create_component(kind: str, spec: Any, *, options: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
    """Make a component from ``spec``: a name (``NAME`` or ``NAME@DISTRIBUTION``, loaded with
    :func:`load_component`), a class, or an instance (returned as is; no options may be given with it).

    ``options`` are the user's configuration, validated by the component's options class (its ``Options``
    attribute; see :mod:`agl_kernel.config`): a wrong key or value raises :class:`~agl_kernel.errors.ConfigError`
    naming ``store.path``-style paths and the valid keys. ``kwargs`` that name an option are validated the same
    way; the others (objects such as a tracer or a model) are passed to the constructor as they are. A made
    component that does not implement its kind's interface raises :class:`PluginError`. A store made here is
    announced with the ``agl_on_store_created`` hook.
    """
    from agl_kernel.config._options import make_component

    _check_kind(kind)
    label = _KIND_LABEL[kind]
    if isinstance(spec, str):
        target = resolve_name(kind, spec)
        what = f"the {label} {spec!r}"
        if isinstance(target, type) and _interface_problem(kind, target) is not None:
            raise PluginError(f"{spec!r} {_interface_problem(kind, target)}: it cannot be used as a {label}")
    elif isinstance(spec, type):
        target, what = spec, f"the {label} class {spec.__qualname__}"
        problem = _interface_problem(kind, spec)
        if problem is not None:
            raise PluginError(f"{spec.__module__}.{spec.__qualname__} {problem}: it cannot be used as a {label}")
    else:
        if kwargs or options:
            given = sorted({*kwargs, *(options or {})})
            raise TypeError(
                f"{label}: options {given} were given with an already created {label} "
                f"({type(spec).__name__}); pass a name or a class to have them applied, or drop them."
            )
        return spec
    obj = make_component(target, options, kwargs, path=label, what=what)
    problem = _missing_methods(kind, obj)
    if problem is not None:
        raise PluginError(f"{what} made a {type(obj).__qualname__}, which {problem}: it cannot be used as a {label}")
    if kind == "stores":
        from agl_kernel.plugins._manager import call_hook

        call_hook("agl_on_store_created", store=obj)
    return obj


def list_plugins(kind: str | None = None, *, check: bool = False) -> list[PluginInfo]:
    """The visible plugins of ``kind`` (``None``: every kind), sorted by kind and name.

    Listing reads installed metadata only and imports nothing, so a broken plugin is listed like any other;
    ``error`` says when its distribution needs another kernel version, and ``note`` names a clash (another
    distribution registering the same name for the same kind, and which one is used). With ``check=True`` each one
    is imported and checked against its kind's interface, and ``error`` says why it failed (``None`` when it
    loaded); a built-in that needs one of the kernel's extras gets a ``note`` naming it instead.
    """
    if kind is not None:
        _check_kind(kind)
    visible, _hidden, _switch = _entries(kind)
    errors: dict[int, str] = {}
    extras: dict[int, str] = {}

    def failed(entry: _Entry, error: PluginError) -> None:
        # A built-in that needs one of the kernel's extras (the http store: agl-kernel[client]) is an optional
        # feature left out, not a broken plugin: a note. A third party's missing extra stays an error.
        if entry.is_builtin and isinstance(error, MissingDependencyError) and f"{entry.distribution}[" in str(error):
            extras[id(entry)] = f"not usable without an extra: {error}"
        else:
            errors[id(entry)] = str(error)

    if check:
        _load_entries([e for e in visible if not e.incompatible], failed)
    infos = [e.info(errors.get(id(e)), extras.get(id(e)) or _clash_note(e, visible)) for e in visible]
    return sorted(infos, key=lambda i: (i.kind, i.name, i.distribution))


def _clash_note(entry: _Entry, visible: list[_Entry]) -> str | None:
    others = [e for e in visible if e.kind == entry.kind and e.name == entry.name and e is not entry]
    if not others:
        return None
    names = ", ".join(e.distribution for e in others)
    if entry.is_builtin:
        return f"also registered by {names}; this built-in is used unless {entry.name}@<distribution> is named"
    if any(e.is_builtin for e in others):
        return f"shadowed by the kernel's built-in; use it as {entry.name}@{entry.distribution}"
    return f"also registered by {names}; name one as {entry.name}@<distribution>"


def _visible_hook_entries() -> list[_Entry]:
    return _entries("plugins")[0]
