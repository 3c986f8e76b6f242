"""Span names and attribute keys agl itself writes, defined once (the ``agl.*`` namespace)."""

REWARD_SPAN = "agl.reward"
"""A span carrying a reward; its value sits in the :data:`REWARD_VALUE` attribute."""
REWARD_VALUE = "agl.reward.value"
EXCEPTION_SPAN = "agl.exception"
"""A span recording an exception raised by agent code (``exception.type`` / ``exception.message`` attributes)."""
EXCEPTION_TYPE = "exception.type"
EXCEPTION_MESSAGE = "exception.message"
EXCEPTION_STACKTRACE = "exception.stacktrace"
ERROR_TYPE = "error.type"
"""On a failed call's span: the class of the error (OpenTelemetry's ``error.type``)."""

# Where a span belongs. Set as OpenTelemetry *resource* or *span* attributes by tracers and by agents in other
# languages that send OTLP to the store server's ``/v1/traces``; the server maps them onto the Span fields.
ROLLOUT_ID = "agl.rollout_id"
ATTEMPT_ID = "agl.attempt_id"
SEQUENCE_ID = "agl.sequence_id"
"""Optional: the server allocates the next sequence id of the attempt when a span does not carry one."""

# ------------------------------------------------------------------------------------------------ rewards
# A reward is an ``agl.reward`` span. ``agl.reward.value`` always holds the primary value, so readers that only
# know plain rewards keep working. Named rewards (``emit_reward({"accuracy": 1.0, "length": 0.2}, primary=...)``)
# add one ``agl.reward.values.<name>`` attribute each and name the primary one in ``agl.reward.primary``.
REWARD_NAMED_PREFIX = "agl.reward.values."
REWARD_PRIMARY = "agl.reward.primary"
REWARD_STEP_SPAN_ID = "agl.reward.step_span_id"
"""Per-step credit: the span id of the step (an LLM call or an operation) the reward is for. A reward without it
is a reward of the whole rollout; the last such reward of an attempt is its final reward. A reward for an
operation applies to every LLM call inside that operation."""

# ------------------------------------------------------------------------------------------------ emitters
ATTEMPT_SPAN = "agl.attempt"
"""The root span a tracer opens around an attempt (all of the attempt's spans share its trace)."""
MESSAGE_SPAN = "agl.message"
MESSAGE_BODY = "agl.message.body"
OBJECT_SPAN = "agl.object"
OBJECT_JSON = "agl.object.json"
"""The object as JSON (objects JSON cannot express are stored as their ``repr``, see :data:`OBJECT_TYPE`)."""
OBJECT_TYPE = "agl.object.type"
OPERATION_NAME = "agl.operation.name"
"""Set on the span of an ``operation`` (decorator or context manager); the span is named after it too."""
OPERATION_INPUT = "agl.operation.input"
"""The operation's inputs as JSON (a function's bound arguments by name)."""
OPERATION_OUTPUT = "agl.operation.output"

# ------------------------------------------------------------------------------------------------ LLM calls
# OpenTelemetry GenAI semantic conventions (https://opentelemetry.io/docs/specs/semconv/gen-ai/) where they name a
# field. A span is an LLM call when it has GEN_AI_OPERATION_NAME in LLM_OPERATIONS: spans of other GenAI
# instrumentations (other languages too, through OTLP) are read the same way.
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
LLM_OPERATIONS = frozenset({"chat", "text_completion", "generate_content"})
GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
GEN_AI_AGENT_NAME = "gen_ai.agent.name"
"""On an LLM call or any ancestor span (``operation(agent=...)``): which agent made the call; the triplet
adapter's ``agent_match`` selects calls by it."""
GEN_AI_CONVERSATION_ID = "gen_ai.conversation.id"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_REQUEST_TEMPERATURE = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P = "gen_ai.request.top_p"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_STOP_SEQUENCES = "gen_ai.request.stop_sequences"
GEN_AI_REQUEST_SEED = "gen_ai.request.seed"
GEN_AI_REQUEST_FREQUENCY_PENALTY = "gen_ai.request.frequency_penalty"
GEN_AI_REQUEST_PRESENCE_PENALTY = "gen_ai.request.presence_penalty"
GEN_AI_REQUEST_CHOICE_COUNT = "gen_ai.request.choice.count"
GEN_AI_REQUEST_STREAM = "gen_ai.request.stream"
GEN_AI_RESPONSE_ID = "gen_ai.response.id"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_INPUT_MESSAGES = "gen_ai.input.messages"
"""JSON: the request's messages in the GenAI message format (``role`` + ``parts``); see :mod:`agl_kernel.genai`."""
GEN_AI_OUTPUT_MESSAGES = "gen_ai.output.messages"
"""JSON: one output message per choice (``role``, ``parts``, ``finish_reason``)."""
GEN_AI_SYSTEM_INSTRUCTIONS = "gen_ai.system_instructions"
GEN_AI_TOOL_DEFINITIONS = "gen_ai.tool.definitions"
"""JSON: the tools offered to the model, as the request gave them."""
# What the GenAI conventions have no name for: the training-grade record of a call.
LLM_PROMPT_TOKEN_IDS = "agl.llm.prompt_token_ids"
"""The prompt's token ids, as the server returned them (vLLM: ``prompt_token_ids`` with ``return_token_ids``)."""
LLM_RESPONSE_TOKEN_IDS = "agl.llm.response_token_ids"
"""The token ids of the first choice (vLLM: ``choices[0].token_ids``)."""
LLM_RESPONSE_LOGPROBS = "agl.llm.response_logprobs"
"""The log probability of each response token of the first choice."""
LLM_PROMPT_TEXT = "agl.llm.prompt_text"
"""The prompt of a text completion (``completions.create(prompt=...)``)."""
LLM_RESPONSE_TEXT = "agl.llm.response_text"
"""The text of the first choice."""
LLM_REQUEST_PARAMS = "agl.llm.request.params"
"""JSON: the request's other parameters (those without a GenAI attribute), for replaying or auditing the call."""
LLM_RESPONSE_CAPTURED = "agl.llm.response_captured"
"""``False`` when the call's response could not be read (e.g. ``with_streaming_response``), with a reason in
:data:`LLM_NOT_CAPTURED_REASON`."""
LLM_NOT_CAPTURED_REASON = "agl.llm.not_captured_reason"
# Set by the LLM proxy on the spans of the calls it forwards.
LLM_BACKEND = "agl.llm.backend"
"""The base URL of the backend that answered the call."""
LLM_LATENCY_SECONDS = "agl.llm.latency_seconds"
"""Seconds from forwarding the call to its end (a stream's last chunk)."""
RESOURCES_ID = "agl.resources.id"
RESOURCES_VERSION = "agl.resources.version"
"""The resources the call's rollout runs with: their ``resources_id`` and that update's version."""
