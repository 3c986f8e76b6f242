"""The dashboard in a real browser: headless Chromium (Debian's ``chromium``, driven by ``playwright-core``) against
a real store server on 127.0.0.1 whose store was filled by real runs (see conftest.py), with token auth on.
The browser side is ``frontend/e2e/run.mjs``; this test starts the server, tells it what the page must show, and
does what it asks for while the page is open (add a rollout, stop the server).

Needs the built page, node with the frontend's packages and /usr/bin/chromium (``make test`` provides them and sets
AGL_DASHBOARD_E2E=1, which turns a missing piece into a failure instead of a skip). Set AGL_DASHBOARD_SCREENSHOTS=DIR
to keep the screenshots (``docs/dashboard`` regenerates the documentation's).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from agl_dashboard import assets_built, dashboard_routes
from agl_kernel import semconv
from agl_kernel.server import ServerThread, create_app

FRONTEND = Path(__file__).resolve().parents[1] / "frontend"
CHROMIUM = os.environ.get("AGL_E2E_CHROMIUM", "/usr/bin/chromium")
TOKEN = "e2e-token"


def _missing() -> list[str]:
    missing = []
    if not assets_built():
        missing.append("the built page (cd plugins/agl-dashboard/frontend && npm ci && npm run build)")
    if shutil.which("node") is None:
        missing.append("node")
    if not (FRONTEND / "node_modules" / "playwright-core").is_dir():
        missing.append("the frontend's packages (npm ci in plugins/agl-dashboard/frontend)")
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"{CHROMIUM} (apt-get install -y chromium)")
    return missing


@pytest.fixture(scope="module")
def browser_ready() -> None:
    missing = _missing()
    if missing:
        message = "the dashboard's browser test needs " + ", ".join(missing)
        if os.environ.get("AGL_DASHBOARD_E2E") == "1":
            pytest.fail(message)
        pytest.skip(message)


async def _expectations(db: Path) -> dict:
    from agl_store_sqlite import SqliteLightningStore

    async with SqliteLightningStore(db) as store:
        rollouts = (await store.query_rollouts()).items
        expect: dict = {
            "total": len(rollouts),
            "statuses": {r.rollout_id: r.status.value for r in rollouts},
            "counts": {"failed": sum(r.status.value == "failed" for r in rollouts)},
            "workers": (await store.query_workers()).total,
            "prompt_id": "calc-prompt",
            "steps": 0,
        }
        for rollout in rollouts:
            spans = (await store.query_spans(rollout.rollout_id, "latest")).items if rollout.attempt_count else []
            ids = {span.span_id for span in spans}
            if "nested" not in expect and any(span.parent_id in ids for span in spans):
                expect["nested"] = {
                    "rollout_id": rollout.rollout_id,
                    "spans": [{"span_id": s.span_id, "parent_id": s.parent_id, "name": s.name} for s in spans],
                }
            llm = [s for s in spans if s.attributes.get(semconv.GEN_AI_OPERATION_NAME) == "chat"]
            if "llm" not in expect and llm:
                tokens = llm[0].attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS]
                expect["llm"] = {"rollout_id": rollout.rollout_id, "input_tokens": tokens}
            if rollout.metadata.get("algorithm") == "apo":
                candidates = (await store.query_spans(rollout.rollout_id, name="agl.apo.candidate")).items
                expect["apo"] = {
                    "rollout_id": rollout.rollout_id,
                    "candidates": len(candidates),
                    "rejected": sum(s.attributes.get("agl.apo.status") == "rejected" for s in candidates),
                }
            elif rollout.metadata.get("kind") == "training-metrics":
                expect["steps"] = len((await store.query_spans(rollout.rollout_id, name="agl.training.step")).items)
                expect["validations"] = len(
                    (await store.query_spans(rollout.rollout_id, name="agl.training.validation")).items
                )
    return expect


@pytest.mark.slow
def test_dashboard_in_chromium(browser_ready: None, filled_store: Path, tmp_path: Path) -> None:
    expect = asyncio.run(_expectations(filled_store))
    assert expect["counts"]["failed"] >= 1 and "nested" in expect
    from agl_store_sqlite import SqliteLightningStore

    app = create_app(SqliteLightningStore(filled_store), token=TOKEN, plugins=False, route_handlers=dashboard_routes())
    server = ServerThread(app).start()
    shots = os.environ.get("AGL_DASHBOARD_SCREENSHOTS") or str(tmp_path / "screenshots")
    env = {
        **os.environ,
        "AGL_E2E_URL": server.url,
        "AGL_E2E_TOKEN": TOKEN,
        "AGL_E2E_EXPECT": json.dumps(expect),
        "AGL_E2E_SCREENSHOTS": os.path.abspath(shots),
        "AGL_E2E_CHROMIUM": CHROMIUM,
    }
    node = subprocess.Popen(
        ["node", "e2e/run.mjs"], cwd=FRONTEND, env=env, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log: list[str] = []
    try:
        assert node.stdout is not None and node.stdin is not None
        for line in node.stdout:
            log.append(line.rstrip())
            print(line.rstrip(), flush=True)  # shown live with -s, and in the report of a failure
            if line.startswith("STEP add-rollout"):
                answer = httpx.post(
                    f"{server.url}/api/v1/rollouts",
                    json={"input": {"question": "1 + 1", "answer": 2}, "mode": "train"},
                    headers={"Authorization": f"Bearer {TOKEN}"},
                )
                assert answer.status_code == 201, answer.text
            elif line.startswith("STEP stop-server"):
                server.stop()
            else:
                continue
            node.stdin.write("OK\n")
            node.stdin.flush()
        node.wait(timeout=120)
    finally:
        if node.poll() is None:
            node.kill()
        server.stop()
    assert node.returncode == 0 and "E2E PASSED" in log, "the browser checks failed:\n" + "\n".join(log[-30:])
    for name in ("rollouts", "rollout", "resources", "workers", "training", "llm-calls"):
        assert (Path(shots) / f"{name}.png").stat().st_size > 10_000
