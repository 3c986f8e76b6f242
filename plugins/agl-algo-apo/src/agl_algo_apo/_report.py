"""What APO reports: a row per candidate and round, the spans and metrics a round records in the store, the table it
prints, and the final :class:`APOReport`. All pure: the search does the writing."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import msgspec
from rich.markup import escape
from rich.table import Table

from agl_algo_apo._beam import Candidate

__all__ = ["CANDIDATE_SPAN", "APOReport", "CandidateRecord"]

CANDIDATE_SPAN = "agl.apo.candidate"
"""One span per candidate and round in the run's training-metrics rollout (see ``agl_kernel.training_metrics``)."""


class CandidateRecord(msgspec.Struct, kw_only=True):
    """One row of a round's table: a candidate that was scored, kept or rejected in that round."""

    round: int
    candidate: str
    parent: str | None
    template: str | None
    score: float | None
    """Mean reward on the round's validation batch (``None`` if it was rejected before being run)."""
    status: str
    """``seed``, ``beam`` (kept), ``dropped``, or ``rejected``."""
    reason: str | None = None


class APOReport(msgspec.Struct, kw_only=True):
    best_prompts: dict[str, str]
    best_candidate: str
    best_score: float
    """Mean reward of the best candidate on the whole validation set."""
    seed_score: float
    resources_id: str
    version: int
    """The version of ``resources_id`` that holds the best prompts (the store's latest resources)."""
    rounds: list[list[CandidateRecord]]
    optimizer_calls: int
    rollouts: int
    output_path: str | None = None


def round_rows(
    round_no: int, pool: list[Candidate], beam: list[Candidate], tasks: list[int], rejected: list[CandidateRecord]
) -> list[CandidateRecord]:
    """The round's table: a row per scored candidate (its mean over ``tasks``, and whether it stays in the
    ``beam``), then the ``rejected`` rows; best first, the rejected last."""
    kept = {c.candidate_id for c in beam}
    rows = rejected + [
        CandidateRecord(
            round=round_no,
            candidate=c.candidate_id,
            parent=c.parent,
            template=c.edited,
            score=c.score(tasks),
            status="beam" if c.candidate_id in kept else "dropped",
        )
        for c in pool
    ]
    return sorted(rows, key=lambda r: (r.status == "rejected", -(r.score or 0.0), r.candidate))


def span_attributes(row: CandidateRecord, candidate: Candidate | None) -> dict[str, Any]:
    """The attributes of a row's :data:`CANDIDATE_SPAN`: its fields that are set, and for a candidate that was run
    the edited template's text (for the seed, which edited none, its template(s))."""
    attributes = {f"agl.apo.{key}": value for key, value in msgspec.structs.asdict(row).items() if value is not None}
    if candidate is not None:
        shown = [row.template] if row.template is not None else list(candidate.prompts)
        texts = [f"[{name}]\n{candidate.prompts[name].template}" for name in shown]
        attributes["agl.apo.prompt"] = candidate.prompts[shown[0]].template if len(shown) == 1 else "\n\n".join(texts)
    return attributes


def round_metrics(rows: Sequence[CandidateRecord], best_score: float, calls: int) -> dict[str, float]:
    """A round's training metrics; ``best_full_score`` is the best candidate's on the whole validation set."""
    scored = [r.score for r in rows if r.score is not None]
    return {
        "best_score": max(scored) if scored else 0.0,
        "mean_score": statistics.fmean(scored) if scored else 0.0,
        "best_full_score": best_score,
        "candidates": float(len(rows)),
        "rejected": float(sum(r.status == "rejected" for r in rows)),
        "optimizer_calls": float(calls),
    }


def round_table(title: str, rows: Sequence[CandidateRecord]) -> Table:
    """The round's rows as the console shows them."""
    table = Table(title=title, title_justify="left")
    for header in ("candidate", "parent", "template", "score", "status"):
        table.add_column(header, justify="right" if header == "score" else "left")
    styles = {"beam": "green", "seed": "green", "rejected": "yellow", "dropped": "dim"}
    for row in rows:
        status = escape(row.status if row.reason is None else f"{row.status}: {row.reason}")
        style, score = styles.get(row.status), "" if row.score is None else f"{row.score:.3f}"
        status = f"[{style}]{status}[/]" if style else status
        table.add_row(row.candidate, row.parent or "", row.template or "", score, status)
    return table
