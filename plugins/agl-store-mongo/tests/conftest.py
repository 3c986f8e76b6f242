"""One MongoDB server per test session and a fresh database per test.

With ``AGL_TEST_MONGO_URI`` set (a replica set, e.g. ``mongodb://127.0.0.1:27017/?replicaSet=rs0``) the tests use
that server; otherwise they start a secantus server (``pip install 'agl-store-mongo[testing]'``) on a free port of
127.0.0.1 with in-memory storage, and skip, saying how to run them, when neither is there.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _secantus import SecantusServer, executable

_databases = itertools.count()
_RUN = os.getpid()


@pytest.fixture(scope="session")
def mongo_uri() -> Iterator[str]:
    """The URI of the session's server."""
    given = os.environ.get("AGL_TEST_MONGO_URI")
    if given:
        yield given
        return
    if executable() is None:
        pytest.skip(
            "no MongoDB server to test against: pip install 'agl-store-mongo[testing]' (secantusdb), or set "
            "AGL_TEST_MONGO_URI to a replica set"
        )
    server = SecantusServer()
    try:
        yield server.uri
    finally:
        server.close()


@pytest.fixture
def database(mongo_uri: str) -> Iterator[str]:
    """A database name no other test uses.

    On a server given by ``AGL_TEST_MONGO_URI`` it is dropped after the test when the server lets it within seconds
    (a transaction of a process killed by a test holds its locks until the server reaps it). On the session's own
    in-memory secantus server it is not: that server is thrown away at the end of the session, and secantus drops a
    database row by row under its one storage lock — minutes for the two-process tests' databases, during which
    every other test's requests wait (and the server keeps a core busy after pytest's client gave up).
    """
    name = f"agl_test_{_RUN}_{next(_databases)}"
    yield name
    if not os.environ.get("AGL_TEST_MONGO_URI"):
        return
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    with MongoClient(mongo_uri, serverSelectionTimeoutMS=5000, timeoutMS=5000) as client:
        try:
            client.drop_database(name)
        except PyMongoError:
            pass
