"""The store's state machine on rows: each write operation runs inside one transaction (``tx.conn``).

This mirrors the in-memory store (``agl_kernel.store.memory``) step by step and takes every decision from
``agl_kernel.store.policy``. An operation first locks the rollout rows it decides on (``SELECT ... FOR UPDATE``, in
id order when there are several, so two operations never wait on each other in a cycle), reads what it decides on,
and validates before its first write: a raise leaves nothing behind. Every change of an attempt locks its rollout
first, so the rollout's lock orders all of them.

Numbers that order things (a rollout's creation order and queue ticket, a resources version's write order) come
from the schema's ``counter`` sequence, which is not transactional: a number taken by a transaction that then rolls
back is a gap, never a duplicate, and concurrent writers never wait on it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from msgspec.structs import replace

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
from agl_store_postgres._codec import (
    INT64_MAX,
    SPAN_COLUMNS,
    AttemptState,
    RolloutState,
    rollout_from_row,
    span_from_row,
    span_row,
    worker_from_row,
)
from agl_store_postgres._database import Tx

Row = dict[str, Any]

TERMINAL = [s.value for s in RolloutStatus if s.is_terminal]
QUEUED = [s.value for s in policy.QUEUED_STATUSES]
ROLLOUT_COLUMNS = (
    "n, rollout_id, status, mode, start_time, end_time, attempt_count, resources_id, config, input, metadata"
)
ATTEMPT_COLUMNS = (
    "attempt_id, rollout_id, sequence_id, status, start_time, end_time, worker_id, last_heartbeat_time, metadata, "
    "span_seq"
)


# ---------------------------------------------------------------------------------------------------- lookups


async def take_numbers(tx: Tx, count: int) -> int:
    """Reserve ``count`` numbers from the schema's counter; returns the first (they need not be consecutive: only
    their order matters, and they are taken in order)."""
    if count == 1:
        row = await tx.one("SELECT nextval('counter') AS n")
        assert row is not None
        return int(row["n"])
    rows = await tx.all("SELECT nextval('counter') AS n FROM generate_series(1, %s)", (count,))
    return int(min(r["n"] for r in rows))


async def take_many(tx: Tx, count: int) -> list[int]:
    rows = await tx.all("SELECT nextval('counter') AS n FROM generate_series(1, %s)", (count,))
    return sorted(int(r["n"]) for r in rows)


async def lock_rollout(tx: Tx, rollout_id: str, columns: str = ROLLOUT_COLUMNS) -> Row:
    row = await tx.one(f"SELECT {columns} FROM rollouts WHERE rollout_id = %s FOR UPDATE", (rollout_id,))
    if row is None:
        raise NotFoundError(f"no rollout with id {rollout_id!r}")
    return row


STATE_COLUMNS = "rollout_id, status, config, attempt_count"
"""What :class:`RolloutState` reads of a rollout."""


async def attempt_state(
    tx: Tx, rollout_id: str, attempt_id: str, lock: bool = True, lock_attempt: bool | None = None
) -> tuple[RolloutState, AttemptState]:
    """The rollout (locked) and one of its attempts (``"latest"``: its newest); ``NotFoundError`` names what is
    missing. ``lock_attempt`` (default: ``lock``) locks the attempt's row too: spans of a running attempt change it
    without the rollout's lock (:func:`store_running_span`)."""
    suffix = " FOR UPDATE" if (lock if lock_attempt is None else lock_attempt) else ""
    if lock:
        rollout = RolloutState(await lock_rollout(tx, rollout_id, STATE_COLUMNS))
    else:
        row = await tx.one(f"SELECT {STATE_COLUMNS} FROM rollouts WHERE rollout_id = %s", (rollout_id,))
        if row is None:
            raise NotFoundError(f"no rollout with id {rollout_id!r}")
        rollout = RolloutState(row)
    if attempt_id == LATEST:
        if rollout.attempt_count == 0:
            raise NotFoundError(f"rollout {rollout_id!r} has no attempt yet")
        row = await tx.one(
            f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE rollout_id = %s AND sequence_id = %s" + suffix,
            (rollout_id, rollout.attempt_count),
        )
    else:
        row = await tx.one(f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE attempt_id = %s" + suffix, (attempt_id,))
    if row is None or row["rollout_id"] != rollout_id:
        raise NotFoundError(f"rollout {rollout_id!r} has no attempt with id {attempt_id!r}")
    return rollout, AttemptState(row)


async def resources_id_for(tx: Tx, resources_id: str | None) -> str | None:
    """``None`` → the latest resources id (or ``None``); a given id must exist."""
    if resources_id is None:
        row = await tx.one("SELECT resources_id FROM resources ORDER BY n DESC LIMIT 1")
        return None if row is None else str(row["resources_id"])
    if await tx.one("SELECT 1 FROM resources WHERE resources_id = %s LIMIT 1", (resources_id,)) is None:
        raise NotFoundError(f"no resources with id {resources_id!r}; add them with add_resources first")
    return resources_id


def attempted(row: Row, rollout: RolloutState, attempt: Attempt) -> AttemptedRollout:
    """The rollout of ``row`` with its new attempt, in the status the attempt put it in."""
    return with_attempt(rollout_from_row(row), attempt, status=rollout.status, attempt_count=rollout.attempt_count)


# ---------------------------------------------------------------------------------------------------- transitions


async def set_rollout_status(
    tx: Tx, rollout: RolloutState, status: RolloutStatus, now: float, requeue: bool = False
) -> None:
    """Move a rollout to ``status``: into a queued status puts it at the back of the queue (``requeue``: even if it
    is queued already); leaving the queue drops its ticket; a terminal status sets ``end_time``."""
    previous = rollout.status
    if status in policy.QUEUED_STATUSES and (status is not previous or requeue):
        ticket = await take_numbers(tx, 1)
        await tx.run(
            "UPDATE rollouts SET status = %s, end_time = NULL, ticket = %s WHERE rollout_id = %s",
            (status.value, ticket, rollout.rollout_id),
        )
        tx.wake_queue = True
    else:
        await tx.run(
            "UPDATE rollouts SET status = %s, end_time = %s, ticket = NULL WHERE rollout_id = %s",
            (status.value, now if status.is_terminal else None, rollout.rollout_id),
        )
        if status.is_terminal and not previous.is_terminal:
            tx.wake_ended = True
    rollout.status = status


async def new_attempts(
    tx: Tx, pairs: Sequence[tuple[RolloutState, bool]], worker_id: str | None, now: float
) -> list[Attempt]:
    """Start each rollout's next attempt (``preparing``; the rollout too) and mark the worker busy with the last.
    ``claimed``: the rollout row already shows the new attempt (the queue's claim did it)."""
    attempts, rows = [], []
    for rollout, claimed in pairs:
        sequence_id = rollout.attempt_count if claimed else rollout.attempt_count + 1
        attempt = Attempt(
            rollout_id=rollout.rollout_id,
            attempt_id=policy.new_attempt_id(),
            sequence_id=sequence_id,
            start_time=now,
            worker_id=worker_id,
            last_heartbeat_time=now,
        )
        attempts.append(attempt)
        rows.append(
            (attempt.attempt_id, rollout.rollout_id, sequence_id, AttemptStatus.PREPARING.value, now, worker_id, now,
             True if policy.is_supervised(rollout.config) else None)
        )  # fmt: skip
        if not claimed:
            await tx.run(
                "UPDATE rollouts SET status = %s, attempt_count = %s, ticket = NULL WHERE rollout_id = %s",
                (RolloutStatus.PREPARING.value, sequence_id, rollout.rollout_id),
            )
        rollout.status = RolloutStatus.PREPARING
        rollout.attempt_count = sequence_id
    insert = (
        "INSERT INTO attempts (attempt_id, rollout_id, sequence_id, status, start_time, worker_id, "
        "last_heartbeat_time, watch) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
    )
    if len(rows) == 1:
        await tx.run(insert, rows[0])
    elif rows:
        await tx.many(insert, rows)
    if worker_id is not None and attempts:
        last = attempts[-1]
        await tx.run(
            "INSERT INTO workers (worker_id, status, first_seen, last_dequeue_time, last_busy_time, "
            "current_rollout_id, current_attempt_id) VALUES (%s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (worker_id) DO UPDATE SET status = EXCLUDED.status, "
            "last_dequeue_time = EXCLUDED.last_dequeue_time, last_busy_time = EXCLUDED.last_busy_time, "
            "current_rollout_id = EXCLUDED.current_rollout_id, current_attempt_id = EXCLUDED.current_attempt_id",
            (worker_id, WorkerStatus.BUSY.value, now, now, now, last.rollout_id, last.attempt_id),
        )
    return attempts


async def release_worker(tx: Tx, attempt: AttemptState, status: WorkerStatus, now: float) -> None:
    """The attempt's worker (if it is still on this attempt) becomes ``status``; ``idle`` frees it."""
    if not attempt.worker_id:
        return
    if status is WorkerStatus.IDLE:
        await tx.run(
            "UPDATE workers SET status = %s, last_idle_time = %s, current_rollout_id = NULL, "
            "current_attempt_id = NULL WHERE worker_id = %s AND current_attempt_id = %s",
            (status.value, now, attempt.worker_id, attempt.attempt_id),
        )
    else:
        await tx.run(
            "UPDATE workers SET status = %s WHERE worker_id = %s AND current_attempt_id = %s",
            (status.value, attempt.worker_id, attempt.attempt_id),
        )


_ATTEMPT_FIELDS = frozenset({"status", "end_time", "worker_id", "last_heartbeat_time", "metadata", "span_seq", "watch"})


async def update_attempt_row(tx: Tx, attempt: AttemptState, changes: Row) -> None:
    """Write ``changes`` (column → value; ``metadata`` as a blob) to the row and to ``attempt``."""
    columns = [c for c in changes if c in _ATTEMPT_FIELDS]
    assignments = ", ".join(f"{c} = %s" for c in columns)
    await tx.run(
        f"UPDATE attempts SET {assignments} WHERE attempt_id = %s", [changes[c] for c in columns] + [attempt.attempt_id]
    )
    for field, value in changes.items():
        if field == "metadata":
            attempt.metadata_blob = value
        elif field == "status":
            attempt.status = AttemptStatus(value)
        elif field != "watch":
            setattr(attempt, field, value)


async def set_attempt_status(
    tx: Tx, rollout: RolloutState, attempt: AttemptState, status: AttemptStatus, now: float, changes: Row
) -> None:
    """Move an attempt to ``status`` (with ``changes``) and let the rollout and the worker follow."""
    rollout_status = None
    if attempt.sequence_id == rollout.attempt_count:  # only the newest attempt drives the rollout
        rollout_status = policy.rollout_status_after_attempt(rollout, attempt, status)  # type: ignore[arg-type]
    worker_status = policy.worker_status_after_attempt(attempt.status, status)
    if worker_status is not None:
        await release_worker(tx, attempt, worker_status, now)
    row_changes: Row = {"status": status.value, "end_time": now if status.is_final else None, **changes}
    if status.is_final:
        row_changes["watch"] = None
    await update_attempt_row(tx, attempt, row_changes)
    if rollout_status is not None and rollout_status is not rollout.status:
        await set_rollout_status(tx, rollout, rollout_status, now)


# ---------------------------------------------------------------------------------------------------- rollouts

EnqueueItem = tuple[Any, bytes, RolloutMode | None, str | None, Any, bytes | None, Any, bytes | None]
"""``(input, input_blob, mode, resources_id, config, config_blob, metadata, metadata_blob)``"""

_INSERT_ROLLOUT = (
    "INSERT INTO rollouts (n, rollout_id, status, mode, start_time, attempt_count, resources_id, ticket, config, "
    "input, metadata) VALUES (%s, %s, %s, %s, %s, 0, %s, %s, %s, %s, %s)"
)


def _rollout_values(
    n: int, rollout_id: str, status: RolloutStatus, item: EnqueueItem, resources_id: str | None, now: float,
    ticket: int | None,
) -> tuple[Any, ...]:  # fmt: skip
    _, input_blob, mode, _, _, config_blob, _, metadata_blob = item
    mode_value = None if mode is None else mode.value
    return (n, rollout_id, status.value, mode_value, now, resources_id, ticket, config_blob, input_blob, metadata_blob)


def _row_of(values: tuple[Any, ...]) -> Row:
    n, rollout_id, status, mode, now, resources_id, _, config, input, metadata = values
    return {
        "n": n, "rollout_id": rollout_id, "status": status, "mode": mode, "start_time": now, "end_time": None,
        "attempt_count": 0, "resources_id": resources_id, "config": config, "input": input, "metadata": metadata,
    }  # fmt: skip


async def enqueue(tx: Tx, requests: Sequence[EnqueueItem]) -> list[Rollout]:
    """Insert queued rollouts, in order, all or nothing."""
    numbers = await take_many(tx, len(requests)) if len(requests) > 1 else [await take_numbers(tx, 1)]
    latest: str | None = None
    if any(r[3] is None for r in requests):
        latest = await resources_id_for(tx, None)
    resources = [latest if r[3] is None else await resources_id_for(tx, r[3]) for r in requests]
    now = time.time()
    values, rollouts = [], []
    for n, item, resources_id in zip(numbers, requests, resources):
        rollout_id = policy.new_rollout_id()
        values.append(_rollout_values(n, rollout_id, RolloutStatus.QUEUING, item, resources_id, now, n))
        input, _, mode, _, config, _, metadata, _ = item
        rollouts.append(
            Rollout(rollout_id=rollout_id, input=input, start_time=now, mode=mode, resources_id=resources_id,
                    status=RolloutStatus.QUEUING, config=config, metadata=metadata)
        )  # fmt: skip
    if len(values) == 1:
        await tx.run(_INSERT_ROLLOUT, values[0])
    else:
        await tx.many(_INSERT_ROLLOUT, values)
    tx.wake_queue = True
    return rollouts


async def start_rollout(tx: Tx, item: EnqueueItem, worker_id: str | None) -> AttemptedRollout:
    n = await take_numbers(tx, 1)
    resources_id = await resources_id_for(tx, item[3])
    now = time.time()
    values = _rollout_values(n, policy.new_rollout_id(), RolloutStatus.PREPARING, item, resources_id, now, None)
    await tx.run(_INSERT_ROLLOUT, values)
    row = _row_of(values)
    state = RolloutState(row)
    (attempt,) = await new_attempts(tx, [(state, False)], worker_id, now)
    return attempted(row, state, attempt)


_CLAIMED_COLUMNS = ", ".join("r." + c.strip() for c in ROLLOUT_COLUMNS.split(","))


async def claim(tx: Tx, limit: int, worker_id: str | None) -> list[AttemptedRollout]:
    """Take up to ``limit`` rollouts from the head of the queue, each with a new attempt. Rows other claimers hold
    are skipped (``FOR UPDATE SKIP LOCKED``): concurrent claimers take different rollouts, none waits."""
    rows = await tx.all(
        f"WITH head AS (SELECT n, ticket FROM rollouts WHERE ticket IS NOT NULL ORDER BY ticket LIMIT %s "
        f"FOR UPDATE SKIP LOCKED) "
        f"UPDATE rollouts r SET status = %s, ticket = NULL, attempt_count = r.attempt_count + 1 FROM head "
        f"WHERE r.n = head.n RETURNING head.ticket AS taken, {_CLAIMED_COLUMNS}",
        (limit, RolloutStatus.PREPARING.value),
    )
    if not rows:
        return []
    rows.sort(key=lambda r: r["taken"])
    states = [RolloutState(r) for r in rows]
    attempts = await new_attempts(tx, [(s, True) for s in states], worker_id, time.time())
    return [attempted(r, s, a) for r, s, a in zip(rows, states, attempts)]


async def queue_has_work(tx: Tx) -> bool:
    return await tx.one("SELECT 1 FROM rollouts WHERE ticket IS NOT NULL LIMIT 1") is not None


async def start_attempt(tx: Tx, rollout_id: str, worker_id: str | None) -> AttemptedRollout:
    row = await lock_rollout(tx, rollout_id)
    state = RolloutState(row)
    if state.status.is_terminal:
        raise InvalidStatusTransitionError(
            f"rollout {rollout_id!r} has ended ({state.status.value}); queue it again with "
            "update_rollout(status='queuing') before starting an attempt"
        )
    (attempt,) = await new_attempts(tx, [(state, False)], worker_id, time.time())
    return attempted(row, state, attempt)


async def update_rollout(tx: Tx, rollout_id: str, status: RolloutStatus | None, changes: Row) -> Rollout:
    """``changes``: column → value for mode / config / metadata / resources_id (a given id is checked here)."""
    row = await lock_rollout(tx, rollout_id)
    state = RolloutState(row)
    if changes.get("resources_id") is not None:
        await resources_id_for(tx, changes["resources_id"])
    move = False
    if status is not None:
        # Same-status moves are no-ops, except that a queued status always goes to the back of the queue.
        changed = policy.check_rollout_transition(state, status)  # type: ignore[arg-type]
        move = changed or status in policy.QUEUED_STATUSES
    if changes:
        assignments = ", ".join(f"{c} = %s" for c in changes)
        await tx.run(f"UPDATE rollouts SET {assignments} WHERE rollout_id = %s", [*changes.values(), rollout_id])
    if move:
        assert status is not None
        await set_rollout_status(tx, state, status, time.time(), requeue=True)
    return rollout_from_row(await lock_rollout(tx, rollout_id))


async def delete_rollouts(tx: Tx, rollout_ids: Sequence[str] | None, ended_before: float | None) -> int:
    if rollout_ids is not None:
        wanted = list(dict.fromkeys(rollout_ids))
        found = {
            r["rollout_id"]: r
            for r in await tx.all(
                "SELECT rollout_id, status, end_time FROM rollouts WHERE rollout_id = ANY(%s) "
                "ORDER BY rollout_id FOR UPDATE",
                (wanted,),
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
        query = "SELECT rollout_id, status, end_time FROM rollouts WHERE status = ANY(%s)"
        params: list[Any] = [TERMINAL]
        if ended_before is not None:
            query += " AND end_time < %s"
            params.append(ended_before)
        targets = await tx.all(query + " ORDER BY rollout_id FOR UPDATE", params)
        targets = [t for t in targets if t["status"] in TERMINAL]  # locked rows are read again: still ended?
    if ended_before is not None:
        targets = [t for t in targets if t["end_time"] is not None and t["end_time"] < ended_before]
    ids = [t["rollout_id"] for t in targets]
    if ids:
        await tx.run("DELETE FROM spans WHERE rollout_id = ANY(%s)", (ids,))
        await tx.run("DELETE FROM attempts WHERE rollout_id = ANY(%s)", (ids,))
        await tx.run("DELETE FROM rollouts WHERE rollout_id = ANY(%s)", (ids,))
    return len(ids)


# ---------------------------------------------------------------------------------------------------- attempts


async def update_attempt(
    tx: Tx, rollout_id: str, attempt_id: str, status: AttemptStatus | None, heartbeat: float | None, changes: Row
) -> Attempt:
    """Every update is a heartbeat (``heartbeat``, default now). ``changes``: column → value for ``worker_id`` and
    ``metadata`` (a blob)."""
    rollout, attempt = await attempt_state(tx, rollout_id, attempt_id)
    now = time.time()
    changes = {"last_heartbeat_time": now if heartbeat is None else heartbeat, **changes}
    if status is not None and policy.check_attempt_transition(attempt, status):  # type: ignore[arg-type]
        await set_attempt_status(tx, rollout, attempt, status, now, changes)
    else:
        await update_attempt_row(tx, attempt, changes)
    return attempt.to_attempt()


# ---------------------------------------------------------------------------------------------------- spans


async def store_spans(tx: Tx, spans: Sequence[tuple[Span, bytes]]) -> list[Span]:
    """Store ``(span, blob)`` pairs in order; a span already stored is returned as stored."""
    now = time.time()
    rollouts: dict[str, RolloutState] = {}
    attempts: dict[tuple[str, str], AttemptState] = {}
    for rollout_id in sorted({s.rollout_id for s, _ in spans}):  # lock in id order: no deadlock between batches
        await lock_rollout(tx, rollout_id, "rollout_id")
    for span, _ in spans:  # every attempt exists (NotFoundError before any write)
        if (span.rollout_id, span.attempt_id) not in attempts:
            rollout, attempt = await attempt_state(tx, span.rollout_id, span.attempt_id, lock=False, lock_attempt=True)
            rollouts.setdefault(span.rollout_id, rollout)
            attempts[(span.rollout_id, span.attempt_id)] = attempt
            if span.attempt_id == LATEST:
                attempts[(span.rollout_id, attempt.attempt_id)] = attempt
    resolved = [(span, blob, attempts[(span.rollout_id, span.attempt_id)].attempt_id) for span, blob in spans]
    keys = list(dict.fromkeys((a, s.span_id) for s, _, a in resolved))
    existing: dict[tuple[str, str], Span | None] = {}
    if keys:
        rows = await tx.all(
            f"SELECT {SPAN_COLUMNS} FROM spans WHERE (attempt_id, span_id) IN "
            f"(SELECT * FROM unnest(%s::text[], %s::text[]))",
            ([k[0] for k in keys], [k[1] for k in keys]),
        )
        existing = {(r["attempt_id"], r["span_id"]): span_from_row(r) for r in rows}
    # Sequence ids first, all of them checked before anything is written.
    plan: list[Span] = []
    new_rows: list[tuple[Any, ...]] = []
    by_id = {a.attempt_id: a for a in attempts.values()}
    last: dict[str, int] = {a.attempt_id: a.span_seq for a in by_id.values()}
    for span, blob, attempt_id in resolved:
        key = (attempt_id, span.span_id)
        found = existing.get(key)
        if found is not None:
            plan.append(found)
            continue
        sequence_id = span.sequence_id if span.sequence_id > 0 else last[attempt_id] + 1
        if sequence_id > INT64_MAX:
            raise ValueError(
                f"the next sequence id of attempt {attempt_id!r} must lie in the signed 64-bit range "
                "-2**63 .. 2**63-1; nothing was written"
            )
        last[attempt_id] = max(last[attempt_id], sequence_id)
        stored = replace(span, attempt_id=attempt_id, sequence_id=sequence_id)
        existing[key] = stored
        new_rows.append(span_row(stored, blob, by_id[attempt_id].sequence_id, sequence_id))
        plan.append(stored)
    placeholders = ", ".join(["%s"] * 9)
    if len(new_rows) == 1:
        await tx.run(f"INSERT INTO spans ({SPAN_COLUMNS}) VALUES ({placeholders})", new_rows[0])
    elif new_rows:
        await tx.many(f"INSERT INTO spans ({SPAN_COLUMNS}) VALUES ({placeholders})", new_rows)
    for attempt_id, attempt in by_id.items():
        reached = last[attempt_id]
        # A span is a heartbeat, and a sign of life for a preparing or unresponsive attempt.
        if attempt.status in (AttemptStatus.PREPARING, AttemptStatus.UNRESPONSIVE):
            changes = {"last_heartbeat_time": now, "span_seq": reached}
            await set_attempt_status(tx, rollouts[attempt.rollout_id], attempt, AttemptStatus.RUNNING, now, changes)
        elif not attempt.status.is_final:
            await update_attempt_row(tx, attempt, {"span_seq": reached, "last_heartbeat_time": now})
        elif reached != attempt.span_seq:
            await update_attempt_row(tx, attempt, {"span_seq": reached})
    return plan


_ONE_SPAN = (
    "WITH a AS (UPDATE attempts SET "
    "span_seq = CASE WHEN %(seq)s > 0 THEN greatest(span_seq, %(seq)s) ELSE span_seq + 1 END, "
    "last_heartbeat_time = %(now)s "
    "WHERE attempt_id = %(attempt_id)s AND rollout_id = %(rollout_id)s AND status = 'running' "
    "AND NOT EXISTS (SELECT 1 FROM spans WHERE attempt_id = %(attempt_id)s AND span_id = %(span_id)s) "
    "RETURNING sequence_id, span_seq) "
    f"INSERT INTO spans ({SPAN_COLUMNS}) SELECT %(rollout_id)s, %(attempt_id)s, a.sequence_id, "
    "CASE WHEN %(seq)s > 0 THEN %(seq)s ELSE a.span_seq END, %(span_id)s, %(name)s, %(start)s, %(end)s, %(data)s "
    "FROM a RETURNING sequence_id"
)


async def store_running_span(tx: Tx, span: Span, blob: bytes) -> Span | None:
    """One span of a ``running`` attempt in one statement (atomic by itself, no transaction): move the attempt's
    sequence id and heartbeat, insert the span. ``None`` when the span needs :func:`store_spans` (the attempt is
    not running, is unknown or ``latest``, or the span is stored already). The attempt's row lock orders it with
    every other change of the attempt."""
    if span.attempt_id == LATEST:
        return None
    row = await tx.one(
        _ONE_SPAN,
        {"seq": span.sequence_id, "now": time.time(), "attempt_id": span.attempt_id, "rollout_id": span.rollout_id,
         "span_id": span.span_id, "name": span.name, "start": span.start_time, "end": span.end_time, "data": blob},
    )  # fmt: skip
    if row is None:
        return None
    sequence_id = int(row["sequence_id"])
    return replace(span, sequence_id=sequence_id) if sequence_id != span.sequence_id else span


async def reserve_sequence_ids(tx: Tx, rollout_id: str, attempt_id: str, count: int) -> list[int]:
    _, attempt = await attempt_state(tx, rollout_id, attempt_id)
    if attempt.span_seq > INT64_MAX - count:
        raise ValueError(
            f"the last reserved sequence id of attempt {attempt.attempt_id!r} must lie in the signed 64-bit range "
            "-2**63 .. 2**63-1; nothing was reserved"
        )
    await tx.run("UPDATE attempts SET span_seq = span_seq + %s WHERE attempt_id = %s", (count, attempt.attempt_id))
    return list(range(attempt.span_seq + 1, attempt.span_seq + count + 1))


# ---------------------------------------------------------------------------------------------------- resources


async def update_resources(tx: Tx, resources_id: str, resources: dict[str, Resource], blob: bytes) -> ResourcesUpdate:
    # One writer of a resources id at a time: the lock orders its versions (there is no row to lock before the
    # first version).
    await tx.run("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"{resources_id}",))
    n = await take_numbers(tx, 1)
    previous = await tx.one(
        "SELECT version, create_time FROM resources WHERE resources_id = %s ORDER BY version DESC LIMIT 1",
        (resources_id,),
    )
    now = time.time()
    version, create_time = (1, now) if previous is None else (previous["version"] + 1, previous["create_time"])
    await tx.run(
        "INSERT INTO resources (n, resources_id, version, create_time, update_time, data) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (n, resources_id, version, create_time, now, blob),
    )
    return ResourcesUpdate(
        resources_id=resources_id, version=version, create_time=create_time, update_time=now, resources=dict(resources)
    )


# ---------------------------------------------------------------------------------------------------- workers

WORKER_COLUMNS = (
    "worker_id, status, heartbeat_stats, last_heartbeat_time, last_dequeue_time, last_busy_time, last_idle_time, "
    "current_rollout_id, current_attempt_id"
)


async def update_worker(tx: Tx, worker_id: str, stats: bytes | bool | None) -> Worker:
    """``stats``: the new stats blob (``None`` = {}), or ``False`` to keep them. An unresponsive worker comes back
    as ``busy`` if it still holds an attempt, else ``idle``."""
    now = time.time()
    keep = stats is False
    row = await tx.one(
        "INSERT INTO workers (worker_id, status, first_seen, last_heartbeat_time, heartbeat_stats) "
        "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (worker_id) DO UPDATE SET "
        "last_heartbeat_time = EXCLUDED.last_heartbeat_time, "
        "heartbeat_stats = CASE WHEN %s THEN workers.heartbeat_stats ELSE EXCLUDED.heartbeat_stats END, "
        "status = CASE WHEN workers.status = %s THEN "
        "(CASE WHEN workers.current_attempt_id IS NULL THEN %s ELSE %s END) ELSE workers.status END "
        f"RETURNING {WORKER_COLUMNS}",
        (worker_id, WorkerStatus.IDLE.value, now, now, None if keep else stats, keep, WorkerStatus.UNRESPONSIVE.value,
         WorkerStatus.IDLE.value, WorkerStatus.BUSY.value),
    )  # fmt: skip
    assert row is not None
    return worker_from_row(row)


# ---------------------------------------------------------------------------------------------------- watchdog


async def watched(tx: Tx) -> list[tuple[RolloutState, AttemptState]]:
    """The attempts the watchdog must look at, with their rollouts."""
    rows = await tx.all(
        f"SELECT {', '.join('a.' + c.strip() for c in ATTEMPT_COLUMNS.split(','))}, r.status AS r_status, "
        "r.config AS r_config, r.attempt_count AS r_attempt_count FROM attempts a JOIN rollouts r USING (rollout_id) "
        "WHERE a.watch"
    )
    pairs = []
    for r in rows:
        rollout = {"rollout_id": r["rollout_id"], "status": r["r_status"], "config": r["r_config"]}
        pairs.append((RolloutState({**rollout, "attempt_count": r["r_attempt_count"]}), AttemptState(r)))
    return pairs


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
