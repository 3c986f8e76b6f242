"""The kernel's store conformance suite, unchanged, through client → real HTTP server → memory / SQLite store.

Each store the suite asks for gets its own server-side store, made with the options the suite passed (the
watchdog tests ask for a fast watchdog), behind its own uvicorn server on a free port of 127.0.0.1.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from agl_kernel.store.memory import InMemoryLightningStore
from agl_kernel.testing import StoreConformanceSuite

from .conftest import ServedClient, serve_in_thread

_files = itertools.count()


class TestHttpMemoryStore(StoreConformanceSuite):
    async def make_store(self, **options: Any) -> ServedClient:
        store = InMemoryLightningStore(watchdog_interval=options.get("watchdog_interval", 0.5))
        return ServedClient(await serve_in_thread(store))


class TestHttpSqliteStore(StoreConformanceSuite):
    @pytest.fixture(autouse=True)
    def _directory(self, tmp_path: Path) -> None:
        self.directory = tmp_path

    async def make_store(self, **options: Any) -> ServedClient:
        sqlite = pytest.importorskip("agl_store_sqlite", reason="pip install agl-store-sqlite")
        store = sqlite.SqliteLightningStore(self.directory / f"store-{next(_files)}.db", **options)
        return ServedClient(await serve_in_thread(store))
