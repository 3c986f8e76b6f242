"""agl's ``ray`` execution strategy: runners as Ray actors across a Ray cluster, the store server and the algorithm
in the driver. ``Trainer(strategy="ray", options={"strategy": {"address": "auto"}})``, ``agl train --strategy ray``,
``agl ray status``."""

from __future__ import annotations

from agl_strategy_ray._actor import RunnerActor
from agl_strategy_ray._options import RayStrategyOptions
from agl_strategy_ray._strategy import ACTOR_PREFIX, RayStrategy, RayStrategyError

__all__ = ["ACTOR_PREFIX", "RayStrategy", "RayStrategyError", "RayStrategyOptions", "RunnerActor"]
