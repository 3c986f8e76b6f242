"""``agl dashboard`` takes its store like every other command (``--store NAME``, ``--path``, ``--set store.KEY=V``,
``--config``, ``AGL_STORE__KEY``) and still takes the old form ``--store FILE``: real ``agl`` processes serving a
real SQLite file on 127.0.0.1, stopped with SIGTERM. Mistakes are one-line errors with exit code 2."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

pytest.importorskip("agl_store_sqlite")
from agl_store_sqlite import SqliteLightningStore


@pytest.fixture
def store_file(tmp_path: Path) -> tuple[Path, str]:
    """A SQLite store file with one rollout in it, and that rollout's id."""

    async def fill(path: Path) -> str:
        async with SqliteLightningStore(path) as store:
            return (await store.enqueue_rollout({"question": "cli"})).rollout_id

    path = tmp_path / "runs" / "a.db"
    return path, asyncio.run(fill(path))


def agl(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agl_kernel.cli", *args],
        capture_output=True, text=True, cwd=cwd, timeout=120, env={**os.environ, **env},
    )  # fmt: skip


@contextmanager
def dashboard(*args: str, cwd: Path, **env: str) -> Iterator[tuple[str, list[str]]]:
    """``agl dashboard ARGS --no-open --port 0`` running; its address and the lines it printed (stdout and stderr)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "agl_kernel.cli", "dashboard", *args, "--no-open", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd, env={**os.environ, **env},
    )  # fmt: skip
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        url = None
        while url is None and time.monotonic() < deadline:
            line = process.stdout.readline()  # type: ignore[union-attr]
            if not line:
                break
            lines.append(line.rstrip("\n"))
            found = re.search(r"http://127\.0\.0\.1:\d+", line)
            url = found.group(0) if found else None
        assert url is not None, "agl dashboard did not print its address:\n" + "\n".join(lines)
        yield url, lines
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            rest, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            rest, _ = process.communicate()
        lines.extend(rest.splitlines())
    assert process.returncode == 0, "\n".join(lines)
    assert "agl dashboard stopped" in lines[-1]


def rollout_ids(url: str) -> str:
    response = httpx.get(f"{url}/api/dashboard/rollouts", timeout=30)
    assert response.status_code == 200, response.text
    return response.text


def test_the_store_by_name_with_its_file_and_options(store_file: tuple[Path, str], tmp_path: Path) -> None:
    path, rollout_id = store_file
    args = ("--store", "sqlite", "--path", str(path), "--set", "store.busy_timeout=5")
    with dashboard(*args, cwd=tmp_path) as (url, lines):
        assert rollout_id in rollout_ids(url)
    assert f"SqliteLightningStore at {path}" in lines[0]
    assert not any("old form" in line for line in lines)


def test_the_default_store_is_the_sqlite_file_of_the_working_directory(
    store_file: tuple[Path, str], tmp_path: Path
) -> None:
    path, rollout_id = store_file
    (tmp_path / ".agl").mkdir()
    path.rename(tmp_path / ".agl" / "agl.db")
    with dashboard(cwd=tmp_path) as (url, _):
        assert rollout_id in rollout_ids(url)


def test_the_file_from_a_run_file_and_the_environment(store_file: tuple[Path, str], tmp_path: Path) -> None:
    path, rollout_id = store_file
    run_file = tmp_path / "run.toml"
    run_file.write_text(f'[store]\nname = "sqlite"\npath = "{tmp_path / "nowhere.db"}"\n')
    with dashboard("--config", str(run_file), cwd=tmp_path, AGL_STORE__PATH=str(path)) as (url, _):
        assert rollout_id in rollout_ids(url)  # the variable wins over the run file


@pytest.mark.parametrize("relative", [False, True])
def test_the_old_form_store_file_still_works_with_a_note(
    store_file: tuple[Path, str], tmp_path: Path, relative: bool
) -> None:
    path, rollout_id = store_file
    value = str(path.relative_to(tmp_path) if relative else path)
    with dashboard("--store", value, cwd=tmp_path) as (url, lines):
        assert rollout_id in rollout_ids(url)
    assert any(f"`--store {value}` is the old form of `--store sqlite --path {value}`" in line for line in lines)


def test_an_old_form_file_without_a_suffix_is_recognised(store_file: tuple[Path, str], tmp_path: Path) -> None:
    path, rollout_id = store_file
    plain = path.with_suffix("")
    path.rename(plain)
    with dashboard("--store", str(plain), cwd=tmp_path) as (url, lines):
        assert rollout_id in rollout_ids(url)
    assert any("is the old form" in line for line in lines)


# --------------------------------------------------------------------------------------------------- mistakes


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (
            ["--set", "store.bogus=1"],
            "store.bogus: unknown option. Valid keys: busy_timeout, cross_process_poll, full_check_max_mb, "
            "path, synchronous, watchdog_interval",
        ),
        (["--set", "store.busy_timeout=soon"], "store.busy_timeout: expected a number, got 'soon'"),
        (["--store", "memory", "--path", "x"], "store.path: unknown option. Valid keys: watchdog_interval"),
        (["--store", "nosuch"], "store.name: No stores plugin named 'nosuch'."),
        (["--set", "algorithm.steps=3"], "--set 'algorithm.steps=3': agl dashboard takes store options only"),
        (["--store", "a.db", "--path", "b.db"], "store.path: --store 'a.db' is a store file (the old form)"),
    ],
    ids=["unknown-option", "wrong-type", "option-the-store-does-not-take", "unknown-store", "other-table", "both"],
)
def test_a_bad_store_option_is_one_line_with_exit_code_2(tmp_path: Path, args: list[str], error: str) -> None:
    done = agl("dashboard", *args, "--no-open", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"Error: {error}"), done.stderr
    assert not (tmp_path / ".agl").exists()


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ([], "store.path: there is no store file at '.agl/agl.db'; run training first"),
        (["--path", "missing.db"], "store.path: there is no store file at 'missing.db'"),
        (["--store", "missing.db"], "--store: there is no store file at 'missing.db'"),
    ],
    ids=["default", "path", "old-form"],
)
def test_a_missing_store_file_is_an_error_not_a_new_file(tmp_path: Path, args: list[str], error: str) -> None:
    done = agl("dashboard", *args, "--no-open", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"Error: {error}"), done.stderr
    assert not list(tmp_path.rglob("*.db"))


def test_a_non_loopback_address_needs_a_token(store_file: tuple[Path, str], tmp_path: Path) -> None:
    path, _ = store_file
    done = agl("dashboard", "--path", str(path), "--host", "0.0.0.0", "--no-open", cwd=tmp_path, AGL_STORE_TOKEN="")
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0 without a token" in done.stderr


def test_which_store_values_are_the_old_form(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agl_dashboard._cli import _store_flags

    monkeypatch.chdir(tmp_path)
    (tmp_path / "sqlite").write_text("")  # a file named like a store plugin: the name wins
    (tmp_path / "mystore").write_text("")
    assert _store_flags("sqlite", None) == {"store.name": "sqlite", "store.path": None}
    assert _store_flags("memory", None) == {"store.name": "memory", "store.path": None}
    assert _store_flags("mystore", None) == {"store.name": "sqlite", "store.path": "mystore"}
    assert _store_flags("not/there.sqlite3", None) == {"store.name": "sqlite", "store.path": "not/there.sqlite3"}
    assert _store_flags("http://127.0.0.1:4747", None) == {
        "store.name": "http", "store.url": "http://127.0.0.1:4747", "store.path": None
    }  # fmt: skip
