"""One local Ray cluster for the whole test session (starting Ray takes seconds), bound to the loopback only: the
node announces 127.0.0.1 (``--node-ip-address`` and Ray's single-machine switch), no dashboard, no usage stats.
It is stopped at the end of the session, and every process it started is checked gone."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# Before anything imports ray, in this process and every process it starts (the cluster, drivers under test).
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # a loopback node stays 127.0.0.1 (see agl_strategy_ray._cluster)
# Ray's token auth with a token of the session's own (not ~/.ray/auth_token): the cluster and every driver get it.
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)

CLUSTER_CPUS = 4
CLUSTER_DIR = f"/tmp/agl-ray-test-{os.getpid()}"
"""The session cluster's temp dir: every process of the cluster has it in its command line."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def processes_matching(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (from /proc; zombies left out)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry))
    return found


def wait_gone(text: str, seconds: float = 60.0) -> list[int]:
    """Wait for the processes matching ``text`` to exit; those still alive after ``seconds``."""
    deadline = time.monotonic() + seconds
    while (left := processes_matching(text)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


class Processes:
    """The process helpers above, for the tests (a test module cannot import conftest under importlib mode)."""

    matching = staticmethod(processes_matching)
    wait_gone = staticmethod(wait_gone)
    cluster_dir = CLUSTER_DIR


@pytest.fixture
def processes() -> type[Processes]:
    return Processes


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """The address (``127.0.0.1:PORT``) of a local Ray cluster of CLUSTER_CPUS logical CPUs."""
    temp_dir = CLUSTER_DIR
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "start",
        "--head",
        "--block",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        f"--num-cpus={CLUSTER_CPUS}",
        "--num-gpus=0",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
    ]
    log = Path(temp_dir + ".log")
    head = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not processes_matching(f"{temp_dir}/session_") or not _answers(port):
            assert head.poll() is None, f"ray start failed: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the Ray cluster did not start: {log.read_text()[-3000:]}"
            time.sleep(0.2)
        yield address
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        for pid in wait_gone(temp_dir, 30):  # anything it left behind: ours to end, by pid
            os.kill(pid, signal.SIGKILL)
        left = wait_gone(temp_dir, 10)
        assert not left, f"Ray processes left after the session: {left}"
        shutil.rmtree(temp_dir, ignore_errors=True)  # the session's logs; kept (with the .log) only if this fails
        log.unlink(missing_ok=True)


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
