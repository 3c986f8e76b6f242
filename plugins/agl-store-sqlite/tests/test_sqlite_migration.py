"""Schema migration: a file written at schema version 1 opens, migrates in place and keeps its data."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from agl_kernel.models import AttemptStatus, RolloutStatus, encode_msgpack
from agl_store_sqlite import SCHEMA_VERSION, SqliteLightningStore, SqliteStoreError, _schema

pytestmark = pytest.mark.asyncio


def make_v1_file(path: Path) -> None:
    """A store file as agl-store-sqlite wrote it at schema version 1 (rollback journal, not yet WAL), with one
    queued and one ended rollout."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    version, step = _schema.MIGRATIONS[0]
    assert version == 1
    step(conn)
    conn.execute(f"PRAGMA application_id = {_schema.APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 1")
    now = time.time()
    conn.execute(
        "INSERT INTO rollouts (rollout_id, status, start_time, queue_ticket, input) VALUES (?, 'queuing', ?, 1, ?)",
        ("ro-old-queued", now - 100, encode_msgpack({"question": "2+2"})),
    )
    conn.execute(
        "INSERT INTO rollouts (rollout_id, status, start_time, end_time, attempt_count, input, metadata) "
        "VALUES (?, 'succeeded', ?, ?, 1, ?, ?)",
        ("ro-old-done", now - 100, now - 50, encode_msgpack("done"), encode_msgpack({"k": 1})),
    )
    conn.execute(
        "INSERT INTO attempts (attempt_id, rid, sequence_id, status, start_time, end_time, span_seq) "
        "VALUES ('at-old', 2, 1, 'succeeded', ?, ?, 0)",
        (now - 99, now - 50),
    )
    conn.execute("COMMIT")
    conn.close()


def indexes(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'index'")}
    finally:
        conn.close()


def user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()


async def test_v1_file_is_migrated(tmp_path: Path) -> None:
    assert SCHEMA_VERSION >= 2
    path = tmp_path / "v1.db"
    make_v1_file(path)
    assert "rollouts_ended" not in indexes(path)

    async with SqliteLightningStore(path) as store:
        done = await store.get_rollout("ro-old-done")
        assert done.status is RolloutStatus.SUCCEEDED and done.metadata == {"k": 1} and done.input == "done"
        assert (await store.get_attempt("ro-old-done")).status is AttemptStatus.SUCCEEDED
        queued = await store.dequeue_rollout(worker_id="w")
        assert queued is not None and queued.rollout_id == "ro-old-queued"
        assert queued.input == {"question": "2+2"} and queued.attempt.sequence_id == 1
        # What version 2 added (the retention index) is in use.
        assert await store.delete_rollouts(ended_before=time.time()) == 1
        stats = await store.statistics()
        assert stats.total_rollouts == 1

    assert user_version(path) == SCHEMA_VERSION
    assert "rollouts_ended" in indexes(path)
    # Opening it again is a no-op.
    async with SqliteLightningStore(path) as store:
        assert (await store.get_rollout("ro-old-queued")).status is RolloutStatus.PREPARING


async def test_concurrent_openers_migrate_once(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    make_v1_file(path)
    stores: list[SqliteLightningStore] = []
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            stores.append(SqliteLightningStore(path))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert user_version(path) == SCHEMA_VERSION
    for store in stores:
        assert (await store.get_rollout("ro-old-done")).status is RolloutStatus.SUCCEEDED
        await store.close()


async def test_failed_migration_leaves_file_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "v1.db"
    make_v1_file(path)

    def broken_step(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x)")
        conn.execute("THIS IS NOT SQL")

    monkeypatch.setattr(_schema, "MIGRATIONS", [*_schema.MIGRATIONS, (SCHEMA_VERSION + 1, broken_step)])
    monkeypatch.setattr(_schema, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(SqliteStoreError) as info:
        SqliteLightningStore(path)
    assert str(path) in str(info.value)
    assert user_version(path) == 1
    assert "rollouts_ended" not in indexes(path)  # version 2's step was rolled back with the rest
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM sqlite_schema WHERE name = 'half_done'").fetchone()[0] == 0
    conn.close()
