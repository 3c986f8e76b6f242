"""``agl rollouts list``, ``agl rollouts show ID`` and ``agl rollouts why ID`` on a failed rollout, as a user runs
them: a real SQLite store filled by ``Trainer.dev`` with an agent that fails on some tasks, then the CLI in a
subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agl_kernel.trainer import Trainer

pytestmark = pytest.mark.requires_plugin("agl_store_sqlite")


def agent(task: dict, resources: dict) -> float:
    if task["fail"]:
        raise ValueError(f"task {task['n']} cannot be solved: the answer is missing")
    return float(task["n"])


TASKS = [{"n": 1, "fail": False}, {"n": 2, "fail": True}, {"n": 0.5, "fail": False}, {"n": 4, "fail": True}]


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rollouts") / "agl.db"
    trainer = Trainer(store="sqlite", store_path=path, progress=False, options={"algorithm": {"max_attempts": 1}})
    trainer.dev(agent, TASKS)
    return path


def agl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "250"}
    env.pop("AGL_STORE_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "agl_kernel.cli", *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def listed(db: Path, *args: str) -> list[dict]:
    result = agl("rollouts", "list", "--path", str(db), "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["rollouts"]


def test_list_shows_every_rollout_id_with_status_reward_and_exception_type(db: Path) -> None:
    rollouts = listed(db)
    assert len(rollouts) == 4
    assert sorted(r["status"] for r in rollouts) == ["failed", "failed", "succeeded", "succeeded"]
    failed = [r for r in rollouts if r["status"] == "failed"]
    assert all(r["exception_type"] == "ValueError" for r in failed)
    assert sorted(r["reward"] for r in rollouts if r["status"] == "succeeded") == [0.5, 1.0]
    assert all(r["attempts"] == 1 for r in rollouts)
    assert {r["mode"] for r in rollouts} == {"train"}  # dev runs its tasks as training rollouts

    result = agl("rollouts", "list", "--path", str(db))
    assert result.returncode == 0, result.stderr
    for r in rollouts:
        assert r["rollout_id"] in result.stdout
    assert "ValueError" in result.stdout and "failed" in result.stdout and "succeeded" in result.stdout
    assert "agl rollouts show ID" in result.stdout


def test_list_filters(db: Path) -> None:
    failed = listed(db, "--status", "failed")
    assert len(failed) == 2 and {r["status"] for r in failed} == {"failed"}
    assert len(listed(db, "--status", "failed", "--status", "succeeded")) == 4
    assert len(listed(db, "--limit", "1")) == 1
    assert len(listed(db, "--since", "1h")) == 4
    assert listed(db, "--until", "1h") == []
    assert len(listed(db, "--since", "2000-01-01T00:00:00")) == 4
    assert len(listed(db, "--mode", "train")) == 4
    assert listed(db, "--mode", "val") == []

    text = agl("rollouts", "list", "--path", str(db), "--limit", "1")
    assert "1 of 4 matching rollouts shown" in text.stdout

    bad = agl("rollouts", "list", "--path", str(db), "--since", "yesterday")
    assert bad.returncode != 0 and "neither a duration" in bad.stderr and "Traceback" not in bad.stderr


def test_show_a_failed_rollout_gives_its_exception(db: Path) -> None:
    rollout_id = listed(db, "--status", "failed")[0]["rollout_id"]
    result = agl("rollouts", "show", rollout_id, "--path", str(db))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert rollout_id in out and "failed" in out
    assert "ValueError" in out and "cannot be solved: the answer is missing" in out
    assert "last frames of the stack trace" in out and "test_rollouts_cli.py" in out  # where it was raised

    data = json.loads(agl("rollouts", "show", rollout_id, "--path", str(db), "--json").stdout)
    assert data["rollout"]["rollout_id"] == rollout_id and data["rollout"]["status"] == "failed"
    assert len(data["attempts"]) == 1 and data["attempts"][0]["status"] == "failed"
    assert data["exception"]["type"] == "ValueError"
    assert "the answer is missing" in data["exception"]["message"]
    assert "raise ValueError" in data["exception"]["stacktrace"]


def test_show_a_succeeded_rollout_gives_its_reward(db: Path) -> None:
    rollout = next(r for r in listed(db, "--status", "succeeded") if r["reward"] == 0.5)
    data = json.loads(agl("rollouts", "show", rollout["rollout_id"], "--path", str(db), "--json").stdout)
    assert data["reward"] == 0.5 and data["exception"] is None
    text = agl("rollouts", "show", rollout["rollout_id"], "--path", str(db)).stdout
    assert "reward 0.5" in text and "Traceback" not in text


def test_why_on_a_failed_rollout_shows_the_exception(db: Path) -> None:
    rollout_id = listed(db, "--status", "failed")[0]["rollout_id"]
    result = agl("rollouts", "why", rollout_id, "--path", str(db))
    assert result.returncode == 0, result.stderr
    assert "ended with an exception" in result.stdout
    assert "ValueError" in result.stdout and "the answer is missing" in result.stdout
    data = json.loads(agl("rollouts", "why", rollout_id, "--path", str(db), "--json").stdout)
    assert data["exception"]["type"] == "ValueError"


def test_unknown_id_and_missing_store_are_one_line_errors(db: Path, tmp_path: Path) -> None:
    for command in ("show", "why"):
        result = agl("rollouts", command, "ro-does-not-exist", "--path", str(db))
        assert result.returncode != 0
        assert "Traceback" not in result.stderr and "ro-does-not-exist" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for args in (["list"], ["show", "ro-x"]):
        result = agl("rollouts", *args, "--path", str(tmp_path / "nothing.db"))
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert "there is no store file" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = agl("rollouts", "list", cwd=empty)
    assert result.returncode != 0 and "there is no store file" in result.stderr


def test_token_without_url_is_refused(db: Path) -> None:
    result = agl("rollouts", "list", "--path", str(db), "--token", "secret")
    assert result.returncode != 0 and "--url" in result.stderr and "Traceback" not in result.stderr


def test_list_show_and_why_through_a_store_server_with_a_token(db: Path, tmp_path: Path) -> None:
    import socket
    import time

    httpx = pytest.importorskip("httpx", reason="the http store needs agl-kernel[client]")

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "agl_kernel.cli", "store", "serve", "--path", str(db), "--port", str(port)]
        + ["--token", "s3cret"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"{url}/health", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)

        result = agl("rollouts", "list", "--url", url, "--token", "s3cret", "--status", "failed")
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("ValueError") == 2
        rollout_id = next(r["rollout_id"] for r in listed(db, "--status", "failed"))
        assert rollout_id in result.stdout
        show = agl("rollouts", "show", rollout_id, "--url", url, "--token", "s3cret")
        assert show.returncode == 0 and "the answer is missing" in show.stdout
        why = agl("rollouts", "why", rollout_id, "--url", url, "--token", "s3cret")
        assert why.returncode == 0 and "ValueError" in why.stdout

        refused = agl("rollouts", "list", "--url", url)
        assert refused.returncode != 0 and "Traceback" not in refused.stderr
        assert "--token" in refused.stderr and "AGL_STORE_TOKEN" in refused.stderr
    finally:
        server.terminate()
        server.wait(15)
        log.close()
