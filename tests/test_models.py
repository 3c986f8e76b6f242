"""The data model: exact JSON and msgpack round-trips, resource behaviour, validation."""

from __future__ import annotations

import msgspec
import pytest

from agl_kernel.models import (
    LLM,
    Attempt,
    AttemptedRollout,
    AttemptStatus,
    PaginatedResult,
    PromptTemplate,
    ProxyLLM,
    ResourcesUpdate,
    Rollout,
    RolloutConfig,
    RolloutMode,
    RolloutStatus,
    Span,
    SpanEvent,
    SpanLink,
    SpanStatus,
    Triplet,
    Worker,
    WorkerStatus,
    decode_json,
    decode_msgpack,
    encode_json,
    encode_msgpack,
)

ATTEMPT = Attempt(
    rollout_id="ro-1",
    attempt_id="at-1",
    sequence_id=1,
    start_time=1.5,
    status=AttemptStatus.RUNNING,
    worker_id="w",
    last_heartbeat_time=2.25,
    metadata={"k": [1, 2]},
)
ROLLOUT = Rollout(
    rollout_id="ro-1",
    input={"q": "2+2", "nested": [1, {"a": None}]},
    start_time=1.0,
    end_time=3.0,
    mode=RolloutMode.VAL,
    resources_id="rs-1",
    status=RolloutStatus.SUCCEEDED,
    config=RolloutConfig(
        timeout_seconds=5, unresponsive_seconds=2.5, max_attempts=3, retry_condition=(AttemptStatus.TIMEOUT,)
    ),
    metadata={"tag": "x"},
    attempt_count=1,
)
SAMPLES = [
    ROLLOUT,
    ATTEMPT,
    AttemptedRollout(**msgspec.structs.asdict(ROLLOUT), attempt=ATTEMPT),
    Span(
        rollout_id="ro-1",
        attempt_id="at-1",
        sequence_id=7,
        trace_id="ab" * 16,
        span_id="cd" * 8,
        parent_id="ef" * 8,
        name="openai.chat",
        kind="CLIENT",
        status=SpanStatus(status_code="ERROR", description="boom"),
        attributes={"gen_ai.usage.input_tokens": 12, "ids": [1, 2, 3], "f": 0.1},
        events=[SpanEvent(name="e", timestamp=1.25, attributes={"a": True})],
        links=[SpanLink(trace_id="01" * 16, span_id="02" * 8)],
        start_time=1.0,
        end_time=1.1,
        resource={"service.name": "agent"},
    ),
    ResourcesUpdate(
        resources_id="rs-1",
        version=3,
        create_time=1.0,
        update_time=2.0,
        resources={
            "prompt": PromptTemplate(template="Hi {name}", engine="f-string"),
            "llm": LLM(endpoint="http://127.0.0.1:8000/v1", model="m", sampling_parameters={"temperature": 0.7}),
            "proxy": ProxyLLM(endpoint="http://127.0.0.1:4747", model="m"),
        },
    ),
    Worker(
        worker_id="w",
        status=WorkerStatus.BUSY,
        heartbeat_stats={"cpu": 0.5},
        last_heartbeat_time=1.0,
        current_rollout_id="ro-1",
        current_attempt_id="at-1",
    ),
    Triplet(
        prompt_token_ids=[1, 2],
        response_token_ids=[3],
        prompt_text="p",
        response_text="r",
        response_logprobs=[-0.5],
        reward=1.0,
        rollout_id="ro-1",
        attempt_id="at-1",
        span_id="s",
    ),
]


@pytest.mark.parametrize("value", SAMPLES, ids=lambda v: type(v).__name__)
def test_json_and_msgpack_round_trips_are_exact(value):
    kind = type(value)
    assert decode_json(encode_json(value), kind) == value
    assert decode_msgpack(encode_msgpack(value), kind) == value
    # Types survive too: enums stay enums, resource kinds keep their class.
    assert type(decode_json(encode_json(value), kind)) is kind


def test_resource_union_decodes_to_the_right_class():
    update = SAMPLES[4]
    decoded = decode_json(encode_json(update), ResourcesUpdate)
    assert [type(r) for r in decoded.resources.values()] == [PromptTemplate, LLM, ProxyLLM]


def test_paginated_result_is_generic():
    page = PaginatedResult(items=[ROLLOUT], total=5, limit=1, offset=2)
    assert decode_json(encode_json(page), PaginatedResult[Rollout]) == page


def test_old_data_without_new_fields_still_decodes():
    raw = b'{"rollout_id": "ro-9", "input": 1, "start_time": 2.0}'
    rollout = decode_json(raw, Rollout)
    assert rollout.status is RolloutStatus.QUEUING and rollout.config == RolloutConfig()


def test_invalid_config_is_rejected_with_the_field_named():
    with pytest.raises(msgspec.ValidationError, match="max_attempts"):
        decode_json(b'{"max_attempts": 0}', RolloutConfig)
    with pytest.raises(msgspec.ValidationError, match="timeout_seconds"):
        decode_json(b'{"timeout_seconds": -1}', RolloutConfig)


def test_prompt_template_fstring_and_jinja():
    assert PromptTemplate(template="Hi {name}").format(name="Ada") == "Hi Ada"
    assert PromptTemplate(template="Hi {name} {x}").placeholders == ["name", "x"]
    with pytest.raises(KeyError, match="name"):
        PromptTemplate(template="Hi {name}").format(other=1)
    jinja = PromptTemplate(template="{% for x in xs %}{{ x }},{% endfor %}", engine="jinja")
    assert jinja.format(xs=[1, 2]) == "1,2,"
    with pytest.raises(KeyError, match="xs"):
        jinja.format()


def test_proxy_llm_rewrites_the_endpoint_per_attempt():
    proxy = ProxyLLM(endpoint="http://127.0.0.1:4747/v1", model="m")
    assert proxy.get_base_url("ro-1", "at-2") == "http://127.0.0.1:4747/rollout/ro-1/attempt/at-2/v1"
    with pytest.raises(ValueError, match="rollout_id"):
        proxy.get_base_url()
    assert LLM(endpoint="http://x/v1", model="m").get_base_url("ro", "at") == "http://x/v1"


def test_structs_are_frozen():
    with pytest.raises(AttributeError):
        ROLLOUT.status = RolloutStatus.FAILED  # type: ignore[misc]
