"""Candidates (a full set of prompt templates) and how the beam keeps the best of them."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from agl_kernel.models import PromptTemplate

__all__ = ["Candidate", "pareto_front", "select_beam"]


@dataclass
class Candidate:
    """One set of prompt templates: the seed, or a parent's with one template edited."""

    candidate_id: str
    prompts: dict[str, PromptTemplate]
    round: int
    parent: str | None = None
    edited: str | None = None
    """The template this candidate changed from its parent (``None`` for the seed)."""
    resources_id: str | None = None
    """The resources set in the store that its rollouts pin."""
    scores: dict[int, float] = field(default_factory=dict)
    """Reward per validation task (by its index in the validation set)."""

    def score(self, tasks: Sequence[int]) -> float:
        """Mean reward over ``tasks`` (each must have been evaluated)."""
        return statistics.fmean(self.scores[t] for t in tasks) if tasks else 0.0

    def missing(self, tasks: Sequence[int]) -> list[int]:
        return [t for t in tasks if t not in self.scores]


def _dominates(a: Candidate, b: Candidate, tasks: Sequence[int]) -> bool:
    return all(a.scores[t] >= b.scores[t] for t in tasks) and any(a.scores[t] > b.scores[t] for t in tasks)


def pareto_front(candidates: Sequence[Candidate], tasks: Sequence[int]) -> list[Candidate]:
    """Candidates that are best on at least one task where the candidates differ, and that no other candidate
    dominates (at least as good everywhere, better somewhere); of identical score vectors, the first."""
    informative = [t for t in tasks if len({c.scores[t] for c in candidates}) > 1]
    front: list[Candidate] = []
    seen: set[tuple[float, ...]] = set()
    for candidate in candidates:
        vector = tuple(candidate.scores[t] for t in informative)
        if vector in seen:
            continue
        wins = any(candidate.scores[t] == max(c.scores[t] for c in candidates) for t in informative)
        if wins and not any(_dominates(other, candidate, informative) for other in candidates):
            front.append(candidate)
            seen.add(vector)
    return front


def select_beam(candidates: Sequence[Candidate], tasks: Sequence[int], width: int, *, pareto: bool) -> list[Candidate]:
    """The ``width`` candidates to keep, best first. By mean score over ``tasks``; with ``pareto``, the Pareto
    front across tasks is kept first (a candidate that is best on some task stays even when its mean is not among
    the top ones, as in GEPA), then the rest by mean. Ties go to the older candidate (kept over its children)."""
    order = {c.candidate_id: i for i, c in enumerate(candidates)}
    by_mean = sorted(candidates, key=lambda c: (-c.score(tasks), order[c.candidate_id]))
    if not pareto:
        return by_mean[:width]
    front = pareto_front(candidates, tasks)
    kept = sorted(front, key=lambda c: (-c.score(tasks), order[c.candidate_id]))[:width]
    kept_ids = {c.candidate_id for c in kept}
    kept += [c for c in by_mean if c.candidate_id not in kept_ids][: width - len(kept)]
    return sorted(kept, key=lambda c: (-c.score(tasks), order[c.candidate_id]))
