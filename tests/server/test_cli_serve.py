"""`agl store serve` as a user runs it: what it prints, the refusal to listen openly without a token, a
graceful SIGTERM, and errors for bad options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from agl_kernel.cli import cli


def test_refuses_an_open_address_without_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGL_STORE_TOKEN", raising=False)
    result = CliRunner().invoke(cli, ["store", "serve", "--host", "0.0.0.0", "--backend", "memory"])
    assert result.exit_code == 2
    assert "refusing to listen on 0.0.0.0 without a token" in result.output and "--insecure-bind" in result.output


def test_unknown_backend_lists_the_available_ones() -> None:
    result = CliRunner().invoke(cli, ["store", "serve", "--backend", "nope", "--port", "0"])
    assert result.exit_code != 0
    assert "nope" in result.output and "memory" in result.output


def test_serve_prints_store_and_url_and_stops_gracefully(tmp_path: Path, server_process: Any) -> None:
    pytest.importorskip("agl_store_sqlite", reason="pip install agl-store-sqlite")
    path = tmp_path / "served.db"
    server = server_process("--path", str(path), env={"AGL_STORE_TOKEN": "tok"})  # the default backend: sqlite
    seconds = server.start()
    assert httpx.get(f"{server.url}/api/v1/statistics").status_code == 401
    answer = httpx.post(f"{server.url}/api/v1/rollouts", json={"input": 1}, headers={"Authorization": "Bearer tok"})
    assert answer.status_code == 201
    assert server.terminate() == 0
    output = server.log.decode()
    assert f"SqliteLightningStore at {path}" in output
    assert f"listening on {server.url}" in output
    assert "bearer token required" in output
    assert "stopped; the store is closed" in output
    assert path.exists()
    print(f"agl store serve answered /health {seconds:.2f} s after the process started")
