"""The static decode path (fixed KV cache slots; CUDA graphs on a GPU) against transformers' own forward pass.

The API tests run on both paths through the parametrized server fixtures; these check the decoder itself: prefill
and decode against a full forward pass, rows joining and leaving at different lengths, identical prompts prefilled
once, prompts with common first tokens running them once, a later prompt copying what it shares with a kept one,
the cache growing, models it refuses, and, where CUDA is available, graph replay (with weights loaded in place
between steps).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from agl_model_server._static import StaticBatch, StaticDecoder, supported
from agl_model_server.testing import make_tiny_model

# float32 logits of the static step vs a full forward pass: ~1e-6 apart at first, drifting to ~2e-4 by position 100
# on the CPU (this tiny model's large random weights make large logits; the attention sums run in another order);
# GPU kernels differ more. A wrong slot, position or mask is off by whole units.
TOL = {"cpu": 1e-3, "cuda": 1e-2}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _reference(model: Any, sequence: list[int]) -> torch.Tensor:
    device = next(model.parameters()).device
    return model(input_ids=torch.tensor([sequence], device=device)).logits[0, -1].float()


def _admit(model: Any, batch: StaticBatch, prompts: list[list[int]], sources: list[int]) -> list[list[int]]:
    """Prefill rows, check their first logits, feed their greedy tokens; returns the rows' sequences."""
    logits = batch.admit(prompts, sources)
    seqs = []
    for row, source in enumerate(sources):
        diff = (logits[row].float() - _reference(model, prompts[source])).abs().max().item()
        assert diff < TOL[logits.device.type], f"prefill of row {row}: logits {diff:.2e} apart"
        seqs.append(prompts[source] + [int(logits[row].argmax())])
    batch.set_next(logits.argmax(-1), start=len(batch._slots) - len(sources))
    return seqs


def _check_rows(model: Any, batch: StaticBatch, seqs: list[list[int]], steps: int) -> None:
    for _ in range(steps):
        logits = batch.step()
        assert logits.shape[0] == len(seqs)
        for row, seq in enumerate(seqs):
            diff = (logits[row].float() - _reference(model, seq)).abs().max().item()
            assert diff < TOL[logits.device.type], f"row {row} at length {len(seq)}: logits {diff:.2e} apart"
        tokens = logits.argmax(-1)
        batch.set_next(tokens)
        for seq, token in zip(seqs, tokens.tolist()):
            seq.append(token)


@pytest.mark.parametrize("device", DEVICES)
def test_rows_join_and_leave_and_match_a_forward_pass(device: str) -> None:
    torch.manual_seed(0)
    model = make_tiny_model(300).to(device)
    decoder = StaticDecoder(model, max_slots=16, max_len=512)
    assert decoder.use_graphs == (device == "cuda")
    batch = StaticBatch(decoder)
    with torch.inference_mode():
        # Three prompts of different lengths, the second twice (one prefill row, two slots).
        prompts = [[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16, 17, 18, 19]]
        seqs = _admit(model, batch, prompts, [0, 1, 1, 2])
        _check_rows(model, batch, seqs, 3)
        # Rows 0 and 2 finish; two longer prompts join into the freed slots.
        batch.keep([1, 3])
        seqs = [seqs[1], seqs[3]]
        seqs += _admit(model, batch, [list(range(20, 60)), [7, 7, 7]], [0, 1])
        assert sorted(batch._slots) == [0, 1, 2, 3]
        _check_rows(model, batch, seqs, 3)
        # Prompts with 10 tokens in common (one of them nothing else): those run once, then each prompt's own.
        prefilled: list[tuple[int, list[int]]] = []
        prefill = decoder.prefill
        decoder.prefill = lambda slots, prompts, start=0, **kw: (
            prefilled.append((start, prompts)) or prefill(slots, prompts, start, **kw)
        )
        common = list(range(100, 110))
        seqs += _admit(model, batch, [common + [1, 2, 3], common + [4], common], [0, 1, 2, 1, 1, 1])
        assert sorted(batch._slots) == list(range(10))  # past the first slots bucket (8): the cache grew
        assert prefilled == [(0, [common[:9]]), (9, [common[9:] + [1, 2, 3], common[9:] + [4], common[9:]])]
        del decoder.prefill
        _check_rows(model, batch, seqs, 3)
        # Past the first columns bucket (64 on the CPU, 256 with graphs): the cache grows, contents kept.
        allocated = decoder._len
        _check_rows(model, batch, seqs, allocated - max(len(s) for s in seqs) + 2)
        assert decoder._len > allocated
    if device == "cuda":
        assert decoder.captures >= 2


def test_a_later_prompt_copies_the_start_it_shares_with_a_kept_one() -> None:
    """Rows admitted one by one (as others retire, e.g. asynchronous GRPO's) copy the keys and values of the tokens
    they share with a prompt a slot still holds, even after that row retired; not after the weights changed, and
    not from a prompt run under another adapter."""
    torch.manual_seed(0)
    model = make_tiny_model(300)
    decoder = StaticDecoder(model, max_slots=8, max_len=256)
    batch = StaticBatch(decoder)
    prefilled: list[tuple[int, list[list[int]]]] = []
    prefill = decoder.prefill
    decoder.prefill = lambda slots, prompts, start=0, **kw: (  # type: ignore[method-assign]
        prefilled.append((start, prompts)) or prefill(slots, prompts, start, **kw)
    )
    common = list(range(100, 112))
    with torch.inference_mode():
        seqs = _admit(model, batch, [common + [1, 2]], [0])
        _check_rows(model, batch, seqs, 2)
        batch.keep([])  # it retired; its slot keeps the prompt's keys and values
        assert batch.reused_tokens == 0
        # A prompt that starts the same way: only its own tokens run (and the logits match a full forward pass).
        seqs = _admit(model, batch, [common + [3, 4, 5]], [0])
        assert prefilled[-1] == (12, [[3, 4, 5]])
        assert batch.reused_tokens == 12
        _check_rows(model, batch, seqs, 3)
        # The same prompt again, beside the running row: only its last token runs.
        seqs += _admit(model, batch, [common + [3, 4, 5]], [0])
        assert prefilled[-1] == (14, [[5]])
        _check_rows(model, batch, seqs, 2)
        # Under another adapter nothing is shared (its keys and values differ).
        assert batch._kept_prefix(1, [common + [6]], 12) == (0, -1)
        assert batch._kept_prefix(0, [common + [6]], 12)[0] == 12
        # New weights: the kept keys and values are stale, the next prompt runs whole.
        for layer in model.model.layers:
            layer.self_attn.k_proj.weight.mul_(-1.0)
            layer.self_attn.v_proj.weight.mul_(0.5)
        batch.forget_prompts()
        batch.keep([])
        seqs = _admit(model, batch, [common + [7]], [0])
        assert prefilled[-1] == (0, [common + [7]])
        _check_rows(model, batch, seqs, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_graphs_replay_new_weights_loaded_in_place() -> None:
    from agl_model_server._weights import apply_state_dict

    model = make_tiny_model(300).to("cuda")
    other = make_tiny_model(300, seed=1).to("cuda")
    decoder = StaticDecoder(model, max_slots=4, max_len=256)
    batch = StaticBatch(decoder)
    with torch.inference_mode():
        seqs = _admit(model, batch, [[5, 6, 7]], [0])
        _check_rows(model, batch, seqs, 2)
        captures = decoder.captures
    with torch.no_grad():
        apply_state_dict(model, other.state_dict())
    decoder.refresh()
    # A new sequence (the server drains running ones before weights change: no cache mixes two versions) in the
    # same slot and bucket replays the same graph, which must compute with the new weights.
    batch.clear()
    with torch.inference_mode():
        seqs = _admit(model, batch, [[8, 9, 10]], [0])
        _check_rows(model, batch, seqs, 2)
    assert decoder.captures == captures


def test_a_module_swapped_in_runs_its_own_forward() -> None:
    """On the CPU plain projections run as ``W @ x.T``; after a module is swapped in (an adapter, say) and the
    decoder refreshed, that module's own forward runs."""

    class Doubled(torch.nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    torch.manual_seed(0)
    model = make_tiny_model(300)
    decoder = StaticDecoder(model, max_slots=4, max_len=64)
    attn = model.model.layers[0].self_attn
    doubled = Doubled(attn.q_proj.in_features, attn.q_proj.out_features, bias=attn.q_proj.bias is not None)
    doubled.load_state_dict(attn.q_proj.state_dict())
    attn.q_proj = doubled
    decoder.refresh()
    with torch.inference_mode():
        seqs = _admit(model, StaticBatch(decoder), [[5, 6, 7, 8]], [0])
    assert len(seqs) == 1


def test_unsupported_models_are_refused_with_the_reason() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=100))
    assert "gpt2" in (supported(model) or "")
    with pytest.raises(ValueError, match="does not support this model: model type 'gpt2'"):
        StaticDecoder(model, max_slots=2, max_len=32)


def test_engine_falls_back_to_the_dynamic_path() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from agl_model_server._engine import Engine

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=100))
    assert not Engine(gpt2, eos_token_ids=[], max_model_len=32).static
    tiny = make_tiny_model(300)
    assert Engine(tiny, eos_token_ids=[], max_model_len=32).static  # auto: static where the model allows it
    assert not Engine(tiny, eos_token_ids=[], max_model_len=32, static=False).static


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_graph_replay_equals_the_eager_step() -> None:
    """Same kernels with and without the graph: the logits must agree to the bit (or nearly)."""
    model = make_tiny_model(300).to("cuda")
    prompts = [[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16, 17, 18, 19]]
    outputs = []
    with torch.inference_mode():
        for graphs in (False, True):
            batch = StaticBatch(StaticDecoder(model, max_slots=4, max_len=256, use_graphs=graphs))
            _admit(model, batch, prompts, [0, 1, 2])
            steps = []
            for _ in range(20):
                logits = batch.step()
                steps.append(logits.float().cpu())
                batch.set_next(logits.argmax(-1))
            outputs.append(torch.stack(steps))
    assert (outputs[0] - outputs[1]).abs().max().item() < 1e-4
