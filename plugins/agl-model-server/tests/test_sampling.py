"""sample_batch draws each row's token from its own distribution: frequencies match the probabilities (after
temperature and top-k/top-p), tokens of probability 0 never come, and a seeded row repeats itself whatever else is
in the batch."""

from __future__ import annotations

import torch

from agl_model_server._sampling import SamplingParams, sample_batch


def _frequencies(logits: torch.Tensor, params: SamplingParams, draws: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    rows = logits.expand(draws, -1).contiguous()
    chosen = sample_batch(rows, [params] * draws, [None] * draws, generator).tokens
    return torch.bincount(chosen, minlength=logits.shape[-1]).double() / draws


def test_frequencies_follow_the_sampling_distribution() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, -30.0, 0.0]])
    for temperature in (1.0, 0.7):
        freq = _frequencies(logits, SamplingParams(temperature=temperature), 40_000)
        expected = torch.softmax(logits[0].double() / temperature, dim=-1)
        # 40k draws: a frequency's standard error is at most 0.0025; 4 of them is far outside chance.
        assert (freq - expected).abs().max() < 0.01, (freq, expected)


def test_truncated_tokens_are_never_drawn() -> None:
    logits = torch.tensor([[3.0, 2.9, 2.8, 2.7, 2.6, 2.5, 2.4, 2.3]])
    freq = _frequencies(logits, SamplingParams(temperature=1.0, top_k=3), 20_000)
    assert freq[3:].sum() == 0 and freq[:3].min() > 0.25
    kept = torch.softmax(logits[0, :3].double(), dim=-1)
    assert (freq[:3] - kept).abs().max() < 0.02
    # A row whose last token has no probability (the edge of the running sum) never picks it either.
    edge = torch.tensor([[0.0, 0.0, 0.0, -float("inf")]])
    freq = _frequencies(edge, SamplingParams(temperature=1.0), 20_000)
    assert freq[3] == 0 and (freq[:3] - 1 / 3).abs().max() < 0.02


def test_a_seeded_row_is_the_same_in_any_batch() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 1000)
    seeded = SamplingParams(temperature=1.0, seed=42)
    other = SamplingParams(temperature=1.0)

    def seeded_token(row: int, batch: list[SamplingParams]) -> int:
        generators = [torch.Generator().manual_seed(42) if p.seed is not None else None for p in batch]
        shared = torch.Generator().manual_seed(len(batch))
        return sample_batch(logits[: len(batch)], batch, generators, shared).token_ids[row]

    alone = seeded_token(0, [seeded])
    logits[2] = logits[0]
    assert seeded_token(2, [other, other, seeded, other, other]) == alone
