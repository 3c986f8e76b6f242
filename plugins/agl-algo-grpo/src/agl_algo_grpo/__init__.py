"""GRPO for agents: group-relative advantages over rollouts of the same task, a clipped policy-gradient update of
a Hugging Face causal LM (fully or with LoRA), checkpoints, and the loop that drives rollouts through the store.

Registered as ``grpo`` in ``agl.algorithms``; its options are :class:`GRPOConfig` (``GRPO.Options``;
``agl plugins show grpo`` lists them). Selected by name, GRPO serves the policy itself (``agl-algo-grpo[serve]``)::

    Trainer(algorithm="grpo", options={"algorithm": {"model": "smollm2", "steps": 12}}).fit(agent, tasks)

or given its own model server and publisher::

    from agl_algo_grpo import GRPO, GRPOConfig, LLMPublisher

    algorithm = GRPO("Qwen/Qwen2.5-0.5B-Instruct", GRPOConfig(steps=50, group_size=8), publisher=LLMPublisher(...))
"""

from agl_algo_grpo._algorithm import GRPO, GRPOReport
from agl_algo_grpo._batching import (
    Batch,
    PackedBatch,
    RolloutSample,
    TrainingSample,
    assign_advantages,
    collate,
    pack_prefixes,
    split_stale,
)
from agl_algo_grpo._checkpoint import disk_usage, format_size
from agl_algo_grpo._config import GRPOConfig, LoraSettings, make_config
from agl_algo_grpo._losses import group_advantages, importance_weights, policy_loss, token_logprobs
from agl_algo_grpo._policy import PolicyTrainer, keep_freed_memory
from agl_algo_grpo._publish import LLMPublisher, PolicyPublisher, WeightSink
from agl_algo_grpo._serving import SERVE_EXTRA, SERVED_MODEL_NAME, load_named_model
from agl_kernel.training_metrics import (
    METRIC_PREFIX,
    METRICS_ROLLOUT_KIND,
    NO_TRIPLET_REASONS,
    STEP_ATTRIBUTE,
    TRAINING_STEP_SPAN,
    VALIDATION_SPAN,
    MetricsRecorder,
)

__all__ = [
    "GRPO",
    "METRICS_ROLLOUT_KIND",
    "METRIC_PREFIX",
    "NO_TRIPLET_REASONS",
    "SERVED_MODEL_NAME",
    "SERVE_EXTRA",
    "STEP_ATTRIBUTE",
    "TRAINING_STEP_SPAN",
    "VALIDATION_SPAN",
    "Batch",
    "GRPOConfig",
    "GRPOReport",
    "LLMPublisher",
    "LoraSettings",
    "MetricsRecorder",
    "PackedBatch",
    "PolicyPublisher",
    "PolicyTrainer",
    "RolloutSample",
    "TrainingSample",
    "WeightSink",
    "assign_advantages",
    "collate",
    "disk_usage",
    "format_size",
    "group_advantages",
    "importance_weights",
    "keep_freed_memory",
    "load_named_model",
    "make_config",
    "pack_prefixes",
    "policy_loss",
    "split_stale",
    "token_logprobs",
]
