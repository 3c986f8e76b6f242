"""The store's options (``agl plugins show mongo``), and the checks of values given in Python."""

from __future__ import annotations

import re
from typing import Any

import attrs

__all__ = ["DEFAULT_URI", "MongoStoreOptions", "check_name", "seconds"]

DEFAULT_URI = "mongodb://localhost:27017/?replicaSet=rs0"
"""A one-node replica set on this machine, as ``mongod --replSet rs0`` + ``rs.initiate()`` makes it."""

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_name(what: str, value: Any) -> str:
    """A database or partition name: letters, digits, ``_`` and ``-``, 1 to 64 of them."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(
            f"'{what}' must be 1 to 64 letters, digits, '_' or '-' (it names MongoDB collections), not {value!r}"
        )
    return value


def _name(instance: Any, attribute: attrs.Attribute[str], value: str) -> None:
    check_name(attribute.name, value)


def seconds(what: str, value: Any, *, allow_zero: bool = False) -> float:
    try:
        number = float(value)  # options may come from the command line as strings
    except (TypeError, ValueError):
        raise ValueError(f"'{what}' must be a number of seconds, not {value!r}") from None
    if not (number > 0 or (allow_zero and number == 0)):  # NaN too
        raise ValueError(f"'{what}' must be {'>= 0' if allow_zero else '> 0'} seconds, not {value!r}")
    return number


def _uri(instance: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if not value.startswith(("mongodb://", "mongodb+srv://")):
        raise ValueError(f"'{attribute.name}' must start with mongodb:// or mongodb+srv://, not {value[:40]!r}")


@attrs.define(kw_only=True)
class MongoStoreOptions:
    """Options of the MongoDB store (``mongo``)."""

    uri: str = attrs.field(default=DEFAULT_URI, validator=_uri)
    """The MongoDB connection string: a replica set (one node is enough) or a sharded cluster, since the store uses
    multi-document transactions; credentials go here too (mongodb://USER:PASSWORD@HOST/?replicaSet=rs0)."""
    database: str = attrs.field(default="agl", validator=_name)
    """The database the store keeps its collections in."""
    partition: str = attrs.field(default="default", validator=_name)
    """The partition: trainers sharing one database each use their own and never see each other's rollouts
    (its collections are named PARTITION.rollouts, PARTITION.spans, ...)."""
    connect_timeout: float = attrs.field(default=5.0, validator=attrs.validators.gt(0))
    """Seconds to wait for the server when the store opens (and for each later connection) before failing."""
    transaction_timeout: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    """Seconds a transaction is retried on transient errors (write conflicts, a failover) before the call fails."""
    max_transaction_tries: int = attrs.field(default=100, validator=attrs.validators.ge(1))
    """Tries of one transaction on transient errors before the call fails (whichever bound comes first)."""
    watchdog_interval: float = attrs.field(default=0.5, validator=attrs.validators.gt(0))
    """Seconds between the watchdog's checks of timeouts and heartbeats."""
    change_streams: bool = True
    """Wake waiters (dequeue, wait_for_rollouts) from a change stream on the rollouts; off, or where the server has
    none, waiters check every poll_interval seconds."""
    poll_interval: float = attrs.field(default=0.5, validator=attrs.validators.gt(0))
    """Seconds between checks for other processes' changes when change streams are off or unavailable."""
