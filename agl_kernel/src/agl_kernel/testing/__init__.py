"""Reusable conformance suites that every plugin runs unchanged.

Store backends subclass :class:`StoreConformanceSuite` in their own tests, naming the subclass ``Test...``, and
implement ``make_store``::

    from agl_kernel.testing import StoreConformanceSuite

    class TestMyStore(StoreConformanceSuite):
        async def make_store(self, **options):
            return MyStore(watchdog_interval=options.get("watchdog_interval", 0.5))

``options`` may contain ``watchdog_interval`` (seconds between watchdog checks; the timeout tests ask for 0.05).
The suite's ``store`` fixture (and ``fast_store``, with the fast watchdog) closes the store after each test.
Tests are marked ``asyncio`` explicitly, so they run under pytest-asyncio's strict mode; tests that need a
capability (threads, ...) skip themselves according to ``store.capabilities``.
"""

# ruff: noqa: E402 - the suite's modules are imported after registering them for assertion rewriting

from __future__ import annotations

import pytest

# Detailed assertion messages for the suite's own modules (they are not test modules, so pytest would not
# rewrite their asserts otherwise). Must run before they are imported.
pytest.register_assert_rewrite(
    *(
        f"agl_kernel.testing.{name}"
        for name in (
            "_attempts",
            "_base",
            "_concurrency",
            "_integers",
            "_lifecycle",
            "_queries",
            "_resources",
            "_rollouts",
            "_spans",
            "_waiting",
            "_watchdog",
        )
    )
)

from agl_kernel.testing._attempts import FinalStatusTests, NewestAttemptTests, RetryTests, WorkerTests
from agl_kernel.testing._base import SuiteBase, make_span
from agl_kernel.testing._concurrency import ConcurrentDequeueTests, ConcurrentResourceTests, ConcurrentSequenceTests
from agl_kernel.testing._integers import IntegerRangeTests
from agl_kernel.testing._lifecycle import CloseTests, DeletionTests, SnapshotAndCodecTests, StatisticsTests
from agl_kernel.testing._queries import (
    AttemptQueryTests,
    NotFoundTests,
    ResourceAndWorkerQueryTests,
    RolloutQueryTests,
    SpanSortTests,
)
from agl_kernel.testing._resources import ResourceTests
from agl_kernel.testing._rollouts import QueueTests, RolloutCreationTests, StartAttemptTests, UpdateRolloutTests
from agl_kernel.testing._spans import SpanQueryTests, SpanTests
from agl_kernel.testing._waiting import CloseWakesWaitersTests, DequeueWaitTests, WaitForRolloutsTests
from agl_kernel.testing._watchdog import WatchdogTests

__all__ = ["StoreConformanceSuite", "make_span"]


class StoreConformanceSuite(
    RolloutCreationTests,
    QueueTests,
    StartAttemptTests,
    UpdateRolloutTests,
    RetryTests,
    NewestAttemptTests,
    FinalStatusTests,
    WorkerTests,
    WatchdogTests,
    SpanTests,
    SpanQueryTests,
    ResourceTests,
    RolloutQueryTests,
    AttemptQueryTests,
    SpanSortTests,
    ResourceAndWorkerQueryTests,
    NotFoundTests,
    WaitForRolloutsTests,
    DequeueWaitTests,
    CloseWakesWaitersTests,
    ConcurrentDequeueTests,
    ConcurrentSequenceTests,
    ConcurrentResourceTests,
    DeletionTests,
    StatisticsTests,
    CloseTests,
    SnapshotAndCodecTests,
    IntegerRangeTests,
    SuiteBase,
):
    """The store contract of :mod:`agl_kernel.store.base`, as tests. Subclass it (``class TestMyStore(...)``)
    and implement ``async def make_store(self, **options) -> LightningStore``."""
