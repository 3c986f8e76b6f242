"""APO's parts on their own: the beam selection, the checks of an edited prompt, the trajectory text."""

from __future__ import annotations

import json

import pytest

from agl_algo_apo import Candidate, check_edit, pareto_front, render_trajectory, select_beam
from agl_kernel import semconv
from agl_kernel.models import PromptTemplate, Span

TASKS = [0, 1, 2, 3]


def candidate(name: str, scores: list[float]) -> Candidate:
    return Candidate(name, {"p": PromptTemplate(template=name)}, round=0, scores=dict(enumerate(scores)))


def test_pareto_keeps_a_candidate_that_is_best_somewhere() -> None:
    strong = candidate("strong", [1, 1, 1, 0])
    twin = candidate("twin", [1, 1, 1, 0])
    specialist = candidate("specialist", [0, 0, 0, 1])
    weak = candidate("weak", [1, 0, 0, 0])  # best nowhere alone, and dominated by strong
    pool = [strong, twin, specialist, weak]
    assert [c.candidate_id for c in pareto_front(pool, TASKS)] == ["strong", "specialist"]
    assert [c.candidate_id for c in select_beam(pool, TASKS, 2, pareto=True)] == ["strong", "specialist"]
    assert [c.candidate_id for c in select_beam(pool, TASKS, 2, pareto=False)] == ["strong", "twin"]
    # A wider beam fills up by mean; a narrower one keeps the front's best by mean.
    assert [c.candidate_id for c in select_beam(pool, TASKS, 3, pareto=True)] == ["strong", "twin", "specialist"]
    assert [c.candidate_id for c in select_beam(pool, TASKS, 1, pareto=True)] == ["strong"]


def test_ties_keep_the_older_candidate() -> None:
    parent, child = candidate("parent", [1, 0, 1, 0]), candidate("child", [1, 0, 1, 0])
    assert select_beam([parent, child], TASKS, 1, pareto=True) == [parent]
    assert select_beam([parent, child], TASKS, 1, pareto=False) == [parent]


def test_check_edit() -> None:
    original = PromptTemplate(template="Answer {question} for {user}.")
    assert check_edit(original, "Think, then answer {question} for {user}.").template.startswith("Think")
    with pytest.raises(ValueError, match="drops the required variable.*question"):
        check_edit(original, "Answer for {user}.")
    with pytest.raises(ValueError, match="adds variable.*mood"):
        check_edit(original, "Answer {question} for {user} in a {mood} way.")
    with pytest.raises(ValueError, match="does not parse"):
        check_edit(original, "Answer {question for {user}.")
    with pytest.raises(ValueError, match="same as its parent"):
        check_edit(original, "  Answer {question} for {user}.  ")
    with pytest.raises(ValueError, match="empty"):
        check_edit(original, "   ")
    jinja = PromptTemplate(template="Answer {{ question }}.", engine="jinja")
    assert check_edit(jinja, "Please answer {{ question }}.").engine == "jinja"
    with pytest.raises(ValueError, match="drops the required variable"):
        check_edit(jinja, "Please answer.")


def _span(sequence: int, name: str, attributes: dict, span_id: str, parent: str | None = None) -> Span:
    return Span(
        rollout_id="ro-1",
        attempt_id="at-1",
        sequence_id=sequence,
        trace_id="t",
        span_id=span_id,
        parent_id=parent,
        name=name,
        attributes=attributes,
    )


def test_trajectory_reads_calls_tools_and_errors() -> None:
    first_input = [{"role": "user", "parts": [{"type": "text", "content": "Book a room for 4."}]}]
    first_output = [
        {
            "role": "assistant",
            "parts": [{"type": "tool_call", "name": "list_rooms", "arguments": {"date": "d"}, "id": "c1"}],
        }
    ]
    second_input = (
        first_input
        + first_output
        + [{"role": "tool", "parts": [{"type": "tool_call_response", "id": "c1", "response": "[A101 free]"}]}]
    )
    second_output = [{"role": "assistant", "parts": [{"type": "text", "content": "ROOM: A101"}]}]
    spans = [
        _span(
            1,
            "chat m",
            {
                semconv.GEN_AI_OPERATION_NAME: "chat",
                semconv.GEN_AI_INPUT_MESSAGES: json.dumps(first_input),
                semconv.GEN_AI_OUTPUT_MESSAGES: json.dumps(first_output),
            },
            "s1",
        ),
        _span(
            2,
            "list_rooms",
            {
                semconv.OPERATION_NAME: "list_rooms",
                semconv.OPERATION_INPUT: '{"date": "d"}',
                semconv.OPERATION_OUTPUT: '"[A101 free]"',
            },
            "s2",
        ),
        _span(
            3,
            "chat m",
            {
                semconv.GEN_AI_OPERATION_NAME: "chat",
                semconv.GEN_AI_INPUT_MESSAGES: json.dumps(second_input),
                semconv.GEN_AI_OUTPUT_MESSAGES: json.dumps(second_output),
            },
            "s3",
        ),
        _span(
            4, semconv.EXCEPTION_SPAN, {semconv.EXCEPTION_TYPE: "ValueError", semconv.EXCEPTION_MESSAGE: "late"}, "s4"
        ),
    ]
    text = render_trajectory(spans, task={"id": 7}, reward=0.5, status="succeeded")
    lines = text.splitlines()
    assert lines[0] == 'Task: {"id": 7}'
    assert lines[1] == "user: Book a room for 4."
    assert lines[2].startswith("assistant → tool call list_rooms(")
    assert lines[3] == 'operation list_rooms({"date": "d"}) → "[A101 free]"'
    assert lines[4].startswith("tool: ")  # the second call adds only what is new: the tool result and the reply
    assert lines[5] == "assistant: ROOM: A101"
    assert lines[6] == "error: ValueError: late"
    assert lines[7] == "Outcome: succeeded, reward 0.5"
    assert render_trajectory([], task="t", reward=None, status="failed").endswith(
        "(no LLM call or operation was recorded)\nOutcome: failed, reward none"
    )
    long = render_trajectory(spans * 1, task="x" * 10_000, reward=1.0, status="succeeded", max_chars=500)
    assert len(long) <= 520 and long.endswith("Outcome: succeeded, reward 1")
