"""agl-store-mongo: the store on MongoDB, shared by many trainers, runners and machines (entry point ``mongo`` in
``agl.stores``).

    from agl_store_mongo import MongoLightningStore
    store = MongoLightningStore("mongodb://db.example:27017/?replicaSet=rs0", partition="team-a")

or, by name: ``agl_kernel.plugins.create_component("stores", "mongo", uri="mongodb://...")``.
"""

from agl_store_mongo._database import SCHEMA_VERSION
from agl_store_mongo._errors import (
    MongoAuthError,
    MongoStoreError,
    MongoUnreachableError,
    NotAReplicaSetError,
    SchemaVersionError,
)
from agl_store_mongo._options import MongoStoreOptions
from agl_store_mongo.store import MongoLightningStore

__all__ = [
    "SCHEMA_VERSION",
    "MongoAuthError",
    "MongoLightningStore",
    "MongoStoreError",
    "MongoStoreOptions",
    "MongoUnreachableError",
    "NotAReplicaSetError",
    "SchemaVersionError",
]
