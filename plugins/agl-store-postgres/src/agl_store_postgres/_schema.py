"""The store's tables, and the migrations that bring an older schema up to date.

A store lives in one PostgreSQL schema (``store.schema``, default ``agl``): several trainers share a database, each
in its own schema. The version lives in the schema's ``meta`` table. Opening the store takes a transaction-scoped
advisory lock on the schema's name, reads the version, refuses a newer one before anything is written, and applies
the missing migrations in the same transaction: several processes opening an old schema at once migrate it exactly
once, and a failed migration leaves it as it was.

Version 2 adds ``rollouts.supervised`` and the functions that make the hot operations one round trip each; version 3
makes a span of a running attempt two statements of ``agl_add_span`` instead of four; version 4 sends a NOTIFY only
while some process listens on its channel (``listeners``, ``agl_notify``).
"""

from __future__ import annotations

import zlib
from typing import Any

from psycopg import AsyncConnection, sql

from agl_store_postgres._errors import SchemaVersionError, redact

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "ensure_schema"]

# Text that the store sorts on uses the "C" collation: byte order, as the contract (and Python) sorts strings,
# whatever the database's locale.
_V1 = """
CREATE TABLE meta (key text PRIMARY KEY, value bigint NOT NULL);
CREATE SEQUENCE counter;                  -- creation order of rollouts, queue tickets, resources' write order
CREATE TABLE rollouts (
    n bigint PRIMARY KEY,                 -- creation order
    rollout_id text COLLATE "C" NOT NULL UNIQUE,
    status text COLLATE "C" NOT NULL,
    mode text COLLATE "C",
    start_time double precision NOT NULL,
    end_time double precision,
    attempt_count integer NOT NULL DEFAULT 0,
    resources_id text COLLATE "C",
    ticket bigint,                        -- set exactly while the rollout waits in the queue (FIFO by ticket)
    config bytea,                         -- msgpack RolloutConfig; NULL = the default config
    input bytea NOT NULL,                 -- msgpack
    metadata bytea                        -- msgpack dict; NULL = {}
);
CREATE INDEX rollouts_queue ON rollouts (ticket) WHERE ticket IS NOT NULL;
CREATE INDEX rollouts_status ON rollouts (status);
CREATE INDEX rollouts_ended ON rollouts (end_time) WHERE end_time IS NOT NULL;
CREATE TABLE attempts (
    attempt_id text COLLATE "C" PRIMARY KEY,
    rollout_id text COLLATE "C" NOT NULL,
    sequence_id integer NOT NULL,
    status text COLLATE "C" NOT NULL,
    start_time double precision NOT NULL,
    end_time double precision,
    worker_id text COLLATE "C",
    last_heartbeat_time double precision,
    metadata bytea,                       -- msgpack dict; NULL = {}
    span_seq bigint NOT NULL DEFAULT 0,   -- the last span sequence id handed out
    watch boolean                         -- true while the watchdog must look at it (supervised, not final)
);
CREATE UNIQUE INDEX attempts_rollout ON attempts (rollout_id, sequence_id);
CREATE INDEX attempts_watch ON attempts (watch) WHERE watch;
CREATE TABLE spans (
    attempt_id text COLLATE "C" NOT NULL,
    span_id text COLLATE "C" NOT NULL,
    rollout_id text COLLATE "C" NOT NULL,
    attempt_seq integer NOT NULL,         -- the attempt's sequence id: spans read in attempt order
    sequence_id bigint NOT NULL,
    name text COLLATE "C" NOT NULL,
    start_time double precision,
    end_time double precision,
    data bytea NOT NULL,                  -- msgpack map of the other Span fields, defaults left out
    PRIMARY KEY (attempt_id, span_id)     -- adding a span twice stores it once
);
CREATE INDEX spans_rollout ON spans (rollout_id, attempt_seq, sequence_id);
CREATE TABLE resources (
    n bigint PRIMARY KEY,                 -- write order; the highest is the latest
    resources_id text COLLATE "C" NOT NULL,
    version integer NOT NULL,
    create_time double precision NOT NULL,
    update_time double precision NOT NULL,
    data bytea NOT NULL,                  -- msgpack dict of resources
    UNIQUE (resources_id, version)
);
CREATE TABLE workers (
    worker_id text COLLATE "C" PRIMARY KEY,
    status text COLLATE "C" NOT NULL,
    first_seen double precision NOT NULL,
    heartbeat_stats bytea,
    last_heartbeat_time double precision,
    last_dequeue_time double precision,
    last_busy_time double precision,
    last_idle_time double precision,
    current_rollout_id text COLLATE "C",
    current_attempt_id text COLLATE "C"
);
CREATE INDEX workers_seen ON workers (first_seen, worker_id);
"""

_V2 = """
-- Whether the watchdog must look at the rollout's attempts (policy.is_supervised of its config), so that a claim
-- can set an attempt's `watch` without decoding the config. Rollouts written before version 2: watched (the
-- watchdog checks their configs itself).
ALTER TABLE rollouts ADD COLUMN supervised boolean NOT NULL DEFAULT true;

-- The hot operations, each one statement (one round trip, one implicit transaction). The decisions stay in Python
-- (agl_kernel.store.policy): these functions do what they are told, and do nothing where the rows are not in the
-- state the caller assumed (the caller then takes the general path). Each may be called again after a commit
-- whose answer was lost (client-made ids make that a no-op).

-- Queue rollouts (ids made by the caller), all or nothing: resources NULL = the latest; a given id must exist
-- (else no_data_found, the id as message). Returns the resources ids in order.
CREATE FUNCTION agl_enqueue(p_ids text[], p_modes text[], p_resources text[], p_configs bytea[],
                            p_supervised boolean[], p_inputs bytea[], p_metadata bytea[], p_now double precision,
                            p_channel text) RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    latest text;
    chosen text[] := '{}';
    res text;
    num bigint;
BEGIN
    IF EXISTS (SELECT 1 FROM rollouts WHERE rollout_id = p_ids[1]) THEN  -- already written by this call
        RETURN ARRAY(SELECT r.resources_id FROM unnest(p_ids) WITH ORDINALITY AS u(id, k)
                     JOIN rollouts r ON r.rollout_id = u.id ORDER BY u.k);
    END IF;
    SELECT resources_id INTO latest FROM resources ORDER BY n DESC LIMIT 1;
    FOR i IN 1 .. cardinality(p_ids) LOOP
        res := p_resources[i];
        IF res IS NULL THEN
            res := latest;
        ELSIF NOT EXISTS (SELECT 1 FROM resources WHERE resources_id = res) THEN
            RAISE no_data_found USING MESSAGE = res;
        END IF;
        num := nextval('counter');
        INSERT INTO rollouts (n, rollout_id, status, mode, start_time, attempt_count, resources_id, ticket, config,
                              input, metadata, supervised)
        VALUES (num, p_ids[i], 'queuing', p_modes[i], p_now, 0, res, num, p_configs[i], p_inputs[i], p_metadata[i],
                p_supervised[i]);
        chosen := chosen || res;
    END LOOP;
    PERFORM pg_notify(p_channel, '');
    RETURN chosen;
END $$;

-- Claim up to cardinality(p_attempt_ids) rollouts from the queue's head (rows other claimers hold are skipped),
-- each with a new `preparing` attempt (the k-th claimed gets p_attempt_ids[k]); the worker, if any, becomes busy
-- with the last. Returns the claimed rollouts in queue order.
CREATE FUNCTION agl_claim(p_attempt_ids text[], p_worker text, p_now double precision)
RETURNS SETOF rollouts LANGUAGE plpgsql AS $$
DECLARE
    head record;
    taken rollouts;
    k integer := 0;
BEGIN
    IF EXISTS (SELECT 1 FROM attempts WHERE attempt_id = p_attempt_ids[1]) THEN  -- already claimed by this call
        RETURN QUERY SELECT r.* FROM unnest(p_attempt_ids) WITH ORDINALITY AS u(id, k)
                     JOIN attempts a ON a.attempt_id = u.id JOIN rollouts r ON r.rollout_id = a.rollout_id
                     ORDER BY u.k;
        RETURN;
    END IF;
    -- A second look, on a fresh snapshot, when the first found nothing: rows queued since this statement began
    -- (by workers that then claimed the older rows this one saw) would otherwise be missed.
    FOR look IN 1 .. 2 LOOP
        FOR head IN SELECT n FROM rollouts WHERE ticket IS NOT NULL ORDER BY ticket
                    LIMIT cardinality(p_attempt_ids) FOR UPDATE SKIP LOCKED LOOP
            k := k + 1;
            UPDATE rollouts SET status = 'preparing', ticket = NULL, attempt_count = attempt_count + 1
            WHERE n = head.n RETURNING * INTO taken;
            INSERT INTO attempts (attempt_id, rollout_id, sequence_id, status, start_time, worker_id,
                                  last_heartbeat_time, watch)
            VALUES (p_attempt_ids[k], taken.rollout_id, taken.attempt_count, 'preparing', p_now, p_worker, p_now,
                    CASE WHEN taken.supervised THEN true END);
            RETURN NEXT taken;
        END LOOP;
        EXIT WHEN k > 0;
    END LOOP;
    IF k > 0 AND p_worker IS NOT NULL THEN
        INSERT INTO workers (worker_id, status, first_seen, last_dequeue_time, last_busy_time, current_rollout_id,
                             current_attempt_id)
        VALUES (p_worker, 'busy', p_now, p_now, p_now, taken.rollout_id, p_attempt_ids[k])
        ON CONFLICT (worker_id) DO UPDATE SET status = EXCLUDED.status,
            last_dequeue_time = EXCLUDED.last_dequeue_time, last_busy_time = EXCLUDED.last_busy_time,
            current_rollout_id = EXCLUDED.current_rollout_id, current_attempt_id = EXCLUDED.current_attempt_id;
    END IF;
END $$;

-- Store a span of a `preparing` or `running` attempt: the attempt's sequence id moves (to the given one, or the
-- next), the span is a heartbeat, a preparing attempt becomes running and, if it is its rollout's newest and the
-- rollout has not ended, so does the rollout (as policy.rollout_status_after_attempt says for a span). Returns the
-- span's sequence id, or NULL (nothing written) where the attempt is in another status or unknown, or the span is
-- stored already: the caller's general path handles those (p_all: raise no_data_found instead, so that a batch of
-- calls in one statement is all or nothing). A batch calls it once per span in one statement, in attempt-id order
-- (the order it locks the attempts' rows in).
CREATE FUNCTION agl_add_span(p_rollout text, p_attempt text, p_seq bigint, p_span_id text, p_name text,
                             p_start double precision, p_end double precision, p_data bytea,
                             p_now double precision, p_all boolean)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    was text;
    owner_status text;
    owner_count integer;
    att_seq integer;
    seq bigint;
BEGIN
    SELECT status INTO was FROM attempts WHERE attempt_id = p_attempt AND rollout_id = p_rollout;
    IF was = 'preparing' THEN  -- the rollout changes too: its row is locked first, as every other change does
        SELECT status, attempt_count INTO owner_status, owner_count FROM rollouts
        WHERE rollout_id = p_rollout FOR UPDATE;
    END IF;
    IF was IN ('preparing', 'running') THEN
        UPDATE attempts a SET
            span_seq = CASE WHEN p_seq > 0 THEN greatest(a.span_seq, p_seq) ELSE a.span_seq + 1 END,
            last_heartbeat_time = p_now, status = 'running'
        WHERE a.attempt_id = p_attempt AND a.status = was
          AND NOT EXISTS (SELECT 1 FROM spans s WHERE s.attempt_id = p_attempt AND s.span_id = p_span_id)
        RETURNING a.sequence_id, CASE WHEN p_seq > 0 THEN p_seq ELSE a.span_seq END INTO att_seq, seq;
    END IF;
    IF att_seq IS NULL THEN
        IF p_all THEN
            RAISE no_data_found USING MESSAGE = p_span_id;
        END IF;
        RETURN NULL;
    END IF;
    IF was = 'preparing' AND owner_count = att_seq
       AND owner_status NOT IN ('succeeded', 'failed', 'cancelled', 'running') THEN
        UPDATE rollouts SET status = 'running', end_time = NULL, ticket = NULL WHERE rollout_id = p_rollout;
    END IF;
    INSERT INTO spans (rollout_id, attempt_id, attempt_seq, sequence_id, span_id, name, start_time, end_time, data)
    VALUES (p_rollout, p_attempt, att_seq, seq, p_span_id, p_name, p_start, p_end, p_data);
    RETURN seq;
END $$;

-- agl_enqueue for one rollout.
CREATE FUNCTION agl_enqueue_one(p_id text, p_mode text, p_resources text, p_config bytea, p_supervised boolean,
                                p_input bytea, p_metadata bytea, p_now double precision, p_channel text)
RETURNS text LANGUAGE sql AS $$
    SELECT (agl_enqueue(ARRAY[p_id], ARRAY[p_mode], ARRAY[p_resources], ARRAY[p_config], ARRAY[p_supervised],
                        ARRAY[p_input], ARRAY[p_metadata], p_now, p_channel))[1]
$$;

-- Move an attempt (p_attempt NULL: the rollout's newest) to p_status as the caller decided for the states it
-- assumed: only if the attempt is its rollout's newest, its status is one of p_attempt_from, the rollout's one of
-- p_rollout_from and (p_plain_config) the rollout has the default config. Then: the worker on it (if still)
-- becomes p_worker_status ('idle' frees it), the attempt takes p_status, p_end_time and the heartbeat (p_final:
-- no longer watched), and the rollout takes p_rollout_status (queued: at the back of the queue; p_rollout_end set
-- when terminal), with p_channel notified. Returns the attempt, or nothing where the rows were not as assumed.
CREATE FUNCTION agl_move_attempt(p_rollout text, p_attempt text, p_status text, p_end_time double precision,
                                 p_final boolean, p_heartbeat double precision, p_now double precision,
                                 p_rollout_from text[], p_attempt_from text[], p_plain_config boolean,
                                 p_worker_status text, p_rollout_status text, p_rollout_queued boolean,
                                 p_rollout_end double precision, p_channel text)
RETURNS SETOF attempts LANGUAGE plpgsql AS $$
DECLARE
    owner record;
    moved attempts;
BEGIN
    SELECT status, attempt_count, config IS NULL AS plain INTO owner FROM rollouts
    WHERE rollout_id = p_rollout FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF NOT owner.status = ANY(p_rollout_from) OR (p_plain_config AND NOT owner.plain) THEN
        RETURN;
    END IF;
    SELECT * INTO moved FROM attempts
    WHERE rollout_id = p_rollout AND sequence_id = owner.attempt_count FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF (p_attempt IS NOT NULL AND moved.attempt_id <> p_attempt) OR NOT moved.status = ANY(p_attempt_from) THEN
        RETURN;
    END IF;
    IF p_worker_status = 'idle' AND moved.worker_id IS NOT NULL THEN
        UPDATE workers SET status = 'idle', last_idle_time = p_now, current_rollout_id = NULL,
            current_attempt_id = NULL
        WHERE worker_id = moved.worker_id AND current_attempt_id = moved.attempt_id;
    ELSIF p_worker_status IS NOT NULL AND moved.worker_id IS NOT NULL THEN
        UPDATE workers SET status = p_worker_status
        WHERE worker_id = moved.worker_id AND current_attempt_id = moved.attempt_id;
    END IF;
    UPDATE attempts SET status = p_status, end_time = p_end_time, last_heartbeat_time = p_heartbeat,
        watch = CASE WHEN p_final THEN NULL ELSE watch END
    WHERE attempt_id = moved.attempt_id RETURNING * INTO moved;
    IF p_rollout_status IS NOT NULL AND p_rollout_status <> owner.status THEN
        IF p_rollout_queued THEN
            UPDATE rollouts SET status = p_rollout_status, end_time = NULL, ticket = nextval('counter')
            WHERE rollout_id = p_rollout;
        ELSE
            UPDATE rollouts SET status = p_rollout_status, end_time = p_rollout_end, ticket = NULL
            WHERE rollout_id = p_rollout;
        END IF;
        IF p_channel IS NOT NULL THEN
            PERFORM pg_notify(p_channel, '');
        END IF;
    END IF;
    RETURN NEXT moved;
END $$;
"""

_V3 = """
-- agl_add_span as in version 2, with the common case first: a span of a running attempt is one UPDATE of the
-- attempt's row (its next sequence id, the heartbeat) and the INSERT, where version 2 first read the attempt's status
-- and looked for the span among the stored ones. A span stored already now fails its INSERT (unique_violation, the
-- whole statement rolled back) instead of returning NULL: the caller then takes the general path for each span of
-- the statement, which returns the stored one (a span is stored twice only when a call is resent).
CREATE OR REPLACE FUNCTION agl_add_span(p_rollout text, p_attempt text, p_seq bigint, p_span_id text, p_name text,
                                        p_start double precision, p_end double precision, p_data bytea,
                                        p_now double precision, p_all boolean)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    was text := 'running';
    owner_status text;
    owner_count integer;
    att_seq integer;
    seq bigint;
BEGIN
    UPDATE attempts a SET  -- the common case: a running attempt
        span_seq = CASE WHEN p_seq > 0 THEN greatest(a.span_seq, p_seq) ELSE a.span_seq + 1 END,
        last_heartbeat_time = p_now
    WHERE a.attempt_id = p_attempt AND a.rollout_id = p_rollout AND a.status = 'running'
    RETURNING a.sequence_id, CASE WHEN p_seq > 0 THEN p_seq ELSE a.span_seq END INTO att_seq, seq;
    IF att_seq IS NULL THEN  -- else as version 2 did
        SELECT status INTO was FROM attempts WHERE attempt_id = p_attempt AND rollout_id = p_rollout;
        IF was = 'preparing' THEN  -- the rollout changes too: its row is locked first, as every other change does
            SELECT status, attempt_count INTO owner_status, owner_count FROM rollouts
            WHERE rollout_id = p_rollout FOR UPDATE;
        END IF;
        IF was IN ('preparing', 'running') THEN
            UPDATE attempts a SET
                span_seq = CASE WHEN p_seq > 0 THEN greatest(a.span_seq, p_seq) ELSE a.span_seq + 1 END,
                last_heartbeat_time = p_now, status = 'running'
            WHERE a.attempt_id = p_attempt AND a.status = was
            RETURNING a.sequence_id, CASE WHEN p_seq > 0 THEN p_seq ELSE a.span_seq END INTO att_seq, seq;
        END IF;
    END IF;
    IF att_seq IS NULL THEN
        IF p_all THEN
            RAISE no_data_found USING MESSAGE = p_span_id;
        END IF;
        RETURN NULL;
    END IF;
    IF was = 'preparing' AND owner_count = att_seq
       AND owner_status NOT IN ('succeeded', 'failed', 'cancelled', 'running') THEN
        UPDATE rollouts SET status = 'running', end_time = NULL, ticket = NULL WHERE rollout_id = p_rollout;
    END IF;
    INSERT INTO spans (rollout_id, attempt_id, attempt_seq, sequence_id, span_id, name, start_time, end_time, data)
    VALUES (p_rollout, p_attempt, att_seq, seq, p_span_id, p_name, p_start, p_end, p_data);
    RETURN seq;
END $$;
"""


def _notifying_through_agl_notify(script: str, function: str) -> str:
    """``function``'s definition in ``script``, as ``CREATE OR REPLACE``, calling ``agl_notify`` where it called
    ``pg_notify``."""
    start = script.index(f"CREATE FUNCTION {function}(")
    definition = script[start : script.index("END $$;", start) + len("END $$;")]
    assert definition.count("PERFORM pg_notify(p_channel, '');") == 1
    return (
        definition.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1).replace(
            "PERFORM pg_notify(p_channel, '');", "PERFORM agl_notify(p_channel);"
        )
        + "\n"
    )


_V4 = (
    """
-- The processes that LISTEN on a channel now (their listener's backend pid, one row per channel): a change sends its
-- NOTIFY only when there is one. A NOTIFY costs its transaction a database-wide lock held through its commit, so
-- that notifying commits (every enqueue, every ended rollout) were flushed one at a time, never together, even when
-- nobody listened. A listener registers after its LISTEN under the channel's advisory lock, exclusively, and a
-- sender looks for it under the same lock, shared, held to its commit: a sender that did not see a registration
-- committed before it, so the waiter's check after the registration sees the sender's rows.
CREATE TABLE listeners (
    channel text COLLATE "C" NOT NULL,
    pid integer NOT NULL,
    PRIMARY KEY (channel, pid)
);

CREATE FUNCTION agl_notify(p_channel text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(hashtextextended(p_channel, 0));
    IF EXISTS (SELECT 1 FROM listeners WHERE channel = p_channel) THEN
        PERFORM pg_notify(p_channel, '');
    END IF;
END $$;

-- agl_enqueue and agl_move_attempt as in version 2, notifying through agl_notify.
"""
    + _notifying_through_agl_notify(_V2, "agl_enqueue")
    + _notifying_through_agl_notify(_V2, "agl_move_attempt")
)

MIGRATIONS: list[tuple[int, str]] = [(1, _V1), (2, _V2), (3, _V3), (4, _V4)]
"""``(version, script)`` in order; a schema at version N gets every script above N."""

SCHEMA_VERSION = MIGRATIONS[-1][0]
"""The layout of a schema's tables; a schema records the version that wrote it."""


def lock_key(schema: str) -> int:
    """The advisory lock key of a schema's migrations (a signed 64-bit number from its name)."""
    return zlib.crc32(f"agl-store-postgres:{schema}".encode()) - 2**31


async def ensure_schema(conn: AsyncConnection[Any], schema: str, dsn: str) -> None:
    """Create or migrate ``schema`` on ``conn`` (an autocommit connection), or refuse a newer one."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(schema),))
        cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL AS found", (f'"{schema}".meta',))
        found = await cur.fetchone()
        version = 0
        if found is not None and _first(found):
            cur = await conn.execute(
                sql.SQL("SELECT value FROM {}.meta WHERE key = 'schema_version'").format(sql.Identifier(schema))
            )
            row = await cur.fetchone()
            version = 0 if row is None else int(_first(row))
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"schema {schema!r} of the database at {redact(dsn)} was written by a newer agl-store-postgres "
                f"(schema version {version}; this one knows up to {SCHEMA_VERSION}); nothing was changed. Upgrade "
                "agl-store-postgres, or use another schema (store.schema)"
            )
        if version == SCHEMA_VERSION:
            return
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        await conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
        for target, script in MIGRATIONS:
            if target > version:
                await conn.execute(script.encode())
        await conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', %s) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            (SCHEMA_VERSION,),
        )


def _first(row: Any) -> Any:
    """The first column of a row, whatever the connection's row factory."""
    if isinstance(row, dict):
        return next(iter(row.values()))
    return row[0]
