"""LoRA adapters on agl-model-server: what a weight sync costs, and what serving several adapters in one batch costs.

Measured on SmolLM2-135M-Instruct (the bundled default model), in this process, medians of ``--repeats`` runs:

- **sync**: pushing new weights into a running server with nothing in flight. *full*: ``load_state_dict`` of the
  whole model (what a full fine-tune, or a LoRA run that merges its adapter, sends each step); *adapter*:
  ``load_adapter`` of one rank-``--rank`` adapter on every linear layer of the decoder (what GRPO's ``adapters``
  sends per role). Both from the caller's side (``load_*`` returns when the server has the weights) and the copy
  alone on the engine thread; plus what the trainer side takes to produce the payload (peft: the merged state dict
  vs one adapter's tensors).
- **decode**: ``--requests`` greedy requests of ``--tokens`` tokens sent together, all on the base model vs spread
  over two adapters (each row's low-rank delta on top of the shared base matmul), on the static decode path.

    python benchmarks/lora_adapters.py --repeats 5
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import time
from typing import Any

import torch


def _adapter(model: Any, rank: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith("model.layers."):
            state[f"{name}.lora_A"] = torch.randn(rank, module.in_features, generator=generator) * 0.01
            state[f"{name}.lora_B"] = torch.randn(module.out_features, rank, generator=generator) * 0.01
    return state


def _median_time(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def sync(server: Any, model: Any, rank: int, repeats: int) -> dict[str, float]:
    full = {k: v.detach().clone() for k, v in model.state_dict().items()}
    adapter = _adapter(model, rank, 1)
    server.load_adapter("bench", adapter)  # the first load allocates the adapter's slot
    engine_copy: list[float] = []

    def load_adapter() -> None:
        engine_copy.append(server.load_adapter_async("bench", adapter).result()["seconds"])

    out = {
        "full_bytes": float(sum(t.nbytes for t in full.values())),
        "adapter_bytes": float(sum(t.nbytes for t in adapter.values())),
        "full_s": _median_time(lambda: server.load_state_dict(full), repeats),
        "adapter_s": _median_time(load_adapter, repeats),
    }
    out["adapter_engine_copy_s"] = statistics.median(engine_copy)
    return out


def payload(model: Any, rank: int, repeats: int) -> dict[str, float]:
    """The trainer's side: a peft model with two adapters; the merged weights vs one adapter's tensors."""
    import copy

    from agl_algo_grpo import PolicyTrainer, make_config

    adapters = {"planner": {"r": rank, "alpha": 2 * rank}, "solver": {"r": rank, "alpha": 2 * rank}}
    merged_policy = PolicyTrainer(copy.deepcopy(model), make_config(lora={"r": rank}, device="cpu", console=False))
    policy = PolicyTrainer(copy.deepcopy(model), make_config(adapters=adapters, device="cpu", console=False))
    return {
        "merged_state_s": _median_time(merged_policy.state_dict_for_serving, repeats),
        "adapter_state_s": _median_time(lambda: policy.adapter_state_for_serving("planner"), repeats),
    }


def decode(server: Any, model: Any, rank: int, requests: int, tokens: int, repeats: int) -> dict[str, float]:
    server.load_adapter("planner", _adapter(model, rank, 2))
    server.load_adapter("solver", _adapter(model, rank, 3))
    prompts = [f"Write a short sentence about the number {i}." for i in range(requests)]

    def run(adapters: list[str | None]) -> None:
        with concurrent.futures.ThreadPoolExecutor(requests) as pool:
            jobs = [
                pool.submit(server.generate, p, max_tokens=tokens, temperature=0, adapter=a)
                for p, a in zip(prompts, adapters)
            ]
            for job in jobs:
                job.result()

    base = [None] * requests
    mixed = ["planner" if i % 2 else "solver" for i in range(requests)]
    run(base)  # warm up
    result = {"base_s": [], "mixed_s": []}
    for _ in range(repeats):  # peers side by side, in turns
        for key, adapters in (("base_s", base), ("mixed_s", mixed)):
            started = time.perf_counter()
            run(adapters)
            result[key].append(time.perf_counter() - started)
    return {key: statistics.median(values) for key, values in result.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    from agl_model_server import ModelServer, load_default_model

    model, tokenizer = load_default_model()
    print(f"load average before: {os.getloadavg()[0]:.1f} (1 min), {torch.get_num_threads()} torch threads")
    with ModelServer(model=model, tokenizer=tokenizer, static_decode=True) as server:
        synced = sync(server, model, args.rank, args.repeats)
        decoded = decode(server, model, args.rank, args.requests, args.tokens, args.repeats)
    produced = payload(model, args.rank, args.repeats)
    mb = 1024 * 1024
    print(f"sync, full weights   {synced['full_bytes'] / mb:7.1f} MB  load_state_dict {synced['full_s'] * 1e3:8.1f} ms")
    print(
        f"sync, one adapter    {synced['adapter_bytes'] / mb:7.1f} MB  "
        f"load_adapter    {synced['adapter_s'] * 1e3:8.1f} ms"
        f"  (the copy on the engine thread {synced['adapter_engine_copy_s'] * 1e3:.2f} ms)"
    )
    print(
        f"trainer payload      merged state dict {produced['merged_state_s'] * 1e3:.1f} ms, "
        f"one adapter's tensors {produced['adapter_state_s'] * 1e3:.1f} ms"
    )
    print(
        f"decode {args.requests} x {args.tokens} tokens: base only {decoded['base_s']:.2f} s, "
        f"two adapters mixed {decoded['mixed_s']:.2f} s ({decoded['mixed_s'] / decoded['base_s']:.2f}x)"
    )
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
