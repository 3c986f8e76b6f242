"""From rollouts' triplets to training samples (the advantage rule) and to padded tensors.

**The advantage rule.** Advantages are computed within a *group*: the ``group_size`` rollouts of one task, by a
credit rule (:mod:`agl_kernel.credit`, GRPO's ``credit`` option). The default, ``auto``:

- *Outcome rewards only* (no triplet of the group has a ``step_reward``): each rollout's return is its final reward
  (``RolloutSample.final_reward``; when that is unknown, the reward of its last triplet); returns are normalised
  over the group's rollouts and **every triplet of a rollout gets its rollout's advantage** — all turns of a
  multi-turn rollout share the credit.
- *Per-step rewards* (some triplet of the group has a ``step_reward``, put there by the adapter): each triplet is
  scored by its own ``reward`` (the adapter's sum of its step reward and the final reward it applies to it;
  ``None`` counts as 0) and normalised over **all triplets of the group's rollouts**, so a turn that earned more
  than the group's turns on average is pushed up, whatever the rollout's outcome.

``discounted`` gives each turn its discounted return from that turn on instead; a third party's rule comes by
entry point (``agl.credit``). Rollouts without triplets take no part (the algorithm counts and reports them).

**Staleness** (asynchronous GRPO, ``max_staleness``): each sample may carry the policy ``version`` its LLM calls
used; at update time :func:`split_stale` keeps those at most ``max_staleness`` versions behind the policy and
drops the others (after the advantages are given: a stale rollout's reward still counts in its group's baseline).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch

from agl_kernel.credit import AutoCredit, CreditRule
from agl_kernel.models import Triplet

__all__ = [
    "Batch",
    "PackedBatch",
    "RolloutSample",
    "TrainingSample",
    "assign_advantages",
    "collate",
    "pack_prefixes",
    "split_stale",
]


@dataclass
class RolloutSample:
    """One finished rollout as GRPO sees it: its task group, its triplets and its final reward."""

    rollout_id: str
    group: Hashable
    triplets: list[Triplet]
    final_reward: float | None = None
    versions: list[int | None] | None = None
    """Per triplet, the policy version that sampled it (``None``: unknown, taken as current)."""


@dataclass
class TrainingSample:
    """A triplet with the advantage it is trained with."""

    triplet: Triplet
    advantage: float
    group: Hashable = None
    rollout_id: str | None = None
    version: int | None = None
    """The policy version that sampled the triplet; older than the policy being updated, the sample is *stale*
    and its loss is importance-weighted (:func:`agl_algo_grpo.importance_weights`). ``None``: current."""


def assign_advantages(
    rollouts: Sequence[RolloutSample], *, scale: bool = True, rule: CreditRule | None = None
) -> list[TrainingSample]:
    """Training samples for every triplet of ``rollouts``, the advantages given group by group by ``rule``
    (default: ``auto`` with ``scale``; see this module's docstring)."""
    rule = rule if rule is not None else AutoCredit(scale=scale)
    by_group: dict[Hashable, list[RolloutSample]] = {}
    for rollout in rollouts:
        if rollout.triplets:
            by_group.setdefault(rollout.group, []).append(rollout)
    samples: list[TrainingSample] = []
    for group, members in by_group.items():
        advantages = rule.advantages(members)
        if [len(a) for a in advantages] != [len(r.triplets) for r in members]:
            raise ValueError(
                f"the credit rule {type(rule).__name__} gave advantages shaped {[len(a) for a in advantages]} for "
                f"rollouts of {[len(r.triplets) for r in members]} triplets: one advantage per triplet is needed"
            )
        samples += [
            TrainingSample(t, a, group, r.rollout_id, version)
            for r, per_triplet in zip(members, advantages)
            for t, a, version in zip(r.triplets, per_triplet, r.versions or [None] * len(r.triplets))
        ]
    return samples


def split_stale(
    samples: Sequence[TrainingSample], version: int, max_staleness: int
) -> tuple[list[TrainingSample], list[TrainingSample]]:
    """``(kept, dropped)``: the samples at most ``max_staleness`` versions behind ``version`` (the policy about to
    be updated; a sample of unknown version counts as current), and those older."""
    kept: list[TrainingSample] = []
    dropped: list[TrainingSample] = []
    for sample in samples:
        stale = sample.version is not None and version - sample.version > max_staleness
        (dropped if stale else kept).append(sample)
    return kept, dropped


@dataclass
class Batch:
    """Right-padded sequences (prompt + response) and per-position tensors aligned with the *next* token:
    position ``j`` of ``targets``/``loss_mask``/``old_logps`` is about token ``j + 1`` of ``input_ids``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: torch.Tensor
    loss_mask: torch.Tensor
    """1.0 on response tokens the model generated (``Triplet.response_mask``), 0.0 on prompt, padding and the
    tool/user tokens inside a merged response."""
    old_logps: torch.Tensor
    """Logprobs at sampling time (0.0 where none were recorded: see ``has_old_logps``)."""
    advantages: torch.Tensor
    has_old_logps: torch.Tensor
    """Per sequence: whether its sampling-time logprobs were recorded."""
    token_count: int = 0
    """Non-padding tokens (prompt + response), for throughput."""
    truncated: int = 0
    """Sequences cut to ``max_length``."""
    rows: list[int] = field(default_factory=list)
    """Which training samples the rows are, in order."""
    ref_logps: torch.Tensor | None = None
    """The reference policy's logprobs (set by the trainer when a KL penalty is asked)."""
    recomputed: int = 0
    """Rows whose old logprobs the trainer recomputed."""
    is_weights: torch.Tensor | None = None
    """Asynchronous GRPO: per position, the truncated importance weight of a stale row's token (1.0 elsewhere);
    ``None`` when no row is stale (see :func:`agl_algo_grpo.importance_weights`)."""
    stale_mask: torch.Tensor | None = None
    """1.0 on the scored tokens of stale rows that have weights (with :attr:`is_weights`)."""
    truncated_tokens: int = 0
    """Stale tokens whose importance weight was truncated."""
    proximal_from_update: tuple[torch.Tensor, torch.Tensor] | None = None
    """``(recompute, stale)`` per row when the rows' proximal logprobs (and importance weights) are to be taken
    from the update's own forward pass (one optimizer step per update: its weights are the proximal policy's)."""

    @property
    def loss_tokens(self) -> int:
        return int(self.loss_mask.sum())

    @property
    def first_scored(self) -> int:
        """The first position any row scores: logits before it are not needed (long agent prompts)."""
        scored = self.loss_mask.any(dim=0).nonzero()
        return int(scored[0]) if len(scored) else 0

    def to(self, device: torch.device) -> Batch:
        for name in ("input_ids", "attention_mask", "targets", "loss_mask", "old_logps", "advantages"):
            setattr(self, name, getattr(self, name).to(device))
        return self


def collate(
    samples: Sequence[TrainingSample],
    *,
    pad_token_id: int = 0,
    max_length: int | None = None,
    rows: list[int] | None = None,
) -> Batch:
    """Pad ``samples`` into a :class:`Batch`. Sequences longer than ``max_length`` lose the end of their response.
    A response token with no prompt token before it cannot be scored and is left out of the loss."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    sequences, truncated = [], 0
    for sample in samples:
        t = sample.triplet
        ids = list(t.prompt_token_ids) + list(t.response_token_ids)
        if max_length is not None and len(ids) > max_length:
            ids, truncated = ids[:max_length], truncated + 1
        sequences.append(ids)
    length = max(len(s) for s in sequences)
    size = (len(samples), length)
    input_ids = torch.full(size, pad_token_id, dtype=torch.long)
    attention = torch.zeros(size, dtype=torch.long)
    loss_mask = torch.zeros((len(samples), max(length - 1, 0)), dtype=torch.float32)
    old_logps = torch.zeros_like(loss_mask)
    has_old = torch.zeros(len(samples), dtype=torch.bool)
    for row, (sample, ids) in enumerate(zip(samples, sequences)):
        t = sample.triplet
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[row, : len(ids)] = 1
        prompt = len(t.prompt_token_ids)
        kept = max(len(ids) - prompt, 0)  # response tokens left after truncation
        if kept == 0:
            continue
        mask = (
            torch.ones(kept) if t.response_mask is None else torch.tensor(t.response_mask[:kept], dtype=torch.float32)
        )
        logps = t.response_logprobs
        if logps is not None and len(logps) == len(t.response_token_ids):
            has_old[row] = True
        start = prompt - 1  # the position whose next token is the first response token
        if start < 0:  # no prompt: the first response token has no context to be scored from
            mask, start, skip = mask[1:], 0, 1
        else:
            skip = 0
        loss_mask[row, start : start + len(mask)] = mask
        if has_old[row] and logps is not None:
            old_logps[row, start : start + len(mask)] = torch.tensor(logps[skip:kept], dtype=torch.float32)
    return Batch(
        input_ids=input_ids,
        attention_mask=attention,
        targets=input_ids[:, 1:].clone(),
        loss_mask=loss_mask,
        old_logps=old_logps,
        advantages=torch.tensor([s.advantage for s in samples], dtype=torch.float32),
        has_old_logps=has_old,
        token_count=sum(len(s) for s in sequences),
        truncated=truncated,
        rows=list(rows) if rows is not None else list(range(len(samples))),
    )


@dataclass
class PackedBatch:
    """The sequences of a :class:`Batch` as prefix trees: a token that several sequences share at the same place
    (a group's prompt, the instructions every prompt starts with) is stored once. Each packed row is one tree; a
    token attends to itself and its ancestors, at its position in its own sequences."""

    input_ids: torch.Tensor
    """``[R, P]``, padded with the batch's pad id."""
    position_ids: torch.Tensor
    """``[R, P]``: each token's position in its sequences (0 on padding)."""
    attention_mask: torch.Tensor
    """``[R, 1, P, P]`` boolean: ``[r, 0, i, j]`` is whether token ``i`` sees token ``j`` (padding sees itself)."""
    index: torch.Tensor
    """``[B, L]``: where token ``j`` of the batch's row ``b`` is, as ``r * P + p``; -1 past the row's end."""

    def to(self, device: torch.device) -> PackedBatch:
        for name in ("input_ids", "position_ids", "attention_mask", "index"):
            setattr(self, name, getattr(self, name).to(device))
        return self


def pack_prefixes(batch: Batch, *, pad_token_id: int = 0, max_tokens: int = 8192) -> PackedBatch:
    """Pack ``batch``'s sequences into prefix trees of at most ``max_tokens`` tokens each (a longer sequence gets a
    tree of its own). Sequences are taken in order of their tokens, so those sharing prefixes share a tree."""
    ids = batch.input_ids.tolist()
    lengths = batch.attention_mask.sum(-1).tolist()
    trees: list[_Tree] = []
    tree_of, node_of = [0] * len(ids), [[-1] * len(ids[0]) for _ in ids]
    for b in sorted(range(len(ids)), key=lambda b: ids[b][: lengths[b]]):
        sequence = ids[b][: lengths[b]]
        if not trees or len(trees[-1].tokens) + trees[-1].new_nodes(sequence) > max_tokens:
            trees.append(_Tree())
        tree_of[b], node_of[b][: len(sequence)] = len(trees) - 1, trees[-1].add(sequence)
    width = max(len(tree.tokens) for tree in trees)
    input_ids = torch.full((len(trees), width), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((len(trees), width), dtype=torch.long)
    mask = torch.zeros((len(trees), 1, width, width), dtype=torch.bool)
    for r, tree in enumerate(trees):
        input_ids[r, : len(tree.tokens)] = torch.tensor(tree.tokens, dtype=torch.long)
        depth = position_ids[r, : len(tree.tokens)] = torch.tensor(tree.positions, dtype=torch.long)
        sees = mask[r, 0]
        sees.diagonal().fill_(True)  # every token sees itself (padding too: an all-masked row would give NaN)
        parent = torch.tensor(tree.parents, dtype=torch.long)
        by_level, start = torch.argsort(depth, stable=True), 0
        for count in torch.bincount(depth).tolist():  # a level at a time: a token sees what its parent sees
            children = by_level[start : start + count]
            if start:
                sees[children] |= sees[parent[children]]
            start += count
    nodes = torch.tensor(node_of, dtype=torch.long)
    index = torch.where(nodes >= 0, torch.tensor(tree_of, dtype=torch.long)[:, None] * width + nodes, nodes)
    return PackedBatch(input_ids=input_ids, position_ids=position_ids, attention_mask=mask, index=index)


class _Tree:
    """A prefix tree of token sequences: a node per distinct (parent, token), numbered in the order made (a parent
    before its children)."""

    def __init__(self) -> None:
        self.nodes: dict[tuple[int, int], int] = {}
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.positions: list[int] = []

    def new_nodes(self, sequence: list[int]) -> int:
        node = -1
        for shared, token in enumerate(sequence):
            node = self.nodes.get((node, token), -2)
            if node == -2:
                return len(sequence) - shared
        return 0

    def add(self, sequence: list[int]) -> list[int]:
        """The node of each token of ``sequence``, made where missing."""
        path: list[int] = []
        node = -1
        for position, token in enumerate(sequence):
            node = self.nodes.setdefault((node, token), len(self.tokens))
            if node == len(self.tokens):
                self.tokens.append(token)
                self.parents.append(path[-1] if path else -1)
                self.positions.append(position)
            path.append(node)
        return path
