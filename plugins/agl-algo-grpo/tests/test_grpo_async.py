"""Asynchronous GRPO (``max_staleness``): the staleness accounting (versions carried from the proxy's records to
the samples, stale samples dropped and counted), the truncated importance weights of the decoupled objective (by
hand, and in the gradient of an update), ``max_staleness=0`` giving the synchronous gradients bit for bit, and an
asynchronous run end to end on the tiny model behind the real model server and proxy."""

from __future__ import annotations

import asyncio
import copy
import io
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console

from agl_algo_grpo import (
    GRPO,
    GRPOConfig,
    LLMPublisher,
    PolicyTrainer,
    RolloutSample,
    TrainingSample,
    assign_advantages,
    collate,
    importance_weights,
    policy_loss,
    split_stale,
)
from agl_algo_grpo.testing import synthetic_samples, tiny_llama, vowel_agent, with_sampling_logprobs
from agl_kernel import semconv
from agl_kernel.models import AttemptStatus, ProxyLLM, RolloutMode, Span, Triplet
from agl_kernel.store.memory import InMemoryLightningStore
from agl_kernel.trainer import Trainer

CPU = {"device": "cpu"}


# ------------------------------------------------------------------------------------------------ staleness


def _triplet(i: int) -> Triplet:
    return Triplet(prompt_token_ids=[1, 2, i], response_token_ids=[3 + i], reward=float(i))


def test_versions_reach_the_samples_and_stale_ones_are_split_off() -> None:
    rollouts = [
        RolloutSample("a", 0, [_triplet(0), _triplet(1)], final_reward=1.0, versions=[5, 4]),
        RolloutSample("b", 0, [_triplet(2)], final_reward=0.0, versions=[3]),
        RolloutSample("c", 1, [_triplet(3)], final_reward=0.5),  # no versions: unknown, counted as current
        RolloutSample("d", 1, [_triplet(4)], final_reward=0.0, versions=[None]),
    ]
    samples = assign_advantages(rollouts)
    assert [s.version for s in samples] == [5, 4, 3, None, None]
    # the advantages are given over the whole group, the stale rollout's reward included
    assert samples[0].advantage > 0 > samples[2].advantage

    kept, dropped = split_stale(samples, version=5, max_staleness=1)
    assert [s.version for s in kept] == [5, 4, None, None] and [s.version for s in dropped] == [3]
    kept, dropped = split_stale(samples, version=5, max_staleness=2)
    assert len(kept) == 5 and dropped == []
    kept, dropped = split_stale(samples, version=5, max_staleness=0)
    assert [s.version for s in dropped] == [4, 3]
    with pytest.raises(ValueError, match="max_staleness"):
        GRPOConfig(max_staleness=-1)
    with pytest.raises(ValueError, match="importance_cap"):
        GRPOConfig(importance_cap=0.5)


# ------------------------------------------------------------------------------------------------ the weights


def test_importance_weights_are_the_truncated_ratio() -> None:
    # three tokens sampled by version v-k: the proximal policy (v) finds them likelier, as likely, much likelier
    behaviour = torch.log(torch.tensor([[0.2, 0.5, 0.1, 0.3]]))
    proximal = torch.log(torch.tensor([[0.3, 0.5, 0.9, 0.6]]))
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the last position is not scored
    weights, truncated = importance_weights(proximal, behaviour, mask, cap=2.0)
    assert weights.tolist()[0] == pytest.approx([1.5, 1.0, 2.0, 1.0])  # 0.9/0.1 = 9 is truncated to 2
    assert truncated.tolist() == [[0.0, 0.0, 1.0, 0.0]]
    weights, truncated = importance_weights(proximal, behaviour, mask, cap=10.0)
    assert weights.tolist()[0] == pytest.approx([1.5, 1.0, 9.0, 1.0]) and truncated.sum() == 0

    # the loss: each token's clipped term times its weight; without weights, exactly the plain loss
    new = torch.tensor([[-1.0, -0.5, -0.2, -3.0]], requires_grad=True)
    old, advantage = proximal.clone(), torch.tensor([2.0])
    plain, _ = policy_loss(new, old, advantage, mask)
    weighted, _ = policy_loss(new, old, advantage, mask, weights=weights)
    (plain_grad,) = torch.autograd.grad(plain, new)
    (weighted_grad,) = torch.autograd.grad(weighted, new)
    assert torch.allclose(weighted_grad, plain_grad * weights * mask)
    same, _ = policy_loss(new, old, advantage, mask, weights=None)
    assert torch.equal(same, plain)


class _GradientRecorder:
    """Keeps a copy of each parameter's gradient at every optimizer step of a PolicyTrainer (the real optimizer
    still steps)."""

    def __init__(self, policy: PolicyTrainer) -> None:
        self.steps: list[list[torch.Tensor]] = []
        step = policy.optimizer.step

        def recording(*args: Any, **kwargs: Any) -> Any:
            self.steps.append([p.grad.detach().clone() for p in policy.parameters])
            return step(*args, **kwargs)

        policy.optimizer.step = recording  # type: ignore[method-assign]


def _versioned(samples: list[TrainingSample], version: int | None) -> list[TrainingSample]:
    return [TrainingSample(s.triplet, s.advantage, s.group, s.rollout_id, version) for s in samples]


def test_k0_gives_the_synchronous_gradients_exactly(samples: list[TrainingSample]) -> None:
    """A step whose samples all come from the policy being updated: no importance weight, no recomputed logprob;
    the gradients and the new weights are those of synchronous GRPO bit for bit, whatever max_staleness is."""
    gradients, weights = [], []
    for max_staleness, version in [(0, None), (0, 0), (2, 0)]:
        policy = PolicyTrainer(tiny_llama(), GRPOConfig(learning_rate=1e-3, max_staleness=max_staleness, **CPU))
        recorder = _GradientRecorder(policy)
        metrics = policy.train_step(_versioned(with_sampling_logprobs(policy, samples), version))
        assert metrics["recomputed_logprobs"] == 0 and "stale_tokens" not in metrics
        gradients.append(recorder.steps)
        weights.append({k: v.detach().clone() for k, v in policy.model.state_dict().items()})
    for other in gradients[1:]:
        assert len(other) == len(gradients[0]) == 1
        assert all(torch.equal(a, b) for a, b in zip(gradients[0][0], other[0]))
    for other in weights[1:]:
        assert all(torch.equal(weights[0][k], other[k]) for k in weights[0])


@pytest.mark.parametrize("cap", [2.0, 1.0])
def test_a_stale_sample_is_weighted_as_the_formula_says(samples: list[TrainingSample], cap: float) -> None:
    """Samples recorded by version 0, trained on by version 2 (k = 2): the update's gradient is that of
    ``-Σ min(π_prox/π_behav, C) · A · π_θ/π_prox / N`` over the scored tokens, with π_prox the weights at the start
    of the update (where the ratio π_θ/π_prox is 1, inside the clip)."""
    config = GRPOConfig(learning_rate=3e-3, micro_batch_size=8, max_grad_norm=None, importance_cap=cap, **CPU)
    policy = PolicyTrainer(tiny_llama(), config)
    stale = _versioned(with_sampling_logprobs(policy, samples), 0)  # what version 0 sampled and recorded
    policy.train_step(synthetic_samples(seed=7))  # two updates move the policy on: it is version 2
    policy.train_step(synthetic_samples(seed=8))
    assert policy.version == 2

    # the expected gradient, by hand, on a copy of the current weights
    model = copy.deepcopy(policy.model).eval()
    batch = collate(stale)  # the recorded (behaviour) logprobs, aligned with the scored positions
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
    new = torch.log_softmax(logits, -1).gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)
    mask = batch.loss_mask
    proximal = new.detach()
    ratio_to_behaviour = torch.exp(proximal - batch.old_logps)
    w = torch.where(mask > 0, torch.clamp(ratio_to_behaviour, max=cap), torch.ones_like(new))
    loss = -(w * batch.advantages[:, None] * torch.exp(new - proximal) * mask).sum() / mask.sum()
    loss.backward()
    expected = {name: p.grad for name, p in model.named_parameters()}

    recorder = _GradientRecorder(policy)
    metrics = policy.train_step(stale)
    [got] = recorder.steps
    names = [name for name, p in policy.model.named_parameters() if p.requires_grad]
    for name, gradient in zip(names, got):
        assert torch.allclose(gradient, expected[name], rtol=1e-3, atol=1e-6), name
    scored = mask > 0
    assert metrics["stale_tokens"] == float(scored.sum())
    assert metrics["is_weight_mean"] == pytest.approx(float(w[scored].mean()), rel=1e-4)
    truncated = float((ratio_to_behaviour[scored] > cap).float().mean())
    assert metrics["is_truncated_fraction"] == pytest.approx(truncated, abs=1e-6)
    assert metrics["recomputed_logprobs"] == len(stale)  # the proximal logprobs: the current weights'
    if cap == 1.0:
        assert 0 < truncated < 1  # some tokens became likelier, some less: the cap cut the first ones only


def test_the_proximal_logprobs_come_from_the_updates_own_forward_pass(samples: list[TrainingSample]) -> None:
    """One optimizer step per update (the default): the stale rows' proximal logprobs are those of the update's own
    forward pass, on the same weights as a pass of their own would be. Same gradients and weights, one forward pass
    per micro-batch instead of two. A model with dropout (or several optimizer steps per update) keeps the pass."""
    results = []
    for own_pass in (False, True):
        policy = PolicyTrainer(tiny_llama(), GRPOConfig(learning_rate=1e-3, micro_batch_size=8, **CPU))
        stale = _versioned(with_sampling_logprobs(policy, samples), 0)
        policy.train_step(synthetic_samples(seed=7))  # version 1: the samples are a version old
        if own_pass:
            policy._without_dropout = False  # what a model with dropout gets
        forwards: list[int] = []
        hook = policy.model.get_input_embeddings().register_forward_hook(lambda *_, seen=forwards: seen.append(1))
        recorder = _GradientRecorder(policy)
        metrics = policy.train_step(stale)
        hook.remove()
        results.append((recorder.steps, len(forwards), metrics))
    (in_update, forwards_in_update, metrics), (own, forwards_own, metrics_own) = results
    batches = math.ceil(len(samples) / 8)
    assert (forwards_in_update, forwards_own) == (batches, 2 * batches)
    assert len(in_update) == len(own) == 1
    for a, b in zip(in_update[0], own[0]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    for key in ("stale_tokens", "is_weight_mean", "is_truncated_fraction", "recomputed_logprobs"):
        assert metrics[key] == pytest.approx(metrics_own[key], rel=1e-5), key

    dropping = tiny_llama()
    dropping.config.attention_dropout = 0.1
    assert PolicyTrainer(dropping, GRPOConfig(**CPU))._proximal_in_update(8) is False
    assert PolicyTrainer(tiny_llama(), GRPOConfig(epochs_per_step=2, **CPU))._proximal_in_update(8) is False
    assert (
        PolicyTrainer(tiny_llama(), GRPOConfig(micro_batch_size=4, grad_accumulation=1, **CPU))._proximal_in_update(8)
        is False
    )


# ------------------------------------------------------------------------------------------------ the loop


class _Served:
    """A stand-in model server in this process: a copy of the model that takes weight updates."""

    def __init__(self) -> None:
        self.model = tiny_llama(seed=42).eval()
        self.version: int | None = None  # the policy version loaded

    async def load_weights(self, state_dict: dict[str, torch.Tensor], *, version: int) -> None:
        self.model.load_state_dict(state_dict)
        self.version = version

    @torch.no_grad()
    def sample(self, prompt: list[int], generator: torch.Generator) -> tuple[list[int], list[float]]:
        ids, tokens, logps = list(prompt), [], []
        for _ in range(3):
            probs = torch.softmax(self.model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)
            token = int(torch.multinomial(probs, 1, generator=generator))
            tokens.append(token), logps.append(math.log(float(probs[token]))), ids.append(token)
        return tokens, logps


async def _runner(
    store: InMemoryLightningStore,
    served: _Served,
    stop: asyncio.Event,
    worker: str = "w1",
    wait: float = 0.0,
    val_wait: float = 0.0,
) -> None:
    """Runs each task as a proxy would record it: an LLM span with the rollout's resources id and version (the
    newest, looked up when the call is made) — except ``lagging`` tasks, whose agent keeps the first resources
    version it saw (a runner that never refreshes its LLM), so their samples grow staler every step."""
    generator = torch.Generator().manual_seed(0)
    first_seen: int | None = None
    while not stop.is_set():
        attempted = await store.dequeue_rollout(worker_id=worker, timeout=0.05)
        if attempted is None:
            continue
        if attempted.mode is RolloutMode.VAL and val_wait:
            await asyncio.sleep(val_wait)
        elif wait:
            await asyncio.sleep(wait)
        resources = await store.get_resources(attempted.resources_id)
        first_seen = resources.version if first_seen is None else first_seen
        version = first_seen if attempted.input["lagging"] else resources.version
        tokens, logps = served.sample(attempted.input["prompt"], generator)
        llm = {
            semconv.GEN_AI_OPERATION_NAME: "chat",
            semconv.LLM_PROMPT_TOKEN_IDS: attempted.input["prompt"],
            semconv.LLM_RESPONSE_TOKEN_IDS: tokens,
            semconv.LLM_RESPONSE_LOGPROBS: logps,
            semconv.RESOURCES_ID: attempted.resources_id,
            semconv.RESOURCES_VERSION: version,
            "test.served_version": served.version,
        }
        reward = sum(t < 64 for t in tokens) / len(tokens)
        for name, attributes in [("chat tiny", llm), (semconv.REWARD_SPAN, {semconv.REWARD_VALUE: reward})]:
            span = Span(
                rollout_id=attempted.rollout_id,
                attempt_id=attempted.attempt.attempt_id,
                trace_id="ab" * 16,
                span_id=os.urandom(8).hex(),
                name=name,
                attributes=attributes,
            )
            await store.add_span(span)
        await store.update_attempt(attempted.rollout_id, attempted.attempt.attempt_id, status=AttemptStatus.SUCCEEDED)


async def _run_grpo(
    tasks: list[dict[str, Any]],
    console: Console,
    *,
    runners: int = 1,
    wait: float = 0.0,
    val_wait: float = 0.0,
    **options: Any,
) -> tuple[Any, list[Any], list[Any]]:
    """GRPO on the tiny model behind :class:`_Served`, ``runners`` :func:`_runner` running its rollouts (each
    waiting ``wait`` seconds after taking one, ``val_wait`` a validation's, as on its environment), the first task
    as the validation set: (the
    report, its training and validation rollouts in creation order — the queue's order —, the policy version each
    validation rollout's call was served by)."""
    served = _Served()
    publisher = LLMPublisher(served, ProxyLLM(endpoint="http://127.0.0.1:1/v1", model="tiny"))
    grpo = GRPO(
        tiny_llama(),
        publisher=publisher,
        console=console,
        learning_rate=1e-2,
        micro_batch_size=8,
        skip_zero_advantage=False,
        **options,
        **CPU,
    )
    async with InMemoryLightningStore() as store:
        stop = asyncio.Event()
        running = [asyncio.create_task(_runner(store, served, stop, f"w{i}", wait, val_wait)) for i in range(runners)]
        try:
            report = await asyncio.wait_for(grpo.run(store, tasks, tasks[:1]), timeout=120)
        finally:
            stop.set()
            await asyncio.gather(*running)
        rollouts = (await store.query_rollouts(mode_in=[RolloutMode.TRAIN, RolloutMode.VAL])).items
        # the policy version the model server held when each validation call was served
        validated = []
        for rollout in rollouts:
            if rollout.mode is RolloutMode.VAL:
                spans = (await store.query_spans(rollout.rollout_id, "latest")).items
                [call] = [s for s in spans if s.name == "chat tiny"]
                validated.append((rollout.metadata["grpo_validation"], call.attributes["test.served_version"]))
    return report, rollouts, validated


_TWO_TASKS = [{"prompt": [5, 17, 33, 2], "lagging": False}, {"prompt": [9, 90, 4], "lagging": False}]
"""Two tasks whose agents keep up with the published version (the first is also the validation set)."""


def _queue_order(rollouts: list[Any]) -> list[str]:
    """The queue's order (rollouts in creation order), a name per run of rollouts: ``val N`` or ``step N``."""
    order: list[str] = []
    for rollout in rollouts:
        meta = rollout.metadata
        name = f"val {meta['grpo_validation']}" if rollout.mode is RolloutMode.VAL else f"step {meta['grpo_step']}"
        if not order or order[-1] != name:
            order.append(name)
    return order


@pytest.mark.asyncio
async def test_stale_samples_are_dropped_and_counted_in_the_loop() -> None:
    """max_staleness=1 over 4 steps: the rollouts of step s+1 are enqueued (ahead) with step s's; the lagging
    agent's samples are 0, 1, 2, 3 versions old at steps 1..4: dropped from step 3 on, in the step's metrics and
    the report; the others are trained on, importance-weighted where one version old. Validations (every step)
    run in the background, each on the version it validates."""
    tasks = [{"prompt": [5, 17, 33, 2], "lagging": False}, {"prompt": [9, 90, 4], "lagging": True}]
    out = io.StringIO()
    report, rollouts, validated = await _run_grpo(
        tasks, Console(file=out, width=250), steps=4, batch_size=2, group_size=4, max_staleness=1, val_every=1
    )
    # validations ran in the background while the next step trained, each on the version it validates
    assert sorted(validated) == [(step, step) for step in range(5)]
    assert [v["val_rollouts"] for v in report.validations] == [1.0] * 5
    assert [v["run_time_s"] for v in report.validations] == sorted(v["run_time_s"] for v in report.validations)
    dropped = [m["stale_dropped"] for m in report.history]
    assert dropped == [0.0, 0.0, 4.0, 4.0]  # the lagging task's group of 4, 2 and 3 versions old
    assert report.stale_dropped == 8 and report.steps_done == 4
    assert [m["staleness_max"] for m in report.history] == [0.0, 1.0, 1.0, 1.0]
    assert all(m["triplets"] == 8 and m["triplets_trained"] == 8 - d for m, d in zip(report.history, dropped))
    assert report.history[1]["stale_tokens"] > 0  # the lagging group, one version old, importance-weighted
    # enqueued ahead: steps 0 and 1 under version 0, step s+1 under version s after that
    train = [r for r in rollouts if r.mode is RolloutMode.TRAIN]
    enqueued = {(r.metadata["grpo_step"], r.metadata["policy_version"]) for r in train}
    assert enqueued == {(0, 0), (1, 0), (2, 1), (3, 2)}
    assert "dropped" in out.getvalue() and "stale" in out.getvalue()  # the console's asynchronous columns


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("runners", "order"),
    [
        # one runner: 3 is enqueued after val 2, not with 1 and 2 at step 1's start
        (1, "val 0, step 0, step 1, step 2, val 2, step 3, step 4, val 4, val 5"),
        # a runner for every rollout in flight: 3 is enqueued with step 1's, before val 2
        (8, "val 0, step 0, step 1, step 2, step 3, val 2, step 4, val 4, val 5"),
    ],
)
async def test_the_look_ahead_is_cut_before_a_background_validation_only_when_runners_are_short(
    runners: int, order: str
) -> None:
    """max_staleness=2, a validation every 2 steps (val 2 and val 4 run in the background), each rollout taking 0.2 s
    as on its environment. With one runner the rollouts enqueued ahead wait in the store's FIFO queue, so the steps
    after a validation's next are enqueued only after the validation's rollouts (it holds the next publish until it
    ends; behind two steps of training rollouts it would stall the run). With runners to spare nothing waits in the
    queue, the validation will find a free runner, and the look-ahead stays whole: the steps after a validation do
    not start from an empty pipeline. Each validation samples the version it validates."""
    report, rollouts, validated = await _run_grpo(
        _TWO_TASKS,
        Console(file=io.StringIO()),
        runners=runners,
        wait=0.2,
        steps=5,
        batch_size=1,
        group_size=2,
        max_staleness=2,
        val_every=2,
    )
    assert _queue_order(rollouts) == order.split(", ")
    assert validated == [(0, 0), (2, 2), (4, 4), (5, 5)]
    assert report.steps_done == 5 and len(report.validations) == 4
    assert max(m["staleness_max"] for m in report.history) <= 2


@pytest.mark.asyncio
async def test_a_slow_validation_holds_its_version_but_not_the_step_after_the_next() -> None:
    """max_staleness=2, a validation every 3 steps whose rollouts take 1.5 s, runners to spare: the validation
    holds the version it validates, but the step after the next one does not wait for it (the published version
    is one behind, within the bound): it trains on what the runners sampled and ends before the validation does;
    the step after that waits (two behind). While the publish is deferred the look-ahead counts from the published
    version, so nothing sampled meanwhile is too stale to train on: nothing is dropped. Each validation samples the
    version it validates."""
    report, rollouts, validated = await _run_grpo(
        _TWO_TASKS,
        Console(file=io.StringIO()),
        runners=8,
        val_wait=1.5,
        steps=7,
        batch_size=1,
        group_size=2,
        max_staleness=2,
        val_every=3,
    )
    assert validated == [(0, 0), (3, 3), (6, 6), (7, 7)]
    after_three = report.validations[1]
    assert report.history[4]["run_time_s"] < after_three["run_time_s"]  # step 5 did not wait for validation 3
    assert report.history[5]["run_time_s"] > after_three["run_time_s"]  # step 6 did (version 3 would be 3 behind)
    assert report.stale_dropped == 0 and max(m["staleness_max"] for m in report.history) <= 2
    # step 7 (index 6) was not enqueued during the deferral, under version 4, but once version 5 was published
    enqueued = {r.metadata["grpo_step"]: r.metadata["policy_version"] for r in rollouts if r.mode is RolloutMode.TRAIN}
    assert enqueued[6] == 5


@pytest.mark.asyncio
@pytest.mark.parametrize("staleness", [0, 2])
async def test_the_first_policys_validation_runs_beside_the_first_steps_only_when_asynchronous(staleness: int) -> None:
    """Validations whose rollouts take 1.5 s, runners to spare: asynchronously the first policy's validation runs in
    the background like the later ones (its rollouts and the first step's sample the same version), so the first
    two steps end before it does; synchronously the run waits for it before the first step."""
    report, _, validated = await _run_grpo(
        _TWO_TASKS,
        Console(file=io.StringIO()),
        runners=8,
        val_wait=1.5,
        steps=3,
        batch_size=1,
        group_size=2,
        max_staleness=staleness,
        val_every=0,
    )
    assert validated == [(0, 0), (3, 3)]
    first = report.validations[0]["run_time_s"]
    if staleness:
        assert report.history[1]["run_time_s"] < first
        assert report.stale_dropped == 0 and max(m["staleness_max"] for m in report.history) <= staleness
    else:
        assert report.history[0]["run_time_s"] > first


# ------------------------------------------------------------------------------------------------ end to end


@pytest.mark.asyncio
async def test_an_asynchronous_run_end_to_end_on_the_tiny_model(tmp_path: Path) -> None:
    """GRPO selected by name serves the tiny model itself (model server + proxy on 127.0.0.1) with max_staleness=1
    and 16 runners: step s+1's rollouts run while step s updates, sampled by version s while version s+1 trains on
    them; their versions come from the proxy's records and their loss is importance-weighted."""
    trainer = Trainer(
        algorithm="grpo",
        n_runners=16,
        store="memory",
        options={
            "algorithm": {
                "model": "agl_algo_grpo.testing:tiny_chat_model",
                "steps": 3,
                "batch_size": 2,
                "group_size": 4,
                "max_tokens": 8,
                "learning_rate": 0.05,
                "micro_batch_size": 8,
                "max_staleness": 1,
                "skip_zero_advantage": False,
                "device": "cpu",
                "console": False,
                "checkpoint_dir": str(tmp_path / "ckpt"),
            }
        },
        progress=False,
        console=Console(file=io.StringIO()),
    )
    # the agent waits 0.3 s after its call, as on its environment
    tasks = [{"question": "one two three", "wait_seconds": 0.3}, {"question": "hello world", "wait_seconds": 0.3}]
    report = await trainer.fit_async(vowel_agent, tasks)
    assert report.steps_done == 3 and report.stale_dropped == 0
    assert all(m["rollouts_succeeded"] == 8 and m["triplets_trained"] == 8 for m in report.history)
    # step 1's rollouts ran with step 0's (16 runners): sampled by version 0, trained on by version 1
    assert report.history[1]["staleness_mean"] == 1.0 and report.history[1]["stale_tokens"] > 0
    assert 0 < report.history[1]["is_weight_mean"] <= 2.0
    assert all(m["staleness_max"] <= 1 for m in report.history)
    rollouts = (await trainer.store.query_rollouts(mode_in=[RolloutMode.TRAIN])).items
    assert {(r.metadata["grpo_step"], r.metadata["policy_version"]) for r in rollouts} == {(0, 0), (1, 0), (2, 1)}
    await trainer.store.close()
