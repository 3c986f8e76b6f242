"""Smoke use of the plugin installed alone with the kernel: ``tools/check_plugins_alone.py`` builds every
distribution under plugins/, installs the kernel and this one wheel into a fresh venv, runs ``agl plugins --check``
there and then this script with that venv's python, from an empty directory (no pytest, nothing of the repository).
Exit 0 when the plugin works; anything else fails the check with this script's output.

The skeleton can only be made and closed; once the store works, make it do what a user would do first, as
plugins/agl-store-sqlite/tests/smoke.py does: enqueue a rollout, record a span, read them back."""

from __future__ import annotations

import asyncio
import sys

from agl_kernel import LightningStore
from agl_kernel.plugins import create_component
from agl_store_template import TemplateLightningStore


def check(condition: object, what: str) -> None:
    if not condition:
        sys.exit(f"smoke failed: {what}")


async def main() -> None:
    store = create_component("stores", "template")
    check(isinstance(store, TemplateLightningStore) and isinstance(store, LightningStore), f"got {store!r}")
    check(store.capabilities is not None, "the store declares no capabilities")
    await store.close()
    print("agl-store-template smoke: ok (made by name and closed)")


if __name__ == "__main__":
    asyncio.run(main())
