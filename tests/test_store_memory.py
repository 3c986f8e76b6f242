"""The kernel's in-memory store against the store conformance suite."""

from __future__ import annotations

from typing import Any

from agl_kernel.store.base import LightningStore
from agl_kernel.testing import StoreConformanceSuite


class TestInMemoryStore(StoreConformanceSuite):
    async def make_store(self, **options: Any) -> LightningStore:
        from agl_kernel.store.memory import InMemoryLightningStore

        return InMemoryLightningStore(watchdog_interval=options.get("watchdog_interval", 0.5))
