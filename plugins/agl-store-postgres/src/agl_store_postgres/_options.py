"""The store's options (``agl plugins show postgres``), and the checks of values given in Python."""

from __future__ import annotations

import re
from typing import Any

import attrs

__all__ = ["DEFAULT_DSN", "PostgresStoreOptions", "check_name", "seconds"]

DEFAULT_DSN = "postgresql://localhost:5432/agl"
"""A server on this machine, database ``agl``; user and password from the environment (PGUSER, PGPASSWORD)."""

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")


def check_name(what: str, value: Any) -> str:
    """A schema name: lower-case letters, digits and ``_``, starting with a letter or ``_``, 1 to 48 of them."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(
            f"'{what}' must be 1 to 48 lower-case letters, digits or '_', not starting with a digit (it names a "
            f"PostgreSQL schema), not {value!r}"
        )
    return value


def _name(instance: Any, attribute: attrs.Attribute[str], value: str) -> None:
    check_name(attribute.name, value)


def seconds(what: str, value: Any) -> float:
    try:
        number = float(value)  # options may come from the command line as strings
    except (TypeError, ValueError):
        raise ValueError(f"'{what}' must be a number of seconds, not {value!r}") from None
    if not number > 0:  # NaN too
        raise ValueError(f"'{what}' must be > 0 seconds, not {value!r}")
    return number


def _dsn(instance: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if not value.startswith(("postgresql://", "postgres://")) and "=" not in value:
        raise ValueError(
            f"'{attribute.name}' must be a PostgreSQL connection string (postgresql://USER:PASSWORD@HOST:PORT/DB or "
            f"'host=... dbname=...'), not {value[:40]!r}"
        )


@attrs.define(kw_only=True)
class PostgresStoreOptions:
    """Options of the PostgreSQL store (``postgres``)."""

    dsn: str = attrs.field(default=DEFAULT_DSN, validator=_dsn)
    """The connection string (postgresql://USER:PASSWORD@HOST:PORT/DATABASE, or libpq's key=value form)."""
    schema: str = attrs.field(default="agl", validator=_name)
    """The PostgreSQL schema the store keeps its tables in: trainers sharing one database each use their own and
    never see each other's rollouts."""
    pool_size: int = attrs.field(default=10, validator=attrs.validators.ge(1))
    """Connections each event loop using the store may hold at once (besides the listener and the watchdog's)."""
    connect_timeout: float = attrs.field(default=5.0, validator=attrs.validators.gt(0))
    """Seconds to wait for the server when the store opens (and for each later connection) before failing."""
    transaction_timeout: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    """Seconds a transaction is retried (serialization failures, deadlocks, a lost connection) before the call
    fails."""
    max_transaction_tries: int = attrs.field(default=100, validator=attrs.validators.ge(1))
    """Tries of one transaction on such errors before the call fails (whichever bound comes first)."""
    watchdog_interval: float = attrs.field(default=0.5, validator=attrs.validators.gt(0))
    """Seconds between the watchdog's checks of timeouts and heartbeats."""
    notify: bool = True
    """Wake waiters (dequeue, wait_for_rollouts) with LISTEN/NOTIFY; off, or while the listener's connection is
    down, waiters check every poll_interval seconds."""
    poll_interval: float = attrs.field(default=0.5, validator=attrs.validators.gt(0))
    """Seconds between checks for other processes' changes while there is no listener."""
