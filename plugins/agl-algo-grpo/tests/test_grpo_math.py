"""The pure parts of GRPO against values computed by hand: advantages, the clipped loss, logprobs, the advantage
rule for multi-turn and per-step rewards, batching, and the config."""

from __future__ import annotations

import math

import pytest
import torch

from agl_algo_grpo import (
    GRPOConfig,
    LoraSettings,
    RolloutSample,
    TrainingSample,
    assign_advantages,
    collate,
    group_advantages,
    make_config,
    policy_loss,
    token_logprobs,
)
from agl_kernel.errors import ConfigError
from agl_kernel.models import Triplet

# ------------------------------------------------------------------------------------------------ advantages


def test_advantages_are_normalised_within_each_group() -> None:
    # group "a": 1, 2, 3 → mean 2, population std sqrt(2/3) = 0.8164966; group "b": 5, 5 → no variance
    got = group_advantages([1.0, 5.0, 2.0, 3.0, 5.0], ["a", "b", "a", "a", "b"], eps=0.0)
    s = math.sqrt(2 / 3)
    assert got == pytest.approx([-1 / s, 0.0, 0.0, 1 / s, 0.0])
    assert got[0] == pytest.approx(-1.2247449)


def test_advantages_one_success_in_four() -> None:
    # 1, 0, 0, 0: mean 0.25, std sqrt(0.1875) = 0.4330127 → 0.75 / 0.4330127 = 1.7320508, -0.25 / ... = -0.5773503
    got = group_advantages([1, 0, 0, 0], [0, 0, 0, 0])
    assert got == pytest.approx([1.7320508 / (1 + 1e-6 / 0.4330127), -0.5773503, -0.5773503, -0.5773503], rel=1e-5)
    assert sum(got) == pytest.approx(0.0, abs=1e-9)


def test_advantages_without_std_scaling_only_subtract_the_mean() -> None:
    assert group_advantages([1.0, 0.0, 0.0, 1.0], [0] * 4, scale=False) == [0.5, -0.5, -0.5, 0.5]


def test_zero_variance_groups_and_singletons_get_zero_advantage() -> None:
    assert group_advantages([0.7, 0.7, 0.7, 3.0], ["x", "x", "x", "y"]) == [0.0, 0.0, 0.0, 0.0]
    assert group_advantages([], []) == []
    with pytest.raises(ValueError, match="3 rewards but 2 group labels"):
        group_advantages([1, 2, 3], [0, 0])


# ------------------------------------------------------------------------------------------------ the loss


def _logs(*ratios: float) -> torch.Tensor:
    return torch.tensor([[math.log(r) for r in ratios]], dtype=torch.float32)


def test_clipped_loss_positive_advantage() -> None:
    # ratios 1.5, 0.9, (2.0 masked); A = +1, eps 0.2: token 1 clipped to 1.2 → -1.2; token 2 → -0.9; mean -1.05
    new = _logs(1.5, 0.9, 2.0).requires_grad_(True)
    old = torch.zeros(1, 3)
    loss, m = policy_loss(new, old, torch.tensor([1.0]), torch.tensor([[1.0, 1.0, 0.0]]))
    assert loss.item() == pytest.approx(-1.05)
    assert m["pg_loss"] == pytest.approx(-1.05)
    assert m["clip_fraction"] == pytest.approx(0.5)
    assert m["ratio_mean"] == pytest.approx(1.2)
    assert m["ratio_max"] == pytest.approx(1.5)  # the masked 2.0 does not count
    # approx KL (k3, old→new): ((0.5 - ln 1.5) + (-0.1 - ln 0.9)) / 2
    assert m["approx_kl"] == pytest.approx(((0.5 - math.log(1.5)) + (-0.1 - math.log(0.9))) / 2, rel=1e-5)
    assert m["tokens"] == 2.0 and "kl" not in m
    loss.backward()
    # the clipped token gets no gradient; d/dlogp of -A·ratio/2 = -ratio/2 = -0.45; masked: 0
    assert new.grad.tolist()[0] == pytest.approx([0.0, -0.45, 0.0])


def test_clipped_loss_negative_advantage_and_asymmetric_clip() -> None:
    # A = -1, ratios 0.5 and 1.1. clip_low 0.2: 0.5 → 0.8, max(0.5, 0.8) = 0.8 (clipped); 1.1 → 1.1; mean 0.95
    new = _logs(0.5, 1.1)
    loss, m = policy_loss(new, torch.zeros(1, 2), torch.tensor([-1.0]), torch.ones(1, 2))
    assert float(loss) == pytest.approx(0.95)
    assert m["clip_fraction"] == pytest.approx(0.5)
    # clip_high 0.28 (clip-higher): a ratio of 1.25 with A > 0 is no longer clipped
    loss, m = policy_loss(_logs(1.25), torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1), clip_high=0.28)
    assert float(loss) == pytest.approx(-1.25) and m["clip_fraction"] == 0.0


def test_loss_with_k3_kl_to_the_reference_and_a_shared_normaliser() -> None:
    new, ref = _logs(1.5, 0.9), torch.zeros(1, 2)
    # k3 = exp(ref - new) - (ref - new) - 1: 1/1.5 + ln 1.5 - 1 = 0.0721318, 1/0.9 + ln 0.9 - 1 = 0.0057506
    k3 = [1 / 1.5 + math.log(1.5) - 1, 1 / 0.9 + math.log(0.9) - 1]
    loss, m = policy_loss(new, torch.zeros(1, 2), torch.tensor([1.0]), torch.ones(1, 2), ref_logps=ref, kl_coef=0.1)
    assert m["kl"] == pytest.approx(sum(k3) / 2, rel=1e-5)
    assert float(loss) == pytest.approx(-1.05 + 0.1 * sum(k3) / 2, rel=1e-5)
    # the same tokens as half of an optimizer step of 4 loss tokens: the sum is divided by 4, metrics stay per token
    loss, m = policy_loss(new, torch.zeros(1, 2), torch.tensor([1.0]), torch.ones(1, 2), normalizer=4)
    assert float(loss) == pytest.approx(-2.1 / 4) and m["pg_loss"] == pytest.approx(-1.05)


def test_loss_broadcasts_one_advantage_per_sequence() -> None:
    new = torch.zeros(2, 2)  # ratio 1 everywhere: loss = -mean(A over masked tokens)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, _ = policy_loss(new, torch.zeros(2, 2), torch.tensor([2.0, -1.0]), mask)
    assert float(loss) == pytest.approx(-(2 + 2 - 1) / 3)


def test_token_logprobs_with_temperature() -> None:
    logits = torch.tensor([[[0.0, math.log(2), math.log(3)]]])
    target = torch.tensor([[2]])
    assert float(token_logprobs(logits, target)) == pytest.approx(math.log(0.5))
    # temperature 2: softmax of logits/2 ∝ 1, √2, √3 → p = √3 / (1 + √2 + √3)
    expected = math.log(math.sqrt(3) / (1 + math.sqrt(2) + math.sqrt(3)))
    assert float(token_logprobs(logits, target, temperature=2.0)) == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------------------------------------ the advantage rule


def _t(reward: float | None = None, step: float | None = None, n: int = 1) -> Triplet:
    return Triplet(prompt_token_ids=[1] * n, response_token_ids=[2], reward=reward, step_reward=step)


def test_outcome_rewards_every_turn_of_a_rollout_shares_its_advantage() -> None:
    rollouts = [
        RolloutSample(rollout_id="a", group=0, triplets=[_t(1.0), _t(1.0)], final_reward=1.0),  # two turns
        RolloutSample(rollout_id="b", group=0, triplets=[_t(0.0)], final_reward=0.0),
        RolloutSample(rollout_id="c", group=0, triplets=[], final_reward=1.0),  # no data: takes no part
        RolloutSample(rollout_id="d", group=1, triplets=[_t(0.0), _t(0.5)], final_reward=None),  # last triplet: 0.5
        RolloutSample(rollout_id="e", group=1, triplets=[_t(0.25)], final_reward=None),
    ]
    samples = assign_advantages(rollouts, scale=False)
    got = [(s.rollout_id, s.advantage) for s in samples]
    assert got == [("a", 0.5), ("a", 0.5), ("b", -0.5), ("d", 0.125), ("d", 0.125), ("e", -0.125)]


def test_per_step_rewards_score_each_triplet_within_its_task_group() -> None:
    # the adapter's reward = step reward + final reward; None counts as 0. Group 0: 1.5, 0.0, 1.0, 0.5 (mean 0.75)
    rollouts = [
        RolloutSample(rollout_id="a", group=0, triplets=[_t(1.5, step=0.5), _t(0.0)], final_reward=1.0),
        RolloutSample(rollout_id="b", group=0, triplets=[_t(1.0, step=1.0), _t(None)], final_reward=None),
        RolloutSample(rollout_id="c", group=1, triplets=[_t(1.0)], final_reward=1.0),  # outcome mode: one → 0
    ]
    rollouts[1].triplets[1] = _t(0.5, step=0.5)
    got = [(s.rollout_id, s.advantage) for s in assign_advantages(rollouts, scale=False)]
    assert got == [("a", 0.75), ("a", -0.75), ("b", 0.25), ("b", -0.25), ("c", 0.0)]


# ------------------------------------------------------------------------------------------------ batching


def test_collate_aligns_masks_and_logprobs_with_the_next_token() -> None:
    merged = Triplet(
        prompt_token_ids=[1, 2],
        response_token_ids=[3, 4, 5],
        response_logprobs=[-0.1, 0.0, -0.3],
        response_mask=[1, 0, 1],  # token 4 is a tool result inside a merged multi-turn response
    )
    plain = Triplet(prompt_token_ids=[7], response_token_ids=[8])
    batch = collate([TrainingSample(merged, 1.5), TrainingSample(plain, -1.0)], pad_token_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5], [7, 8, 0, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert batch.targets.tolist() == [[2, 3, 4, 5], [8, 0, 0, 0]]
    assert batch.loss_mask.tolist() == [[0, 1, 0, 1], [1, 0, 0, 0]]
    assert batch.old_logps.tolist()[0] == pytest.approx([0.0, -0.1, 0.0, -0.3])
    assert batch.has_old_logps.tolist() == [True, False]
    assert batch.advantages.tolist() == [1.5, -1.0]
    assert batch.token_count == 7 and batch.loss_tokens == 3


def test_collate_truncates_and_skips_a_response_without_prompt() -> None:
    long = Triplet(prompt_token_ids=[1, 2], response_token_ids=[3, 4, 5, 6], response_logprobs=[-1.0] * 4)
    bare = Triplet(prompt_token_ids=[], response_token_ids=[9, 10], response_logprobs=[-2.0, -3.0])
    batch = collate([TrainingSample(long, 1.0), TrainingSample(bare, 1.0)], max_length=4)
    assert batch.truncated == 1
    assert batch.input_ids.tolist() == [[1, 2, 3, 4], [9, 10, 0, 0]]
    assert batch.loss_mask.tolist() == [[0, 1, 1], [1, 0, 0]]  # token 9 has no context: not scored
    assert batch.old_logps.tolist() == [[0.0, -1.0, -1.0], [-3.0, 0.0, 0.0]]


# ------------------------------------------------------------------------------------------------ config


def test_make_config_takes_strings_and_names_unknown_options() -> None:
    config = make_config(GRPOConfig(steps=5), group_size="8", scale_rewards="false", lora="true", clip_high="0.28")
    assert (config.steps, config.group_size, config.scale_rewards, config.clip_high) == (5, 8, False, 0.28)
    assert config.lora == LoraSettings()
    assert make_config({"lora": {"r": 4}}).lora == LoraSettings(r=4)
    assert make_config(lora="false").lora is None and make_config(lora=LoraSettings(r=2)).lora == LoraSettings(r=2)
    assert make_config(lora={"target_modules": "q_proj,v_proj"}).lora.target_modules == ("q_proj", "v_proj")
    # one-line ConfigErrors (ValueErrors) that name the option and, for an unknown one, the valid keys
    with pytest.raises(
        ConfigError, match=r"^algorithm\.group: unknown option\. Did you mean 'group_size'\?.*Valid keys:"
    ):
        make_config(group=4)
    with pytest.raises(ConfigError, match=r"^algorithm\.group_size: must be >= 1: 0$"):
        make_config(group_size=0)
    with pytest.raises(ConfigError, match=r"^algorithm\.steps: expected an integer, got 'zero'$"):
        make_config(steps="zero")
    with pytest.raises(ConfigError, match=r"^algorithm\.lora\.rank: unknown option.*Valid keys: alpha, dropout, r, "):
        make_config(lora={"rank": 4})
    with pytest.raises(ValueError, match="clip_low"):
        GRPOConfig(clip_low=1.5)
    assert issubclass(ConfigError, ValueError)


def test_the_credit_rule_is_picked_by_name_with_its_options() -> None:
    from agl_algo_grpo._config import credit_rule
    from agl_kernel.credit import AutoCredit, DiscountedCredit

    assert credit_rule(make_config()) == AutoCredit(scale=True)
    assert credit_rule(make_config(scale_rewards="false")) == AutoCredit(scale=False)  # the rule's scale by default
    rule = credit_rule(make_config(credit="discounted", credit_options={"gamma": "0.5"}))
    assert rule == DiscountedCredit(gamma=0.5, scale=True)
    rollouts = [
        RolloutSample(rollout_id="a", group=0, triplets=[_t(0.0, step=0.0), _t(1.0, step=1.0)], final_reward=0.0),
        RolloutSample(rollout_id="b", group=0, triplets=[_t(0.0, step=0.0), _t(0.0, step=0.0)], final_reward=0.0),
    ]
    # discounted returns 0.5, 1.0 | 0, 0 (mean 0.375): the first turn of "a" shares in its later reward
    got = [(s.rollout_id, s.advantage) for s in assign_advantages(rollouts, rule=DiscountedCredit(0.5, scale=False))]
    assert got == [("a", 0.125), ("a", 0.625), ("b", -0.375), ("b", -0.375)]
    with pytest.raises(ConfigError, match=r"^algorithm\.credit: .*'nope'"):
        credit_rule(make_config(credit="nope"))
    with pytest.raises(ConfigError, match=r"^algorithm\.credit_options\.gamma: must be <= 1"):
        credit_rule(make_config(credit="discounted", credit_options={"gamma": 2}))


def test_the_llm_backend_is_picked_by_name_and_checked_when_grpo_is_made() -> None:
    from agl_algo_grpo import GRPO
    from agl_algo_grpo._config import llm_backend

    assert type(llm_backend(make_config())).__name__ == "ModelServerBackend"
    assert llm_backend(make_config(backend_options={"max_batch_size": "8"})).options.max_batch_size == 8
    with pytest.raises(ConfigError, match=r"^algorithm\.backend: No llm_backends plugin named 'nope'"):
        GRPO("agl_algo_grpo.testing:tiny_chat_model", backend="nope")
    with pytest.raises(ConfigError, match=r"^algorithm\.backend_options\.max_batch_size: must be >= 1"):
        GRPO("agl_algo_grpo.testing:tiny_chat_model", backend_options={"max_batch_size": 0})
