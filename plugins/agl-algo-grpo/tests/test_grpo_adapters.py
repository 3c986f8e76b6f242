"""One LoRA adapter per agent role: routing (a triplet of role A never changes adapter B), one optimizer per
adapter, per-role advantages, checkpoints of every adapter, the adapters served by the real model server, and
bad configurations."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console

from agl_algo_grpo._adapters import RoleRewards, route, split_rollouts
from agl_algo_grpo._batching import RolloutSample, assign_advantages
from agl_algo_grpo._config import LoraSettings, adapter_settings, make_config
from agl_algo_grpo._policy import PolicyTrainer
from agl_algo_grpo.testing import synthetic_samples, tiny_llama, vowel_share
from agl_kernel import semconv
from agl_kernel.adapters import TripletAdapter
from agl_kernel.agent import openai_client, rollout
from agl_kernel.emit import emit_reward
from agl_kernel.errors import ConfigError
from agl_kernel.models import LLM, RolloutMode, Triplet
from agl_kernel.rewards import final_reward

pytest.importorskip("peft", reason="LoRA adapters need peft: pip install 'agl-algo-grpo[lora]'")

CPU = {"device": "cpu", "console": False}
ROLES = {"planner": {"r": 4, "alpha": 8}, "solver": {"r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]}}


def _weights(policy: PolicyTrainer, name: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in policy.model.state_dict().items() if f".{name}." in k}


def _policy(tmp_path: Path, **options: Any) -> PolicyTrainer:
    config = make_config({"adapters": ROLES, "learning_rate": 1e-2, "checkpoint_dir": str(tmp_path), **CPU}, **options)
    policy = PolicyTrainer(tiny_llama(), config)
    # peft starts B at zero (the adapter is a no-op); give every adapter weights so that the updates differ
    with torch.no_grad():
        for key, value in policy.model.named_parameters():
            if "lora_B" in key:
                value.normal_(0, 0.05)
    return policy


def _as_role(samples: list, role: str) -> list:
    return [type(s)(s.triplet, s.advantage, (s.group, role), s.rollout_id) for s in samples]


def test_a_triplet_of_one_role_never_changes_another_adapter(tmp_path: Path) -> None:
    policy = _policy(tmp_path)
    base = {k: v.detach().clone() for k, v in policy.model.state_dict().items() if "lora_" not in k}
    planner, solver = _weights(policy, "planner"), _weights(policy, "solver")
    metrics = policy.train_adapters({"planner": _as_role(synthetic_samples(), "planner")})
    assert policy.step == 1 and metrics["planner/sequences"] == 8
    after = _weights(policy, "planner")
    assert any(not torch.equal(after[k], planner[k]) for k in planner)  # the planner learnt
    assert all(torch.equal(v, solver[k]) for k, v in _weights(policy, "solver").items())  # the solver did not move
    assert not policy.optimizer["solver"].state  # ... nor did its optimizer's moments
    # the solver's turn leaves the planner as it is
    policy.train_adapters({"solver": _as_role(synthetic_samples(seed=2), "solver")})
    assert all(torch.equal(v, after[k]) for k, v in _weights(policy, "planner").items())
    assert any(not torch.equal(v, solver[k]) for k, v in _weights(policy, "solver").items())
    # and the base model is frozen throughout
    state = policy.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in base.items())


def test_triplets_are_routed_by_the_model_their_call_named() -> None:
    def triplet(model: str | None, reward: float) -> Triplet:
        return Triplet(prompt_token_ids=[1, 2], response_token_ids=[3], reward=reward, metadata={"model": model})

    rollouts = [
        RolloutSample("r1", 0, [triplet("policy:planner", 1.0), triplet("policy:solver", 0.0)]),
        RolloutSample("r2", 0, [triplet("policy:planner", 0.0), triplet("policy:solver", 1.0), triplet("x", 1)]),
        RolloutSample("r3", 0, [triplet("policy", 1.0), triplet("policy:critic", 1.0)]),
    ]
    split, metrics = split_rollouts(rollouts, ["planner", "solver"])
    # another model, the base model, an adapter not trained here; each role's mean reward
    assert metrics == {"triplets_unrouted": 3.0, "reward_planner": 0.5, "reward_solver": 0.5}
    assert sorted(s.group for s in split) == [(0, "planner"), (0, "planner"), (0, "solver"), (0, "solver")]
    samples = assign_advantages(split)
    routed = route(samples, ["planner", "solver"])
    assert [s.triplet.metadata["model"] for s in routed["planner"]] == ["policy:planner"] * 2
    assert [s.triplet.metadata["model"] for s in routed["solver"]] == ["policy:solver"] * 2
    # advantages per role: each role's rewards compared with the same role's (planner r1 > r2; solver r2 > r1)
    planner = {s.rollout_id: s.advantage for s in routed["planner"]}
    solver = {s.rollout_id: s.advantage for s in routed["solver"]}
    assert planner["r1"] > 0 > planner["r2"] and solver["r2"] > 0 > solver["r1"]


def test_checkpoints_save_and_restore_every_adapter(tmp_path: Path) -> None:
    policy = _policy(tmp_path)
    policy.train_adapters(
        {
            "planner": _as_role(synthetic_samples(), "planner"),
            "solver": _as_role(synthetic_samples(seed=3), "solver"),
        }
    )
    path = policy.save_checkpoint()
    saved = {name: _weights(policy, name) for name in ("planner", "solver")}
    moments = {n: policy.optimizer[n].state_dict()["state"] for n in ("planner", "solver")}
    resumed = PolicyTrainer(tiny_llama(), make_config(policy.config, resume=True))
    assert resumed.resumed_from == path and resumed.step == 1
    for name in ("planner", "solver"):
        assert all(torch.equal(v, saved[name][k]) for k, v in _weights(resumed, name).items())
        restored = resumed.optimizer[name].state_dict()["state"]
        assert all(torch.equal(restored[i]["exp_avg"], moments[name][i]["exp_avg"]) for i in moments[name])
    with pytest.raises(ValueError, match=r"holds the adapters \['planner', 'solver'\].*trains \['planner'\]"):
        PolicyTrainer(tiny_llama(), make_config(policy.config, resume=True, adapters=["planner"]))


def test_serving_an_adapter_gives_the_trainers_logprobs(tmp_path: Path) -> None:
    """The tensors published for an adapter, served by the real model server next to the other adapter, give the
    trainer's greedy tokens under that adapter."""
    from agl_model_server import ModelServer
    from agl_model_server.testing import make_tiny_model, make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(len(tokenizer))
    served = make_tiny_model(len(tokenizer))
    config = make_config({"adapters": ROLES, "learning_rate": 1e-2, "checkpoint_dir": str(tmp_path), **CPU})
    policy = PolicyTrainer(model, config)
    with torch.no_grad():
        for key, value in policy.model.named_parameters():
            if "lora_B" in key:
                value.normal_(0, 0.5)
    prompt = tokenizer("the quick brown fox")["input_ids"]
    with ModelServer(model=served, tokenizer=tokenizer, model_name="policy", static_decode=True) as server:
        for name in ("planner", "solver"):
            state, scale = policy.adapter_state_for_serving(name)
            server.load_adapter(name, state, scale=scale)
        for name in ("planner", "solver"):
            policy.model.set_adapter(name)
            ids = list(prompt)
            with torch.no_grad():
                for _ in range(8):
                    ids.append(int(policy.model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
            got = server.generate(prompt, max_tokens=8, temperature=0, adapter=name)["token_ids"]
            assert got == ids[len(prompt) :], name


@pytest.mark.parametrize(
    ("adapters", "message"),
    [
        (["planner", "planner"], "algorithm.adapters: must name each adapter once; given twice: 'planner'"),
        ([], "algorithm.adapters: must name at least one adapter"),
        (["policy:planner"], "algorithm.adapters: must hold names of letters, digits"),
        ("planner,,planner", "given twice: 'planner'"),
        (["a", "solver"], "algorithm.adapters: must not use a name that is part of 'lora_'"),
        ({"planner": {"rank": 4}}, "algorithm.adapters"),
    ],
)
def test_bad_adapters_are_clear_errors(adapters: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as info:
        make_config(adapters=adapters)
    assert "\n" not in str(info.value)


def test_adapters_from_the_command_line_take_the_lora_settings() -> None:
    config = make_config(adapters="planner,solver")
    assert adapter_settings(config) == {"planner": LoraSettings(), "solver": LoraSettings()}
    config = make_config(adapters='["planner", "solver"]', lora=LoraSettings(r=4))
    assert adapter_settings(config) == {"planner": LoraSettings(r=4), "solver": LoraSettings(r=4)}


@rollout
async def two_roles(task: dict[str, Any], resources: dict[str, Any], attempted: Any) -> None:
    """A planner then a solver, each calling the model under its own adapter (its own LLM resource), each rewarded
    for its own reply (a named value of the final reward, named by the role)."""
    rewards = {}
    for role, scorer in (("planner", vowel_share), ("solver", lambda text: 1.0 - vowel_share(text))):
        llm = resources[role]
        url = llm.get_base_url(attempted.rollout_id, attempted.attempt.attempt_id)
        client = openai_client(LLM(endpoint=url, model=llm.model), max_retries=0, timeout=120)
        params = {k: v for k, v in llm.sampling_parameters.items() if k in ("temperature", "max_tokens")}
        reply = await client.chat.completions.create(
            model=llm.model, messages=[{"role": "user", "content": task["question"]}], **params
        )
        rewards[role] = scorer(reply.choices[0].message.content or "")
    emit_reward({"task": sum(rewards.values()) / 2, **rewards}, primary="task")


@pytest.mark.asyncio
async def test_two_roles_train_their_own_adapters_end_to_end(tmp_path: Path) -> None:
    """GRPO by name with two adapters: the model server serves both over one base model, the proxy records which
    adapter served each call, and each role's triplets update its own adapter only."""
    from agl_kernel.trainer import Trainer

    options = {
        "model": "agl_algo_grpo.testing:tiny_chat_model",
        "adapters": {"planner": {"r": 4}, "solver": {"r": 2, "target_modules": ["q_proj", "v_proj"]}},
        "steps": 2,
        "batch_size": 2,
        "group_size": 4,
        "max_tokens": 8,
        "learning_rate": 0.05,
        "checkpoint_every": 2,
        "checkpoint_dir": str(tmp_path / "ckpt"),
        **CPU,
    }
    trainer = Trainer(
        algorithm="grpo",
        n_runners=4,
        store="memory",
        options={"algorithm": options},
        progress=False,
        console=Console(file=io.StringIO()),
    )
    tasks = [{"question": "one two three"}, {"question": "hello world"}, {"question": "what is the answer?"}]
    report = await trainer.fit_async(two_roles, tasks)
    assert report.steps_done == 2
    for metrics in report.history:
        assert metrics["triplets"] == 16 and metrics["triplets_unrouted"] == 0
        assert 0 <= metrics["reward_planner"] <= 1 and 0 <= metrics["reward_solver"] <= 1
    trained = [m for m in report.history if "planner/sequences" in m or "solver/sequences" in m]
    assert trained, report.history
    # the resources: one LLM per role, model policy:<role>; main_llm is the first adapter
    rollouts = (await trainer.store.query_rollouts(mode_in=[RolloutMode.TRAIN])).items
    resources = (await trainer.store.get_resources(rollouts[-1].resources_id)).resources
    assert resources["planner"].model == "policy:planner" and resources["solver"].model == "policy:solver"
    assert resources["main_llm"].model == "policy:planner"
    # the proxy recorded the adapter that served each call, and the adapter's per-role reward reached the triplets
    spans = (await trainer.store.query_spans(rollouts[0].rollout_id, "latest")).items
    models = sorted(s.attributes.get(semconv.GEN_AI_RESPONSE_MODEL) for s in spans if s.name.startswith("chat "))
    assert models == ["policy:planner", "policy:solver"]
    triplets = RoleRewards(TripletAdapter(), ["planner", "solver"]).adapt(spans).triplets
    assert [t.metadata["model"] for t in triplets] == ["policy:planner", "policy:solver"]
    named = final_reward(spans).values  # each role's own reward went to its triplet
    assert [t.reward for t in triplets] == [named["planner"], named["solver"]]
    # each adapter's checkpoint is on disk
    assert (Path(report.checkpoint) / "model" / "planner").is_dir()
    assert (Path(report.checkpoint) / "model" / "solver").is_dir()
    await trainer.store.close()
