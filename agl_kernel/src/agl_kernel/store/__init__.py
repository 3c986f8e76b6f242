"""The store contract and the kernel's in-memory backend."""

from agl_kernel.store.base import LATEST, SORT_FIELDS, LightningStore, SortOrder

__all__ = ["LATEST", "SORT_FIELDS", "LightningStore", "SortOrder"]
