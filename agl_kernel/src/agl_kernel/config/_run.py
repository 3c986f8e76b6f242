"""A run's configuration: which component of each kind, with which options, from a TOML run file, the environment
and ``--set`` overrides.

    # run.toml                              # every key can also be given as
    [run]                                   #   --set run.agent=...      AGL_RUN__AGENT=...
    agent = "my_agents.py:agent"
    dataset = "my_agents.py:tasks"
    runners = 4
    [algorithm]                             # a kind's table: its component's name, then that component's options
    name = "apo"                            #   --algorithm apo          AGL_ALGORITHM__NAME=apo
    beam_width = 2                          #   --set algorithm.beam_width=2
    [store]
    name = "sqlite"
    path = "runs/a.db"

Precedence, lowest first: each option's default, the run file, ``AGL_<TABLE>__<KEY>`` environment variables, then
``--set TABLE.KEY=VALUE`` and the command's own flags. A component is named by its registered name, by
``NAME@DISTRIBUTION`` when several distributions register the name, or by ``module:attr``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, published as tomli
    import tomli as tomllib

from agl_kernel.config._options import build_options, options_class, to_plain
from agl_kernel.errors import ConfigError, PluginNotFoundError

__all__ = [
    "COMPONENT_TABLES",
    "ENV_PREFIX",
    "Choice",
    "RunConfig",
    "RunOptions",
    "load_run_config",
    "parse_override",
    "to_toml",
]

COMPONENT_TABLES: dict[str, str] = {
    "store": "stores",
    "tracer": "tracers",
    "runner": "runners",
    "strategy": "strategies",
    "algorithm": "algorithms",
    "adapter": "adapters",
}
"""The run file's component tables and the plugin kind each one picks from."""

DEFAULT_NAMES: dict[str, str | None] = {
    "store": None,  # the durable default: sqlite when installed (agl_kernel.store.defaults)
    "tracer": "noop",
    "runner": "litagent",
    "strategy": "shm",
    "algorithm": "baseline",
    "adapter": None,  # the algorithm's own choice
}

ENV_PREFIX = "AGL_"
"""``AGL_<TABLE>__<KEY>=value`` sets ``table.key`` (only names with a double underscore; nested: ``__`` again)."""


def _positive(_instance: Any, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"'{attribute.name}' must be at least 1, not {value}")


@attrs.frozen(kw_only=True)
class RunOptions:
    """The ``[run]`` table: what to train and how many runners serve it."""

    agent: str | None = None
    """The agent: module:name or path/to/file.py:name."""
    dataset: str | None = None
    """The training tasks: a .jsonl/.json file, or module:name of a list (or of a function returning one)."""
    val_dataset: str | None = None
    """The validation tasks, in the same forms as dataset."""
    runners: int = attrs.field(default=1, validator=_positive)
    """How many runners serve the agent (tasks in one process under shm, processes under cs)."""
    llm: str | None = None
    """An OpenAI-compatible endpoint (http://127.0.0.1:8000/v1: `agl serve-model`) the agent calls: the run starts
    with it as its LLM resource main_llm (an agent's @llm_rollout gets it)."""
    llm_model: str | None = None
    """The model name to ask that endpoint for (required with llm)."""
    resources: str | None = None
    """Resources the run starts from (seed prompts, LLMs): a .json file of name -> resource (with its
    resource_type: prompt_template, llm, proxy_llm), or module:name of such a dict (or of a function returning one)."""

    def initial_resources(self) -> dict[str, Any]:
        """The resources the run starts with: those of ``resources``, and ``main_llm`` when ``llm`` is set."""
        from agl_kernel.models import LLM

        found = {} if self.resources is None else _load_resources(self.resources)
        if self.llm is not None:
            if not self.llm_model:
                raise ConfigError(
                    "run.llm_model: required with run.llm; pass --llm-model NAME (the model the endpoint serves, "
                    "e.g. smollm2 for `agl serve-model --model smollm2`)"
                )
            found["main_llm"] = LLM(endpoint=self.llm, model=self.llm_model)
        return found


def _load_resources(spec: str) -> dict[str, Any]:
    import json

    import msgspec

    from agl_kernel.models import Resource

    key = "run.resources"
    if spec.endswith(".json") and ":" not in spec:
        try:
            with open(spec, encoding="utf-8") as file:
                data: Any = json.load(file)
        except (OSError, ValueError) as err:
            raise ConfigError(f"{key}: cannot read {spec!r}: {err}") from None
    else:
        data = import_spec(spec, key)
        if callable(data):
            data = data()
    if not isinstance(data, Mapping):
        raise ConfigError(f"{key}: {spec!r} is a {type(data).__name__}, not a dict of name -> resource")
    try:
        return dict(msgspec.convert(dict(data), dict[str, Resource], from_attributes=True))
    except msgspec.ValidationError as err:
        raise ConfigError(
            f"{key}: {spec!r}: {err} (each resource is a PromptTemplate, LLM or ProxyLLM; in JSON an object with "
            f"resource_type prompt_template, llm or proxy_llm)"
        ) from None


def import_spec(spec: str, key: str) -> Any:
    """The object ``spec`` (``module:name`` or ``path/to/file.py:name``) names, for the configuration key ``key``;
    any failure, including an exception raised by the module as it is imported, is one :class:`ConfigError` line
    naming ``key`` (and the file and line)."""
    from agl_kernel.imports import import_object

    try:
        return import_object(spec)
    except (ValueError, ImportError, OSError, AttributeError) as err:
        raise ConfigError(f"{key}: {err}") from None
    except SyntaxError as err:
        raise ConfigError(f"{key}: {spec!r}: {err.msg} ({err.filename}, line {err.lineno})") from None
    except Exception as err:
        import traceback

        frames = traceback.extract_tb(err.__traceback__)
        where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
        raise ConfigError(f"{key}: importing {spec!r} raised {type(err).__name__}: {err}{where}") from None


@attrs.frozen
class Choice:
    """The component a table picks: its name (``None``: the default) and its options, validated."""

    table: str
    name: str | None
    options: Mapping[str, Any]
    """The raw options as given (validated against the component's options class by :meth:`resolve`)."""

    @property
    def kind(self) -> str:
        return COMPONENT_TABLES[self.table]

    def component(self) -> Any:
        """The registered class or factory this choice names (``None`` for a default left to the trainer)."""
        from agl_kernel.plugins import resolve_name

        if self.name is None:
            return None
        try:
            return resolve_name(self.kind, self.name)
        except PluginNotFoundError as err:
            raise ConfigError(f"{self.table}.name: {err}") from None

    def resolve(self) -> Any:
        """The component's options instance (defaults filled in), or ``None`` when it declares no options class.
        Raises :class:`ConfigError` for an option it does not take or a bad value."""
        component = self.component()
        if component is None:
            if self.options:
                raise ConfigError(
                    f"{self.table}: options {sorted(self.options)} were given without a {self.table} name; set "
                    f"{self.table}.name (see `agl plugins --kind {self.kind}`)"
                )
            return None
        cls = options_class(component)
        if cls is None:
            if self.options:
                key = sorted(self.options)[0]
                raise ConfigError(
                    f"{self.table}.{key}: the {self.table} {self.name!r} takes no options. Valid keys: (none)"
                )
            return None
        return build_options(cls, self.options, path=self.table)


@attrs.frozen
class RunConfig:
    """A whole run's configuration: the ``[run]`` table and one :class:`Choice` per component table."""

    run: RunOptions
    choices: Mapping[str, Choice]

    def choice(self, table: str) -> Choice:
        return self.choices[table]

    def resolved(self, tables: Iterable[str] | None = None) -> dict[str, Any]:
        """The effective configuration as plain data (every option, defaults filled in), as ``agl config`` prints
        it; only ``tables`` when given (a runner process checks the store, tracer and runner it uses, not the
        algorithm an ``AGL_ALGORITHM__*`` variable configures for the trainer). Loads each component, so unknown
        names and bad options raise :class:`ConfigError` here."""
        out: dict[str, Any] = {"run": {k: v for k, v in attrs.asdict(self.run).items() if v is not None}}
        wanted = None if tables is None else set(tables)
        for table, choice in self.choices.items():
            if wanted is not None and table not in wanted:
                continue
            name = choice.name if choice.name is not None else _default_name(table)
            if name is None:
                continue
            resolved = Choice(table, name, choice.options).resolve()
            out[table] = {"name": name, **({} if resolved is None else to_plain(resolved))}
        return out


def _default_name(table: str) -> str | None:
    if table == "store":
        from agl_kernel.store.defaults import default_store_name

        return default_store_name()
    return DEFAULT_NAMES[table]


# ------------------------------------------------------------------------------------------------- sources


def parse_override(text: str) -> tuple[list[str], str]:
    """``"algorithm.steps=3"`` → (``["algorithm", "steps"]``, ``"3"``); :class:`ConfigError` when malformed."""
    key, sep, value = text.partition("=")
    path = [part.strip() for part in key.split(".")]
    if not sep or not all(path):
        raise ConfigError(
            f"--set {text!r}: expected TABLE.KEY=VALUE (e.g. algorithm.steps=3, store.path=run.db, run.runners=4)"
        )
    return path, value


def _env_overrides(environ: Mapping[str, str]) -> list[tuple[list[str], str, str]]:
    found = []
    for name, value in sorted(environ.items()):
        if name.startswith(ENV_PREFIX) and "__" in name[len(ENV_PREFIX) :]:
            path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
            if all(path):
                found.append((path, value, f"environment variable {name}"))
    return found


def _set(tree: dict[str, Any], path: list[str], value: Any, source: str) -> None:
    node = tree
    for depth, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(path[: depth + 1])}: is a value, not a table ({source} sets it)")
        node = child
    node[path[-1]] = value


def _read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            data: dict[str, Any] = tomllib.load(file)
            return data
    except FileNotFoundError:
        raise ConfigError(f"run file {path!r}: no such file") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"run file {path!r}: not valid TOML: {err}") from None


def load_run_config(
    path: str | None = None,
    *,
    overrides: Iterable[str] = (),
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    data: Mapping[str, Any] | None = None,
) -> RunConfig:
    """A :class:`RunConfig` from (lowest precedence first) ``data`` or the TOML file at ``path``, ``AGL_*__*``
    environment variables (``environ``, default ``os.environ``), ``--set`` ``overrides`` and ``flags`` (a command's
    own flags, as ``{"algorithm.name": "apo", "run.runners": 2}``; ``None`` values are ignored)."""
    tree: dict[str, Any] = {}
    layers: list[tuple[list[str], Any, str]] = []
    if data is not None or path is not None:
        for key, value in (dict(data) if data is not None else _read_file(path)).items():  # type: ignore[arg-type]
            layers.append(([key], value, f"run file {path}" if path else "the configuration"))
    layers += _env_overrides(os.environ if environ is None else environ)
    for text in overrides:
        key_path, value = parse_override(text)
        layers.append((key_path, value, f"--set {text}"))
    for key, value in (flags or {}).items():
        if value is not None:
            layers.append((key.split("."), value, "a command-line flag"))
    for key_path, value, source in layers:
        _check_table(key_path, value, source)
        _set(tree, key_path, value, source)
    run = build_options(RunOptions, tree.get("run", {}), path="run")
    choices = {}
    for table in COMPONENT_TABLES:
        section = dict(tree.get(table, {}))
        name = section.pop("name", None)
        if name is not None and not isinstance(name, str):
            raise ConfigError(f"{table}.name: expected a string (a registered {table} name), got {name!r}")
        choices[table] = Choice(table, name, section)
    return RunConfig(run=run, choices=choices)


_TABLES = ("run", *COMPONENT_TABLES)


def _check_table(path: list[str], value: Any, source: str) -> None:
    table = path[0]
    if table not in _TABLES:
        import difflib

        close = difflib.get_close_matches(table, _TABLES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"{'.'.join(path)}: unknown table {table!r} ({source}).{hint} Valid tables: {', '.join(_TABLES)}"
        )
    if len(path) == 1 and not isinstance(value, Mapping):
        raise ConfigError(f"{table}: expected a table of options ({source}), got {value!r}")


# --------------------------------------------------------------------------------------------------- output


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items() if v is not None) + "}"
    return _toml_value(str(value))


def to_toml(tree: Mapping[str, Any]) -> str:
    """``tree`` (tables of values) as a TOML run file; ``None`` values become comments (TOML has no null)."""
    lines: list[str] = []
    for table, values in tree.items():
        lines.append(f"[{table}]")
        for key, value in values.items():
            lines.append(f"# {key} = none" if value is None else f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)
