"""Without the server extra, the server says what to install instead of failing on an import."""

from __future__ import annotations

import importlib.util

import pytest
from click.testing import CliRunner

import agl_kernel.server
from agl_kernel.cli import cli
from agl_kernel.errors import MissingDependencyError


@pytest.fixture
def without_litestar(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "litestar" else real(name, *a))


@pytest.mark.usefixtures("without_litestar")
def test_server_names_the_extra() -> None:
    with pytest.raises(MissingDependencyError, match=r"pip install 'agl-kernel\[server\]'"):
        agl_kernel.server.create_app  # noqa: B018 - the lazy attribute is what is tested
    result = CliRunner().invoke(cli, ["store", "serve", "--backend", "memory", "--port", "0"])
    assert result.exit_code != 0 and "pip install 'agl-kernel[server]'" in result.output


def test_unknown_attribute() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        agl_kernel.server.no_such_thing  # noqa: B018
