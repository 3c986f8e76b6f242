"""The dashboard's read routes on a real server (127.0.0.1) over a real store: paging, filters, search, a
rollout's trace, training runs (GRPO and the APO layout), auth, bad input, and the page when it is not built."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import agl_dashboard._routes as routes
from agl_dashboard import dashboard_routes
from agl_kernel.models import AttemptStatus, RolloutStatus, Span
from agl_kernel.server import ServerThread, create_app
from agl_kernel.store.memory import InMemoryLightningStore

TOKEN = "api-token"


def _span(rollout_id: str, attempt_id: str, name: str, *, parent: str | None = None, **attributes) -> Span:
    now = time.time()
    return Span(
        rollout_id=rollout_id, attempt_id=attempt_id, trace_id="ab" * 16, span_id=os.urandom(8).hex(),
        parent_id=parent, name=name, attributes=attributes, start_time=now, end_time=now + 0.01,
    )  # fmt: skip


async def _fill(store: InMemoryLightningStore) -> dict[str, str]:
    ids = {}
    for i in range(60):
        rollout = await store.enqueue_rollout({"question": f"q{i}", "needle": "findme" if i == 7 else ""}, mode="train")
        ids.setdefault("first", rollout.rollout_id)
        ids[f"q{i}"] = rollout.rollout_id
    done = await store.start_rollout({"question": "traced"}, mode="val", worker_id="w-1")
    root = _span(done.rollout_id, done.attempt.attempt_id, "agl.attempt")
    child = _span(done.rollout_id, done.attempt.attempt_id, "calculator", parent=root.span_id)
    chat = _span(
        done.rollout_id, done.attempt.attempt_id, "chat policy", parent=root.span_id,
        **{"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 12, "gen_ai.usage.output_tokens": 3,
           "gen_ai.input.messages": '[{"role":"user","parts":[{"type":"text","content":"hi"}]}]',
           "agl.llm.response_text": "hello", "agl.llm.prompt_token_ids": [1, 2, 3]},
    )  # fmt: skip
    step = _span(done.rollout_id, done.attempt.attempt_id, "agl.reward", **{
        "agl.reward.value": 0.5, "agl.reward.step_span_id": chat.span_id})  # fmt: skip
    final = _span(done.rollout_id, done.attempt.attempt_id, "agl.reward", **{"agl.reward.value": 1.0})
    await store.add_many_spans([root, child, chat, step, final])
    await store.update_attempt(done.rollout_id, done.attempt.attempt_id, status=AttemptStatus.SUCCEEDED)
    ids["traced"] = done.rollout_id
    # An APO run as the APO plugin records it: one step span per round, one span per evaluated candidate.
    run = await store.start_rollout(
        {"kind": "training-metrics", "algorithm": "apo"}, metadata={"kind": "training-metrics", "algorithm": "apo"}
    )
    spans = []
    for round_ in (1, 2):
        spans.append(_span(run.rollout_id, run.attempt.attempt_id, "agl.training.step", **{
            "agl.training.step": round_, "agl.training.metric.best_score": 0.5 * round_,
            "agl.training.metric.mean_score": 0.25 * round_}))  # fmt: skip
        for candidate in ("a", "b"):
            spans.append(_span(run.rollout_id, run.attempt.attempt_id, "agl.apo.candidate", **{
                "agl.apo.round": round_, "agl.apo.candidate": f"{round_}{candidate}", "agl.apo.parent": "c0",
                "agl.apo.template": "instructions", "agl.apo.prompt": f"Solve {{question}} ({candidate})",
                "agl.apo.score": 0.1 * round_,
                "agl.apo.status": "beam" if candidate == "a" else "dropped"}))  # fmt: skip
        spans.append(_span(run.rollout_id, run.attempt.attempt_id, "agl.apo.candidate", **{
            "agl.apo.round": round_, "agl.apo.candidate": f"{round_}c", "agl.apo.parent": "c0",
            "agl.apo.template": "instructions", "agl.apo.status": "rejected",
            "agl.apo.reason": "the edited prompt drops the required variable(s) question"}))  # fmt: skip
    await store.add_many_spans(spans)
    ids["apo"] = run.rollout_id
    await store.update_worker("w-1", heartbeat_stats={"cpu_percent": 12.5})
    return ids


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, dict[str, str]]]:
    store = InMemoryLightningStore()
    ids = asyncio.run(_fill(store))
    app = create_app(store, token=TOKEN, plugins=False, route_handlers=dashboard_routes())
    with ServerThread(app) as server:
        yield server.url, ids


def get(url: str, path: str, **params) -> httpx.Response:
    return httpx.get(f"{url}{path}", params=params, headers={"Authorization": f"Bearer {TOKEN}"})


def test_rollouts_are_paged_and_filtered_on_the_server(served) -> None:
    url, ids = served
    page = get(url, "/api/dashboard/rollouts", limit=10, offset=0).json()
    assert page["total"] == 62 and len(page["items"]) == 10 and page["all_rollouts"] == 62
    assert page["items"][0]["rollout"]["rollout_id"] == ids["apo"]  # newest first
    assert page["counts"]["queuing"] == 60
    last = get(url, "/api/dashboard/rollouts", limit=10, offset=60).json()
    assert [row["rollout"]["rollout_id"] for row in last["items"]] == [ids["q1"], ids["q0"]]
    queued = get(url, "/api/dashboard/rollouts", status="queuing", limit=500).json()
    assert queued["total"] == 60 and {row["rollout"]["status"] for row in queued["items"]} == {"queuing"}
    both = httpx.get(f"{url}/api/dashboard/rollouts?status=queuing&status=succeeded", headers={
        "Authorization": f"Bearer {TOKEN}"}).json()  # fmt: skip
    assert both["total"] == 61  # the APO run is still going
    val = get(url, "/api/dashboard/rollouts", mode="val").json()
    assert [row["rollout"]["rollout_id"] for row in val["items"]] == [ids["traced"]]
    assert val["items"][0]["reward"] == 1.0 and val["items"][0]["latest_attempt"]["worker_id"] == "w-1"


def test_search_matches_ids_inputs_and_metadata(served) -> None:
    url, ids = served
    found = get(url, "/api/dashboard/rollouts", q="FINDME").json()
    assert [row["rollout"]["rollout_id"] for row in found["items"]] == [ids["q7"]] and found["total"] == 1
    by_id = get(url, "/api/dashboard/rollouts", q=ids["q3"][-6:]).json()
    assert ids["q3"] in [row["rollout"]["rollout_id"] for row in by_id["items"]]
    assert get(url, "/api/dashboard/rollouts", q="apo", status="succeeded").json()["total"] == 0  # APO run: running


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"status": "bogus"}, "unknown rollout status 'bogus'"),
        ({"mode": "eval"}, "unknown mode 'eval'"),
        ({"limit": 0}, "limit must be between 1 and 500"),
        ({"limit": 501}, "limit must be between 1 and 500"),
        ({"offset": -1}, "offset must be 0 or more"),
        ({"sort_by": "reward"}, "cannot sort rollouts by 'reward'"),
        ({"sort_order": "up"}, "sort_order must be 'asc' or 'desc'"),
        ({"limit": "ten"}, "limit"),
    ],
)
def test_bad_queries_get_a_400_that_says_why(served, params, message) -> None:
    url, _ = served
    answer = get(url, "/api/dashboard/rollouts", **params)
    assert answer.status_code == 400 and message in answer.text


def test_a_rollout_with_its_trace_llm_calls_and_rewards(served) -> None:
    url, ids = served
    detail = get(url, f"/api/dashboard/rollouts/{ids['traced']}").json()
    assert detail["rollout"]["status"] == RolloutStatus.SUCCEEDED.value
    assert [a["worker_id"] for a in detail["attempts"]] == ["w-1"]
    names = {span["name"]: span for span in detail["spans"]}
    assert names["calculator"]["parent_id"] == names["agl.attempt"]["span_id"]
    [call] = detail["llm_calls"]
    assert call["input_tokens"] == 12 and call["output_tokens"] == 3 and call["response_text"] == "hello"
    assert call["input_messages"][0]["parts"][0]["content"] == "hi" and call["prompt_token_ids"] == 3
    assert [r["value"] for r in detail["rewards"]] == [0.5, 1.0] and detail["final_reward"] == 1.0
    assert detail["rewards"][0]["step_span_id"] == call["span_id"]
    queued = get(url, f"/api/dashboard/rollouts/{ids['q0']}").json()
    assert queued["attempts"] == [] and queued["spans"] == [] and queued["attempt_id"] is None
    missing = get(url, "/api/dashboard/rollouts/ro-nope")
    assert missing.status_code == 404 and "ro-nope" in missing.json()["message"]
    wrong_attempt = get(url, f"/api/dashboard/rollouts/{ids['traced']}", attempt="at-nope")
    assert wrong_attempt.status_code == 404


def test_training_runs_with_apo_candidates(served) -> None:
    url, ids = served
    [run] = get(url, "/api/dashboard/training").json()["runs"]
    assert run["rollout_id"] == ids["apo"] and run["algorithm"] == "apo"
    assert [(p["step"], p["metrics"]["best_score"]) for p in run["steps"]] == [(1, 0.5), (2, 1.0)]
    assert [c["candidate"] for c in run["candidates"]] == ["1a", "1b", "1c", "2a", "2b", "2c"]
    first = run["candidates"][0]
    assert first["template"] == "instructions" and first["prompt"] == "Solve {question} (a)"
    assert first["status"] == "beam" and run["candidates"][4]["round"] == 2
    assert run["candidates"][2]["status"] == "rejected" and "drops the required" in run["candidates"][2]["reason"]
    assert run["candidates"][2]["score"] is None


def test_workers_and_resources(served) -> None:
    url, _ = served
    workers = get(url, "/api/dashboard/workers").json()
    assert workers["workers"][0]["worker_id"] == "w-1" and workers["workers"][0]["heartbeat_stats"]["cpu_percent"]
    assert workers["now"] >= workers["workers"][0]["last_heartbeat_time"]
    assert get(url, "/api/dashboard/resources").json() == {"versions": [], "latest": None}


def test_data_needs_the_token_and_the_page_does_not(served) -> None:
    url, _ = served
    for path in ("/api/dashboard/rollouts", "/api/dashboard/training", "/api/dashboard/workers"):
        assert httpx.get(url + path).status_code == 401
        assert httpx.get(url + path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    page = httpx.get(url + "/")
    assert page.status_code in (200, 503) and "text/html" in page.headers["content-type"]


def test_the_page_says_how_to_build_it_when_it_is_not_built(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(routes, "STATIC_DIR", tmp_path)
    app = create_app(InMemoryLightningStore(), plugins=False, route_handlers=dashboard_routes())
    with ServerThread(app) as server:
        page = httpx.get(server.url + "/")
    assert page.status_code == 503 and "npm ci &amp;&amp; npm run build" in page.text
    assert not routes.assets_built()


def test_installed_plugin_adds_its_routes_to_every_server() -> None:
    """Through the entry point and the ``agl_register_routes`` hook, as ``agl store serve`` builds its app."""
    with ServerThread(create_app(InMemoryLightningStore())) as server:
        assert httpx.get(server.url + "/api/dashboard/workers").json()["workers"] == []
