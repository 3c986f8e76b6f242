"""agl's stores against Agent Lightning 0.3.0's InMemoryLightningStore, on the same full rollout cycle.

    python benchmarks/compare_agentlightning.py
    python benchmarks/compare_agentlightning.py --rollouts 500 --repeat 1 --workers 1,8
    python benchmarks/compare_agentlightning.py --agl-stores memory,sqlite --json

Agent Lightning is installed (``pip install agentlightning==0.3.0``) into a throw-away virtual environment made
with ``python -m venv`` under ``.bench/agentlightning-0.3.0/`` at the repository root (git-ignored), never into
the project's environment. It is made on the first run and reused after (``--reinstall`` makes it anew).

Both sides run ``_cycle.run_cycles`` — the same file, imported by each interpreter — so the loop, the workers
(N asyncio tasks in one process sharing one store) and the timing are identical. Each worker repeats, until
``--rollouts`` cycles are done: enqueue one rollout, dequeue one, add 10 spans, mark the attempt succeeded.
A fresh store is made for every run, on both sides. What one cycle calls on each side:

agl (this interpreter; ``store_cycle.AglOps`` and ``store_cycle.measure``, store made by ``create_component``):

* ``enqueue_rollout({"task": index})``
* ``dequeue_rollout(worker_id=...)``
* 10 × ``add_span(Span(rollout_id, attempt_id, trace_id=attempt_id, span_id=<16 hex>, name="step-i",
  attributes={"index": i}))`` — the store assigns the sequence id
* ``update_attempt(rollout_id, attempt_id, status=AttemptStatus.SUCCEEDED)``

Agent Lightning 0.3.0 (``.bench/agentlightning-0.3.0/bin/python benchmarks/_agentlightning_side.py --serve``,
``AgentLightningOps`` on a default ``InMemoryLightningStore()``):

* ``enqueue_rollout(input={"task": index})``
* ``dequeue_rollout(worker_id=...)``
* 10 × (``get_next_span_sequence_id(rollout_id, attempt_id)`` + ``add_span(Span(...))``) with the same span
  content; its ``Span`` requires a ``sequence_id``, and allocating it from the store first is what Agent
  Lightning's own runner and Weave tracer do (``add_otel_span`` allocates inside but needs an OpenTelemetry
  ``ReadableSpan`` built first). ``--agentlightning-span-mode local-seq`` skips that call (sequence id = i + 1)
  to show Agent Lightning's lower bound.
* ``update_attempt(rollout_id, attempt_id, status="succeeded")``

Runs are interleaved: for each worker count and repeat, every side runs once, the order flipping on odd repeats,
so drift in the machine's speed hits all sides alike; each side first does one unmeasured warm-up run
(``--warmup`` rollouts, 1 worker). Agent Lightning stays in one long-lived subprocess, because importing it takes
~15 s; it waits on its stdin while agl runs, and agl's process waits while it runs. The table gives medians of
``--repeat`` runs and agl/AGL, the ratio of rollouts/s (the same as that of spans/s: 10 spans per rollout).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import IO, Any

BENCHMARKS_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCHMARKS_DIR.parent
sys.path.insert(0, str(BENCHMARKS_DIR))

from _cycle import median_of  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402
from rich.table import Table  # noqa: E402
from store_cycle import AglOps, measure, measure_remote, parse_options  # noqa: E402,F401  (AglOps: what they run)

from agl_kernel.errors import PluginError  # noqa: E402
from agl_kernel.plugins import load_component  # noqa: E402

AGENTLIGHTNING_VERSION = "0.3.0"
VENV_DIR = REPO_ROOT / ".bench" / f"agentlightning-{AGENTLIGHTNING_VERSION}"
MARKER = VENV_DIR / ".installed"
INSTALL_LOG = VENV_DIR / "install.log"
SIDE_LOG = VENV_DIR / "side-stderr.log"
SIDE_SCRIPT = BENCHMARKS_DIR / "_agentlightning_side.py"
SPAN_MODES = ("store-seq", "local-seq")

err = Console(stderr=True)


class BenchError(Exception):
    """Something the user has to fix; printed without a traceback, exit status 1."""


# ---------------------------------------------------------------------------------------------- the venv


def venv_python() -> Path:
    return VENV_DIR / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _installed_version(python: Path) -> str | None:
    probe = "import importlib.metadata as m; print(m.version('agentlightning'))"
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(deque(f, maxlen=lines))
    except OSError:
        return ""


def ensure_venv(reinstall: bool) -> Path:
    """The throw-away venv's python, with agentlightning==AGENTLIGHTNING_VERSION in it; made if need be."""
    python = venv_python()
    if not reinstall and MARKER.exists() and python.exists():
        err.print(f"[dim]Reusing Agent Lightning {AGENTLIGHTNING_VERSION} in {_shown(VENV_DIR)}[/]")
        return python
    spec = f"agentlightning=={AGENTLIGHTNING_VERSION}"
    started = time.monotonic()
    with err.status(f"Creating a virtual environment in {_shown(VENV_DIR)} ...") as status:
        if reinstall and VENV_DIR.exists():
            shutil.rmtree(VENV_DIR)
        if not python.exists():
            VENV_DIR.parent.mkdir(parents=True, exist_ok=True)
            made = subprocess.run([sys.executable, "-m", "venv", str(VENV_DIR)], capture_output=True, text=True)
            if made.returncode != 0:
                raise BenchError(f"`{sys.executable} -m venv {VENV_DIR}` failed:\n{made.stdout}{made.stderr}")
        MARKER.unlink(missing_ok=True)
        status.update(f"pip install {spec} ...")
        command = [str(python), "-m", "pip", "install", "--disable-pip-version-check", spec]
        collected = 0
        with open(INSTALL_LOG, "w") as log:
            log.write("$ " + " ".join(command) + "\n")
            log.flush()
            pip = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert pip.stdout is not None
            for line in pip.stdout:
                log.write(line)
                words = line.split()
                if not words or words[0] not in ("Collecting", "Downloading", "Installing", "Building", "Successfully"):
                    continue
                collected += words[0] == "Collecting"
                elapsed = time.monotonic() - started
                shown = escape(line.strip()[:70])
                status.update(f"pip install {spec} — {collected} packages resolved, {elapsed:.0f}s: [dim]{shown}[/]")
            rc = pip.wait()
        if rc != 0:
            raise BenchError(
                f"pip install {spec} into {VENV_DIR} failed (exit status {rc}). Last lines of {INSTALL_LOG}:\n"
                + _tail(INSTALL_LOG)
            )
        status.update("Checking the installed version ...")
        version = _installed_version(python)
        if version != AGENTLIGHTNING_VERSION:
            raise BenchError(
                f"{VENV_DIR} has agentlightning {version!r} after the install, not {AGENTLIGHTNING_VERSION}"
            )
        MARKER.write_text(f"agentlightning=={version}\n")
    err.print(f"Installed Agent Lightning {version} into {VENV_DIR} in {time.monotonic() - started:.0f}s")
    return python


# ------------------------------------------------------------------------------------- Agent Lightning side


class SideProcess:
    """A long-lived Agent Lightning side script (``--serve``) in the throw-away venv: one JSON request line in,
    one JSON reply line out. Used by this file (``_agentlightning_side.py``) and runner_overhead.py."""

    def __init__(self, python: Path, script: Path = SIDE_SCRIPT, log: Path = SIDE_LOG) -> None:
        self.log = log
        self._stderr: IO[str] = open(log, "w")  # noqa: SIM115 - the side process writes to it until close()
        env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", PYTHONUNBUFFERED="1")
        env.pop("PYTHONPATH", None)  # nothing of the project's interpreter leaks into the other one
        self._process = subprocess.Popen(
            [str(python), str(script), "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            cwd=REPO_ROOT,
            env=env,
        )
        hello = self._read()
        self.version: str = hello["version"]
        self.python: str = hello["python"]

    def _read(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            self._process.wait()
            self._stderr.flush()
            raise BenchError(
                f"the Agent Lightning process exited (status {self._process.returncode}). "
                f"Last lines of {self.log}:\n{_tail(self.log)}"
            )
        return json.loads(line)

    def run(self, **request: Any) -> dict[str, Any]:
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        reply = self._read()
        if not reply.get("ok"):
            raise BenchError(f"the Agent Lightning run {request} failed:\n{reply.get('error')}")
        return reply["result"]

    def close(self) -> int:
        """Stop the process; return how many lines it wrote to stderr (warnings, log records)."""
        if self._process.stdin is not None and not self._process.stdin.closed:
            self._process.stdin.close()
        try:
            self._process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._stderr.close()
        with open(self.log, errors="replace") as f:
            return sum(1 for line in f if line.strip())


# ------------------------------------------------------------------------------------------------ agl side


def store_options(store: str, extra: list[str]) -> list[str]:
    """The key=value options of one agl store, from --agl-option STORE:key=value (a store that keeps a file gets
    one in a fresh scratch directory unless ``path`` is given: see store_cycle.parse_options)."""
    return [option.partition(":")[2] for option in extra if option.partition(":")[0] == store]


def run_agl(store: str, pairs: list[str], workers: int, rollouts: int, remote: bool = False) -> dict[str, float]:
    run_once = measure_remote if remote else measure
    with tempfile.TemporaryDirectory(prefix="agl-bench-") as scratch:
        return asyncio.run(run_once(store, parse_options(store, pairs, scratch), workers, rollouts))


# ---------------------------------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,8,32", help="comma-separated worker counts (default 1,8,32)")
    parser.add_argument("--rollouts", type=int, default=2000, help="rollouts per run (default 2000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per side and worker count; median reported")
    parser.add_argument(
        "--agl-stores", default="memory", help="comma-separated agl store plugins, e.g. memory,sqlite (default memory)"
    )
    parser.add_argument(
        "--agl-option",
        action="append",
        default=[],
        metavar="STORE:KEY=VALUE",
        help="an option for one agl store ({tmp} = a fresh scratch dir per run); "
        "a store's file defaults to {tmp}/bench.db",
    )
    parser.add_argument(
        "--agentlightning-span-mode",
        choices=SPAN_MODES,
        default="store-seq",
        help="store-seq: get_next_span_sequence_id + add_span per span, as Agent Lightning's runner/tracers do "
        "(default); local-seq: add_span only, sequence id counted by the caller",
    )
    parser.add_argument(
        "--remote",
        action="store_true",
        help="each side's store behind its own server, driven through its own client over HTTP: `agl store serve` + "
        "agl's LightningStoreClient against Agent Lightning's `agl store` + its LightningStoreClient (a fresh "
        "server process per run; start-up and server RSS are reported too)",
    )
    parser.add_argument("--warmup", type=int, default=200, help="rollouts of the unmeasured warm-up run (0: none)")
    parser.add_argument("--reinstall", action="store_true", help="make the throw-away venv anew")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    try:
        args.worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        parser.error(f"--workers takes comma-separated integers, not {args.workers!r}")
    args.stores = [s.strip() for s in args.agl_stores.split(",") if s.strip()]
    if not args.worker_counts or min(args.worker_counts) < 1:
        parser.error("--workers needs at least one count, each at least 1")
    if not args.stores:
        parser.error("--agl-stores needs at least one store")
    if args.rollouts < 1 or args.repeat < 1:
        parser.error("--rollouts and --repeat must be at least 1")
    for option in args.agl_option:
        store, colon, pair = option.partition(":")
        if not colon or "=" not in pair:
            parser.error(f"--agl-option takes STORE:KEY=VALUE, not {option!r}")
        if store not in args.stores:
            parser.error(f"--agl-option {option!r} names {store!r}, which is not in --agl-stores")
    return args


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    for store in args.stores:  # fail before the slow parts if a store is not there
        try:
            load_component("stores", store)
        except PluginError as error:
            raise BenchError(f"agl store {store!r} cannot be loaded: {error}") from error
    options = {store: store_options(store, args.agl_option) for store in args.stores}

    python = ensure_venv(args.reinstall)
    with err.status("Starting Agent Lightning (its import takes ~15 s) ..."):
        agentlightning = SideProcess(python)
    span_mode = args.agentlightning_span_mode
    sides = ["agentlightning", *args.stores]
    runs: dict[str, dict[int, list[dict[str, float]]]] = {side: {w: [] for w in args.worker_counts} for side in sides}
    stderr_lines = 0
    try:
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        )
        with progress:
            task = progress.add_task("warm-up", total=len(args.worker_counts) * args.repeat * len(sides))
            if args.warmup > 0:
                agentlightning.run(workers=1, rollouts=args.warmup, span_mode=span_mode, remote=args.remote)
                for store in args.stores:
                    run_agl(store, options[store], 1, args.warmup, args.remote)
            for workers in args.worker_counts:
                for repeat in range(args.repeat):
                    order = sides if repeat % 2 == 0 else sides[::-1]
                    for side in order:
                        is_al = side == "agentlightning"
                        label = f"Agent Lightning {agentlightning.version}" if is_al else f"agl {side}"
                        progress.update(task, description=f"{workers} workers, run {repeat + 1}: {label}")
                        if side == "agentlightning":
                            result = agentlightning.run(
                                workers=workers, rollouts=args.rollouts, span_mode=span_mode, remote=args.remote
                            )
                        else:
                            result = run_agl(side, options[side], workers, args.rollouts, args.remote)
                        runs[side][workers].append(result)
                        progress.advance(task)
    finally:
        stderr_lines = agentlightning.close()

    medians = {side: {w: median_of(runs[side][w]) for w in args.worker_counts} for side in sides}
    base = medians["agentlightning"]
    return {
        "rollouts": args.rollouts,
        "spans_per_rollout": 10,
        "repeat": args.repeat,
        "warmup": args.warmup,
        "python": sys.version.split()[0],
        "remote": args.remote,
        "agentlightning": {
            "version": agentlightning.version,
            "python": agentlightning.python,
            "store": "`agl store` server + LightningStoreClient" if args.remote else "InMemoryLightningStore",
            "span_mode": span_mode,
            "stderr_lines": stderr_lines,
            "stderr_log": str(SIDE_LOG),
            "results": base,
            "runs": runs["agentlightning"],
        },
        "agl": {
            store: {"options": options[store], "results": medians[store], "runs": runs[store]} for store in args.stores
        },
        "ratio_agl_over_agentlightning": {
            store: {w: medians[store][w]["rollouts_per_s"] / base[w]["rollouts_per_s"] for w in args.worker_counts}
            for store in args.stores
        },
    }


def print_table(report: dict[str, Any]) -> None:
    al = report["agentlightning"]
    where = " over HTTP, each through its own server and client" if report["remote"] else ""
    table = Table(
        title=(
            f"Full rollout cycle (enqueue → dequeue → {report['spans_per_rollout']} spans → succeed){where}, "
            f"{report['rollouts']} rollouts per run, median of {report['repeat']}"
        ),
        caption=(
            f"AGL = Agent Lightning {al['version']} {al['store']} (span mode {al['span_mode']}), "
            f"Python {al['python']}; agl on Python {report['python']}. agl/AGL = ratio of rollouts/s."
        ),
    )
    # (result key, header, format) of each side's columns
    columns = [("rollouts_per_s", "rollouts/s", "{:,.0f}"), ("dequeue_p99_ms", "deq p99 ms", "{:,.1f}")]
    if report["remote"]:
        columns += [("server_startup_s", "start s", "{:.2f}"), ("server_rss_mb", "RSS MB", "{:,.0f}")]
    else:
        columns.insert(1, ("spans_per_s", "spans/s", "{:,.0f}"))
    sides = {
        f"AGL {al['version']}": al["results"],
        **{f"agl {s}": side["results"] for s, side in report["agl"].items()},
    }
    table.add_column("workers", justify="right")
    for name in sides:
        for _, header, _ in columns:
            table.add_column(f"{name}\n{header}", justify="right")
        if not name.startswith("AGL"):
            table.add_column(f"{name}\n/ AGL", justify="right", style="bold")
    for workers in al["results"]:
        row = [str(workers)]
        for name, results in sides.items():
            row += [fmt.format(results[workers][key]) for key, _, fmt in columns]
            if not name.startswith("AGL"):
                ratio = results[workers]["rollouts_per_s"] / al["results"][workers]["rollouts_per_s"]
                row.append(f"{ratio:,.1f}×")
        table.add_row(*row)
    out = Console()
    needed = out.measure(table, options=out.options.update_width(1000)).maximum
    if needed > out.width:  # print whole numbers rather than cut them to fit a narrow (or piped, 80) width
        out = Console(width=needed)
    out.print(table)
    if al["stderr_lines"]:
        err.print(f"[yellow]Agent Lightning wrote {al['stderr_lines']} lines to stderr; see {al['stderr_log']}[/]")


def main() -> None:
    args = parse_args()
    try:
        report = benchmark(args)
    except BenchError as error:
        err.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
