"""Smoke use of agl-dashboard installed alone with the kernel (``tools/check_plugins_alone.py`` runs it with a
fresh venv's python; it needs nothing else, not even pytest): write a SQLite store file (its declared dependency),
run ``agl dashboard --store FILE --no-open --port 0`` on 127.0.0.1, and get the built page, one of its assets and
the rollouts from the dashboard's API; then stop the command with SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import httpx

from agl_store_sqlite import SqliteLightningStore


def check(condition: object, what: str) -> None:
    if not condition:
        sys.exit(f"smoke failed: {what}")


async def fill(path: str) -> str:
    async with SqliteLightningStore(path) as store:
        return (await store.enqueue_rollout({"question": "smoke"})).rollout_id


def read_url(process: subprocess.Popen, timeout: float = 60) -> str:
    """The address ``agl dashboard`` prints once it serves (its output so far, if it exits first)."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()  # type: ignore[union-attr]
        if not line:
            break
        lines.append(line)
        found = re.search(r"http://127\.0\.0\.1:\d+", line)
        if found:
            return found.group(0)
    process.kill()
    sys.exit("smoke failed: `agl dashboard` did not print its address:\n" + "".join(lines))


def main(directory: str) -> None:
    path = os.path.join(directory, "agl.db")
    rollout_id = asyncio.run(fill(path))
    agl = os.path.join(os.path.dirname(sys.executable), "agl")
    process = subprocess.Popen(
        [agl, "dashboard", "--store", path, "--host", "127.0.0.1", "--port", "0", "--no-open"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        url = read_url(process)
        with httpx.Client(base_url=url, timeout=30) as client:
            page = client.get("/")
            check(page.status_code == 200, f"GET / answered {page.status_code}: {page.text[:300]}")
            check(page.headers["content-type"].startswith("text/html") and '<div id="root">' in page.text,
                  f"GET / is not the built page: {page.text[:300]}")  # fmt: skip
            script = re.search(r'src="(/assets/[^"]+\.js)"', page.text)
            check(script, "the page names no script")
            asset = client.get(script.group(1))  # type: ignore[union-attr]
            check(asset.status_code == 200 and len(asset.content) > 1000, f"GET {script.group(1)}: {asset.status_code}")  # type: ignore[union-attr]
            rollouts = client.get("/api/dashboard/rollouts")
            check(rollouts.status_code == 200, f"GET /api/dashboard/rollouts: {rollouts.status_code} {rollouts.text}")
            check(rollout_id in rollouts.text, f"the store's rollout is not listed: {rollouts.text[:300]}")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            rest, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            rest, _ = process.communicate()
    check(process.returncode == 0, f"`agl dashboard` exited with {process.returncode} on SIGTERM:\n{rest}")
    print(f"agl-dashboard smoke: ok ({url}/: the page, {script.group(1)}, rollout {rollout_id} in the API)")  # type: ignore[union-attr]


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(tmp)
