"""Damaged and unwritable store files: refused when opened (by the class, by name, by `agl store serve`), and a file
damaged under a running store stops it cleanly: one log line, then a clear error on every call, no traceback loop.

Read-only files: these tests run as root in CI, and root writes to a file whatever its mode bits say. So the
opening is done by the unprivileged user "nobody" (uid 65534), in a forked child that drops to it (for the CLI, the
child then runs `agl store serve` through the CLI's entry point). The file is mode 0444 in a directory nobody may
write to (mode 0777), which is the case of the issue: a read-only file in a writable directory.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from agl_kernel.errors import AglError, StoreDamagedError
from agl_kernel.models import Span
from agl_kernel.store.defaults import make_store
from agl_store_sqlite import SqliteLightningStore, SqliteStoreDamagedError, SqliteStoreError

NOBODY = 65534
DAMAGE_AT, DAMAGE_SIZE = 8192, 64 * 1024  # the damage: 64 KB of random bytes at offset 8192


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def damage(path: Path, offset: int = DAMAGE_AT, size: int = DAMAGE_SIZE, *, sure: bool = False) -> None:
    """Random bytes over ``size`` bytes at ``offset``. ``sure``: with a zero first byte in every 4 KB page, which is
    no b-tree page type, so that the first read of any of those pages fails (random bytes pass SQLite's first test
    of a page 1 time in 64; the open check reads them all, a test of a running store may read only one)."""
    data = bytearray(os.urandom(size))
    if sure:
        data[(4096 - offset) % 4096 :: 4096] = bytes(len(data[(4096 - offset) % 4096 :: 4096]))
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


async def fill(path: Path, rollouts: int = 60, spans: int = 10) -> list[str]:
    """A store with some data (about 300 KB), closed; returns the rollout ids."""
    async with SqliteLightningStore(path) as store:
        ids = []
        for i in range(rollouts):
            await store.enqueue_rollout({"task": i, "text": "x" * 200})
            attempted = await store.dequeue_rollout(worker_id=f"w{i % 4}")
            assert attempted is not None
            await store.add_many_spans(
                [
                    Span(
                        rollout_id=attempted.rollout_id,
                        attempt_id=attempted.attempt.attempt_id,
                        trace_id=uuid.uuid4().hex,
                        span_id=uuid.uuid4().hex[:16],
                        name=f"step-{j}",
                        attributes={"j": j, "text": "y" * 100},
                    )
                    for j in range(spans)
                ]
            )
            ids.append(attempted.rollout_id)
    assert path.stat().st_size > DAMAGE_AT + DAMAGE_SIZE
    return ids


def assert_damage_message(message: str, path: Path) -> None:
    assert str(path) in message and "damaged" in message, message
    assert "restore" in message.lower() and "backup" in message and "move it away" in message, message
    assert "\n" not in message, "the message is one line"


# ---------------------------------------------------------------------------------------------------- at open


@pytest.mark.asyncio
async def test_random_bytes_in_a_store_are_refused_at_open(tmp_path: Path) -> None:
    path = tmp_path / "agl.db"
    await fill(path)
    damage(path)
    before = digest(path)
    with pytest.raises(SqliteStoreDamagedError) as info:
        SqliteLightningStore(path)
    error = info.value
    assert isinstance(error, StoreDamagedError) and isinstance(error, SqliteStoreError) and isinstance(error, AglError)
    assert_damage_message(str(error), path)
    assert "PRAGMA quick_check" in str(error) and error.path == str(path)
    assert digest(path) == before, "the damaged file was changed"
    with pytest.raises(SqliteStoreDamagedError):  # by name, as the Trainer, the CLI and the dashboard open it
        make_store("sqlite", path=path)
    assert digest(path) == before


@pytest.mark.asyncio
async def test_the_bounded_check_for_big_files_refuses_it_too(tmp_path: Path) -> None:
    """Files above ``full_check_max_mb`` get the bounded check (roots, edges and sampled rows of every tree): the
    issue's damage lands on the trees' root pages, which it reads."""
    path = tmp_path / "agl.db"
    await fill(path)
    damage(path)
    with pytest.raises(SqliteStoreDamagedError) as info:
        SqliteLightningStore(path, full_check_max_mb=0)
    assert_damage_message(str(info.value), path)
    assert "first, last and sampled rows" in str(info.value)


@pytest.mark.asyncio
async def test_an_intact_store_passes_both_checks(tmp_path: Path) -> None:
    path = tmp_path / "agl.db"
    ids = await fill(path)
    for limit in (0, 64):
        async with SqliteLightningStore(path, full_check_max_mb=limit) as store:
            assert (await store.get_rollout(ids[-1])).rollout_id == ids[-1]


def run_cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    try:
        command = [sys.executable, "-m", "agl_kernel.cli", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"`agl {' '.join(args)}` was still running after {timeout} s (it served the file): {exc.output}")


def assert_one_line_refusal(result: subprocess.CompletedProcess[str]) -> str:
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    assert len(output.splitlines()) == 1 and output.startswith("Error: "), output
    return output


@pytest.mark.asyncio
async def test_agl_store_serve_refuses_a_damaged_store(tmp_path: Path) -> None:
    path = tmp_path / "agl.db"
    await fill(path)
    damage(path)
    result = run_cli("store", "serve", "--path", str(path), "--port", "0")
    assert_damage_message(assert_one_line_refusal(result), path)


# ---------------------------------------------------------------------------------------------------- read-only


@pytest.fixture
def shared_dir():
    """A directory that "nobody" may write to (pytest's tmp_path is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="agl-sqlite-damaged-"))
    base.chmod(0o777)
    try:
        yield base
    finally:
        shutil.rmtree(base)


async def read_only_store(directory: Path) -> Path:
    path = directory / "agl.db"
    await fill(path, rollouts=5)
    path.chmod(0o444)
    return path


def open_as_nobody(path: Path) -> str:
    """Open a store at ``path`` as a user the file's mode bits apply to; the error message, or 'OPENED'."""
    if os.geteuid() != 0:
        try:
            SqliteLightningStore(path, cross_process_poll=0)
        except SqliteStoreError as exc:
            return str(exc)
        return "OPENED"
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: everything it needs is imported already
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                SqliteLightningStore(path, cross_process_poll=0)
                message = "OPENED"
            except SqliteStoreError as exc:
                message = str(exc)
            os.write(write_end, message.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    return message


def assert_read_only_message(message: str, path: Path) -> None:
    assert message != "OPENED", "a store file its user cannot write was opened (and would fail every write)"
    assert str(path) in message and "read-only" in message and "writable" in message, message
    assert "\n" not in message


@pytest.mark.asyncio
async def test_read_only_store_file_is_refused_at_open(shared_dir: Path) -> None:
    path = await read_only_store(shared_dir)
    before = digest(path)
    assert_read_only_message(open_as_nobody(path), path)
    assert digest(path) == before


def cli_as_nobody(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """``agl ARGS`` in a child process that runs as "nobody" when this one is root. The child is forked and calls
    the CLI's entry point (what the `agl` script runs) instead of executing a new interpreter: this Python may live
    where nobody cannot read it (here, under /root)."""
    import importlib

    from agl_kernel.cli import cli

    # Import what `agl store serve` imports lazily, before the fork: the child may not be able to read this
    # Python's standard library any more (it lives under /root here).
    needed = ("agl_kernel.config", "agl_kernel.server._app", "agl_kernel.server._cli", "agl_kernel.server._serve")
    for module in (*needed, "uvicorn"):
        importlib.import_module(module)
    cli.add_hook_commands()  # and every plugin's commands (the dashboard's import webbrowser), whatever ran before
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 70
        try:
            os.close(read_end)
            os.dup2(write_end, 1)
            os.dup2(write_end, 2)
            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - the child ends with os._exit
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            try:
                cli.main(args=list(args), prog_name="agl")
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 71
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(write_end)
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(read_end, 65536), b"")), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            reader.join(5)
            os.close(read_end)
            pytest.fail(f"`agl {' '.join(args)}` was still running after {timeout} s (it served the file): {chunks}")
        time.sleep(0.05)
    reader.join(5)
    os.close(read_end)
    return subprocess.CompletedProcess(args, os.waitstatus_to_exitcode(status), b"".join(chunks).decode(), "")


@pytest.mark.asyncio
async def test_agl_store_serve_refuses_a_read_only_store(shared_dir: Path) -> None:
    path = await read_only_store(shared_dir)
    result = cli_as_nobody("store", "serve", "--path", str(path), "--port", "0")
    assert_read_only_message(assert_one_line_refusal(result).removeprefix("Error: "), path)


# ---------------------------------------------------------------------------------------------------- while running


@pytest.mark.asyncio
async def test_damage_found_while_running_stops_the_store_cleanly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "agl.db"
    ids = await fill(path)
    store = SqliteLightningStore(path, watchdog_interval=0.05)  # intact: opens
    try:
        waiter = asyncio.ensure_future(store.dequeue_rollout(worker_id="idle", timeout=10))  # a long poll, waiting
        await asyncio.sleep(0.1)
        assert not waiter.done()
        caplog.set_level(logging.DEBUG, logger="agl_store_sqlite")
        damage(path, sure=True)
        # Another thread (its own connection, with nothing cached) meets the damage first; the waiter is woken.
        with pytest.raises(SqliteStoreDamagedError):
            await asyncio.to_thread(asyncio.run, store.get_rollout(ids[0]))
        started = time.monotonic()
        with pytest.raises(SqliteStoreDamagedError):
            await asyncio.wait_for(waiter, 5)
        assert time.monotonic() - started < 2, "the waiting dequeue was not woken"

        calls = {
            "get_rollout": lambda: store.get_rollout(ids[1]),
            "query_spans": lambda: store.query_spans(ids[2]),
            "statistics": store.statistics,
            "enqueue_rollout": lambda: store.enqueue_rollout({"new": 1}),
            "update_worker": lambda: store.update_worker("w9"),
            "dequeue_rollout": lambda: store.dequeue_rollout(worker_id="w9"),
        }
        failures: dict[str, set[str]] = {}
        deadline = time.monotonic() + 2.0
        rounds = 0
        while time.monotonic() < deadline:  # ~2 s of calls, while the watchdog ticks every 50 ms
            rounds += 1
            for name, call in calls.items():
                try:
                    await call()
                except Exception as exc:
                    failures.setdefault(name, set()).add(f"{type(exc).__name__}: {exc}")
                else:
                    failures.setdefault(name, set()).add("succeeded")
            await asyncio.sleep(0.02)
        for name, seen in failures.items():
            assert len(seen) == 1, f"{name}: {seen}"
            (only,) = seen
            assert only.startswith("SqliteStoreDamagedError: "), f"{name}: {only}"
            assert_damage_message(only, path)
            assert "stopped serving" in only
        assert rounds > 10
        assert not store._monitor.is_alive(), "the watchdog thread should stop"
    finally:
        await store.close()
    records = [r for r in caplog.records if r.name.startswith("agl_store_sqlite")]
    assert not [r for r in records if r.exc_info], "a traceback was logged"
    damaged = [r for r in records if "damaged" in r.getMessage()]
    assert len(damaged) == 1 and damaged[0].levelno == logging.ERROR, [r.getMessage() for r in records]
    assert len(records) == 1, [r.getMessage() for r in records]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.asyncio
async def test_agl_store_serve_on_a_store_damaged_while_running(tmp_path: Path) -> None:
    """The server keeps answering, with 503 and the store's message for every store call, and logs the damage once
    (no traceback per call, no watchdog loop)."""
    path = tmp_path / "agl.db"
    ids = await fill(path)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "agl_kernel.cli", "store", "serve", "--path", str(path), "--port", str(port),
         "--option", "watchdog_interval=0.05", "--log-level", "info"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    output: list[bytes] = []
    reader = threading.Thread(target=lambda: output.extend(server.stdout or []), daemon=True)
    reader.start()
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if (await client.get("/health")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert server.poll() is None and time.monotonic() < deadline, b"".join(output).decode()
                await asyncio.sleep(0.05)
            damage(path, sure=True)
            requests = [
                ("GET", f"/api/v1/rollouts/{ids[1]}", None),
                ("POST", f"/api/v1/rollouts/{ids[2]}/spans/query", {}),
                ("GET", "/api/v1/statistics", None),
                ("POST", "/api/v1/rollouts", {"input": {"new": 1}}),
                ("POST", "/api/v1/rollouts/query", {}),
            ]
            answers: list[tuple[int, str, str]] = []
            end = time.monotonic() + 2.0
            while time.monotonic() < end:
                for method, route, body in requests:
                    answer = await client.request(method, route, json=body)
                    error = answer.json() if answer.status_code >= 400 else {}
                    answers.append((answer.status_code, error.get("error", ""), error.get("message", "")))
                await asyncio.sleep(0.02)
            assert (await client.get("/health")).status_code == 200
        # Through the store client: the kernel's StoreDamagedError, which a runner takes as permanent (it stops
        # instead of riding it out as an outage).
        from agl_kernel.client import LightningStoreClient
        from agl_kernel.errors import StoreDamagedError
        from agl_kernel.runner import is_transient

        async with LightningStoreClient(url) as store:
            with pytest.raises(StoreDamagedError, match="is damaged") as caught:
                await store.get_rollout(ids[1])
        assert not is_transient(caught.value)
    finally:
        server.terminate()
        server.wait(20)
        reader.join(5)
    log = b"".join(output).decode()
    # A call that only reads pages still cached from before the damage may succeed, until one meets it; after that
    # every store call is refused.
    first = next((i for i, (status, _, _) in enumerate(answers) if status >= 400), len(answers))
    assert first < len(requests), answers[: first + 1]
    refused = answers[first:]
    assert {status for status, _, _ in refused} == {503}, sorted(set(refused))[:5]
    assert {error for _, error, _ in refused} == {"SqliteStoreDamagedError"}
    for _, _, message in refused:
        assert_damage_message(message, path)
    assert "Traceback" not in log, log[-3000:]
    assert len(re.findall(r"is damaged", log)) == 1, log[-3000:]
