"""APO's options."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal, Optional, Union

import msgspec

__all__ = ["APOConfig", "make_config"]


class APOConfig(msgspec.Struct, kw_only=True):
    """Every option of :class:`~agl_algo_apo.APO` (pass them as keyword arguments, or as ``config=``).

    Search: ``rounds`` rounds; each takes every candidate of the beam (at most ``beam_width``) as a parent, runs
    it on ``train_batch_size`` training tasks, and asks the optimizer for ``branch_factor`` children of it (a
    critique from the ``examples`` worst and best trajectories, then an edit of one template). Parents and children
    are scored on ``val_batch_size`` validation tasks (``None``: all of them); the best ``beam_width`` stay.
    """

    rounds: int = 3
    beam_width: int = 4
    branch_factor: int = 4
    train_batch_size: int = 4
    val_batch_size: Optional[int] = None
    examples: int = 2
    """How many of the worst (and of the best) trajectories the critique sees."""
    templates: Optional[list[str]] = None
    """Names of the prompt templates (in the resources) to optimize; ``None``: every PromptTemplate there."""
    template_selection: Literal["round-robin", "blame"] = "round-robin"
    """Which template a child edits: one per round in turn, or the one the critique blames."""
    pareto: bool = True
    """Keep the candidates that are best on some validation task even if their mean is not among the top."""
    seed: int = 0

    # The optimizer LLM: any OpenAI-compatible endpoint (default: the OPENAI_BASE_URL / OPENAI_API_KEY variables).
    optimizer_base_url: Optional[str] = None
    optimizer_api_key: Optional[str] = None
    critique_model: str = "gpt-4.1-mini"
    edit_model: Optional[str] = None
    """``None``: the critique model."""
    critique_temperature: float = 0.7
    edit_temperature: float = 0.7
    optimizer_max_tokens: int = 2048
    optimizer_timeout: float = 120.0
    optimizer_concurrency: int = 8
    """Optimizer calls in flight at once."""
    critique_template: Optional[str] = None
    """A file with the critique prompt (``None``: the packaged ``prompts/critique.md``)."""
    edit_template: Optional[str] = None
    """A file with the edit prompt (``None``: the packaged ``prompts/edit.md``)."""

    # Results.
    output_path: Optional[str] = ".agl/apo/best_prompts.json"
    """Where the best prompts are written after every improvement (``None``: nowhere)."""
    resources_id: Optional[str] = None
    """The resources id the best prompts are published under (``None``: the seed's)."""
    rollout_timeout: Optional[float] = None
    """Seconds to wait for one batch of rollouts; those still running are cancelled and score 0."""
    console: bool = True

    def __post_init__(self) -> None:
        for name in ("rounds", "beam_width", "branch_factor", "train_batch_size", "examples", "optimizer_concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"APO option {name} must be at least 1, not {getattr(self, name)}")
        if self.val_batch_size is not None and self.val_batch_size < 1:
            raise ValueError(f"APO option val_batch_size must be at least 1 (or None: all), not {self.val_batch_size}")
        if self.templates is not None and not self.templates:
            raise ValueError("APO option templates must name at least one template (or be None: all)")
        if self.optimizer_base_url is None:
            self.optimizer_base_url = os.environ.get("OPENAI_BASE_URL")
        if self.optimizer_api_key is None:
            self.optimizer_api_key = os.environ.get("OPENAI_API_KEY")


def make_config(config: Union[APOConfig, Mapping[str, Any], None] = None, **overrides: Any) -> APOConfig:
    """An :class:`APOConfig` from a config, a mapping or nothing, with ``overrides`` on top; strings are converted
    (as the command line gives them); unknown names raise an error that lists the known ones."""
    base: dict[str, Any] = msgspec.structs.asdict(config) if isinstance(config, APOConfig) else dict(config or {})
    base.update(overrides)
    known = set(APOConfig.__struct_fields__)
    unknown = sorted(set(base) - known)
    if unknown:
        raise TypeError(f"unknown APO option(s) {unknown}; the options are: {', '.join(sorted(known))}")
    try:
        return msgspec.convert(base, APOConfig, strict=False)
    except msgspec.ValidationError as err:
        raise ValueError(f"invalid APO option: {err}") from None
