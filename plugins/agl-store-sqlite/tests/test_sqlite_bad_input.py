"""Files the store must refuse: each gets an error that names the path and what to do, and nothing is overwritten."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest

from agl_store_sqlite import SCHEMA_VERSION, SchemaVersionError, SqliteLightningStore, SqliteStoreError


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_untouched(path: Path, before: str) -> None:
    assert digest(path) == before, "the file was changed"
    assert not Path(f"{path}-wal").exists() and not Path(f"{path}-journal").exists()


def test_garbage_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes, not a database\n" * 50)
    before = digest(path)
    with pytest.raises(SqliteStoreError) as info:
        SqliteLightningStore(path)
    message = str(info.value)
    assert str(path) in message and "not a SQLite database" in message and "left untouched" in message
    assert info.value.path == str(path)
    assert_untouched(path, before)


def test_corrupt_sqlite_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "broken.db"
    path.write_bytes(b"SQLite format 3\x00" + os.urandom(8192))
    before = digest(path)
    with pytest.raises(SqliteStoreError) as info:
        SqliteLightningStore(path)
    assert str(path) in str(info.value) and "left untouched" in str(info.value)
    assert_untouched(path, before)


def test_database_of_another_program_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers (name) VALUES ('ada')")
    conn.commit()
    conn.close()
    before = digest(path)
    with pytest.raises(SqliteStoreError) as info:
        SqliteLightningStore(path)
    message = str(info.value)
    assert str(path) in message and "another program" in message and "customers" in message
    assert_untouched(path, before)


@pytest.mark.asyncio
async def test_future_schema_version_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    store = SqliteLightningStore(path)
    rollout = await store.enqueue_rollout("kept")
    await store.close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    conn.close()
    before = digest(path)
    with pytest.raises(SchemaVersionError) as info:
        SqliteLightningStore(path)
    message = str(info.value)
    assert str(path) in message
    assert f"version {SCHEMA_VERSION + 5}" in message and f"version {SCHEMA_VERSION})" in message
    assert "pip install --upgrade agl-store-sqlite" in message
    assert digest(path) == before
    # Put back to the version this plugin knows: the data is all there.
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.close()
    async with SqliteLightningStore(path) as reopened:
        assert (await reopened.get_rollout(rollout.rollout_id)).input == "kept"


def test_directory_given_as_path(tmp_path: Path) -> None:
    with pytest.raises(SqliteStoreError) as info:
        SqliteLightningStore(tmp_path)
    assert str(tmp_path) in str(info.value) and "directory" in str(info.value)


def test_parent_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the store's directory should be")
    path = blocker / "agl" / "agl.db"
    with pytest.raises(SqliteStoreError) as info:
        SqliteLightningStore(path)
    assert str(blocker / "agl") in str(info.value) and "Choose a writable location" in str(info.value)
    assert blocker.read_text().startswith("a file")


# ---------------------------------------------------------------------------------------------------- read-only
# Root ignores permission bits, and these tests run as root in CI. So the opening is done in a forked child that
# first drops to the unprivileged user "nobody" (everything it needs is imported before the fork): the directory
# is then really read-only for it, as it would be for any normal user.


def _open_as_unprivileged(path: Path) -> str:
    """Try to open a store at ``path`` without write permission; returns the error message (or 'OPENED')."""
    if os.geteuid() != 0:
        try:
            SqliteLightningStore(path)
        except SqliteStoreError as exc:
            return str(exc)
        return "OPENED"
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            os.close(read_end)
            os.setgid(65534)
            os.setuid(65534)
            try:
                SqliteLightningStore(path, cross_process_poll=0)
                message = "OPENED"
            except SqliteStoreError as exc:
                message = str(exc)
                code = 0
            os.write(write_end, message.encode())
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    return message


@pytest.fixture
def shared_dir():
    """A directory the unprivileged child can reach (pytest's tmp_path is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="agl-sqlite-ro-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        for path in (base, *base.rglob("*")):
            if path.is_dir():
                path.chmod(0o755)
        shutil.rmtree(base)


def test_read_only_directory_new_file(shared_dir: Path) -> None:
    read_only = shared_dir / "read-only"
    read_only.mkdir(mode=0o555)
    read_only.chmod(0o555)
    path = read_only / "agl.db"
    message = _open_as_unprivileged(path)
    assert message != "OPENED", "opening a store in a read-only directory should fail"
    assert str(path) in message and "writable" in message
    assert list(read_only.iterdir()) == []


@pytest.mark.asyncio
async def test_read_only_directory_existing_store(shared_dir: Path) -> None:
    directory = shared_dir / "store"
    directory.mkdir()
    path = directory / "agl.db"
    async with SqliteLightningStore(path) as store:
        await store.enqueue_rollout("x")
    path.chmod(0o644)
    directory.chmod(0o555)
    before = digest(path)
    message = _open_as_unprivileged(path)
    assert message != "OPENED"
    assert str(path) in message
    assert digest(path) == before
