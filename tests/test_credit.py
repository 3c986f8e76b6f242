"""Credit rules (agl_kernel.credit, entry points in agl.credit): each rule on hand-made groups, by name with options,
and a third party's rule registered the way a plugin would."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from agl_kernel.credit import (
    AutoCredit,
    CreditRule,
    DiscountedCredit,
    FinalCredit,
    StepCredit,
    relative,
    rollout_return,
)
from agl_kernel.errors import ConfigError
from agl_kernel.models import Triplet
from agl_kernel.plugins import create_component, list_plugins


@dataclass
class Rollout:
    triplets: list[Triplet] = field(default_factory=list)
    final_reward: float | None = None


def t(reward: float | None = None, step: float | None = None) -> Triplet:
    return Triplet(prompt_token_ids=[1], response_token_ids=[2], reward=reward, step_reward=step)


def test_relative_is_the_group_normalisation() -> None:
    assert relative([1.0, 0.0, 0.0, 1.0], scale=False) == [0.5, -0.5, -0.5, 0.5]
    assert relative([1.0, 0.0], eps=0.0) == [1.0, -1.0]  # population std 0.5
    assert relative([3.0, 3.0, 3.0]) == [0.0, 0.0, 0.0]  # no variance, no signal
    assert relative([7.0]) == [0.0] and relative([]) == []


def test_final_broadcasts_the_outcome_to_every_turn() -> None:
    group = [Rollout([t(1.0), t(1.0)], 1.0), Rollout([t(0.0)], 0.0), Rollout([t(0.0), t(0.5)], None)]
    # returns 1.0, 0.0 and (no final reward) the last triplet's 0.5: mean 0.5
    assert FinalCredit(scale=False).advantages(group) == [[0.5, 0.5], [-0.5], [0.0, 0.0]]
    assert rollout_return(group[2]) == 0.5 and rollout_return(Rollout([t(None)], None)) == 0.0


def test_steps_scores_each_turn_by_its_own_reward_over_the_whole_group() -> None:
    group = [Rollout([t(1.5, step=0.5), t(0.0)], 1.0), Rollout([t(1.0, step=1.0), t(None)], None)]
    # 1.5, 0.0, 1.0, 0 (None): mean 0.625
    assert StepCredit(scale=False).advantages(group) == [[0.875, -0.625], [0.375, -0.625]]


def test_discounted_returns_give_early_turns_a_share_of_later_rewards() -> None:
    # rollout a: step rewards 0, 1, then final 2 at the last step → returns with gamma 0.5: 0 + 0.5 * (1 + 0.5 * 2),
    # 1 + 0.5 * 2, 2 = 1.0, 2.0, 2.0; rollout b: one step reward 1, final 0 → 1.0. Mean over the 4 turns: 1.5.
    group = [
        Rollout([t(0.0, step=None), t(1.0, step=1.0), t(2.0, step=None)], 2.0),
        Rollout([t(1.0, step=1.0)], 0.0),
    ]
    assert DiscountedCredit(gamma=0.5, scale=False).advantages(group) == [[-0.5, 0.5, 0.5], [-0.5]]
    # gamma 0: only the step's own reward (and the final reward at the last step)
    assert DiscountedCredit(gamma=0.0, scale=False).advantages(group) == [[-1.0, 0.0, 1.0], [0.0]]
    # a rollout without step rewards: its outcome (final, or the last triplet's reward) at the last step
    outcome_only = [Rollout([t(None), t(1.0)], None), Rollout([t(None), t(0.0)], None)]
    assert DiscountedCredit(gamma=1.0, scale=False).advantages(outcome_only) == [[0.5, 0.5], [-0.5, -0.5]]


def test_auto_is_steps_where_the_group_has_step_rewards_else_final() -> None:
    outcome = [Rollout([t(1.0), t(1.0)], 1.0), Rollout([t(0.0)], 0.0)]
    stepped = [Rollout([t(1.5, step=0.5), t(0.0)], 1.0), Rollout([t(1.0, step=1.0), t(None)], None)]
    assert AutoCredit(scale=False).advantages(outcome) == FinalCredit(scale=False).advantages(outcome)
    assert AutoCredit(scale=False).advantages(stepped) == StepCredit(scale=False).advantages(stepped)


def test_rules_by_name_with_typed_options() -> None:
    names = {p.name for p in list_plugins("credit")}
    assert {"auto", "final", "steps", "discounted"} <= names
    rule = create_component("credit", "discounted", options={"gamma": "0.9", "scale": "false"})
    assert isinstance(rule, DiscountedCredit) and (rule.gamma, rule.scale) == (0.9, False)
    with pytest.raises(ConfigError, match="gamma"):
        create_component("credit", "discounted", options={"gamma": 1.5})
    with pytest.raises(ConfigError, match="gama"):
        create_component("credit", "final", options={"gama": 1})


def test_a_class_of_ones_own_is_a_rule_and_a_non_rule_is_refused() -> None:
    class LastTurnOnly(CreditRule):
        def advantages(self, group):  # type: ignore[no-untyped-def]
            return [[0.0] * (len(r.triplets) - 1) + [rollout_return(r)] for r in group]

    rule = create_component("credit", LastTurnOnly)
    assert rule.advantages([Rollout([t(1.0), t(1.0)], 1.0)]) == [[0.0, 1.0]]

    class NotARule:
        pass

    with pytest.raises(Exception, match="advantages"):
        create_component("credit", NotARule)
