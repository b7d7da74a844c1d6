"""GiGPO (arXiv 2505.10978) on hand-computed values: discounted step returns, step groups by
anchor state, and A_E + omega * A_S per token."""
from __future__ import annotations

import math

import pytest
import torch

from posttrain.rl.algos import (
    discounted_step_returns,
    gigpo,
    group_normalized,
    step_group_advantages,
)


def test_discounted_returns():
    """gamma 0.9: [0, 0.5, 1] -> R_2 = 1, R_1 = 0.5 + 0.9 = 1.4, R_0 = 0 + 0.9 * 1.4 = 1.26;
    a 2-step episode [1, 2, pad]: R_1 = 2, R_0 = 1 + 1.8 = 2.8."""
    rewards = torch.tensor([[0.0, 0.5, 1.0], [1.0, 2.0, 7.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    got = discounted_step_returns(rewards, mask, gamma=0.9)
    assert torch.allclose(got, torch.tensor([[1.26, 1.4, 1.0], [2.8, 2.0, 0.0]]), atol=1e-6)


def test_step_groups_normalise_within_each_anchor_state():
    """Group 5: returns 1, 2, 6 -> mean 3, unbiased std sqrt(((-2)^2 + (-1)^2 + 3^2) / 2) = sqrt(7);
    group 6 has one member -> 0; group 7: 4, 2 -> mean 3, std sqrt(2)."""
    returns = torch.tensor([[1.0, 4.0], [2.0, 9.0], [6.0, 2.0]])
    groups = torch.tensor([[5, 7], [5, 6], [5, 7]])
    mask = torch.ones(3, 2, dtype=torch.bool)
    got, stats = step_group_advantages(returns, groups, mask, scale="group", eps=0.0)
    s7 = math.sqrt(7)
    expected = torch.tensor([[-2 / s7, 1 / math.sqrt(2)], [-1 / s7, 0.0], [3 / s7, -1 / math.sqrt(2)]])
    assert torch.allclose(got, expected, atol=1e-6)
    assert float(stats["step_group_size"]) == pytest.approx(2.0) and float(stats["step_singleton_frac"]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="scale must be one of"):
        step_group_advantages(returns, groups, mask, scale="batch")


def test_gigpo_tokens_get_episode_plus_weighted_step_advantage():
    """One prompt, 3 episodes (G=3), gamma 1, scale none, omega 0.5.
    Episode returns 1, 0, 1 -> A_E = 1/3, -2/3, 1/3.
    Step 0 (all share the prompt): returns 1, 0, 1 -> A_S = 1/3, -2/3, 1/3.
    Step 1: episodes 0 and 1 saw the same observation (group 1): returns 1, 0 -> +1/2, -1/2;
    episode 2 saw another (group 2, alone) -> 0.
    Tokens: episode 0 = [s0, s0, env, s1] -> 1/3 + 0.5/3, the same, 0, 1/3 + 0.5 * 1/2."""
    rewards = torch.tensor([1.0, 0.0, 1.0])
    step_rewards = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 1.0]])
    mask = torch.ones(3, 2, dtype=torch.bool)
    groups = torch.tensor([[0, 1], [0, 1], [0, 2]])
    token_steps = torch.tensor([[0, 0, -1, 1], [0, -1, 1, -1], [0, -1, -1, 1]])
    got, stats = gigpo(rewards, 3, step_rewards, mask, groups, token_steps, scale="none", omega=0.5, gamma=1.0)
    a_e = [1 / 3, -2 / 3, 1 / 3]
    s0 = [a_e[i] + 0.5 * a_e[i] for i in range(3)]
    s1 = [a_e[0] + 0.25, a_e[1] - 0.25, a_e[2] + 0.0]
    expected = [[s0[0], s0[0], 0.0, s1[0]], [s0[1], 0.0, s1[1], 0.0], [s0[2], 0.0, 0.0, s1[2]]]
    assert torch.allclose(got, torch.tensor(expected), atol=1e-6)
    assert float(stats["step_group_size"]) == pytest.approx(2.0)  # groups of 3, 2, 1


def test_gigpo_with_std_and_single_turn_reduces_to_grpo_times_one_plus_omega():
    """Single-turn episodes sharing the prompt: A_S = A_E (same returns, same group), so the
    advantage is (1 + omega) * GRPO's (scale group, TRL's eps aside: ours 1e-4 vs 1e-6)."""
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.25])
    steps = {"step_rewards": rewards[:, None], "step_mask": torch.ones(4, 1, dtype=torch.bool),
             "step_groups": torch.zeros(4, 1, dtype=torch.long), "token_steps": torch.zeros(4, 2, dtype=torch.long)}
    got, _ = gigpo(rewards, 4, **steps, scale="group", omega=1.0)
    grpo, _ = group_normalized(rewards, 4, scale="group")
    assert got[:, 0].tolist() == pytest.approx((2 * grpo).tolist(), abs=1e-3)


def test_gamma_0_credits_each_attempt_by_its_own_verdict():
    """The feedback recipe's setting (agent_feedback.yaml: gigpo, gamma 0, scale group): 8 episodes
    of one prompt, 5 right at once (A), 2 wrong then right (B), 1 wrong twice (C). The outcome is
    the last step's reward, so the first steps' returns are the first attempts' verdicts
    (1,1,1,1,1,0,0,0); second attempts followed different wrong answers (singleton groups, A_S 0).
    A_E (GRPO's eps 1e-4): ones +0.125/(0.353553 + 1e-4) = 0.353453, zero -0.875/0.353653 = -2.474174
    (unbiased std of 7 ones and 1 zero: sqrt(0.125)). A_S of the first step (eps 1e-6):
    +0.375/0.517550 = 0.724567, -0.625/0.517550 = -1.207612 (std sqrt(1.875/7)).
    So B's wrong first answer is pushed down (0.353453 - 1.207612) while its rescue is pushed up."""
    rewards = torch.tensor([1.0] * 7 + [0.0])
    step_rewards = torch.tensor([[1.0, 0.0]] * 5 + [[0.0, 1.0]] * 2 + [[0.0, 0.0]])
    mask = torch.tensor([[True, False]] * 5 + [[True, True]] * 3)
    groups = torch.tensor([[0, -1]] * 5 + [[0, 1], [0, 2], [0, 3]])
    token_steps = torch.tensor([[0, -1, -1]] * 5 + [[0, -1, 1]] * 3)
    got, _ = gigpo(rewards, 8, step_rewards, mask, groups, token_steps, scale="group", omega=1.0, gamma=0.0)
    a, b, c = got[0].tolist(), got[5].tolist(), got[7].tolist()
    assert a == pytest.approx([0.353453 + 0.724567, 0.0, 0.0], abs=2e-6)
    assert b == pytest.approx([0.353453 - 1.207612, 0.0, 0.353453], abs=2e-6)
    assert c == pytest.approx([-2.474174 - 1.207612, 0.0, -2.474174], abs=2e-6)
    with_gamma_1, _ = gigpo(rewards, 8, step_rewards, mask, groups, token_steps, scale="group", omega=1.0, gamma=1.0)
    assert with_gamma_1[5, 0] > 0  # gamma 1: the rescued episode's wrong first answer is reinforced
