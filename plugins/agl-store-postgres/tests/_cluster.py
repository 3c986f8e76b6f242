"""A throw-away PostgreSQL cluster for the tests, the smoke check and the benchmark: ``initdb`` into a temporary
directory and ``pg_ctl start`` on a free port of 127.0.0.1 (and a unix socket in the same directory).

PostgreSQL refuses to run as root, so as root the cluster runs as ``nobody`` (its directory is handed over to it).
The superuser is ``agl`` with the password ``agl-test`` over TCP (scram-sha-256, so a wrong password is refused).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

USER, PASSWORD = "agl", "agl-test"
_DIRS = ("/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin")


def binary(name: str) -> str | None:
    """The path of a PostgreSQL server binary (``initdb``, ``pg_ctl``), or None when the server is not installed."""
    found = shutil.which(name)
    if found:
        return found
    for folder in _DIRS:
        candidate = Path(folder) / name
        if candidate.exists():
            return str(candidate)
    return None


def available() -> bool:
    return binary("initdb") is not None and binary("pg_ctl") is not None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresCluster:
    """One cluster: ``dsn()`` for a database of it; ``stop(mode)`` / ``start()`` / ``restart(mode)``; ``close()``
    stops it and removes its directory."""

    def __init__(self, *, fsync: bool = True) -> None:
        initdb, pg_ctl = binary("initdb"), binary("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise RuntimeError("PostgreSQL's initdb and pg_ctl are not installed")
        self._pg_ctl = pg_ctl
        self.root = Path(tempfile.mkdtemp(prefix="agl-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            entry = pwd.getpwnam("nobody")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            self._as = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self._as:
            os.chown(pwfile, self._as["user"], self._as["group"])
        self._run(
            initdb, "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}", "--auth-local=trust",
            "--auth-host=scram-sha-256", "-E", "UTF8", "--no-instructions",
        )  # fmt: skip
        settings = [
            f"port = {self.port}", "listen_addresses = '127.0.0.1'", f"unix_socket_directories = '{self.root}'",
            "max_connections = 300", "shared_buffers = 64MB", f"fsync = {'on' if fsync else 'off'}",
            "log_min_messages = fatal", "logging_collector = off",
        ]  # fmt: skip
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n".join(settings) + "\n")
        self.start()

    def _run(self, *command: str) -> None:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=self.root, **self._as)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command[:2])} failed: {done.stdout}{done.stderr}")

    def dsn(self, database: str = "postgres", *, password: str = PASSWORD) -> str:
        return f"postgresql://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        self._run(self._pg_ctl, "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(self._pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "immediate") -> None:
        self.stop(mode)
        self.start()

    def close(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                try:
                    self.stop("immediate")
                except (RuntimeError, subprocess.TimeoutExpired):
                    self._kill()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _kill(self) -> None:
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        except (OSError, ValueError, IndexError):
            pass
