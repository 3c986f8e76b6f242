"""docs/reference/ (hooks, components, the CLI) is generated from the code by tools/gen_docs.py; a page that drifted
from the code fails here (and in CI's check before the tests): run ``python tools/gen_docs.py`` and commit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_reference_pages_match_the_code() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_docs.py"), "--check"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_hook_is_documented_and_named_by_its_family() -> None:
    from agl_kernel.plugins import hookspecs

    hooks = [name for name in hookspecs.__all__ if name.startswith("agl_")]
    page = (ROOT / "docs" / "reference" / "hooks.md").read_text()
    for name in hooks:
        spec = getattr(hookspecs, name)
        assert name.startswith(("agl_register_", "agl_on_")), f"{name}: hooks are agl_register_* or agl_on_*"
        assert spec.__doc__ and spec.__doc__.strip(), f"{name} has no docstring"
        assert f"`{name}`" in page
        assert all(p.annotation != "Any" for p in __import__("inspect").signature(spec).parameters.values()), name
