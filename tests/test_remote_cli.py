"""The remote store as a user meets it: `agl store serve --backend sqlite --token T` in a subprocess, then `agl
runner`, `agl rollouts list --url`, `agl resources list --url`, `agl dev --store URL` and `agl dashboard --store URL`
with no token, a wrong one, `--token` and AGL_STORE_TOKEN; the server's own answers to a request without the token
(401 before 405/404) and its /schema page (no URL outside the server)."""

from __future__ import annotations

import asyncio
import html
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agl_kernel.client import LightningStoreClient
from agl_kernel.imports import import_object

pytestmark = pytest.mark.requires_plugin("agl_store_sqlite")

_PROCESSES = f"{Path(__file__).with_name('store_processes.py')}"
Server = import_object(f"{_PROCESSES}:Server")

TOKEN = "remote-cli-token"
PYTHON = [sys.executable, "-m", "agl_kernel.cli"]
AGENT = "def agent(task, resources):\n    return float(task['n'])\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    folder = tmp_path_factory.mktemp("remote")
    db = folder / "agl.db"
    served = Server(db, folder / "server.log", "--backend", "sqlite", "--token", TOKEN)
    served.start()
    try:
        yield served.url, db
    finally:
        served.terminate()


@pytest.fixture(scope="module")
def agent_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("agent") / "remote_agent.py"
    path.write_text(AGENT)
    return f"{path}:agent"


def _env(token: str | None) -> dict[str, str]:
    env = {**os.environ, "COLUMNS": "250"}
    env.pop("AGL_STORE_TOKEN", None)
    if token is not None:
        env["AGL_STORE_TOKEN"] = token
    return env


def agl(*args: str, env_token: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*PYTHON, *args], check=False, capture_output=True, text=True, env=_env(env_token), timeout=120
    )


def assert_refused(result: subprocess.CompletedProcess, url: str, *, token_sent: bool) -> None:
    """One line on stderr, exit code 2, naming --token and AGL_STORE_TOKEN, and whether a token was refused."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    line = lines[0]
    assert url in line and "--token" in line and "AGL_STORE_TOKEN" in line, line
    assert ("refused the token given" in line) == token_sent and ("none was given" in line) == (not token_sent), line


def test_rollouts_and_resources_without_a_token_are_one_line(server: tuple[str, Path]) -> None:
    url, _ = server
    assert_refused(agl("rollouts", "list", "--url", url), url, token_sent=False)
    assert_refused(agl("rollouts", "list", "--url", url, "--token", "wrong"), url, token_sent=True)
    assert_refused(agl("rollouts", "show", "ro-x", "--url", url), url, token_sent=False)
    assert_refused(agl("resources", "list", "--url", url, env_token="wrong"), url, token_sent=True)


def test_rollouts_and_resources_with_the_token(server: tuple[str, Path]) -> None:
    url, _ = server
    listed = agl("rollouts", "list", "--url", url, "--json", env_token=TOKEN)
    assert listed.returncode == 0, listed.stderr
    by_flag = agl("resources", "list", "--url", url, "--token", TOKEN)
    assert by_flag.returncode == 0 and "resources id" in by_flag.stdout, by_flag.stderr


def test_runner_without_a_token_stops_with_one_line(server: tuple[str, Path], agent_file: str) -> None:
    url, _ = server
    assert_refused(agl("runner", "--store", url, "--agent", agent_file), url, token_sent=False)
    assert_refused(agl("runner", "--store", url, "--agent", agent_file, "--token", "nope"), url, token_sent=True)


def test_runner_with_the_token_names_the_servers_store_and_runs(server: tuple[str, Path], agent_file: str) -> None:
    url, db = server

    async def enqueue() -> str:
        async with LightningStoreClient(url, token=TOKEN) as client:
            return (await client.enqueue_rollout({"n": 3})).rollout_id

    rollout_id = asyncio.run(enqueue())
    runner = subprocess.Popen(
        [*PYTHON, "runner", "--store", url, "--agent", agent_file],
        env=_env(TOKEN),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert runner.stderr is not None
        banner = runner.stderr.readline()
        assert f"on {url} (sqlite {db.resolve()})" in banner, banner

        async def finished() -> list:
            async with LightningStoreClient(url, token=TOKEN) as client:
                return await client.wait_for_rollouts(rollout_ids=[rollout_id], timeout=60)

        assert [r.status for r in asyncio.run(finished())] == ["succeeded"]
    finally:
        runner.send_signal(signal.SIGTERM)
        _, rest = runner.communicate(timeout=30)
    # (the count may miss the rollout: SIGTERM can come between the store's answer and the runner's tally)
    assert runner.returncode == 0 and "agl runner: stopped after" in rest and "Traceback" not in rest, rest


def test_dev_against_the_server_without_a_token(server: tuple[str, Path], agent_file: str, tmp_path: Path) -> None:
    url, _ = server
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"n": 1}\n')
    assert_refused(agl("dev", "--store", url, "--agent", agent_file, "--dataset", str(tasks)), url, token_sent=False)
    local = agl("dev", "--agent", agent_file, "--dataset", str(tasks), "--token", TOKEN)
    assert local.returncode == 2 and "--store http://HOST:PORT" in local.stderr, local.stderr


def test_dashboard_on_the_server_without_a_token(server: tuple[str, Path]) -> None:
    pytest.importorskip("agl_dashboard", reason="needs the dashboard plugin: pip install -e plugins/agl-dashboard")
    url, _ = server
    assert_refused(agl("dashboard", "--store", url, "--no-open", "--port", "0"), url, token_sent=False)


def test_the_token_is_checked_before_the_method_and_the_path(server: tuple[str, Path]) -> None:
    url, _ = server
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for method, path in [("DELETE", "/api/v1/statistics"), ("PUT", "/v1/traces"), ("POST", "/schema/openapi.json")]:
        refused = httpx.request(method, url + path)
        assert refused.status_code == 401 and refused.json()["error"] == "unauthorized", (method, path)
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert httpx.request(method, url + path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.request(method, url + path, headers=auth).status_code == 405, (method, path)
    assert httpx.get(f"{url}/no/such/route").status_code == 401
    assert httpx.get(f"{url}/no/such/route", headers=auth).status_code == 404
    assert httpx.get(f"{url}/health").status_code == 200  # public, and its wrong method says so
    assert httpx.post(f"{url}/health").status_code == 405


def test_server_info_names_the_backend_and_its_file(server: tuple[str, Path]) -> None:
    url, db = server
    assert httpx.get(f"{url}/api/v1/server").status_code == 401
    info = httpx.get(f"{url}/api/v1/server", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert info["backend"] == "sqlite" and info["location"] == str(db.resolve())


def test_schema_page_loads_nothing_from_outside(server: tuple[str, Path]) -> None:
    url, _ = server
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(f"{url}/schema").status_code == 401
    document = httpx.get(f"{url}/schema/openapi.json", headers=auth).json()
    for page_path in ("/schema", "/schema/redoc", "/schema/swagger"):
        page = httpx.get(url + page_path, headers=auth)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), page_path
        text = page.text
        assert '<a href="/schema/openapi.json">' in text
        assert "<script" not in text.lower() and "<link" not in text.lower() and "@import" not in text
        sources = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", text, flags=re.IGNORECASE)
        assert sources and all(not s.startswith(("http:", "https:", "//")) for s in sources), sources
        assert "url(" not in text  # no stylesheet fetches anything either
        for path, item in document["paths"].items():  # every operation is listed, with its summary
            assert f"<code>{html.escape(path)}</code>" in text
            for operation in item.values():
                assert html.escape(operation.get("summary", "")) in text
        assert 'id="schema-ServerInfo"' in text and 'href="#schema-ErrorBody"' in text
