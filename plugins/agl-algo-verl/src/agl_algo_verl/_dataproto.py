"""Rows of agl triplets → verl's ``DataProto`` (needs torch and verl).

The layout is the one verl's rollouts produce, so everything after generation in verl (log-probs, reference,
``compute_advantage``, the actor update) takes it as it takes its own:

- ``prompts`` ``[B, P]``: prompt tokens, left-padded; ``responses`` ``[B, R]``: response tokens, right-padded;
- ``input_ids`` = prompts ‖ responses; ``attention_mask`` 1 on real tokens; ``position_ids`` counts real tokens;
- ``response_mask`` ``[B, R]``: 1 on response tokens the model generated (0 on padding and on the tool/user
  tokens of a merged multi-turn response);
- ``rm_scores`` ``[B, R]``: the row's reward on its last generated token, 0 elsewhere (token-level rewards: verl
  sums them per row, so an outcome reward is exactly the row's reward);
- ``rollout_log_probs`` ``[B, R]``: sampling-time logprobs, when every row has them;
- non-tensor ``uid`` (the group GRPO normalises over) and ``rollout_id``.

A row whose prompt is longer than ``max_prompt_length`` is left out (its response was sampled from the whole
prompt, so a cut prompt would train on a different sample); a response longer than ``max_response_length`` is cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agl_algo_verl._rollouts import Row

__all__ = ["Packed", "to_dataproto"]


@dataclass
class Packed:
    data: Any
    """The ``DataProto`` (``None`` when no row was kept)."""
    kept: int
    dropped_long_prompt: int
    truncated_response: int


def to_dataproto(
    rows: Sequence[Row],
    *,
    pad_token_id: int,
    max_prompt_length: int | None = None,
    max_response_length: int | None = None,
) -> Packed:
    """verl's ``DataProto`` for ``rows`` (see the module's docstring); widths are the longest kept prompt and
    response, at most the limits."""
    import numpy as np
    import torch
    from verl import DataProto

    kept, dropped, truncated = [], 0, 0
    for row in rows:
        if max_prompt_length is not None and len(row.prompt_token_ids) > max_prompt_length:
            dropped += 1
            continue
        if not row.response_token_ids or not row.prompt_token_ids:
            dropped += 1
            continue
        if max_response_length is not None and len(row.response_token_ids) > max_response_length:
            truncated += 1
        kept.append(row)
    if not kept:
        return Packed(None, 0, dropped, truncated)

    limit = max_response_length or max(len(r.response_token_ids) for r in kept)
    width_p = max(len(r.prompt_token_ids) for r in kept)
    width_r = min(limit, max(len(r.response_token_ids) for r in kept))
    size = len(kept)
    prompts = torch.full((size, width_p), pad_token_id, dtype=torch.long)
    responses = torch.full((size, width_r), pad_token_id, dtype=torch.long)
    prompt_attention = torch.zeros((size, width_p), dtype=torch.long)
    response_attention = torch.zeros((size, width_r), dtype=torch.long)
    response_mask = torch.zeros((size, width_r), dtype=torch.long)
    scores = torch.zeros((size, width_r), dtype=torch.float32)
    logprobs = torch.zeros((size, width_r), dtype=torch.float32)
    all_logprobs = all(r.logprobs is not None for r in kept)
    for i, row in enumerate(kept):
        p = row.prompt_token_ids
        prompts[i, width_p - len(p) :] = torch.tensor(p, dtype=torch.long)
        prompt_attention[i, width_p - len(p) :] = 1
        r = row.response_token_ids[:width_r]
        responses[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        response_attention[i, : len(r)] = 1
        mask = torch.tensor(row.response_mask[: len(r)], dtype=torch.long)
        response_mask[i, : len(r)] = mask
        generated = mask.nonzero()
        last = int(generated[-1]) if len(generated) else len(r) - 1
        scores[i, last] = row.reward
        if all_logprobs and row.logprobs is not None:
            logprobs[i, : len(r)] = torch.tensor(row.logprobs[: len(r)], dtype=torch.float32)
    attention = torch.cat([prompt_attention, response_attention], dim=1)
    tensors = {
        "prompts": prompts,
        "responses": responses,
        "input_ids": torch.cat([prompts, responses], dim=1),
        "attention_mask": attention,
        "position_ids": torch.clamp(torch.cumsum(attention, dim=1) - 1, min=0),
        "response_mask": response_mask,
        "rm_scores": scores,
    }
    if all_logprobs:
        tensors["rollout_log_probs"] = logprobs
    non_tensors = {
        "uid": np.array([r.uid for r in kept], dtype=object),
        "rollout_id": np.array([r.rollout_id or "" for r in kept], dtype=object),
    }
    data = DataProto.from_dict(tensors=tensors, non_tensors=non_tensors, meta_info={})
    return Packed(data, size, dropped, truncated)
