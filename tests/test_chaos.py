"""Chaos: a client-server run of 200 rollouts on six runners (three `agl runner` processes against `agl store
serve` on a SQLite file) while the server is SIGKILLed and started again twice (same port, same file) and one
runner process is SIGKILLed mid-rollout, each at a random (seeded) point of the run. Every rollout must end exactly
once (succeeded, or failed with a reason), none may be left behind, and the run must finish in bounded time.

Everything runs with the default settings (heartbeats every 5 s, unresponsive after 30 s, 3 attempts, runners
riding out 300 s of outage): the 30 s window is what the killed runner's rollouts wait for, and it keeps the test
near a minute. ``AGL_CHAOS_SEED`` replays another sequence of events.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("litestar", reason="the chaos test needs the server extra: pip install 'agl-kernel[server]'")
pytestmark = pytest.mark.requires_plugin("agl_store_sqlite")

from agl_kernel import semconv  # noqa: E402
from agl_kernel.client import LightningStoreClient, StoreHTTPError  # noqa: E402
from agl_kernel.imports import import_object  # noqa: E402
from agl_kernel.models import AttemptStatus, EnqueueRequest, RolloutConfig, RolloutStatus  # noqa: E402

AGENTS = Path(__file__).with_name("recovery_agents.py")
PYTHON = [sys.executable, "-m", "agl_kernel.cli"]
SEED = int(os.environ.get("AGL_CHAOS_SEED", "18"))
N_ROLLOUTS = 200
N_PROCESSES, RUNNERS_PER_PROCESS = 3, 2
DEADLINE = 240.0
"""Seconds the whole run may take (it needs about a minute: the work, two restarts, one 30 s window)."""


# The server process both process tests use (tests/ is not a package: load it by path).
_PROCESSES = f"{Path(__file__).with_name('store_processes.py')}"
Server = import_object(f"{_PROCESSES}:Server")
free_port = import_object(f"{_PROCESSES}:free_port")


async def poll(url: str, what: str, *args: Any, **kwargs: Any) -> Any:
    """One store call that fails fast (``None``) while the server is away."""
    async with LightningStoreClient(url, retries=0, timeout=5.0) as store:
        try:
            return await getattr(store, what)(*args, **kwargs)
        except (ConnectionError, StoreHTTPError):  # not there, or not ready
            return None


@pytest.mark.slow
def test_rollouts_end_exactly_once_through_server_and_runner_kills(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    planned_failures = set(rng.sample(range(N_ROLLOUTS), 8))
    tasks = [
        {"id": i, "seconds": round(rng.uniform(0.05, 0.4), 3), "fail": i in planned_failures, "reward": 1.0}
        for i in range(N_ROLLOUTS)
    ]
    # The events, at random points of the run (counted in ended rollouts, so that a slow machine sees them at the
    # same stage as a fast one): two server kills, each down for a random while (one short, which the http client's
    # own retries hide; one longer than those, which the runners ride out themselves), and one runner process kill.
    server_kills = sorted(rng.sample(range(20, 160), 2))
    downtimes = [round(rng.uniform(0.5, 3.0), 2), round(rng.uniform(8.0, 12.0), 2)]
    rng.shuffle(downtimes)
    runner_kill = rng.randrange(30, 150)

    server = Server(tmp_path / "agl.db", tmp_path / "server.log")
    server.start()
    rollouts = asyncio.run(poll(server.url, "enqueue_many_rollouts", [EnqueueRequest(input=t) for t in tasks]))
    assert rollouts is not None and len(rollouts) == N_ROLLOUTS
    by_id = {r.rollout_id: r.input for r in rollouts}
    logs = [tmp_path / f"runner{i}.log" for i in range(N_PROCESSES)]
    processes = []
    for i, log in enumerate(logs):
        command = [*PYTHON, "runner", "--store", server.url, "--agent", f"{AGENTS}:sleepy",
                   "--runners", str(RUNNERS_PER_PROCESS), "--worker-id", f"p{i}"]  # fmt: skip
        with log.open("wb") as out:
            processes.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))

    events: list[str] = []
    victim: int | None = None
    victim_attempts: set[tuple[str, str]] = set()  # what the killed runners were running
    started = time.monotonic()
    ended = 0
    try:
        while True:
            elapsed = time.monotonic() - started
            assert elapsed < DEADLINE, f"stuck: {ended}/{N_ROLLOUTS} ended after {elapsed:.0f} s; events {events}"
            stats = asyncio.run(poll(server.url, "statistics"))
            if stats is not None:
                by_status = stats.rollouts_by_status
                ended = sum(by_status.get(s.value, 0) for s in RolloutStatus if s.is_terminal)
                if ended >= N_ROLLOUTS:
                    break
            if server_kills and ended >= server_kills[0]:
                server_kills.pop(0)
                down = downtimes.pop(0)
                server.kill()
                time.sleep(down)
                server.start()
                events.append(f"server SIGKILLed at {ended} ended, back after {down} s")
            if victim is None and ended >= runner_kill:
                workers = asyncio.run(poll(server.url, "query_workers")) or None
                busy = [] if workers is None else [
                    w for w in workers.items if w.status.value == "busy" and w.current_attempt_id is not None
                ]  # fmt: skip
                candidates = sorted({int(w.worker_id[1]) for w in busy})
                if candidates:
                    victim = rng.choice(candidates)
                    processes[victim].send_signal(signal.SIGKILL)
                    processes[victim].wait(10)
                    victim_attempts = {
                        (w.current_rollout_id, w.current_attempt_id)
                        for w in busy
                        if w.worker_id.startswith(f"p{victim}-") and w.current_rollout_id is not None
                    }
                    events.append(f"runner process p{victim} SIGKILLed at {ended} ended, mid-rollout")
            time.sleep(0.2)
        took = time.monotonic() - started
        survivors = [p for i, p in enumerate(processes) if i != victim]
        alive = [p.poll() is None for p in survivors]
        codes = []
        for process in survivors:
            process.send_signal(signal.SIGTERM)
            codes.append(process.wait(30))
        report = asyncio.run(collect(server.url, list(by_id)))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        server.kill()

    retried = [rid for rid, (rollout, _, _) in report.items() if rollout.attempt_count > 1]
    retried_by_chaos = [rid for rid in retried if by_id[rid]["id"] not in planned_failures]
    print(
        f"\nchaos (seed {SEED}): {N_ROLLOUTS} rollouts in {took:.1f} s; {'; '.join(events)}; "
        f"{len(retried)} rollouts retried ({len(retried_by_chaos)} because of the kills, "
        f"{len(retried) - len(retried_by_chaos)} planned failures)"
    )
    assert len(events) == 3, events
    assert victim is not None and victim_attempts
    assert all(alive), "a runner process did not survive the server restarts: " + _tails(logs)
    assert codes == [0] * len(survivors), _tails(logs)
    for log in logs:
        assert "Traceback" not in log.read_text(), _tails([log])
    survivor_logs = [log.read_text() for i, log in enumerate(logs) if i != victim]
    assert any("the store is unreachable" in text and "reachable again" in text for text in survivor_logs)

    # Every rollout ended exactly once, with its own outcome; none is left running.
    assert len(report) == N_ROLLOUTS
    for rid, (rollout, attempts, reasons) in report.items():
        task = by_id[rid]
        assert rollout.status.is_terminal and rollout.end_time is not None, rollout
        assert rollout.attempt_count == len(attempts) <= RolloutConfig().max_attempts
        newest = attempts[-1]
        if task["id"] in planned_failures:
            assert rollout.status is RolloutStatus.FAILED, rollout
            assert any("fails on purpose" in reason for reason in reasons), reasons
        elif rollout.status is RolloutStatus.FAILED:  # all its attempts lost to the kills: it says so
            assert newest.status in (AttemptStatus.UNRESPONSIVE, AttemptStatus.TIMEOUT) or reasons, attempts
        else:
            assert rollout.status is RolloutStatus.SUCCEEDED, rollout
            assert newest.status is AttemptStatus.SUCCEEDED, attempts
    succeeded = sum(r.status is RolloutStatus.SUCCEEDED for r, _, _ in report.values())
    assert succeeded >= N_ROLLOUTS - len(planned_failures) - 2, f"only {succeeded} succeeded"
    # The killed runner's attempts (those it had not finished in the instant before the kill) became unresponsive,
    # and their rollouts were retried on the other runners.
    cut_short = 0
    for rid, aid in victim_attempts:
        rollout, attempts, _ = report[rid]
        attempt = next(a for a in attempts if a.attempt_id == aid)
        if attempt.status is AttemptStatus.UNRESPONSIVE:
            cut_short += 1
            assert rollout.attempt_count > attempt.sequence_id or rollout.status is RolloutStatus.FAILED, attempts
    assert cut_short, f"the runner was not killed mid-rollout: {victim_attempts}"
    assert retried_by_chaos
    assert took < DEADLINE


async def collect(url: str, rollout_ids: list[str]) -> dict[str, Any]:
    """Each rollout, its attempts and the messages of its exception spans."""
    out: dict[str, Any] = {}
    async with LightningStoreClient(url) as store:
        stats = await store.statistics()
        assert stats.total_rollouts == len(rollout_ids), stats  # nothing was enqueued twice
        for rid in rollout_ids:
            rollout = await store.get_rollout(rid)
            attempts = (await store.query_attempts(rid)).items
            spans = (await store.query_spans(rid, name=semconv.EXCEPTION_SPAN)).items
            out[rid] = (rollout, attempts, [str(s.attributes.get(semconv.EXCEPTION_MESSAGE)) for s in spans])
    return out


def _tails(logs: list[Path]) -> str:
    return "\n".join(f"--- {log.name}\n{log.read_text()[-2000:]}" for log in logs)


if __name__ == "__main__":  # python tests/test_chaos.py [SEED]: one run, outside pytest
    if len(sys.argv) > 1:
        SEED = int(sys.argv[1])
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        test_rollouts_end_exactly_once_through_server_and_runner_kills(Path(directory))
    print(json.dumps({"seed": SEED, "ok": True}))
