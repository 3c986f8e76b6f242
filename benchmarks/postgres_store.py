"""agl's ``postgres`` store beside agl's ``sqlite`` store and Agent Lightning 0.3.0's in-memory store, in one run.

    python benchmarks/postgres_store.py                    # 8 and 32 workers, 3 runs each, medians; wake-ups
    python benchmarks/postgres_store.py --workers 1,8,32 --rollouts 200 --repeat 3
    python benchmarks/postgres_store.py --dsn postgresql://agl:secret@db:5432/agl   # a server of yours instead
    python benchmarks/postgres_store.py --cpu --workers 8,32 --rollouts 1000 --repeat 3   # CPU per rollout

All three run ``_cycle.run_cycles`` (enqueue → dequeue → 10 spans → succeed, N asyncio workers in one process
sharing one store), each store with its default settings. Each run opens a fresh agl store and first runs
``--warmup`` untimed rollouts per worker on it (its connection pool fills up, as in a trainer's steady state;
Agent Lightning's in-memory store has nothing to warm, and its side process stays up between runs). Postgres: a
throw-away cluster (``initdb`` + ``pg_ctl``, as ``nobody`` when run as root, fsync on, on a free port of
127.0.0.1; plugins/agl-store-postgres/tests/_cluster.py) unless ``--dsn`` is given; every run gets a fresh schema.
SQLite: a fresh file per run in a temporary directory. Agent Lightning runs its ``InMemoryLightningStore`` in its
throw-away venv (``.bench/agentlightning-0.3.0``, made by compare_agentlightning.py's ``ensure_venv``) through
``_agentlightning_side.py``. Runs interleave, the order rotating on each repeat. agl's side calls the store exactly
as compare_agentlightning.py does (``store_cycle.AglOps``). The load average before each run is printed beside it
(the machine may be shared).

Wake-up latency: a dequeue waiting in one store (``timeout=10``) and an enqueue from another *process* on the same
schema (file), timed from just before the enqueue call to the waiter's return (the two processes' clocks are the
same machine's ``time.time()``); p50/p99 of ``--wakeups`` samples, for Postgres (LISTEN/NOTIFY) and SQLite (its
50 ms poll of the file).

``--cpu``: only agl's Postgres store, on the throw-away cluster: the CPU time one rollout costs the client process
(``time.process_time``: the workers, psycopg, the store's background thread) and the cluster's processes
(utime + stime of the postmaster and its children from /proc: backends, walwriter, ...), over ``--rollouts`` timed
rollouts on a warm store, with the commits, WAL records, WAL bytes and WAL flushes per rollout from the server's
statistics (each run waits 10 s after its warm-up, until the backends have published their statistics). CPU per
rollout depends less than throughput on what else runs on the machine, but still moves with it (a loaded machine
changes how many spans go in one batch): compare versions interleaved, in the same conditions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

BENCHMARKS_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCHMARKS_DIR.parent
sys.path.insert(0, str(BENCHMARKS_DIR))
sys.path.insert(0, str(REPO_ROOT / "plugins" / "agl-store-postgres" / "tests"))

from _cluster import USER, PostgresCluster  # noqa: E402
from _cycle import median_of, run_cycles  # noqa: E402
from compare_agentlightning import BenchError, SideProcess, ensure_venv  # noqa: E402
from store_cycle import AglOps  # noqa: E402

from agl_kernel.store.base import LightningStore  # noqa: E402
from agl_store_postgres import PostgresLightningStore  # noqa: E402
from agl_store_sqlite import SqliteLightningStore  # noqa: E402


def open_store(kind: str, target: str, name: str) -> LightningStore:
    if kind == "postgres":
        return PostgresLightningStore(target, schema=name)  # default settings: what users run
    return SqliteLightningStore(str(Path(target) / f"{name}.db"))


async def agl_run(kind: str, target: str, workers: int, rollouts: int, warmup: int) -> dict[str, float]:
    store = open_store(kind, target, "b" + uuid.uuid4().hex[:12])
    try:
        if warmup:
            await run_cycles(AglOps(store), workers=workers, rollouts=warmup * workers)
        return await run_cycles(AglOps(store), workers=workers, rollouts=rollouts)
    finally:
        await store.close()


ENQUEUER = """
import asyncio, sys, time
sys.path.insert(0, {benchmarks!r})
from postgres_store import open_store

async def main():
    store = open_store({kind!r}, {target!r}, {name!r})
    print("ready", flush=True)
    for line in sys.stdin:
        started = time.time()
        await store.enqueue_rollout("wake")
        print(started, flush=True)
    await store.close()

asyncio.run(main())
"""


async def wakeups(kind: str, target: str, samples: int) -> dict[str, float]:
    name = "w" + uuid.uuid4().hex[:12]
    waiter = open_store(kind, target, name)
    script = ENQUEUER.format(benchmarks=str(BENCHMARKS_DIR), kind=kind, target=target, name=name)
    other = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert other.stdin is not None and other.stdout is not None
    latencies = []
    try:
        if other.stdout.readline().strip() != "ready":
            raise BenchError("the enqueuing process did not start")
        for _ in range(samples):
            waiting = asyncio.create_task(waiter.dequeue_rollout(timeout=10))
            await asyncio.sleep(0.1)  # the waiter is asleep on its bell
            other.stdin.write("go\n")
            other.stdin.flush()
            got = await waiting
            woke = time.time()
            started = float(await asyncio.to_thread(other.stdout.readline))
            if got is None:
                raise BenchError("a waiting dequeue was not woken within 10 s")
            latencies.append(woke - started)
    finally:
        other.stdin.close()
        other.wait(30)
        await waiter.close()
    latencies.sort()
    return {
        "wakeup_p50_ms": 1000 * statistics.median(latencies),
        "wakeup_p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "samples": float(len(latencies)),
    }


def _ticks(pid: int) -> tuple[int, str] | None:
    """utime + stime of a process in clock ticks, and its command line."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            command = cmdline.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except (OSError, IndexError):
        return None
    return int(fields[11]) + int(fields[12]), command


def cluster_cpu(cluster: PostgresCluster) -> dict[int, tuple[int, str]]:
    """Ticks and command of the cluster's postmaster and of each of its children (pid → (ticks, command))."""
    postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if int(entry) == postmaster or parent == postmaster:
            ticks = _ticks(int(entry))
            if ticks is not None:
                found[int(entry)] = ticks
    return found


def _kind(command: str) -> str:
    """A cluster process's role from its title: ``backends`` (the clients' connections) or ``others`` (postmaster,
    walwriter, checkpointer, autovacuum, ...)."""
    return "backends" if command.removeprefix("postgres: ").startswith(USER + " ") else "others"


async def _server_counters(dsn: str) -> dict[str, float]:
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()), "
            "wal_records, wal_bytes, wal_sync FROM pg_stat_wal"
        )
        row = await cur.fetchone()
        assert row is not None
        return dict(zip(("commits", "wal_records", "wal_bytes", "wal_flushes"), map(float, row)))


async def cpu_run(cluster: PostgresCluster, workers: int, rollouts: int, warmup: int) -> dict[str, float]:
    """CPU seconds per rollout of the client and the cluster, over ``rollouts`` timed rollouts on a warm store."""
    dsn = cluster.dsn()
    store = open_store("postgres", dsn, "c" + uuid.uuid4().hex[:12])
    try:
        await run_cycles(AglOps(store), workers=workers, rollouts=max(warmup, 1) * workers)
        # A backend publishes its statistics at most once a second while busy, and 10 s after it went idle.
        await asyncio.sleep(10.5)
        counters = await _server_counters(dsn)
        before, client = cluster_cpu(cluster), time.process_time()
        result = await run_cycles(AglOps(store), workers=workers, rollouts=rollouts)
        client = time.process_time() - client
        after = cluster_cpu(cluster)
    finally:
        await store.close()  # its backends exit, publishing what they had not yet
    await asyncio.sleep(0.5)
    counters = {k: v - counters[k] for k, v in (await _server_counters(dsn)).items()}
    tick = os.sysconf("SC_CLK_TCK")
    report = {"rollouts_per_s": result["rollouts_per_s"], "client_ms": 1000 * client / rollouts}
    for pid, (ticks, command) in after.items():
        key = f"server_{_kind(command)}_ms"
        spent = ticks - before.get(pid, (0, ""))[0]
        report[key] = report.get(key, 0.0) + 1000 * spent / tick / rollouts
    report["server_ms"] = sum(v for k, v in report.items() if k.startswith("server_"))
    report["total_ms"] = report["client_ms"] + report["server_ms"]
    report.update({f"{k}_per_rollout": v / rollouts for k, v in counters.items()})
    return report


def cpu_main(args: argparse.Namespace, counts: list[int]) -> None:
    if args.dsn:
        raise SystemExit("--cpu measures the throw-away cluster's processes; it cannot be combined with --dsn")
    cluster = PostgresCluster(fsync=True)
    runs: dict[int, list[dict[str, float]]] = {w: [] for w in counts}
    loads = []
    try:
        for repeat in range(args.repeat):
            for workers in counts:
                loads.append(os.getloadavg()[0])
                result = asyncio.run(cpu_run(cluster, workers, args.rollouts, args.warmup))
                runs[workers].append(result)
                print(f"{workers} workers, run {repeat + 1}: client {result['client_ms']:.3f} ms + server "
                      f"{result['server_ms']:.3f} ms = {result['total_ms']:.3f} ms CPU per rollout "
                      f"({result['rollouts_per_s']:.1f} rollouts/s, load before {loads[-1]:.2f})",
                      file=sys.stderr, flush=True)  # fmt: skip
    finally:
        cluster.close()
    keys = sorted({k for w in counts for run in runs[w] for k in run})
    medians = {w: {k: statistics.median(run.get(k, 0.0) for run in runs[w]) for k in keys} for w in counts}
    if args.json:
        print(json.dumps({"cpu_per_rollout": medians, "load_average": {"min": min(loads), "max": max(loads)}}))
        return
    print(f"CPU per rollout (ms), Postgres store, {args.rollouts} rollouts per run on a warm store, median of "
          f"{args.repeat}; load average {min(loads):.2f}–{max(loads):.2f} on {os.cpu_count()} CPUs")  # fmt: skip
    print("| | " + " | ".join(f"{w} workers" for w in counts) + " |")
    print("| --- |" + " ---: |" * len(counts))
    for key in keys:
        digits = 0 if key == "wal_bytes_per_rollout" else 1 if key == "rollouts_per_s" else 3
        print(f"| {key} | " + " | ".join(f"{medians[w][key]:.{digits}f}" for w in counts) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="8,32")
    parser.add_argument("--rollouts", type=int, default=1000, help="rollouts per run (default 1000)")
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed rollouts per worker on each agl store first (default 2)"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--wakeups", type=int, default=100, help="samples of the wake-up latency (0: skip)")
    parser.add_argument("--dsn", default=None, help="a PostgreSQL database to use instead of a throw-away cluster")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--cpu", action="store_true", help="CPU per rollout of the Postgres store's client and server")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    if args.cpu:
        cpu_main(args, counts)
        return
    cluster = None if args.dsn else PostgresCluster(fsync=True)
    dsn = args.dsn or cluster.dsn()  # type: ignore[union-attr]
    folder = tempfile.TemporaryDirectory(prefix="agl-bench-sqlite-")
    side = SideProcess(ensure_venv(False))
    names = ("al", "postgres", "sqlite")
    runs: dict[str, dict[int, list[dict[str, float]]]] = {n: {w: [] for w in counts} for n in names}
    wake: dict[str, Any] = {}
    loads: list[float] = []
    try:
        for workers in counts:
            for repeat in range(args.repeat):
                order = names[repeat % 3 :] + names[: repeat % 3]
                for name in order:
                    loads.append(os.getloadavg()[0])
                    if name == "al":
                        result = side.run(workers=workers, rollouts=args.rollouts)
                    else:
                        target = dsn if name == "postgres" else folder.name
                        result = asyncio.run(agl_run(name, target, workers, args.rollouts, args.warmup))
                    runs[name][workers].append(result)
                    print(f"{workers} workers, run {repeat + 1}, {name}: {result['rollouts_per_s']:.2f} rollouts/s "
                          f"(load before: {loads[-1]:.2f})", file=sys.stderr, flush=True)  # fmt: skip
        if args.wakeups:
            loads.append(os.getloadavg()[0])
            wake["postgres"] = asyncio.run(wakeups("postgres", dsn, args.wakeups))
            wake["sqlite"] = asyncio.run(wakeups("sqlite", folder.name, args.wakeups))
    finally:
        side.close()
        folder.cleanup()
        if cluster is not None:
            cluster.close()
    medians = {name: {w: median_of(runs[name][w]) for w in counts} for name in runs}
    report: dict[str, Any] = {
        "server": "a throw-away PostgreSQL 15 cluster (fsync on)" if cluster else "the given --dsn",
        "rollouts": args.rollouts,
        "repeat": args.repeat,
        "agentlightning": {"version": side.version, "results": medians["al"]},
        "postgres": medians["postgres"],
        "sqlite": medians["sqlite"],
        "wakeup": wake,
        "load_average": {"min": min(loads), "max": max(loads)},
    }
    if args.json:
        print(json.dumps(report))
        return
    print(f"Full cycle, {args.rollouts} rollouts per run, median of {args.repeat}; Postgres on {report['server']}; "
          f"load average {min(loads):.2f}–{max(loads):.2f} on {os.cpu_count()} CPUs")  # fmt: skip
    print("| workers | AGL 0.3.0 in-memory rollouts/s | agl postgres rollouts/s | agl sqlite rollouts/s | "
          "postgres / AGL | postgres deq p99 ms |")  # fmt: skip
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for w in counts:
        a, p, s = medians["al"][w], medians["postgres"][w], medians["sqlite"][w]
        print(f"| {w} | {a['rollouts_per_s']:.2f} | {p['rollouts_per_s']:.2f} | {s['rollouts_per_s']:.2f} | "
              f"{p['rollouts_per_s'] / a['rollouts_per_s']:.2f}× | {p['dequeue_p99_ms']:.0f} |")  # fmt: skip
    for kind, w in wake.items():
        print(f"wake-up, {kind} (enqueue in another process → waiting dequeue): p50 {w['wakeup_p50_ms']:.1f} ms, "
              f"p99 {w['wakeup_p99_ms']:.1f} ms over {w['samples']:.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
