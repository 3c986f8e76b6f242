"""agl kernel: data model, store contract, plugin system and CLI."""

from agl_kernel.errors import (
    AglError,
    InvalidQueryError,
    InvalidStatusTransitionError,
    MissingDependencyError,
    NotFoundError,
    PluginError,
    PluginNotFoundError,
    StoreClosedError,
    StoreDamagedError,
)
from agl_kernel.models import *  # noqa: F403 - the data model is the kernel's public surface
from agl_kernel.models import __all__ as _model_names
from agl_kernel.store import LightningStore

__version__ = "0.2.0"

__all__ = [
    "__version__",
    "AglError",
    "InvalidQueryError",
    "InvalidStatusTransitionError",
    "MissingDependencyError",
    "NotFoundError",
    "PluginError",
    "PluginNotFoundError",
    "StoreClosedError",
    "StoreDamagedError",
    "LightningStore",
    *_model_names,
]
