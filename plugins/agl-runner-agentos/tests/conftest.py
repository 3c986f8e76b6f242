from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _strict_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGL_STRICT_PLUGINS", "1")
