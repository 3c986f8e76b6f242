"""The store's reads. Rollouts are sorted and paged by the server (there may be many); the others (a rollout's
attempts and spans, resources versions, workers) are few, and are sorted here with the contract's rules: ``None``
first, ties in creation order both ways."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pymongo import ASCENDING, DESCENDING

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
from agl_store_mongo._codec import (
    attempt_from_doc,
    resources_from_doc,
    rollout_from_doc,
    span_from_doc,
    worker_from_doc,
)
from agl_store_mongo._database import Tx
from agl_store_mongo._ops import TERMINAL, attempt_state, rollout_doc

T = TypeVar("T")
Doc = dict[str, Any]


def _page(
    docs: list[Doc],
    field: str | None,
    sort_order: str,
    limit: int | None,
    offset: int,
    decode: Callable[[Doc], T],
) -> PaginatedResult[T]:
    """Sort ``docs`` (in creation order) by ``field`` (stable: ties keep that order), cut a page, decode it."""
    ordered = list(docs)
    if field is not None:

        def key(doc: Doc) -> tuple[bool, Any]:
            value = doc.get(field)
            return (value is not None, 0 if value is None else value)

        ordered.sort(key=key, reverse=sort_order == "desc")
    elif sort_order == "desc":
        ordered.reverse()
    end = None if limit is None else offset + limit
    return PaginatedResult(
        items=[decode(d) for d in ordered[offset:end]], total=len(ordered), limit=limit, offset=offset
    )


# ---------------------------------------------------------------------------------------------------- rollouts


async def get_rollout(tx: Tx, rollout_id: str) -> Rollout:
    return rollout_from_doc(await rollout_doc(tx, rollout_id))


async def missing_rollouts(tx: Tx, rollout_ids: Sequence[str]) -> list[str]:
    found = {d["_id"] async for d in tx.cols.rollouts.find({"_id": {"$in": list(rollout_ids)}}, {"_id": 1})}
    return [r for r in rollout_ids if r not in found]


async def ended_rollouts(tx: Tx, ids: Sequence[str]) -> dict[str, Rollout]:
    if not ids:
        return {}
    query = {"_id": {"$in": list(ids)}, "status": {"$in": TERMINAL}}
    return {d["_id"]: rollout_from_doc(d) async for d in tx.cols.rollouts.find(query)}


_ROLLOUT_FIELDS = {"rollout_id": "_id"}


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
    query: Doc = {}
    if status_in is not None:
        query["status"] = {"$in": [RolloutStatus(s).value for s in status_in]}
    if rollout_id_in is not None:
        query["_id"] = {"$in": list(rollout_id_in)}
    if mode_in is not None:
        query["mode"] = {"$in": [RolloutMode(m).value for m in mode_in]}
    direction = DESCENDING if sort_order == "desc" else ASCENDING
    # Ties keep creation order in both directions (a stable sort, as the contract says).
    if sort_by is None:
        sort = [("n", direction)]
    else:
        sort = [(_ROLLOUT_FIELDS.get(sort_by, sort_by), direction), ("n", ASCENDING)]
    total = await tx.cols.rollouts.count_documents(query)
    items: list[Rollout] = []
    if limit != 0 and offset < total:
        cursor = tx.cols.rollouts.find(query, sort=sort, skip=offset, limit=limit or 0)
        items = [rollout_from_doc(d) async for d in cursor]
    return PaginatedResult(items=items, total=total, limit=limit, offset=offset)


# ---------------------------------------------------------------------------------------------------- attempts


async def get_attempt(tx: Tx, rollout_id: str, attempt_id: str) -> Attempt:
    _, attempt = await attempt_state(tx, rollout_id, attempt_id)
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
    await rollout_doc(tx, rollout_id, {"_id": 1})
    query: Doc = {"rollout_id": rollout_id}
    if status_in is not None:
        query["status"] = {"$in": [AttemptStatus(s).value for s in status_in]}
    docs = [d async for d in tx.cols.attempts.find(query, sort=[("sequence_id", ASCENDING)])]
    field = None if sort_by is None else ("_id" if sort_by == "attempt_id" else sort_by)
    return _page(docs, field, sort_order, limit, offset, attempt_from_doc)


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
    query: Doc = {"rollout_id": rollout_id}
    if attempt_id is None:
        await rollout_doc(tx, rollout_id, {"_id": 1})
    else:
        _, attempt = await attempt_state(tx, rollout_id, attempt_id)
        query["attempt_id"] = attempt.attempt_id
    if name is not None:
        query["name"] = name
    sort = [("attempt_seq", ASCENDING), ("sequence_id", ASCENDING)]
    docs = [d async for d in tx.cols.spans.find(query, sort=sort)]
    return _page(docs, sort_by, sort_order, limit, offset, span_from_doc)


# ---------------------------------------------------------------------------------------------------- resources


async def get_resources(tx: Tx, resources_id: str, version: int | None) -> ResourcesUpdate:
    latest = await tx.cols.resources.find_one({"resources_id": resources_id}, sort=[("version", DESCENDING)])
    if latest is None:
        raise NotFoundError(f"no resources with id {resources_id!r}")
    if version is None or version == latest["version"]:
        return resources_from_doc(latest)
    doc = await tx.cols.resources.find_one({"resources_id": resources_id, "version": version})
    if doc is None:
        raise NotFoundError(f"resources {resources_id!r} have no version {version}; newest is {latest['version']}")
    return resources_from_doc(doc)


async def get_latest_resources(tx: Tx) -> ResourcesUpdate | None:
    doc = await tx.cols.resources.find_one({}, sort=[("n", DESCENDING)])
    return None if doc is None else resources_from_doc(doc)


async def query_resources(
    tx: Tx, resources_id: str | None, sort_by: str | None, sort_order: str, limit: int | None, offset: int
) -> PaginatedResult[ResourcesUpdate]:
    query: Doc = {} if resources_id is None else {"resources_id": resources_id}
    docs = [d async for d in tx.cols.resources.find(query, sort=[("n", ASCENDING)])]
    return _page(docs, sort_by, sort_order, limit, offset, resources_from_doc)


# ---------------------------------------------------------------------------------------------------- workers


async def get_worker(tx: Tx, worker_id: str) -> Worker:
    doc = await tx.cols.workers.find_one({"_id": worker_id})
    if doc is None:
        raise NotFoundError(f"no worker with id {worker_id!r} has reported to this store")
    return worker_from_doc(doc)


async def query_workers(
    tx: Tx,
    status_in: Sequence[WorkerStatus] | None,
    sort_by: str | None,
    sort_order: str,
    limit: int | None,
    offset: int,
) -> PaginatedResult[Worker]:
    query: Doc = {}
    if status_in is not None:
        query["status"] = {"$in": [WorkerStatus(s).value for s in status_in]}
    docs = [d async for d in tx.cols.workers.find(query, sort=[("first_seen", ASCENDING), ("_id", ASCENDING)])]
    field = None if sort_by is None else ("_id" if sort_by == "worker_id" else sort_by)
    return _page(docs, field, sort_order, limit, offset, worker_from_doc)


# ---------------------------------------------------------------------------------------------------- statistics


async def _count_by_status(tx: Tx, collection: Any) -> dict[str, int]:
    groups = await collection.aggregate([{"$group": {"_id": "$status", "n": {"$sum": 1}}}])
    return {g["_id"]: g["n"] async for g in groups}


async def statistics(tx: Tx) -> StoreStatistics:
    rollouts = await _count_by_status(tx, tx.cols.rollouts)
    attempts = await _count_by_status(tx, tx.cols.attempts)
    resources = await tx.cols.resources.aggregate([{"$group": {"_id": "$resources_id"}}, {"$count": "n"}])
    resource_count = [d["n"] async for d in resources]
    return StoreStatistics(
        total_rollouts=sum(rollouts.values()),
        rollouts_by_status=rollouts,
        total_attempts=sum(attempts.values()),
        attempts_by_status=attempts,
        total_spans=await tx.cols.spans.count_documents({}),
        queue_depth=await tx.cols.rollouts.count_documents({"ticket": {"$gt": 0}}),
        total_resources=resource_count[0] if resource_count else 0,
        total_workers=await tx.cols.workers.count_documents({}),
    )
