"""The store's errors: each names the server (its DSN without the password) and what to do next."""

from __future__ import annotations

import re

from agl_kernel.errors import AglError

__all__ = [
    "DatabaseMissingError",
    "PostgresAuthError",
    "PostgresStoreError",
    "PostgresUnreachableError",
    "SchemaVersionError",
    "redact",
]

_URL_PASSWORD = re.compile(r"(postgres(?:ql)?://[^:/@]*):[^@/]*@")
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")


def redact(dsn: str) -> str:
    """The DSN with its password replaced by ``***`` (for messages and logs)."""
    return _KEYWORD_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1:***@", dsn))


class PostgresStoreError(AglError):
    """The PostgreSQL store cannot serve: the message names the server and what to do."""


class PostgresUnreachableError(PostgresStoreError, ConnectionError):
    """No PostgreSQL server answered at the DSN within ``connect_timeout`` (or the connection was lost)."""


class PostgresAuthError(PostgresStoreError, PermissionError):
    """The server refused the DSN's credentials, or the user lacks a right the store needs."""


class DatabaseMissingError(PostgresStoreError):
    """The DSN names a database the server does not have."""


class SchemaVersionError(PostgresStoreError):
    """The schema (namespace) was written by a newer agl-store-postgres than this one."""
