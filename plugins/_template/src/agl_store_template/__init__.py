"""agl-store-template: a skeleton agl plugin distribution with a store, a runner, a tracer and an algorithm (copy
this distribution, keep the kinds you need, and rename it)."""

from agl_store_template._algorithm import (
    EpochResult,
    RolloutSettings,
    TemplateAlgorithm,
    TemplateAlgorithmOptions,
    TemplateReport,
)
from agl_store_template._runner import TemplateRunner, TemplateRunnerOptions
from agl_store_template._store import TemplateLightningStore, TemplateStoreOptions
from agl_store_template._tracer import TemplateTracer, TemplateTracerOptions

__all__ = [
    "EpochResult",
    "RolloutSettings",
    "TemplateAlgorithm",
    "TemplateAlgorithmOptions",
    "TemplateLightningStore",
    "TemplateReport",
    "TemplateRunner",
    "TemplateRunnerOptions",
    "TemplateStoreOptions",
    "TemplateTracer",
    "TemplateTracerOptions",
]
__version__ = "0.1.0"
