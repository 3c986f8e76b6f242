"""Objects named on the command line (``module.path:attr`` or ``path/to/file.py:attr``), and the reverse: a spec
another process can import an object by."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from typing import Any

__all__ = ["import_object", "object_spec"]


def import_object(spec: str) -> Any:
    """The object ``spec`` names: ``package.module:attr.sub`` or ``path/to/file.py:attr``."""
    target, sep, attr = spec.partition(":")
    if not sep or not target or not attr:
        raise ValueError(f"{spec!r} is not an object spec; write module.path:name or path/to/file.py:name")
    if target.endswith(".py") or os.sep in target:
        path = os.path.abspath(target)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{spec!r}: no file {path}")
        name = f"_agl_loaded_{abs(hash(path))}"
        module = sys.modules.get(name)
        if module is None:
            module_spec = importlib.util.spec_from_file_location(name, path)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError(f"{spec!r}: cannot import {target!r} ({exc}); is it on PYTHONPATH?") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AttributeError(f"{spec!r}: {target!r} has no attribute {attr!r}") from None
    return obj


def object_spec(obj: Any) -> str:
    """A spec :func:`import_object` turns back into ``obj`` in another process: by module name when the module can
    be imported by it, by file otherwise (a script run as ``__main__``, a file loaded by path)."""
    module_name = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None) or getattr(type(obj), "__qualname__", None)
    if module_name is None or qualname is None or "<locals>" in qualname:
        raise ValueError(
            f"{obj!r} cannot be found by another process: define it at the top level of a module, "
            "or give it as a 'module:name' string"
        )
    module = sys.modules.get(module_name)
    if module_name == "__main__" or module_name.startswith("_agl_loaded_"):
        return f"{inspect.getfile(module)}:{qualname}"  # type: ignore[arg-type]
    return f"{module_name}:{qualname}"
