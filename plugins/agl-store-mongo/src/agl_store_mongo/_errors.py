"""The store's errors: each names the server (its URI without the password) and what to do next."""

from __future__ import annotations

import re

from agl_kernel.errors import AglError

__all__ = [
    "MongoAuthError",
    "MongoStoreError",
    "MongoUnreachableError",
    "NotAReplicaSetError",
    "SchemaVersionError",
    "redact",
]

_PASSWORD = re.compile(r"(mongodb(?:\+srv)?://[^:/@]*):[^@/]*@")


def redact(uri: str) -> str:
    """The URI with its password replaced by ``***`` (for messages and logs)."""
    return _PASSWORD.sub(r"\1:***@", uri)


class MongoStoreError(AglError):
    """The MongoDB store cannot serve: the message names the server and what to do."""


class MongoUnreachableError(MongoStoreError, ConnectionError):
    """No MongoDB server answered at the URI within ``connect_timeout``."""


class MongoAuthError(MongoStoreError, PermissionError):
    """The server refused the URI's credentials, or the user lacks a permission the store needs."""


class NotAReplicaSetError(MongoStoreError):
    """The server is a standalone ``mongod``: the store needs multi-document transactions, which only a replica set
    (a one-node one is enough) or a sharded cluster has."""


class SchemaVersionError(MongoStoreError):
    """The partition was written by a newer agl-store-mongo than this one."""
