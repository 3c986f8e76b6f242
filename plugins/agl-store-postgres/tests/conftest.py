"""One PostgreSQL cluster per test session and a fresh schema per test.

With ``AGL_TEST_POSTGRES_DSN`` set (e.g. ``postgresql://agl:secret@127.0.0.1:5432/agl_test``) the tests use that
server; otherwise they start a throw-away cluster (``initdb`` + ``pg_ctl``, as ``nobody`` when run as root, on a
free port of 127.0.0.1) and remove it at the end of the session, and skip, saying how to run them, when the
PostgreSQL server binaries are not installed. Tests that stop or restart the server start a cluster of their own.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _cluster import PostgresCluster, available

_schemas = itertools.count()
_RUN = os.getpid()

NO_SERVER = (
    "no PostgreSQL server to test against: install PostgreSQL's server binaries (initdb, pg_ctl; e.g. apt-get install "
    "postgresql) or set AGL_TEST_POSTGRES_DSN to a database the tests may create schemas in"
)


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """The DSN of the session's server."""
    given = os.environ.get("AGL_TEST_POSTGRES_DSN")
    if given:
        yield given
        return
    if not available():
        pytest.skip(NO_SERVER)
    cluster = PostgresCluster(fsync=False)  # a throw-away cluster: crash safety is tested on clusters of their own
    try:
        yield cluster.dsn()
    finally:
        cluster.close()


@pytest.fixture
def schema(postgres_dsn: str) -> Iterator[str]:
    """A schema name no other test uses; dropped after the test on a server given by ``AGL_TEST_POSTGRES_DSN``
    (the session's own cluster is thrown away whole)."""
    name = f"agl_test_{_RUN}_{next(_schemas)}"
    yield name
    if not os.environ.get("AGL_TEST_POSTGRES_DSN"):
        return
    import psycopg

    try:
        with psycopg.connect(postgres_dsn, autocommit=True, connect_timeout=5) as conn:
            conn.execute("SET lock_timeout = '5s'")
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    except psycopg.Error:
        pass


@pytest.fixture
def own_cluster() -> Iterator[PostgresCluster]:
    """A cluster of the test's own, with fsync on (for tests that stop or crash the server)."""
    if not available():
        pytest.skip(NO_SERVER.split(" or set")[0] + " (this test stops and restarts its own server)")
    cluster = PostgresCluster(fsync=True)
    try:
        yield cluster
    finally:
        cluster.close()
