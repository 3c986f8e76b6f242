"""The dashboard's rollouts page with 10,000 rollouts in the store: how long it takes to load.

    python benchmarks/dashboard_rollouts.py                   # 10,000 rollouts, 7 timed loads per view
    python benchmarks/dashboard_rollouts.py --rollouts 50000 --runs 5 --json

Fills a SQLite store with real store calls: --rollouts rollouts enqueued, a fifth of them run (dequeued, 3 spans
and a reward span each, then succeeded or failed), the rest left queuing. Serves it with the dashboard on 127.0.0.1
(token auth on) and measures

- the page in headless Chromium (Debian's /usr/bin/chromium through playwright-core, the dashboard's own
  frontend/e2e/measure-load.mjs): from navigation to the first 50 rows and the total on screen, for the plain
  list, a status filter, a page deep in the list and a search; the first (cold) load and the median of --runs
  more;
- the JSON route alone (``GET /api/dashboard/rollouts``), median of --runs requests, for the same views.

Needs the built page and the frontend's packages (``make test`` or ``npm ci && npm run build`` in
plugins/agl-dashboard/frontend) and Chromium (``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from agl_kernel.models import AttemptStatus, EnqueueRequest, RolloutMode, Span
from agl_kernel.server import ServerThread, create_app

REPO = Path(__file__).resolve().parents[1]
FRONTEND = REPO / "plugins" / "agl-dashboard" / "frontend"
TOKEN = "bench-token"


async def fill(path: str, n: int) -> None:
    from agl_store_sqlite import SqliteLightningStore

    async with SqliteLightningStore(path) as store:
        modes = [RolloutMode.TRAIN, RolloutMode.TRAIN, RolloutMode.TRAIN, RolloutMode.VAL]
        for start in range(0, n, 1000):
            await store.enqueue_many_rollouts(
                [
                    EnqueueRequest(input={"question": f"({i} + 1) * 2", "answer": (i + 1) * 2}, mode=modes[i % 4])
                    for i in range(start, min(n, start + 1000))
                ]
            )
        for i in range(n // 5):
            taken = await store.dequeue_rollout(worker_id=f"runner-{i % 8}")
            assert taken is not None
            rid, aid = taken.rollout_id, taken.attempt.attempt_id
            root = os.urandom(8).hex()
            now = time.time()
            spans = [
                Span(rollout_id=rid, attempt_id=aid, trace_id="0" * 32, span_id=root, name="agl.attempt",
                     start_time=now, end_time=now + 0.01),
                Span(rollout_id=rid, attempt_id=aid, trace_id="0" * 32, span_id=os.urandom(8).hex(), parent_id=root,
                     name="calculator", start_time=now, end_time=now + 0.005),
                Span(rollout_id=rid, attempt_id=aid, trace_id="0" * 32, span_id=os.urandom(8).hex(),
                     name="agl.reward", attributes={"agl.reward.value": float(i % 2)}, start_time=now, end_time=now),
            ]  # fmt: skip
            await store.add_many_spans(spans)
            status = AttemptStatus.FAILED if i % 10 == 9 else AttemptStatus.SUCCEEDED
            await store.update_attempt(rid, aid, status=status)


VIEWS = [
    ("first page", "#/rollouts", {}),
    ("status filter", "#/rollouts?status=succeeded", {"status": "succeeded"}),
    ("page 100", "#/rollouts?page=100", {"offset": 99 * 50}),
    ("search", "#/rollouts?q=(4242%20%2B", {"q": "(4242 +"}),
]


def api_times(url: str, runs: int) -> dict[str, float]:
    result = {}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        for name, _, params in VIEWS:
            times = []
            for _ in range(runs + 1):
                started = time.perf_counter()
                answer = client.get("/api/dashboard/rollouts", params={"limit": 50, **params})
                times.append((time.perf_counter() - started) * 1000)
                answer.raise_for_status()
            result[name] = statistics.median(times[1:])
    return result


def browser_times(url: str, runs: int) -> dict[str, dict]:
    env = {**os.environ, "AGL_E2E_URL": url, "AGL_E2E_TOKEN": TOKEN, "AGL_BENCH_RUNS": str(runs)}
    out = subprocess.run(
        ["node", "e2e/measure-load.mjs", *(route for _, route, _ in VIEWS)],
        cwd=FRONTEND, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        sys.exit(f"the browser measurement failed:\n{out.stdout}\n{out.stderr}")
    by_route = {json.loads(line)["route"]: json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")}
    return {name: by_route[route] for name, route, _ in VIEWS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from agl_dashboard import assets_built, dashboard_routes
    from agl_store_sqlite import SqliteLightningStore

    if not assets_built():
        sys.exit("the dashboard's page is not built: cd plugins/agl-dashboard/frontend && npm ci && npm run build")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "agl.db")
        started = time.perf_counter()
        asyncio.run(fill(path, args.rollouts))
        fill_s = time.perf_counter() - started
        app = create_app(SqliteLightningStore(path), token=TOKEN, plugins=False, route_handlers=dashboard_routes())
        with ServerThread(app) as server:
            api = api_times(server.url, args.runs)
            browser = browser_times(server.url, args.runs)
    result = {
        "rollouts": args.rollouts,
        "fill_s": round(fill_s, 1),
        "views": {
            name: {
                "page_cold_ms": browser[name]["cold_ms"],
                "page_median_ms": statistics.median(browser[name]["runs_ms"]),
                "page_runs_ms": browser[name]["runs_ms"],
                "api_median_ms": round(api[name], 1),
            }
            for name, _, _ in VIEWS
        },
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.rollouts} rollouts (filled in {fill_s:.1f} s); page load in headless Chromium, median of {args.runs}")
    print(f"{'view':<15} {'page cold':>10} {'page median':>12} {'API median':>11}")
    for name, row in result["views"].items():
        print(f"{name:<15} {row['page_cold_ms']:>8} ms {row['page_median_ms']:>9} ms {row['api_median_ms']:>8} ms")


if __name__ == "__main__":
    main()
