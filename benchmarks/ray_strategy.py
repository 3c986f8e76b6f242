"""The ``ray`` strategy (agl-strategy-ray) against ``shm`` and ``cs``, and a simulated scale-out on Ray.

    python benchmarks/ray_strategy.py                              # both parts, the defaults below
    python benchmarks/ray_strategy.py --part overhead --runners 4 --rollouts 400 --repeat 5
    python benchmarks/ray_strategy.py --part scale --actors 16,32,64 --sleep 1.0 --packed 64x4,64x16 --json

**Part 1, overhead.** A no-op agent (returns 1.0 at once) under ``shm``, ``cs`` and ``ray`` with the same number
of runners (``--runners``), ``--rollouts`` rollouts a run, on a fresh trainer and in-memory store each run, runs
interleaved (the order flipping on odd repeats), the median of ``--repeat``. The timed window is the one of
``benchmarks/runner_overhead.py``: it opens when every runner has registered with the store (start-up outside it)
and closes when the algorithm has every reward; start-up (cs: runner processes; ray: actors placed and started) is
reported beside it. ``shm``: runners as asyncio tasks of this process on the store object; ``cs``: the store server
in this process, one ``agl runner`` process per runner; ``ray``: the store server in this process, one Ray actor
per runner (``num_cpus=0.5``), on one local Ray cluster started once for the whole benchmark (loopback only, no
dashboard, no usage stats; the strategy joins it, as it joins any ``address``).

**Part 2, scale-out.** An async agent that sleeps ``--sleep`` seconds (an LLM call's latency) with 16, 32, 64, ...
actors (``--actors``), one runner each, ``num_cpus=0`` (the actors wait, they do not compute), ``--rounds`` rollouts
per actor a run. Ideal: actors / sleep rollouts/s. Then ``--packed AxR`` rows: A actors of R runners each
(``runners_per_actor``), to push the concurrency past what one process per runner allows, until the store server
(one event loop in the driver) is the limit.

Everything runs on this machine; nothing leaves the loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# Before ray is imported: a loopback-only local cluster, no usage stats, a token of this run (not ~/.ray).
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))

from agl_kernel.agent import rollout
from agl_kernel.algorithm import Baseline

READY_TIMEOUT = 600.0
THIS = Path(__file__).resolve()


@rollout
def noop_agent(task: Any, resources: Any) -> float:
    return 1.0


@rollout
async def sleeping_agent(task: Any, resources: Any) -> float:
    await asyncio.sleep(float(task["sleep"]))
    return 1.0


def cpu_by_group() -> dict[str, float]:
    """CPU seconds used so far by this process ("driver": the algorithm, the store server, shm's runners), by its
    runner processes ("runners": cs's ``agl runner`` processes, ray's ``ray::RunnerActor`` workers) and by the other
    processes under it ("ray": the local cluster's raylet, GCS, agents and idle workers), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, tuple[float, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        stats[int(entry)] = ((int(fields[11]) + int(fields[12])) / tick, cmdline)
    groups = {"driver": stats.get(os.getpid(), (0.0, ""))[0], "runners": 0.0, "ray": 0.0}
    todo = list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        seconds, cmdline = stats.get(pid, (0.0, ""))
        runner = cmdline.startswith("ray::RunnerActor") or "agl_kernel.cli runner" in cmdline
        groups["runners" if runner else "ray"] += seconds
    return groups


class TimedBaseline(Baseline):
    """The kernel's Baseline, timed (and its CPU use counted) from when ``ready_workers`` runners have registered
    with the store."""

    def __init__(self, ready_workers: int) -> None:
        super().__init__()
        self.ready_workers = ready_workers
        self.started = self.ended = 0.0
        self.cpu: dict[str, float] = {}

    async def run(self, store: Any, train_dataset: Any, val_dataset: Any = None) -> Any:
        deadline = time.monotonic() + READY_TIMEOUT
        while (await store.query_workers(limit=1)).total < self.ready_workers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {self.ready_workers} runners registered in {READY_TIMEOUT}s")
            await asyncio.sleep(0.01)
        before = cpu_by_group()
        self.started = time.perf_counter()
        report = await super().run(store, train_dataset, val_dataset)
        self.ended = time.perf_counter()
        after = cpu_by_group()
        self.cpu = {group: after[group] - before[group] for group in after}
        return report


def run_once(
    strategy: str, *, runners: int, tasks: list[Any], agent: str, ray_options: dict[str, Any] | None = None
) -> dict[str, float]:
    """One run on a fresh trainer and in-memory store; its timings."""
    from rich.console import Console

    from agl_kernel.trainer import Trainer

    ray_options = ray_options or {}
    per_actor = int(ray_options.get("runners_per_actor", 1))
    algorithm = TimedBaseline(ready_workers=runners * per_actor if strategy == "ray" else runners)
    options = {"strategy": ray_options} if strategy == "ray" else {}
    trainer = Trainer(
        algorithm=algorithm,
        n_runners=runners,
        store="memory",
        strategy=strategy,
        options=options,
        progress=False,
        console=Console(quiet=True),
    )
    the_agent: Any = {"noop": noop_agent, "sleep": sleeping_agent}[agent]
    if strategy != "shm":  # runner processes and actors import it from this file
        the_agent = f"{THIS}:{the_agent.__name__}"
    called = time.perf_counter()
    try:
        report = trainer.fit(the_agent, tasks)
    finally:
        returned = time.perf_counter()
        trainer.close()
    if report.by_status != {"succeeded": len(tasks)}:
        raise RuntimeError(f"expected {len(tasks)} succeeded rollouts; got {report.by_status}")
    seconds = algorithm.ended - algorithm.started
    cpu_ms = {f"cpu_ms_{group}": 1000.0 * used / len(tasks) for group, used in algorithm.cpu.items()}
    return {
        **cpu_ms,
        "seconds": seconds,
        "rollouts_per_s": len(tasks) / seconds,
        "startup_s": algorithm.started - called,
        "wall_s": returned - called,
    }


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def start_ray(cpus: int) -> None:
    import logging

    import ray

    ray.init(
        num_cpus=cpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        namespace="agl",
        logging_level=logging.WARNING,
        log_to_driver=False,
    )


def overhead(args: argparse.Namespace) -> dict[str, Any]:
    strategies = ["shm", "cs", "ray"]
    tasks = [{"i": i} for i in range(args.rollouts)]
    ray_options = {"num_cpus": 0.5}
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in strategies}
    for name in strategies:  # one unmeasured warm-up run each (imports, first connections)
        run_once(name, runners=args.runners, tasks=tasks[:20], agent="noop", ray_options=ray_options)
    for repeat in range(args.repeat):
        for name in strategies if repeat % 2 == 0 else strategies[::-1]:
            result = run_once(name, runners=args.runners, tasks=tasks, agent="noop", ray_options=ray_options)
            runs[name].append(result)
            print(f"  {name:4} run {repeat + 1}: {result['rollouts_per_s']:7.1f} rollouts/s", file=sys.stderr)
    medians = {name: median_of(results) for name, results in runs.items()}
    per_rollout_ms = {name: 1000.0 / m["rollouts_per_s"] for name, m in medians.items()}
    return {
        "runners": args.runners,
        "rollouts": args.rollouts,
        "repeat": args.repeat,
        "medians": medians,
        "per_rollout_ms": per_rollout_ms,
        "ray_minus_cs_ms": per_rollout_ms["ray"] - per_rollout_ms["cs"],
        "ray_minus_shm_ms": per_rollout_ms["ray"] - per_rollout_ms["shm"],
    }


def scale(args: argparse.Namespace) -> list[dict[str, Any]]:
    shapes = [(int(a), 1) for a in args.actors.split(",") if a]
    shapes += [tuple(int(x) for x in p.split("x")) for p in args.packed.split(",") if p]  # type: ignore[misc]
    rows = []
    for actors, per_actor in shapes:
        concurrency = actors * per_actor
        tasks = [{"sleep": args.sleep} for _ in range(concurrency * args.rounds)]
        options = {"num_cpus": 0.0, "runners_per_actor": per_actor, "start_timeout": READY_TIMEOUT}
        result = run_once("ray", runners=actors, tasks=tasks, agent="sleep", ray_options=options)
        ideal = concurrency / args.sleep
        row = {"actors": actors, "runners_per_actor": per_actor, "rollouts": len(tasks), "ideal_per_s": ideal}
        row.update(result)
        row["of_ideal"] = result["rollouts_per_s"] / ideal
        rows.append(row)
        print(
            f"  {actors:3} actors x {per_actor:2}: {result['rollouts_per_s']:7.1f} rollouts/s "
            f"(ideal {ideal:.0f}), start-up {result['startup_s']:.1f} s",
            file=sys.stderr,
        )
    return rows


def print_tables(report: dict[str, Any]) -> None:
    if "overhead" in report:
        o = report["overhead"]
        print(f"\nno-op agent, {o['runners']} runners, {o['rollouts']} rollouts a run, median of {o['repeat']}:")
        print(
            f"{'strategy':9} {'rollouts/s':>10} {'ms/rollout':>10} {'start-up s':>10}   CPU ms per rollout: "
            f"{'driver':>6} {'runners':>7} {'ray':>5}"
        )
        for name, m in o["medians"].items():
            ms = o["per_rollout_ms"][name]
            print(
                f"{name:9} {m['rollouts_per_s']:10.1f} {ms:10.2f} {m['startup_s']:10.2f}   {'':19} "
                f"{m['cpu_ms_driver']:6.2f} {m['cpu_ms_runners']:7.2f} {m['cpu_ms_ray']:5.2f}"
            )
        print(f"ray - cs: {o['ray_minus_cs_ms']:+.2f} ms/rollout; ray - shm: {o['ray_minus_shm_ms']:+.2f} ms/rollout")
    if "scale" in report:
        print(f"\nsimulated scale-out: agents sleeping {report['sleep']} s, {report['rounds']} rollouts per runner:")
        print(f"{'actors':>6} {'runners':>8} {'rollouts/s':>10} {'ideal':>7} {'of ideal':>8} {'start-up s':>10}")
        for row in report["scale"]:
            runners = row["actors"] * row["runners_per_actor"]
            print(
                f"{row['actors']:6} {runners:8} {row['rollouts_per_s']:10.1f} {row['ideal_per_s']:7.0f} "
                f"{row['of_ideal']:8.0%} {row['startup_s']:10.1f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["overhead", "scale", "both"], default="both")
    parser.add_argument("--runners", type=int, default=4, help="runners of every strategy in part 1 (default 4)")
    parser.add_argument("--rollouts", type=int, default=400, help="rollouts a run in part 1 (default 400)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per strategy in part 1; median reported")
    parser.add_argument("--actors", default="16,32,64", help="actor counts of part 2 (default 16,32,64)")
    parser.add_argument("--packed", default="64x4,64x16", help="part 2's AxR rows: A actors of R runners each")
    parser.add_argument("--sleep", type=float, default=1.0, help="seconds the part-2 agent sleeps (default 1)")
    parser.add_argument("--rounds", type=int, default=5, help="rollouts per runner in part 2 (default 5)")
    parser.add_argument("--cluster-cpus", type=int, default=4, help="logical CPUs of the local Ray cluster")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    import platform

    started = time.perf_counter()
    start_ray(args.cluster_cpus)
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "ray": __import__("ray").__version__}
    }
    try:
        if args.part in ("overhead", "both"):
            report["overhead"] = overhead(args)
        if args.part in ("scale", "both"):
            report.update(sleep=args.sleep, rounds=args.rounds, scale=scale(args))
    finally:
        import ray

        ray.shutdown()
    report["benchmark_s"] = time.perf_counter() - started
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_tables(report)
        print(f"\n({report['benchmark_s']:.0f} s; {report['machine']})")


if __name__ == "__main__":
    main()
