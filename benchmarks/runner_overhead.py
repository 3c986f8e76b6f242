"""Per-rollout overhead of the runner loop: agl's ``shm`` and ``cs`` strategies against Agent Lightning 0.3.0's.

    python benchmarks/runner_overhead.py
    python benchmarks/runner_overhead.py --rollouts 500 --cs-rollouts 200 --runners 1,8 --repeat 3
    python benchmarks/runner_overhead.py --strategies shm --agl-stores memory --json

The agent does nothing: it returns the reward 1.0 at once. What is measured is the whole loop around it, in
rollouts/s: the algorithm enqueues N tasks at once → runners dequeue, fetch the rollout's resources, run the
agent, store the reward span, mark the attempt succeeded → the algorithm sees every rollout end and reads its
reward. Both sides publish one resource first (a prompt template), because Agent Lightning's runner skips a
rollout that has none. The timed window opens when every runner has polled the store once (so runner start-up,
and the server's, is outside it) and closes when the algorithm has every reward; start-up and the whole call are
reported too (``--json``). A fresh trainer and store are made for every run, on both sides.

agl (this interpreter): ``Trainer(algorithm=TimedBaseline(...), n_runners=R, strategy="shm"|"cs", store="memory"
| "sqlite" (store_path in a fresh temp dir), initial_resources={"prompt": PromptTemplate("{task}")},
progress=False).fit(agent, tasks)``. ``TimedBaseline`` is the kernel's ``Baseline`` (what ``Trainer.dev`` runs:
``enqueue_many_rollouts`` of every task, ``wait_for_rollouts``, each rollout's final reward) with the clock and
the wait for runners around it. ``shm``: R runners as asyncio tasks of this process; ``cs``: the store server in
this process and R ``agl runner`` processes (one runner each) talking HTTP to it, the agent given to them as
``benchmarks/runner_overhead.py:noop_agent``. The agent is ``@rollout def noop_agent(task, resources):
return 1.0`` (``--agent async``: the same as ``async def``); the tracer is agl's default, ``noop``.

Agent Lightning 0.3.0 (``.bench/agentlightning-0.3.0/bin/python benchmarks/_agentlightning_runner_side.py
--serve``; its docstring has the details): ``Trainer(n_runners=R, strategy=..., runner=LitAgentRunner(tracer,
poll_interval=P, interval_jitter=0), algorithm=EnqueueAllAndWait(...), initial_resources=...).dev(agent, tasks)``
on its default ``InMemoryLightningStore``; ``shm`` = ``SharedMemoryExecutionStrategy(main_thread="algorithm")``
(runner threads), ``cs`` = ``ClientServerExecutionStrategy`` (forked runner processes, HTTP to its store server).
``EnqueueAllAndWait`` does the work of agl's ``Baseline`` (its own ``Baseline`` sleeps 5 s between polls). Its
runner sleeps P = ``--agentlightning-poll-interval`` (0.1 s; its own default, 5 s, would start every run with up
to 5.5 s of idle runners) when it finds the queue empty.

Runs are interleaved: for each runner count and repeat every configuration runs once, the order flipping on odd
repeats; each configuration first does one unmeasured warm-up run (``--warmup`` rollouts). The table gives the
median of ``--repeat`` runs. Agent Lightning stays in one long-lived subprocess (its import takes ~15 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

BENCHMARKS_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCHMARKS_DIR.parent
sys.path.insert(0, str(BENCHMARKS_DIR))

from _cycle import median_of  # noqa: E402
from compare_agentlightning import VENV_DIR, BenchError, SideProcess, ensure_venv  # noqa: E402

from agl_kernel.agent import rollout  # noqa: E402
from agl_kernel.algorithm import Baseline  # noqa: E402

SIDE_SCRIPT = BENCHMARKS_DIR / "_agentlightning_runner_side.py"
READY_TIMEOUT = 60.0
LOG = REPO_ROOT / ".bench" / "runner-overhead-stderr.log"


@rollout
def noop_agent(task: Any, resources: Any) -> float:
    return 1.0


@rollout
async def noop_agent_async(task: Any, resources: Any) -> float:
    return 1.0


class TimedBaseline(Baseline):
    """The kernel's Baseline, timed from when ``ready_workers`` runners have reported to the store."""

    def __init__(self, ready_workers: int) -> None:
        super().__init__()
        self.ready_workers = ready_workers
        self.started = self.ended = 0.0

    async def run(self, store: Any, train_dataset: Any, val_dataset: Any = None) -> Any:
        deadline = time.monotonic() + READY_TIMEOUT
        while (await store.query_workers(limit=1)).total < self.ready_workers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {self.ready_workers} runners reported in {READY_TIMEOUT}s")
            await asyncio.sleep(0.01)
        self.started = time.perf_counter()
        report = await super().run(store, train_dataset, val_dataset)
        self.ended = time.perf_counter()
        return report


def run_agl(strategy: str, store: str, runners: int, rollouts: int, agent: str) -> dict[str, float]:
    """One agl run on a fresh trainer and store; see the module docstring."""
    from rich.console import Console

    from agl_kernel.models import PromptTemplate
    from agl_kernel.strategy import ClientServerStrategy, SharedMemoryStrategy
    from agl_kernel.trainer import Trainer

    algorithm = TimedBaseline(ready_workers=runners)
    with tempfile.TemporaryDirectory(prefix="agl-runner-bench-") as scratch:
        trainer = Trainer(
            algorithm=algorithm,
            n_runners=runners,
            store=store,
            store_path=os.path.join(scratch, "bench.db") if store == "sqlite" else None,
            # by class rather than by its entry-point name, which an install made before "cs" existed lacks
            strategy={"shm": SharedMemoryStrategy, "cs": ClientServerStrategy}[strategy],
            initial_resources={"prompt": PromptTemplate(template="{task}")},
            progress=False,
            console=Console(quiet=True),
        )
        the_agent: Any = noop_agent if agent == "sync" else noop_agent_async
        if strategy == "cs":  # the runner processes import it from this file
            the_agent = f"{Path(__file__).resolve()}:{the_agent.__name__}"
        called = time.perf_counter()
        try:
            report = trainer.fit(the_agent, [{"task": index} for index in range(rollouts)])
        finally:
            returned = time.perf_counter()
            trainer.close()
    rewarded = sum(outcome.reward == 1.0 for outcome in report.outcomes)
    if report.by_status != {"succeeded": rollouts} or rewarded != rollouts:
        raise RuntimeError(
            f"expected {rollouts} succeeded rollouts with reward 1.0; got {report.by_status}, {rewarded} rewards of 1.0"
        )
    seconds = algorithm.ended - algorithm.started
    return {
        "seconds": seconds,
        "rollouts_per_s": rollouts / seconds,
        "startup_s": algorithm.started - called,
        "shutdown_s": returned - algorithm.ended,
        "wall_s": returned - called,
    }


def cs_unavailable() -> str | None:
    """Why agl's ``cs`` strategy cannot run here (no store server or no HTTP client yet), or None."""
    try:
        from agl_kernel.plugins import load_component
        from agl_kernel.server import running_server  # noqa: F401

        load_component("stores", "http")  # what the runner processes connect with
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None


# ---------------------------------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runners", default="1,8", help="comma-separated runner counts (default 1,8)")
    parser.add_argument("--strategies", default="shm,cs", help="comma-separated: shm, cs (default both)")
    parser.add_argument("--agl-stores", default="memory,sqlite", help="agl stores (default memory,sqlite)")
    parser.add_argument("--rollouts", type=int, default=1000, help="rollouts per run (default 1000)")
    parser.add_argument("--cs-rollouts", type=int, default=None, help="rollouts per cs run (default: --rollouts)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration; median reported")
    parser.add_argument("--warmup", type=int, default=50, help="rollouts of the unmeasured warm-up run (0: none)")
    parser.add_argument("--agent", choices=("sync", "async"), default="sync", help="a def or async def agent")
    al_tracer_help = "AGL's tracer: noop records nothing, like agl's default (default); otel: its OtelTracer"
    parser.add_argument("--agentlightning-tracer", choices=("noop", "otel"), default="noop", help=al_tracer_help)
    al_poll_help = "seconds AGL's runner sleeps on an empty queue (default 0.1; its own default is 5)"
    parser.add_argument("--agentlightning-poll-interval", type=float, default=0.1, help=al_poll_help)
    parser.add_argument("--no-agentlightning", action="store_true", help="run agl only")
    parser.add_argument("--reinstall", action="store_true", help="make the throw-away venv anew")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()

    def split(text: str) -> list[str]:
        return [part.strip() for part in text.split(",") if part.strip()]

    try:
        args.runner_counts = [int(r) for r in split(args.runners)]
    except ValueError:
        parser.error(f"--runners takes comma-separated integers, not {args.runners!r}")
    args.strategy_list = split(args.strategies)
    args.stores = split(args.agl_stores)
    if not args.runner_counts or min(args.runner_counts) < 1:
        parser.error("--runners needs at least one count, each at least 1")
    if not args.strategy_list or set(args.strategy_list) - {"shm", "cs"}:
        parser.error("--strategies takes shm and/or cs")
    args.cs_rollouts = args.cs_rollouts or args.rollouts
    if min(args.rollouts, args.cs_rollouts, args.repeat) < 1 or args.warmup < 0:
        parser.error("--rollouts, --cs-rollouts and --repeat must be at least 1, --warmup at least 0")
    return args


def benchmark(args: argparse.Namespace, err: Any) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    skipped: dict[str, str] = {}
    if "cs" in args.strategy_list and (why := cs_unavailable()):
        skipped["cs"] = why
        err.print(f"[yellow]Skipping agl's cs strategy: {why}. Agent Lightning's cs still runs.[/]")
    configs = []  # (side, strategy, store): side "agentlightning" or "agl"
    for strategy in args.strategy_list:
        if not args.no_agentlightning:
            configs.append(("agentlightning", strategy, "InMemoryLightningStore"))
        if strategy not in skipped:
            configs.extend(("agl", strategy, store) for store in args.stores)
    al: SideProcess | None = None
    if not args.no_agentlightning:
        python = ensure_venv(args.reinstall)
        with err.status("Starting Agent Lightning (its import takes ~15 s) ..."):
            al = SideProcess(python, SIDE_SCRIPT, VENV_DIR / "runner-side-stderr.log")

    def one_run(config: tuple[str, str, str], runners: int, rollouts: int) -> dict[str, float]:
        side, strategy, store = config
        if side == "agl":
            return run_agl(strategy, store, runners, rollouts, args.agent)
        assert al is not None
        return al.run(
            strategy=strategy,
            runners=runners,
            rollouts=rollouts,
            agent=args.agent,
            tracer=args.agentlightning_tracer,
            poll_interval=args.agentlightning_poll_interval,
        )

    def label(config: tuple[str, str, str]) -> str:
        side, strategy, store = config
        return f"AGL {al.version if al else ''} {strategy}" if side == "agentlightning" else f"agl {strategy} {store}"

    runs: dict[str, dict[int, list[dict[str, float]]]] = {
        label(c): {r: [] for r in args.runner_counts} for c in configs
    }
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    failed: dict[str, str] = {}  # a configuration that raised once is not run again; the others go on

    def attempt(config: tuple[str, str, str], runners: int, rollouts: int, keep: bool = True) -> None:
        name = label(config)
        try:
            result = one_run(config, runners, rollouts)
        except Exception as error:
            traceback.print_exc()
            failed[name] = f"{type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error) else ''}"
            err.print(f"[red]{name} failed ({runners} runners): {failed[name]}; traceback in {LOG}[/]")
            return
        if keep:
            runs[name][runners].append(result)

    try:
        with progress:
            task = progress.add_task("warm-up", total=len(configs) * (len(args.runner_counts) * args.repeat + 1))
            for config in configs:
                if args.warmup:
                    progress.update(task, description=f"warm-up: {label(config)}")
                    attempt(config, 1, args.warmup, keep=False)
                progress.advance(task)
            for runners in args.runner_counts:
                for repeat in range(args.repeat):
                    for config in configs if repeat % 2 == 0 else configs[::-1]:
                        rollouts = args.cs_rollouts if config[1] == "cs" else args.rollouts
                        progress.update(task, description=f"{runners} runner(s), run {repeat + 1}: {label(config)}")
                        if label(config) not in failed:
                            attempt(config, runners, rollouts)
                        progress.advance(task)
    finally:
        if al is not None:
            al.close()
    return {
        "rollouts": {"shm": args.rollouts, "cs": args.cs_rollouts},
        "runner_counts": args.runner_counts,
        "repeat": args.repeat,
        "warmup": args.warmup,
        "agent": args.agent,
        "python": sys.version.split()[0],
        "agentlightning": al
        and {
            "version": al.version,
            "python": al.python,
            "tracer": args.agentlightning_tracer,
            "poll_interval": args.agentlightning_poll_interval,
            "stderr_log": str(al.log),
        },
        "skipped": skipped,
        "failed": failed,
        "configs": [{"name": label(c), "side": c[0], "strategy": c[1], "store": c[2]} for c in configs],
        "results": {
            name: {r: median_of(rs) for r, rs in by_runners.items() if rs} for name, by_runners in runs.items()
        },
        "runs": runs,
    }


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    al, results, configs = report["agentlightning"], report["results"], report["configs"]
    rollouts = report["rollouts"]
    counts = f"{rollouts['shm']} rollouts per run" + (
        f" ({rollouts['cs']} for cs)" if rollouts["cs"] != rollouts["shm"] else ""
    )
    about_al = "not run"
    if al:
        about_al = f"Agent Lightning {al['version']} (InMemoryLightningStore, tracer {al['tracer']}, "
        about_al += f"poll_interval {al['poll_interval']} s, Python {al['python']})"
    table = Table(
        title=f"Runner loop, no-op {report['agent']} agent: rollouts/s, {counts}, median of {report['repeat']}",
        caption=f"AGL = {about_al}; agl on Python {report['python']}. ×AGL = agl's rollouts/s over AGL's, same "
        "strategy and runners. Start-up (outside the rate): median seconds from the call to the first enqueue.",
    )
    stores = list(dict.fromkeys(c["store"] for c in configs if c["side"] == "agl"))
    table.add_column("strategy")
    table.add_column("runners", justify="right")
    if al:
        table.add_column(f"AGL {al['version']}", justify="right")
    for store in stores:
        table.add_column(f"agl {store}", justify="right")
        if al:
            table.add_column("×AGL", justify="right", style="bold")
    table.add_column(
        "start-up s\n" + " / ".join((["AGL"] if al else []) + [f"agl {s}" for s in stores]), justify="right"
    )

    def missing(name: str | None) -> str:
        return "failed" if name in report["failed"] else "skipped"

    for strategy in dict.fromkeys(c["strategy"] for c in configs):
        al_name = next((c["name"] for c in configs if c["side"] != "agl" and c["strategy"] == strategy), None)
        for runners in report["runner_counts"]:
            base = results.get(al_name, {}).get(runners)
            row = [strategy, str(runners)] + (
                [f"{base['rollouts_per_s']:,.0f}" if base else missing(al_name)] if al else []
            )
            startups = [f"{base['startup_s']:.2f}" if base else "-"] if al else []
            for store in stores:
                mine = results.get(f"agl {strategy} {store}", {}).get(runners)
                row.append(f"{mine['rollouts_per_s']:,.0f}" if mine else missing(f"agl {strategy} {store}"))
                if al:
                    row.append(f"{mine['rollouts_per_s'] / base['rollouts_per_s']:,.1f}×" if mine and base else "-")
                startups.append(f"{mine['startup_s']:.2f}" if mine else "-")
            table.add_row(*row, " / ".join(startups))
    out = Console()
    needed = out.measure(table, options=out.options.update_width(1000)).maximum
    if needed > out.width:  # print whole numbers rather than cut them to fit a narrow (or piped, 80) width
        out = Console(width=needed)
    out.print(table)
    for strategy, why in report["skipped"].items():
        out.print(f"agl {strategy}: skipped — {why}")
    for name, why in report["failed"].items():
        out.print(f"{name}: failed — {why}")


def main() -> None:
    args = parse_args()
    from rich.console import Console
    from rich.markup import escape

    # agl's runner processes (cs) inherit stderr: send fd 2 to a log while the benchmark runs, so that what they
    # print does not break the progress bar, which keeps the real stderr.
    err = Console(file=os.fdopen(os.dup(2), "w"))
    LOG.parent.mkdir(parents=True, exist_ok=True)
    saved = os.dup(2)
    try:
        with open(LOG, "w") as log:
            sys.stderr.flush()
            os.dup2(log.fileno(), 2)
            try:
                report = benchmark(args, err)
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
    except BenchError as error:
        err.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    with open(LOG, errors="replace") as log:
        lines = sum(1 for line in log if line.strip())
    if lines:
        err.print(f"[yellow]agl's side wrote {lines} lines to stderr (runner processes, warnings): {LOG}[/]")
    if report["agentlightning"]:
        err.print(f"[dim]Agent Lightning's stderr: {report['agentlightning']['stderr_log']}[/]")


if __name__ == "__main__":
    main()
