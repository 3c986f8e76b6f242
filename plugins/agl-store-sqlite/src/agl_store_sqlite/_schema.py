"""The store file: checks before opening it, its schema, and the migrations that bring an older file up to date.

The schema version lives in ``PRAGMA user_version`` and the file is marked as an agl store with
``PRAGMA application_id``, so that a SQLite database of some other program is never mistaken for (and changed
into) a store. Migrations run in one ``BEGIN IMMEDIATE`` transaction: several processes opening an old file at
once migrate it exactly once, and a failed migration leaves the file as it was.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Union

from agl_kernel.errors import AglError

__all__ = [
    "APPLICATION_ID",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SchemaVersionError",
    "SqliteStoreError",
    "connect",
    "ensure_schema",
    "prepare_path",
]

APPLICATION_ID = 0x61676C73  # "agls"
SQLITE_HEADER = b"SQLite format 3\x00"


class SqliteStoreError(AglError):
    """The file (or its directory) cannot serve as a SQLite store; the message names the path and what to do."""

    def __init__(self, message: str, path: Union[str, os.PathLike]) -> None:
        super().__init__(message)
        self.path = str(path)


class SchemaVersionError(SqliteStoreError):
    """The file was written by a newer agl-store-sqlite than this one."""


# ---------------------------------------------------------------------------------------------------- schema

_V1 = """
CREATE TABLE rollouts (
    rid INTEGER PRIMARY KEY,            -- creation order
    rollout_id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    mode TEXT,
    start_time REAL NOT NULL,
    end_time REAL,
    attempt_count INTEGER NOT NULL DEFAULT 0,
    resources_id TEXT,
    queue_ticket INTEGER,               -- set exactly while the rollout waits in the queue (FIFO by ticket)
    config BLOB,                        -- msgpack RolloutConfig; NULL = the default config
    input BLOB NOT NULL,                -- msgpack
    metadata BLOB                       -- msgpack dict; NULL = {}
);
CREATE INDEX rollouts_status ON rollouts(status);
CREATE UNIQUE INDEX rollouts_queue ON rollouts(queue_ticket) WHERE queue_ticket IS NOT NULL;

CREATE TABLE attempts (
    aid INTEGER PRIMARY KEY,            -- creation order; spans refer to it
    attempt_id TEXT NOT NULL UNIQUE,
    rid INTEGER NOT NULL,
    sequence_id INTEGER NOT NULL,
    status TEXT NOT NULL,
    start_time REAL NOT NULL,
    end_time REAL,
    worker_id TEXT,
    last_heartbeat_time REAL,
    metadata BLOB,                      -- msgpack dict; NULL = {}
    span_seq INTEGER NOT NULL DEFAULT 0,  -- the last span sequence id handed out
    watch INTEGER                       -- 1 while the watchdog must look at it (supervised, not final)
);
CREATE UNIQUE INDEX attempts_rollout ON attempts(rid, sequence_id);
CREATE INDEX attempts_watch ON attempts(watch) WHERE watch IS NOT NULL;

CREATE TABLE spans (
    id INTEGER PRIMARY KEY,             -- write order
    aid INTEGER NOT NULL,
    sequence_id INTEGER NOT NULL,
    span_id TEXT NOT NULL,
    name TEXT NOT NULL,
    start_time REAL,
    end_time REAL,
    data BLOB NOT NULL                  -- msgpack map of the other Span fields, defaults left out
);
CREATE UNIQUE INDEX spans_key ON spans(aid, span_id);

CREATE TABLE resources (
    id INTEGER PRIMARY KEY,             -- write order; the highest is the latest
    resources_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    create_time REAL NOT NULL,
    update_time REAL NOT NULL,
    data BLOB NOT NULL,                 -- msgpack dict[str, Resource]
    UNIQUE (resources_id, version)
);

CREATE TABLE workers (
    wid INTEGER PRIMARY KEY,            -- order of first appearance
    worker_id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    heartbeat_stats BLOB,               -- msgpack dict; NULL = {}
    last_heartbeat_time REAL,
    last_dequeue_time REAL,
    last_busy_time REAL,
    last_idle_time REAL,
    current_rollout_id TEXT,
    current_attempt_id TEXT
)
"""

# Version 2: an index for retention (delete_rollouts(ended_before=...)) and ended-rollout queries.
_V2 = """
CREATE INDEX rollouts_ended ON rollouts(end_time) WHERE end_time IS NOT NULL
"""


def _statements(script: str) -> Callable[[sqlite3.Connection], None]:
    # Not executescript(): it commits first, and a migration must stay inside its transaction.
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    statements = [s.strip() for s in "\n".join(lines).split(";") if s.strip()]

    def apply(conn: sqlite3.Connection) -> None:
        for statement in statements:
            conn.execute(statement)

    return apply


MIGRATIONS: list[tuple[int, Callable[[sqlite3.Connection], None]]] = [
    (1, _statements(_V1)),
    (2, _statements(_V2)),
]
"""``(version, step)``: ``step`` turns a file at ``version - 1`` into one at ``version`` (0 = empty file)."""

SCHEMA_VERSION = MIGRATIONS[-1][0]


# ---------------------------------------------------------------------------------------------------- opening


def prepare_path(path: Union[str, os.PathLike]) -> Path:
    """Create the parent directory if needed and make sure an existing file is a SQLite database (never
    touching it otherwise). Returns the absolute path."""
    path = Path(path).expanduser().absolute()
    if path.is_dir():
        raise SqliteStoreError(
            f"the SQLite store path {path} is a directory; give a file path, e.g. {path / 'agl.db'}", path
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SqliteStoreError(
            f"cannot create the directory {path.parent} for the SQLite store {path}: {exc.strerror or exc}. "
            "Choose a writable location with SqliteLightningStore(path=...)",
            path,
        ) from exc
    try:
        with open(path, "rb") as file:
            header = file.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise SqliteStoreError(
            f"cannot read the SQLite store file {path}: {exc.strerror or exc}. Fix its permissions or choose "
            "another path",
            path,
        ) from exc
    if header and header != SQLITE_HEADER:
        raise SqliteStoreError(
            f"{path} is not a SQLite database (it starts with {header[:16]!r}); it was left untouched. "
            "Move it away or choose another path for the store",
            path,
        )
    return path


def connect(path: Path, *, busy_timeout: float, synchronous: str) -> sqlite3.Connection:
    """A new connection with the store's settings (autocommit: transactions are begun explicitly)."""
    try:
        conn = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False, cached_statements=256
        )
    except sqlite3.Error as exc:
        raise _open_error(path, exc) from exc
    try:
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA cache_size=-16384")
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.execute("PRAGMA wal_autocheckpoint=0")  # the store checkpoints in the background (Engine.checkpoint)
    except sqlite3.Error as exc:
        conn.close()
        raise _open_error(path, exc) from exc
    return conn


def _open_error(path: Path, exc: sqlite3.Error) -> SqliteStoreError:
    message = str(exc)
    if isinstance(exc, sqlite3.DatabaseError) and ("not a database" in message or "malformed" in message):
        return SqliteStoreError(
            f"{path} is not a usable SQLite database ({message}); it was left untouched. Move it away or choose "
            "another path for the store",
            path,
        )
    if "readonly" in message or "unable to open" in message or "disk I/O" in message:
        return SqliteStoreError(
            f"cannot write the SQLite store {path} ({message}): the file and its directory {path.parent} must be "
            "writable (SQLite keeps its -wal and -shm files next to it). Fix the permissions or choose another "
            "path with SqliteLightningStore(path=...)",
            path,
        )
    return SqliteStoreError(f"cannot open the SQLite store {path}: {message}", path)


def ensure_schema(conn: sqlite3.Connection, path: Path, *, busy_timeout: float) -> int:
    """Switch the file to WAL, then create or migrate its schema; returns the version found before.
    Raises SqliteStoreError (nothing changed) for a foreign database or a newer schema."""
    try:
        _check_identity(conn, path)  # before the first write: a foreign or newer file is never touched
        mode = _switch_to_wal(conn, busy_timeout)
        if str(mode).lower() != "wal":
            raise SqliteStoreError(
                f"cannot switch {path} to write-ahead logging (journal mode stays {mode!r}); the store needs a "
                "local file system that supports shared memory",
                path,
            )
        conn.execute("BEGIN IMMEDIATE")
        try:
            found = _check_identity(conn, path)
            for version, step in MIGRATIONS:
                if version > found:
                    step(conn)
            if found < SCHEMA_VERSION:
                conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise _open_error(path, exc) from exc
    return found


def _switch_to_wal(conn: sqlite3.Connection, busy_timeout: float) -> str:
    """Set WAL journal mode and return the mode in force. Switching a file from a rollback journal needs an
    exclusive lock and SQLite does not call the busy handler for it, so several processes opening a new file at
    once would see "database is locked": retry in small steps up to ``busy_timeout``."""
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


def _check_identity(conn: sqlite3.Connection, path: Path) -> int:
    application_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if application_id != APPLICATION_ID:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")]
        if application_id != 0 or version != 0 or tables:
            raise SqliteStoreError(
                f"{path} is a SQLite database of another program (application_id={application_id}, tables: "
                f"{', '.join(tables) or 'none'}), not an agl store; it was left untouched. Choose another path "
                "for the store",
                path,
            )
        return 0
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{path} has store schema version {version}, newer than this agl-store-sqlite understands "
            f"(version {SCHEMA_VERSION}); it was left untouched. Upgrade the plugin: "
            "pip install --upgrade agl-store-sqlite",
            path,
        )
    return version
