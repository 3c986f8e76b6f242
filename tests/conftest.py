"""Shared test settings. The ``requires_plugin`` marker says which plugin distributions a kernel test needs:

    pytestmark = pytest.mark.requires_plugin("agl_store_sqlite")
    @pytest.mark.requires_plugin("agl_store_sqlite", "agl_dashboard")

A test whose plugin is not installed is skipped, naming what to install; ``pytest -m "not requires_plugin"`` runs
the kernel's tests alone (what a kernel-only install can run)."""

from __future__ import annotations

import importlib.util

import pytest

INSTALL = {
    "agl_store_sqlite": "plugins/agl-store-sqlite",
    "agl_tracer_otel": "plugins/agl-tracer-otel",
    "agl_model_server": "plugins/agl-model-server",
    "agl_algo_grpo": "plugins/agl-algo-grpo",
    "agl_algo_apo": "plugins/agl-algo-apo",
    "agl_dashboard": "plugins/agl-dashboard",
}


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers("requires_plugin"):
        for module in marker.args:
            if importlib.util.find_spec(module) is None:
                where = INSTALL.get(module, module)
                pytest.skip(f"needs the {module} plugin: pip install -e {where}")
