"""Request and response bodies of the store's REST API, shared by the server and :mod:`agl_kernel.client`.

Results are the kernel's own structs (``Rollout``, ``Span``, ``PaginatedResult[...]``, ...); only the arguments of
the store methods get a shape of their own here. Unknown fields are refused (a typo gets a 400 naming it). Query
fields carry the store contract's own rules (sort fields from :data:`~agl_kernel.store.base.SORT_FIELDS`, ``asc`` or
``desc``, non-negative 64-bit limit and offset), so that the decoder refuses what a store would, the server answers
such a body with the error ``InvalidQueryError`` (the client raises it, as a store does), and the OpenAPI document,
which is msgspec's own schema of these structs, says exactly what is accepted. Importing this module needs msgspec
only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from agl_kernel.models import (
    AttemptStatus,
    EnqueueRequest,
    Resource,
    RolloutConfig,
    RolloutMode,
    RolloutStatus,
    Span,
    WorkerStatus,
)
from agl_kernel.store.base import SORT_FIELDS

API_PREFIX = "/api/v1"
"""Every store route lives under this prefix (``/v1/...`` belongs to OTLP and the OpenAI-style proxy)."""

MAX_WAIT_SECONDS = 60.0
"""The longest a long-poll request is held open; clients that want longer ask again."""

NonNegativeSeconds = Annotated[float, msgspec.Meta(ge=0, description="Seconds; 0 = do not wait.")]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""The integers a store keeps as numbers (SQLite's, and the memory store refuses what SQLite would)."""

Limit = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX, description="At most this many items; null: all of them.")]
Offset = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX, description="Items to skip (after sorting).")]
SortOrder = Literal["asc", "desc"]


def _sort_field(collection: str) -> Any:
    """The fields a query of ``collection`` may sort by, as a ``Literal`` (from the store contract's table)."""
    return Literal[tuple(sorted(SORT_FIELDS[collection]))]


if TYPE_CHECKING:  # a Literal built at run time is no type to a checker: it sees the str the store methods take
    RolloutSortField = str
    AttemptSortField = str
    SpanSortField = str
    ResourcesSortField = str
    WorkerSortField = str
else:
    RolloutSortField = _sort_field("rollouts")
    AttemptSortField = _sort_field("attempts")
    SpanSortField = _sort_field("spans")
    ResourcesSortField = _sort_field("resources")
    WorkerSortField = _sort_field("workers")


class _Body(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Base of every request body: keyword-only, unknown fields refused. Subclasses repeat ``frozen=True,
    kw_only=True`` for type checkers, which read a struct's options from its own class keywords only."""


class _Query(_Body, frozen=True, kw_only=True):
    """Base of the query bodies: a body that fails validation is an invalid query (``InvalidQueryError``)."""


# ---------------------------------------------------------------------------------------------------- rollouts


class EnqueueManyBody(_Body, frozen=True, kw_only=True):
    requests: list[EnqueueRequest]


class StartRolloutBody(EnqueueRequest, frozen=True, kw_only=True):
    """An :class:`EnqueueRequest` plus the worker that takes the rollout's first attempt."""

    worker_id: str | None = None


class DequeueBody(_Body, frozen=True, kw_only=True):
    worker_id: str | None = None
    timeout: NonNegativeSeconds = 0.0
    """Seconds to hold the request open while the queue is empty (capped by the server's ``max_wait``)."""


class DequeueManyBody(_Body, frozen=True, kw_only=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=INT64_MAX)]
    worker_id: str | None = None
    timeout: NonNegativeSeconds = 0.0


class WaitBody(_Body, frozen=True, kw_only=True):
    rollout_ids: list[str]
    timeout: NonNegativeSeconds | None = None
    """``None`` waits as long as the server holds a request (``max_wait``); the client asks again until done."""


class DeleteBody(_Body, frozen=True, kw_only=True):
    rollout_ids: list[str] | None = None
    ended_before: float | None = None


class DeletedCount(_Body, frozen=True, kw_only=True):
    deleted: int


class RolloutQuery(_Query, frozen=True, kw_only=True):
    status_in: list[RolloutStatus] | None = None
    rollout_id_in: list[str] | None = None
    mode_in: list[RolloutMode] | None = None
    sort_by: RolloutSortField | None = None
    sort_order: SortOrder = "asc"
    limit: Limit | None = None
    offset: Offset = 0


class RolloutPatch(_Body, frozen=True, kw_only=True):
    """Fields to change; a field left out is left alone (``null`` is a value: it clears ``mode``/``resources_id``)."""

    status: RolloutStatus | UnsetType = UNSET
    mode: RolloutMode | UnsetType | None = UNSET
    resources_id: str | UnsetType | None = UNSET
    config: RolloutConfig | UnsetType = UNSET
    metadata: dict[str, Any] | UnsetType = UNSET


# ---------------------------------------------------------------------------------------------------- attempts


class StartAttemptBody(_Body, frozen=True, kw_only=True):
    worker_id: str | None = None


class AttemptQuery(_Query, frozen=True, kw_only=True):
    status_in: list[AttemptStatus] | None = None
    sort_by: AttemptSortField | None = None
    sort_order: SortOrder = "asc"
    limit: Limit | None = None
    offset: Offset = 0


class AttemptPatch(_Body, frozen=True, kw_only=True):
    """Fields to change; every PATCH of an attempt is also a heartbeat."""

    status: AttemptStatus | UnsetType = UNSET
    worker_id: str | UnsetType | None = UNSET
    last_heartbeat_time: float | UnsetType = UNSET
    metadata: dict[str, Any] | UnsetType = UNSET


class SequenceIdsBody(_Body, frozen=True, kw_only=True):
    count: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]


# ---------------------------------------------------------------------------------------------------- spans


class SpanBatch(_Body, frozen=True, kw_only=True):
    spans: list[Span]


class SpanQuery(_Query, frozen=True, kw_only=True):
    attempt_id: str | None = None
    name: str | None = None
    sort_by: SpanSortField | None = None
    sort_order: SortOrder = "asc"
    limit: Limit | None = None
    offset: Offset = 0


class ErrorBody(_Body, frozen=True, kw_only=True, omit_defaults=True):
    """What every 4xx/5xx response carries. ``error`` is a stable code: the kernel error's class name
    (``NotFoundError``, ``InvalidStatusTransitionError``, ``InvalidQueryError``, ...) or ``invalid_request``,
    ``unauthorized``, ``not_found``, ``method_not_allowed``, ``internal``, ..."""

    error: str
    message: Annotated[str, msgspec.Meta(min_length=1)]
    status: int
    error_id: str | None = None
    """Only on 500: quote it to find the traceback in the server's log."""
    details: list[dict[str, Any]] | None = None


# ---------------------------------------------------------------------------------------------------- resources


class ResourcesBody(_Body, frozen=True, kw_only=True):
    resources: dict[str, Resource]


class ResourcesQuery(_Query, frozen=True, kw_only=True):
    resources_id: str | None = None
    sort_by: ResourcesSortField | None = None
    sort_order: SortOrder = "asc"
    limit: Limit | None = None
    offset: Offset = 0


# ---------------------------------------------------------------------------------------------------- workers


class WorkerHeartbeat(_Body, frozen=True, kw_only=True):
    heartbeat_stats: dict[str, Any] | UnsetType = UNSET


class WorkerQuery(_Query, frozen=True, kw_only=True):
    status_in: list[WorkerStatus] | None = None
    sort_by: WorkerSortField | None = None
    sort_order: SortOrder = "asc"
    limit: Limit | None = None
    offset: Offset = 0


# ---------------------------------------------------------------------------------------------------- batch
# ``POST /api/v1/batch`` runs several short store calls in one request, concurrently, each with its own result or
# error. The client sends the calls its tasks make while earlier requests are on the wire together, so that many
# concurrent workers cost few requests. Waiting calls are not allowed in a batch (they would hold up the others).


class _Op(_Body, frozen=True, kw_only=True, tag_field="op"):
    pass


class EnqueueRolloutOp(_Op, frozen=True, kw_only=True, tag="enqueue_rollout"):
    request: EnqueueRequest


class DequeueRolloutOp(_Op, frozen=True, kw_only=True, tag="dequeue_rollout"):
    worker_id: str | None = None


class AddSpanOp(_Op, frozen=True, kw_only=True, tag="add_span"):
    span: Span


class UpdateAttemptOp(_Op, frozen=True, kw_only=True, tag="update_attempt"):
    rollout_id: str
    attempt_id: str
    patch: AttemptPatch


class UpdateWorkerOp(_Op, frozen=True, kw_only=True, tag="update_worker"):
    worker_id: str
    heartbeat: WorkerHeartbeat


class GetRolloutOp(_Op, frozen=True, kw_only=True, tag="get_rollout"):
    rollout_id: str


class GetAttemptOp(_Op, frozen=True, kw_only=True, tag="get_attempt"):
    rollout_id: str
    attempt_id: str


BatchOp = (
    EnqueueRolloutOp | DequeueRolloutOp | AddSpanOp | UpdateAttemptOp | UpdateWorkerOp | GetRolloutOp | GetAttemptOp
)


class BatchBody(_Body, frozen=True, kw_only=True):
    ops: Annotated[list[BatchOp], msgspec.Meta(max_length=10_000)]


class OpResult(_Body, frozen=True, kw_only=True, omit_defaults=True):
    """One call's outcome: ``result`` (what the single-call route answers; ``null`` is a result too, e.g. an
    empty queue) or ``error``."""

    result: Any = None
    error: ErrorBody | None = None


class RawOpResult(_Body, frozen=True, kw_only=True, omit_defaults=True):
    """:class:`OpResult` with the result left undecoded (the client decodes it by the call's type)."""

    result: msgspec.Raw = msgspec.Raw(b"null")
    error: ErrorBody | None = None


class ServerInfo(msgspec.Struct, kw_only=True, frozen=True):
    """What ``GET /api/v1/server`` answers: the store the server serves, for a client's console line (the
    server's URL, then ``(sqlite /home/me/.agl/agl.db)``). Unknown fields are ignored: new ones come at the end,
    with defaults, so that older clients read newer servers."""

    backend: str
    """The store's registered name (``agl plugins --kind stores``), or its class name when none is registered."""
    store: str
    """The store's class name."""
    location: str | None = None
    """The absolute path of the file the store keeps, for a store that keeps one."""
    version: str = ""
    """The agl-kernel version of the server."""


def set_fields(body: msgspec.Struct) -> dict[str, Any]:
    """The fields of a patch body that were given (not ``UNSET``), as keyword arguments."""
    return {name: value for name in body.__struct_fields__ if (value := getattr(body, name)) is not UNSET}
