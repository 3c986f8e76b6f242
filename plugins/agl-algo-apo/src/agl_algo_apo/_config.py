"""APO's options, in one frozen attrs class: :class:`APOConfig` is also ``APO.Options``, so the same fields (with
their types, defaults, validators and the docstring under each) are what ``APO(...)`` takes as keywords, what
``Trainer(algorithm="apo", options={"algorithm": {...}})``, a run file's ``[algorithm]`` table and
``--set algorithm.KEY=VALUE`` set, and what ``agl plugins show apo`` prints. :func:`make_config` builds one from
options that may be strings (with the kernel's :func:`agl_kernel.config.options_with`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

import attrs
from attrs import validators as v

from agl_kernel.config import options_with

__all__ = ["APOConfig", "make_config", "optimizer_endpoint"]


def _names(_instance: Any, attribute: attrs.Attribute, value: list[str] | None) -> None:
    if value is not None and not value:  # worded as attrs' validators are: the kernel puts the name in the path
        raise ValueError(f"'{attribute.name}' must name at least one template (or be none: every PromptTemplate)")


@attrs.frozen(kw_only=True)
class APOConfig:
    """Every option of :class:`~agl_algo_apo.APO` (pass them as keyword arguments, or as ``config=``).

    Search: ``rounds`` rounds; each takes every candidate of the beam (at most ``beam_width``) as a parent, runs
    it on ``train_batch_size`` training tasks, and asks the optimizer for ``branch_factor`` children of it (a
    critique from the ``examples`` worst and best trajectories, then an edit of one template). Parents and children
    are scored on ``val_batch_size`` validation tasks (``None``: all of them); the best ``beam_width`` stay.
    """

    rounds: int = attrs.field(default=3, validator=v.ge(1))
    """Rounds of the search: each makes children of every candidate in the beam and keeps the best."""
    beam_width: int = attrs.field(default=4, validator=v.ge(1))
    """Candidates kept after each round (each is a parent in the next)."""
    branch_factor: int = attrs.field(default=4, validator=v.ge(1))
    """Children the optimizer writes per parent and round."""
    train_batch_size: int = attrs.field(default=4, validator=v.ge(1))
    """Training tasks each parent runs on, whose trajectories the critique reads."""
    val_batch_size: int | None = attrs.field(default=None, validator=v.optional(v.ge(1)))
    """Validation tasks each candidate is scored on per round; ``None``: all of them."""
    examples: int = attrs.field(default=2, validator=v.ge(1))
    """How many of the worst (and of the best) trajectories the critique sees."""
    templates: list[str] | None = attrs.field(default=None, validator=_names)
    """Names of the prompt templates (in the resources) to optimize; ``None``: every PromptTemplate there."""
    template_selection: Literal["round-robin", "blame"] = "round-robin"
    """Which template a child edits: one per round in turn, or the one the critique blames."""
    pareto: bool = True
    """Keep the candidates that are best on some validation task even if their mean is not among the top."""
    seed: int = 0
    """Seeds the order training tasks are walked in and the validation batches."""

    # The optimizer LLM: any OpenAI-compatible endpoint (default: the OPENAI_BASE_URL / OPENAI_API_KEY variables).
    optimizer_base_url: str | None = None
    """The optimizer's OpenAI-compatible endpoint; ``None``: the ``OPENAI_BASE_URL`` variable (else OpenAI's)."""
    optimizer_api_key: str | None = attrs.field(default=None, repr=False)
    """The optimizer's API key; ``None``: the ``OPENAI_API_KEY`` variable. Never recorded in the store."""
    critique_model: str = "gpt-4.1-mini"
    """The model that writes the critiques (the textual gradients)."""
    edit_model: str | None = None
    """The model that edits the templates; ``None``: the critique model."""
    critique_temperature: float = attrs.field(default=0.7, validator=v.ge(0))
    """Sampling temperature of the critique calls."""
    edit_temperature: float = attrs.field(default=0.7, validator=v.ge(0))
    """Sampling temperature of the edit calls."""
    optimizer_max_tokens: int = attrs.field(default=2048, validator=v.ge(1))
    """Completion tokens per optimizer call."""
    optimizer_timeout: float = attrs.field(default=120.0, validator=v.gt(0))
    """Seconds one optimizer call may take."""
    optimizer_concurrency: int = attrs.field(default=8, validator=v.ge(1))
    """Optimizer calls in flight at once."""
    critique_template: str | None = None
    """A file with the critique prompt (``None``: the packaged ``prompts/critique.md``)."""
    edit_template: str | None = None
    """A file with the edit prompt (``None``: the packaged ``prompts/edit.md``)."""

    # Results.
    output_path: str | None = ".agl/apo/best_prompts.json"
    """Where the best prompts are written after every improvement (``None``: nowhere)."""
    resources_id: str | None = None
    """The resources id the best prompts are published under (``None``: the seed's)."""
    rollout_timeout: float | None = attrs.field(default=None, validator=v.optional(v.gt(0)))
    """Seconds to wait for one batch of rollouts; those still running are cancelled and score 0."""
    console: bool = True
    """Print each round's candidates as a table."""


def optimizer_endpoint(config: APOConfig) -> tuple[str | None, str | None]:
    """``(base_url, api_key)`` of the optimizer: the options, else the ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``
    variables (read when called; they stay out of the options, so that ``agl config`` and the store never show the
    key)."""
    base_url = config.optimizer_base_url
    api_key = config.optimizer_api_key
    return (
        os.environ.get("OPENAI_BASE_URL") if base_url is None else base_url,
        os.environ.get("OPENAI_API_KEY") if api_key is None else api_key,
    )


def make_config(config: APOConfig | Mapping[str, Any] | None = None, **overrides: Any) -> APOConfig:
    """An :class:`APOConfig` from a config, a mapping or nothing, with ``overrides`` on top; strings are converted
    (as the command line gives them). A wrong key or value raises :class:`~agl_kernel.errors.ConfigError` (a
    ``ValueError``): one line that names ``algorithm.KEY`` and, for an unknown key, the valid ones."""
    return options_with(APOConfig, config, overrides, path="algorithm")
