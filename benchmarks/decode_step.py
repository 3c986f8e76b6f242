"""One decode step of a model at N rows: transformers' forward (dynamic cache) against the model server's static
path, eager and (on a GPU) replayed as a CUDA graph. Milliseconds per step, median of --repeats.

    python benchmarks/decode_step.py --model /path/to/model --device cuda --rows 1,8,32,64   # on a GPU
    python benchmarks/decode_step.py --rows 8                                                 # SmolLM2 on the CPU

The server's tokens/s (benchmarks/model_server.py) add sampling, HTTP and scheduling to this.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from rich.console import Console
from rich.table import Table

from agl_model_server import _kvcache, load_model
from agl_model_server._static import StaticDecoder


def timed(fn: Callable[[], None], repeats: int, device: str) -> float:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = []
    for _ in range(repeats + 3):  # 3 warm-up calls (graph capture, allocations)
        sync()
        started = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times[3:]) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on a GPU, the checkpoint's on the CPU")
    parser.add_argument("--rows", default="8", help="comma-separated batch sizes")
    parser.add_argument("--prompt", type=int, default=48, help="prompt tokens per row")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else None)
    model, _ = load_model(args.model, device=args.device, dtype=dtype)
    model.eval()
    table = Table(title=f"{args.model}: one decode step, ms (median of {args.repeats}), {args.device}, {model.dtype}")
    table.add_column("rows", justify="right")
    kinds = ["transformers forward", "static, eager"] + (
        ["static, CUDA graph"] if args.device.startswith("cuda") else []
    )
    for kind in kinds:
        table.add_column(kind, justify="right")
    cache_arg = _kvcache.cache_argument(model)
    with torch.inference_mode():
        for rows in [int(r) for r in args.rows.split(",")]:
            ids = torch.randint(100, 1000, (rows, args.prompt), device=args.device)
            out = model(input_ids=ids, use_cache=True, **{cache_arg: _kvcache.make_cache()})
            state = {
                "cache": _kvcache.output_cache(out),
                "mask": torch.ones(rows, args.prompt, dtype=torch.long, device=args.device),
                "pos": torch.full((rows,), args.prompt, device=args.device),
            }
            tokens = out.logits[:, -1].argmax(-1)

            def forward() -> None:
                state["mask"] = torch.cat([state["mask"], state["mask"].new_ones(rows, 1)], 1)
                model(input_ids=tokens[:, None], attention_mask=state["mask"], position_ids=state["pos"][:, None],
                      use_cache=True, **{cache_arg: state["cache"]})  # fmt: skip
                state["pos"] += 1

            cells = [timed(forward, args.repeats, args.device)]
            for graphs in [False, True][: len(kinds) - 1]:
                decoder = StaticDecoder(model, max_slots=rows, max_len=args.prompt + 16, use_graphs=graphs)
                slots = list(range(rows))
                decoder.prefill(slots, ids.tolist())
                index = torch.tensor(slots, device=args.device)

                def step() -> None:
                    decoder.step(index, rows, args.prompt + 1)
                    decoder.positions[index] = args.prompt  # the same step again (a step advances the positions)

                cells.append(timed(step, args.repeats, args.device))
            table.add_row(str(rows), *[f"{c:.2f}" for c in cells])
    Console().print(table)


if __name__ == "__main__":
    main()
