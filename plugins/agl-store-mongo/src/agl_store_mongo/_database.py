"""The partition's collections, the checks made when the store opens, its schema, and the transaction runner.

A partition is a set of collections named ``<partition>.<kind>`` in the database: several trainers share one
database, each in its own partition, and never see each other's rollouts. The schema version lives in the
partition's ``meta`` collection; a partition written by a newer plugin is refused before anything is written.

Every change that touches more than one document runs in a transaction (snapshot reads, majority writes), retried
from the start on transient errors (write conflicts, a primary stepping down) with jittered backoff, a bounded
number of times; a commit whose outcome is unknown is retried as a commit. Single-document changes (a claim on a
counter, a span's sequence id) are atomic by themselves and skip the transaction.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
from pymongo import ASCENDING, AsyncMongoClient, ReadPreference
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import (
    ConfigurationError,
    ConnectionFailure,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from agl_store_mongo._errors import (
    MongoAuthError,
    MongoStoreError,
    MongoUnreachableError,
    NotAReplicaSetError,
    SchemaVersionError,
    redact,
)

__all__ = [
    "SCHEMA_VERSION",
    "Collections",
    "Tx",
    "check_server",
    "ensure_schema",
    "make_client",
    "run_transaction",
    "translate_error",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
"""The layout of a partition's documents; a partition records the version that wrote it."""

_AUTH_CODES = frozenset({13, 18})  # Unauthorized, AuthenticationFailed
_NOT_REPLICA_SET_CODES = frozenset({20, 263})  # IllegalOperation (transactions), OperationNotSupportedInTransaction
_MAJORITY = WriteConcern("majority")
_SNAPSHOT = ReadConcern("snapshot")

Doc = dict[str, Any]
T = TypeVar("T")


@attrs.frozen
class Collections:
    """One partition's collections, on one client."""

    rollouts: AsyncCollection[Doc]
    attempts: AsyncCollection[Doc]
    spans: AsyncCollection[Doc]
    resources: AsyncCollection[Doc]
    workers: AsyncCollection[Doc]
    meta: AsyncCollection[Doc]

    @classmethod
    def of(cls, client: AsyncMongoClient[Doc], database: str, partition: str) -> Collections:
        db = client.get_database(database, write_concern=_MAJORITY)
        names = [f.name for f in attrs.fields(cls)]
        return cls(**{name: db[f"{partition}.{name}"] for name in names})

    def namespace(self, name: str) -> str:
        collection: AsyncCollection[Doc] = getattr(self, name)
        return collection.full_name


class Tx:
    """What an operation works with: the collections and, inside a transaction, its session. An operation sets
    ``wake_queue`` / ``wake_ended`` when it queued a rollout / ended one; the store wakes its waiters after the
    commit."""

    __slots__ = ("client", "cols", "session", "wake_ended", "wake_queue", "writer")

    def __init__(
        self, client: AsyncMongoClient[Doc], cols: Collections, session: AsyncClientSession | None, writer: str
    ) -> None:
        self.client = client
        self.cols = cols
        self.session = session
        self.writer = writer
        """This store's token, written as ``by`` with each change that wakes waiters (its change-stream listener
        skips its own events)."""
        self.wake_queue = False
        self.wake_ended = False


def make_client(uri: str, *, connect_timeout: float) -> AsyncMongoClient[Doc]:
    """A client for ``uri`` (not connected yet); a URI pymongo cannot parse is a :class:`MongoStoreError`."""
    timeout_ms = int(connect_timeout * 1000)
    try:
        return AsyncMongoClient(
            uri,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            appname="agl-store-mongo",
            tz_aware=False,
        )
    except (ConfigurationError, ValueError, TypeError) as exc:
        raise MongoStoreError(
            f"store.uri {redact(uri)!r} is not a MongoDB connection string pymongo accepts: {exc}. "
            "Write it as mongodb://HOST:PORT/?replicaSet=NAME (or mongodb+srv://...)"
        ) from exc


async def _diagnose(uri: str, connect_timeout: float) -> str | None:
    """Why server selection failed when a server does answer at the URI's first host (directly), or ``None``."""
    from pymongo.uri_parser import parse_uri

    try:
        host, port = parse_uri(uri)["nodelist"][0]
    except (ConfigurationError, ValueError, IndexError):
        return None
    probe: AsyncMongoClient[Doc] = AsyncMongoClient(
        host, port, directConnection=True, serverSelectionTimeoutMS=int(min(connect_timeout, 2.0) * 1000)
    )
    try:
        hello = await probe.admin.command("hello")
    except PyMongoError:
        return None
    finally:
        await probe.close()
    set_name = hello.get("setName")
    if set_name is None:
        return (
            f"the server at {host}:{port} answers, but it is a standalone mongod, not a replica set member; the store "
            "needs multi-document transactions, which only a replica set has. Start mongod with --replSet rs0 and run "
            "rs.initiate() once (a one-node replica set is enough), then use ?replicaSet=rs0"
        )
    return (
        f"the server at {host}:{port} answers as a member of replica set {set_name!r}, which the URI does not name; "
        f"use ?replicaSet={set_name} (or ?directConnection=true)"
    )


async def check_server(client: AsyncMongoClient[Doc], cols: Collections, uri: str, connect_timeout: float) -> None:
    """Fail fast, with what to do, when the server is unreachable, refuses the credentials, or cannot run
    transactions (a standalone server)."""
    shown = redact(uri)
    try:
        hello = await client.admin.command("hello")
        # Authentication happens on a connection's first use; a read of the partition also checks the user's rights.
        await cols.meta.find_one({"_id": "schema"})
    except ServerSelectionTimeoutError as exc:
        reason = await _diagnose(uri, connect_timeout)
        if reason is not None and "standalone" in reason:
            raise NotAReplicaSetError(f"MongoDB at {shown}: {reason}") from None
        if reason is not None:
            raise MongoUnreachableError(f"MongoDB at {shown}: {reason}") from None
        raise MongoUnreachableError(
            f"no MongoDB server answered at {shown} within {connect_timeout:g} s ({_first_line(exc)}). Check that "
            "mongod runs there and is reachable from this machine, or raise store.connect_timeout"
        ) from None
    except OperationFailure as exc:
        if exc.code in _AUTH_CODES:
            raise MongoAuthError(
                f"MongoDB at {shown} refused the credentials or the user lacks rights on the database "
                f"({_first_line(exc)}). Check the user and password in store.uri (and authSource), and that the user "
                "has readWrite on the database"
            ) from None
        raise MongoStoreError(f"MongoDB at {shown} refused the store's first request: {_first_line(exc)}") from None
    except ConnectionFailure as exc:
        raise MongoUnreachableError(f"MongoDB at {shown} cannot be reached: {_first_line(exc)}") from None
    if hello.get("setName") is None and hello.get("msg") != "isdbgrid":
        raise NotAReplicaSetError(
            f"MongoDB at {shown} is a standalone server, not a replica set: the store needs multi-document "
            "transactions, which only a replica set (one node is enough) or a sharded cluster has. Start mongod with "
            "--replSet rs0 and run rs.initiate() once, then use ?replicaSet=rs0"
        )


def _first_line(exc: BaseException) -> str:
    """The driver's reason, without the server's whole reply or the topology it appends."""
    if isinstance(exc, OperationFailure) and isinstance(exc.details, dict) and exc.details.get("errmsg"):
        return str(exc.details["errmsg"])[:300]
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    for tail in (", full error", " (configured timeouts", ", Timeout:"):
        line = line.split(tail)[0]
    return line[:300]


_INDEXES: dict[str, list[tuple[list[tuple[str, int]], dict[str, Any]]]] = {
    "rollouts": [
        ([("n", ASCENDING)], {"unique": True}),
        ([("ticket", ASCENDING)], {"sparse": True}),  # set exactly while the rollout waits in the queue
        ([("status", ASCENDING)], {}),
        ([("end_time", ASCENDING)], {"sparse": True}),
    ],
    "attempts": [
        ([("rollout_id", ASCENDING), ("sequence_id", ASCENDING)], {"unique": True}),
        ([("watch", ASCENDING)], {"sparse": True}),  # set while the watchdog must look at the attempt
    ],
    "spans": [([("rollout_id", ASCENDING), ("attempt_seq", ASCENDING), ("sequence_id", ASCENDING)], {})],
    "resources": [
        ([("resources_id", ASCENDING), ("version", ASCENDING)], {"unique": True}),
        ([("n", ASCENDING)], {"unique": True}),
    ],
    "workers": [([("first_seen", ASCENDING)], {})],
}


async def ensure_schema(cols: Collections, uri: str, partition: str) -> None:
    """Create the partition's collections and indexes (idempotent; several processes may do it at once) and record
    the schema version; refuse a partition written by a newer version."""
    meta = await cols.meta.find_one({"_id": "schema"})
    if meta is not None and meta.get("version", 0) > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"partition {partition!r} of {cols.rollouts.database.name!r} at {redact(uri)} was written by a newer "
            f"agl-store-mongo (schema version {meta['version']}; this one knows up to {SCHEMA_VERSION}). Upgrade "
            "agl-store-mongo, or use another partition (store.partition)"
        )
    if meta is not None and meta.get("version") == SCHEMA_VERSION:
        return
    for name, indexes in _INDEXES.items():
        collection: AsyncCollection[Doc] = getattr(cols, name)
        for keys, options in indexes:
            await collection.create_index(keys, **options)
    await cols.meta.update_one(
        {"_id": "schema"},
        {"$setOnInsert": {"version": SCHEMA_VERSION, "created": time.time()}},
        upsert=True,
    )
    await cols.meta.update_one({"_id": "counter"}, {"$setOnInsert": {"n": 0}}, upsert=True)


async def run_transaction(
    client: AsyncMongoClient[Doc],
    cols: Collections,
    op: Callable[[Tx], Awaitable[T]],
    *,
    timeout: float,
    max_tries: int,
    on_commit: Callable[[Tx], None],
    writer: str,
) -> T:
    """Run ``op`` in a transaction and commit it; retry the whole of it on a transient error (``op`` must be safe to
    run again: it reads everything it decides on inside the transaction). Gives up with a
    :class:`MongoStoreError` after ``max_tries`` tries or ``timeout`` seconds."""
    started = time.monotonic()
    tries = 0
    async with client.start_session() as session:
        while True:
            tries += 1
            tx = Tx(client, cols, session, writer)
            await session.start_transaction(
                read_concern=_SNAPSHOT, write_concern=_MAJORITY, read_preference=ReadPreference.PRIMARY
            )
            try:
                result = await op(tx)
                await _commit(session, started, timeout)
            except PyMongoError as exc:
                await _abort(session)
                if exc.has_error_label("TransientTransactionError") and _may_retry(tries, max_tries, started, timeout):
                    await _backoff(tries)
                    continue
                translated = translate_error(exc, tries, started)
                if translated is exc:
                    raise
                raise translated from exc
            except BaseException:
                await _abort(session)
                raise
            on_commit(tx)
            return result


async def _commit(session: AsyncClientSession, started: float, timeout: float) -> None:
    while True:
        try:
            await session.commit_transaction()
            return
        except PyMongoError as exc:
            # The commit may or may not have happened (a network error, a failover): committing again is safe.
            if exc.has_error_label("UnknownTransactionCommitResult") and time.monotonic() - started < timeout:
                continue
            raise


async def _abort(session: AsyncClientSession) -> None:
    if session.in_transaction:
        try:
            await session.abort_transaction()
        except PyMongoError:  # the server drops an abandoned transaction by itself
            pass


def _may_retry(tries: int, max_tries: int, started: float, timeout: float) -> bool:
    return tries < max_tries and time.monotonic() - started < timeout


async def _backoff(tries: int) -> None:
    # Conflicting writers retry at jittered, growing intervals so that one of them wins each round.
    await asyncio.sleep(random.uniform(0, min(0.002 * 2 ** min(tries, 8), 0.25)))


def translate_error(exc: PyMongoError, tries: int = 1, started: float | None = None) -> BaseException:
    """The error to raise for a driver error: ours for what users can act on, the driver's own otherwise."""
    if isinstance(exc, OperationFailure) and exc.code in _AUTH_CODES:
        return MongoAuthError(f"MongoDB refused a request of the store: {_first_line(exc)}")
    if isinstance(exc, OperationFailure) and exc.code in _NOT_REPLICA_SET_CODES:
        return NotAReplicaSetError(f"MongoDB cannot run the store's transactions: {_first_line(exc)}")
    if exc.has_error_label("TransientTransactionError"):
        return MongoStoreError(
            f"a transaction of the store kept failing on transient errors and was given up after {tries} tries in "
            f"{time.monotonic() - (started or time.monotonic()):.1f} s: {_first_line(exc)}. Nothing of it was "
            "written; try again"
        )
    if isinstance(exc, ConnectionFailure):
        return MongoUnreachableError(f"MongoDB could not be reached: {_first_line(exc)}. Nothing of it was written")
    return exc
