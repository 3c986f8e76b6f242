"""Fixtures for the store server tests: real uvicorn servers on 127.0.0.1 (threads or subprocesses)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("litestar", reason="the server tests need the server extra: pip install 'agl-kernel[server]'")

from agl_kernel.client import LightningStoreClient
from agl_kernel.server import ServerThread, create_app
from agl_kernel.store.base import LightningStore


class ServedClient(LightningStoreClient):
    """A client whose ``close()`` also stops the server thread it was made for (the suite only closes stores)."""

    def __init__(self, server: ServerThread, **options: Any) -> None:
        super().__init__(server.url, **options)
        self.server = server

    async def close(self) -> None:
        already = self._closed
        await super().close()
        if not already:
            await asyncio.to_thread(self.server.stop)


async def serve_in_thread(store: LightningStore, **app_options: Any) -> ServerThread:
    app_options.setdefault("plugins", False)
    app_options.setdefault("poll_slice", 0.25)
    return await asyncio.to_thread(ServerThread(create_app(store, **app_options)).start)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``python -m agl_kernel.cli store serve ...`` as a real subprocess, on a fixed port."""

    def __init__(self, *args: str, port: int | None = None, env: dict[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.args = ["store", "serve", "--port", str(self.port), *args]
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.log = b""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> float:
        """Start it and wait for /health; returns the seconds that took."""
        started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agl_kernel.cli", *self.args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                out = self.process.stdout.read() if self.process.stdout else b""
                raise RuntimeError(f"the server exited with {self.process.returncode}: {out.decode()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=0.5).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"the server did not answer /health within {timeout} s")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def terminate(self, timeout: float = 20.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self.log = self.process.stdout.read() if self.process.stdout else b""
        return code


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[Any]:
    made: list[ServerProcess] = []

    def make(*args: str, **kwargs: Any) -> ServerProcess:
        made.append(ServerProcess(*args, **kwargs))
        return made[-1]

    yield make
    for proc in made:
        proc.kill()
