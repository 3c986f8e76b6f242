"""A toy agent and tasks for GRPO selected by name (``Trainer(algorithm="grpo", ...)``, ``agl train``), importable by
path (``.../grpo_toy_agent.py:agent``): :func:`agl_algo_grpo.testing.vowel_agent`, one chat call through the
rollout's LLM (the proxy GRPO serves the policy behind), rewarded by the share of vowels in the reply."""

from __future__ import annotations

from typing import Any

from agl_algo_grpo.testing import TOY_TASKS
from agl_algo_grpo.testing import vowel_agent as agent
from agl_algo_grpo.testing import vowel_share as reward

__all__ = ["TASKS", "TINY_MODEL", "agent", "reward", "tasks"]

TINY_MODEL = "agl_algo_grpo.testing:tiny_chat_model"
"""The ``model`` option that names a tiny random model (made on the spot, offline)."""

TASKS = TOY_TASKS


def tasks() -> list[dict[str, Any]]:
    return list(TASKS)
