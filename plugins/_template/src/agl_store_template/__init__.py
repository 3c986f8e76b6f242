"""agl-store-template: a skeleton agl store plugin (copy this distribution and rename it)."""

from agl_store_template._store import TemplateLightningStore

__all__ = ["TemplateLightningStore"]
__version__ = "0.1.0"
