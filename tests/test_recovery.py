"""Fault tolerance by default: a dead runner's rollout is retried, runners ride out store outages, `agl dev` stops
cleanly on SIGTERM. The process tests use real `agl store serve`, `agl runner` and `agl dev` processes and real
signals, with the default settings unless a test says otherwise."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agl_kernel.errors import InvalidStatusTransitionError, NotFoundError, StoreClosedError
from agl_kernel.imports import import_object
from agl_kernel.models import AttemptStatus, RolloutConfig, RolloutStatus
from agl_kernel.runner import LitAgentRunner, is_transient
from agl_kernel.store.memory import InMemoryLightningStore

AGENTS = Path(__file__).with_name("recovery_agents.py")
PYTHON = [sys.executable, "-m", "agl_kernel.cli"]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# ------------------------------------------------------------------------------------------------ in one process


class FlakyStore:
    """A store whose coroutine methods raise ``error`` while ``down`` (a store server out of reach)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.down = False
        self.error: BaseException = ConnectionRefusedError("the store server is down")
        self.failures = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                self.failures += 1
                await asyncio.sleep(0.01)
                raise self.error
            return await attr(*args, **kwargs)

        return call


async def wait_status(store: Any, rollout_id: str, status: RolloutStatus, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (await store.get_rollout(rollout_id)).status is not status:
        assert time.monotonic() < deadline, f"{rollout_id} did not become {status.value}"
        await asyncio.sleep(0.02)


def fast_runner(worker_id: str = "w", **options: Any) -> LitAgentRunner:
    return LitAgentRunner(worker_id=worker_id, wait_seconds=0.05, heartbeat_interval=0.05, **options)


def held_agent(held: str, release: asyncio.Event) -> Any:
    """An agent that returns 1.0, on the task ``held`` only once ``release`` is set."""

    async def agent(task: Any, resources: Any) -> float:
        if task == held:
            await release.wait()
        return 1.0

    return agent


def test_what_is_transient() -> None:
    from agl_kernel.client import StoreAuthError, StoreConnectionError, StoreRequestError, StoreServerError

    assert is_transient(StoreConnectionError("refused"))
    assert is_transient(ConnectionRefusedError()) and is_transient(TimeoutError())
    assert is_transient(StoreServerError("restarting", status_code=503))
    assert is_transient(StoreServerError("bug", status_code=500))
    assert is_transient(StoreRequestError("slow down", status_code=429))
    assert not is_transient(StoreAuthError("wrong token", status_code=401))
    assert not is_transient(StoreRequestError("malformed", status_code=400))
    assert not is_transient(NotFoundError("gone"))
    assert not is_transient(InvalidStatusTransitionError("final"))
    assert not is_transient(StoreClosedError("closed"))
    assert not is_transient(ValueError("a bug"))


def test_runner_rides_out_a_store_outage_and_reports_its_result_afterwards() -> None:
    """The store goes away while the agent runs (heartbeats fail), the agent ends during the outage, the result
    waits; once the store is back it is reported, the same attempt succeeds, and the runner (idle through a second
    outage) serves the next rollout."""

    async def main() -> None:
        async with InMemoryLightningStore(watchdog_interval=0.05) as inner:
            store = FlakyStore(inner)
            release = asyncio.Event()
            agent = held_agent("first", release)
            stop = asyncio.Event()
            serving = asyncio.create_task(fast_runner().run(store, agent, stop=stop))
            first = (await inner.enqueue_rollout("first")).rollout_id
            await wait_status(inner, first, RolloutStatus.RUNNING)
            store.down = True
            await asyncio.sleep(0.3)  # heartbeats fail
            release.set()  # the agent ends while the store is out of reach
            await asyncio.sleep(0.7)  # its result is retried
            assert not serving.done(), serving.exception() if serving.done() else None
            assert (await inner.get_rollout(first)).status is RolloutStatus.RUNNING
            store.down = False
            assert [r.status for r in await inner.wait_for_rollouts([first], timeout=10)] == [RolloutStatus.SUCCEEDED]
            assert [a.status for a in (await inner.query_attempts(first)).items] == [AttemptStatus.SUCCEEDED]

            store.down = True  # the idle runner's dequeue fails for a while
            await asyncio.sleep(0.7)
            failures = store.failures
            store.down = False
            second = (await inner.enqueue_rollout("second")).rollout_id
            assert [r.status for r in await inner.wait_for_rollouts([second], timeout=10)] == [RolloutStatus.SUCCEEDED]
            assert not serving.done()
            stop.set()
            assert await asyncio.wait_for(serving, 5) == 2
        assert failures >= 3

    run(main())


def test_an_idle_runner_wakes_when_another_runner_of_its_process_reaches_the_store() -> None:
    """Two runners share a store in one process; it is out of reach for 4 s. The idle runner's backoff has grown to
    a 4 s pause by then; the busy one heartbeats every 50 ms. As soon as a heartbeat gets through, the idle runner
    tries again, and takes the next rollout at once, instead of after its pause (or after the busy runner)."""

    async def main() -> None:
        async with InMemoryLightningStore(watchdog_interval=0.05) as inner:
            store = FlakyStore(inner)
            release = asyncio.Event()
            agent = held_agent("long", release)
            stop = asyncio.Event()
            serving = [asyncio.create_task(fast_runner("busy").run(store, agent, stop=stop))]
            long = (await inner.enqueue_rollout("long")).rollout_id
            await wait_status(inner, long, RolloutStatus.RUNNING)
            serving.append(asyncio.create_task(fast_runner("idle").run(store, agent, stop=stop)))
            await asyncio.sleep(0.2)  # registered, waiting for work
            store.down = True
            await asyncio.sleep(4.0)  # the idle runner's pauses: 0.25, 0.5, 1, 2, then 4 s from about 3.75 s on
            store.down = False
            back = time.monotonic()
            short = (await inner.enqueue_rollout("short")).rollout_id
            await wait_status(inner, short, RolloutStatus.SUCCEEDED, timeout=10)
            took = time.monotonic() - back
            (attempt,) = (await inner.query_attempts(short)).items
            release.set()
            await wait_status(inner, long, RolloutStatus.SUCCEEDED)
            stop.set()
            assert await asyncio.wait_for(asyncio.gather(*serving), 5) == [1, 1]
        assert attempt.worker_id == "idle"
        assert took < 2.0, (
            f"the idle runner slept out its pause: the rollout ended {took:.1f} s after the store was back"
        )

    run(main())


def test_runner_gives_up_when_the_outage_outlasts_its_window() -> None:
    async def main() -> None:
        async with InMemoryLightningStore() as inner:
            store = FlakyStore(inner)
            store.down = True
            started = time.monotonic()
            with pytest.raises(ConnectionRefusedError):
                await asyncio.wait_for(
                    fast_runner(store_outage_seconds=0.5).run(store, lambda t, r: 1.0, stop=asyncio.Event()), 10
                )
            assert 0.5 <= time.monotonic() - started < 5

    run(main())


def test_a_permanent_error_ends_the_runner_at_once() -> None:
    from agl_kernel.client import StoreAuthError

    async def main() -> None:
        async with InMemoryLightningStore() as inner:
            store = FlakyStore(inner)
            store.down = True
            store.error = StoreAuthError("the server needs a bearer token", status_code=401)
            started = time.monotonic()
            with pytest.raises(StoreAuthError):
                await asyncio.wait_for(fast_runner().run(store, lambda t, r: 1.0, stop=asyncio.Event()), 10)
            assert time.monotonic() - started < 1
            assert store.failures == 1

    run(main())


@pytest.mark.parametrize("verdict", [AttemptStatus.UNRESPONSIVE, AttemptStatus.TIMEOUT])
def test_a_result_for_an_attempt_the_store_gave_up_on_is_discarded_quietly(verdict: AttemptStatus) -> None:
    """While the agent runs, the store gives up on its attempt (unresponsive: retried on another worker; or
    timed out, a final status) and the retry starts elsewhere. The late result does not change the rollout, and
    the runner goes on."""

    async def main() -> None:
        async with InMemoryLightningStore() as store:
            release = asyncio.Event()

            async def agent(task: Any, resources: Any) -> float:
                if task == "slow":
                    await release.wait()
                return 1.0

            stop = asyncio.Event()
            serving = asyncio.create_task(fast_runner().run(store, agent, stop=stop))
            slow = (await store.enqueue_rollout("slow")).rollout_id
            await wait_status(store, slow, RolloutStatus.RUNNING)
            old = (await store.get_attempt(slow)).attempt_id
            await store.update_attempt(slow, old, status=verdict)
            assert (await store.get_rollout(slow)).status is RolloutStatus.REQUEUING  # the defaults retry it
            retry = await store.dequeue_rollout(worker_id="elsewhere")
            assert retry is not None and retry.attempt.sequence_id == 2
            release.set()
            await asyncio.sleep(0.5)  # the runner reports its result for the old attempt
            assert not serving.done(), serving.exception() if serving.done() else None
            rollout = await store.get_rollout(slow)
            assert rollout.status is RolloutStatus.PREPARING and rollout.attempt_count == 2  # the retry's
            other = (await store.enqueue_rollout("next")).rollout_id
            assert [r.status for r in await store.wait_for_rollouts([other], timeout=10)] == [RolloutStatus.SUCCEEDED]
            stop.set()
            await asyncio.wait_for(serving, 5)

    run(main())


# ------------------------------------------------------------------------------------------------ processes


def needs_server() -> None:
    pytest.importorskip("litestar", reason="the process tests need the server extra: pip install 'agl-kernel[server]'")


# The server process both process tests use (tests/ is not a package: load it by path).
_PROCESSES = f"{Path(__file__).with_name('store_processes.py')}"
Server = import_object(f"{_PROCESSES}:Server")
free_port = import_object(f"{_PROCESSES}:free_port")


def start_runner(url: str, log: Path, *args: str, agent: str = "sleepy") -> subprocess.Popen:
    command = [*PYTHON, "runner", "--store", url, "--agent", f"{AGENTS}:{agent}", *args]
    with log.open("ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def stop(process: subprocess.Popen, timeout: float = 15.0) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    return process.returncode


async def client_call(url: str, method: str, *args: Any, **kwargs: Any) -> Any:
    from agl_kernel.client import LightningStoreClient

    async with LightningStoreClient(url) as store:
        return await getattr(store, method)(*args, **kwargs)


def wait_for(url: str, rollout_id: str, status: RolloutStatus, timeout: float) -> float:
    """Seconds until the rollout has ``status`` (asserting it comes within ``timeout``)."""
    started = time.monotonic()
    while True:
        current = run(client_call(url, "get_rollout", rollout_id)).status
        if current is status:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, f"{rollout_id} is {current.value}, not {status.value}"
        time.sleep(0.1)


@pytest.mark.requires_plugin("agl_store_sqlite")
@pytest.mark.slow
def test_a_killed_runner_s_rollout_is_retried_on_another_runner_with_the_default_settings(tmp_path: Path) -> None:
    """`agl dev --strategy cs --runners 2` with no setting at all: the runner running the only task is
    SIGKILLed mid-rollout; the store finds its attempt unresponsive after the default window and the other runner
    retries it, so the run ends instead of hanging."""
    needs_server()
    from agl_store_sqlite import SqliteLightningStore

    pid_file = tmp_path / "hung.pid"
    dataset = tmp_path / "tasks.json"
    dataset.write_text(json.dumps([{"pid_file": str(pid_file)}]))
    db, log = tmp_path / "agl.db", tmp_path / "dev.log"
    command = [
        *PYTHON,
        "dev",
        "--strategy",
        "cs",
        "--runners",
        "2",
        "--path",
        str(db),
        "--agent",
        f"{AGENTS}:pid_then_hang_once",
        "--dataset",
        str(dataset),
    ]
    with log.open("wb") as out:
        dev = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() or not pid_file.read_text():
            assert dev.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
        killed = time.monotonic()
        window = RolloutConfig().unresponsive_seconds or 30.0  # (None before the defaults recovered: a hang)
        dev.wait(window + 30)
        recovered_in = time.monotonic() - killed
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()
    output = log.read_text()
    assert dev.returncode == 0, output
    assert "rollouts: 1  finished: 1  failed: 0" in output, output

    async def attempts() -> Any:
        async with SqliteLightningStore(db) as store:
            rollout = (await store.query_rollouts()).items[0]
            return rollout, (await store.query_attempts(rollout.rollout_id)).items

    rollout, tries = run(attempts())
    assert rollout.config == RolloutConfig()
    assert [a.status for a in tries] == [AttemptStatus.UNRESPONSIVE, AttemptStatus.SUCCEEDED]
    assert tries[0].worker_id != tries[1].worker_id
    assert window - 6 <= recovered_in, recovered_in  # the default window, not some shortcut
    print(f"\nrollout retried on another runner {recovered_in:.1f} s after its runner was killed")


@pytest.mark.slow
def test_a_runner_process_rides_out_server_restarts_and_finishes_its_rollouts(tmp_path: Path) -> None:
    """One `agl runner` process with two runners (one busy, one idle) against `agl store serve` on a SQLite file:
    the server is SIGKILLed and started again (same port, same file), then stopped gracefully for 10 s. The runner
    process stays up, each in-flight rollout is reported by its own attempt once the server is back, and both
    runners serve what comes next. Stopping the runner while the server is away does not hang."""
    needs_server()
    db = tmp_path / "agl.db"
    server = Server(db, tmp_path / "server.log")
    server.start()
    log = tmp_path / "runner.log"
    runner = start_runner(server.url, log, "--runners", "2", "--worker-id", "r")
    try:
        # 1. SIGKILL mid-rollout, back after a second.
        first = run(client_call(server.url, "enqueue_rollout", {"seconds": 6})).rollout_id
        wait_for(server.url, first, RolloutStatus.RUNNING, 60)
        server.kill()
        time.sleep(1.0)
        server.start()
        wait_for(server.url, first, RolloutStatus.SUCCEEDED, 25)
        assert runner.poll() is None, log.read_text()

        # 2. A graceful 10 s outage mid-rollout (the agent ends during it).
        second = run(client_call(server.url, "enqueue_rollout", {"seconds": 3})).rollout_id
        wait_for(server.url, second, RolloutStatus.RUNNING, 30)
        server.terminate()
        time.sleep(10.0)
        server.start()
        wait_for(server.url, second, RolloutStatus.SUCCEEDED, 25)
        assert runner.poll() is None, log.read_text()
        for rollout_id in (first, second):
            attempts = run(client_call(server.url, "query_attempts", rollout_id)).items
            assert [a.status for a in attempts] == [AttemptStatus.SUCCEEDED], attempts

        # 3. Both runners serve new work. The idle runner tries again as soon as the busy one gets through; each
        # rollout outlasts the longest backoff pause (5 s) anyway, so the busy runner cannot take both.
        more = [run(client_call(server.url, "enqueue_rollout", {"seconds": 8})).rollout_id for _ in range(2)]
        for rollout_id in more:
            wait_for(server.url, rollout_id, RolloutStatus.SUCCEEDED, 30)
        workers = {a.worker_id for r in more for a in run(client_call(server.url, "query_attempts", r)).items}
        assert workers == {"r-0", "r-1"}

        # 4. SIGTERM while the server is gone and an agent runs: the runner stops within seconds, cleanly.
        last = run(client_call(server.url, "enqueue_rollout", {"seconds": 60})).rollout_id
        wait_for(server.url, last, RolloutStatus.RUNNING, 30)
        server.kill()
        time.sleep(0.5)
        t0 = time.monotonic()
        code = stop(runner)
        stopped_in = time.monotonic() - t0
    finally:
        stop(runner)
        server.kill()
    output = log.read_text()
    assert code == 0, output
    assert stopped_in < 8, stopped_in
    assert "Traceback" not in output, output
    assert "the store is unreachable" in output and "reachable again" in output, output


@pytest.mark.slow
def test_a_permanent_error_or_an_outage_past_the_window_ends_agl_runner(tmp_path: Path) -> None:
    needs_server()
    server = Server(tmp_path / "agl.db", tmp_path / "server.log", "--token", "right")
    server.start()
    try:
        wrong = start_runner(server.url, tmp_path / "wrong.log", "--token", "wrong")
        wrong.wait(30)
    finally:
        server.kill()
    output = (tmp_path / "wrong.log").read_text()
    assert wrong.returncode == 2 and "token" in output and "Traceback" not in output, output

    gone = start_runner(server.url, tmp_path / "gone.log", "--set", "runner.store_outage_seconds=1")
    t0 = time.monotonic()
    gone.wait(60)
    output = (tmp_path / "gone.log").read_text()
    assert gone.returncode == 2 and "Traceback" not in output, output
    assert "giving up" in output and "Is `agl store serve` running there?" in output, output
    assert time.monotonic() - t0 < 30


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_sigterm_stops_agl_dev_cleanly(tmp_path: Path, sigint: str) -> None:
    """SIGTERM to `agl dev --strategy cs`: the runner processes are stopped, nothing prints a traceback, and the
    command exits with 143 after saying why — also where SIGINT is ignored, as in a job a script started with &
    (asyncio.run then installs no handler of its own)."""
    needs_server()
    dataset = tmp_path / "tasks.json"
    dataset.write_text(json.dumps([{"seconds": 30}] * 4))
    log = tmp_path / "dev.log"
    command = [
        *PYTHON,
        "dev",
        "--strategy",
        "cs",
        "--runners",
        "2",
        "--store",
        "memory",
        "--agent",
        f"{AGENTS}:sleepy",
        "--dataset",
        str(dataset),
    ]
    with log.open("wb") as out:
        preexec = _ignore_sigint if sigint == "ignored" else None
        dev = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, preexec_fn=preexec)
    try:
        deadline = time.monotonic() + 60
        while len(runners := _children(dev.pid)) < 2:
            assert dev.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        time.sleep(2.0)  # the runners are busy with rollouts now
        t0 = time.monotonic()
        dev.send_signal(signal.SIGTERM)
        dev.wait(30)
        stopped_in = time.monotonic() - t0
        time.sleep(0.5)
        left = [pid for pid in runners if _alive(pid)]
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()
    output = log.read_text()
    assert dev.returncode == 143, output
    assert "stopped by SIGTERM" in output and "Traceback" not in output, output
    assert not left and stopped_in < 15


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.requires_plugin("agl_store_sqlite")
def test_agl_dev_retries_by_default_and_takes_the_baseline_s_retry_options(tmp_path: Path) -> None:
    from agl_store_sqlite import SqliteLightningStore

    dataset = tmp_path / "tasks.json"
    dataset.write_text(json.dumps([{"seconds": 0, "fail": True}]))

    def attempts(*args: str) -> list[Any]:
        db = tmp_path / f"run{len(args)}.db"
        command = [*PYTHON, "dev", "--path", str(db), "--agent", f"{AGENTS}:sleepy", "--dataset", str(dataset), *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "rollouts: 1  finished: 0  failed: 1" in result.stdout, result.stderr

        async def read() -> Any:
            async with SqliteLightningStore(db) as store:
                rollout = (await store.query_rollouts()).items[0]
                return rollout.config, (await store.query_attempts(rollout.rollout_id)).items

        config, items = run(read())
        assert all(a.status is AttemptStatus.FAILED for a in items)
        return [config, len(items)]

    assert attempts() == [RolloutConfig(), 3]
    config, count = attempts("--set", "algorithm.max_attempts=2", "--set", "algorithm.unresponsive_seconds=60")
    assert count == 2 and config.max_attempts == 2 and config.unresponsive_seconds == 60
