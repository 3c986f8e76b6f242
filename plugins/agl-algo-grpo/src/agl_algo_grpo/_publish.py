"""Publishing the policy: make the trainer's current weights what rollouts sample from, and tell them where.

GRPO calls ``await publisher.publish(policy, version=..., store=..., sampling_parameters=...)`` before each step's
rollouts (and before a validation) and pins the rollouts to the resources id it returns. Any object with that
method will do, or an ``async`` function of the same arguments; :class:`LLMPublisher` is the usual one: it pushes
the weights to a model server and publishes the LLM resource (a ``ProxyLLM``) in front of it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import msgspec
import torch

from agl_kernel.models import LLM, Resource
from agl_kernel.store import LightningStore

if TYPE_CHECKING:
    from agl_algo_grpo._policy import PolicyTrainer

__all__ = ["LLMPublisher", "PolicyPublisher", "WeightSink", "as_publisher"]


@runtime_checkable
class PolicyPublisher(Protocol):
    """Makes a policy version available to rollouts."""

    async def publish(
        self,
        policy: PolicyTrainer,
        *,
        version: int,
        store: LightningStore,
        sampling_parameters: dict[str, Any],
    ) -> str | None:
        """Serve ``policy``'s current weights as ``version`` and publish resources that point at them; return the
        ``resources_id`` rollouts should pin (``None``: whatever resources are latest when they are enqueued).
        ``sampling_parameters`` (``temperature``, ``max_tokens``) belong on the published LLM."""


@runtime_checkable
class WeightSink(Protocol):
    """Where weights go: e.g. an in-process model server. ``load_weights`` may be a coroutine function."""

    def load_weights(self, state_dict: Mapping[str, torch.Tensor], *, version: int) -> Any:
        """Replace the served weights with ``state_dict`` (names as the original model's) from now on."""


class LLMPublisher:
    """Pushes the merged weights to ``sink``, then stores ``llm`` (its ``sampling_parameters`` updated with GRPO's)
    as a new version of ``resources_id`` under ``resource_name``, next to ``extra_resources`` (e.g. a prompt).

    ``sink=None`` publishes the resource only (for a server that loads checkpoints itself). ``dtype`` converts the
    weights before they are handed over (e.g. ``torch.bfloat16`` for a bf16 server).
    """

    def __init__(
        self,
        sink: WeightSink | None,
        llm: LLM,
        *,
        resource_name: str = "main_llm",
        resources_id: str = "grpo-policy",
        extra_resources: Mapping[str, Resource] | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.sink = sink
        self.llm = llm
        self.resource_name = resource_name
        self.resources_id = resources_id
        self.extra_resources = dict(extra_resources or {})
        self.dtype = dtype

    async def publish(
        self,
        policy: PolicyTrainer,
        *,
        version: int,
        store: LightningStore,
        sampling_parameters: dict[str, Any],
    ) -> str | None:
        if self.sink is not None:
            loaded = self.sink.load_weights(policy.state_dict_for_serving(self.dtype), version=version)
            if inspect.isawaitable(loaded):
                await loaded
        llm = msgspec.structs.replace(
            self.llm, sampling_parameters={**self.llm.sampling_parameters, **sampling_parameters}
        )
        update = await store.update_resources(self.resources_id, {**self.extra_resources, self.resource_name: llm})
        return update.resources_id


class _FunctionPublisher:
    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function

    async def publish(self, policy: PolicyTrainer, **kwargs: Any) -> str | None:
        result = self.function(policy, **kwargs)
        return await result if inspect.isawaitable(result) else result


def as_publisher(publisher: PolicyPublisher | Callable[..., Any] | None) -> PolicyPublisher | None:
    """``publisher`` as an object with ``publish``: a publisher as is, a function wrapped, ``None`` kept."""
    if publisher is None or hasattr(publisher, "publish"):
        return publisher
    if callable(publisher):
        return _FunctionPublisher(publisher)
    raise TypeError(
        f"publisher must have an async publish(policy, *, version, store, sampling_parameters) method or be such "
        f"a function, not {type(publisher).__name__}"
    )
