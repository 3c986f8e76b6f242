"""The generation step done by agl: publish the served policy, run the step's tasks as rollouts through the store
(any agent, runner and strategy), and turn what they recorded into rows of token ids with a reward each.

This half needs only the kernel: :class:`AglRollouts` does not know verl; :mod:`agl_algo_verl._dataproto` turns its
:class:`Row` list into verl's ``DataProto``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from agl_kernel.adapter import Adapter
from agl_kernel.algorithm import collect_outcomes
from agl_kernel.models import (
    EnqueueRequest,
    ProxyLLM,
    Resource,
    RolloutConfig,
    RolloutMode,
    RolloutStatus,
    Triplet,
)
from agl_kernel.progress import NoProgress, ProgressReporter
from agl_kernel.store.base import LightningStore

__all__ = ["AglRollouts", "Row", "StepRollouts", "rows_from_triplets"]


@dataclass
class Row:
    """One training row: a triplet's tokens, which response tokens the model generated, its reward and group."""

    prompt_token_ids: list[int]
    response_token_ids: list[int]
    response_mask: list[int]
    """1 for each response token the model generated; 0 for tool/user tokens inside a merged response."""
    reward: float
    uid: str
    """The group: rows of one task's rollouts share it (verl's ``uid``, what GRPO normalises over)."""
    rollout_id: str | None = None
    logprobs: list[float] | None = None
    """Sampling-time logprobs of the response tokens, when the server returned them."""


@dataclass
class StepRollouts:
    """What one step's rollouts gave."""

    rows: list[Row] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    """The final reward of each rollout that succeeded and recorded one."""
    succeeded: int = 0
    failed: int = 0
    no_rows: list[dict[str, str]] = field(default_factory=list)
    """``{"rollout_id", "reason"}`` for each rollout that gave no row."""


def rows_from_triplets(
    triplets: Sequence[Triplet], *, uid: str, rollout_id: str | None, final_reward: float | None
) -> list[Row]:
    """A :class:`Row` per triplet; its reward is the triplet's (step + final, as the adapter gave it), else the
    rollout's final reward, else 0."""
    rows = []
    for t in triplets:
        reward = t.reward if t.reward is not None else (final_reward if final_reward is not None else 0.0)
        mask = list(t.response_mask) if t.response_mask is not None else [1] * len(t.response_token_ids)
        logprobs = t.response_logprobs
        if logprobs is not None and len(logprobs) != len(t.response_token_ids):
            logprobs = None
        rows.append(
            Row(
                prompt_token_ids=list(t.prompt_token_ids),
                response_token_ids=list(t.response_token_ids),
                response_mask=mask,
                reward=float(reward),
                uid=uid,
                rollout_id=rollout_id,
                logprobs=None if logprobs is None else [float(x) for x in logprobs],
            )
        )
    return rows


class AglRollouts:
    """Runs a step's generation through the agl store.

    ``serving(store, base_urls, model_name)`` puts the kernel's LLM proxy on 127.0.0.1 in front of the servers
    that hold the current weights (verl's vLLM replicas), so every call is recorded with token ids and logprobs;
    ``publish`` stores the ``ProxyLLM`` as a resources version; ``run`` enqueues ``group_size`` rollouts of each
    task pinned to it, waits for them (woken by the store), and adapts each succeeded rollout's spans into rows.
    """

    def __init__(
        self,
        *,
        group_size: int,
        adapter: Adapter[Any] | None = None,
        rollout_timeout: float | None = None,
        rollout_config: RolloutConfig | None = None,
        progress: ProgressReporter | None = None,
        resource_name: str = "main_llm",
        resources_id: str = "verl-policy",
    ) -> None:
        if adapter is None:
            from agl_kernel.adapters import TripletAdapter

            adapter = TripletAdapter()
        self.adapter = adapter
        self.group_size = group_size
        self.rollout_timeout = rollout_timeout
        self.rollout_config = rollout_config or RolloutConfig()
        self.progress = progress or NoProgress()
        self.resource_name = resource_name
        self.resources_id = resources_id
        self.llm: ProxyLLM | None = None

    @contextlib.asynccontextmanager
    async def serving(self, store: LightningStore, base_urls: Sequence[str], model_name: str) -> AsyncIterator[str]:
        """The LLM proxy in front of ``base_urls`` (OpenAI base URLs, ending in ``/v1``) while the body runs;
        yields the proxy's URL."""
        from agl_kernel.proxy import LLMProxy
        from agl_kernel.server import running_server

        proxy = LLMProxy(store, list(base_urls))
        try:
            async with running_server(store, route_handlers=proxy.routes(), plugins=False) as url:
                self.llm = ProxyLLM(endpoint=url, model=model_name)
                yield url
        finally:
            self.llm = None
            await proxy.aclose()

    async def publish(
        self, store: LightningStore, sampling_parameters: dict[str, Any], extra: dict[str, Resource] | None = None
    ) -> str:
        """Store the proxied LLM (with ``sampling_parameters``) as a new version of the resources; its id."""
        if self.llm is None:
            raise RuntimeError("AglRollouts.publish needs serving(...) to be running")
        llm = ProxyLLM(
            endpoint=self.llm.endpoint,
            model=self.llm.model,
            sampling_parameters={**self.llm.sampling_parameters, **sampling_parameters},
        )
        update = await store.update_resources(self.resources_id, {**(extra or {}), self.resource_name: llm})
        return update.resources_id

    async def run(
        self,
        store: LightningStore,
        tasks: Sequence[Any],
        *,
        resources_id: str | None,
        mode: RolloutMode = RolloutMode.TRAIN,
        metadata: dict[str, Any] | None = None,
        label: str = "rollouts",
    ) -> StepRollouts:
        """``group_size`` rollouts of each task (one in validation); the rows of those that succeeded. Task ``i``'s
        group is uid ``"<metadata['verl_step']>-i"`` (``"val-i"`` without a step)."""
        n = self.group_size if mode is RolloutMode.TRAIN else 1
        requests = [
            EnqueueRequest(
                input=task,
                mode=mode,
                resources_id=resources_id,
                config=self.rollout_config,
                metadata={**(metadata or {}), "verl_group": group},
            )
            for group, task in enumerate(tasks)
            for _ in range(n)
        ]
        rollouts = await store.enqueue_many_rollouts(requests)
        ids = [r.rollout_id for r in rollouts]
        ended = await collect_outcomes(store, ids, timeout=self.rollout_timeout, progress=self.progress, label=label)
        result = StepRollouts()
        prefix = (metadata or {}).get("verl_step", "val")
        for index, rid in enumerate(ids):
            outcome = ended.get(rid)
            if outcome is None:
                await store.cancel_rollout(rid)
                result.no_rows.append({"rollout_id": rid, "reason": "did not end within rollout_timeout; cancelled"})
                continue
            if outcome.status != RolloutStatus.SUCCEEDED.value:
                result.failed += outcome.status == RolloutStatus.FAILED.value
                result.no_rows.append({"rollout_id": rid, "reason": f"the rollout {outcome.status}"})
                continue
            result.succeeded += 1
            spans = (await store.query_spans(rid, "latest")).items
            adapted = self.adapter.adapt(spans)
            if isinstance(adapted, list):
                triplets, reward, why = adapted, outcome.reward, []
            else:
                triplets = list(getattr(adapted, "triplets", ()))
                reward = getattr(adapted, "final_reward", outcome.reward)
                why = list(adapted.why()) if hasattr(adapted, "why") else []
            if reward is not None:
                result.rewards.append(float(reward))
            if not all(isinstance(t, Triplet) for t in triplets):
                raise TypeError(
                    f"VERL trains on triplets, but the adapter {type(self.adapter).__name__} gave "
                    f"{type(triplets[0]).__name__}: use the 'triplets' adapter (agl_kernel.adapters.TripletAdapter)"
                )
            rows = rows_from_triplets(triplets, uid=f"{prefix}-{index // n}", rollout_id=rid, final_reward=reward)
            if not rows:
                result.no_rows.append({"rollout_id": rid, "reason": "; ".join(why[:2]) or "no triplets"})
            result.rows += rows
        return result
