"""agl-store-sqlite: the durable embedded store, on one SQLite file (entry point ``sqlite`` in ``agl.stores``).

    from agl_store_sqlite import SqliteLightningStore
    store = SqliteLightningStore(".agl/agl.db")

or, by name: ``agl_kernel.plugins.create_component("stores", "sqlite", path="runs/agl.db")``.
"""

from agl_store_sqlite._schema import SCHEMA_VERSION, SchemaVersionError, SqliteStoreDamagedError, SqliteStoreError
from agl_store_sqlite.store import SqliteLightningStore

__all__ = [
    "SCHEMA_VERSION",
    "SchemaVersionError",
    "SqliteLightningStore",
    "SqliteStoreDamagedError",
    "SqliteStoreError",
]
