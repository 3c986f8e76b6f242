"""Runs the kernel's store conformance suite against this backend: every test of the contract, unchanged."""

from __future__ import annotations

from typing import Any

from agl_kernel.testing import StoreConformanceSuite
from agl_store_template import TemplateLightningStore


class TestTemplateLightningStore(StoreConformanceSuite):
    async def make_store(self, **options: Any) -> TemplateLightningStore:
        # A new, empty, started store per call. A backend that needs a service starts it in a fixture here,
        # or skips with a reason that says how to run it (e.g. "set AGL_TEST_POSTGRES_URL to run these").
        return TemplateLightningStore(**options)
