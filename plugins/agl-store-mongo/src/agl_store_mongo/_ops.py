"""The store's state machine on documents: each write operation runs inside one transaction (``tx.session``).

This mirrors the in-memory store (``agl_kernel.store.memory``) step by step and takes every decision from
``agl_kernel.store.policy``. Every operation reads what it decides on inside its transaction and validates before
its first write, so a raise (or a retry after a write conflict) leaves nothing behind.

Numbers that order things (a rollout's creation order and queue ticket, a resources version's write order) come
from the partition's counter document, incremented *outside* the transaction: a number taken by a transaction that
then aborts is a gap, never a duplicate, and concurrent writers never conflict on the counter.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from msgspec.structs import replace
from pymongo import DESCENDING, ReturnDocument

from agl_kernel.errors import InvalidStatusTransitionError, NotFoundError
from agl_kernel.models import (
    Attempt,
    AttemptedRollout,
    AttemptStatus,
    Resource,
    ResourcesUpdate,
    Rollout,
    RolloutMode,
    RolloutStatus,
    Span,
    Worker,
    WorkerStatus,
)
from agl_kernel.store import policy
from agl_kernel.store.base import LATEST
from agl_kernel.store.blobs import with_attempt
from agl_store_mongo._codec import (
    INT64_MAX,
    AttemptState,
    RolloutState,
    rollout_from_doc,
    span_doc,
    span_from_doc,
    span_key,
    worker_from_doc,
)
from agl_store_mongo._database import Tx

Doc = dict[str, Any]

TERMINAL = [s.value for s in RolloutStatus if s.is_terminal]
QUEUED = [s.value for s in policy.QUEUED_STATUSES]
STATE_FIELDS = {"status": 1, "config": 1, "attempt_count": 1}
"""What :class:`RolloutState` reads of a rollout."""


# ---------------------------------------------------------------------------------------------------- counter


async def take_numbers(tx: Tx, count: int) -> tuple[int, str | None]:
    """Reserve ``count`` consecutive numbers from the partition's counter (outside the transaction); returns the
    first, and the id of the latest resources (kept in the same document)."""
    doc = await tx.cols.meta.find_one_and_update(
        {"_id": "counter"}, {"$inc": {"n": count}}, upsert=True, return_document=ReturnDocument.AFTER
    )
    assert doc is not None
    return doc["n"] - count + 1, doc.get("latest_resources")


# ---------------------------------------------------------------------------------------------------- lookups


async def rollout_doc(tx: Tx, rollout_id: str, projection: dict[str, int] | None = None) -> Doc:
    doc = await tx.cols.rollouts.find_one({"_id": rollout_id}, projection, session=tx.session)
    if doc is None:
        raise NotFoundError(f"no rollout with id {rollout_id!r}")
    return doc


async def attempt_state(tx: Tx, rollout_id: str, attempt_id: str) -> tuple[RolloutState, AttemptState]:
    """The rollout and one of its attempts (``"latest"``: its newest); ``NotFoundError`` names what is missing."""
    rollout = RolloutState(await rollout_doc(tx, rollout_id, STATE_FIELDS))
    if attempt_id == LATEST:
        if rollout.attempt_count == 0:
            raise NotFoundError(f"rollout {rollout_id!r} has no attempt yet")
        doc = await tx.cols.attempts.find_one(
            {"rollout_id": rollout_id, "sequence_id": rollout.attempt_count}, session=tx.session
        )
    else:
        doc = await tx.cols.attempts.find_one({"_id": attempt_id}, session=tx.session)
    if doc is None or doc["rollout_id"] != rollout_id:
        raise NotFoundError(f"rollout {rollout_id!r} has no attempt with id {attempt_id!r}")
    return rollout, AttemptState(doc)


async def resources_id_for(tx: Tx, resources_id: str | None, latest: str | None) -> str | None:
    """``None`` → the latest resources id (``latest``, or ``None``); a given id must exist."""
    if resources_id is None:
        return latest
    if await tx.cols.resources.find_one({"resources_id": resources_id}, {"_id": 1}, session=tx.session) is None:
        raise NotFoundError(f"no resources with id {resources_id!r}; add them with add_resources first")
    return resources_id


def attempted(doc: Doc, rollout: RolloutState, attempt: Attempt) -> AttemptedRollout:
    """The rollout of ``doc`` with its new attempt, in the status the attempt put it in."""
    return with_attempt(rollout_from_doc(doc), attempt, status=rollout.status, attempt_count=rollout.attempt_count)


# ---------------------------------------------------------------------------------------------------- transitions


async def set_rollout_status(
    tx: Tx, rollout: RolloutState, status: RolloutStatus, now: float, requeue: bool = False
) -> None:
    """Move a rollout to ``status``: into a queued status puts it at the back of the queue (``requeue``: even if it
    is queued already); leaving the queue drops its ticket; a terminal status sets ``end_time``."""
    previous = rollout.status
    if status in policy.QUEUED_STATUSES and (status is not previous or requeue):
        ticket, _ = await take_numbers(tx, 1)
        update: Doc = {"$set": {"status": status.value, "end_time": None, "ticket": ticket, "by": tx.writer}}
        tx.wake_queue = True
    else:
        update = {"$set": {"status": status.value, "end_time": now if status.is_terminal else None, "by": tx.writer}}
        update["$unset"] = {"ticket": ""}
        if status.is_terminal and not previous.is_terminal:
            tx.wake_ended = True
    await tx.cols.rollouts.update_one({"_id": rollout.rollout_id}, update, session=tx.session)
    rollout.status = status


async def new_attempt(tx: Tx, rollout: RolloutState, worker_id: str | None, now: float, claimed: bool) -> Attempt:
    """Start the rollout's next attempt (``preparing``; the rollout too) and mark the worker busy. ``claimed``: the
    rollout document already shows the new attempt (the queue's claim did it)."""
    sequence_id = rollout.attempt_count if claimed else rollout.attempt_count + 1
    attempt = Attempt(
        rollout_id=rollout.rollout_id,
        attempt_id=policy.new_attempt_id(),
        sequence_id=sequence_id,
        start_time=now,
        worker_id=worker_id,
        last_heartbeat_time=now,
    )
    doc: Doc = {
        "_id": attempt.attempt_id,
        "rollout_id": rollout.rollout_id,
        "sequence_id": sequence_id,
        "status": AttemptStatus.PREPARING.value,
        "start_time": now,
        "end_time": None,
        "worker_id": worker_id,
        "last_heartbeat_time": now,
        "metadata": None,
        "span_seq": 0,
    }
    if policy.is_supervised(rollout.config):
        doc["watch"] = 1
    await tx.cols.attempts.insert_one(doc, session=tx.session)
    if not claimed:
        await tx.cols.rollouts.update_one(
            {"_id": rollout.rollout_id},
            {"$set": {"status": RolloutStatus.PREPARING.value, "attempt_count": sequence_id}, "$unset": {"ticket": ""}},
            session=tx.session,
        )
    rollout.status = RolloutStatus.PREPARING
    rollout.attempt_count = sequence_id
    if worker_id is not None:
        await tx.cols.workers.update_one(
            {"_id": worker_id},
            {
                "$set": {
                    "status": WorkerStatus.BUSY.value,
                    "last_dequeue_time": now,
                    "last_busy_time": now,
                    "current_rollout_id": rollout.rollout_id,
                    "current_attempt_id": attempt.attempt_id,
                },
                "$setOnInsert": {"first_seen": now},
            },
            upsert=True,
            session=tx.session,
        )
    return attempt


async def release_worker(tx: Tx, attempt: AttemptState, status: WorkerStatus, now: float) -> None:
    """The attempt's worker (if it is still on this attempt) becomes ``status``; ``idle`` frees it."""
    if not attempt.worker_id:
        return
    fields: Doc = {"status": status.value}
    if status is WorkerStatus.IDLE:
        fields.update(last_idle_time=now, current_rollout_id=None, current_attempt_id=None)
    await tx.cols.workers.update_one(
        {"_id": attempt.worker_id, "current_attempt_id": attempt.attempt_id}, {"$set": fields}, session=tx.session
    )


async def update_attempt_doc(tx: Tx, attempt: AttemptState, changes: Doc) -> None:
    """Write ``changes`` (field → value; ``metadata`` as a blob; ``watch`` None unsets it) to the document and to
    ``attempt``."""
    update: Doc = {"$set": {k: v for k, v in changes.items() if k != "watch"}}
    if "watch" in changes:
        update["$unset"] = {"watch": ""}
    await tx.cols.attempts.update_one({"_id": attempt.attempt_id}, update, session=tx.session)
    for field, value in changes.items():
        if field == "metadata":
            attempt.metadata_blob = value
        elif field == "status":
            attempt.status = AttemptStatus(value)
        elif field != "watch":
            setattr(attempt, field, value)


async def set_attempt_status(
    tx: Tx, rollout: RolloutState, attempt: AttemptState, status: AttemptStatus, now: float, changes: Doc
) -> None:
    """Move an attempt to ``status`` (with ``changes``) and let the rollout and the worker follow."""
    rollout_status = None
    if attempt.sequence_id == rollout.attempt_count:  # only the newest attempt drives the rollout
        rollout_status = policy.rollout_status_after_attempt(rollout, attempt, status)  # type: ignore[arg-type]
    worker_status = policy.worker_status_after_attempt(attempt.status, status)
    if worker_status is not None:
        await release_worker(tx, attempt, worker_status, now)
    doc_changes = {"status": status.value, "end_time": now if status.is_final else None, **changes}
    if status.is_final:
        doc_changes["watch"] = None
    await update_attempt_doc(tx, attempt, doc_changes)
    if rollout_status is not None and rollout_status is not rollout.status:
        await set_rollout_status(tx, rollout, rollout_status, now)


# ---------------------------------------------------------------------------------------------------- rollouts

EnqueueItem = tuple[Any, bytes, RolloutMode | None, str | None, Any, bytes | None, Any, bytes | None]
"""``(input, input_blob, mode, resources_id, config, config_blob, metadata, metadata_blob)``"""


def _rollout_doc(
    rollout_id: str, n: int, status: RolloutStatus, item: EnqueueItem, resources_id: str | None, now: float
) -> Doc:
    _, input_blob, mode, _, _, config_blob, _, metadata_blob = item
    return {
        "_id": rollout_id,
        "n": n,
        "status": status.value,
        "mode": None if mode is None else mode.value,
        "start_time": now,
        "end_time": None,
        "attempt_count": 0,
        "resources_id": resources_id,
        "config": config_blob,
        "input": input_blob,
        "metadata": metadata_blob,
    }


async def enqueue(tx: Tx, requests: Sequence[EnqueueItem]) -> list[Rollout]:
    """Insert queued rollouts, in order. Without a session (one rollout: one insert is atomic by itself) or inside a
    transaction (several: all or nothing)."""
    first, latest = await take_numbers(tx, len(requests))
    resources = [await resources_id_for(tx, r[3], latest) for r in requests]  # validate before the first write
    now = time.time()
    docs, rollouts = [], []
    for offset, (item, resources_id) in enumerate(zip(requests, resources)):
        rollout_id = policy.new_rollout_id()
        doc = _rollout_doc(rollout_id, first + offset, RolloutStatus.QUEUING, item, resources_id, now)
        doc["ticket"] = first + offset
        doc["by"] = tx.writer
        docs.append(doc)
        input, _, mode, _, config, _, metadata, _ = item
        rollouts.append(
            Rollout(rollout_id=rollout_id, input=input, start_time=now, mode=mode, resources_id=resources_id,
                    status=RolloutStatus.QUEUING, config=config, metadata=metadata)
        )  # fmt: skip
    if len(docs) == 1:
        await tx.cols.rollouts.insert_one(docs[0], session=tx.session)
    else:
        await tx.cols.rollouts.insert_many(docs, session=tx.session)
    tx.wake_queue = True
    return rollouts


async def start_rollout(tx: Tx, item: EnqueueItem, worker_id: str | None) -> AttemptedRollout:
    first, latest = await take_numbers(tx, 1)
    resources_id = await resources_id_for(tx, item[3], latest)
    now = time.time()
    doc = _rollout_doc(policy.new_rollout_id(), first, RolloutStatus.PREPARING, item, resources_id, now)
    await tx.cols.rollouts.insert_one(doc, session=tx.session)
    state = RolloutState(doc)
    attempt = await new_attempt(tx, state, worker_id, now, claimed=False)
    return attempted(doc, state, attempt)


async def claim(tx: Tx, limit: int, worker_id: str | None) -> list[AttemptedRollout]:
    """Take up to ``limit`` rollouts from the head of the queue, each with a new attempt. Only queued rollouts hold
    a ticket, so there are no stale entries to skip; two claimers of the same head conflict and one retries."""
    taken = []
    now = time.time()
    for _ in range(limit):
        # A read of the head by its index, then an update by _id (findAndModify with a sort scans the collection on
        # some servers); inside the transaction, two claimers of one head conflict on the update and one retries.
        head = await tx.cols.rollouts.find_one({"ticket": {"$gt": 0}}, sort=[("ticket", 1)], session=tx.session)
        if head is None:
            break
        await tx.cols.rollouts.update_one(
            {"_id": head["_id"]},
            {"$set": {"status": RolloutStatus.PREPARING.value}, "$unset": {"ticket": ""}, "$inc": {"attempt_count": 1}},
            session=tx.session,
        )
        doc = {**head, "status": RolloutStatus.PREPARING.value, "attempt_count": head.get("attempt_count", 0) + 1}
        doc.pop("ticket", None)
        state = RolloutState(doc)
        taken.append(attempted(doc, state, await new_attempt(tx, state, worker_id, now, claimed=True)))
    return taken


async def queue_has_work(tx: Tx) -> bool:
    return await tx.cols.rollouts.find_one({"ticket": {"$gt": 0}}, {"_id": 1}, session=tx.session) is not None


async def start_attempt(tx: Tx, rollout_id: str, worker_id: str | None) -> AttemptedRollout:
    doc = await rollout_doc(tx, rollout_id)
    state = RolloutState(doc)
    if state.status.is_terminal:
        raise InvalidStatusTransitionError(
            f"rollout {rollout_id!r} has ended ({state.status.value}); queue it again with "
            "update_rollout(status='queuing') before starting an attempt"
        )
    return attempted(doc, state, await new_attempt(tx, state, worker_id, time.time(), claimed=False))


async def update_rollout(tx: Tx, rollout_id: str, status: RolloutStatus | None, changes: Doc) -> Rollout:
    """``changes``: field → value for mode / config / metadata / resources_id (a given id is checked here)."""
    doc = await rollout_doc(tx, rollout_id)
    state = RolloutState(doc)
    if changes.get("resources_id") is not None:
        await resources_id_for(tx, changes["resources_id"], None)
    move = False
    if status is not None:
        # Same-status moves are no-ops, except that a queued status always goes to the back of the queue.
        changed = policy.check_rollout_transition(state, status)  # type: ignore[arg-type]
        move = changed or status in policy.QUEUED_STATUSES
    if changes:
        await tx.cols.rollouts.update_one({"_id": rollout_id}, {"$set": changes}, session=tx.session)
    if move:
        assert status is not None
        await set_rollout_status(tx, state, status, time.time(), requeue=True)
    return rollout_from_doc(await rollout_doc(tx, rollout_id))


async def delete_rollouts(tx: Tx, rollout_ids: Sequence[str] | None, ended_before: float | None) -> int:
    if rollout_ids is not None:
        wanted = list(dict.fromkeys(rollout_ids))
        found = {
            d["_id"]: d
            async for d in tx.cols.rollouts.find(
                {"_id": {"$in": wanted}}, {"status": 1, "end_time": 1}, session=tx.session
            )
        }
        for rollout_id in wanted:
            if rollout_id not in found:
                raise NotFoundError(f"no rollout with id {rollout_id!r}")
        running = [r for r in wanted if found[r]["status"] not in TERMINAL]
        if running:
            raise InvalidStatusTransitionError(
                f"only ended rollouts can be deleted; still active: {', '.join(running)}. Cancel them first."
            )
        targets = [found[r] for r in wanted]
    else:
        query: Doc = {"status": {"$in": TERMINAL}}
        if ended_before is not None:
            query["end_time"] = {"$lt": ended_before}
        targets = [d async for d in tx.cols.rollouts.find(query, {"status": 1, "end_time": 1}, session=tx.session)]
    if ended_before is not None:
        targets = [t for t in targets if t.get("end_time") is not None and t["end_time"] < ended_before]
    ids = [t["_id"] for t in targets]
    if ids:
        await tx.cols.spans.delete_many({"rollout_id": {"$in": ids}}, session=tx.session)
        await tx.cols.attempts.delete_many({"rollout_id": {"$in": ids}}, session=tx.session)
        await tx.cols.rollouts.delete_many({"_id": {"$in": ids}}, session=tx.session)
    return len(ids)


# ---------------------------------------------------------------------------------------------------- attempts


async def update_attempt(
    tx: Tx, rollout_id: str, attempt_id: str, status: AttemptStatus | None, heartbeat: float | None, changes: Doc
) -> Attempt:
    """Every update is a heartbeat (``heartbeat``, default now). ``changes``: field → value for ``worker_id`` and
    ``metadata`` (a blob)."""
    rollout, attempt = await attempt_state(tx, rollout_id, attempt_id)
    now = time.time()
    changes = {"last_heartbeat_time": now if heartbeat is None else heartbeat, **changes}
    if status is not None and policy.check_attempt_transition(attempt, status):  # type: ignore[arg-type]
        await set_attempt_status(tx, rollout, attempt, status, now, changes)
    else:
        await update_attempt_doc(tx, attempt, changes)
    return attempt.to_attempt()


# ---------------------------------------------------------------------------------------------------- spans


async def store_spans(tx: Tx, spans: Sequence[tuple[Span, bytes]]) -> list[Span]:
    """Store ``(span, blob)`` pairs in order; a span already stored is returned as stored."""
    now = time.time()
    rollouts: dict[str, RolloutState] = {}
    attempts: dict[tuple[str, str], AttemptState] = {}
    for span, _ in spans:  # every attempt exists (NotFoundError before any write)
        if (span.rollout_id, span.attempt_id) not in attempts:
            rollout, attempt = await attempt_state(tx, span.rollout_id, span.attempt_id)
            rollouts.setdefault(span.rollout_id, rollout)
            attempts[(span.rollout_id, span.attempt_id)] = attempt
    keys = list(dict.fromkeys(span_key(s.attempt_id, s.span_id) for s, _ in spans))
    existing = {d["_id"]: d async for d in tx.cols.spans.find({"_id": {"$in": keys}}, session=tx.session)}
    # Sequence ids first, all of them checked before anything is written.
    plan: list[Span | Doc] = []
    new_docs: list[Doc] = []
    last: dict[tuple[str, str], int] = {key: a.span_seq for key, a in attempts.items()}
    for span, blob in spans:
        key = span_key(span.attempt_id, span.span_id)
        if key in existing:
            plan.append(existing[key])
            continue
        pair = (span.rollout_id, span.attempt_id)
        sequence_id = span.sequence_id if span.sequence_id > 0 else last[pair] + 1
        if sequence_id > INT64_MAX:
            raise ValueError(
                f"the next sequence id of attempt {span.attempt_id!r} must lie in the signed 64-bit range "
                "-2**63 .. 2**63-1; nothing was written"
            )
        last[pair] = max(last[pair], sequence_id)
        doc = span_doc(span, blob, attempts[pair].sequence_id, sequence_id)
        existing[key] = doc
        new_docs.append(doc)
        plan.append(replace(span, sequence_id=sequence_id) if sequence_id != span.sequence_id else span)
    if new_docs:
        await tx.cols.spans.insert_many(new_docs, session=tx.session)
    for pair, attempt in attempts.items():
        reached = last[pair]
        # A span is a heartbeat, and a sign of life for a preparing or unresponsive attempt.
        if attempt.status in (AttemptStatus.PREPARING, AttemptStatus.UNRESPONSIVE):
            changes = {"last_heartbeat_time": now, "span_seq": reached}
            await set_attempt_status(tx, rollouts[pair[0]], attempt, AttemptStatus.RUNNING, now, changes)
        elif not attempt.status.is_final:
            await update_attempt_doc(tx, attempt, {"span_seq": reached, "last_heartbeat_time": now})
        elif reached != attempt.span_seq:
            await update_attempt_doc(tx, attempt, {"span_seq": reached})
    return [item if isinstance(item, Span) else span_from_doc(item) for item in plan]


async def store_one_span(tx: Tx, span: Span, blob: bytes) -> Span:
    """One span of a ``running`` (or final) attempt in four requests: read the attempt, insert the span, move the
    attempt's sequence id and heartbeat, commit. Anything else (an unknown id, a transition) takes
    :func:`store_spans`. A span stored before raises ``DuplicateKeyError`` (the transaction is dropped, nothing is
    written): the caller reads the stored one."""
    if span.attempt_id == LATEST:
        return (await store_spans(tx, [(span, blob)]))[0]
    doc = await tx.cols.attempts.find_one({"_id": span.attempt_id}, session=tx.session)
    if doc is None or doc["rollout_id"] != span.rollout_id:
        return (await store_spans(tx, [(span, blob)]))[0]
    attempt = AttemptState(doc)
    if attempt.status in (AttemptStatus.PREPARING, AttemptStatus.UNRESPONSIVE):
        return (await store_spans(tx, [(span, blob)]))[0]
    sequence_id = span.sequence_id if span.sequence_id > 0 else attempt.span_seq + 1
    if sequence_id > INT64_MAX:
        raise ValueError(
            f"the next sequence id of attempt {span.attempt_id!r} must lie in the signed 64-bit range "
            "-2**63 .. 2**63-1; nothing was written"
        )
    await tx.cols.spans.insert_one(span_doc(span, blob, attempt.sequence_id, sequence_id), session=tx.session)
    changes: Doc = {"span_seq": max(attempt.span_seq, sequence_id)}
    if not attempt.status.is_final:
        changes["last_heartbeat_time"] = time.time()
    await tx.cols.attempts.update_one({"_id": attempt.attempt_id}, {"$set": changes}, session=tx.session)
    return replace(span, sequence_id=sequence_id) if sequence_id != span.sequence_id else span


async def stored_span(tx: Tx, span: Span) -> Span:
    doc = await tx.cols.spans.find_one({"_id": span_key(span.attempt_id, span.span_id)})
    assert doc is not None  # spans are deleted only with their ended rollout
    return span_from_doc(doc)


async def reserve_sequence_ids(tx: Tx, rollout_id: str, attempt_id: str, count: int) -> list[int]:
    _, attempt = await attempt_state(tx, rollout_id, attempt_id)
    if attempt.span_seq > INT64_MAX - count:
        raise ValueError(
            f"the last reserved sequence id of attempt {attempt.attempt_id!r} must lie in the signed 64-bit range "
            "-2**63 .. 2**63-1; nothing was reserved"
        )
    await tx.cols.attempts.update_one({"_id": attempt.attempt_id}, {"$inc": {"span_seq": count}}, session=tx.session)
    return list(range(attempt.span_seq + 1, attempt.span_seq + count + 1))


# ---------------------------------------------------------------------------------------------------- resources


async def update_resources(tx: Tx, resources_id: str, resources: dict[str, Resource], blob: bytes) -> ResourcesUpdate:
    # The counter first, inside the transaction: it gives the write order and points enqueues at these resources
    # as the latest, atomically with the insert. Enqueues' own (non-transactional) increments wait for the commit.
    counter = await tx.cols.meta.find_one_and_update(
        {"_id": "counter"}, {"$inc": {"n": 1}, "$set": {"latest_resources": resources_id}},
        return_document=ReturnDocument.AFTER, session=tx.session,
    )  # fmt: skip
    assert counter is not None  # made with the schema
    previous = await tx.cols.resources.find_one(
        {"resources_id": resources_id}, {"version": 1, "create_time": 1}, sort=[("version", DESCENDING)],
        session=tx.session,
    )  # fmt: skip
    now = time.time()
    version, create_time = (1, now) if previous is None else (previous["version"] + 1, previous["create_time"])
    await tx.cols.resources.insert_one(
        {"resources_id": resources_id, "version": version, "n": counter["n"], "create_time": create_time,
         "update_time": now, "data": blob},
        session=tx.session,
    )  # fmt: skip
    return ResourcesUpdate(
        resources_id=resources_id, version=version, create_time=create_time, update_time=now, resources=dict(resources)
    )


# ---------------------------------------------------------------------------------------------------- workers


async def update_worker(tx: Tx, worker_id: str, stats: bytes | bool | None) -> Worker:
    """``stats``: the new stats blob (``None`` = {}), or ``False`` to keep them. An unresponsive worker comes back
    as ``busy`` if it still holds an attempt, else ``idle``."""
    now = time.time()
    fields: Doc = {"last_heartbeat_time": now}
    if stats is not False:
        fields["heartbeat_stats"] = stats
    doc = await tx.cols.workers.find_one_and_update(
        {"_id": worker_id},
        {"$set": fields, "$setOnInsert": {"status": WorkerStatus.IDLE.value, "first_seen": now}},
        upsert=True,
        return_document=ReturnDocument.AFTER,
        session=tx.session,
    )
    assert doc is not None
    if doc.get("status") == WorkerStatus.UNRESPONSIVE.value:
        status = WorkerStatus.BUSY if doc.get("current_attempt_id") else WorkerStatus.IDLE
        await tx.cols.workers.update_one({"_id": worker_id}, {"$set": {"status": status.value}}, session=tx.session)
        doc["status"] = status.value
    return worker_from_doc(doc)


# ---------------------------------------------------------------------------------------------------- watchdog


async def watched(tx: Tx) -> list[tuple[RolloutState, AttemptState]]:
    """The attempts the watchdog must look at, with their rollouts."""
    attempts = [AttemptState(d) async for d in tx.cols.attempts.find({"watch": 1}, session=tx.session)]
    if not attempts:
        return []
    ids = list({a.rollout_id for a in attempts})
    rollouts = {
        d["_id"]: RolloutState(d)
        async for d in tx.cols.rollouts.find({"_id": {"$in": ids}}, STATE_FIELDS, session=tx.session)
    }
    return [(rollouts[a.rollout_id], a) for a in attempts if a.rollout_id in rollouts]


def due(pairs: Sequence[tuple[RolloutState, AttemptState]], now: float) -> list[tuple[str, str]]:
    """``(rollout_id, attempt_id)`` of the attempts past a deadline at ``now``."""
    return [
        (r.rollout_id, a.attempt_id)
        for r, a in pairs
        if policy.deadline_status(a, r.config, now) is not None  # type: ignore[arg-type]
    ]


async def apply_deadline(tx: Tx, rollout_id: str, attempt_id: str, now: float) -> bool:
    """Time out / mark unresponsive one attempt if it is (still, inside this transaction) past its deadline."""
    try:
        rollout, attempt = await attempt_state(tx, rollout_id, attempt_id)
    except NotFoundError:  # deleted meanwhile
        return False
    status = policy.deadline_status(attempt, rollout.config, now)  # type: ignore[arg-type]
    if status is None:
        return False
    await set_attempt_status(tx, rollout, attempt, status, now, {})
    return True
