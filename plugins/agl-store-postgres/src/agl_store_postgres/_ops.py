"""The store's state machine on rows: each write operation runs inside one transaction (``tx.conn``).

The hot ones (enqueue, claim, a span, an attempt's status change in the common states) are instead one call each of
a function of the schema (``_schema``), with the decisions taken here all the same; the general paths below handle
everything else, including what those calls leave (they return ``None`` where the rows were not as assumed).

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

import functools
import itertools
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import psycopg
from msgspec.structs import replace

from agl_kernel.errors import InvalidStatusTransitionError, NotFoundError
from agl_kernel.models import (
    Attempt,
    AttemptedRollout,
    AttemptStatus,
    Resource,
    ResourcesUpdate,
    Rollout,
    RolloutConfig,
    RolloutMode,
    RolloutStatus,
    Span,
    Worker,
    WorkerStatus,
)
from agl_kernel.store import policy
from agl_kernel.store.base import LATEST
from agl_kernel.store.blobs import DEFAULT_CONFIG, with_attempt
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


async def take_number(tx: Tx) -> int:
    """The schema's counter's next number."""
    row = await tx.one("SELECT nextval('counter') AS n")
    assert row is not None
    return int(row["n"])


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
        ticket = await take_number(tx)
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


async def new_attempt(tx: Tx, rollout: RolloutState, worker_id: str | None, now: float) -> Attempt:
    """Start the rollout's next attempt (``preparing``; the rollout too) and mark the worker busy with it. (A claim
    from the queue does the same in the schema's ``agl_claim``.)"""
    sequence_id = rollout.attempt_count + 1
    attempt = Attempt(
        rollout_id=rollout.rollout_id,
        attempt_id=policy.new_attempt_id(),
        sequence_id=sequence_id,
        start_time=now,
        worker_id=worker_id,
        last_heartbeat_time=now,
    )
    await tx.run(
        "UPDATE rollouts SET status = %s, attempt_count = %s, ticket = NULL WHERE rollout_id = %s",
        (RolloutStatus.PREPARING.value, sequence_id, rollout.rollout_id),
    )
    rollout.status = RolloutStatus.PREPARING
    rollout.attempt_count = sequence_id
    await tx.run(
        "INSERT INTO attempts (attempt_id, rollout_id, sequence_id, status, start_time, worker_id, "
        "last_heartbeat_time, watch) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (attempt.attempt_id, rollout.rollout_id, sequence_id, AttemptStatus.PREPARING.value, now, worker_id, now,
         True if policy.is_supervised(rollout.config) else None),
    )  # fmt: skip
    if worker_id is not None:
        await tx.run(
            "INSERT INTO workers (worker_id, status, first_seen, last_dequeue_time, last_busy_time, "
            "current_rollout_id, current_attempt_id) VALUES (%s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (worker_id) DO UPDATE SET status = EXCLUDED.status, "
            "last_dequeue_time = EXCLUDED.last_dequeue_time, last_busy_time = EXCLUDED.last_busy_time, "
            "current_rollout_id = EXCLUDED.current_rollout_id, current_attempt_id = EXCLUDED.current_attempt_id",
            (worker_id, WorkerStatus.BUSY.value, now, now, now, rollout.rollout_id, attempt.attempt_id),
        )
    return attempt


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


def _resources_missing(exc: psycopg.errors.NoDataFound) -> NotFoundError:
    """What ``agl_enqueue`` raises for a resources id that does not exist (the id is its message)."""
    resources_id = exc.diag.message_primary
    return NotFoundError(f"no resources with id {resources_id!r}; add them with add_resources first")


async def enqueue(
    tx: Tx, requests: Sequence[EnqueueItem], rollout_ids: Sequence[str], now: float, channel: str
) -> list[Rollout]:
    """Queue rollouts with these ids, in order, all or nothing: one call of ``agl_enqueue``."""
    columns: tuple[list[Any], ...] = ([], [], [], [], [], [])
    for _, input_blob, mode, resources_id, config, config_blob, _, metadata_blob in requests:
        values = (None if mode is None else mode.value, resources_id, config_blob, policy.is_supervised(config),
                  input_blob, metadata_blob)  # fmt: skip
        for column, value in zip(columns, values):
            column.append(value)
    try:
        if len(rollout_ids) == 1:
            rows = await tx.call(
                "SELECT ARRAY[agl_enqueue_one($1, $2, $3, $4::bytea, $5, $6::bytea, $7::bytea, $8, $9)] AS chosen",
                (rollout_ids[0], *(column[0] for column in columns), now, channel),
            )
        else:
            rows = await tx.call(
                "SELECT agl_enqueue($1::text[], $2::text[], $3::text[], $4::bytea[], $5::boolean[], $6::bytea[], "
                "$7::bytea[], $8, $9) AS chosen",
                (rollout_ids, *columns, now, channel),
            )
    except psycopg.errors.NoDataFound as exc:
        raise _resources_missing(exc) from None
    row = rows[0]
    return [
        Rollout(rollout_id=rollout_id, input=input, start_time=now, mode=mode, resources_id=resources_id,
                status=RolloutStatus.QUEUING, config=config, metadata=metadata)
        for rollout_id, resources_id, (input, _, mode, _, config, _, metadata, _) in zip(
            rollout_ids, row["chosen"], requests
        )
    ]  # fmt: skip


async def start_rollout(tx: Tx, item: EnqueueItem, worker_id: str | None) -> AttemptedRollout:
    _, input_blob, mode, resources_id, config, config_blob, _, metadata_blob = item
    n = await take_number(tx)
    resources_id = await resources_id_for(tx, resources_id)
    now = time.time()
    row: Row = {
        "n": n, "rollout_id": policy.new_rollout_id(), "status": RolloutStatus.PREPARING.value,
        "mode": None if mode is None else mode.value, "start_time": now, "end_time": None, "attempt_count": 0,
        "resources_id": resources_id, "config": config_blob, "input": input_blob, "metadata": metadata_blob,
        "supervised": policy.is_supervised(config),
    }  # fmt: skip
    await tx.run(f"INSERT INTO rollouts ({', '.join(row)}) VALUES ({', '.join(['%s'] * len(row))})", list(row.values()))
    state = RolloutState(row)
    attempt = await new_attempt(tx, state, worker_id, now)
    return attempted(row, state, attempt)


async def claim(tx: Tx, attempt_ids: Sequence[str], worker_id: str | None, now: float) -> list[AttemptedRollout]:
    """Take up to ``len(attempt_ids)`` rollouts from the head of the queue, each with a new attempt (these ids, in
    queue order): one call of ``agl_claim``. Rows other claimers hold are skipped (``FOR UPDATE SKIP LOCKED``):
    concurrent claimers take different rollouts, none waits."""
    if len(attempt_ids) == 1:  # a dequeue_rollout: no list for psycopg to dump
        rows = await tx.call("SELECT * FROM agl_claim(ARRAY[$1::text], $2, $3)", (attempt_ids[0], worker_id, now))
    else:
        rows = await tx.call("SELECT * FROM agl_claim($1::text[], $2, $3)", (attempt_ids, worker_id, now))
    claimed = []
    for row, attempt_id in zip(rows, attempt_ids):
        attempt = Attempt(
            rollout_id=row["rollout_id"], attempt_id=attempt_id, sequence_id=row["attempt_count"], start_time=now,
            worker_id=worker_id, last_heartbeat_time=now,
        )  # fmt: skip
        claimed.append(
            with_attempt(rollout_from_row(row), attempt, status=RolloutStatus.PREPARING,
                         attempt_count=row["attempt_count"])
        )  # fmt: skip
    return claimed


async def start_attempt(tx: Tx, rollout_id: str, worker_id: str | None) -> AttemptedRollout:
    row = await lock_rollout(tx, rollout_id)
    state = RolloutState(row)
    if state.status.is_terminal:
        raise InvalidStatusTransitionError(
            f"rollout {rollout_id!r} has ended ({state.status.value}); queue it again with "
            "update_rollout(status='queuing') before starting an attempt"
        )
    attempt = await new_attempt(tx, state, worker_id, time.time())
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


class MovePlan(NamedTuple):
    """What moving an attempt to a status does in the common case, as the policy decided it (:func:`move_plan`)."""

    rollout_from: str
    """The rollout statuses it holds for, as a PostgreSQL array literal (enum values: no quoting needed)."""
    attempt_from: str
    plain_config: bool
    rollout_status: RolloutStatus | None
    worker_status: WorkerStatus | None


_COMMON_ROLLOUT = (RolloutStatus.PREPARING, RolloutStatus.RUNNING)
_COMMON_ATTEMPT = (AttemptStatus.PREPARING, AttemptStatus.RUNNING)
_PROBE_CONFIGS = (
    RolloutConfig(max_attempts=1, retry_condition=()),
    RolloutConfig(max_attempts=2**31 - 1, retry_condition=tuple(AttemptStatus)),
)


@functools.cache
def move_plan(status: AttemptStatus) -> MovePlan | None:
    """The outcome of moving the newest attempt of a rollout to ``status`` while the rollout is preparing or running
    and the attempt preparing or running (not ``status``) -- what runners do -- when the policy gives the same one
    in all those states, whatever the attempt's sequence id and (else ``plain_config``: for the default config)
    whatever the rollout's config; ``None`` when it does not. ``agl_move_attempt`` applies it after checking that
    the rows are in one of those states."""
    attempt_from = [s for s in _COMMON_ATTEMPT if s is not status]

    def outcomes(configs: Sequence[RolloutConfig]) -> set[tuple[RolloutStatus | None, WorkerStatus | None]]:
        found = set()
        for rollout_status, attempt_status, config, sequence_id in itertools.product(
            _COMMON_ROLLOUT, attempt_from, configs, (1, 2**31 - 1)
        ):
            rollout = Rollout(rollout_id="", input=None, start_time=0.0, status=rollout_status, config=config)
            attempt = Attempt(rollout_id="", attempt_id="", sequence_id=sequence_id, start_time=0.0,
                              status=attempt_status)  # fmt: skip
            found.add((
                policy.rollout_status_after_attempt(rollout, attempt, status),
                policy.worker_status_after_attempt(attempt_status, status),
            ))  # fmt: skip
        return found

    plain = False
    found = outcomes((DEFAULT_CONFIG, *_PROBE_CONFIGS))
    if len(found) != 1:
        plain, found = True, outcomes((DEFAULT_CONFIG,))
        if len(found) != 1:
            return None
    ((rollout_status, worker_status),) = found
    return MovePlan(_array(_COMMON_ROLLOUT), _array(attempt_from), plain, rollout_status, worker_status)


def _array(statuses: Sequence[RolloutStatus | AttemptStatus]) -> str:
    return "{" + ",".join(s.value for s in statuses) + "}"


async def move_attempt(
    tx: Tx, rollout_id: str, attempt_id: str, status: AttemptStatus, heartbeat: float | None, plan: MovePlan,
    channels: tuple[str, str],
) -> Attempt | None:  # fmt: skip
    """:func:`update_attempt` for a status change with nothing else, in one call of ``agl_move_attempt``;
    ``None`` (nothing written) where the rows are not in the states ``plan`` assumed."""
    now = time.time()
    target = plan.rollout_status
    queued = target is not None and target in policy.QUEUED_STATUSES
    terminal = target is not None and target.is_terminal
    rows = await tx.call(
        "SELECT * FROM agl_move_attempt($1, $2, $3, $4, $5, $6, $7, $8::text[], $9::text[], $10, $11, $12, $13, $14, "
        "$15)",
        (rollout_id, None if attempt_id == LATEST else attempt_id, status.value, now if status.is_final else None,
         status.is_final, now if heartbeat is None else heartbeat, now, plan.rollout_from, plan.attempt_from,
         plan.plain_config, None if plan.worker_status is None else plan.worker_status.value,
         None if target is None else target.value, queued, now if terminal else None,
         channels[0] if queued else channels[1] if terminal else None),
    )  # fmt: skip
    return AttemptState(rows[0]).to_attempt() if rows else None


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


@functools.lru_cache(maxsize=512)
def _spans_query(count: int) -> str:
    """A batch of ``count`` spans: one ``agl_add_span`` call per row of a VALUES list, in one statement."""
    casts = ("", "::text", "::text", "::int8", "::text", "::text", "::float8", "::float8", "::bytea")
    rows = [
        "(" + ", ".join(f"${3 + 9 * row + column}{casts[column] if row == 0 else ''}" for column in range(9)) + ")"
        for row in range(count)
    ]
    return (
        "SELECT v.k, agl_add_span(v.r, v.a, v.q, v.s, v.n, v.t0, v.t1, v.d, $1, $2) AS sequence_id "
        f"FROM (VALUES {', '.join(rows)}) AS v(k, r, a, q, s, n, t0, t1, d)"
    )


async def store_live_spans(tx: Tx, spans: Sequence[tuple[Span, bytes]], everything: bool) -> list[Span | None]:
    """Spans of ``preparing`` / ``running`` attempts in one statement (one ``agl_add_span`` call each; no
    ``latest`` attempt id among them): each stored one as stored, ``None`` for those left to :func:`store_spans`
    (the attempt is in another status or unknown). ``everything``: all or nothing (then ``None`` everywhere,
    nothing written, where one is left). A span stored already fails the statement (``UniqueViolation``, nothing
    written): the caller sends each of them the general way. Taken in attempt-id order, the order their rows are
    locked in."""
    params: list[Any] = [time.time(), everything]
    for k in sorted(range(len(spans)), key=lambda i: spans[i][0].attempt_id):
        span, blob = spans[k]
        params += (k, span.rollout_id, span.attempt_id, span.sequence_id, span.span_id, span.name, span.start_time,
                   span.end_time, blob)  # fmt: skip
    try:
        rows = await tx.call(_spans_query(len(spans)), params)
    except psycopg.errors.NoDataFound:  # everything or nothing: something was left
        return [None] * len(spans)
    stored: list[Span | None] = [None] * len(spans)
    for row in rows:
        if row["sequence_id"] is not None:
            span = spans[row["k"]][0]
            sequence_id = int(row["sequence_id"])
            stored[row["k"]] = span if sequence_id == span.sequence_id else replace(span, sequence_id=sequence_id)
    return stored


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
    n = await take_number(tx)
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
