"""agl-algo-verl: verl 0.9's PPO/GRPO trainer with its generation replaced by agl rollouts (``verl`` in
``agl.algorithms``).

The package imports with the kernel alone: the options (:class:`VERLOptions`, their mapping onto verl's Hydra
config), the rollout half (:class:`AglRollouts`: publish, enqueue, wait, triplets → rows) and the algorithm class.
verl, ray and torch are needed to run it (``pip install 'agl-algo-verl[verl]'``); without them ``VERL.run`` raises
one :class:`~agl_kernel.errors.MissingDependencyError` line saying so. verl's side lives in
``agl_algo_verl._trainer`` (the Hydra config, the ``RayPPOTrainer`` subclass, the update step) and
``agl_algo_verl._dataproto`` (rows → ``DataProto``).
"""

from agl_algo_verl._algorithm import VERL, VERLReport, require_verl
from agl_algo_verl._options import FIXED_OVERRIDES, VERLOptions, hydra_overrides
from agl_algo_verl._rollouts import AglRollouts, Row, StepRollouts, rows_from_triplets

__all__ = [
    "FIXED_OVERRIDES",
    "VERL",
    "AglRollouts",
    "Row",
    "StepRollouts",
    "VERLOptions",
    "VERLReport",
    "hydra_overrides",
    "require_verl",
    "rows_from_triplets",
]
