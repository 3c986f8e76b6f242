"""The data model shared by every part of agl, defined once.

All types are frozen ``msgspec.Struct`` s: stores hand them out without copying, and they round-trip exactly
through JSON and msgpack (see :func:`encode_json` / :func:`decode_json` and the msgpack pair). New fields are only
ever added at the end, with defaults, so data written by an older version still decodes.

Treat the dicts inside these structs (``metadata``, ``attributes``) as read-only: to change a stored object, call
the store's ``update_*`` method, or make a modified copy with :func:`msgspec.structs.replace`.
"""

from __future__ import annotations

import enum
import string
from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec

__all__ = [
    "FINAL_ATTEMPT_STATUSES",
    "LLM",
    "PROXY_ATTEMPT_PATH",
    "TERMINAL_ROLLOUT_STATUSES",
    "Attempt",
    "AttemptStatus",
    "AttemptedRollout",
    "EnqueueRequest",
    "PaginatedResult",
    "PromptTemplate",
    "ProxyLLM",
    "Resource",
    "ResourcesUpdate",
    "Rollout",
    "RolloutConfig",
    "RolloutMode",
    "RolloutStatus",
    "Span",
    "SpanEvent",
    "SpanLink",
    "SpanStatus",
    "StoreCapabilities",
    "StoreStatistics",
    "Triplet",
    "Worker",
    "WorkerStatus",
    "decode_json",
    "decode_msgpack",
    "encode_json",
    "encode_msgpack",
]

T = TypeVar("T")


class _Struct(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """Base of every agl struct: immutable, keyword-only.

    Subclasses inherit both, and repeat ``frozen=True, kw_only=True`` for type checkers, which read a struct's
    options (``dataclass_transform``) from its own class keywords only.
    """


# ---------------------------------------------------------------------------------------------------- statuses


class RolloutStatus(str, enum.Enum):
    QUEUING = "queuing"
    PREPARING = "preparing"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REQUEUING = "requeuing"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_ROLLOUT_STATUSES


class AttemptStatus(str, enum.Enum):
    PREPARING = "preparing"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMEOUT = "timeout"
    UNRESPONSIVE = "unresponsive"

    @property
    def is_final(self) -> bool:
        return self in FINAL_ATTEMPT_STATUSES


class RolloutMode(str, enum.Enum):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"


class WorkerStatus(str, enum.Enum):
    IDLE = "idle"
    BUSY = "busy"
    UNRESPONSIVE = "unresponsive"


TERMINAL_ROLLOUT_STATUSES = frozenset({RolloutStatus.SUCCEEDED, RolloutStatus.FAILED, RolloutStatus.CANCELLED})
"""A rollout in one of these has ended; only an explicit re-queue (``update_rollout``) moves it again."""

FINAL_ATTEMPT_STATUSES = frozenset({AttemptStatus.SUCCEEDED, AttemptStatus.FAILED, AttemptStatus.TIMEOUT})
"""An attempt never leaves these. ``unresponsive`` is not final: a late heartbeat revives the attempt."""


# ---------------------------------------------------------------------------------------------------- rollouts

PositiveSeconds = Annotated[float, msgspec.Meta(gt=0)]

DEFAULT_UNRESPONSIVE_SECONDS = 30.0
"""``RolloutConfig.unresponsive_seconds`` by default: six missed heartbeats of the kernel's runner (5 s apart)."""
DEFAULT_MAX_ATTEMPTS = 3
"""``RolloutConfig.max_attempts`` by default: the first attempt and two retries."""


class RolloutConfig(_Struct, frozen=True, kw_only=True):
    """How the store supervises a rollout's attempts.

    - ``timeout_seconds``: an attempt running longer than this (from its start) becomes ``timeout``
      (default ``None``: no limit).
    - ``unresponsive_seconds``: an attempt with no heartbeat (span or ``update_attempt``) for this long becomes
      ``unresponsive`` (default 30 s; the kernel's runner beats every 5 s, and at least three times per window, so
      only a runner that died, hung or lost the store for that long misses it; ``None`` turns the check off).
    - ``max_attempts``: attempts allowed in all, the first included (default 3; 1 = never retry).
    - ``retry_condition``: the attempt statuses that trigger a retry while attempts are left.

    The defaults recover from a lost runner: its attempt turns ``unresponsive`` within 30 s and the rollout is
    retried on another runner, up to twice. A late result of the abandoned attempt is kept as its own but no
    longer changes the rollout.
    """

    timeout_seconds: PositiveSeconds | None = None
    unresponsive_seconds: PositiveSeconds | None = DEFAULT_UNRESPONSIVE_SECONDS
    max_attempts: Annotated[int, msgspec.Meta(ge=1)] = DEFAULT_MAX_ATTEMPTS
    retry_condition: tuple[AttemptStatus, ...] = (
        AttemptStatus.FAILED,
        AttemptStatus.TIMEOUT,
        AttemptStatus.UNRESPONSIVE,
    )


class Rollout(_Struct, frozen=True, kw_only=True):
    """One task to run: its input, the resources it uses and where it stands."""

    rollout_id: str
    input: Any
    start_time: float
    """When the rollout was created (enqueued or started)."""
    end_time: float | None = None
    """When it reached a terminal status; ``None`` while it has not."""
    mode: RolloutMode | None = None
    resources_id: str | None = None
    status: RolloutStatus = RolloutStatus.QUEUING
    config: RolloutConfig = RolloutConfig()
    metadata: dict[str, Any] = {}
    attempt_count: int = 0
    """How many attempts the rollout has had so far."""


class Attempt(_Struct, frozen=True, kw_only=True):
    """One try at running a rollout, by one worker."""

    rollout_id: str
    attempt_id: str
    sequence_id: int
    """1 for the first attempt of a rollout, 2 for the retry after it, ..."""
    start_time: float
    end_time: float | None = None
    status: AttemptStatus = AttemptStatus.PREPARING
    worker_id: str | None = None
    last_heartbeat_time: float | None = None
    metadata: dict[str, Any] = {}


class AttemptedRollout(Rollout, frozen=True, kw_only=True):
    """A rollout together with the attempt a worker should now run."""

    attempt: Attempt


class EnqueueRequest(_Struct, frozen=True, kw_only=True):
    """One item of :meth:`LightningStore.enqueue_many_rollouts`."""

    input: Any
    mode: RolloutMode | None = None
    resources_id: str | None = None
    config: RolloutConfig | None = None
    metadata: dict[str, Any] | None = None


# ---------------------------------------------------------------------------------------------------- spans


class SpanStatus(_Struct, frozen=True, kw_only=True):
    status_code: Literal["UNSET", "OK", "ERROR"] = "UNSET"
    description: str | None = None


class SpanEvent(_Struct, frozen=True, kw_only=True):
    name: str
    timestamp: float | None = None
    attributes: dict[str, Any] = {}


class SpanLink(_Struct, frozen=True, kw_only=True):
    trace_id: str
    span_id: str
    attributes: dict[str, Any] = {}


class Span(_Struct, frozen=True, kw_only=True):
    """An OpenTelemetry span, tagged with the rollout and attempt it belongs to.

    ``sequence_id`` orders spans within an attempt; leave it 0 and the store assigns the next one.
    Times are seconds since the epoch; ids are lowercase hex as in OTLP/JSON.
    """

    rollout_id: str
    attempt_id: str
    sequence_id: int = 0
    trace_id: str
    span_id: str
    parent_id: str | None = None
    name: str
    kind: Literal["INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER"] = "INTERNAL"
    status: SpanStatus = SpanStatus()
    attributes: dict[str, Any] = {}
    events: list[SpanEvent] = []
    links: list[SpanLink] = []
    start_time: float | None = None
    end_time: float | None = None
    resource: dict[str, Any] = {}
    """Attributes of the OTel resource that produced the span (service name, ...)."""


# ---------------------------------------------------------------------------------------------------- resources


class PromptTemplate(_Struct, frozen=True, tag="prompt_template", tag_field="resource_type", kw_only=True):
    """A prompt with placeholders, rendered by :meth:`format`.

    ``engine="f-string"`` uses :meth:`str.format` placeholders (``{name}``); ``engine="jinja"`` uses Jinja2
    (install the ``jinja`` extra: ``pip install 'agl-kernel[jinja]'``).
    """

    template: str
    engine: Literal["f-string", "jinja"] = "f-string"

    def format(self, **kwargs: Any) -> str:
        if self.engine == "jinja":
            try:
                import jinja2
            except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
                from agl_kernel.errors import MissingDependencyError

                raise MissingDependencyError(
                    "PromptTemplate(engine='jinja') needs Jinja2: pip install 'agl-kernel[jinja]'"
                ) from exc
            env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
            try:
                return env.from_string(self.template).render(**kwargs)
            except jinja2.UndefinedError as exc:
                raise KeyError(f"prompt template needs a value the call did not give: {exc}") from exc
        try:
            return self.template.format(**kwargs)
        except KeyError as exc:
            given = ", ".join(sorted(kwargs)) or "none"
            raise KeyError(f"prompt template needs {{{exc.args[0]}}}; values given: {given}") from exc

    @property
    def placeholders(self) -> list[str]:
        """The names the template expects (f-string engine only)."""
        if self.engine != "f-string":
            raise ValueError("placeholders are only listed for the f-string engine")
        return [name for _, name, _, _ in string.Formatter().parse(self.template) if name]


class LLM(_Struct, frozen=True, tag="llm", tag_field="resource_type", kw_only=True):
    """An OpenAI-compatible model endpoint and how to sample from it."""

    endpoint: str
    model: str
    sampling_parameters: dict[str, Any] = {}
    api_key: str | None = None

    def get_base_url(self, rollout_id: str | None = None, attempt_id: str | None = None) -> str:
        return self.endpoint


PROXY_ATTEMPT_PATH = "/rollout/{rollout_id}/attempt/{attempt_id}/v1"
"""Where the LLM proxy serves an attempt's OpenAI-compatible API, under the store server's URL."""


class ProxyLLM(LLM, frozen=True, tag="proxy_llm", tag_field="resource_type", kw_only=True):
    """An LLM reached through agl's proxy: the endpoint is rewritten per rollout and attempt, so that the proxy
    can attribute every call to them (``{endpoint}`` + :data:`PROXY_ATTEMPT_PATH`)."""

    def get_base_url(self, rollout_id: str | None = None, attempt_id: str | None = None) -> str:
        if rollout_id is None or attempt_id is None:
            raise ValueError("ProxyLLM.get_base_url needs both rollout_id and attempt_id")
        base = self.endpoint.rstrip("/")
        if base.endswith("/v1"):
            base = base[: -len("/v1")]
        return base + PROXY_ATTEMPT_PATH.format(rollout_id=rollout_id, attempt_id=attempt_id)


Resource = PromptTemplate | LLM | ProxyLLM


class ResourcesUpdate(_Struct, frozen=True, kw_only=True):
    """A named set of resources, versioned: every update of a ``resources_id`` stores a new version."""

    resources_id: str
    version: int
    create_time: float
    update_time: float
    resources: dict[str, Resource]


# ---------------------------------------------------------------------------------------------------- workers


class Worker(_Struct, frozen=True, kw_only=True):
    worker_id: str
    status: WorkerStatus = WorkerStatus.IDLE
    heartbeat_stats: dict[str, Any] = {}
    last_heartbeat_time: float | None = None
    last_dequeue_time: float | None = None
    last_busy_time: float | None = None
    last_idle_time: float | None = None
    current_rollout_id: str | None = None
    current_attempt_id: str | None = None


# ---------------------------------------------------------------------------------------------------- training data


class Triplet(_Struct, frozen=True, kw_only=True):
    """One training example: a prompt, the model's response and the reward it earned."""

    prompt_token_ids: list[int] = []
    response_token_ids: list[int] = []
    prompt_text: str | None = None
    response_text: str | None = None
    response_logprobs: list[float] | None = None
    reward: float | None = None
    rollout_id: str | None = None
    attempt_id: str | None = None
    span_id: str | None = None
    metadata: dict[str, Any] = {}
    step_reward: float | None = None
    """The sum of the per-step rewards given to this LLM call (or to an operation around it), if any."""
    final_reward: float | None = None
    """The attempt's final reward, when the adapter applies it to this triplet. ``reward`` is the sum of the two."""
    response_mask: list[int] | None = None
    """For merged calls: 1 for each response token the model generated, 0 for the tokens in between (tool
    results, user turns) that continue the conversation; ``None`` when every response token is the model's."""


# ---------------------------------------------------------------------------------------------------- queries


class PaginatedResult(_Struct, Generic[T], frozen=True, kw_only=True):
    """One page of a query: ``items`` after sort, offset and limit; ``total`` counts every match."""

    items: list[T]
    total: int
    limit: int | None = None
    offset: int = 0


class StoreStatistics(_Struct, frozen=True, kw_only=True):
    total_rollouts: int
    rollouts_by_status: dict[str, int]
    total_attempts: int
    attempts_by_status: dict[str, int]
    total_spans: int
    queue_depth: int
    total_resources: int
    total_workers: int


class StoreCapabilities(_Struct, frozen=True, kw_only=True):
    """What a store backend can do; the conformance suite and callers check these instead of the type."""

    thread_safe: bool = False
    """Usable from several threads at once (each with its own event loop)."""
    async_safe: bool = True
    """Usable from many asyncio tasks at once."""
    durable: bool = False
    """Acknowledged writes survive a crash of the process."""
    multi_process: bool = False
    """Several processes may share it (each opening it), with exactly-once dequeue between them."""
    remote: bool = False
    """Reached over a network."""


# ---------------------------------------------------------------------------------------------------- codecs

_json_encoder = msgspec.json.Encoder()
_msgpack_encoder = msgspec.msgpack.Encoder()


def encode_json(obj: Any) -> bytes:
    return _json_encoder.encode(obj)


def decode_json(data: bytes | str, type: Any = Any) -> Any:
    return msgspec.json.decode(data, type=type)


def encode_msgpack(obj: Any) -> bytes:
    return _msgpack_encoder.encode(obj)


def decode_msgpack(data: bytes, type: Any = Any) -> Any:
    return msgspec.msgpack.decode(data, type=type)
