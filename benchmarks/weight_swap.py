"""How long new weights stall generation in the agl model server: draining (``load_state_dict(drain=True)``, the
old and only way) vs staging then swapping between two decode steps (``drain=False``, the ``model-server`` LLM
backend's default, what asynchronous GRPO relies on).

    python benchmarks/weight_swap.py                     # SmolLM2-135M on the CPU, 16 streams, 5 swaps per mode
    python benchmarks/weight_swap.py --quick             # the tiny random model, a few swaps (a smoke test)
    python benchmarks/weight_swap.py --device cuda --dtype bfloat16

``--streams`` client threads keep the engine busy: each submits a request (sampled, ``ignore_eos``, exactly
``--max-tokens`` tokens, its start staggered), waits for its last token and submits the next, as agents of an
asynchronous RL run do. Every ``--every`` seconds a full state dict (float32, as a trainer sends it) is loaded, in
each mode in turn. Per swap:

- ``call s``: how long ``load_state_dict`` took (draining: until every running request ended and the copy ran;
  live: staging the copy on the caller's thread, then the swap);
- ``new request waits s``: the time to first token of a request sent 10 ms after the call began (draining: it is
  not admitted before the running requests have ended);
- ``running gap s``: the longest time between two tokens of a request that was running when the call began;
- ``tokens/s``: generated tokens per second from the call's start to 1 s after it returned.

The same measures without a swap are the baseline (a decode step, an admission). Medians over the swaps; the table
says the machine, and the load average at the start. Last, with the server stopped, the two parts of a live swap
alone: staging (the caller's thread, while generation goes on) and the swap itself (the engine thread, between two
decode steps: all generation waits for it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.console import Console
from rich.table import Table


@dataclass
class _Request:
    submitted: float
    events: list[float] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)


class _Load:
    """``streams`` threads, each keeping one request running on the engine at all times."""

    def __init__(self, server: Any, streams: int, max_tokens: int) -> None:
        from agl_model_server._sampling import SamplingParams

        self.server = server
        self.params = SamplingParams(max_tokens=max_tokens, temperature=1.0, ignore_eos=True)
        self.prompt = server.encode("Tell me a long story about a lighthouse keeper and the sea.")
        self.requests: list[_Request] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._stream, args=(i, streams), daemon=True) for i in range(streams)]

    def _stream(self, index: int, streams: int) -> None:
        time.sleep(index * 0.05)  # staggered, so requests end (and start) at different decode steps
        while not self.stop.is_set():
            request = _Request(time.perf_counter())
            with self.lock:
                self.requests.append(request)

            def sink(event: Any, request: _Request = request) -> None:
                request.events.append(time.perf_counter())
                if event.finish_reason is not None:
                    request.done.set()

            self.server.engine.submit(self.prompt, self.params, sink)
            request.done.wait(600)

    def __enter__(self) -> _Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def probe(self) -> float:
        """Seconds to the first token of one more request, sent now."""
        request = _Request(time.perf_counter())
        first = threading.Event()

        def sink(event: Any) -> None:
            request.events.append(time.perf_counter())
            first.set()

        self.server.engine.submit(self.prompt, self.params.__class__(max_tokens=1), sink)
        first.wait(600)
        return request.events[0] - request.submitted

    def window(self, start: float, end: float) -> tuple[float, float]:
        """(longest gap between two tokens, in [start, end], of the requests running at ``start``; tokens/s
        generated in the window)."""
        longest, tokens = 0.0, 0
        with self.lock:
            requests = list(self.requests)
        for request in requests:
            if request.events and request.events[0] < start and not request.events[-1] < start:
                points = [t for t in request.events if t >= start] + ([] if request.done.is_set() else [end])
                previous = max([t for t in request.events if t < start])
                for a, b in zip([previous, *points], points):
                    longest = max(longest, min(b, end) - max(a, start))
            tokens += sum(start <= t <= end for t in request.events)
        return longest, tokens / (end - start)


def measure(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    from agl_model_server import ModelServer

    if args.quick:
        from agl_model_server.testing import make_tiny_model, make_tiny_tokenizer

        tokenizer = make_tiny_tokenizer()
        model = make_tiny_model(len(tokenizer))
    else:
        from agl_model_server import load_default_model

        model, tokenizer = load_default_model(dtype=args.dtype)
    server = ModelServer(model=model, tokenizer=tokenizer, device=args.device, max_batch_size=64).start()
    trainer_state = {k: v.detach().float().clone() for k, v in model.state_dict().items()}  # what a trainer sends
    rows: dict[str, list[tuple[float, float, float, float]]] = {"baseline": [], "drain": [], "live": []}
    try:
        with _Load(server, args.streams, args.max_tokens) as load:
            time.sleep(args.warmup)
            for round_ in range(args.swaps):
                for mode in ("baseline", "drain", "live"):
                    started = time.perf_counter()
                    swap = threading.Thread(
                        target=server.load_state_dict, args=(trainer_state,), kwargs={"drain": mode == "drain"}
                    )
                    if mode != "baseline":
                        swap.start()
                    time.sleep(0.01)
                    waited = load.probe()
                    if mode != "baseline":
                        swap.join()
                    returned = time.perf_counter() if mode != "baseline" else started
                    time.sleep(1.0)
                    gap, rate = load.window(started, returned + 1.0)
                    rows[mode].append((returned - started, waited, gap, rate))
                    console.print(
                        f"swap {round_ + 1}/{args.swaps} {mode:8s}: call {returned - started:.3f} s, new request "
                        f"waits {waited:.3f} s, running gap {gap:.3f} s, {rate:.0f} tokens/s"
                    )
                    time.sleep(max(0.0, args.every - 1.0))
    finally:
        server.stop()
    from agl_model_server._weights import stage_state_dict

    parts: list[tuple[float, float]] = []
    for _ in range(args.swaps):
        started = time.perf_counter()
        staged = stage_state_dict(model, trainer_state)
        staged_at = time.perf_counter()
        staged.swap(in_place=server.engine.captures_weights)
        parts.append((staged_at - started, time.perf_counter() - staged_at))
    result: dict[str, Any] = {mode: [list(r) for r in values] for mode, values in rows.items()}
    result["parts"] = [list(p) for p in parts]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=16, help="requests kept running at once")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per request")
    parser.add_argument("--swaps", type=int, default=5, help="swaps per mode")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between swaps")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="the served weights' dtype (default: the model's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="the tiny random model, 2 swaps")
    parser.add_argument("--json", action="store_true", help="print the raw numbers as JSON too")
    args = parser.parse_args()
    if args.quick:
        args.swaps, args.warmup, args.every, args.max_tokens = 2, 1.0, 1.2, 64
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console()
    load_before = os.getloadavg()[0]
    rows = measure(args, console)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {os.cpu_count()} cores"
    table = Table(
        title=f"New weights while {args.streams} requests of {args.max_tokens} tokens run "
        f"({'tiny model' if args.quick else 'SmolLM2-135M'}, {device}, load {load_before:.1f}; "
        f"medians of {args.swaps})"
    )
    for column in ("mode", "call s", "new request waits s", "running gap s", "tokens/s"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    names = {
        "baseline": "no swap (same windows)",
        "drain": "drain, copy in place (before)",
        "live": "stage, swap between steps (now)",
    }
    for mode in ("baseline", "drain", "live"):
        values = rows[mode]
        call, waited, gap, rate = (statistics.median(v[i] for v in values) for i in range(4))
        shown = "-" if mode == "baseline" else f"{call:.3f}"
        table.add_row(names[mode], shown, f"{waited:.3f}", f"{gap:.3f}", f"{rate:.0f}")
    console.print(table)
    staging = statistics.median(p[0] for p in rows["parts"])
    swap = statistics.median(p[1] for p in rows["parts"])
    console.print(
        f"a live swap alone (server stopped, median of {args.swaps}): staging {staging:.3f} s on the caller's "
        f"thread, the swap itself {swap * 1000:.2f} ms on the engine thread"
    )
    if args.json:
        print(json.dumps({"load": load_before, "device": device, "args": vars(args), "rows": rows}))


if __name__ == "__main__":
    main()
