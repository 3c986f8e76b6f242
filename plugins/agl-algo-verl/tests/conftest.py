"""agl-algo-verl's tests. Those marked ``verl`` need verl 0.9 (its own environment, built by ``ci/test.sh``): in an
environment without it they are skipped with the reason, unless ``AGL_REQUIRE_VERL=1`` (set by ``ci/test.sh``),
which makes them fail instead."""

from __future__ import annotations

import importlib.util
import os

import pytest

MISSING = [name for name in ("verl", "ray", "torch") if importlib.util.find_spec(name) is None]
REASON = (
    f"needs {', '.join(MISSING)} (verl's own environment: plugins/agl-algo-verl/ci/test.sh builds .venv-verl and runs "
    "these tests there)"
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "verl: needs verl 0.9, ray and torch (run by plugins/agl-algo-verl/ci/test.sh)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not MISSING or os.environ.get("AGL_REQUIRE_VERL") == "1":
        return  # required: the fixture below fails each verl test instead
    for item in items:
        if "verl" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=REASON))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before any fixture (the module-scoped ones start servers): fail a verl test that cannot run when required."""
    if MISSING and "verl" in item.keywords and os.environ.get("AGL_REQUIRE_VERL") == "1":
        pytest.fail(f"AGL_REQUIRE_VERL=1 but this environment lacks {', '.join(MISSING)}: {REASON}", pytrace=False)


if not MISSING:
    # verl 0.9 and ray warn while they import (ray's moved state API, verl's deprecated legacy trainer, ...): not
    # ours to fix, and the suite turns warnings into errors. Import them once here, those warnings silenced;
    # everything the tests then do still runs with warnings as errors.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import verl.single_controller.ray
        import verl.trainer.ppo.core_algos
        import verl.trainer.ppo.ray_trainer
        import verl.utils.config  # noqa: F401
