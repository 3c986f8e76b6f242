"""The client-server strategy: a real store server in the trainer's process, real runner processes, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("litestar", reason="the cs strategy needs the server extra: pip install 'agl-kernel[server]'")

from agl_kernel import semconv
from agl_kernel.models import AttemptStatus, RolloutConfig
from agl_kernel.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
CALC = REPO / "contrib" / "calc_agent" / "calc_agent.py"
AGENTS = Path(__file__).with_name("cs_agents.py")


def children_of(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``pid``, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("strategy", ["shm", "cs"])
@pytest.mark.parametrize("n_runners", [1, 4])
def test_calc_agent_runs_through_dev(tmp_path: Path, strategy: str, n_runners: int) -> None:
    import asyncio

    sys.path.insert(0, str(CALC.parent))
    try:
        import calc_agent
    finally:
        sys.path.remove(str(CALC.parent))
    tasks = calc_agent.make_dataset(12, with_errors=True)
    trainer = Trainer(strategy=strategy, n_runners=n_runners, store_path=tmp_path / "agl.db", progress=False)
    with trainer:
        report = trainer.dev(f"{CALC}:calc_agent", tasks)

        async def spans_of_first() -> list[str]:
            return [s.name for s in (await trainer.store.query_spans(report.outcomes[0].rollout_id)).items]

        names = asyncio.run(spans_of_first())
        workers = asyncio.run(trainer.store.query_workers()).items
    assert report.by_status == {"succeeded": 11, "failed": 1}  # the one division by zero fails, recorded
    assert report.mean_reward == 1.0
    assert names == ["calculator", semconv.REWARD_SPAN]  # the tool call (operation span), then the reward
    assert len(workers) == n_runners


def test_sigkilled_runner_s_rollout_is_retried_on_another_runner(tmp_path: Path) -> None:
    import asyncio
    import threading

    pid_file = tmp_path / "hung.pid"
    killed: list[int] = []

    def kill_the_hung_runner() -> None:
        deadline = time.monotonic() + 60
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    threading.Thread(target=kill_the_hung_runner, daemon=True).start()
    config = RolloutConfig(unresponsive_seconds=1.0, max_attempts=2)
    from agl_kernel.algorithm import Baseline

    trainer = Trainer(
        algorithm=Baseline(config=config, timeout=60), strategy="cs", n_runners=2, store="memory", progress=False
    )
    with trainer:
        report = trainer.fit(f"{AGENTS}:pid_then_hang_once", [{"pid_file": str(pid_file)}])
        attempts = asyncio.run(trainer.store.query_attempts(report.outcomes[0].rollout_id)).items
    assert killed, "no runner hung"
    assert report.by_status == {"succeeded": 1}
    assert [a.status for a in attempts] == [AttemptStatus.UNRESPONSIVE, AttemptStatus.SUCCEEDED]
    assert attempts[0].worker_id != attempts[1].worker_id


def test_ctrl_c_stops_the_trainer_and_every_runner_process(tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(f"""
        import faulthandler, signal
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test asks for stacks if the trainer hangs
        from agl_kernel.trainer import Trainer
        tasks = [{{"seconds": 30}}] * 8
        Trainer(strategy="cs", n_runners=4, store="memory", progress=False).dev({str(AGENTS) + ":slow"!r}, tasks)
    """)
    )
    log = tmp_path / "trainer.log"  # a file, not a pipe: an unread pipe that fills up would block the trainer
    # As from a terminal: SIGINT not ignored (a background job of a non-interactive shell, e.g. CI, inherits it
    # ignored, and then Ctrl-C would never reach the trainer).
    trainer = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 60
        while len(runners := children_of(trainer.pid)) < 4:
            assert trainer.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the runners did not start"
            time.sleep(0.1)
        time.sleep(1.0)  # the runners are busy with rollouts now
        t0 = time.monotonic()
        trainer.send_signal(signal.SIGINT)
        try:
            trainer.wait(30)
        except subprocess.TimeoutExpired:
            trainer.send_signal(signal.SIGUSR1)  # every thread's stack into the log, to see where it hangs
            time.sleep(1.0)
            trainer.kill()
            trainer.wait()
            raise AssertionError("the trainer did not stop: " + log.read_text()[-3000:]) from None
        stopped_in = time.monotonic() - t0
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in runners) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [pid for pid in runners if alive(pid)]
    finally:
        if trainer.poll() is None:
            trainer.kill()
    assert not left, f"runner processes left behind: {left}"
    assert stopped_in < 15
