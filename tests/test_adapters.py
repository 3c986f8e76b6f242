"""The kernel's adapters (triplets, messages) on spans as tracers store them, and the GenAI message conversion."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agl_kernel import semconv
from agl_kernel.adapters import CallReason, MessagesAdapter, TripletAdapter
from agl_kernel.genai import to_genai_messages, to_openai_messages
from agl_kernel.models import Span, SpanStatus
from agl_kernel.plugins import create_component


class Trace:
    """Builds one attempt's spans the way the tracers write them."""

    def __init__(self) -> None:
        self.spans: list[Span] = []

    def add(self, name: str, attributes: dict[str, Any], parent: str | None = None, error: bool = False) -> str:
        span_id = f"{len(self.spans) + 1:016x}"
        self.spans.append(
            Span(
                rollout_id="r1",
                attempt_id="a1",
                sequence_id=len(self.spans) + 1,
                trace_id="f" * 32,
                span_id=span_id,
                parent_id=parent,
                name=name,
                attributes=attributes,
                status=SpanStatus(status_code="ERROR", description="HTTP 500") if error else SpanStatus(),
            )
        )
        return span_id

    def llm(self, prompt: list[int] | None, response: list[int] | None, *, parent=None, error=False, **extra):
        attributes: dict[str, Any] = {
            semconv.GEN_AI_OPERATION_NAME: "chat",
            semconv.GEN_AI_REQUEST_MODEL: "m",
            semconv.GEN_AI_INPUT_MESSAGES: json.dumps([{"role": "user", "parts": [{"type": "text", "content": "q"}]}]),
            semconv.GEN_AI_OUTPUT_MESSAGES: json.dumps(
                [{"role": "assistant", "parts": [{"type": "text", "content": "a"}], "finish_reason": "stop"}]
            ),
            **extra,
        }
        if prompt is not None:
            attributes[semconv.LLM_PROMPT_TOKEN_IDS] = prompt
        if response is not None:
            attributes[semconv.LLM_RESPONSE_TOKEN_IDS] = response
            attributes[semconv.LLM_RESPONSE_LOGPROBS] = [-0.5] * len(response)
        return self.add("chat m", attributes, parent, error)

    def reward(self, value: float, step: str | None = None) -> str:
        attributes: dict[str, Any] = {semconv.REWARD_VALUE: value}
        if step is not None:
            attributes[semconv.REWARD_STEP_SPAN_ID] = step
        return self.add(semconv.REWARD_SPAN, attributes)

    def operation(self, name: str, agent: str | None = None, parent: str | None = None) -> str:
        attributes = {semconv.OPERATION_NAME: name}
        if agent:
            attributes[semconv.GEN_AI_AGENT_NAME] = agent
        return self.add(name, attributes, parent)


def test_triplets_carry_token_ids_logprobs_text_and_the_final_reward_on_all():
    trace = Trace()
    first = trace.llm([1, 2, 3], [4, 5])
    trace.llm([6], [7, 8, 9])
    trace.reward(1.0)
    result = TripletAdapter().adapt(trace.spans)
    assert [(t.prompt_token_ids, t.response_token_ids) for t in result.triplets] == [
        ([1, 2, 3], [4, 5]),
        ([6], [7, 8, 9]),
    ]
    assert [t.reward for t in result.triplets] == [1.0, 1.0]
    assert [t.final_reward for t in result.triplets] == [1.0, 1.0]
    one = result.triplets[0]
    assert one.response_logprobs == [-0.5, -0.5] and one.span_id == first and one.rollout_id == "r1"
    assert one.prompt_text == "user: q" and one.response_text == "a" and one.metadata["model"] == "m"
    assert result.why() == [] and result.final_reward == 1.0
    assert [c.triplet for c in result.calls] == [0, 1]


def test_per_step_rewards_land_on_their_calls_and_operations_share_theirs():
    trace = Trace()
    plan = trace.operation("plan")
    a = trace.llm([1], [2], parent=plan)
    b = trace.llm([3], [4], parent=plan)
    c = trace.llm([5], [6])
    trace.reward(0.5, step=plan)  # credit for both calls inside the operation
    trace.reward(0.25, step=c)
    trace.reward(0.125, step=c)
    trace.reward(1.0)
    triplets = TripletAdapter().adapt(trace.spans).triplets
    assert [t.span_id for t in triplets] == [a, b, c]
    assert [t.step_reward for t in triplets] == [0.5, 0.5, 0.375]
    assert [t.reward for t in triplets] == [1.5, 1.5, 1.375]
    last = TripletAdapter(final_reward="last").adapt(trace.spans).triplets
    assert [(t.step_reward, t.final_reward, t.reward) for t in last] == [
        (0.5, None, 0.5),
        (0.5, None, 0.5),
        (0.375, 1.0, 1.375),
    ]


def test_final_reward_last_or_none_leaves_unrewarded_calls_out_with_the_reason():
    trace = Trace()
    trace.llm([1], [2])
    trace.llm([3], [4])
    trace.reward(1.0)
    result = TripletAdapter(final_reward="last").adapt(trace.spans)
    assert [t.prompt_token_ids for t in result.triplets] == [[3]]
    assert result.calls[0].reason is CallReason.NO_REWARD and "'last' triplets" in result.calls[0].detail
    kept = TripletAdapter(final_reward="none", require_reward=False).adapt(trace.spans)
    assert [t.reward for t in kept.triplets] == [None, None]


def test_a_rollout_without_token_ids_says_why_per_call():
    trace = Trace()
    trace.llm(None, None)
    trace.llm([1, 2], None)
    trace.reward(1.0)
    result = TripletAdapter().adapt(trace.spans)
    assert result.triplets == []
    assert [c.reason for c in result.calls] == [CallReason.NO_TOKEN_IDS, CallReason.NO_TOKEN_IDS]
    assert "no prompt or response token ids were captured" in result.calls[0].detail
    assert "no response token ids" in result.calls[1].detail
    assert all("return_token_ids" in line for line in result.why())


def test_reasons_for_failed_filtered_and_unrewarded_calls_and_empty_attempts():
    trace = Trace()
    solver = trace.operation("solve", agent="solver")
    trace.llm([1], [2], parent=solver)
    trace.llm([3], [4], error=True)
    trace.llm([5], [6], **{semconv.GEN_AI_AGENT_NAME: "critic"})
    trace.llm([7], [])
    result = TripletAdapter(agent_match="^solv").adapt(trace.spans)
    assert [c.reason for c in result.calls] == [
        CallReason.NO_REWARD,
        CallReason.CALL_FAILED,
        CallReason.FILTERED_OUT,
        CallReason.FILTERED_OUT,
    ]
    assert result.calls[0].agent == "solver"
    assert "HTTP 500" in result.calls[1].detail
    assert "its agent 'critic'" in result.calls[2].detail and "no agent name" in result.calls[3].detail
    assert "the attempt has no reward" in result.problems[0]
    nothing = TripletAdapter().adapt([])
    assert nothing.why() == ["the attempt has no spans at all: did it run, and was it traced?"]
    rewarded_only = Trace()
    rewarded_only.reward(1.0, step="00000000000000aa")
    why = TripletAdapter().adapt(rewarded_only.spans).why()
    assert "no LLM call was recorded" in why[0] and "00000000000000aa" in why[1]
    with pytest.raises(ValueError, match="not a valid regular expression"):
        TripletAdapter(agent_match="(")


def test_merge_joins_calls_whose_tokens_continue_each_other():
    trace = Trace()
    a = trace.llm([1, 2], [3, 4])
    b = trace.llm([1, 2, 3, 4, 9, 9], [5])  # the tool's answer (9, 9) sits between the two responses
    c = trace.llm([1, 2, 3, 4, 9, 9, 5, 7], [8])
    trace.llm([100], [101])  # a new conversation
    trace.reward(2.0, step=b)
    trace.reward(1.0)
    result = TripletAdapter(merge=True).adapt(trace.spans)
    merged, other = result.triplets
    assert merged.prompt_token_ids == [1, 2]
    assert merged.response_token_ids == [3, 4, 9, 9, 5, 7, 8]
    assert merged.response_mask == [1, 1, 0, 0, 1, 0, 1]
    assert merged.response_logprobs == [-0.5, -0.5, 0.0, 0.0, -0.5, 0.0, -0.5]
    assert merged.metadata["span_ids"] == [a, b, c] and merged.step_reward == 2.0 and merged.reward == 3.0
    assert other.prompt_token_ids == [100] and other.response_mask is None and other.reward == 1.0
    assert [c.reason for c in result.calls] == [None, CallReason.MERGED, CallReason.MERGED, None]
    assert len(TripletAdapter().adapt(trace.spans).triplets) == 4  # merging is opt-in


def test_only_the_last_attempts_spans_are_used():
    old = Trace()
    old.llm([1], [2])
    new = Trace()
    new.llm([3], [4])
    new.reward(1.0)
    spans = [s.__class__(**{**_fields(s), "attempt_id": "a0"}) for s in old.spans] + new.spans
    assert [t.prompt_token_ids for t in TripletAdapter().adapt(spans).triplets] == [[3]]


def _fields(span: Span) -> dict[str, Any]:
    return {f: getattr(span, f) for f in span.__struct_fields__}


def test_messages_adapter_gives_openai_format_samples_with_rewards():
    trace = Trace()
    tools = [{"type": "function", "function": {"name": "calc", "parameters": {}}}]
    call = trace.llm(None, None, **{semconv.GEN_AI_TOOL_DEFINITIONS: json.dumps(tools)})
    trace.llm([1], [2], error=True)
    trace.reward(0.5, step=call)
    trace.reward(1.0)
    [sample] = MessagesAdapter().adapt(trace.spans)
    assert sample.messages == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert sample.tools == tools and sample.reward == 1.5 and sample.span_id == call
    assert MessagesAdapter(agent_match="nobody").adapt(trace.spans) == []


def test_adapters_are_registered_by_name():
    assert isinstance(create_component("adapters", "triplets", merge=True), TripletAdapter)
    assert isinstance(create_component("adapters", "messages"), MessagesAdapter)


def test_genai_messages_round_trip_text_tools_and_images():
    messages = [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "http://i/1.png"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "look", "arguments": '{"x": 1}'}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "a cat"},
        {"role": "assistant", "content": "A cat.", "name": "bot"},
    ]
    genai = to_genai_messages(messages)
    assert genai[2]["parts"] == [{"type": "tool_call", "id": "c1", "name": "look", "arguments": {"x": 1}}]
    assert genai[3] == {"role": "tool", "parts": [{"type": "tool_call_response", "id": "c1", "response": "a cat"}]}
    back = to_openai_messages(genai)
    assert back[0] == messages[0] and back[3] == messages[3] and back[4] == messages[4]
    assert back[1]["content"][1] == messages[1]["content"][1]
    assert json.loads(back[2]["tool_calls"][0]["function"]["arguments"]) == {"x": 1}
