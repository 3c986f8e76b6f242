"""The kernel's store conformance suite, unchanged, on a fresh schema per test."""

from __future__ import annotations

from typing import Any

import pytest

from agl_kernel.testing import StoreConformanceSuite
from agl_store_postgres import PostgresLightningStore


class TestPostgresStore(StoreConformanceSuite):
    @pytest.fixture(autouse=True)
    def _server(self, postgres_dsn: str, schema: str) -> None:
        self.dsn = postgres_dsn
        self.schema = schema

    async def make_store(self, **options: Any) -> PostgresLightningStore:
        return PostgresLightningStore(self.dsn, schema=self.schema, **options)
