"""What the dashboard shows, read from the store: pages of rollouts with their reward and latest attempt, one
rollout's trace, resources versions, workers and training runs. Pure functions of a store (no HTTP here)."""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Sequence
from typing import Any

from agl_kernel import semconv
from agl_kernel.errors import InvalidQueryError
from agl_kernel.genai import json_or_text
from agl_kernel.models import Attempt, Rollout, RolloutMode, RolloutStatus, Span, encode_json
from agl_kernel.rewards import final_reward, read_rewards
from agl_kernel.store.base import SORT_FIELDS, LightningStore

__all__ = [
    "MAX_OFFSET",
    "MAX_PAGE",
    "MAX_TRACE_SPANS",
    "TrainingRuns",
    "llm_call",
    "parse_modes",
    "parse_statuses",
    "rollout_detail",
    "rollouts_page",
    "training_runs",
]

MAX_PAGE = 500
"""The largest page of rollouts one request may ask for."""
MAX_OFFSET = 2**63 - 1
"""The largest offset (a store keeps its numbers in 64 bits)."""
MAX_TRACE_SPANS = 5000
"""A trace with more spans than this is cut (the answer says so)."""

METRICS_KIND = "training-metrics"
TRAINING_STEP_SPAN = "agl.training.step"
VALIDATION_SPAN = "agl.training.validation"
STEP_ATTRIBUTE = "agl.training.step"
METRIC_PREFIX = "agl.training.metric."
APO_CANDIDATE_SPAN = "agl.apo.candidate"
_APO_FIELDS = {
    "agl.apo.round": "round",
    "agl.apo.candidate": "candidate",
    "agl.apo.parent": "parent",
    "agl.apo.template": "template",
    "agl.apo.score": "score",
    "agl.apo.status": "status",
    "agl.apo.reason": "reason",
    "agl.apo.prompt": "prompt",
}
"""What ``agl_algo_apo`` records per candidate: ``template`` is the name of the template it edited, ``prompt`` that
template's new text, ``status`` seed/beam/dropped/rejected, ``reason`` why it was rejected."""


def _choices(values: Sequence[str], allowed: type, what: str) -> list[Any]:
    chosen = []
    for value in values:
        try:
            chosen.append(allowed(value))
        except ValueError:
            names = ", ".join(member.value for member in allowed)  # type: ignore[attr-defined]
            raise InvalidQueryError(f"unknown {what} {value!r}; use one of: {names}") from None
    return chosen


def parse_statuses(values: Sequence[str]) -> list[RolloutStatus] | None:
    return _choices(values, RolloutStatus, "rollout status") or None


def parse_modes(values: Sequence[str]) -> list[RolloutMode] | None:
    return _choices(values, RolloutMode, "mode") or None


def _matches(rollout: Rollout, needle: str) -> bool:
    if needle in rollout.rollout_id.lower():
        return True
    text = encode_json({"input": rollout.input, "metadata": rollout.metadata}).decode("utf-8", "replace")
    return needle in text.lower()


async def _row(store: LightningStore, rollout: Rollout) -> dict[str, Any]:
    attempt: Attempt | None = None
    reward = None
    if rollout.attempt_count:
        attempt, rewards = await asyncio.gather(
            store.get_attempt(rollout.rollout_id),
            store.query_spans(rollout.rollout_id, "latest", name=semconv.REWARD_SPAN),
        )
        found = final_reward(rewards.items)
        reward = None if found is None else found.value
    return {"rollout": rollout, "latest_attempt": attempt, "reward": reward}


async def rollouts_page(
    store: LightningStore,
    *,
    statuses: list[RolloutStatus] | None = None,
    modes: list[RolloutMode] | None = None,
    search: str = "",
    sort_by: str = "start_time",
    sort_order: str = "desc",
    limit: int = 50,
    offset: int = 0,
) -> dict[str, Any]:
    """One page of rollouts, newest first by default, each with its final reward and latest attempt.

    Status and mode filters, sorting and paging run in the store. ``search`` (a case-insensitive substring of the
    rollout id, input or metadata) has no store query, so it scans the rollouts that pass the other filters.
    """
    if sort_by not in SORT_FIELDS["rollouts"]:
        raise InvalidQueryError(
            f"cannot sort rollouts by {sort_by!r}; sortable fields: {', '.join(sorted(SORT_FIELDS['rollouts']))}"
        )
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidQueryError(f"limit must be between 1 and {MAX_PAGE}, not {limit}")
    if not 0 <= offset <= MAX_OFFSET:
        raise InvalidQueryError(f"offset must be 0 or more (and below 2**63), not {offset}")
    query = {"status_in": statuses, "mode_in": modes, "sort_by": sort_by, "sort_order": sort_order}
    needle = search.strip().lower()
    if needle:
        everything = await store.query_rollouts(**query)  # type: ignore[arg-type]
        matching = [rollout for rollout in everything.items if _matches(rollout, needle)]
        items, total = matching[offset : offset + limit], len(matching)
    else:
        page = await store.query_rollouts(**query, limit=limit, offset=offset)  # type: ignore[arg-type]
        items, total = page.items, page.total
    rows, statistics = await asyncio.gather(
        asyncio.gather(*(_row(store, rollout) for rollout in items)), store.statistics()
    )
    return {
        "items": list(rows),
        "total": total,
        "limit": limit,
        "offset": offset,
        "counts": statistics.rollouts_by_status,
        "all_rollouts": statistics.total_rollouts,
        "now": time.time(),
    }


def llm_call(span: Span) -> dict[str, Any] | None:
    """The LLM call a span records (prompt, completion, token counts), or ``None`` for any other span."""
    attributes = span.attributes
    if attributes.get(semconv.GEN_AI_OPERATION_NAME) not in semconv.LLM_OPERATIONS:
        return None
    prompt_ids = attributes.get("agl.llm.prompt_token_ids")
    response_ids = attributes.get("agl.llm.response_token_ids")
    return {
        "span_id": span.span_id,
        "name": span.name,
        "model": attributes.get(semconv.GEN_AI_RESPONSE_MODEL, attributes.get(semconv.GEN_AI_REQUEST_MODEL)),
        "input_messages": json_or_text(attributes.get(semconv.GEN_AI_INPUT_MESSAGES)),
        "output_messages": json_or_text(attributes.get("gen_ai.output.messages")),
        "response_text": attributes.get("agl.llm.response_text"),
        "input_tokens": attributes.get(semconv.GEN_AI_USAGE_INPUT_TOKENS),
        "output_tokens": attributes.get(semconv.GEN_AI_USAGE_OUTPUT_TOKENS),
        "prompt_token_ids": len(prompt_ids) if isinstance(prompt_ids, list) else None,
        "response_token_ids": len(response_ids) if isinstance(response_ids, list) else None,
        "latency_seconds": attributes.get("agl.llm.latency_seconds"),
        "start_time": span.start_time,
    }


async def rollout_detail(store: LightningStore, rollout_id: str, attempt_id: str = "latest") -> dict[str, Any]:
    """A rollout, its attempts and the trace of one attempt (default: the newest): spans, LLM calls, rewards."""
    rollout = await store.get_rollout(rollout_id)
    attempts = (await store.query_attempts(rollout_id)).items
    spans: list[Span] = []
    chosen = None
    if attempts:
        chosen = attempts[-1] if attempt_id == "latest" else await store.get_attempt(rollout_id, attempt_id)
        page = await store.query_spans(rollout_id, chosen.attempt_id, limit=MAX_TRACE_SPANS + 1)
        spans = page.items
    truncated = len(spans) > MAX_TRACE_SPANS
    spans = spans[:MAX_TRACE_SPANS]
    rewards = read_rewards(spans)
    final = final_reward(spans)
    return {
        "rollout": rollout,
        "attempts": attempts,
        "attempt_id": None if chosen is None else chosen.attempt_id,
        "spans": spans,
        "truncated": truncated,
        "llm_calls": [call for call in map(llm_call, spans) if call is not None],
        "rewards": rewards,
        "final_reward": None if final is None else final.value,
        "now": time.time(),
    }


class TrainingRuns:
    """Finds the training-metrics rollouts of a store without reading every rollout on every request: the rollouts
    are scanned once, then only those created since (a full scan again when rollouts were deleted)."""

    def __init__(self) -> None:
        self.seen = 0
        self.run_ids: list[str] = []
        self.lock = asyncio.Lock()

    async def refresh(self, store: LightningStore) -> list[str]:
        async with self.lock:
            total = (await store.query_rollouts(limit=0)).total
            if total < self.seen:
                self.seen, self.run_ids = 0, []
            if total > self.seen:
                new = await store.query_rollouts(offset=self.seen)
                for rollout in new.items:
                    if isinstance(rollout.metadata, dict) and rollout.metadata.get("kind") == METRICS_KIND:
                        self.run_ids.append(rollout.rollout_id)
                self.seen += len(new.items)
            return list(self.run_ids)


_RUNS: weakref.WeakKeyDictionary[LightningStore, TrainingRuns] = weakref.WeakKeyDictionary()


def _metrics(span: Span) -> dict[str, float]:
    return {
        key[len(METRIC_PREFIX) :]: float(value)
        for key, value in span.attributes.items()
        if key.startswith(METRIC_PREFIX) and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def _point(span: Span) -> dict[str, Any]:
    step = span.attributes.get(STEP_ATTRIBUTE)
    return {
        "step": step if isinstance(step, (int, float)) else span.sequence_id,
        "start_time": span.start_time,
        "end_time": span.end_time,
        "metrics": _metrics(span),
    }


def _candidate(span: Span) -> dict[str, Any]:
    found = {name: span.attributes.get(key) for key, name in _APO_FIELDS.items()}
    found["time"] = span.end_time
    return found


async def training_runs(store: LightningStore) -> dict[str, Any]:
    """Every training run in the store: its steps, validations and (APO) evaluated candidates, oldest run first."""
    index = _RUNS.setdefault(store, TrainingRuns())
    runs = []
    for rollout_id in await index.refresh(store):
        try:
            rollout = await store.get_rollout(rollout_id)
            spans = (await store.query_spans(rollout_id)).items
        except LookupError:  # deleted since it was indexed
            continue
        metadata = rollout.metadata
        runs.append(
            {
                "rollout_id": rollout_id,
                "algorithm": metadata.get("algorithm", "unknown"),
                "status": rollout.status,
                "start_time": rollout.start_time,
                "end_time": rollout.end_time,
                "config": metadata.get("config"),
                "steps": [_point(span) for span in spans if span.name == TRAINING_STEP_SPAN],
                "validations": [_point(span) for span in spans if span.name == VALIDATION_SPAN],
                "candidates": [_candidate(span) for span in spans if span.name == APO_CANDIDATE_SPAN],
            }
        )
    return {"runs": runs, "now": time.time()}
