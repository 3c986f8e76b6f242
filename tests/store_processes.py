"""An `agl store serve` process on a SQLite file that tests kill and start again (tests/test_recovery.py,
tests/test_chaos.py load it by path: the tests folder is not a package)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PYTHON = [sys.executable, "-m", "agl_kernel.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`agl store serve` on a SQLite file, on a fixed port, so that it can be killed and started again."""

    def __init__(self, db: Path, log: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [*PYTHON, "store", "serve", "--path", str(db), "--port", str(self.port), *args]
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> None:
        import httpx

        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/health", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)
