"""agl traces from a real store → verl's ``DataProto`` → verl's GRPO advantage and policy loss, against
agl-algo-grpo's own advantage and loss on the same data.

The traces are real: agl-model-server serves SmolLM2-135M-Instruct on 127.0.0.1 (token ids and logprobs with every
completion), the kernel's LLM proxy records each call, two runner processes (the ``shm`` strategy) run the toy
agent (one chat call, rewarded by the share of vowels in the reply) and write to a SQLite store file.
:class:`agl_algo_verl.AglRollouts` (the generation half of the VERL algorithm) publishes, enqueues and collects.

The mapping between the two conventions, checked below:

- rows: agl-algo-grpo trains on right-padded ``prompt ‖ response`` sequences; verl on left-padded prompts and
  right-padded responses with explicit position ids. SmolLM2's logprobs of the response tokens agree to 1e-4.
- advantages: both normalise a group's rewards, but verl divides by the *sample* standard deviation
  (``torch.std``, n - 1) and agl-algo-grpo by the *population* one (n): with ``scale_rewards=False`` (Dr. GRPO)
  they are equal; with scaling verl's = agl's × sqrt((n - 1) / n) (both to 1e-5).
- loss: both are the clipped ratio loss, a token mean over the generated tokens of the batch (verl's
  ``token-mean``); verl adds a dual clip (``clip_ratio_c``) for negative advantages that only acts when the ratio
  exceeds it (never here, checked). Same advantages → same loss (1e-6) and the same gradient (1e-3 of the
  largest entry of each parameter's gradient).
"""

from __future__ import annotations

import asyncio
import copy
import io
import statistics
from pathlib import Path
from typing import Any

import pytest

from agl_kernel.algorithm import Algorithm

pytestmark = pytest.mark.verl

ROOT = Path(__file__).resolve().parents[3]
TOY_AGENT = ROOT / "plugins" / "agl-algo-grpo" / "tests" / "grpo_toy_agent.py"
TASKS = [{"question": "one two three"}, {"question": "hello world"}, {"question": "what is the answer?"}]
GROUP = 4
MAX_TOKENS = 10


class CollectOnce(Algorithm):
    """An algorithm that runs the VERL algorithm's generation half once, on the trainer's store and runners."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.result: Any = None

    async def run(self, store: Any, train_dataset: Any, val_dataset: Any = None) -> Any:
        from agl_algo_verl import AglRollouts

        rollouts = AglRollouts(group_size=GROUP, adapter=self.adapter, rollout_timeout=300)
        async with rollouts.serving(store, [self.base_url], "policy"):
            resources_id = await rollouts.publish(store, {"temperature": 1.0, "max_tokens": MAX_TOKENS})
            self.result = await rollouts.run(store, train_dataset, resources_id=resources_id, metadata={"verl_step": 0})
        return self.result


async def _collect(tmp: Path, model: Any, tokenizer: Any) -> tuple[Any, dict[str, float]]:
    from rich.console import Console

    from agl_kernel.plugins import create_component
    from agl_kernel.rewards import get_reward
    from agl_kernel.trainer import Trainer

    backend = create_component("llm_backends", "model-server")
    base_url = await backend.start(copy.deepcopy(model), tokenizer, model_name="policy", max_tokens=MAX_TOKENS)
    try:
        collect = CollectOnce(base_url)
        trainer = Trainer(
            algorithm=collect,
            store="sqlite",
            store_path=str(tmp / "agl.db"),
            strategy="shm",
            n_runners=2,
            progress=False,
            console=Console(file=io.StringIO()),
        )
        await trainer.fit_async(f"{TOY_AGENT}:agent", TASKS)
        rewards = {row.rollout_id: await get_reward(trainer.store, row.rollout_id) for row in collect.result.rows}
    finally:
        await backend.stop()
    return collect.result, rewards


@pytest.fixture(scope="module")
def smollm2() -> tuple[Any, Any]:
    import torch

    from agl_model_server import load_model

    torch.set_num_threads(2)
    model, tokenizer = load_model("smollm2", dtype=torch.float32)
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def collected(smollm2: tuple[Any, Any], tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, float]]:
    model, tokenizer = smollm2
    return asyncio.run(_collect(tmp_path_factory.mktemp("store"), model, tokenizer))


@pytest.fixture(scope="module")
def data(collected: tuple[Any, dict[str, float]], smollm2: tuple[Any, Any]) -> Any:
    from agl_algo_verl._dataproto import to_dataproto

    tokenizer = smollm2[1]
    packed = to_dataproto(collected[0].rows, pad_token_id=tokenizer.pad_token_id or 0, max_response_length=MAX_TOKENS)
    assert packed.dropped_long_prompt == 0 and packed.truncated_response == 0
    return packed.data


@pytest.mark.timeout(900)  # the model server, two runner processes and SmolLM2 on a shared 2-core CPU
def test_store_traces_become_a_dataproto(collected: tuple[Any, dict[str, float]], data: Any, smollm2: Any) -> None:
    import torch

    result, rewards = collected
    tokenizer = smollm2[1]
    assert result.succeeded == len(TASKS) * GROUP and not result.no_rows
    assert len(result.rows) == len(data) == len(TASKS) * GROUP  # one LLM call per rollout: one row each
    b = data.batch
    P, R = b["prompts"].shape[1], b["responses"].shape[1]
    assert b["input_ids"].shape == (len(data), P + R) and R <= MAX_TOKENS
    assert torch.equal(b["input_ids"], torch.cat([b["prompts"], b["responses"]], dim=1))
    for i, row in enumerate(result.rows):
        n_p, n_r = len(row.prompt_token_ids), len(row.response_token_ids)
        # left-padded prompt, right-padded response, exactly the recorded token ids
        assert b["prompts"][i, P - n_p :].tolist() == row.prompt_token_ids
        assert b["attention_mask"][i].tolist() == [0] * (P - n_p) + [1] * (n_p + n_r) + [0] * (R - n_r)
        assert b["response_mask"][i].tolist() == [1] * n_r + [0] * (R - n_r)
        assert b["position_ids"][i, P - n_p : P + n_r].tolist() == list(range(n_p + n_r))
        # the prompt is the chat template of the task's question; the reward, from the store, on the last token
        question = next(t["question"] for t in TASKS if t["question"] in tokenizer.decode(row.prompt_token_ids))
        assert question
        assert b["rm_scores"][i, n_r - 1].item() == pytest.approx(rewards[row.rollout_id])
        assert b["rm_scores"][i].sum().item() == pytest.approx(rewards[row.rollout_id])
        assert torch.allclose(b["rollout_log_probs"][i, :n_r], torch.tensor(row.logprobs))
    # a group per task: GROUP rows share each uid
    uids = list(data.non_tensor_batch["uid"])
    assert sorted(uids.count(u) for u in set(uids)) == [GROUP] * len(TASKS)


def _verl_logprobs(model: Any, data: Any) -> Any:
    """The response tokens' logprobs in verl's layout (left-padded prompts, position ids), as verl's actor takes
    them: the logits at the position before each response token."""
    import torch

    b = data.batch
    out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], position_ids=b["position_ids"])
    R = b["responses"].shape[1]
    logits = out.logits[:, -R - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, b["responses"].unsqueeze(-1)).squeeze(-1)


def _agl_side(result: Any, scale: bool) -> Any:
    from agl_algo_grpo import RolloutSample, assign_advantages, collate
    from agl_kernel.models import Triplet

    samples = [
        RolloutSample(
            rollout_id=row.rollout_id or "",
            group=row.uid,
            triplets=[
                Triplet(
                    prompt_token_ids=row.prompt_token_ids,
                    response_token_ids=row.response_token_ids,
                    response_logprobs=row.logprobs,
                    reward=row.reward,
                )
            ],
            final_reward=row.reward,
        )
        for row in result.rows
    ]
    training = assign_advantages(samples, scale=scale)
    assert [s.rollout_id for s in training] == [r.rollout_id for r in result.rows]
    return training, collate(training)


def _verl_advantages(data: Any, scale: bool) -> Any:
    """verl's ``compute_advantage`` (GRPO, as the plugin's options configure it) on a copy of ``data``."""
    from verl.trainer.ppo.ray_trainer import compute_advantage

    from agl_algo_verl import VERLOptions
    from agl_algo_verl._trainer import verl_config

    config = verl_config(VERLOptions(scale_rewards=scale, group_size=GROUP, clip_high=0.28), require_model=False)
    batch = copy.deepcopy(data)
    batch.batch["token_level_rewards"] = batch.batch["rm_scores"]
    batch = compute_advantage(
        batch,
        adv_estimator=config.algorithm.adv_estimator,
        num_repeat=GROUP,
        norm_adv_by_std_in_grpo=config.algorithm.norm_adv_by_std_in_grpo,
        config=config.algorithm,
    )
    return batch, config


@pytest.mark.timeout(900)
def test_verl_grpo_advantage_and_loss_agree_with_agl_grpo(
    collected: tuple[Any, dict[str, float]], data: Any, smollm2: tuple[Any, Any]
) -> None:
    import torch
    from verl.trainer.ppo.core_algos import get_policy_loss_fn
    from verl.utils.config import omega_conf_to_dataclass

    from agl_algo_grpo import policy_loss, token_logprobs

    result = collected[0]
    rewards = [row.reward for row in result.rows]
    assert len(set(rewards)) > 1, "the toy agent's rewards should vary"

    # ---- advantages: verl's compute_advantage (GRPO) against agl-algo-grpo's rule, both scalings
    for scale in (False, True):
        scaled, _ = _verl_advantages(data, scale)
        training, _ = _agl_side(result, scale)
        group_rewards: dict[Any, list[float]] = {}
        for sample, row in zip(training, result.rows):
            group_rewards.setdefault(sample.group, []).append(row.reward)
        for i, sample in enumerate(training):
            # both divide by (std + 1e-6): verl's sample std (n - 1), agl's population std (n). The exact
            # conversion, not sqrt((n - 1) / n) alone: with close rewards (std ~ 0.006) the epsilon's share shows
            expected = sample.advantage
            if scale:
                rewards = group_rewards[sample.group]
                expected *= (statistics.pstdev(rewards) + 1e-6) / (statistics.stdev(rewards) + 1e-6)
            n_r = len(result.rows[i].response_token_ids)
            verl_adv = scaled.batch["advantages"][i]
            # verl computes in float32: (r - mean) loses ~1e-7 of a reward, i.e. ~1e-7 / std of an advantage
            assert torch.allclose(verl_adv[:n_r], torch.tensor(expected), atol=1e-4), (scale, i)
            assert (verl_adv[n_r:] == 0).all()

    # ---- the loss (Dr. GRPO scaling, so the advantages are equal): verl's registered 'vanilla' policy loss with
    # the plugin's actor config, against agl-algo-grpo's policy_loss; SmolLM2's logprobs in each one's layout
    batch, config = _verl_advantages(data, False)
    actor_config = omega_conf_to_dataclass(config.actor_rollout_ref.actor)
    model = copy.deepcopy(smollm2[0]).train()
    # the gradient is compared on the last decoder layer and the final norm (the rest frozen: the backward pass
    # stops there, a tenth of the compute on this CPU); the logprobs and the loss involve the whole model
    trained = {id(p) for p in [*model.model.layers[-1].parameters(), *model.model.norm.parameters()]}
    for param in model.parameters():
        param.requires_grad_(id(param) in trained)
    mask = batch.batch["response_mask"].float()
    verl_logps = _verl_logprobs(model, batch)
    old = batch.batch["rollout_log_probs"]
    loss_fn = get_policy_loss_fn(actor_config.policy_loss.loss_mode)
    verl_adv = batch.batch["advantages"]
    verl_loss, _ = loss_fn(old, verl_logps, verl_adv, mask, "token-mean", config=actor_config)
    verl_loss.backward()
    verl_grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    training, agl_batch = _agl_side(result, False)
    out = model(input_ids=agl_batch.input_ids, attention_mask=agl_batch.attention_mask)
    agl_logps = token_logprobs(out.logits[:, :-1], agl_batch.targets)
    agl_loss, _ = policy_loss(
        agl_logps, agl_batch.old_logps, agl_batch.advantages, agl_batch.loss_mask, clip_low=0.2, clip_high=0.28
    )
    agl_loss.backward()

    # the same logprobs of the same tokens, whatever the padding
    for i, row in enumerate(result.rows):
        n_p, n_r = len(row.prompt_token_ids), len(row.response_token_ids)
        assert torch.allclose(verl_logps[i, :n_r], agl_logps[i, n_p - 1 : n_p - 1 + n_r], atol=1e-4)
    ratio = torch.exp(verl_logps.detach() - old)[mask > 0]
    assert float(ratio.max()) < actor_config.clip_ratio_c  # verl's dual clip did not act
    assert float((ratio - 1).abs().max()) > 1e-6  # sampling-time and recomputed logprobs differ: the ratio is live
    assert verl_loss.detach().item() == pytest.approx(agl_loss.detach().item(), abs=1e-6)
    # ... and the same gradient through SmolLM2
    agl_grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert verl_grads.keys() == agl_grads.keys() and verl_grads
    for name, grad in verl_grads.items():
        assert float((grad - agl_grads[name]).abs().max()) <= 1e-3 * float(grad.abs().max()) + 1e-9, name

    # one optimizer step on verl's gradient moves each row's logprob the way its advantage says
    for name, param in model.named_parameters():
        param.grad = verl_grads.get(name)
    torch.optim.SGD(model.parameters(), lr=1e-3).step()
    with torch.no_grad():
        change = ((_verl_logprobs(model, batch) - verl_logps.detach()) * mask).sum(-1)
    assert float((change * verl_adv[:, 0]).sum()) > 0
