"""The tracer interface, and the kernel's no-op tracer (entry point ``noop`` in ``agl.tracers``)."""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["Tracer", "NoOpTracer"]


class Tracer(abc.ABC):
    """Turns what an agent does inside a rollout attempt into spans stored under that attempt."""

    @abc.abstractmethod
    def trace_context(self, *, rollout_id: str, attempt_id: str, store: Any) -> contextlib.AbstractContextManager:
        """A context inside which everything the agent does is recorded for ``(rollout_id, attempt_id)``."""

    async def flush(self) -> None:
        """Write out every span captured so far; the runner calls it before marking an attempt done."""


class NoOpTracer(Tracer):
    """Records nothing. The default when no tracer plugin is chosen; runners still store rewards themselves."""

    @contextlib.contextmanager
    def trace_context(self, *, rollout_id: str, attempt_id: str, store: Any) -> Iterator[None]:
        yield None
