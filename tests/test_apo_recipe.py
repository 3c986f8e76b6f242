"""The APO recipe (contrib/recipes/apo_room_selector.py) end to end against a scripted OpenAI-compatible server on
loopback that plays the agent's model (with real tool calls) and the optimizer; and the agent's reward."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agl_kernel.testing.openai_server import FakeOpenAIServer

CONTRIB = Path(__file__).resolve().parents[1] / "contrib"


@pytest.fixture
def recipe() -> Iterator[Any]:
    paths = [str(CONTRIB / "recipes"), str(CONTRIB / "room_selector")]
    sys.path[:0] = paths
    try:
        import apo_room_selector
        import room_selector

        yield apo_room_selector, room_selector
    finally:
        for path in paths:
            sys.path.remove(path)


def scripted(room_selector: Any) -> Any:
    def reply(request: dict[str, Any]) -> Any:
        messages = request["messages"]
        text = "\n".join(m.get("content") or "" for m in messages if m["role"] in ("system", "user"))
        if request["model"] == "optimizer":
            if "The runs that went worst" in text:
                return "The agent takes a room that is too big or lacks equipment."
            name = re.search(r'Rewrite the prompt template "(\w+)"', text).group(1)  # type: ignore[union-attr]
            parent = re.search(r"<prompt>\n(.*?)\n</prompt>", text, re.DOTALL).group(1)  # type: ignore[union-attr]
            extra = " Pick the smallest free room with the equipment." if name == "system_prompt" else " Be quick."
            return f"<prompt>{parent}{extra}</prompt>"
        date, time, duration = re.search(r"on (\S+) at (\S+) for (\d+) minutes", text).groups()  # type: ignore[union-attr]
        tool_results = [m for m in messages if m["role"] == "tool"]
        if not tool_results:
            return {
                "tool_calls": [
                    {"name": "list_rooms", "arguments": {"date": date, "time": time, "duration_min": int(duration)}}
                ]
            }
        rooms = json.loads(tool_results[-1]["content"])
        attendees = int(re.search(r"for (\d+) people", text).group(1))  # type: ignore[union-attr]
        needs = re.search(r"Needs: (.*?)\.", text).group(1)  # type: ignore[union-attr]
        needs_set = set() if needs == "nothing in particular" else set(needs.split(", "))
        fits = [r for r in rooms if r["free"] and r["capacity"] >= attendees]
        if "smallest" in text:
            fits = sorted((r for r in fits if needs_set <= set(r["equipment"])), key=lambda r: (r["capacity"], r["id"]))
        else:
            fits = sorted(fits, key=lambda r: -r["capacity"])  # the biggest free room: it rarely is the best one
        return f"I checked the calendar.\nROOM: {fits[0]['id'] if fits else 'none'}"

    return reply


def test_room_selector_recipe_improves_the_system_prompt(recipe: Any, tmp_path: Path, monkeypatch: Any) -> None:
    apo_room_selector, room_selector = recipe
    with FakeOpenAIServer(scripted(room_selector)) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("AGL_AGENT_MODEL", "agent")
        monkeypatch.setenv("AGL_OPTIMIZER_MODEL", "optimizer")
        report = apo_room_selector.main(
            [
                "--rounds",
                "2",
                "--beam-width",
                "1",
                "--branch-factor",
                "1",
                "--train-size",
                "6",
                "--val-size",
                "8",
                "--train-batch-size",
                "3",
                "--runners",
                "4",
                "--store-path",
                str(tmp_path / "agl.db"),
                "--output",
                str(tmp_path / "best.json"),
            ]
        )
        critique = next(
            c["request"]["messages"][0]["content"]
            for c in server.calls
            if c["request"]["model"] == "optimizer" and "went worst" in c["request"]["messages"][0]["content"]
        )
    assert report.best_score > report.seed_score
    assert report.best_score == pytest.approx(1.0)
    assert "smallest" in report.best_prompts["system_prompt"]
    # Round 2 edited the other template; its child only ties the parent, and a tie keeps the parent.
    second = {row.candidate: row for row in report.rounds[2]}
    assert second["c2"].template == "request_prompt" and second["c2"].status == "dropped"
    assert report.best_prompts["request_prompt"] == room_selector.SEED_PROMPTS["request_prompt"]
    # The trajectories the optimizer read have the tool call, the tool's output and the answer.
    assert "tool call list_rooms(" in critique and "operation list_rooms(" in critique and "ROOM: " in critique
    assert json.loads((tmp_path / "best.json").read_text())["prompts"] == report.best_prompts


def test_room_reward(recipe: Any) -> None:
    _, room_selector = recipe
    tasks = room_selector.make_dataset(40, seed=3)
    assert tasks == room_selector.make_dataset(40, seed=3)  # deterministic
    for task in tasks:
        best = room_selector.best_room(task)
        if best is None:
            assert room_selector.room_reward(task, "none") == 1.0
            continue
        assert room_selector.room_reward(task, best) == 1.0
        assert room_selector.room_reward(task, "none") == 0.0
        assert room_selector.room_reward(task, None) == 0.0
        rooms = room_selector.list_rooms(task, task["date"], task["time"], task["duration_min"])
        for room in rooms:
            ok = room["free"] and room["capacity"] >= task["attendees"] and set(task["needs"]) <= set(room["equipment"])
            expected = 1.0 if room["id"] == best else 0.5 if ok else 0.0
            assert room_selector.room_reward(task, room["id"]) == expected
    assert room_selector.parse_answer("thinking...\nROOM: b201") == "B201"
    assert room_selector.parse_answer("ROOM: none") == "none"
    assert room_selector.parse_answer("I would take B201") is None
