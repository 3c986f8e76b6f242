"""PolicyTrainer on a tiny random Llama: one update, learning behaviour, gradient accumulation, the KL reference,
checkpoints and resume, LoRA, and the weights exported for a model server."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import torch

from agl_algo_grpo import GRPOConfig, LoraSettings, PolicyTrainer
from agl_algo_grpo.testing import sequence_logps, synthetic_samples, tiny_llama, with_sampling_logprobs

CPU = {"device": "cpu"}


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_one_update_with_sampling_time_logprobs(samples) -> None:
    policy = PolicyTrainer(tiny_llama(), GRPOConfig(learning_rate=1e-3, micro_batch_size=3, **CPU))
    assert policy.device.type == "cpu" and next(policy.model.parameters()).dtype == torch.float32
    assert policy.optimizer.defaults["fused"] is True  # torch's fused AdamW step (several times faster on the CPU)
    recorded = with_sampling_logprobs(policy, samples)
    before = _weights(policy.model)
    metrics = policy.train_step(recorded)
    assert policy.step == 1 and policy.version == 1
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    # the logprobs were recorded with these very weights: the first (only) optimizer step sees ratio 1
    assert metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["approx_kl"] == pytest.approx(0.0, abs=1e-6) and metrics["clip_fraction"] == 0.0
    assert metrics["recomputed_logprobs"] == 0 and metrics["grad_norm"] > 0 and metrics["optimizer_steps"] == 1
    assert metrics["sequences"] == 8 and metrics["loss_tokens"] == sum(
        len(s.triplet.response_token_ids) for s in samples
    )
    after = policy.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_positive_advantage_sequences_become_more_likely(samples) -> None:
    config = GRPOConfig(learning_rate=3e-3, epochs_per_step=2, micro_batch_size=2, grad_accumulation=1, **CPU)
    policy = PolicyTrainer(tiny_llama(), config)
    start = sequence_logps(policy, samples)
    for _ in range(4):
        metrics = policy.train_step(samples)  # no recorded logprobs: recomputed from the current weights each step
        assert metrics["recomputed_logprobs"] == len(samples)
    assert metrics["optimizer_steps"] == 8  # 4 micro-batches × 2 epochs, one optimizer step each
    end = sequence_logps(policy, samples)
    for sample, a, b in zip(samples, start, end):
        if sample.advantage > 0:
            assert b > a + 0.5, "a reinforced response did not become more likely"
        else:
            assert b < a - 0.5, "a discouraged response did not become less likely"


def test_logprobs_line_up_with_a_plain_forward_pass(samples) -> None:
    policy = PolicyTrainer(tiny_llama(), GRPOConfig(**CPU))
    got = policy.sequence_logprobs(samples)  # one padded batch, prompts of different lengths
    policy.model.eval()
    for row, sample in enumerate(samples):
        t = sample.triplet
        ids = torch.tensor([t.prompt_token_ids + t.response_token_ids])
        with torch.no_grad():
            logits = policy.model(input_ids=ids).logits[0].log_softmax(-1)
        p = len(t.prompt_token_ids)
        expected = [float(logits[p - 1 + k, token]) for k, token in enumerate(t.response_token_ids)]
        assert got[row, p - 1 : p - 1 + len(expected)].tolist() == pytest.approx(expected, abs=1e-5)
        assert float(got[row].abs().sum()) == pytest.approx(sum(abs(x) for x in expected), rel=1e-5)


def test_gradient_accumulation_gives_the_token_mean_of_the_whole_batch(samples) -> None:
    one = PolicyTrainer(tiny_llama(), GRPOConfig(micro_batch_size=8, **CPU))
    many = PolicyTrainer(tiny_llama(), GRPOConfig(micro_batch_size=1, **CPU))  # 8 micro-batches, one update
    a, b = one.train_step(samples), many.train_step(samples)
    assert b["optimizer_steps"] == a["optimizer_steps"] == 1
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-7)
    assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)


def test_kl_penalty_against_a_frozen_reference(samples) -> None:
    config = GRPOConfig(learning_rate=1e-2, kl_coef=0.1, epochs_per_step=2, **CPU)
    policy = PolicyTrainer(tiny_llama(), config)
    assert policy.reference is not None
    reference = _weights(policy.reference)
    first = policy.train_step(samples)
    second = policy.train_step(samples)
    assert first["kl"] >= 0 and second["kl"] > first["kl"] > 0  # the policy moves away from the reference
    assert all(torch.equal(v, policy.reference.state_dict()[k]) for k, v in reference.items())


def test_checkpoint_and_resume_restore_step_weights_and_optimizer(tmp_path: Path, samples) -> None:
    config = GRPOConfig(learning_rate=1e-3, checkpoint_dir=str(tmp_path / "ckpt"), keep_checkpoints=2, **CPU)
    policy = PolicyTrainer(tiny_llama(), config)
    assert PolicyTrainer(tiny_llama(), GRPOConfig(resume=True, checkpoint_dir=config.checkpoint_dir)).step == 0
    for _ in range(3):
        policy.train_step(samples)
        path = policy.save_checkpoint()
    assert path.name == "step-000003"
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step-000002", "step-000003"]  # pruned

    resumed = PolicyTrainer(tiny_llama(seed=5), attrs.evolve(config, resume=True))
    assert resumed.step == 3 and resumed.resumed_from == path
    trained = policy.model.state_dict()
    assert all(torch.equal(trained[k], v) for k, v in resumed.model.state_dict().items())
    state_a, state_b = policy.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(state_a[i]["exp_avg"], state_b[i]["exp_avg"]) for i in state_a)
    # and both continue identically
    policy.train_step(samples), resumed.train_step(samples)
    assert all(torch.allclose(policy.model.state_dict()[k], v) for k, v in resumed.model.state_dict().items())


def test_serving_weights_without_lora_are_the_model_weights(samples) -> None:
    policy = PolicyTrainer(tiny_llama(), GRPOConfig(**CPU))
    policy.train_step(samples)
    served = policy.state_dict_for_serving(torch.bfloat16)
    assert served.keys() == policy.model.state_dict().keys()
    assert all(v.dtype == torch.bfloat16 for v in served.values())


def test_lora_trains_adapters_only_and_serves_merged_weights(tmp_path: Path, samples) -> None:
    pytest.importorskip("peft", reason="LoRA needs peft: pip install 'agl-algo-grpo[lora]'")
    lora = LoraSettings(r=4, alpha=8, target_modules=("q_proj", "v_proj"))
    config = GRPOConfig(learning_rate=1e-2, lora=lora, kl_coef=0.05, checkpoint_dir=str(tmp_path), **CPU)
    base = tiny_llama()
    original = _weights(base)
    policy = PolicyTrainer(base, config)
    assert policy.reference is None  # the base model (adapters disabled) is the reference
    start = sequence_logps(policy, samples)
    for _ in range(3):
        metrics = policy.train_step(samples)
    assert metrics["kl"] > 0
    end = sequence_logps(policy, samples)
    gains = [b - a if s.advantage > 0 else a - b for s, a, b in zip(samples, start, end)]
    assert sum(gains) > 0
    # the base weights are untouched; the served weights are the base's names with the adapters merged in
    base_now = policy.model.get_base_model()
    assert torch.equal(
        base_now.model.layers[0].self_attn.q_proj.base_layer.weight, original["model.layers.0.self_attn.q_proj.weight"]
    )
    served = policy.state_dict_for_serving()
    assert served.keys() == original.keys()
    changed = [k for k in served if not torch.equal(served[k], original[k])]
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed)
    server_copy = tiny_llama(seed=9)
    server_copy.load_state_dict(served)
    ids = torch.tensor([samples[0].triplet.prompt_token_ids])
    policy.model.eval()
    with torch.no_grad():
        assert torch.allclose(server_copy(input_ids=ids).logits, policy.model(input_ids=ids).logits, atol=1e-5)

    path = policy.save_checkpoint()
    assert (path / "model" / "adapter_model.safetensors").is_file()
    resumed = PolicyTrainer(tiny_llama(), attrs.evolve(config, resume=True))
    assert resumed.step == 3
    assert all(torch.equal(served[k], v) for k, v in resumed.state_dict_for_serving().items())
    with pytest.raises(ValueError, match="written with LoRA on"):
        PolicyTrainer(tiny_llama(), GRPOConfig(checkpoint_dir=str(tmp_path), resume=True, **CPU))


def test_train_step_needs_samples() -> None:
    with pytest.raises(ValueError, match="at least one sample"):
        PolicyTrainer(tiny_llama(), GRPOConfig(**CPU)).train_step([])
    assert len(synthetic_samples(2)) == 4


def _tree_samples() -> list:
    """Two groups whose prompts (of different lengths) start with the same 4 instruction tokens, responses of
    different lengths, two of which share their first tokens and then branch, and a prompt nobody shares."""
    from agl_algo_grpo import TrainingSample
    from agl_kernel.models import Triplet

    generator = torch.Generator().manual_seed(0)
    samples = []
    for prompt_length in (5, 9):
        prompt = [1, 2, 3, 4] + torch.randint(3, 100, (prompt_length,), generator=generator).tolist()
        for k in range(3):
            response = torch.randint(3, 100, (2 + 2 * k,), generator=generator).tolist()
            samples.append(TrainingSample(Triplet(prompt_token_ids=prompt, response_token_ids=response), float(k - 1)))
    branching = Triplet(
        prompt_token_ids=samples[2].triplet.prompt_token_ids,
        response_token_ids=samples[2].triplet.response_token_ids[:3] + [7, 8],
    )
    samples.append(TrainingSample(branching, 0.5))
    lone = torch.randint(3, 100, (7,), generator=generator).tolist()
    samples.append(TrainingSample(Triplet(prompt_token_ids=lone, response_token_ids=[5, 6, 7]), 1.0))
    return samples


def test_prefix_trees_store_shared_tokens_once_and_see_only_their_own_sequence() -> None:
    from agl_algo_grpo import collate, pack_prefixes

    samples = _tree_samples()
    batch = collate(samples, pad_token_id=0)
    sequences = [s.triplet.prompt_token_ids + s.triplet.response_token_ids for s in samples]
    distinct = {tuple(seq[: j + 1]) for seq in sequences for j in range(len(seq))}  # one node per distinct prefix
    for max_tokens, trees in ((8192, 1), (30, 3)):
        packed = pack_prefixes(batch, max_tokens=max_tokens)
        assert packed.input_ids.shape[0] == trees
        if trees == 1:
            assert int(packed.attention_mask[0, 0].diagonal().sum()) == packed.input_ids.shape[1] == len(distinct)
        width = packed.input_ids.shape[1]
        for b, seq in enumerate(sequences):
            where = packed.index[b, : len(seq)]
            assert (packed.index[b, len(seq) :] == -1).all()
            r = where // width
            assert (r == r[0]).all()  # a sequence lies in one tree
            assert packed.input_ids.flatten()[where].tolist() == seq
            assert packed.position_ids.flatten()[where].tolist() == list(range(len(seq)))
            # token j sees exactly tokens 0..j of its own sequence
            sees = packed.attention_mask[r[0], 0][where % width]
            expected = torch.zeros_like(sees)
            for j in range(len(seq)):
                expected[j, where[: j + 1] % width] = True
            assert torch.equal(sees, expected)


@pytest.mark.parametrize(
    ("lora", "attention", "checkpointing"),
    [(False, "sdpa", False), (False, "eager", False), (True, "sdpa", False), (False, "sdpa", True)],
)
def test_shared_prefixes_give_the_same_logprobs_and_gradients(lora: bool, attention: str, checkpointing: bool) -> None:
    """Prefix trees (shared prompts and instructions, branching responses, one response cut by max_length) give
    the logprobs and the gradients of running every sequence whole, padded (with gradient checkpointing too)."""
    import copy

    from agl_algo_grpo import collate

    samples = _tree_samples()
    base = tiny_llama()
    base.config._attn_implementation = attention
    results = {}
    for share in (False, True):
        lora_settings = LoraSettings(r=4) if lora else None
        config = GRPOConfig(share_prompts=share, lora=lora_settings, gradient_checkpointing=checkpointing)
        policy = PolicyTrainer(copy.deepcopy(base), config)
        policy.model.train()
        assert policy._packs == share
        batch = collate(samples, pad_token_id=policy.pad_token_id, max_length=18)
        assert batch.truncated == 1
        logps = policy._forward_logps(policy.model, batch) * batch.loss_mask
        logps.sum().backward()
        grads = torch.cat([p.grad.flatten() for p in policy.parameters])
        results[share] = (logps.detach(), grads)
    assert torch.count_nonzero(results[False][0]) == int(collate(samples, max_length=18).loss_mask.sum())
    torch.testing.assert_close(results[True][0], results[False][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(results[True][1], results[False][1], atol=1e-5, rtol=1e-4)


def test_shared_prompts_keep_a_group_in_one_micro_batch() -> None:
    from agl_algo_grpo import TrainingSample
    from agl_kernel.models import Triplet

    samples = [
        TrainingSample(
            triplet=Triplet(prompt_token_ids=[10 + g, 11, 12], response_token_ids=[20 + i, 21]), advantage=1.0
        )
        for g in range(3)
        for i in range(4)
    ]
    policy = PolicyTrainer(tiny_llama(), GRPOConfig(micro_batch_size=4))
    for batch in policy._micro_batches(samples):
        assert len({int(batch.input_ids[r, 0]) for r in range(batch.input_ids.shape[0])}) == 1
