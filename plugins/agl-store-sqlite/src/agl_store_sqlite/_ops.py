"""The store's state machine on SQL rows: the write operations, each run inside one write transaction.

This mirrors the in-memory store (``agl_kernel.store.memory``) step by step, and takes every decision from
``agl_kernel.store.policy``. Every function validates before its first write; a raise rolls the whole operation
back (see ``_engine``). ``tx`` is a :class:`~agl_store_sqlite._engine.Tx`; functions that only read also accept a
plain ``sqlite3.Connection``.
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
    RolloutStatus,
    Span,
    Worker,
    WorkerStatus,
    encode_json,
)
from agl_kernel.store import policy
from agl_kernel.store.base import LATEST
from agl_kernel.store.blobs import with_attempt
from agl_store_sqlite._codec import (
    ATTEMPT_COLUMNS,
    ROLLOUT_COLUMNS,
    SPAN_COLUMNS,
    WORKER_COLUMNS,
    AttemptState,
    RolloutState,
    rollout_from_row,
    span_from_row,
    worker_from_row,
)

TERMINAL = tuple(s.value for s in RolloutStatus if s.is_terminal)
_TERMINAL_SQL = ", ".join(f"'{s}'" for s in TERMINAL)
_NEXT_TICKET = "(SELECT coalesce(max(queue_ticket), 0) + 1 FROM rollouts WHERE queue_ticket IS NOT NULL)"
_STATE = "r.rid, r.rollout_id, r.status, r.config, r.attempt_count"

Db = Any  # a Tx or a sqlite3.Connection: anything with execute()


def id_list(ids: Sequence[Any]) -> str:
    """A JSON array for ``IN (SELECT value FROM json_each(?))``: any number of ids in one parameter."""
    return encode_json(list(ids)).decode()


# ---------------------------------------------------------------------------------------------------- lookups


def rollout_row(db: Db, rollout_id: str) -> Any:
    row = db.execute(f"SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE rollout_id = ?", (rollout_id,)).fetchone()
    if row is None:
        raise NotFoundError(f"no rollout with id {rollout_id!r}")
    return row


def rollout_rid(db: Db, rollout_id: str) -> int:
    row = db.execute("SELECT rid FROM rollouts WHERE rollout_id = ?", (rollout_id,)).fetchone()
    if row is None:
        raise NotFoundError(f"no rollout with id {rollout_id!r}")
    return row[0]


def attempt_state(db: Db, rollout_id: str, attempt_id: str) -> tuple[RolloutState, AttemptState]:
    """The rollout and one of its attempts (``"latest"``: its newest); ``NotFoundError`` names what is missing."""
    if attempt_id == LATEST:
        row = db.execute(
            f"SELECT {_STATE}, {ATTEMPT_COLUMNS} FROM rollouts r "
            "LEFT JOIN attempts a ON a.rid = r.rid AND a.sequence_id = r.attempt_count WHERE r.rollout_id = ?",
            (rollout_id,),
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no rollout with id {rollout_id!r}")
        if row[5] is None:
            raise NotFoundError(f"rollout {rollout_id!r} has no attempt yet")
    else:
        row = db.execute(
            f"SELECT {_STATE}, {ATTEMPT_COLUMNS} FROM attempts a JOIN rollouts r ON r.rid = a.rid "
            "WHERE a.attempt_id = ? AND r.rollout_id = ?",
            (attempt_id, rollout_id),
        ).fetchone()
        if row is None:
            rollout_rid(db, rollout_id)
            raise NotFoundError(f"rollout {rollout_id!r} has no attempt with id {attempt_id!r}")
    return RolloutState(*row[:5]), AttemptState(rollout_id, row[5:])


def resources_id_for(db: Db, resources_id: str | None) -> str | None:
    """``None`` → the latest resources id (or ``None``); a given id must exist."""
    if resources_id is None:
        row = db.execute("SELECT resources_id FROM resources WHERE id = (SELECT max(id) FROM resources)").fetchone()
        return None if row is None else row[0]
    if db.execute("SELECT 1 FROM resources WHERE resources_id = ? LIMIT 1", (resources_id,)).fetchone() is None:
        raise NotFoundError(f"no resources with id {resources_id!r}; add them with add_resources first")
    return resources_id


def attempted(row: Sequence[Any], state: RolloutState, attempt: Attempt) -> AttemptedRollout:
    """The rollout of ``row`` (``ROLLOUT_COLUMNS``, read before the attempt started) with its new attempt."""
    return with_attempt(rollout_from_row(row), attempt, status=state.status, attempt_count=state.attempt_count)


# ---------------------------------------------------------------------------------------------------- transitions


def set_rollout_status(
    tx: Any, rollout: RolloutState, status: RolloutStatus, now: float, requeue: bool = False
) -> None:
    """Move a rollout to ``status``: into a queued status puts it at the back of the queue (``requeue``: even if
    it is queued already); leaving the queue drops its ticket; a terminal status sets ``end_time``."""
    previous = rollout.status
    if status in policy.QUEUED_STATUSES and (status is not previous or requeue):
        tx.execute(
            f"UPDATE rollouts SET status = ?, end_time = NULL, queue_ticket = {_NEXT_TICKET} WHERE rid = ?",
            (status.value, rollout.rid),
        )
        tx.wake_queue = True
    else:
        tx.execute(
            "UPDATE rollouts SET status = ?, end_time = ?, queue_ticket = NULL WHERE rid = ?",
            (status.value, now if status.is_terminal else None, rollout.rid),
        )
        if status.is_terminal and not previous.is_terminal:
            tx.wake_ended = True
    rollout.status = status


def new_attempt(tx: Any, rollout: RolloutState, worker_id: str | None, now: float) -> Attempt:
    """Start the rollout's next attempt (``preparing``; the rollout too) and mark the worker busy."""
    attempt = Attempt(
        rollout_id=rollout.rollout_id,
        attempt_id=policy.new_attempt_id(),
        sequence_id=rollout.attempt_count + 1,
        start_time=now,
        worker_id=worker_id,
        last_heartbeat_time=now,
    )
    tx.execute(
        "INSERT INTO attempts (attempt_id, rid, sequence_id, status, start_time, worker_id, last_heartbeat_time, "
        "watch) VALUES (?, ?, ?, 'preparing', ?, ?, ?, ?)",
        (
            attempt.attempt_id,
            rollout.rid,
            attempt.sequence_id,
            now,
            worker_id,
            now,
            1 if policy.is_supervised(rollout.config) else None,
        ),
    )
    tx.execute(
        "UPDATE rollouts SET status = 'preparing', attempt_count = ?, queue_ticket = NULL WHERE rid = ?",
        (attempt.sequence_id, rollout.rid),
    )
    rollout.status = RolloutStatus.PREPARING
    rollout.attempt_count = attempt.sequence_id
    if worker_id is not None:
        tx.execute(
            "INSERT INTO workers (worker_id, status, last_dequeue_time, last_busy_time, current_rollout_id, "
            "current_attempt_id) VALUES (?, 'busy', ?, ?, ?, ?) ON CONFLICT (worker_id) DO UPDATE SET "
            "status = 'busy', last_dequeue_time = excluded.last_dequeue_time, "
            "last_busy_time = excluded.last_busy_time, "
            "current_rollout_id = excluded.current_rollout_id, current_attempt_id = excluded.current_attempt_id",
            (worker_id, now, now, rollout.rollout_id, attempt.attempt_id),
        )
    return attempt


def release_worker(tx: Any, attempt: AttemptState, status: WorkerStatus, now: float) -> None:
    """The attempt's worker (if it is still on this attempt) becomes ``status``; ``idle`` frees it."""
    if not attempt.worker_id:
        return
    if status is WorkerStatus.IDLE:
        tx.execute(
            "UPDATE workers SET status = 'idle', last_idle_time = ?, current_rollout_id = NULL, "
            "current_attempt_id = NULL WHERE worker_id = ? AND current_attempt_id = ?",
            (now, attempt.worker_id, attempt.attempt_id),
        )
    else:
        tx.execute(
            "UPDATE workers SET status = ? WHERE worker_id = ? AND current_attempt_id = ?",
            (status.value, attempt.worker_id, attempt.attempt_id),
        )


_UPDATE_ATTEMPT_SQL: dict[tuple[str, ...], str] = {}


def _update_attempt_row(tx: Any, attempt: AttemptState, changes: dict[str, Any]) -> None:
    """Write ``changes`` (column → value; ``metadata`` as a blob) to the row and to ``attempt``."""
    columns = tuple(changes)
    sql = _UPDATE_ATTEMPT_SQL.get(columns)
    if sql is None:
        assignments = ", ".join(f"{column} = ?" for column in columns)
        sql = _UPDATE_ATTEMPT_SQL[columns] = f"UPDATE attempts SET {assignments} WHERE aid = ?"
    tx.execute(sql, (*changes.values(), attempt.aid))
    for column, value in changes.items():
        if column == "metadata":
            attempt.metadata_blob = value
        elif column == "status":
            attempt.status = AttemptStatus(value)
        elif column != "watch":
            setattr(attempt, column, value)


def set_attempt_status(
    tx: Any, rollout: RolloutState, attempt: AttemptState, status: AttemptStatus, now: float, changes: dict[str, Any]
) -> None:
    """Move an attempt to ``status`` (with ``changes``) and let the rollout and the worker follow."""
    rollout_status = None
    if attempt.sequence_id == rollout.attempt_count:  # only the newest attempt drives the rollout
        rollout_status = policy.rollout_status_after_attempt(rollout, attempt, status)  # type: ignore[arg-type]
    worker_status = policy.worker_status_after_attempt(attempt.status, status)
    if worker_status is not None:
        release_worker(tx, attempt, worker_status, now)
    row_changes = {"status": status.value, "end_time": now if status.is_final else None, **changes}
    if status.is_final:
        row_changes["watch"] = None
    _update_attempt_row(tx, attempt, row_changes)
    if rollout_status is not None and rollout_status is not rollout.status:
        set_rollout_status(tx, rollout, rollout_status, now)


# ---------------------------------------------------------------------------------------------------- rollouts


EnqueueItem = tuple[Any, bytes, Any, str | None, Any, bytes | None, Any, bytes | None]


def enqueue(tx: Any, requests: Sequence[EnqueueItem]) -> list[Rollout]:
    """``requests``: ``(input, input_blob, mode, resources_id, config, config_blob, metadata, metadata_blob)``."""
    resources = [resources_id_for(tx, r[3]) for r in requests]  # validate everything before the first write
    now = time.time()
    rollouts = []
    for (input, input_blob, mode, _, config, config_blob, metadata, metadata_blob), resources_id in zip(
        requests, resources
    ):
        rollout_id = policy.new_rollout_id()
        tx.execute(
            "INSERT INTO rollouts (rollout_id, status, mode, start_time, resources_id, queue_ticket, config, input, "
            f"metadata) VALUES (?, 'queuing', ?, ?, ?, {_NEXT_TICKET}, ?, ?, ?)",
            (
                rollout_id,
                None if mode is None else mode.value,
                now,
                resources_id,
                config_blob,
                input_blob,
                metadata_blob,
            ),
        )
        rollouts.append(
            Rollout(
                rollout_id=rollout_id,
                input=input,
                start_time=now,
                mode=mode,
                resources_id=resources_id,
                status=RolloutStatus.QUEUING,
                config=config,
                metadata=metadata,
            )
        )
    if rollouts:
        tx.wake_queue = True
    return rollouts


def start_rollout(
    tx: Any,
    input_blob: bytes,
    mode: Any,
    resources_id: str | None,
    config_blob: bytes | None,
    metadata_blob: bytes | None,
    worker_id: str | None,
) -> AttemptedRollout:
    resources_id = resources_id_for(tx, resources_id)
    now = time.time()
    cursor = tx.execute(
        "INSERT INTO rollouts (rollout_id, status, mode, start_time, resources_id, config, input, metadata) "
        "VALUES (?, 'preparing', ?, ?, ?, ?, ?, ?)",
        (
            policy.new_rollout_id(),
            None if mode is None else mode.value,
            now,
            resources_id,
            config_blob,
            input_blob,
            metadata_blob,
        ),
    )
    row = tx.execute(f"SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE rid = ?", (cursor.lastrowid,)).fetchone()
    state = RolloutState(row[0], row[1], row[2], row[8], row[6])
    return attempted(row, state, new_attempt(tx, state, worker_id, now))


def pop_queue(tx: Any, limit: int, worker_id: str | None) -> list[AttemptedRollout]:
    """Take up to ``limit`` rollouts from the head of the queue, each with a new attempt. Only queued rollouts
    hold a ticket, so there are no stale entries to skip."""
    rows = tx.execute(
        f"SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE queue_ticket IS NOT NULL ORDER BY queue_ticket LIMIT ?",
        (limit,),
    ).fetchall()
    now = time.time()
    taken = []
    for row in rows:
        state = RolloutState(row[0], row[1], row[2], row[8], row[6])
        taken.append(attempted(row, state, new_attempt(tx, state, worker_id, now)))
    return taken


def queue_has_work(db: Db) -> bool:
    return db.execute("SELECT 1 FROM rollouts WHERE queue_ticket IS NOT NULL LIMIT 1").fetchone() is not None


def start_attempt(tx: Any, rollout_id: str, worker_id: str | None) -> AttemptedRollout:
    row = rollout_row(tx, rollout_id)
    state = RolloutState(row[0], row[1], row[2], row[8], row[6])
    if state.status.is_terminal:
        raise InvalidStatusTransitionError(
            f"rollout {rollout_id!r} has ended ({state.status.value}); queue it again with "
            "update_rollout(status='queuing') before starting an attempt"
        )
    return attempted(row, state, new_attempt(tx, state, worker_id, time.time()))


def update_rollout(tx: Any, rollout_id: str, status: RolloutStatus | None, changes: dict[str, Any]) -> Rollout:
    """``changes``: column → value for mode / config / metadata / resources_id (an id is checked here)."""
    row = rollout_row(tx, rollout_id)
    state = RolloutState(row[0], row[1], row[2], row[8], row[6])
    if changes.get("resources_id") is not None:
        resources_id_for(tx, changes["resources_id"])
    move = False
    if status is not None:
        # Same-status moves are no-ops, except that a queued status always goes to the back of the queue.
        changed = policy.check_rollout_transition(state, status)  # type: ignore[arg-type]
        move = changed or status in policy.QUEUED_STATUSES
    if changes:
        tx.execute(
            f"UPDATE rollouts SET {', '.join(f'{column} = ?' for column in changes)} WHERE rid = ?",
            (*changes.values(), state.rid),
        )
    if move:
        assert status is not None
        set_rollout_status(tx, state, status, time.time(), requeue=True)
    return rollout_from_row(rollout_row(tx, rollout_id))


def delete_rollouts(tx: Any, rollout_ids: Sequence[str] | None, ended_before: float | None) -> int:
    if rollout_ids is not None:
        wanted = list(dict.fromkeys(rollout_ids))
        found = {
            row[1]: row
            for row in tx.execute(
                "SELECT rid, rollout_id, status, end_time FROM rollouts "
                "WHERE rollout_id IN (SELECT value FROM json_each(?))",
                (id_list(wanted),),
            )
        }
        for rollout_id in wanted:
            if rollout_id not in found:
                raise NotFoundError(f"no rollout with id {rollout_id!r}")
        running = [r for r in wanted if found[r][2] not in TERMINAL]
        if running:
            raise InvalidStatusTransitionError(
                f"only ended rollouts can be deleted; still active: {', '.join(running)}. Cancel them first."
            )
        targets = [found[r] for r in wanted]
    elif ended_before is not None:
        targets = tx.execute(
            # "+status": search by the end_time index (retention), not by status.
            f"SELECT rid, rollout_id, status, end_time FROM rollouts WHERE end_time IS NOT NULL AND end_time < ? "
            f"AND +status IN ({_TERMINAL_SQL})",
            (ended_before,),
        ).fetchall()
    else:
        targets = tx.execute(
            f"SELECT rid, rollout_id, status, end_time FROM rollouts WHERE status IN ({_TERMINAL_SQL})"
        ).fetchall()
    if ended_before is not None:
        targets = [t for t in targets if t[3] is not None and t[3] < ended_before]
    rids = id_list([t[0] for t in targets])
    tx.execute(
        "DELETE FROM spans WHERE aid IN (SELECT aid FROM attempts WHERE rid IN (SELECT value FROM json_each(?)))",
        (rids,),
    )
    tx.execute("DELETE FROM attempts WHERE rid IN (SELECT value FROM json_each(?))", (rids,))
    tx.execute("DELETE FROM rollouts WHERE rid IN (SELECT value FROM json_each(?))", (rids,))
    return len(targets)


# ---------------------------------------------------------------------------------------------------- attempts


def update_attempt(
    tx: Any,
    rollout_id: str,
    attempt_id: str,
    status: AttemptStatus | None,
    heartbeat: float | None,
    changes: dict[str, Any],
) -> Attempt:
    """Every update is a heartbeat (``heartbeat``, default now). ``changes``: column → value for ``worker_id``
    and ``metadata`` (a blob)."""
    rollout, attempt = attempt_state(tx, rollout_id, attempt_id)
    now = time.time()
    changes = {"last_heartbeat_time": now if heartbeat is None else heartbeat, **changes}
    if status is not None and policy.check_attempt_transition(attempt, status):  # type: ignore[arg-type]
        set_attempt_status(tx, rollout, attempt, status, now, changes)
    else:
        _update_attempt_row(tx, attempt, changes)
    return attempt.to_attempt()


# ---------------------------------------------------------------------------------------------------- spans


def store_spans(tx: Any, spans: Sequence[tuple[Span, bytes]]) -> list[Span]:
    """Store ``(span, blob)`` pairs in order; a span already stored is returned as stored."""
    now = time.time()
    rollouts: dict[str, RolloutState] = {}
    attempts: dict[tuple[str, str], AttemptState] = {}
    stored = []
    for span, blob in spans:
        attempt = attempts.get((span.rollout_id, span.attempt_id))
        if attempt is None:
            rollout, attempt = attempt_state(tx, span.rollout_id, span.attempt_id)
            rollout = rollouts.setdefault(span.rollout_id, rollout)
            attempts[(span.rollout_id, span.attempt_id)] = attempt
        else:
            rollout = rollouts[span.rollout_id]
        stored.append(_store_span(tx, rollout, attempt, span, blob, now))
    return stored


def _store_span(tx: Any, rollout: RolloutState, attempt: AttemptState, span: Span, blob: bytes, now: float) -> Span:
    sequence_id = span.sequence_id if span.sequence_id > 0 else attempt.span_seq + 1
    cursor = tx.execute(
        "INSERT INTO spans (aid, sequence_id, span_id, name, start_time, end_time, data) VALUES (?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (aid, span_id) DO NOTHING",
        (attempt.aid, sequence_id, span.span_id, span.name, span.start_time, span.end_time, blob),
    )
    if cursor.rowcount == 0:  # stored before: idempotent
        row = tx.execute(
            f"SELECT {SPAN_COLUMNS} FROM spans s WHERE s.aid = ? AND s.span_id = ?", (attempt.aid, span.span_id)
        ).fetchone()
        return span_from_row(span.rollout_id, attempt.attempt_id, row)
    last = max(attempt.span_seq, sequence_id)
    # A span is a heartbeat, and a sign of life for a preparing or unresponsive attempt.
    if attempt.status in (AttemptStatus.PREPARING, AttemptStatus.UNRESPONSIVE):
        changes = {"last_heartbeat_time": now, "span_seq": last}
        set_attempt_status(tx, rollout, attempt, AttemptStatus.RUNNING, now, changes)
    elif not attempt.status.is_final:
        _update_attempt_row(tx, attempt, {"span_seq": last, "last_heartbeat_time": now})
    elif last != attempt.span_seq:
        _update_attempt_row(tx, attempt, {"span_seq": last})
    if sequence_id != span.sequence_id or span.attempt_id != attempt.attempt_id:
        return replace(span, sequence_id=sequence_id, attempt_id=attempt.attempt_id)
    return span


def reserve_sequence_ids(tx: Any, rollout_id: str, attempt_id: str, count: int) -> list[int]:
    _, attempt = attempt_state(tx, rollout_id, attempt_id)
    tx.execute("UPDATE attempts SET span_seq = span_seq + ? WHERE aid = ?", (count, attempt.aid))
    return list(range(attempt.span_seq + 1, attempt.span_seq + count + 1))


# ---------------------------------------------------------------------------------------------------- resources


def update_resources(tx: Any, resources_id: str, resources: dict[str, Resource], blob: bytes) -> ResourcesUpdate:
    previous = tx.execute(
        "SELECT version, create_time FROM resources WHERE resources_id = ? ORDER BY version DESC LIMIT 1",
        (resources_id,),
    ).fetchone()
    now = time.time()
    version, create_time = (1, now) if previous is None else (previous[0] + 1, previous[1])
    tx.execute(
        "INSERT INTO resources (resources_id, version, create_time, update_time, data) VALUES (?, ?, ?, ?, ?)",
        (resources_id, version, create_time, now, blob),
    )
    return ResourcesUpdate(
        resources_id=resources_id, version=version, create_time=create_time, update_time=now, resources=dict(resources)
    )


def update_worker(tx: Any, worker_id: str, stats: bytes | bool | None) -> Worker:
    """``stats``: the new stats blob (``None`` = {}), or ``False`` to keep them. An unresponsive worker comes
    back as ``busy`` if it still holds an attempt, else ``idle``."""
    keep = stats is False
    rows = tx.execute(
        "INSERT INTO workers (worker_id, status, heartbeat_stats, last_heartbeat_time) VALUES (?, 'idle', ?, ?) "
        "ON CONFLICT (worker_id) DO UPDATE SET last_heartbeat_time = excluded.last_heartbeat_time, "
        "heartbeat_stats = CASE WHEN ? THEN workers.heartbeat_stats ELSE excluded.heartbeat_stats END, "
        "status = CASE WHEN workers.status != 'unresponsive' THEN workers.status "
        "WHEN workers.current_attempt_id IS NOT NULL THEN 'busy' ELSE 'idle' END "
        f"RETURNING {WORKER_COLUMNS}",
        (worker_id, None if keep else stats, time.time(), keep),
    ).fetchall()
    return worker_from_row(rows[0])


# ---------------------------------------------------------------------------------------------------- watchdog


def _watched(db: Db) -> list[tuple[RolloutState, AttemptState]]:
    rows = db.execute(
        f"SELECT {_STATE}, {ATTEMPT_COLUMNS} FROM attempts a JOIN rollouts r ON r.rid = a.rid "
        "WHERE a.watch IS NOT NULL ORDER BY a.aid"
    ).fetchall()
    rollouts: dict[int, RolloutState] = {}
    watched = []
    for row in rows:
        rollout = rollouts.get(row[0])
        if rollout is None:
            rollout = rollouts[row[0]] = RolloutState(*row[:5])
        watched.append((rollout, AttemptState(row[1], row[5:])))
    return watched


def any_deadline_due(db: Db, now: float) -> bool:
    """A cheap read: whether :func:`apply_deadlines` would change anything."""
    return any(policy.deadline_status(a, r.config, now) is not None for r, a in _watched(db))  # type: ignore[arg-type]


def apply_deadlines(tx: Any, now: float) -> int:
    """Time out / mark unresponsive every watched attempt past its deadline at ``now``; returns how many."""
    changed = 0
    for rollout, attempt in _watched(tx):
        status = policy.deadline_status(attempt, rollout.config, now)  # type: ignore[arg-type]
        if status is not None:
            set_attempt_status(tx, rollout, attempt, status, now, {})
            changed += 1
    return changed
