"""The audit trail of a run, out of the store: every ``agentos.decision`` and ``agentos.audit`` span of its
rollouts, one JSON object a line, for review outside agl (``agl agentos audit --run RUN -o FILE``)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from agl_kernel.runs import run_of
from agl_kernel.store import LightningStore
from agl_runner_agentos._governance import DECISION_SPAN
from agl_runner_agentos._runner import AUDIT_SPAN

__all__ = ["audit_records", "export_audit"]

_KINDS = {DECISION_SPAN: "decision", AUDIT_SPAN: "audit"}


def _record(span: Any) -> dict[str, Any]:
    prefix = "agentos.audit." if span.name == AUDIT_SPAN else "agentos."
    fields = {key[len(prefix) :]: value for key, value in span.attributes.items() if key.startswith(prefix)}
    return {
        "kind": _KINDS[span.name],
        "rollout_id": span.rollout_id,
        "attempt_id": span.attempt_id,
        "span_id": span.span_id,
        "sequence_id": span.sequence_id,
        "time": span.start_time,
        **fields,
    }


async def audit_records(
    store: LightningStore, *, run: str | None = None, rollout_ids: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """The decision and audit records of ``run``'s rollouts (or of ``rollout_ids``; every rollout when neither is
    given), in rollout, attempt and sequence order."""
    rollouts = (await store.query_rollouts(rollout_id_in=list(rollout_ids) if rollout_ids else None)).items
    if run is not None:
        rollouts = [r for r in rollouts if run_of(r) == run]
    records: list[dict[str, Any]] = []
    for rollout in rollouts:
        spans = (await store.query_spans(rollout.rollout_id)).items
        records.extend(_record(span) for span in spans if span.name in _KINDS)
    return records


async def export_audit(
    store: LightningStore,
    path: str | os.PathLike[str],
    *,
    run: str | None = None,
    rollout_ids: Sequence[str] | None = None,
) -> int:
    """Write :func:`audit_records` to ``path`` as JSONL; returns how many records were written."""
    records = await audit_records(store, run=run, rollout_ids=rollout_ids)
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, sort_keys=True, default=str) + "\n")
    return len(records)
