"""Options classes: how a component declares its options (an attrs class), and how the kernel builds one.

A component (a store, tracer, runner, strategy, algorithm or adapter class, or a factory function) declares its
options by an ``Options`` attribute holding an attrs class: typed fields with defaults, validators, and a docstring
under each field. :func:`build_options` structures it with cattrs from plain data, which may come from a TOML
run file (typed values) or from environment variables and ``--set`` (strings, parsed by the field's type), and
turns every mistake into one :class:`~agl_kernel.errors.ConfigError` line that names the full path, what was
expected and, for an unknown key, the valid keys.
"""

from __future__ import annotations

import ast
import difflib
import enum
import functools
import inspect
import json
import re
import sys
import textwrap
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, published as tomli
    import tomli as tomllib

import itertools

from agl_kernel.errors import ConfigError

__all__ = [
    "OptionInfo",
    "build_options",
    "describe_options",
    "make_component",
    "options_class",
    "options_fields",
    "options_with",
    "to_plain",
    "type_name",
]

_FACTORY = typing.cast("type[Any]", attrs.Factory)
"""The class of ``attrs.Factory(...)`` defaults (attrs' stubs declare ``Factory`` a function returning the value)."""

_NONE_WORDS = ("none", "null")
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def options_class(component: Any) -> type | None:
    """The attrs class ``component`` declares as its ``Options`` (``None`` when it declares none)."""
    options = getattr(component, "Options", None)
    if options is None:
        return None
    if not (isinstance(options, type) and attrs.has(options)):
        raise ConfigError(
            f"{_label(component)}.Options must be an attrs class (@attrs.define), not {options!r}; see "
            "docs/writing-plugins.md"
        )
    return options


def _label(obj: Any) -> str:
    return getattr(obj, "__qualname__", None) or type(obj).__qualname__


# ------------------------------------------------------------------------------------------ values and types


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp)


def _non_none(tp: Any) -> list[Any]:
    return [a for a in typing.get_args(tp) if a is not type(None)]


def type_name(tp: Any) -> str:
    """A short readable name of a field's type: ``int``, ``float or none``, ``one of 'a', 'b'``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        names = [type_name(a) for a in _non_none(tp)]
        return " or ".join(names + (["none"] if _is_optional(tp) else []))
    if origin in (list, tuple, set, frozenset):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return f"list of {type_name(args[0])}" if args else "list"
    if origin in (dict, Mapping):
        return "table"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    if isinstance(tp, type) and attrs.has(tp):
        return "table"
    return {bool: "boolean", int: "integer", float: "number", str: "string"}.get(tp, getattr(tp, "__name__", str(tp)))


def _parse_literal(text: str) -> Any:
    """A TOML value written inline (``[1, 2]``, ``{a = 1}``, ``"x"``), or JSON; ``ValueError`` when neither."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return json.loads(text)


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(detailed_validation=True, forbid_extra_keys=True)

    def structure_int(value: Any, _tp: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ValueError(f"expected an integer, got {value!r}")

    def structure_float(value: Any, _tp: Any) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ValueError(f"expected a number, got {value!r}")

    def structure_bool(value: Any, _tp: Any) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(f"expected true or false, got {value!r}")

    def structure_str(value: Any, _tp: Any) -> str:
        if isinstance(value, str):
            return value
        raise ValueError(f"expected a string, got {value!r}")

    converter.register_structure_hook(int, structure_int)
    converter.register_structure_hook(float, structure_float)
    converter.register_structure_hook(bool, structure_bool)
    converter.register_structure_hook(str, structure_str)

    def structure_literal(value: Any, tp: Any) -> Any:
        choices = typing.get_args(tp)
        for choice in choices:
            if value == choice or (isinstance(value, str) and not isinstance(choice, str) and value == str(choice)):
                return choice
        raise ValueError(f"expected one of {', '.join(repr(c) for c in choices)}, got {value!r}")

    def is_literal(tp: Any) -> bool:
        return typing.get_origin(tp) is Literal

    converter.register_structure_hook_func(is_literal, structure_literal)

    def structure_enum(value: Any, tp: Any) -> Any:
        for member in tp:
            if value == member.value or value == member.name or value is member:
                return member
        raise ValueError(f"expected one of {', '.join(repr(m.value) for m in tp)}, got {value!r}")

    converter.register_structure_hook_func(
        lambda tp: isinstance(tp, type) and issubclass(tp, enum.Enum), structure_enum
    )

    def structure_union(value: Any, tp: Any) -> Any:
        options = _non_none(tp)
        if value is None or (_is_optional(tp) and isinstance(value, str) and value.strip().lower() in _NONE_WORDS):
            if _is_optional(tp):
                return None
            raise ValueError(f"expected {type_name(tp)}, got none")
        if len(options) == 1:
            return converter.structure(value, options[0])
        nested = _nested_attrs(tp)
        if nested is not None and isinstance(value, Mapping):  # a table: its own errors, with their paths
            return converter.structure(value, nested)
        errors = []
        for option in options:  # the first member that takes the value, in the order written
            try:
                return converter.structure(value, option)
            except (ValueError, TypeError, ClassValidationError, IterableValidationError) as err:
                errors.append(err)
        raise ValueError(f"expected {type_name(tp)}, got {value!r}")

    def is_union(tp: Any) -> bool:
        return typing.get_origin(tp) in (Union, types.UnionType)

    converter.register_structure_hook_func(is_union, structure_union)

    # Containers and tables written on the command line or in an environment variable: parse them inline.
    def is_container(tp: Any) -> bool:
        return typing.get_origin(tp) in (list, tuple, set, frozenset, dict) or (isinstance(tp, type) and attrs.has(tp))

    converter.register_structure_hook(Any, lambda value, _tp: value)

    def container_factory(tp: Any) -> Any:
        origin = typing.get_origin(tp)
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        from_dict = converter.gen_structure_attrs_fromdict(tp) if attrs.has(tp) else None

        def structure(value: Any, _tp: Any) -> Any:
            if isinstance(value, str):
                try:
                    value = _parse_literal(value)
                except ValueError:
                    if origin not in (list, tuple, set, frozenset):
                        raise ValueError(f"expected {type_name(tp)}, got {value!r}") from None
                    value = [part.strip() for part in value.split(",") if part.strip()]
            if from_dict is not None:
                if isinstance(value, tp):
                    return value
                if not isinstance(value, Mapping):
                    raise ValueError(f"expected a table, got {value!r}")
                return from_dict(value, tp)
            if origin is dict:
                if not isinstance(value, Mapping):
                    raise ValueError(f"expected a table, got {value!r}")
                key_type, value_type = (args + [Any, Any])[:2]
                table = {}
                for key, item in value.items():
                    try:
                        table[converter.structure(key, key_type)] = converter.structure(item, value_type)
                    except ValueError as err:  # name the key: "tracer.attributes.team: expected a string, got 1"
                        raise ValueError(f"{key}: {err}") from None
                return table
            if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple, set, frozenset)):
                raise ValueError(f"expected {type_name(tp)}, got {value!r}")
            element = args[0] if args else Any
            if origin is tuple and len(args) > 1:
                if len(value) != len(args):
                    raise ValueError(f"expected {len(args)} values, got {value!r}")
                return tuple(converter.structure(v, t) for v, t in zip(value, args))
            return origin(converter.structure(v, element) for v in value)

        return structure

    converter.register_structure_hook_factory(is_container, container_factory)
    return converter


_converter = _make_converter()


# ------------------------------------------------------------------------------------------------ building


def _resolved(cls: type) -> type:
    attrs.resolve_types(cls)
    return cls


def _unknown_keys(cls: type, data: Mapping[str, Any], path: str) -> None:
    """A :class:`ConfigError` for the first key of ``data`` (or of a nested table) that ``cls`` has no field for."""
    fields = {f.name: f for f in attrs.fields(_resolved(cls))}
    for key, value in data.items():
        if key not in fields:
            valid = ", ".join(sorted(fields)) or "(none: it takes no options)"
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{_join(path, key)}: unknown option.{hint} Valid keys: {valid}")
        nested = _nested_attrs(fields[key].type)
        if nested is not None and isinstance(value, Mapping):
            _unknown_keys(nested, value, _join(path, key))


def _nested_attrs(tp: Any) -> type | None:
    for candidate in [tp, *_non_none(tp)]:
        if isinstance(candidate, type) and attrs.has(candidate):
            return candidate
    return None


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _format(exc: BaseException, _tp: Any) -> str:
    if isinstance(exc, ForbiddenExtraKeysError):
        return f"unknown option(s) {sorted(exc.extra_fields)}"
    if isinstance(exc, KeyError):
        return "required option is missing"
    if isinstance(exc, (ValueError, TypeError)):
        return _message(exc)
    return f"{type(exc).__name__}: {exc}"


def _message(exc: BaseException) -> str:
    # attrs' validators raise with extra arguments (the attribute, the bound, the value): the first is the message.
    return str(exc.args[0]) if exc.args and isinstance(exc.args[0], str) else str(exc)


def build_options(cls: type, data: Mapping[str, Any] | None = None, *, path: str = "") -> Any:
    """An instance of the options class ``cls`` from ``data`` (a mapping of field name to value; nested tables for
    nested options classes). Values may be typed (TOML) or strings (environment, ``--set``). Any mistake, an
    unknown key, a wrong type, a value a validator refuses, raises :class:`ConfigError` naming ``path.key``."""
    data = dict(data or {})
    _unknown_keys(cls, data, path)
    try:
        return _converter.structure(data, _resolved(cls))
    except ClassValidationError as err:
        messages = cattrs.transform_error(err, path=path or "$", format_exception=_format)
        first = messages[0] if messages else str(err)
        message, _, where = first.rpartition(" @ ")
        field = _named_field(_class_at(cls, where[len(path or "$") :].strip(".")), message)
        raise ConfigError(_locate(_join(where, field) if field else where, message)) from None
    except (ValueError, TypeError) as err:  # a validator, or the class's own __attrs_post_init__
        message = _message(err)
        field = next((a.name for a in err.args[1:] if isinstance(a, attrs.Attribute)), None)
        field = field or _named_field(cls, message)
        raise ConfigError(_locate(_join(path, field) if field else path or cls.__qualname__, message)) from None


def _class_at(cls: type, dotted: str) -> type | None:
    """The options class at ``dotted`` (``"lora"``) below ``cls``; ``None`` when it is not an options class."""
    for part in filter(None, dotted.split(".")):
        field = attrs.fields_dict(cls).get(part)
        nested = None if field is None else _nested_attrs(field.type)
        if nested is None:
            return None
        cls = nested
    return cls


def _named_field(cls: type | None, message: str) -> str | None:
    """A field of ``cls`` that a validator's message names in quotes (``Length of 'name' must be >= 1: 0``)."""
    if cls is None:
        return None
    names = {f.name for f in attrs.fields(cls)}
    return next((n for n in re.findall(r"'([A-Za-z_][A-Za-z0-9_]*)'", message) if n in names), None)


_NAMED = re.compile(r"^'(?P<name>[A-Za-z_][A-Za-z0-9_]*)' (?P<rest>.*)$", re.S)


def _locate(where: str, message: str) -> str:
    """``where: message``, with the field an attrs validator names in its message (``'steps' must be >= 1: 0``)
    moved into the path: ``algorithm.steps: must be >= 1: 0``."""
    named = _NAMED.match(message)
    keyed = re.match(r"^(?P<key>[^:\s]+): (?P<rest>.*)$", message, re.S)
    if keyed and not named and not keyed.group("key").endswith(("Error", "Exception")):  # a table's key
        return _locate(_join(where, keyed.group("key")), keyed.group("rest"))
    if named:
        name = named.group("name")
        if not where.endswith(f".{name}") and where != name:
            where = _join(where, name)
        message = named.group("rest")
    return f"{where}: {message}"


def options_with(cls: type, base: Any = None, overrides: Mapping[str, Any] | None = None, *, path: str = "") -> Any:
    """An instance of the options class ``cls`` from ``base`` (an instance, a mapping or ``None``) with ``overrides``
    on top, validated as :func:`build_options` does (the ``make_config(config, **overrides)`` of a component)."""
    if isinstance(base, cls) and not overrides:
        return base
    data = to_plain(base) if isinstance(base, cls) else dict(base or {})
    data.update(overrides or {})
    return build_options(cls, data, path=path)


# -------------------------------------------------------------------------------------------- documentation


@attrs.frozen
class OptionInfo:
    """One option as ``agl plugins show`` prints it."""

    name: str
    type: str
    default: Any
    """The default value (``attrs.NOTHING`` when the option is required)."""
    doc: str


def options_fields(cls: type, prefix: str = "") -> list[OptionInfo]:
    """Every option of ``cls`` (nested options classes flattened as ``lora.r``), with type, default and doc."""
    docs = _field_docs(cls)
    infos: list[OptionInfo] = []
    for field in attrs.fields(_resolved(cls)):
        default = field.default
        if isinstance(default, _FACTORY):
            default = default.factory() if not default.takes_self else attrs.NOTHING
        doc = docs.get(field.name) or str(field.metadata.get("doc", ""))
        infos.append(OptionInfo(name=prefix + field.name, type=type_name(field.type), default=default, doc=doc))
        nested = _nested_attrs(field.type)
        if nested is not None:
            infos.extend(options_fields(nested, prefix=f"{prefix}{field.name}."))
    return infos


@functools.cache
def _field_docs(cls: type) -> dict[str, str]:
    """The docstrings written under the fields of ``cls`` (``x: int = 1`` then ``\"\"\"doc\"\"\"``)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    tree = ast.parse(source)
    docs: dict[str, str] = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.ClassDef) and node.name == cls.__name__):
            continue
        body = node.body
        for statement, following in itertools.pairwise(body):
            if (
                isinstance(statement, ast.AnnAssign)
                and isinstance(statement.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[statement.target.id] = " ".join(inspect.cleandoc(following.value.value).split())
        break
    return docs


def describe_options(cls: type | None) -> list[OptionInfo]:
    """:func:`options_fields` of ``cls``, or nothing for a component that declares no options."""
    return [] if cls is None else options_fields(cls)


def make_component(
    target: Any, options: Mapping[str, Any] | None, kwargs: dict[str, Any], *, path: str, what: str
) -> Any:
    """Call ``target`` (a component class or factory) with its options built from ``options`` and the ``kwargs``
    that name an option; the other ``kwargs`` are passed as they are. ``target.from_options(options, **rest)`` is
    used when it exists, else ``target(**fields, **rest)``."""
    cls = options_class(target)
    if cls is None:
        if options:
            key = sorted(options)[0]
            raise ConfigError(f"{_join(path, key)}: {what} takes no options. Valid keys: (none)")
        return target(**kwargs)
    names = {f.name for f in attrs.fields(cls)}
    data = dict(options or {})
    rest = {}
    for key, value in kwargs.items():
        # An option given from Python as plain data is validated; an object in its place (a model module where
        # the option names a model) is handed to the component as it is.
        if key in names and _is_plain(value):
            data[key] = value
        else:
            rest[key] = value
    built = build_options(cls, data, path=path)
    from_options = getattr(target, "from_options", None)
    if from_options is not None:
        obj = from_options(built, **rest)
    else:
        obj = target(**{name: getattr(built, name) for name in names if name not in rest}, **rest)
    try:  # what it was made with, so that a strategy can make the same component in another process
        obj.agl_options = to_plain(built)
    except (AttributeError, TypeError):
        pass
    return obj


def _is_plain(value: Any) -> bool:
    """Data a configuration can hold: scalars, lists and tables of them, enums and options instances."""
    if value is None or isinstance(value, (str, int, float, bool, enum.Enum)) or attrs.has(type(value)):
        return True
    if isinstance(value, (list, tuple, set, frozenset)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


def to_plain(options: Any) -> dict[str, Any]:
    """An options instance as plain data (nested options as tables), for printing and for other processes."""
    plain: dict[str, Any] = _converter.unstructure(options)
    return plain
