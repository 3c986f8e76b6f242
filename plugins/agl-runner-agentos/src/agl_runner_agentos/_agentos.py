"""Importing Agent-OS once, quietly: agent-os-kernel 3.7 warns at import time about its own use of deprecated
pydantic features (``json_encoders``), which is nothing a user of agl can act on (and an error under
``-W error``)."""

from __future__ import annotations

import functools
import warnings
from types import ModuleType

__all__ = ["agent_os"]


@functools.cache
def agent_os() -> ModuleType:
    """The ``agent_os`` package, with ``agent_os.policies`` loaded."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import agent_os as package
        import agent_os.policies
    return package
