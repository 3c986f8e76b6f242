"""Smoke use of the plugin installed alone with the kernel: ``tools/check_plugins_alone.py`` builds every
distribution under plugins/, installs the kernel and this one wheel into a fresh venv, runs ``agl plugins --check``
there and then this script with that venv's python, from an empty directory (no pytest, nothing of the repository).
Exit 0 when the plugin works; anything else fails the check with this script's output.

Here each skeleton is made by its registered name; keep the kinds your plugin has and make them do what a user
would do first, as the other plugins' smoke scripts do (plugins/agl-store-sqlite/tests/smoke.py: enqueue a
rollout, record a span, read them back; plugins/agl-algo-grpo/tests/smoke.py: one training step)."""

from __future__ import annotations

import asyncio
import sys

from agl_kernel import LightningStore
from agl_kernel.plugins import create_component
from agl_store_template import TemplateAlgorithm, TemplateLightningStore, TemplateRunner, TemplateTracer


def check(condition: object, what: str) -> None:
    if not condition:
        sys.exit(f"smoke failed: {what}")


async def main() -> None:
    store = create_component("stores", "template")
    check(isinstance(store, TemplateLightningStore) and isinstance(store, LightningStore), f"got {store!r}")
    check(store.capabilities is not None, "the store declares no capabilities")
    await store.close()
    for kind, component in (
        ("runners", TemplateRunner),
        ("tracers", TemplateTracer),
        ("algorithms", TemplateAlgorithm),
    ):
        made = create_component(kind, "template")
        check(isinstance(made, component), f"the `template` {kind[:-1]} is a {type(made).__name__}")
    print("agl-store-template smoke: ok (its store, runner, tracer and algorithm made by name)")


if __name__ == "__main__":
    asyncio.run(main())
