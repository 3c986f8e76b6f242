"""The ray strategy on a real local Ray cluster (one per session, loopback only: see conftest.py), a real store
server on 127.0.0.1, real kills. The slow ones kill actors and drivers or scale mid-run."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agl_kernel import semconv
from agl_kernel.algorithm import Baseline
from agl_kernel.errors import ConfigError
from agl_kernel.models import AttemptStatus, RolloutConfig
from agl_kernel.trainer import Trainer
from agl_strategy_ray import RayStrategy, RayStrategyError

REPO = Path(__file__).resolve().parents[3]
CALC = REPO / "contrib" / "calc_agent" / "calc_agent.py"
AGENTS = Path(__file__).with_name("ray_agents.py")


def wait_for(condition: Any, what: str, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def attempts_of(trainer: Trainer, report: Any) -> list[list[Any]]:
    async def query() -> list[list[Any]]:
        return [(await trainer.store.query_attempts(o.rollout_id)).items for o in report.outcomes]

    return asyncio.run(query())


# ---------------------------------------------------------------------------------------------------- options


def test_options_are_checked_with_their_path() -> None:
    with pytest.raises(ConfigError, match=r"strategy\.num_cpus: must be >= 0"):
        Trainer(strategy="ray", store="memory", options={"strategy": {"num_cpus": -1}})
    with pytest.raises(ConfigError, match=r"strategy\.num_cpu\b.*num_cpus"):
        Trainer(strategy="ray", store="memory", options={"strategy": {"num_cpu": 1}})
    trainer = Trainer(strategy="ray", store="memory", n_runners=2, options={"strategy": {"runners": 5}})
    assert isinstance(trainer.strategy, RayStrategy) and trainer.strategy.n_runners == 5  # strategy.runners wins
    with pytest.raises(ValueError, match="at least 1"):
        trainer.strategy.scale(0)


# ---------------------------------------------------------------------------------------------------- the loop


def listening_addresses(pid: int) -> set[str]:
    """The local addresses of the TCP sockets ``pid`` listens on (from /proc: its socket inodes, then net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.add(_address(fields[1].rsplit(":", 1)[0]))
    return found


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def test_the_session_cluster_listens_on_the_loopback_only(ray_cluster: str, processes: Any) -> None:
    pids = processes.matching(processes.cluster_dir)
    assert pids, "no process of the session's cluster"
    addresses = set().union(*(listening_addresses(pid) for pid in pids))
    assert addresses and all(is_loopback(a) for a in addresses), addresses


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1, how a dual-stack socket shows 127.0.0.1
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def test_calc_agent_through_the_whole_loop_with_4_actors(ray_cluster: str, tmp_path: Path) -> None:
    sys.path.insert(0, str(CALC.parent))
    try:
        import calc_agent
    finally:
        sys.path.remove(str(CALC.parent))
    tasks = calc_agent.make_dataset(12, with_errors=True)
    options = {"strategy": {"address": ray_cluster, "num_cpus": 0.5}}
    trainer = Trainer(strategy="ray", n_runners=4, store_path=tmp_path / "agl.db", progress=False, options=options)
    with trainer:
        report = trainer.dev(f"{CALC}:calc_agent", tasks)

        async def spans_and_workers() -> tuple[list[str], list[str]]:
            spans = (await trainer.store.query_spans(report.outcomes[0].rollout_id)).items
            return [s.name for s in spans], [w.worker_id for w in (await trainer.store.query_workers()).items]

        names, workers = asyncio.run(spans_and_workers())
    assert report.by_status == {"succeeded": 11, "failed": 1}  # the one division by zero fails, recorded
    assert report.mean_reward == 1.0
    assert names == ["calculator", semconv.REWARD_SPAN]  # spans and rewards came back over HTTP, as under cs
    assert sorted(workers) == ["ray-0", "ray-1", "ray-2", "ray-3"]


def test_the_runtime_env_reaches_the_actors(ray_cluster: str) -> None:
    options = {"address": ray_cluster, "num_cpus": 0.5, "runtime_env": {"env_vars": {"AGL_RAY_TEST_REWARD": "0.25"}}}
    with Trainer(strategy="ray", store="memory", progress=False, options={"strategy": options}) as trainer:
        report = trainer.dev(f"{AGENTS}:env_reward", [{}, {}])
    assert report.by_status == {"succeeded": 2}
    assert report.mean_reward == 0.25


def test_actors_use_a_store_server_they_are_given(ray_cluster: str) -> None:
    """``store_url``: no server of the strategy's own; the trainer's store is the same server (``--store http``)."""
    from agl_kernel.server import ServerThread, create_app
    from agl_kernel.store.memory import InMemoryLightningStore

    with ServerThread(create_app(InMemoryLightningStore(), token="secret", plugins=False)) as server:
        options = {
            "store": {"url": server.url, "token": "secret"},
            "strategy": {"address": ray_cluster, "num_cpus": 0.5, "store_url": server.url, "token": "secret"},
        }
        trainer = Trainer(strategy="ray", n_runners=2, store="http", progress=False, options=options)
        with trainer:
            report = trainer.dev(f"{AGENTS}:noop", [{}, {}, {}])
            workers = asyncio.run(trainer.store.query_workers()).items
    assert report.by_status == {"succeeded": 3}
    assert sorted(w.worker_id for w in workers) == ["ray-0", "ray-1"]


def test_a_closure_agent_is_sent_by_value(ray_cluster: str) -> None:
    reward = 0.5

    def agent(task: Any, resources: Any) -> float:  # no module:name another process could import it by
        return reward

    options = {"strategy": {"address": ray_cluster, "num_cpus": 0.5}}
    with Trainer(strategy="ray", store="memory", progress=False, options=options) as trainer:
        report = trainer.dev(agent, [{}])
    assert report.by_status == {"succeeded": 1} and report.mean_reward == 0.5


def test_actors_the_cluster_cannot_place_stop_the_run_with_a_reason(ray_cluster: str) -> None:
    options = {"address": ray_cluster, "resources": {"no_such_accelerator": 1}, "start_timeout": 3, "stop_timeout": 1}
    trainer = Trainer(strategy="ray", store="memory", progress=False, options={"strategy": options})
    with trainer, pytest.raises(RayStrategyError, match=r"did not start within 3 s.*short of the resources"):
        trainer.dev(f"{AGENTS}:noop", [{}])
    from agl_strategy_ray._cli import actor_statuses

    assert not [s for s in actor_statuses(ray_cluster) if s.get("run_id") == trainer.run_id]  # none left pending


# ---------------------------------------------------------------------------------------------------- faults


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigkill", "ray.kill"])
def test_an_actor_killed_mid_rollout_has_its_rollout_retried_once(ray_cluster: str, tmp_path: Path, how: str) -> None:
    """SIGKILL of the actor's process (Ray restarts it) or ``ray.kill`` without restart (a new actor takes the
    slot): the driver fails the attempt in flight, the store retries the rollout, and it ends once."""
    pid_file, go_file = tmp_path / "hung.pid", tmp_path / "go"
    killed: list[int] = []
    strategy = RayStrategy(n_runners=2, address=ray_cluster, num_cpus=0.5)

    def kill_the_hung_actor() -> None:
        wait_for(lambda: pid_file.exists() and pid_file.read_text(), "the hung rollout")
        pid = int(pid_file.read_text())
        if how == "sigkill":
            os.kill(pid, signal.SIGKILL)
        else:
            import ray

            from agl_strategy_ray._cli import actor_statuses

            (hung,) = [s for s in actor_statuses(ray_cluster) if s.get("pid") == pid]
            ray.kill(ray.get_actor(hung["actor"], namespace="agl"), no_restart=True)
        killed.append(pid)
        # The retry ends (and with it the run) once the driver has its actor back, restarted or replaced.
        wait_for(lambda: strategy.restarted + strategy.replaced > 0, "the killed actor restarted or replaced")
        go_file.touch()

    threading.Thread(target=kill_the_hung_actor, daemon=True).start()
    # A long unresponsive window: the retry comes from the driver seeing the actor die, not from the watchdog.
    config = RolloutConfig(unresponsive_seconds=120, max_attempts=2)
    trainer = Trainer(algorithm=Baseline(config=config, timeout=120), strategy=strategy, store="memory", progress=False)
    with trainer:
        report = trainer.fit(f"{AGENTS}:pid_then_hang_once", [{"pid_file": str(pid_file), "go_file": str(go_file)}])
        (attempts,) = attempts_of(trainer, report)
    assert killed, "no actor hung"
    assert report.by_status == {"succeeded": 1}
    assert [a.status for a in attempts] == [AttemptStatus.FAILED, AttemptStatus.SUCCEEDED]
    if how == "ray.kill":
        assert strategy.replaced == 1
    else:
        assert strategy.restarted == 1 and strategy.replaced == 0


@pytest.mark.slow
def test_scale_from_2_to_4_actors_and_back_mid_run(ray_cluster: str, tmp_path: Path) -> None:
    """Gated rollouts make it deterministic: 2 actors start 2 of them; after scale(4) the 2 new actors start 2 more
    (the only way 4 can start); `agl ray status` lists the 4 with their rollouts; scale(2) then stops 2 of them
    after their rollout, and every rollout ends once, on its first attempt."""
    strategy = RayStrategy(n_runners=2, address=ray_cluster, num_cpus=0.5)
    started = lambda: len(list(tmp_path.glob("started-*")))  # noqa: E731
    status: dict[str, Any] = {}

    def drive() -> None:
        wait_for(lambda: started() == 2, "2 rollouts started on 2 actors")
        strategy.scale(4)
        wait_for(lambda: started() == 4, "2 more rollouts started on the 2 new actors")
        command = [sys.executable, "-m", "agl_kernel.cli", "ray", "status", "--address", ray_cluster, "--json"]
        status["listed"] = subprocess.run(command, capture_output=True, text=True, timeout=120)
        strategy.scale(2)
        wait_for(lambda: len(strategy.actor_names) == 2, "2 actors marked to stop")
        (tmp_path / "go").write_text("")

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    tasks = [{"dir": str(tmp_path), "i": i} for i in range(6)]
    with Trainer(strategy=strategy, store="memory", progress=False) as trainer:
        report = trainer.dev(f"{AGENTS}:gated", tasks)
        attempts = attempts_of(trainer, report)
    driver.join(10)
    assert report.by_status == {"succeeded": 6}
    assert all([a.status for a in each] == [AttemptStatus.SUCCEEDED] for each in attempts)  # none lost or retried
    assert len({each[0].worker_id for each in attempts}) == 4
    listed = status["listed"]
    assert listed.returncode == 0, listed.stderr
    actors = [json.loads(line) for line in listed.stdout.splitlines() if line.startswith("{")]
    ours = [a for a in actors if a.get("run_id") == trainer.run_id]
    assert len(ours) == 4 and all(a["running"] and len(a["rollout_ids"]) == 1 for a in ours), actors
    assert {a["rollout_ids"][0] for a in ours} <= {o.rollout_id for o in report.outcomes}


def test_agl_train_with_the_ray_strategy(ray_cluster: str, tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"i": i}) + "\n" for i in range(4)))
    command = [
        *(sys.executable, "-m", "agl_kernel.cli", "train", "--agent", f"{AGENTS}:noop", "--dataset", str(tasks)),
        *("--store", "memory", "--strategy", "ray"),
        *("--set", f"strategy.address={ray_cluster}", "--set", "strategy.runners=2", "--set", "strategy.num_cpus=0.5"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "RayStrategy" in done.stdout and "finished: 4  failed: 0" in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("cluster", ["joined", "its own", "joined, SIGTERM to agl dev"])
def test_a_killed_driver_leaves_no_actor_or_raylet(
    ray_cluster: str, tmp_path: Path, cluster: str, processes: Any
) -> None:
    """SIGKILL of the driver: Ray ends the actors it owned (they are not detached); a local cluster it started
    goes with it, raylet and all. SIGTERM to `agl dev`: the strategy stops its actors itself, exit status 143."""
    strategy_options: dict[str, Any] = {"num_cpus": 0.5}
    if cluster.startswith("joined"):
        strategy_options["address"] = ray_cluster
    else:
        strategy_options["local_cpus"] = 2
    script = tmp_path / "driver.py"
    script.write_text(
        textwrap.dedent(f"""
        from agl_kernel.trainer import Trainer
        tasks = [{{"dir": {str(tmp_path)!r}, "i": i}} for i in range(4)]
        options = {{"strategy": {strategy_options!r}}}
        Trainer(strategy="ray", n_runners=2, store="memory", progress=False, options=options).dev(
            {str(AGENTS) + ":gated"!r}, tasks
        )
    """)
    )
    command = [sys.executable, str(script)]
    if cluster.endswith("agl dev"):
        tasks = tmp_path / "tasks.jsonl"
        tasks.write_text("".join(json.dumps({"dir": str(tmp_path), "i": i}) + "\n" for i in range(4)))
        command = [
            *(sys.executable, "-m", "agl_kernel.cli", "dev", "--agent", f"{AGENTS}:gated", "--dataset", str(tasks)),
            *("--store", "memory", "--strategy", "ray", "--runners", "2", "--set", f"strategy.address={ray_cluster}"),
            *("--set", "strategy.num_cpus=0.5"),
        ]
    log = tmp_path / "driver.log"
    driver = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: len(list(tmp_path.glob("started-*"))) == 2 or driver.poll() is not None, "2 actors busy")
        assert driver.poll() is None, log.read_text()[-3000:]
        actor_pids = sorted(int(p.read_text()) for p in tmp_path.glob("started-*"))
        own_cluster = f"_{driver.pid}/"  # a local cluster's session folder ends with its driver's pid
        if cluster == "its own":
            assert processes.matching(own_cluster), "the driver's own cluster is not running"
        if cluster.endswith("agl dev"):
            driver.send_signal(signal.SIGTERM)
            assert driver.wait(120) == 143, log.read_text()[-3000:]
        else:
            driver.kill()
            driver.wait()
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    left = [pid for pid in actor_pids if wait_gone_pid(pid)]
    assert not left, f"runner actors left after their driver died: {left}"
    if cluster == "its own":
        assert not processes.wait_gone(own_cluster), "the driver's own Ray cluster outlived it"
        for session in Path("/tmp/ray").glob(f"session_*_{driver.pid}"):  # its logs, left where Ray puts them
            shutil.rmtree(session, ignore_errors=True)
    else:
        from agl_strategy_ray._cli import actor_statuses

        assert not [s for s in actor_statuses(ray_cluster) if "error" not in s and s.get("running")]


def wait_gone_pid(pid: int, seconds: float = 60.0) -> bool:
    """Whether ``pid`` is still alive after waiting up to ``seconds`` for it to exit."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        if state == "Z":
            return False
        time.sleep(0.2)
    return True
