"""The VERL algorithm's options and their mapping onto verl's Hydra config. The mapping's strings need only the
kernel; composing them with verl's own config (every mapped key exists, user overrides win, typos are one line)
needs verl."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from agl_algo_verl import VERL, VERLOptions, hydra_overrides
from agl_kernel.errors import ConfigError, MissingDependencyError
from agl_kernel.plugins import create_component


def test_verl_is_selected_by_name_with_typed_options_from_strings() -> None:
    algo = create_component(
        "algorithms",
        "verl",
        options={"model": "Qwen/Qwen2.5-0.5B-Instruct", "steps": "3", "learning_rate": "2e-6", "kl_coef": "0.01",
                 "overrides": '["actor_rollout_ref.actor.entropy_coeff=0.001", "trainer.nnodes=2"]'},
    )  # fmt: skip
    assert isinstance(algo, VERL)
    o = algo.options
    assert (o.steps, o.learning_rate, o.kl_coef) == (3, 2e-6, 0.01)
    assert o.overrides == ("actor_rollout_ref.actor.entropy_coeff=0.001", "trainer.nnodes=2")
    overrides = hydra_overrides(o)
    assert "actor_rollout_ref.model.path=Qwen/Qwen2.5-0.5B-Instruct" in overrides
    assert "actor_rollout_ref.actor.optim.lr=2e-06" in overrides
    assert "actor_rollout_ref.actor.use_kl_loss=true" in overrides
    assert "actor_rollout_ref.rollout.n=4" in overrides and "trainer.use_v1=false" in overrides
    # the user's overrides come last: Hydra applies them over the mapped ones
    assert overrides[-2:] == ["actor_rollout_ref.actor.entropy_coeff=0.001", "trainer.nnodes=2"]


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"steps": "0"}, "algorithm.steps"),
        ({"clip_low": "1.5"}, "algorithm.clip_low"),
        ({"overrides": "no-equals-sign"}, "algorithm.overrides: must be Hydra overrides 'key.path=value'"),
        ({"learning_rate": "fast"}, "algorithm.learning_rate"),
        ({"ppo_mini_batch": "4"}, "ppo_mini_batch_size"),  # a typo: the valid key is suggested
    ],
)
def test_bad_options_are_one_line_errors(options: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError) as err:
        create_component("algorithms", "verl", options=options)
    assert words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.skipif(importlib.util.find_spec("verl") is not None, reason="verl is installed here")
@pytest.mark.asyncio
async def test_without_verl_run_says_what_to_install() -> None:
    from agl_kernel.store.memory import InMemoryLightningStore

    async with InMemoryLightningStore() as store:
        with pytest.raises(MissingDependencyError) as err:
            await VERL(model="m").run(store, [{"q": 1}])
    assert "pip install 'agl-algo-verl[verl]'" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.verl
def test_the_mapped_options_compose_with_verls_own_config() -> None:
    from verl.utils.config import omega_conf_to_dataclass

    from agl_algo_verl._trainer import verl_config

    options = VERLOptions(
        model="/models/m", steps=7, batch_size=16, group_size=8, learning_rate=3e-6, ppo_mini_batch_size=4,
        clip_low=0.2, clip_high=0.28, kl_coef=0.001, scale_rewards=False, max_tokens=256, n_gpus_per_node=8,
        overrides=("actor_rollout_ref.actor.entropy_coeff=0.001", "actor_rollout_ref.rollout.n=5"),
    )  # fmt: skip
    c = verl_config(options)
    actor, rollout = c.actor_rollout_ref.actor, c.actor_rollout_ref.rollout
    assert c.actor_rollout_ref.model.path == "/models/m" and c.trainer.total_training_steps == 7
    assert c.data.train_batch_size == 16 and c.data.max_response_length == 256
    assert rollout.n == 5  # the pass-through override won over group_size
    assert rollout.name == "vllm" and c.trainer.use_v1 is False and c.trainer.n_gpus_per_node == 8
    assert actor.optim.lr == 3e-6 and actor.ppo_mini_batch_size == 4 and actor.entropy_coeff == 0.001
    assert (actor.clip_ratio_low, actor.clip_ratio_high) == (0.2, 0.28)
    assert actor.use_kl_loss is True and actor.kl_loss_coef == 0.001
    assert c.algorithm.adv_estimator == "grpo" and c.algorithm.norm_adv_by_std_in_grpo is False
    # verl's own config classes accept the result
    assert omega_conf_to_dataclass(actor).clip_ratio_high == 0.28

    with pytest.raises(ConfigError) as err:
        verl_config(VERLOptions(model="m", overrides=("actor_rollout_ref.actor.no_such_key=1",)))
    assert "actor_rollout_ref.actor.no_such_key" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="algorithm.model"):
        verl_config(VERLOptions())
