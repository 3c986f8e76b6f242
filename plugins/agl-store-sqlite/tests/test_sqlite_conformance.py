"""The kernel's store conformance suite, unchanged, on a fresh SQLite file per test."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from agl_kernel.testing import StoreConformanceSuite
from agl_store_sqlite import SqliteLightningStore

_files = itertools.count()


class TestSqliteStore(StoreConformanceSuite):
    @pytest.fixture(autouse=True)
    def _directory(self, tmp_path: Path) -> None:
        self.directory = tmp_path

    async def make_store(self, **options: Any) -> SqliteLightningStore:
        return SqliteLightningStore(self.directory / f"store-{next(_files)}.db", **options)
