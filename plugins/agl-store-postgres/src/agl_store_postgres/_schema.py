"""The store's tables, and the migrations that bring an older schema up to date.

A store lives in one PostgreSQL schema (``store.schema``, default ``agl``): several trainers share a database, each
in its own schema. The version lives in the schema's ``meta`` table. Opening the store takes a transaction-scoped
advisory lock on the schema's name, reads the version, refuses a newer one before anything is written, and applies
the missing migrations in the same transaction: several processes opening an old schema at once migrate it exactly
once, and a failed migration leaves it as it was.
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

MIGRATIONS: list[tuple[int, str]] = [(1, _V1)]
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
