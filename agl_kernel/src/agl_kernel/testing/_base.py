"""Fixtures and helpers shared by every part of the store conformance suite."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import pytest
import pytest_asyncio

from agl_kernel.models import (
    AttemptedRollout,
    AttemptStatus,
    RolloutConfig,
    RolloutStatus,
    Span,
)
from agl_kernel.store.base import LightningStore

T = TypeVar("T")

FAST_WATCHDOG_INTERVAL = 0.05
"""The watchdog interval the suite asks for in tests that exercise the watchdog."""

NO_RETRY = RolloutConfig(max_attempts=1)
"""For tests where a failed attempt must end its rollout (the default config retries it)."""


def _suite_marks() -> list[Any]:
    marks: list[Any] = [pytest.mark.asyncio]
    try:  # pytest-timeout registers the ``timeout`` mark; only use it where it is installed.
        import pytest_timeout  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the environment
        pass
    else:
        marks.append(pytest.mark.timeout(60))
    return marks


_span_counter = itertools.count(1)


def new_span_id() -> str:
    """A fresh 16-hex-digit span id."""
    return f"{next(_span_counter):04x}{uuid.uuid4().hex[:12]}"


def make_span(
    rollout_id: str,
    attempt_id: str,
    *,
    span_id: str | None = None,
    name: str = "step",
    sequence_id: int = 0,
    start_time: float | None = None,
    end_time: float | None = None,
    attributes: dict[str, Any] | None = None,
    trace_id: str | None = None,
) -> Span:
    now = time.time()
    return Span(
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        sequence_id=sequence_id,
        trace_id=trace_id or uuid.uuid4().hex,
        span_id=span_id or new_span_id(),
        name=name,
        attributes=attributes if attributes is not None else {},
        start_time=now if start_time is None else start_time,
        end_time=now if end_time is None else end_time,
    )


def enum_value(value: Any) -> Any:
    """Sort key used for enum fields: their string value (as every backend stores them)."""
    return getattr(value, "value", value)


def expected_sort(items: Sequence[T], field: str, order: str) -> list[T]:
    """``items`` (in creation order) sorted by ``field``; ties keep creation order in both directions."""
    return sorted(items, key=lambda item: enum_value(getattr(item, field)), reverse=(order == "desc"))


class SuiteBase:
    """Fixtures and helpers; the test mixins build on it."""

    pytestmark = _suite_marks()

    # ---------------------------------------------------------------------------------------------- to implement

    async def make_store(self, **options: Any) -> LightningStore:
        """Return a new, empty, started store. ``options`` may contain ``watchdog_interval`` (seconds between
        watchdog checks). Backends that need cleanup beyond ``close()`` do it in their own fixtures."""
        raise NotImplementedError("subclasses of StoreConformanceSuite implement make_store(**options)")

    # ---------------------------------------------------------------------------------------------- fixtures

    @pytest_asyncio.fixture(loop_scope="function")
    async def store(self) -> AsyncIterator[LightningStore]:
        """A fresh store with the backend's default watchdog interval, closed after the test."""
        store = await self.make_store()
        try:
            yield store
        finally:
            await store.close()

    @pytest_asyncio.fixture(loop_scope="function")
    async def fast_store(self) -> AsyncIterator[LightningStore]:
        """A fresh store whose watchdog checks every 0.05 s, for the timeout tests."""
        store = await self.make_store(watchdog_interval=FAST_WATCHDOG_INTERVAL)
        try:
            yield store
        finally:
            await store.close()

    @contextlib.asynccontextmanager
    async def open_store(self, **options: Any) -> AsyncIterator[LightningStore]:
        store = await self.make_store(**options)
        try:
            yield store
        finally:
            await store.close()

    # ---------------------------------------------------------------------------------------------- helpers

    @staticmethod
    def require(condition: bool, reason: str) -> None:
        if not condition:
            pytest.skip(reason)

    @staticmethod
    async def eventually(
        probe: Callable[[], Awaitable[T]],
        predicate: Callable[[T], bool],
        *,
        timeout: float = 5.0,
        interval: float = 0.02,
        what: str = "condition",
    ) -> T:
        """Poll ``probe()`` until ``predicate`` holds on its result, up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            value = await probe()
            if predicate(value):
                return value
            if time.monotonic() >= deadline:
                raise AssertionError(f"{what} did not hold within {timeout} s; last value: {value!r}")
            await asyncio.sleep(interval)

    @staticmethod
    async def start_running(
        store: LightningStore,
        *,
        config: RolloutConfig | None = None,
        worker_id: str | None = None,
        input: Any = "task",
    ) -> AttemptedRollout:
        """Enqueue a rollout, dequeue it (with ``worker_id``) and move its attempt to ``running``."""
        rollout = await store.enqueue_rollout(input, config=config)
        attempted = await store.dequeue_rollout(worker_id=worker_id)
        assert attempted is not None and attempted.rollout_id == rollout.rollout_id, "queue should have been empty"
        await store.update_attempt(attempted.rollout_id, attempted.attempt.attempt_id, status=AttemptStatus.RUNNING)
        return attempted

    @staticmethod
    async def finish(store: LightningStore, rollout_id: str, status: AttemptStatus = AttemptStatus.SUCCEEDED) -> None:
        """Move the rollout's newest attempt to ``status``."""
        await store.update_attempt(rollout_id, "latest", status=status)

    @staticmethod
    async def rollout_status(store: LightningStore, rollout_id: str) -> RolloutStatus:
        return (await store.get_rollout(rollout_id)).status

    @staticmethod
    async def drain(store: LightningStore) -> list[AttemptedRollout]:
        """Dequeue until the queue is empty."""
        out: list[AttemptedRollout] = []
        while (item := await store.dequeue_rollout()) is not None:
            out.append(item)
        return out

    @staticmethod
    def ids(items: Iterable[Any], field: str = "rollout_id") -> list[Any]:
        return [getattr(item, field) for item in items]
