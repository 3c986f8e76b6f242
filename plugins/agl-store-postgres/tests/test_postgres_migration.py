"""Schema migration: a schema written at version 1 or 2 opens, migrates in place and keeps its data; the hot paths
that version 2 added (one function call each) and version 3 changed (a span of a running attempt) work on the
migrated rows."""

from __future__ import annotations

import time

import psycopg
import pytest
from psycopg import sql

from agl_kernel.models import AttemptStatus, RolloutConfig, RolloutStatus, Span, encode_msgpack
from agl_kernel.store.blobs import encode_config
from agl_store_postgres import PostgresLightningStore
from agl_store_postgres._schema import MIGRATIONS, SCHEMA_VERSION

pytestmark = pytest.mark.asyncio


def make_old_schema(dsn: str, schema: str, version: int) -> None:
    """A schema as agl-store-postgres wrote it at ``version``: one queued rollout with a supervising config, one
    running rollout with its attempt."""
    scripts = [script for target, script in MIGRATIONS if target <= version]
    assert len(scripts) == version
    now = time.time()
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
        for script in scripts:
            conn.execute(script.encode())
        conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', %s)", (version,))
        conn.execute(
            "INSERT INTO rollouts (n, rollout_id, status, start_time, ticket, config, input) "
            "VALUES (nextval('counter'), 'ro-old-queued', 'queuing', %s, 1, %s, %s)",
            (
                now - 100,
                encode_config(RolloutConfig(timeout_seconds=0.5, max_attempts=1)),
                encode_msgpack({"question": "2+2"}),
            ),
        )
        conn.execute(
            "INSERT INTO rollouts (n, rollout_id, status, start_time, attempt_count, input) "
            "VALUES (nextval('counter'), 'ro-old-running', 'running', %s, 1, %s)",
            (now - 100, encode_msgpack("running")),
        )
        conn.execute(
            "INSERT INTO attempts (attempt_id, rollout_id, sequence_id, status, start_time, span_seq, watch) "
            "VALUES ('at-old', 'ro-old-running', 1, 'running', %s, 3, true)",
            (now - 99,),
        )


def schema_version(dsn: str, schema: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            sql.SQL("SELECT value FROM {}.meta WHERE key = 'schema_version'").format(sql.Identifier(schema))
        ).fetchone()
        assert row is not None
        return int(row[0])


@pytest.mark.parametrize("version", [1, 2, 3])
async def test_an_old_schema_is_migrated_and_keeps_its_rows(postgres_dsn: str, schema: str, version: int) -> None:
    assert SCHEMA_VERSION == 4
    make_old_schema(postgres_dsn, schema, version)
    store = PostgresLightningStore(postgres_dsn, schema=schema, watchdog_interval=0.1)
    try:
        assert schema_version(postgres_dsn, schema) == SCHEMA_VERSION
        # The running attempt written before takes spans on the one-call path, numbered after its last one; the
        # same span again (a resent call) is the stored one, and the numbering goes on after it.
        span = await store.add_span(
            Span(rollout_id="ro-old-running", attempt_id="at-old", trace_id="t", span_id="s-1", name="step")
        )
        assert span.sequence_id == 4
        again = await store.add_span(
            Span(rollout_id="ro-old-running", attempt_id="at-old", trace_id="t", span_id="s-1", name="step")
        )
        assert again.sequence_id == 4
        both = await store.add_many_spans(
            [
                Span(rollout_id="ro-old-running", attempt_id="at-old", trace_id="t", span_id=i, name="step")
                for i in ("s-1", "s-2")
            ]
        )
        assert [s.sequence_id for s in both] == [4, 5]
        stored = await store.query_spans("ro-old-running")
        assert [(s.span_id, s.sequence_id) for s in stored.items] == [("s-1", 4), ("s-2", 5)]
        finished = await store.update_attempt("ro-old-running", "at-old", status=AttemptStatus.SUCCEEDED)
        assert finished.status is AttemptStatus.SUCCEEDED
        assert (await store.get_rollout("ro-old-running")).status is RolloutStatus.SUCCEEDED
        # The queued one is claimed by agl_claim; its config (a 0.5 s timeout) is still supervised.
        claimed = await store.dequeue_rollout(worker_id="w")
        assert claimed is not None and claimed.rollout_id == "ro-old-queued"
        assert claimed.input == {"question": "2+2"} and claimed.attempt.sequence_id == 1
        ended = await store.wait_for_rollouts(["ro-old-queued"], timeout=10)
        assert [r.status for r in ended] == [RolloutStatus.FAILED]
        assert (await store.get_attempt("ro-old-queued")).status is AttemptStatus.TIMEOUT
    finally:
        await store.close()
    # Opening it again changes nothing.
    async with PostgresLightningStore(postgres_dsn, schema=schema) as again:
        assert (await again.statistics()).total_rollouts == 2
    assert schema_version(postgres_dsn, schema) == SCHEMA_VERSION
