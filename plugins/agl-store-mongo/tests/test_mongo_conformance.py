"""The kernel's store conformance suite, unchanged, on a fresh database per test."""

from __future__ import annotations

from typing import Any

import pytest

from agl_kernel.testing import StoreConformanceSuite
from agl_store_mongo import MongoLightningStore


class TestMongoStore(StoreConformanceSuite):
    @pytest.fixture(autouse=True)
    def _server(self, mongo_uri: str, database: str) -> None:
        self.uri = mongo_uri
        self.database = database

    async def make_store(self, **options: Any) -> MongoLightningStore:
        return MongoLightningStore(self.uri, database=self.database, **options)
