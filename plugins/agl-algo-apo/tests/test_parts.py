"""APO's parts on their own: the beam selection, the checks of an edited prompt, the trajectory text, and the search's
pure steps (children, batches, scores, a round's rows, spans and metrics) without a store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agl_algo_apo import (
    APO,
    Candidate,
    CandidateRecord,
    OptimizerError,
    check_edit,
    pareto_front,
    render_trajectory,
    select_beam,
)
from agl_algo_apo._algorithm import Proposal, Rejected, Search, examples, outcome_score, template_names
from agl_algo_apo._optimizer import load_template
from agl_algo_apo._report import round_metrics, round_rows, span_attributes
from agl_kernel import semconv
from agl_kernel.algorithm import RolloutOutcome
from agl_kernel.errors import AglError, ConfigError
from agl_kernel.models import PromptTemplate, ResourcesUpdate, Span

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


# ---------------------------------------------------------------------------------------------------- the search's
# pure steps, without a store: the search object is built on a store it never touches here


def outcome(reward: float | None, status: str = "succeeded") -> RolloutOutcome:
    return RolloutOutcome(rollout_id=f"ro-{reward}-{status}", input=None, status=status, reward=reward, attempts=1)


def search(**options: Any) -> Search:
    apo = APO(console=False, output_path=None, optimizer_base_url="http://127.0.0.1:9/v1", **options)
    prompts = {"style": PromptTemplate(template="Be brief."), "instructions": PromptTemplate(template="Do {x}.")}
    base = ResourcesUpdate(resources_id="seed", version=1, create_time=0.0, update_time=0.0, resources=prompts)
    return Search(apo, None, base, train=list(range(5)), val=list(range(4)))  # type: ignore[arg-type]


def test_scores_and_the_examples_the_critique_reads() -> None:
    assert outcome_score(outcome(0.5)) == 0.5
    assert outcome_score(outcome(1.0, "failed")) == 0.0 and outcome_score(outcome(None)) == 0.0
    runs = [(task, outcome(reward)) for task, reward in enumerate([0.2, 1.0, 0.0, 0.7, None])]
    worst, best = examples(runs, 2)
    assert [task for task, _ in worst] == [2, 4] and [task for task, _ in best] == [1, 3]
    worst, best = examples(runs[:3], 2)  # too few runs: the best are the ones left over
    assert [task for task, _ in worst] == [2, 0] and [task for task, _ in best] == [1]


def test_children_are_numbered_in_order_and_repeats_are_rejected() -> None:
    s = search(branch_factor=3)
    edited = PromptTemplate(template="Do {x}, carefully.")
    proposals: list[list[Proposal]] = [
        [("instructions", edited), Rejected("style", "the edited prompt is empty"), ("instructions", edited)]
    ]
    children, rejected = s.children(1, proposals)
    assert [(c.candidate_id, c.parent, c.edited, c.round) for c in children] == [("c1", "c0", "instructions", 1)]
    assert children[0].prompts == {"style": s.seed.prompts["style"], "instructions": edited}
    assert [(r.candidate, r.template, r.status, r.reason) for r in rejected] == [
        ("c2", "style", "rejected", "the edited prompt is empty"),
        ("c3", "instructions", "rejected", "the same prompts as candidate c1"),
    ]
    same_as_seed = [[("style", s.seed.prompts["style"])]]
    assert s.children(2, same_as_seed)[1][0].reason == "the same prompts as candidate c0"  # c4: the seed again


def test_batches_walk_the_shuffled_training_set_and_sample_validation() -> None:
    s = search(train_batch_size=3, val_batch_size=2, seed=7)
    walked = s.train_batch(1) + s.train_batch(2)
    assert sorted(walked[:5]) == [0, 1, 2, 3, 4] and walked[5] == walked[0]  # every task, then around again
    batch = s.val_batch()
    assert len(batch) == 2 and batch == sorted(batch) and set(batch) <= {0, 1, 2, 3}
    assert search(val_batch_size=10).val_batch() == [0, 1, 2, 3]  # larger than the set: all of it


def test_a_round_is_recorded_as_rows_spans_and_metrics() -> None:
    parent = Candidate("c0", {"p": PromptTemplate(template="seed")}, round=0, scores={0: 0.0, 1: 1.0})
    child = Candidate("c1", {"p": PromptTemplate(template="edit")}, 1, "c0", edited="p", scores={0: 1.0, 1: 1.0})
    rejected = CandidateRecord(
        round=1, candidate="c2", parent="c0", template="p", score=None, status="rejected", reason="no <prompt>"
    )
    rows = round_rows(1, [parent, child], [child], [0, 1], [rejected])
    assert [(r.candidate, r.status, r.score) for r in rows] == [
        ("c1", "beam", 1.0),
        ("c0", "dropped", 0.5),
        ("c2", "rejected", None),  # the rejected last, whatever their number
    ]
    assert round_metrics(rows, best_score=0.75, calls=3) == {
        "best_score": 1.0,
        "mean_score": 0.75,
        "best_full_score": 0.75,
        "candidates": 3.0,
        "rejected": 1.0,
        "optimizer_calls": 3.0,
    }
    assert span_attributes(rows[0], child) == {
        "agl.apo.round": 1,
        "agl.apo.candidate": "c1",
        "agl.apo.parent": "c0",
        "agl.apo.template": "p",
        "agl.apo.score": 1.0,
        "agl.apo.status": "beam",
        "agl.apo.prompt": "edit",
    }
    assert span_attributes(rows[2], None) == {  # rejected: no score and no prompt, but why
        "agl.apo.round": 1,
        "agl.apo.candidate": "c2",
        "agl.apo.parent": "c0",
        "agl.apo.template": "p",
        "agl.apo.status": "rejected",
        "agl.apo.reason": "no <prompt>",
    }
    two = Candidate("c0", {"a": PromptTemplate(template="A"), "b": PromptTemplate(template="B")}, round=0)
    seed_row = CandidateRecord(round=0, candidate="c0", parent=None, template=None, score=0.0, status="seed")
    assert span_attributes(seed_row, two)["agl.apo.prompt"] == "[a]\nA\n\n[b]\nB"  # the seed: all its templates


def test_errors_a_user_sees_are_agl_errors(tmp_path: Path) -> None:
    assert issubclass(OptimizerError, AglError)
    with pytest.raises(ConfigError, match=r"^algorithm\.templates names 'nope'.*\(their prompt templates: p\)"):
        template_names({"p": PromptTemplate(template="x")}, ["nope"])
    with pytest.raises(ConfigError, match="no PromptTemplate"):
        template_names({}, None)
    (tmp_path / "edit.md").write_text("Edit {prompt} of {mood}")
    with pytest.raises(ConfigError, match=r"^algorithm\.edit_template: uses \{mood\}"):
        load_template(tmp_path / "edit.md", "edit")
    with pytest.raises(ConfigError, match=r"^algorithm\.critique_template: cannot read"):
        load_template(tmp_path / "missing.md", "critique")
