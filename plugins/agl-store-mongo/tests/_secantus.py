"""Start and stop a secantus server (a MongoDB wire-protocol server from PyPI's ``secantusdb``, the ``testing``
extra) as a separate process on a free loopback port. It is GPL-2.0: it is only ever run as a program, never
imported. It presents itself as a one-node replica set named ``secantus``.

Used by this plugin's tests (``conftest.py``) and by ``benchmarks/mongo_store.py``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SET_NAME = "secantus"


def executable() -> str | None:
    """``secantusd-py`` of this interpreter's environment (or on PATH), or ``None`` when it is not installed."""
    beside = Path(sys.executable).parent / "secantusd-py"
    if beside.is_file():
        return str(beside)
    return shutil.which("secantusd-py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class SecantusServer:
    """One server process. ``storage``: a directory (kept across :meth:`restart`) or ``":memory:"``."""

    def __init__(self, storage: str = ":memory:", *, port: int | None = None, extra: tuple[str, ...] = ()) -> None:
        found = executable()
        if found is None:
            raise RuntimeError(
                "secantusd-py is not installed: pip install 'agl-store-mongo[testing]' (or set AGL_TEST_MONGO_URI "
                "to a MongoDB replica set)"
            )
        self.command = found
        self.storage = storage
        self.port = port or free_port()
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="secantus-", suffix=".log", delete=False)  # noqa: SIM115
        self.start()

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?replicaSet={SET_NAME}"

    def start(self, timeout: float = 30.0) -> None:
        args = [self.command, "--host", "127.0.0.1", "--port", str(self.port), "--storage-path", self.storage]
        args += ["--log-level", "WARNING", *self.extra]
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"secantusd-py exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"secantusd-py did not listen on port {self.port} within {timeout:g} s:\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        with open(self._log.name, errors="replace") as log:
            return "".join(log.readlines()[-lines:])

    def close(self) -> None:
        self.stop()
        self._log.close()
        os.unlink(self._log.name)
