"""agl-store-postgres: the store on PostgreSQL, shared by many trainers, runners and machines (entry point
``postgres`` in ``agl.stores``).

    from agl_store_postgres import PostgresLightningStore
    store = PostgresLightningStore("postgresql://agl:secret@db.example:5432/agl", schema="team_a")

or, by name: ``agl_kernel.plugins.create_component("stores", "postgres", dsn="postgresql://...")``.
"""

from agl_store_postgres._errors import (
    DatabaseMissingError,
    PostgresAuthError,
    PostgresStoreError,
    PostgresUnreachableError,
    SchemaVersionError,
)
from agl_store_postgres._options import PostgresStoreOptions
from agl_store_postgres._schema import SCHEMA_VERSION
from agl_store_postgres.store import PostgresLightningStore

__all__ = [
    "SCHEMA_VERSION",
    "DatabaseMissingError",
    "PostgresAuthError",
    "PostgresLightningStore",
    "PostgresStoreError",
    "PostgresStoreOptions",
    "PostgresUnreachableError",
    "SchemaVersionError",
]
