"""Clear errors, within seconds: an unreachable server, refused credentials, a standalone server (no
transactions), a partition written by a newer version, bad options; and calls after close."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from _secantus import SecantusServer, executable, free_port
from pymongo import MongoClient

from agl_kernel.errors import AglError, ConfigError, StoreClosedError
from agl_kernel.plugins import create_component
from agl_store_mongo import (
    SCHEMA_VERSION,
    MongoAuthError,
    MongoLightningStore,
    MongoUnreachableError,
    NotAReplicaSetError,
    SchemaVersionError,
)

needs_secantus = pytest.mark.skipif(executable() is None, reason="pip install 'agl-store-mongo[testing]' (secantusdb)")


def test_unreachable_server_fails_within_the_connect_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(MongoUnreachableError, match=r"no MongoDB server answered at mongodb://127\.0\.0\.1:\d+/.*1 s"):
        MongoLightningStore(f"mongodb://127.0.0.1:{free_port()}/?replicaSet=rs0", connect_timeout=1)
    assert time.monotonic() - started < 10
    assert issubclass(MongoUnreachableError, AglError)


def test_a_uri_that_is_not_mongodb_is_a_config_error() -> None:
    with pytest.raises(
        ConfigError, match=r"store\.uri: must start with mongodb:// or mongodb\+srv://, not 'postgres://x'"
    ):
        create_component("stores", "mongo", options={"uri": "postgres://x"})
    with pytest.raises(ConfigError, match=r"store\.partition: must be 1 to 64 letters"):
        create_component("stores", "mongo", options={"partition": "a.b"})
    with pytest.raises(ConfigError, match=r"store\.connect_timeout: must be > 0"):
        create_component("stores", "mongo", options={"connect_timeout": "0"})


def test_newer_schema_is_refused_before_anything_is_written(mongo_uri: str, database: str) -> None:
    with MongoClient(mongo_uri) as client:
        client[database]["p1.meta"].insert_one({"_id": "schema", "version": SCHEMA_VERSION + 1})
    with pytest.raises(
        SchemaVersionError, match=rf"written by a newer agl-store-mongo \(schema version {SCHEMA_VERSION + 1}"
    ):
        MongoLightningStore(mongo_uri, database=database, partition="p1")
    with MongoClient(mongo_uri) as client:
        assert "p1.rollouts" not in client[database].list_collection_names()


def test_schema_version_is_recorded(mongo_uri: str, database: str) -> None:
    async def main() -> None:
        async with MongoLightningStore(mongo_uri, database=database, partition="p2"):
            pass

    asyncio.run(main())
    with MongoClient(mongo_uri) as client:
        assert client[database]["p2.meta"].find_one({"_id": "schema"})["version"] == SCHEMA_VERSION


def test_calls_after_close_name_the_store(mongo_uri: str, database: str) -> None:
    async def main() -> None:
        store = MongoLightningStore(mongo_uri, database=database)
        await store.close()
        with pytest.raises(StoreClosedError, match=rf"MongoDB store \(mongo .* \(database '{database}'"):
            await store.enqueue_rollout("x")

    asyncio.run(main())


@needs_secantus
@pytest.mark.slow
def test_standalone_server_is_not_a_replica_set() -> None:
    server = SecantusServer(extra=("--standalone",))
    try:
        for uri in (f"mongodb://127.0.0.1:{server.port}/", server.uri):
            started = time.monotonic()
            with pytest.raises(NotAReplicaSetError, match="--replSet rs0"):
                MongoLightningStore(uri, connect_timeout=2)
            assert time.monotonic() - started < 10
    finally:
        server.close()


@needs_secantus
@pytest.mark.slow
def test_wrong_credentials(tmp_path: Path) -> None:
    server = SecantusServer(str(tmp_path / "data"))
    try:
        with MongoClient(server.uri) as client:
            client.admin.command("createUser", "agl", pwd="secret", roles=[{"role": "root", "db": "admin"}])
        server.stop()
        server.extra = ("--auth",)
        server.start()
        wrong = server.uri.replace("mongodb://", "mongodb://agl:wrong@")
        with pytest.raises(MongoAuthError, match=r"mongodb://agl:\*\*\*@.*refused the credentials") as raised:
            MongoLightningStore(wrong, connect_timeout=2)
        assert "wrong" not in str(raised.value)
        with pytest.raises(MongoAuthError, match="requires authentication"):
            MongoLightningStore(server.uri, connect_timeout=2)

        async def main() -> None:
            right = server.uri.replace("mongodb://", "mongodb://agl:secret@")
            async with MongoLightningStore(right, database="authed") as store:
                assert (await store.enqueue_rollout("x")).rollout_id
                assert "secret" not in store.describe() and "secret" not in repr(store)

        asyncio.run(main())
    finally:
        server.close()
