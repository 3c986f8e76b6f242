"""The store's reads, each one statement (or a few) outside any transaction. Rollouts are sorted and paged by the
server (there may be many); the others (a rollout's attempts and spans, resources versions, workers) are few, and
are sorted here with the contract's rules: ``None`` first, ties in creation order both ways."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from agl_kernel.errors import NotFoundError
from agl_kernel.models import (
    Attempt,
    AttemptStatus,
    PaginatedResult,
    ResourcesUpdate,
    Rollout,
    RolloutMode,
    RolloutStatus,
    Span,
    StoreStatistics,
    Worker,
    WorkerStatus,
)
from agl_store_postgres._codec import (
    SPAN_COLUMNS,
    attempt_from_row,
    resources_from_row,
    rollout_from_row,
    span_from_row,
    worker_from_row,
)
from agl_store_postgres._database import Tx
from agl_store_postgres._ops import ATTEMPT_COLUMNS, ROLLOUT_COLUMNS, TERMINAL, WORKER_COLUMNS, attempt_state

T = TypeVar("T")
Row = dict[str, Any]


def _page(
    rows: list[Row], field: str | None, sort_order: str, limit: int | None, offset: int, decode: Callable[[Row], T]
) -> PaginatedResult[T]:
    """Sort ``rows`` (in creation order) by ``field`` (stable: ties keep that order), cut a page, decode it."""
    ordered = list(rows)
    if field is not None:

        def key(row: Row) -> tuple[bool, Any]:
            value = row[field]
            return (value is not None, 0 if value is None else value)

        ordered.sort(key=key, reverse=sort_order == "desc")
    elif sort_order == "desc":
        ordered.reverse()
    end = None if limit is None else offset + limit
    return PaginatedResult(
        items=[decode(r) for r in ordered[offset:end]], total=len(ordered), limit=limit, offset=offset
    )


async def _rollout_exists(tx: Tx, rollout_id: str) -> None:
    if await tx.one("SELECT 1 FROM rollouts WHERE rollout_id = %s", (rollout_id,)) is None:
        raise NotFoundError(f"no rollout with id {rollout_id!r}")


# ---------------------------------------------------------------------------------------------------- rollouts


async def get_rollout(tx: Tx, rollout_id: str) -> Rollout:
    row = await tx.one(f"SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE rollout_id = %s", (rollout_id,))
    if row is None:
        raise NotFoundError(f"no rollout with id {rollout_id!r}")
    return rollout_from_row(row)


async def missing_rollouts(tx: Tx, rollout_ids: Sequence[str]) -> list[str]:
    rows = await tx.all("SELECT rollout_id FROM rollouts WHERE rollout_id = ANY(%s)", (list(rollout_ids),))
    found = {r["rollout_id"] for r in rows}
    return [r for r in rollout_ids if r not in found]


async def ended_rollouts(tx: Tx, ids: Sequence[str]) -> dict[str, Rollout]:
    if not ids:
        return {}
    rows = await tx.all(
        f"SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE rollout_id = ANY(%s) AND status = ANY(%s)", (list(ids), TERMINAL)
    )
    return {r["rollout_id"]: rollout_from_row(r) for r in rows}


async def query_rollouts(
    tx: Tx,
    status_in: Sequence[RolloutStatus] | None,
    rollout_id_in: Sequence[str] | None,
    mode_in: Sequence[RolloutMode] | None,
    sort_by: str | None,
    sort_order: str,
    limit: int | None,
    offset: int,
) -> PaginatedResult[Rollout]:
    where, params = [], []
    if status_in is not None:
        where.append("status = ANY(%s)")
        params.append([RolloutStatus(s).value for s in status_in])
    if rollout_id_in is not None:
        where.append("rollout_id = ANY(%s)")
        params.append(list(rollout_id_in))
    if mode_in is not None:
        where.append("mode = ANY(%s)")
        params.append([RolloutMode(m).value for m in mode_in])
    clause = (" WHERE " + " AND ".join(where)) if where else ""
    # None first ascending, last descending; ties keep creation order in both directions (a stable sort).
    if sort_by is None:
        order = "n DESC" if sort_order == "desc" else "n"
    else:
        direction = "DESC NULLS LAST" if sort_order == "desc" else "ASC NULLS FIRST"
        order = f"{sort_by} {direction}, n"  # sort_by is one of SORT_FIELDS (checked), all of them columns
    count = await tx.one(f"SELECT count(*) AS n FROM rollouts{clause}", params)
    total = 0 if count is None else int(count["n"])
    items: list[Rollout] = []
    if limit != 0 and offset < total:
        page = " LIMIT %s" if limit is not None else ""
        rows = await tx.all(
            f"SELECT {ROLLOUT_COLUMNS} FROM rollouts{clause} ORDER BY {order}{page} OFFSET %s",
            [*params, *([limit] if limit is not None else []), offset],
        )
        items = [rollout_from_row(r) for r in rows]
    return PaginatedResult(items=items, total=total, limit=limit, offset=offset)


# ---------------------------------------------------------------------------------------------------- attempts


async def get_attempt(tx: Tx, rollout_id: str, attempt_id: str) -> Attempt:
    _, attempt = await attempt_state(tx, rollout_id, attempt_id, lock=False)
    return attempt.to_attempt()


async def query_attempts(
    tx: Tx,
    rollout_id: str,
    status_in: Sequence[AttemptStatus] | None,
    sort_by: str | None,
    sort_order: str,
    limit: int | None,
    offset: int,
) -> PaginatedResult[Attempt]:
    await _rollout_exists(tx, rollout_id)
    query, params = f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE rollout_id = %s", [rollout_id]
    if status_in is not None:
        query += " AND status = ANY(%s)"
        params.append([AttemptStatus(s).value for s in status_in])  # type: ignore[arg-type]
    rows = await tx.all(query + " ORDER BY sequence_id", params)
    return _page(rows, sort_by, sort_order, limit, offset, attempt_from_row)


# ---------------------------------------------------------------------------------------------------- spans


async def query_spans(
    tx: Tx,
    rollout_id: str,
    attempt_id: str | None,
    name: str | None,
    sort_by: str | None,
    sort_order: str,
    limit: int | None,
    offset: int,
) -> PaginatedResult[Span]:
    query, params = f"SELECT {SPAN_COLUMNS} FROM spans WHERE rollout_id = %s", [rollout_id]
    if attempt_id is None:
        await _rollout_exists(tx, rollout_id)
    else:
        _, attempt = await attempt_state(tx, rollout_id, attempt_id, lock=False)
        query += " AND attempt_id = %s"
        params.append(attempt.attempt_id)
    if name is not None:
        query += " AND name = %s"
        params.append(name)
    rows = await tx.all(query + " ORDER BY attempt_seq, sequence_id", params)
    return _page(rows, sort_by, sort_order, limit, offset, span_from_row)


# ---------------------------------------------------------------------------------------------------- resources

_RESOURCES_COLUMNS = "resources_id, version, create_time, update_time, data"


async def get_resources(tx: Tx, resources_id: str, version: int | None) -> ResourcesUpdate:
    latest = await tx.one(
        f"SELECT {_RESOURCES_COLUMNS} FROM resources WHERE resources_id = %s ORDER BY version DESC LIMIT 1",
        (resources_id,),
    )
    if latest is None:
        raise NotFoundError(f"no resources with id {resources_id!r}")
    if version is None or version == latest["version"]:
        return resources_from_row(latest)
    row = await tx.one(
        f"SELECT {_RESOURCES_COLUMNS} FROM resources WHERE resources_id = %s AND version = %s", (resources_id, version)
    )
    if row is None:
        raise NotFoundError(f"resources {resources_id!r} have no version {version}; newest is {latest['version']}")
    return resources_from_row(row)


async def get_latest_resources(tx: Tx) -> ResourcesUpdate | None:
    row = await tx.one(f"SELECT {_RESOURCES_COLUMNS} FROM resources ORDER BY n DESC LIMIT 1")
    return None if row is None else resources_from_row(row)


async def query_resources(
    tx: Tx, resources_id: str | None, sort_by: str | None, sort_order: str, limit: int | None, offset: int
) -> PaginatedResult[ResourcesUpdate]:
    if resources_id is None:
        rows = await tx.all(f"SELECT {_RESOURCES_COLUMNS} FROM resources ORDER BY n")
    else:
        rows = await tx.all(
            f"SELECT {_RESOURCES_COLUMNS} FROM resources WHERE resources_id = %s ORDER BY n", (resources_id,)
        )
    return _page(rows, sort_by, sort_order, limit, offset, resources_from_row)


# ---------------------------------------------------------------------------------------------------- workers


async def get_worker(tx: Tx, worker_id: str) -> Worker:
    row = await tx.one(f"SELECT {WORKER_COLUMNS} FROM workers WHERE worker_id = %s", (worker_id,))
    if row is None:
        raise NotFoundError(f"no worker with id {worker_id!r} has reported to this store")
    return worker_from_row(row)


async def query_workers(
    tx: Tx,
    status_in: Sequence[WorkerStatus] | None,
    sort_by: str | None,
    sort_order: str,
    limit: int | None,
    offset: int,
) -> PaginatedResult[Worker]:
    query, params = f"SELECT {WORKER_COLUMNS} FROM workers", []
    if status_in is not None:
        query += " WHERE status = ANY(%s)"
        params.append([WorkerStatus(s).value for s in status_in])
    rows = await tx.all(query + " ORDER BY first_seen, worker_id", params)
    return _page(rows, sort_by, sort_order, limit, offset, worker_from_row)


# ---------------------------------------------------------------------------------------------------- statistics


async def statistics(tx: Tx) -> StoreStatistics:
    rollouts = {r["status"]: int(r["n"]) for r in await tx.all("SELECT status, count(*) AS n FROM rollouts GROUP BY 1")}
    attempts = {r["status"]: int(r["n"]) for r in await tx.all("SELECT status, count(*) AS n FROM attempts GROUP BY 1")}
    row = await tx.one(
        "SELECT (SELECT count(*) FROM spans) AS spans, "
        "(SELECT count(*) FROM rollouts WHERE ticket IS NOT NULL) AS queue, "
        "(SELECT count(DISTINCT resources_id) FROM resources) AS resources, "
        "(SELECT count(*) FROM workers) AS workers"
    )
    assert row is not None
    return StoreStatistics(
        total_rollouts=sum(rollouts.values()),
        rollouts_by_status=rollouts,
        total_attempts=sum(attempts.values()),
        attempts_by_status=attempts,
        total_spans=int(row["spans"]),
        queue_depth=int(row["queue"]),
        total_resources=int(row["resources"]),
        total_workers=int(row["workers"]),
    )
