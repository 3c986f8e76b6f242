"""Asynchronous GRPO on the main job (``contrib/recipes/grpo_calculator.py``): wall time to reach the synchronous
run's validation reward, synchronous vs asynchronous, several seeds, two figures.

    python benchmarks/grpo_async.py                         # figures a and b, seeds 0 1 2 (about 20 minutes)
    python benchmarks/grpo_async.py --figure b --max-staleness 2
    python benchmarks/grpo_async.py --figure b --tool-seconds 1-2 2-4 4-8  # figure b at three tool latencies
    python benchmarks/grpo_async.py --quick                 # the tiny random model, 2 steps (a smoke test)
    python benchmarks/grpo_async.py --from-json a.json b.json --plot all.png  # earlier runs, tables and plot

- **a**: the main job as it is (``make demo``): on a 2-core CPU the rollouts (the model server decoding) and the
  update compete for the same cores, so overlapping them gains only what either leaves idle.
- **b**: the same job with an agent that waits on its environment, as real agents do: the calculator takes
  ``--tool-seconds`` (1-2 s, uniform) in each rollout; asynchronous GRPO keeps the update going meanwhile. Given
  several latencies, figure b is made at each, and the plot's last panel shows the ratio against the latency.

Both modes get the same fixed pool of ``--runners`` agents (default 12: half of a step's 4 x 6 rollouts, so with the
1-2 s wait of figure b a step's rollouts take two waves, most of it waiting): synchronously the runners sit idle
while the policy updates; asynchronously (``--max-staleness`` K) they go on with the next K steps' rollouts.
(``--runners 0``: the recipe's own default, one step's rollouts at once, x (K + 1) when asynchronous.) For each seed
the two modes run one after the other, each as its own process with no checkpoint, validating every ``--val-every``
steps; the order alternates from seed to seed (sync first on even seeds) so a drift in the machine's load hits
both modes; ``uptime`` is recorded before and after each run.
The *target* is the synchronous run's last validation reward; each run's *time to target* is the wall time (since
the run started: ``run_time_s``) at the end of its first validation that reached it. The asynchronous run may go
``--extra-steps`` further to reach it (its time then counts them; ``-`` if it never does). Also shown: the time of
the ``--steps`` training steps, the final validation reward, and the share of the machine's cores each run kept busy
(its CPU time over its wall time). Both modes do the same work, so the synchronous run's share is a floor under
async / sync: the asynchronous run with every core busy all the time. Medians over the seeds; the load average
before each run is printed (the machine is shared: quiet is best). ``--plot`` draws validation reward against wall
time, and with several tool latencies a last panel of async / sync against the latency, with that floor.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "contrib" / "recipes" / "grpo_calculator.py"


def run_job(
    args: argparse.Namespace, work: Path, figure: str, tool: str | None, seed: int, staleness: int
) -> dict[str, Any]:
    """One run of the main job in its own process (``tool``: the calculator's latency, figure b); its report, wall
    time and the load before it."""
    name = f"{figure}{tool or ''}-seed{seed}-k{staleness}"
    steps = args.steps + (args.extra_steps if staleness else 0)
    command = [
        sys.executable,
        str(RECIPE),
        "--seed", str(seed),
        "--steps", str(steps),
        "--val-every", str(args.val_every),
        "--max-staleness", str(staleness),
        "--no-checkpoint",
        "--path", str(work / f"{name}.db"),
        "--report-json", str(work / f"{name}.json"),
    ]  # fmt: skip
    if args.runners:
        command += ["--runners", str(args.runners)]
    if args.val_temperature is not None:
        command += ["--val-temperature", str(args.val_temperature)]
    if args.max_batch is not None:
        command += ["--max-batch", str(args.max_batch)]
    if tool is not None:
        command += ["--tool-seconds", tool]
    if args.quick:
        command += ["--tiny"]
    load = os.getloadavg()[0]
    uptime_before = uptime()
    cpu_before = cpu_seconds()
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, cwd=work, check=False)
    process_s = time.monotonic() - started
    cpu_s = cpu_seconds() - cpu_before
    uptime_after = uptime()
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    result = json.loads((work / f"{name}.json").read_text())
    return {
        "figure": figure,
        "tool_seconds": tool,
        "seed": seed,
        "max_staleness": staleness,
        "runners": args.runners or None,
        "val_temperature": args.val_temperature,
        "max_batch": args.max_batch,
        "load": load,
        "uptime_before": uptime_before,
        "uptime_after": uptime_after,
        "process_s": process_s,
        "cpu_s": cpu_s,
        "cores": os.cpu_count(),
        "history": result["report"]["history"],
        "validations": result["report"]["validations"],
    }


def cpu_seconds() -> float:
    """CPU time (user + system, every core) of this process's children that have ended: a run's is the difference
    around it."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def busy(run: dict[str, Any]) -> float | None:
    """The share of the machine's cores the run kept busy, from its start to its end (model loading included)."""
    if "cpu_s" not in run:  # runs saved before the CPU time was recorded
        return None
    return float(run["cpu_s"]) / (float(run["process_s"]) * run["cores"])


def uptime() -> str:
    """The machine's ``uptime`` line (its load averages), as recorded next to each run."""
    done = subprocess.run(["uptime"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def time_to(run: dict[str, Any], target: float) -> float | None:
    """The wall time at the end of the run's first validation whose reward reached ``target``."""
    for validation in run["validations"]:
        if validation["val_reward_mean"] >= target - 1e-9:
            return float(validation["run_time_s"])
    return None


def per_step(run: dict[str, Any], steps: int) -> tuple[float, float]:
    """Medians over the first ``steps`` steps: the wait for the step's rollouts, and the update."""
    history = run["history"][:steps]
    return (
        statistics.median(h["rollout_time_s"] for h in history),
        statistics.median(h["update_time_s"] for h in history),
    )


def steps_time(run: dict[str, Any], steps: int) -> float:
    return float(run["history"][steps - 1]["run_time_s"])


def title_of(tool: str | None) -> str:
    """Figure a (no tool latency) or figure b at ``tool`` seconds."""
    return "a: the main job as it is" if tool is None else f"b: the calculator takes {tool} s"


def summarize(
    figure: str, tool: str | None, runs: list[dict[str, Any]], args: argparse.Namespace, console: Console
) -> dict[str, Any]:
    title = title_of(tool)
    pool = f"{args.runners} runners in both modes" if args.runners else "the recipe's default runners"
    table = Table(title=f"{title} (max_staleness {args.max_staleness} vs synchronous, {pool}; 2-core CPU)")
    for column in (
        "seed",
        "target (sync final val)",
        "sync: time to target s",
        "async: time to target s",
        "async / sync",
        f"sync: {args.steps} steps s",
        f"async: {args.steps} steps s",
        "async final val",
        "step: rollout wait / update s (sync; async)",
        "cores busy (sync, async)",
        "load before (sync, async)",
    ):
        table.add_column(column, justify="right")
    ratios, step_ratios, rows = [], [], []
    for seed in args.seeds:
        sync = next(r for r in runs if r["seed"] == seed and r["max_staleness"] == 0)
        fast = next(r for r in runs if r["seed"] == seed and r["max_staleness"] > 0)
        target = sync["validations"][-1]["val_reward_mean"]
        t_sync, t_async = time_to(sync, target), time_to(fast, target)
        ratio = None if t_sync is None or t_async is None else t_async / t_sync
        s_sync, s_async = steps_time(sync, args.steps), steps_time(fast, args.steps)
        (w_sync, u_sync), (w_async, u_async) = per_step(sync, args.steps), per_step(fast, args.steps)
        if ratio is not None:
            ratios.append(ratio)
        step_ratios.append(s_async / s_sync)
        row = {
            "seed": seed,
            "target": target,
            "sync_time_to_target_s": t_sync,
            "async_time_to_target_s": t_async,
            "ratio": ratio,
            "sync_steps_s": s_sync,
            "async_steps_s": s_async,
            "async_final_val": fast["validations"][-1]["val_reward_mean"],
            "step_rollout_wait_update_s": {"sync": [w_sync, u_sync], "async": [w_async, u_async]},
            "rollouts_failed": [
                sum(h["rollouts_failed"] for h in sync["history"]),
                sum(h["rollouts_failed"] for h in fast["history"]),
            ],
            "async_stale_dropped": sum(h.get("stale_dropped", 0) for h in fast["history"]),
            "cores_busy": [busy(sync), busy(fast)],
            "load": [sync["load"], fast["load"]],
        }
        rows.append(row)
        table.add_row(
            str(seed),
            f"{target:.3f}",
            f"{t_sync:.0f}" if t_sync is not None else "-",
            f"{t_async:.0f}" if t_async is not None else "not reached",
            f"{ratio:.2f}" if ratio is not None else "-",
            f"{s_sync:.0f}",
            f"{s_async:.0f}",
            f"{row['async_final_val']:.3f}",
            f"{w_sync:.1f} / {u_sync:.1f}; {w_async:.1f} / {u_async:.1f}",
            ", ".join("-" if b is None else f"{b:.0%}" for b in row["cores_busy"]),
            f"{sync['load']:.1f}, {fast['load']:.1f}",
        )
    median = statistics.median(ratios) if len(ratios) == len(args.seeds) else None
    table.add_row(
        "median",
        "",
        "",
        "",
        f"{median:.2f}" if median is not None else f"- ({len(args.seeds) - len(ratios)} not reached)",
        "",
        f"x{statistics.median(step_ratios):.2f}",
        "",
        "",
        "",
        "",
    )
    console.print(table)
    steps_ratio = statistics.median(step_ratios)
    return {
        "figure": figure,
        "tool_seconds": tool,
        "rows": rows,
        "median_ratio": median,
        "median_steps_ratio": steps_ratio,
    }


def plot(
    runs: list[dict[str, Any]],
    variants: list[tuple[str, str | None]],
    summaries: list[dict[str, Any]],
    path: Path,
    args: argparse.Namespace,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latencies = [s for s in summaries if s["tool_seconds"] is not None]
    panels = len(variants) + (len(latencies) > 1)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    for axis, (figure, tool) in zip(axes[0], variants):
        for run in (r for r in runs if r["figure"] == figure and r["tool_seconds"] == tool):
            color = colors[args.seeds.index(run["seed"]) % len(colors)]
            times = [v["run_time_s"] for v in run["validations"]]
            rewards = [v["val_reward_mean"] for v in run["validations"]]
            style = "--" if run["max_staleness"] else "-"
            label = f"seed {run['seed']} " + (f"async k={run['max_staleness']}" if run["max_staleness"] else "sync")
            axis.plot(times, rewards, style, marker="o", color=color, label=label)
        axis.set_title(title_of(tool), fontsize=10)
        axis.set_xlabel("wall time (s), 2-core CPU")
        axis.set_ylabel("validation reward")
        axis.legend(fontsize=7)
    if len(latencies) > 1:  # the ratio against the tool's latency: each seed's, and the median
        axis = axes[0][-1]
        mids = [statistics.mean(float(x) for x in s["tool_seconds"].split("-")) for s in latencies]
        for summary, mid in zip(latencies, mids):
            ratios = [row["ratio"] for row in summary["rows"] if row["ratio"] is not None]
            axis.scatter([mid] * len(ratios), ratios, color="tab:gray", s=14)
        medians = [(mid, s["median_ratio"]) for mid, s in zip(mids, latencies) if s["median_ratio"] is not None]
        if medians:
            axis.plot(*zip(*medians), "o-", color="tab:blue", label="time to target, median over seeds")
        steps = [s["median_steps_ratio"] for s in latencies]
        axis.plot(mids, steps, "s--", color="tab:green", label=f"time of {args.steps} steps, median")
        floors = [  # async doing the sync run's CPU work with every core busy: the sync run's busy share
            (mid, statistics.median(row["cores_busy"][0] for row in s["rows"]))
            for mid, s in zip(mids, latencies)
            if all(row.get("cores_busy", [None])[0] is not None for row in s["rows"])
        ]
        if floors:
            axis.plot(*zip(*floors), "v:", color="tab:gray", label="floor: sync's share of the cores busy")
        axis.axhline(0.6, color="tab:red", linestyle=":", label="0.6")
        axis.set_xticks(mids, [s["tool_seconds"] for s in latencies])
        axis.set_xlabel("the calculator's latency (s, uniform)")
        axis.set_ylabel("async / sync")
        axis.set_title(f"b: max_staleness {args.max_staleness}", fontsize=10)
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--figure", choices=["a", "b", "both"], default="both")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-staleness", type=int, default=1, help="K of the asynchronous runs")
    parser.add_argument("--steps", type=int, default=12, help="the synchronous run's steps (the main job's)")
    parser.add_argument("--extra-steps", type=int, default=3, help="further steps the asynchronous run may take")
    parser.add_argument("--val-every", type=int, default=3)
    parser.add_argument(
        "--val-temperature",
        type=float,
        default=None,
        help="validation's sampling temperature (0: greedy, each validation measures the policy, not one draw)",
    )
    parser.add_argument(
        "--runners",
        type=int,
        default=12,
        help="agents in both modes (default 12, half a step's rollouts); 0: the recipe's default per mode",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=None,
        help="rows the model server decodes together at most, in both modes (default: the recipe's, one step's)",
    )
    parser.add_argument(
        "--tool-seconds",
        nargs="+",
        default=["1-2"],
        help="figure b: the calculator's latency, LO-HI seconds (several: figure b at each)",
    )
    parser.add_argument("--plot", default=None, help="write a PNG of validation reward vs wall time here")
    parser.add_argument("--json", default=None, help="write every run's numbers here")
    parser.add_argument("--quick", action="store_true", help="the tiny random model, 2 steps, one seed")
    parser.add_argument(
        "--from-json",
        nargs="+",
        default=None,
        metavar="FILE",
        help="run nothing: the tables and the plot from earlier runs' --json files (together, in the order given)",
    )
    args = parser.parse_args()
    if args.from_json:
        return replot(args)
    if args.quick:
        args.seeds, args.steps, args.extra_steps, args.val_every, args.tool_seconds = [0], 2, 1, 1, ["0.1-0.2"]
    if args.runners < 0:
        parser.error("--runners must be 0 (the recipe's default) or more")
    if args.max_staleness < 1:
        parser.error("--max-staleness must be 1 or more (the synchronous run is always made)")
    console = Console(width=200)
    variants: list[tuple[str, str | None]] = [("a", None)] if args.figure in ("a", "both") else []
    if args.figure in ("b", "both"):
        variants += [("b", tool) for tool in args.tool_seconds]
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="agl-grpo-async-") as tmp:
        work = Path(tmp)
        for figure, tool in variants:
            for index, seed in enumerate(args.seeds):
                order = (0, args.max_staleness) if index % 2 == 0 else (args.max_staleness, 0)
                for staleness in order:
                    run = run_job(args, work, figure, tool, seed, staleness)
                    runs.append(run)
                    last = run["validations"][-1]
                    console.print(
                        f"{title_of(tool)}, seed {seed}, max_staleness {staleness}: "
                        f"{len(run['history'])} steps, "
                        f"final validation {last['val_reward_mean']:.3f} at {last['run_time_s']:.0f} s "
                        f"({run['process_s']:.0f} s in all; before: {run['uptime_before']}; "
                        f"after: {run['uptime_after']})"
                    )
    report(runs, variants, args, console)


def report(
    runs: list[dict[str, Any]], variants: list[tuple[str, str | None]], args: argparse.Namespace, console: Console
) -> None:
    """A table per figure (and tool latency), then ``--plot`` and ``--json``."""
    summaries = []
    for figure, tool in variants:
        mine = [r for r in runs if r["figure"] == figure and r["tool_seconds"] == tool]
        summaries.append(summarize(figure, tool, mine, args, console))
    if args.plot:
        plot(runs, variants, summaries, Path(args.plot), args)
        console.print(f"plot: {args.plot}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "summaries": summaries, "runs": runs}, indent=1))


def replot(args: argparse.Namespace) -> None:
    """``--from-json``: the tables (and ``--plot``) of runs saved by earlier invocations, merged."""
    console = Console(width=200)
    saved = [json.loads(Path(path).read_text()) for path in args.from_json]
    for name, value in saved[0]["args"].items():  # the runs' own settings, but where to write
        if name not in ("plot", "json", "from_json"):
            setattr(args, name, value)
    runs = [run for data in saved for run in data["runs"]]
    variants: list[tuple[str, str | None]] = []
    for run in runs:
        if (run["figure"], run["tool_seconds"]) not in variants:
            variants.append((run["figure"], run["tool_seconds"]))
    report(runs, variants, args, console)


if __name__ == "__main__":
    main()
