"""Generated tokens/s of the agl model server vs plain transformers ``generate``, on the same model and prompts.

    python benchmarks/model_server.py                       # SmolLM2-135M on the CPU: 1 and 8 concurrent requests
    python benchmarks/model_server.py --quick               # 16 tokens, one repeat (a smoke test)
    python benchmarks/model_server.py --device cuda --dtype bfloat16 --concurrency 1,64 --static-generate

Server: ``concurrency`` chat requests are sent at once over HTTP, from a separate client process (asyncio, one
connection per request, as agents in other processes would), to a ModelServer on 127.0.0.1, greedy, ``ignore_eos``
so each generates exactly ``--max-tokens`` tokens; tokens/s =
all generated tokens / wall time from the first request sent to the last response received (HTTP, tokenization,
chat template and detokenization included). Baseline: ``model.generate`` on the same prompts (chat template
applied, left-padded batch of the same size), greedy, ``min_new_tokens = max_new_tokens``, timed around the call
only. ``generate`` runs with PyTorch SDPA attention (the transformers default) and with eager attention (what the
server uses on the CPU), so the table separates the batching from the attention kernel. Median of ``--repeats``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain gravity in one sentence.",
    "List three colors and a fruit for each.",
    "How do I boil an egg?",
    "Why is the sky blue?",
    "Give me a name for a cat.",
    "What is 12 times 12?",
]


def prompts_for(n: int) -> list[str]:
    return [QUESTIONS[i % len(QUESTIONS)] + ("" if i < len(QUESTIONS) else f" ({i})") for i in range(n)]


def run_server(server: Any, questions: list[str], max_tokens: int) -> tuple[int, float]:
    """Send ``questions`` at once from a separate client process (as agents are), timed there from the first
    request sent to the last response received."""
    job = {"url": server.url, "model": server.model_name, "questions": questions, "max_tokens": max_tokens}
    done = subprocess.run(
        [sys.executable, __file__, "--client"], input=json.dumps(job), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"the client process failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout)
    return result["tokens"], result["seconds"]


async def _client(job: dict[str, Any]) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=len(job["questions"]), max_keepalive_connections=len(job["questions"]))
    async with httpx.AsyncClient(base_url=job["url"], timeout=3600, limits=limits) as client:

        async def one(question: str) -> int:
            body = {
                "model": job["model"],
                "messages": [{"role": "user", "content": question}],
                "max_tokens": job["max_tokens"],
                "temperature": 0,
                "ignore_eos": True,
            }
            response = await client.post("/v1/chat/completions", json=body)
            response.raise_for_status()
            return int(response.json()["usage"]["completion_tokens"])

        await client.get("/health")  # connect first: the timing starts at the requests
        started = time.perf_counter()
        tokens = sum(await asyncio.gather(*(one(q) for q in job["questions"])))
        return {"tokens": tokens, "seconds": time.perf_counter() - started}


def run_generate(model: Any, tokenizer: Any, questions: list[str], max_tokens: int, **extra: Any) -> tuple[int, float]:
    import torch

    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in questions
    ]
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    with torch.inference_mode():
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        out = model.generate(
            **batch,
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            **extra,
        )
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
    return (out.shape[1] - batch["input_ids"].shape[1]) * len(questions), elapsed


def main() -> None:
    if sys.argv[1:] == ["--client"]:  # the client process of run_server
        print(json.dumps(asyncio.run(_client(json.loads(sys.stdin.read())))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="'smollm2' or a local Hugging Face model directory")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16, ... (default: the checkpoint's)")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated request counts / batch sizes")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="16 tokens, 1 repeat: a smoke test")
    parser.add_argument(
        "--static-generate",
        action="store_true",
        help="also run generate with a static KV cache (compiled with CUDA graphs on a GPU)",
    )
    parser.add_argument(
        "--decode",
        default="auto",
        choices=["auto", "static", "dynamic", "both"],
        help="the server's decode path (both: a row for each, same model); auto = static where the model allows it",
    )
    parser.add_argument("--no-eager-generate", action="store_true", help="skip generate with eager attention")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args()
    if args.quick:
        args.max_tokens, args.repeats = 16, 1
    sizes = [int(s) for s in args.concurrency.split(",") if s]

    import torch

    from agl_model_server import ModelServer, load_model

    if args.threads:
        torch.set_num_threads(args.threads)

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    console = Console(stderr=True)
    console.print(f"loading {args.model} on {args.device} ({args.dtype or 'checkpoint dtype'}) ...")
    model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
    modes = {"auto": [None], "static": [True], "dynamic": [False], "both": [True, False]}[args.decode]
    servers = [
        ModelServer(model=model, tokenizer=tokenizer, max_batch_size=max(sizes), static_decode=mode).start()
        for mode in modes
    ]
    server_attention = model.config._attn_implementation

    def with_attention(name: str, fn: Callable[[], tuple[int, float]]) -> Callable[[], tuple[int, float]]:
        def run() -> tuple[int, float]:
            model.set_attn_implementation(name)
            try:
                return fn()
            finally:
                model.set_attn_implementation(server_attention)

        return run

    def serve(server: Any) -> Callable[[list[str]], Callable[[], tuple[int, float]]]:
        return lambda qs: lambda: run_server(server, qs, args.max_tokens)

    def server_label(server: Any) -> str:
        path = "static cache" + (", CUDA graphs" if args.device.startswith("cuda") else "")
        return f"agl model server ({path if server.engine.static else 'dynamic cache, ' + server_attention})"

    by_label = {server_label(server): server for server in servers}
    systems: list[tuple[str, Callable[[list[str]], Callable[[], tuple[int, float]]]]] = [
        *[(label, serve(server)) for label, server in by_label.items()],
        (
            "transformers generate (sdpa)",
            lambda qs: with_attention("sdpa", lambda: run_generate(model, tokenizer, qs, args.max_tokens)),
        ),
    ]
    if not args.no_eager_generate:
        systems.append(
            (
                "transformers generate (eager)",
                lambda qs: with_attention("eager", lambda: run_generate(model, tokenizer, qs, args.max_tokens)),
            )
        )
    if args.static_generate:
        systems.append(
            (
                "transformers generate (sdpa, static cache)",
                lambda qs: with_attention(
                    "sdpa", lambda: run_generate(model, tokenizer, qs, args.max_tokens, cache_implementation="static")
                ),
            )
        )

    results: dict[tuple[str, int], list[float]] = {}
    batch_sizes: dict[int, int] = {}
    total = len(sizes) * len(systems) * (args.repeats + 1)
    load_before = os.getloadavg()[0]
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmarking", total=total)
        for size in sizes:
            runs = [(name, make(prompts_for(size))) for name, make in systems]
            for name, run in runs:
                progress.update(task, description=f"{name}, {size} at once (warm-up)")
                run()  # warm-up: first-call allocations, compilation
                progress.advance(task)
            # Repeats go round-robin over the systems, so a change in the machine's load hits them alike.
            for r in range(args.repeats):
                for name, run in runs:
                    progress.update(task, description=f"{name}, {size} at once ({r + 1}/{args.repeats})")
                    if name in by_label:
                        by_label[name].engine.reset_stats()
                    tokens, seconds = run()
                    if name in by_label:
                        batch_sizes[size] = by_label[name].engine.stats()["max_decode_batch_size"]
                    results.setdefault((name, size), []).append(tokens / seconds)
                    progress.advance(task)
    for server in servers:
        server.stop()

    device = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    )
    table = Table(
        title=f"{args.model}, {args.max_tokens} new tokens per request, {device}, "
        f"{str(model.dtype).replace('torch.', '')}, median of {args.repeats} (tokens/s)"
    )
    table.add_column("system")
    for size in sizes:
        table.add_column(f"{size} at once", justify="right")
    for name, _ in systems:
        table.add_row(name, *[f"{statistics.median(results[(name, s)]):.1f}" for s in sizes])
    Console().print(table)
    console.print(
        f"load average before/after: {load_before:.1f} / {os.getloadavg()[0]:.1f} "
        f"(other processes on this machine slow every row alike)"
    )
    console.print(
        "largest decode batch the server formed: " + ", ".join(f"{s} requests → {b}" for s, b in batch_sizes.items())
    )
    if args.json:
        print(json.dumps({f"{name} @ {size}": statistics.median(v) for (name, size), v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
