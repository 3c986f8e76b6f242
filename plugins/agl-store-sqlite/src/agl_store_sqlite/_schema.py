"""The store file: checks before opening it, its schema, and the migrations that bring an older file up to date.

The schema version lives in ``PRAGMA user_version`` and the file is marked as an agl store with
``PRAGMA application_id``, so that a SQLite database of some other program is never mistaken for (and changed
into) a store. Migrations run in one ``BEGIN IMMEDIATE`` transaction: several processes opening an old file at
once migrate it exactly once, and a failed migration leaves the file as it was.

Opening also refuses a damaged file (:func:`check_integrity`, before anything is written) and one that cannot be
written (a write probe inside the same transaction, rolled back), so that such a file is never served.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from agl_kernel.errors import AglError, StoreDamagedError

__all__ = [
    "APPLICATION_ID",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SchemaVersionError",
    "SqliteStoreDamagedError",
    "SqliteStoreError",
    "check_integrity",
    "connect",
    "damage_kind",
    "ensure_schema",
    "prepare_path",
]

APPLICATION_ID = 0x61676C73  # "agls"
SQLITE_HEADER = b"SQLite format 3\x00"


class SqliteStoreError(AglError):
    """The file (or its directory) cannot serve as a SQLite store; the message names the path and what to do."""

    def __init__(self, message: str, path: str | os.PathLike) -> None:
        super().__init__(message)
        self.path = str(path)


class SchemaVersionError(SqliteStoreError):
    """The file was written by a newer agl-store-sqlite than this one."""


class SqliteStoreDamagedError(SqliteStoreError, StoreDamagedError):
    """The file is damaged (found when opening it, or by a query while the store runs), or can no longer be written
    while the store runs. A store that meets it stops serving: every later call raises it too."""


FULL_CHECK_MAX_MB = 64.0
"""Files up to this size (MB, with their write-ahead log) get a full ``PRAGMA quick_check`` when opened; larger
ones get :func:`_bounded_check`. quick_check reads every page: about 1.5 ms per MB from the page cache and 15 ms per
MB from a cold (virtual) disk on the reference machine."""

SAMPLED_ROWS = 64
"""Rows read at random positions of each table by the bounded check."""

_CORRUPT = 11  # SQLITE_CORRUPT
_NOTADB = 26  # SQLITE_NOTADB
_READONLY = 8  # SQLITE_READONLY (and its extended codes: READONLY_DBMOVED, ...)


def damage_kind(exc: BaseException) -> str | None:
    """``"damaged"`` when ``exc`` is SQLite reporting a damaged file (SQLITE_CORRUPT, SQLITE_NOTADB),
    ``"read-only"`` when it refuses a write (SQLITE_READONLY: the file was made read-only, moved or deleted),
    else None."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return None
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+; the message otherwise
    if code is not None:
        code &= 0xFF
        return "damaged" if code in (_CORRUPT, _NOTADB) else "read-only" if code == _READONLY else None
    message = str(exc)
    if "malformed" in message or "not a database" in message:
        return "damaged"
    return "read-only" if "readonly database" in message else None


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


def prepare_path(path: str | os.PathLike) -> Path:
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
        return SqliteStoreDamagedError(
            f"{path} is not a usable SQLite database ({message}); it was left untouched. Move it away or choose "
            "another path for the store",
            path,
        )
    if damage_kind(exc) == "read-only" and os.access(path.parent, os.W_OK) and path.exists():
        return _read_only(path, message)
    if "readonly" in message or "unable to open" in message or "disk I/O" in message:
        return SqliteStoreError(
            f"cannot write the SQLite store {path} ({message}): the file and its directory {path.parent} must be "
            "writable (SQLite keeps its -wal and -shm files next to it). Fix the permissions or choose another "
            "path with SqliteLightningStore(path=...)",
            path,
        )
    return SqliteStoreError(f"cannot open the SQLite store {path}: {message}", path)


def _read_only(path: Path, message: str) -> SqliteStoreError:
    return SqliteStoreError(
        f"the SQLite store {path} is read-only ({message}); it was left untouched. Make it writable "
        f"(chmod u+w {path}, as its owner) or copy it to a writable file and open the copy",
        path,
    )


def ensure_schema(
    conn: sqlite3.Connection, path: Path, *, busy_timeout: float, full_check_max_mb: float | None = None
) -> int:
    """Check the file, switch it to WAL, then create or migrate its schema; returns the version found before.
    Raises SqliteStoreError (nothing changed) for a foreign database, a newer schema, a damaged file
    (:class:`SqliteStoreDamagedError`; with ``full_check_max_mb`` given, see :func:`check_integrity`) or a file
    that cannot be written (a write probe, rolled back, when there is nothing to migrate)."""
    try:
        _check_identity(conn, path)  # before the first write: a foreign or newer file is never touched
        if full_check_max_mb is not None:
            check_integrity(conn, path, full_check_max_mb=full_check_max_mb)
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
            else:
                # The write probe: SQLite opens a file it may not write read-only without a word, and even
                # BEGIN IMMEDIATE succeeds on it; writing page 1 (the same value) does not. Rolled back: no trace.
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                conn.execute("ROLLBACK")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise _open_error(path, exc) from exc
    return found


# ---------------------------------------------------------------------------------------------------- integrity


def check_integrity(conn: sqlite3.Connection, path: Path, *, full_check_max_mb: float) -> None:
    """Refuse a damaged file with :class:`SqliteStoreDamagedError` (read-only: nothing is written).

    A file up to ``full_check_max_mb`` (with its write-ahead log) gets ``PRAGMA quick_check``: every page of every
    table and index, their structure and record formats (not the agreement of indexes with tables, which
    ``integrity_check`` adds at three times the cost). A larger file gets :func:`_bounded_check`, whose cost does
    not grow with the file. Damage the check does not see is found by the first query that reaches it; the store
    then stops serving and says so once (see ``Engine.damage``).
    """
    try:
        size = path.stat().st_size + _size(Path(f"{path}-wal"))
    except OSError:
        size = 0
    what = "PRAGMA quick_check"
    try:
        if size <= full_check_max_mb * 1e6:
            problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check(3)")]
            if problems != ["ok"]:
                raise _damaged(path, what, "\n".join(problems))
        else:
            what = "reading the first, last and sampled rows of each table and index"
            _bounded_check(conn)
    except sqlite3.DatabaseError as exc:
        if damage_kind(exc) != "damaged":
            raise
        raise _damaged(path, what, str(exc)) from exc


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _damaged(path: Path, what: str, problems: str) -> SqliteStoreDamagedError:
    lines = (line.strip() for line in problems.replace("*** in database main ***", "").splitlines())
    found = f"{what}: " + "; ".join(" ".join(line.split()) for line in lines if line)  # one line
    if len(found) > 300:
        found = found[:297] + "..."
    return SqliteStoreDamagedError(
        f"the SQLite store {path} is damaged ({found}); it was left untouched. Restore it from a backup, or move "
        "it away to start a new store (the sqlite3 shell's .recover command may salvage what is still readable)",
        path,
    )


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _bounded_check(conn: sqlite3.Connection) -> None:
    """A check whose cost does not grow with the file: the schema (read by then), and for every table and index
    the path from its root page to its first and its last entry, and for every table :data:`SAMPLED_ROWS` rows at
    random positions, read in full (overflow pages too), with ``PRAGMA cell_size_check`` on. It reads a few
    hundred pages: damage there (the root and edge pages of every tree are where the issue's "random bytes at
    offset 8192" lands) raises SQLITE_CORRUPT; damage to other pages is found later, by the query that reads them."""
    conn.execute("PRAGMA cell_size_check=ON")
    schema = conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE type IN ('table', 'index') AND rootpage > 0"
    ).fetchall()
    for kind, name, table, sql in schema:
        if kind == "table":
            if "WITHOUT ROWID" in str(sql).upper():
                continue
            t = _quote(name)
            first = conn.execute(f"SELECT rowid, * FROM {t} NOT INDEXED ORDER BY rowid LIMIT 1").fetchone()
            last = conn.execute(f"SELECT rowid, * FROM {t} NOT INDEXED ORDER BY rowid DESC LIMIT 1").fetchone()
            if first is None or last is None:
                continue
            low, high = first[0], last[0]
            for _ in range(SAMPLED_ROWS if high > low else 0):
                conn.execute(
                    f"SELECT * FROM {t} WHERE rowid >= ? ORDER BY rowid LIMIT 1", (random.randint(low, high),)
                ).fetchall()
            continue
        columns = [row[2] for row in conn.execute(f"PRAGMA index_xinfo({_quote(name)})") if row[5] and row[1] >= 0]
        if not columns:
            continue  # an index on expressions: SQLite's own check covers it
        where = "1"
        if sql and " WHERE " in str(sql).upper():
            where = str(sql)[str(sql).upper().rindex(" WHERE ") + 7 :]
        column = _quote(columns[0])
        for order in ("ASC", "DESC"):
            try:
                conn.execute(
                    f"SELECT {column} FROM {_quote(table)} INDEXED BY {_quote(name)} WHERE {where} "
                    f"ORDER BY {column} {order} LIMIT 1"
                ).fetchall()
            except sqlite3.OperationalError as exc:
                if damage_kind(exc) is not None:
                    raise
                break  # the planner cannot walk this index in order: skip it


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
