"""The adapter interface: a rollout's spans in, training data out (plugins in ``agl.adapters``)."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Generic, TypeVar

from agl_kernel.models import Span

__all__ = ["Adapter"]

T_co = TypeVar("T_co", covariant=True)


class Adapter(abc.ABC, Generic[T_co]):
    """Turns the spans of one rollout into training data (triplets, chat messages, ...)."""

    @abc.abstractmethod
    def adapt(self, spans: Sequence[Span]) -> T_co:
        """Training data from ``spans`` (one rollout's, in sequence order)."""
