"""Seconds per GRPO step: agl's GRPO against TRL's ``GRPOTrainer``, on this CPU, in one run.

    python benchmarks/grpo_vs_trl.py                        # 1 warm-up + 3 measured steps per side
    python benchmarks/grpo_vs_trl.py --steps 5 --max-tokens 32 --json
    python benchmarks/grpo_vs_trl.py --sides trl --trl-gradient-checkpointing
    bash benchmarks/gpu_grpo.sh                             # on one GPU: 8 x 8 completions x 128 tokens, bf16

Both sides train SmolLM2-135M-Instruct (``agl_model_server.load_default_model``, float32; TRL loads a copy saved
with ``save_pretrained``) on the task of ``contrib/recipes/grpo_calculator.py`` (reasoning-gym ``basic_arithmetic``,
its ``PROMPT`` as one user message, its ``score`` as the reward), the same prompts in the same order, ``--batch-size``
prompts × ``--group-size`` completions per step, at most ``--max-tokens`` new tokens (temperature 1), the same
learning rate, one optimizer step per GRPO step over all completions, no KL term nor reference model, ``--threads``
torch threads on each side.

- agl: the recipe's ``train()`` coroutine (imported by path) in this process: SQLite store in a temporary directory,
  store server + LLM proxy, model server, ``batch × group`` runners, GRPO; no validation. A step is GRPO's
  ``step_time_s`` (publish, rollouts through the proxy, rewards, advantages, update), split in ``rollout_time_s`` and
  ``update_time_s``. Zero-advantage completions are trained on too (``skip_zero_advantage=False``) so that both
  sides do the same work; ``--agl-skip-zero-advantage`` keeps GRPO's default, which drops them.
- TRL: ``benchmarks/_trl_side.py`` run by a throw-away venv ``.bench/trl/`` (git-ignored), made on the first run
  (``pip install torch==<this torch>``, the CPU build, then ``trl transformers==<this transformers>``) and reused
  after (``--reinstall``). GRPOConfig: num_generations=group, per_device_train_batch_size=batch×group (completions),
  max_completion_length, num_iterations=1, beta=0, use_cpu, bf16=False, no vLLM, gradient_checkpointing=False (TRL's
  default is True: ``--trl-gradient-checkpointing``). A step is on_step_begin → on_step_end of a TrainerCallback;
  its time in ``_generate_and_score_completions`` (``model.generate``, rewards) is the "rollout" part.

- agl-async (in ``--sides``, e.g. ``agl,agl-async,trl``): agl with asynchronous GRPO (``--max-staleness`` K, default
  1): the rollouts of the next K steps run while the policy updates, with (K + 1) × the runners; a step is still
  GRPO's ``step_time_s`` (the steps follow each other, so they add up to the run's time), its rollout part now only
  the wait for rollouts that the previous update did not cover.

Each side runs ``--warmup`` + ``--steps`` steps; medians leave the warm-up out. The sides run one after the other
(single steps of two training runs cannot be interleaved); ``--rounds N`` repeats the pair, flipping the order.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_agentlightning import BenchError, _tail

BENCHMARKS_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCHMARKS_DIR.parent
RECIPE = REPO_ROOT / "contrib" / "recipes" / "grpo_calculator.py"
SIDE_SCRIPT = BENCHMARKS_DIR / "_trl_side.py"
VENV_DIR = REPO_ROOT / ".bench" / "trl"
INSTALL_LOG = VENV_DIR / "install.log"
SIDE_LOG = VENV_DIR / "side-stderr.log"

err = Console(stderr=True)


# ----------------------------------------------------------------------------------------------- the TRL venv


def ensure_venv(reinstall: bool) -> Path:
    """The venv's python with trl and this torch (its CPU build) and transformers versions; made if need be."""
    import shutil

    import torch
    import transformers

    python, wanted = VENV_DIR / "bin" / "python", [torch.__version__, transformers.__version__]
    probe = "import torch, transformers, trl; print(torch.__version__, transformers.__version__)"

    def installed() -> list[str]:
        done = subprocess.run([str(python), "-c", probe], check=False, capture_output=True, text=True)
        return done.stdout.split() if done.returncode == 0 else []

    if not reinstall and python.exists() and installed() == wanted:
        return python
    if reinstall and VENV_DIR.exists():
        shutil.rmtree(VENV_DIR)
    steps = [[sys.executable, "-m", "venv", str(VENV_DIR)]] if not python.exists() else []
    VENV_DIR.mkdir(parents=True, exist_ok=True)
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
    steps += [pip + [f"torch=={wanted[0].split('+')[0]}"], pip + ["trl", f"transformers=={wanted[1]}"]]
    with err.status("Making the TRL venv ...") as status, open(INSTALL_LOG, "w") as log:
        for command in steps:
            status.update(f"{' '.join(command[-2:])} (log: {INSTALL_LOG}) ...")
            log.write("$ " + " ".join(command) + "\n")
            log.flush()
            if subprocess.run(command, check=False, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
                raise BenchError(f"`{' '.join(command)}` failed. Last lines of {INSTALL_LOG}:\n{_tail(INSTALL_LOG)}")
    if installed() != wanted:  # e.g. pip chose a CUDA build of torch
        raise BenchError(f"{VENV_DIR} has torch, transformers {installed()} after the install, not {wanted}")
    return python


# --------------------------------------------------------------------------------------------------- the sides


def load_recipe() -> Any:
    spec = importlib.util.spec_from_file_location("grpo_calculator", RECIPE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def flags(**options: Any) -> list[str]:
    """``--name value`` pairs, ``_`` in names written ``-``."""
    return [item for name, value in options.items() for item in (f"--{name.replace('_', '-')}", str(value))]


def recipe_argv(args: argparse.Namespace, scratch: str, max_staleness: int = 0) -> list[str]:
    steps, batch = args.warmup + args.steps, args.batch_size
    model = flags(model=args.model) if args.model else []
    return model + flags(device=args.device) + flags(
        steps=steps, batch_size=batch, group_size=args.group_size, max_tokens=args.max_tokens, lr=args.lr,
        runners=batch * args.group_size * (1 + max_staleness), max_staleness=max_staleness,
        micro_batch_size=args.micro_batch_size, train_tasks=steps * batch, val_tasks=0, val_every=0, seed=args.seed,
        path=os.path.join(scratch, "agl.db"), checkpoint_dir=os.path.join(scratch, "checkpoints"),
    )  # fmt: skip


def step_tasks(recipe: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The prompts of every step, in the order agl's GRPO walks the recipe's tasks (TRL gets the same list)."""
    from agl_algo_grpo import GRPO

    options = recipe.parse_args(recipe_argv(args, "."))
    tasks = recipe.make_tasks(options.train_tasks, options.seed)
    grpo = GRPO("unused", steps=options.steps, batch_size=options.batch_size, seed=options.seed)
    return [t for step in range(options.steps) for t in grpo.tasks_for_step(tasks, step)]


def run_agl(
    recipe: Any, args: argparse.Namespace, on_step: Callable[[], None], max_staleness: int = 0
) -> dict[str, Any]:
    import agl_algo_grpo

    base = agl_algo_grpo.GRPO
    extra = {} if args.agl_skip_zero_advantage else {"skip_zero_advantage": False}

    class BenchGRPO(base):  # type: ignore[misc,valid-type]
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **{**kw, **extra})

        async def _step(self, *a: Any, **kw: Any) -> dict[str, float]:
            metrics = await super()._step(*a, **kw)
            on_step()
            return metrics

    agl_algo_grpo.GRPO = BenchGRPO  # the recipe's train() imports GRPO from the package when it runs
    try:
        with tempfile.TemporaryDirectory(prefix="agl-bench-grpo-") as scratch, open(os.devnull, "w") as devnull:
            console = err if args.verbose else Console(file=devnull)
            options = recipe.parse_args(recipe_argv(args, scratch, max_staleness))
            result = asyncio.run(recipe.train(options, console))
    finally:
        agl_algo_grpo.GRPO = base
    rows = []
    for entry in result["report"].history:
        sequences = entry.get("sequences", 0.0)
        row = {key: entry[key] for key in ("step_time_s", "rollout_time_s", "update_time_s")}
        row["train_step_s"] = entry.get("time_s")  # PolicyTrainer.train_step alone (the rest: metrics, records)
        tokens = entry["loss_tokens"] / sequences if sequences else None
        rows.append(dict(row, reward_mean=entry.get("reward_mean", 0.0), trained=sequences, completion_tokens=tokens))
    return {"steps": rows}


def run_trl(
    python: Path, model_dir: str, tasks_file: str, args: argparse.Namespace, on_step: Callable[[], None]
) -> dict[str, Any]:
    command = [str(python), str(SIDE_SCRIPT)] + flags(
        model=model_dir, tasks=tasks_file, steps=args.warmup + args.steps, batch_size=args.batch_size,
        group_size=args.group_size, max_tokens=args.max_tokens, lr=args.lr, threads=args.threads, seed=args.seed,
    )  # fmt: skip
    command += ["--gradient-checkpointing"] if args.trl_gradient_checkpointing else []
    command += ["--device", args.device]
    offline = dict.fromkeys(("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"), "1")
    env = dict(os.environ, **offline, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    if args.trl_python is None:  # the venv has its own packages
        env.pop("PYTHONPATH", None)
    SIDE_LOG.parent.mkdir(parents=True, exist_ok=True)
    with open(SIDE_LOG, "w") as log:
        side = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO_ROOT, env=env)
        assert side.stdout is not None
        done: dict[str, Any] | None = None
        for line in side.stdout:
            event = json.loads(line)
            if event["event"] == "step":
                on_step()
            elif event["event"] == "done":
                done = event
        side.wait()
    if side.returncode != 0 or done is None:
        raise BenchError(
            f"the TRL side exited with status {side.returncode}. Last lines of {SIDE_LOG}:\n{_tail(SIDE_LOG)}"
        )
    logs = [entry for entry in done["logs"] if "completions/mean_length" in entry]
    for row, entry in zip(done["steps"], logs):
        row.update(
            reward_mean=entry.get("reward", 0.0),
            trained=float(args.batch_size * args.group_size),
            completion_tokens=entry["completions/mean_length"],
            rollout_time_s=row.pop("generation_time_s"),
        )
    return done


# ---------------------------------------------------------------------------------------------------- main


def summary(rounds: list[list[dict[str, Any]]], warmup: int) -> dict[str, Any]:
    steps = [row for run in rounds for row in run[warmup:]]

    def med(key: str) -> float | None:
        values = [row[key] for row in steps if row.get(key) is not None]
        return statistics.median(values) if values else None

    times = [row["step_time_s"] for row in steps]
    return {
        "median_step_s": statistics.median(times), "min_step_s": min(times), "max_step_s": max(times),
        "median_rollout_s": med("rollout_time_s"), "median_update_s": med("update_time_s"),
        "median_completion_tokens": med("completion_tokens"), "median_trained": med("trained"),
        "measured_steps": len(steps), "all_steps": rounds,
    }  # fmt: skip


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    for noisy in ("httpx", "httpx2", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if "trl" not in args.sides:
        python = None
    elif args.trl_python:
        python = Path(args.trl_python)
    else:
        python = ensure_venv(args.reinstall)
    recipe = load_recipe()
    runs: dict[str, list[list[dict[str, Any]]]] = {side: [] for side in args.sides}
    trl_info: dict[str, Any] = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="agl-bench-trl-model-") as scratch:
        tasks_file = os.path.join(scratch, "tasks.json")
        with open(tasks_file, "w") as f:
            json.dump([{"question": t["question"], "answer": t["answer"]} for t in step_tasks(recipe, args)], f)
        if python is not None:
            with err.status("Saving the model for TRL ..."):
                from agl_model_server import load_model

                model, tokenizer = load_model(args.model or "smollm2", dtype=torch.float32)
                model.save_pretrained(os.path.join(scratch, "model"))
                tokenizer.save_pretrained(os.path.join(scratch, "model"))
                del model
        per_run = args.warmup + args.steps
        progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err
        )
        with progress:
            bar = progress.add_task("starting", total=per_run * len(args.sides) * args.rounds)
            for index in range(args.rounds):
                for side in args.sides if index % 2 == 0 else args.sides[::-1]:
                    label = f"round {index + 1}/{args.rounds}: {side} (model load, then steps)"
                    progress.update(bar, description=label)

                    def advance():
                        return progress.advance(bar)

                    if side in ("agl", "agl-async"):
                        staleness = args.max_staleness if side == "agl-async" else 0
                        runs[side].append(run_agl(recipe, args, advance, staleness)["steps"])
                    else:
                        assert python is not None
                        trl_info = run_trl(python, os.path.join(scratch, "model"), tasks_file, args, advance)
                        runs["trl"].append(trl_info.pop("steps"))
                        trl_info.pop("logs", None)
    report: dict[str, Any] = {
        "settings": {
            key: getattr(args, key)
            for key in ("warmup", "steps", "rounds", "batch_size", "group_size", "max_tokens", "lr", "threads", "seed")
        },
        "model": (
            f"{args.model or 'SmolLM2-135M-Instruct (agl_model_server.load_default_model)'}, "
            + ("float32, CPU" if args.device == "cpu" else f"float32 weights, bfloat16 autocast, {_gpu_name()}")
        ),
        "python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
        "order": args.sides, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "sides": {side: summary(runs[side], args.warmup) for side in args.sides},
    }  # fmt: skip
    for side, staleness in (("agl", 0), ("agl-async", args.max_staleness)):
        report["sides"].get(side, {})["ran"] = (
            f"recipe train(): model server + proxy + {args.batch_size * args.group_size * (1 + staleness)} runners "
            f"+ GRPO, skip_zero_advantage={args.agl_skip_zero_advantage}"
            + (f", max_staleness={staleness}" if staleness else "")
        )
    if trl_info:
        report["sides"]["trl"].update(trl_info)
        report["sides"]["trl"]["ran"] = (
            f"trl {trl_info['versions']['trl']} GRPOTrainer, transformers {trl_info['versions']['transformers']}, "
            f"model.generate, gradient_checkpointing={trl_info['gradient_checkpointing']}, "
            f"loss_type={trl_info['loss_type']}"
        )
    for side in ("agl", "agl-async"):
        if side in report["sides"] and "trl" in report["sides"]:
            agl, trl = report["sides"][side], report["sides"]["trl"]
            report["ratio_trl_over_" + side.replace("-", "_")] = {
                key: trl[key] / agl[key] if trl[key] and agl[key] else None
                for key in ("median_step_s", "min_step_s", "median_rollout_s", "median_update_s")
            }
    return report


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"


def print_table(report: dict[str, Any]) -> None:
    s = report["settings"]
    table = Table(
        title=(
            f"Seconds per GRPO step: {s['batch_size']} prompts × {s['group_size']} completions, ≤{s['max_tokens']} "
            f"new tokens, {s['threads']} threads; median of {s['steps']}×{s['rounds']} steps after "
            f"{s['warmup']} warm-up"
        ),
        caption=(
            f"{report['model']}; Python {report['python']}, torch {report['torch']}, agl's transformers "
            f"{report['transformers']}; load average {report['loadavg_before'][0]:.1f} → "
            f"{report['loadavg_after'][0]:.1f}"
        ),
    )
    names = ("side", "median s/step", "min–max", "rollout s", "update s", "completion tokens", "trained / step")
    for name in names:
        table.add_column(name, justify="left" if name == "side" else "right")
    table.add_column("what ran", ratio=1)

    def fmt(value: float | None, spec: str = ".1f") -> str:
        return "—" if value is None else format(value, spec)

    for side, row in report["sides"].items():
        spread = f"{row['min_step_s']:.1f}–{row['max_step_s']:.1f}"
        cells = (fmt(row["median_rollout_s"], ".2f"), fmt(row["median_update_s"], ".2f"))
        tokens, trained = fmt(row["median_completion_tokens"]), fmt(row["median_trained"], ".0f")
        table.add_row(side, fmt(row["median_step_s"], ".2f"), spread, *cells, tokens, trained, row.get("ran", ""))
    for side in ("agl", "agl-async"):
        ratio = report.get("ratio_trl_over_" + side.replace("-", "_"))
        if ratio:
            keys = ("median_step_s", "min_step_s", "median_rollout_s", "median_update_s")
            parts = [f"{fmt(ratio[key])}×" for key in keys]
            table.add_row(f"[bold]TRL / {side}[/]", f"[bold]{parts[0]}[/]", f"min {parts[1]}", *parts[2:], "", "", "")
    out = Console()
    Console(width=max(out.width, 160)).print(table)  # not squeezed into a narrow (or piped, 80) width


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="measured steps per side and round (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured steps first (default 1)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each side, order flipping (default 1)")
    parser.add_argument("--batch-size", type=int, default=2, help="prompts per step (default 2)")
    parser.add_argument("--group-size", type=int, default=4, help="completions per prompt (default 4)")
    parser.add_argument("--max-tokens", type=int, default=16, help="new tokens per completion at most (default 16)")
    parser.add_argument("--micro-batch-size", type=int, default=8, help="agl: sequences per forward (default 8)")
    parser.add_argument("--lr", type=float, default=2e-5, help="learning rate (default 2e-5, the recipe's)")
    parser.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads on each side (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sides", default="agl,trl", help="comma-separated, run in this order: agl, agl-async, trl (default agl,trl)"
    )
    parser.add_argument("--max-staleness", type=int, default=1, help="agl-async: GRPO's max_staleness (default 1)")
    parser.add_argument("--agl-skip-zero-advantage", action="store_true", help="agl: the recipe's default")
    parser.add_argument("--trl-gradient-checkpointing", action="store_true", help="TRL: its default")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where both sides train")
    parser.add_argument("--model", default=None, help="a local model directory (default: the bundled SmolLM2)")
    parser.add_argument(
        "--trl-python", default=None, help="an interpreter that has trl (default: make the venv .bench/trl)"
    )
    parser.add_argument("--reinstall", action="store_true", help="make the TRL venv anew")
    parser.add_argument("--verbose", action="store_true", help="show agl's own console output (stderr)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    args.sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if not args.sides or set(args.sides) - {"agl", "agl-async", "trl"} or len(set(args.sides)) != len(args.sides):
        parser.error("--sides takes agl, agl-async and/or trl, comma-separated")
    if args.max_staleness < 1:
        parser.error("--max-staleness must be 1 or more (agl is the synchronous side)")
    if (
        min(args.steps, args.rounds, args.batch_size, args.group_size, args.max_tokens, args.threads, args.warmup + 1)
        < 1
    ):
        parser.error("--steps, --rounds, --batch-size, --group-size, --max-tokens, --threads must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # before torch is imported, here and in the TRL process
        os.environ[name] = str(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        report = benchmark(args)
    except BenchError as error:
        err.print(f"[red]error:[/] {error}")
        sys.exit(1)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
