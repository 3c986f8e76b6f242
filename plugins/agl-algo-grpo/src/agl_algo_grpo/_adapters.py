"""One LoRA adapter per agent role (GRPO's ``adapters`` option): several named adapters trained on one frozen base.

- **Serving.** Each adapter is published as an LLM resource of its own, named by the role, whose model is
  ``policy:<role>`` (the first adapter is also ``main_llm``); an agent picks its role's resource
  (``resources["solver"]``) and calls the model under that name. The model server serves every adapter over the one
  base model in the same decode batches (:mod:`agl_model_server._lora`) and takes each adapter's new weights alone:
  its ``A``/``B`` tensors, no merge into the base weights (:class:`AdapterPublisher`).
- **Routing.** The LLM proxy records the model of every call; a triplet's ``metadata["model"]`` is therefore
  ``policy:<role>``, and :func:`route` sends it to that adapter. A triplet from another model (a call to the base
  ``policy``, or to an adapter not trained here) updates nothing and is counted.
- **Rewards and advantages per role.** An agent gives each role its own reward as a named value of the final
  reward, named by the role: ``emit_reward({"task": 1.0, "planner": 0.5, "solver": 1.0}, primary="task")``
  (:class:`RoleRewards` makes it the reward of that role's triplets; a role without one keeps the final reward).
  A rollout's triplets are split by adapter before the credit rule runs (:func:`split_rollouts`): each role's
  triplets are compared with the same role's in the group.
- **Updates.** Each adapter has its own AdamW (:class:`AdapterOptimizers`); an update activates one adapter and
  steps its optimizer on its own triplets only, so a triplet of role A never changes adapter B.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
import torch

from agl_algo_grpo._batching import RolloutSample, TrainingSample
from agl_kernel.errors import ConfigError
from agl_kernel.models import LLM, Resource
from agl_kernel.store import LightningStore

if TYPE_CHECKING:
    from agl_algo_grpo._policy import PolicyTrainer

__all__ = ["AdapterOptimizers", "AdapterPublisher", "RoleRewards", "adapter_model", "route", "split_rollouts"]


def adapter_model(base: str, adapter: str) -> str:
    """The model name that selects ``adapter`` on a server serving ``base``: ``base:adapter``."""
    return f"{base}:{adapter}"


def _adapter_of(model: Any, names: Sequence[str]) -> str | None:
    if not isinstance(model, str):
        return None
    _, sep, adapter = model.rpartition(":")
    return adapter if sep and adapter in names else None


def split_rollouts(
    rollouts: Sequence[RolloutSample], names: Sequence[str]
) -> tuple[list[RolloutSample], dict[str, float]]:
    """Each rollout as one sample per adapter its triplets used (group ``(group, adapter)``: a role's triplets are
    compared with the same role's), and metrics: ``triplets_unrouted`` (triplets whose call named no adapter of
    ``names``: left out) and per adapter ``reward_<adapter>``, the mean reward of its triplets (each triplet's
    step reward when it has one: the role's own reward; else its reward)."""
    out: list[RolloutSample] = []
    unrouted = 0
    role_rewards: dict[str, list[float]] = {name: [] for name in names}
    for rollout in rollouts:
        given_versions = getattr(rollout, "versions", None)  # asynchronous GRPO: the policy version per triplet
        versions = given_versions or [None] * len(rollout.triplets)
        by_adapter: dict[str, tuple[list[Any], list[int | None]]] = {}
        for triplet, version in zip(rollout.triplets, versions):
            adapter = _adapter_of(triplet.metadata.get("model"), names)
            if adapter is None:
                unrouted += 1
                continue
            triplets, kept_versions = by_adapter.setdefault(adapter, ([], []))
            triplets.append(triplet)
            kept_versions.append(version)
            own = triplet.step_reward if triplet.step_reward is not None else triplet.reward
            if own is not None:
                role_rewards[adapter].append(float(own))
        for adapter, (triplets, kept_versions) in by_adapter.items():
            changes: dict[str, Any] = {"group": (rollout.group, adapter), "triplets": triplets}
            if given_versions is not None:
                changes["versions"] = kept_versions
            out.append(dataclasses.replace(rollout, **changes))
    metrics = {"triplets_unrouted": float(unrouted)}
    metrics.update({f"reward_{name}": sum(found) / len(found) for name, found in role_rewards.items() if found})
    return out, metrics


class RoleRewards:
    """Wraps a triplet adapter (``adapt(spans)``): a triplet whose call was served by adapter ``R`` gets, as its
    reward and step reward, the value named ``R`` of the attempt's final reward when there is one (the LLM proxy
    records calls on their own, so a per-step reward cannot name a call made through it: a named value is how an
    agent rewards each role)."""

    def __init__(self, inner: Any, names: Sequence[str]) -> None:
        self.inner = inner
        self.names = list(names)

    def adapt(self, spans: Sequence[Any]) -> Any:
        from agl_kernel.rewards import final_reward

        result = self.inner.adapt(spans)
        found = final_reward(spans)
        named = {k: v for k, v in (found.values if found is not None else {}).items() if k in self.names}
        if not named:
            return result
        triplets = result if isinstance(result, list) else list(result.triplets)
        changed = []
        for triplet in triplets:
            role = _adapter_of(triplet.metadata.get("model"), self.names)
            if role in named:
                triplet = msgspec.structs.replace(triplet, reward=named[role], step_reward=named[role])
            changed.append(triplet)
        return changed if isinstance(result, list) else msgspec.structs.replace(result, triplets=changed)


def route(samples: Sequence[TrainingSample], names: Sequence[str]) -> dict[str, list[TrainingSample]]:
    """The samples of each adapter (by the group :func:`split_rollouts` gave them), in ``names`` order."""
    routed: dict[str, list[TrainingSample]] = {name: [] for name in names}
    for sample in samples:
        group = sample.group
        adapter = group[1] if isinstance(group, tuple) and len(group) == 2 else None
        if adapter not in routed:
            raise ValueError(f"a training sample of group {group!r} names no adapter of {list(names)}")
        routed[adapter].append(sample)
    return {name: found for name, found in routed.items() if found}


class AdapterOptimizers:
    """One optimizer per adapter, saved and restored together (what a checkpoint's ``optimizer.pt`` holds)."""

    def __init__(self, optimizers: Mapping[str, torch.optim.Optimizer]) -> None:
        self.optimizers = dict(optimizers)

    def __getitem__(self, name: str) -> torch.optim.Optimizer:
        return self.optimizers[name]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [group for optimizer in self.optimizers.values() for group in optimizer.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"adapters": {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = dict(state.get("adapters", {}))
        if set(saved) != set(self.optimizers):
            raise ValueError(
                f"the checkpoint's optimizer state is for adapters {sorted(saved)}, this run trains "
                f"{sorted(self.optimizers)}: use the same adapters, or another checkpoint_dir"
            )
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(saved[name])


class AdapterPublisher:
    """Publishes a multi-adapter policy: each adapter's ``A``/``B`` tensors to the backend (``load_adapter``; the
    base weights are never sent), then the resources: per adapter an LLM named by the role, model
    ``<llm.model>:<role>``, and the first one also as ``main_llm``, next to ``extra_resources``.

    ``seconds`` keeps, per publish, the adapters' copy time on the server and the whole publish's wall time."""

    def __init__(
        self,
        backend: Any,
        llm: LLM,
        names: Sequence[str],
        *,
        resources_id: str = "grpo-policy",
        extra_resources: Mapping[str, Resource] | None = None,
    ) -> None:
        if not callable(getattr(backend, "load_adapter", None)):
            raise ConfigError(
                f"algorithm.adapters: the LLM backend {type(backend).__name__} cannot serve LoRA adapters (it has no "
                "load_adapter); use the model-server backend"
            )
        clash = sorted(set(names) & {"main_llm", *(extra_resources or {})})
        if clash:
            raise ConfigError(
                f"algorithm.adapters: {clash} is also the name of a published resource; rename the adapter"
            )
        self.backend = backend
        self.llm = llm
        self.names = list(names)
        self.resources_id = resources_id
        self.extra_resources = dict(extra_resources or {})
        self.seconds: list[dict[str, float]] = []

    async def publish(
        self, policy: PolicyTrainer, *, version: int, store: LightningStore, sampling_parameters: dict[str, Any]
    ) -> str | None:
        import time

        started = time.perf_counter()
        copy_s = 0.0
        for name in self.names:
            state, scale = policy.adapter_state_for_serving(name)
            result = self.backend.load_adapter(name, state, scale=scale, version=version)
            if inspect.isawaitable(result):
                result = await result
            copy_s += float((result or {}).get("seconds", 0.0)) if isinstance(result, Mapping) else 0.0
        self.seconds.append({"adapter_copy_s": copy_s, "publish_s": time.perf_counter() - started})
        sampling = {**self.llm.sampling_parameters, **sampling_parameters}
        llms = {
            name: msgspec.structs.replace(
                self.llm, model=adapter_model(self.llm.model, name), sampling_parameters=sampling
            )
            for name in self.names
        }
        resources: dict[str, Resource] = {**self.extra_resources, "main_llm": llms[self.names[0]], **llms}
        update = await store.update_resources(self.resources_id, resources)
        return update.resources_id
