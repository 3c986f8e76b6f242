"""Queries: filters, sorting and pagination in SQL (ties in creation order, as the contract asks).

Every function takes a ``sqlite3.Connection`` and runs inside one read transaction (see ``Engine.read``), so a
page and its ``total`` agree.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from agl_kernel.errors import NotFoundError
from agl_kernel.models import (
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
from agl_store_sqlite._codec import (
    ATTEMPT_COLUMNS,
    RESOURCES_COLUMNS,
    ROLLOUT_COLUMNS,
    SPAN_COLUMNS,
    WORKER_COLUMNS,
    AttemptState,
    resources_from_row,
    rollout_from_row,
    span_from_row,
    worker_from_row,
)
from agl_store_sqlite._ops import attempt_state, id_list, rollout_rid

T = TypeVar("T")


def _page(
    conn: sqlite3.Connection,
    *,
    columns: str,
    source: str,
    where: list[str],
    params: list[Any],
    sort_column: str | None,
    sort_order: str,
    creation_order: str,
    limit: int | None,
    offset: int,
    convert: Callable[[Any], T],
) -> PaginatedResult[T]:
    """One page: sorted by ``sort_column`` (NULLs first when ascending, last when descending, like the kernel's
    ``paginate``), ties and the unsorted order by ``creation_order`` (reversed for an unsorted ``desc``)."""
    condition = f" WHERE {' AND '.join(where)}" if where else ""
    direction = "DESC" if sort_order == "desc" else "ASC"
    if sort_column is None:
        order = ", ".join(f"{column} {direction}" for column in creation_order.split(", "))
    else:
        order = f"{sort_column} {direction}, {creation_order}"
    total = conn.execute(f"SELECT COUNT(*) FROM {source}{condition}", params).fetchone()[0]
    if limit == 0 or offset >= total:
        items: list[T] = []
    else:
        rows = conn.execute(
            f"SELECT {columns} FROM {source}{condition} ORDER BY {order} LIMIT ? OFFSET ?",
            (*params, -1 if limit is None else limit, offset),
        )
        items = [convert(row) for row in rows]
    return PaginatedResult(items=items, total=total, limit=limit, offset=offset)


def _values(items: Sequence[Any]) -> list[str]:
    return [getattr(item, "value", item) for item in items]


def _in(column: str, values: Sequence[Any], where: list[str], params: list[Any]) -> None:
    where.append(f"{column} IN (SELECT value FROM json_each(?))")
    params.append(id_list(values))


# ---------------------------------------------------------------------------------------------------- rollouts


def get_rollout(conn: sqlite3.Connection, rollout_id: str) -> Rollout:
    row = conn.execute(f"SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE rollout_id = ?", (rollout_id,)).fetchone()
    if row is None:
        raise NotFoundError(f"no rollout with id {rollout_id!r}")
    return rollout_from_row(row)


def query_rollouts(
    conn: sqlite3.Connection,
    status_in: Sequence[RolloutStatus] | None,
    rollout_id_in: Sequence[str] | None,
    mode_in: Sequence[RolloutMode] | None,
    sort_by: str | None,
    sort_order: str,
    limit: int | None,
    offset: int,
) -> PaginatedResult[Rollout]:
    where: list[str] = []
    params: list[Any] = []
    if status_in is not None:
        _in("status", _values([RolloutStatus(s) for s in status_in]), where, params)
    if rollout_id_in is not None:
        _in("rollout_id", list(rollout_id_in), where, params)
    if mode_in is not None:
        _in("mode", _values([RolloutMode(m) for m in mode_in]), where, params)
    return _page(
        conn,
        columns=ROLLOUT_COLUMNS,
        source="rollouts",
        where=where,
        params=params,
        sort_column=sort_by,
        sort_order=sort_order,
        creation_order="rid",
        limit=limit,
        offset=offset,
        convert=rollout_from_row,
    )


def ended_rollouts(conn: sqlite3.Connection, rollout_ids: Sequence[str]) -> dict[str, Rollout]:
    """The named rollouts that have ended, by id."""
    rows = conn.execute(
        f"SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE rollout_id IN (SELECT value FROM json_each(?)) "
        "AND status IN ('succeeded', 'failed', 'cancelled')",
        (id_list(rollout_ids),),
    )
    return {row[1]: rollout_from_row(row) for row in rows}


def missing_rollouts(conn: sqlite3.Connection, rollout_ids: Sequence[str]) -> list[str]:
    found = {
        row[0]
        for row in conn.execute(
            "SELECT rollout_id FROM rollouts WHERE rollout_id IN (SELECT value FROM json_each(?))",
            (id_list(rollout_ids),),
        )
    }
    return [r for r in rollout_ids if r not in found]


# ---------------------------------------------------------------------------------------------------- attempts


def get_attempt(conn: sqlite3.Connection, rollout_id: str, attempt_id: str) -> Any:
    return attempt_state(conn, rollout_id, attempt_id)[1].to_attempt()


def query_attempts(
    conn: sqlite3.Connection,
    rollout_id: str,
    status_in: Sequence[AttemptStatus] | None,
    sort_by: str | None,
    sort_order: str,
    limit: int | None,
    offset: int,
) -> PaginatedResult[Any]:
    where = ["a.rid = ?"]
    params: list[Any] = [rollout_rid(conn, rollout_id)]
    if status_in is not None:
        _in("a.status", _values([AttemptStatus(s) for s in status_in]), where, params)
    return _page(
        conn,
        columns=ATTEMPT_COLUMNS,
        source="attempts a",
        where=where,
        params=params,
        sort_column=None if sort_by is None else f"a.{sort_by}",
        sort_order=sort_order,
        creation_order="a.sequence_id",
        limit=limit,
        offset=offset,
        convert=lambda row: AttemptState(rollout_id, row).to_attempt(),
    )


# ---------------------------------------------------------------------------------------------------- spans


def query_spans(
    conn: sqlite3.Connection,
    rollout_id: str,
    attempt_id: str | None,
    name: str | None,
    sort_by: str | None,
    sort_order: str,
    limit: int | None,
    offset: int,
) -> PaginatedResult[Span]:
    if attempt_id is None:
        where = ["a.rid = ?"]
        params: list[Any] = [rollout_rid(conn, rollout_id)]
    else:
        where = ["s.aid = ?"]
        params = [attempt_state(conn, rollout_id, attempt_id)[1].aid]
    if name is not None:
        where.append("s.name = ?")
        params.append(name)
    return _page(
        conn,
        columns=f"a.attempt_id, {SPAN_COLUMNS}",
        source="spans s JOIN attempts a ON a.aid = s.aid",
        where=where,
        params=params,
        sort_column=None if sort_by is None else f"s.{sort_by}",
        sort_order=sort_order,
        creation_order="a.sequence_id, s.sequence_id, s.id",
        limit=limit,
        offset=offset,
        convert=lambda row: span_from_row(rollout_id, row[0], row[1:]),
    )


# ---------------------------------------------------------------------------------------------------- resources


def get_resources(conn: sqlite3.Connection, resources_id: str, version: int | None) -> ResourcesUpdate:
    newest = conn.execute(
        f"SELECT {RESOURCES_COLUMNS} FROM resources WHERE resources_id = ? ORDER BY version DESC LIMIT 1",
        (resources_id,),
    ).fetchone()
    if newest is None:
        raise NotFoundError(f"no resources with id {resources_id!r}")
    if version is None or version == newest[1]:
        return resources_from_row(newest)
    row = conn.execute(
        f"SELECT {RESOURCES_COLUMNS} FROM resources WHERE resources_id = ? AND version = ?", (resources_id, version)
    ).fetchone()
    if row is None:
        raise NotFoundError(f"resources {resources_id!r} have no version {version}; newest is {newest[1]}")
    return resources_from_row(row)


def get_latest_resources(conn: sqlite3.Connection) -> ResourcesUpdate | None:
    row = conn.execute(
        f"SELECT {RESOURCES_COLUMNS} FROM resources WHERE id = (SELECT max(id) FROM resources)"
    ).fetchone()
    return None if row is None else resources_from_row(row)


def query_resources(
    conn: sqlite3.Connection,
    resources_id: str | None,
    sort_by: str | None,
    sort_order: str,
    limit: int | None,
    offset: int,
) -> PaginatedResult[ResourcesUpdate]:
    where, params = ([], []) if resources_id is None else (["resources_id = ?"], [resources_id])
    return _page(
        conn,
        columns=RESOURCES_COLUMNS,
        source="resources",
        where=where,
        params=params,
        sort_column=sort_by,
        sort_order=sort_order,
        creation_order="id",
        limit=limit,
        offset=offset,
        convert=resources_from_row,
    )


# ---------------------------------------------------------------------------------------------------- workers


def get_worker(conn: sqlite3.Connection, worker_id: str) -> Worker:
    row = conn.execute(f"SELECT {WORKER_COLUMNS} FROM workers WHERE worker_id = ?", (worker_id,)).fetchone()
    if row is None:
        raise NotFoundError(f"no worker with id {worker_id!r} has reported to this store")
    return worker_from_row(row)


def query_workers(
    conn: sqlite3.Connection,
    status_in: Sequence[WorkerStatus] | None,
    sort_by: str | None,
    sort_order: str,
    limit: int | None,
    offset: int,
) -> PaginatedResult[Worker]:
    where: list[str] = []
    params: list[Any] = []
    if status_in is not None:
        _in("status", _values([WorkerStatus(s) for s in status_in]), where, params)
    return _page(
        conn,
        columns=WORKER_COLUMNS,
        source="workers",
        where=where,
        params=params,
        sort_column=sort_by,
        sort_order=sort_order,
        creation_order="wid",
        limit=limit,
        offset=offset,
        convert=worker_from_row,
    )


# ---------------------------------------------------------------------------------------------------- statistics


def statistics(conn: sqlite3.Connection) -> StoreStatistics:
    rollouts = dict(conn.execute("SELECT status, COUNT(*) FROM rollouts GROUP BY status").fetchall())
    attempts = dict(conn.execute("SELECT status, COUNT(*) FROM attempts GROUP BY status").fetchall())
    return StoreStatistics(
        total_rollouts=sum(rollouts.values()),
        rollouts_by_status=rollouts,
        total_attempts=sum(attempts.values()),
        attempts_by_status=attempts,
        total_spans=conn.execute("SELECT COUNT(*) FROM spans").fetchone()[0],
        queue_depth=conn.execute("SELECT COUNT(*) FROM rollouts WHERE queue_ticket IS NOT NULL").fetchone()[0],
        total_resources=conn.execute("SELECT COUNT(DISTINCT resources_id) FROM resources").fetchone()[0],
        total_workers=conn.execute("SELECT COUNT(*) FROM workers").fetchone()[0],
    )
