"""Advantage estimators against hand-computed values (float64, atol 1e-6)."""

import math

import pytest
from rl_math_helpers import ATOL, close, t  # noqa: F401

from posttrain.rl.algos import (
    ADVANTAGE_ESTIMATORS,
    expand_to_tokens,
    gae,
    group_normalized,
    masked_whiten,
    reinforce_pp,
    rloo,
)

NAN = float("nan")


def test_gae_hand_computed():
    """gamma = 0.9, lam = 0.8, rewards [0, 0, 1], values [0.5, 0.6, 0.7]:

    delta_2 = 1 + 0.9*0   - 0.7 = 0.3     A_2 = 0.3
    delta_1 = 0 + 0.9*0.7 - 0.6 = 0.03    A_1 = 0.03 + 0.72*0.3   = 0.246
    delta_0 = 0 + 0.9*0.6 - 0.5 = 0.04    A_0 = 0.04 + 0.72*0.246 = 0.21712
    returns = A + V = [0.71712, 0.846, 1.0]
    """
    adv, ret = gae(t([[0, 0, 1]]), t([[0.5, 0.6, 0.7]]), t([[1, 1, 1]]), gamma=0.9, lam=0.8)
    close(adv, [[0.21712, 0.246, 0.3]])
    close(ret, [[0.71712, 0.846, 1.0]])


def test_gae_padding_contributes_nothing():
    """gamma = lam = 1, row [r 0, 1 | pad 5], V [0.5, 0.6 | pad 9], mask [1, 1, 0]:

    A_1 = 1 - 0.6 = 0.4; A_0 = 0 + 0.6 - 0.5 + 0.4 = 0.5; the pad's reward/value are ignored
    (it is not a next state), and it gets A = R = 0.
    """
    adv, ret = gae(t([[0, 1, 5]]), t([[0.5, 0.6, 9]]), t([[1, 1, 0]]), gamma=1.0, lam=1.0)
    close(adv, [[0.5, 0.4, 0.0]])
    close(ret, [[1.0, 1.0, 0.0]])


def test_gae_skips_masked_middle_span():
    """A masked tool-output token in the middle is skipped: [r 0, (7), 1], V [0.5, (9), 0.6],
    gamma 0.9, lam 0.8 equals GAE on [0, 1] / [0.5, 0.6]:

    A_2 = 1 - 0.6 = 0.4; A_0 = 0 + 0.9*0.6 - 0.5 + 0.72*0.4 = 0.04 + 0.288 = 0.328.
    """
    adv, ret = gae(t([[0, 7, 1]]), t([[0.5, 9, 0.6]]), t([[1, 0, 1]]), gamma=0.9, lam=0.8)
    close(adv, [[0.328, 0.0, 0.4]])
    close(ret, [[0.828, 0.0, 1.0]])


def test_gae_is_a_target_without_gradient():
    values = t([[0.5, 0.6]]).requires_grad_()
    adv, ret = gae(t([[0, 1]]), values, t([[1, 1]]))
    assert not adv.requires_grad and not ret.requires_grad


def test_group_normalized_group_scale_unbiased_std():
    """Group [1, 0, 0, 0]: mean 0.25, unbiased var (0.5625 + 3*0.0625)/3 = 0.25, std 0.5
    -> A = [0.75, -0.25, -0.25, -0.25] / (0.5 + 1e-4).
    Group [1, 1, 0, 0]: mean 0.5, var 1/3 -> A = +-0.5 / (sqrt(1/3) + 1e-4).
    Group [2, 2, 2, 2]: std 0 -> A = 0 (and counts in frac_zero_std = 4/12).
    """
    rewards = t([1, 0, 0, 0, 1, 1, 0, 0, 2, 2, 2, 2])
    adv, stats = group_normalized(rewards, group_size=4, scale="group")
    s1, s2 = 0.5 + 1e-4, math.sqrt(1 / 3) + 1e-4
    close(
        adv,
        [0.75 / s1, -0.25 / s1, -0.25 / s1, -0.25 / s1]
        + [0.5 / s2, 0.5 / s2, -0.5 / s2, -0.5 / s2]
        + [0.0] * 4,
    )
    close(stats["frac_zero_std"], 4 / 12)
    close(stats["reward_mean"], 11 / 12)  # (1 + 2 + 8) / 12


def test_group_normalized_batch_and_none():
    """Rewards [1, 0, 0, 0, 1, 1, 0, 0], groups of 4. Centring is per group in both modes:
    [0.75, -0.25, -0.25, -0.25, 0.5, 0.5, -0.5, -0.5].
    "batch" divides by the std of all 8: mean 3/8, sum of squares 3*0.625^2 + 5*0.375^2 = 1.875,
    unbiased var 1.875/7, std 0.517549... ; "none" (Dr.GRPO) does not divide.
    """
    rewards = t([1, 0, 0, 0, 1, 1, 0, 0])
    centred = [0.75, -0.25, -0.25, -0.25, 0.5, 0.5, -0.5, -0.5]
    batch_std = math.sqrt(1.875 / 7)
    adv, _ = group_normalized(rewards, group_size=4, scale="batch")
    close(adv, [c / (batch_std + 1e-4) for c in centred])
    adv, _ = group_normalized(rewards, group_size=4, scale="none")
    close(adv, centred)


def test_group_normalized_unscorable_and_singleton_groups():
    """[1, NaN, 0, 0]: NaN is left out: mean 1/3, unbiased var (4/9 + 1/9 + 1/9)/2 = 1/3;
    the NaN row gets 0. A group of size 1 has std 0 and advantage 0 (as in TRL)."""
    adv, _ = group_normalized(t([1, NAN, 0, 0]), group_size=4)
    s = math.sqrt(1 / 3) + 1e-4
    close(adv, [(2 / 3) / s, 0.0, (-1 / 3) / s, (-1 / 3) / s])
    adv, stats = group_normalized(t([3.0, -1.0]), group_size=1)
    close(adv, [0.0, 0.0])
    close(stats["frac_zero_std"], 1.0)


def test_group_normalized_rejects_bad_input():
    with pytest.raises(ValueError, match="whole number of groups"):
        group_normalized(t([1, 2, 3]), group_size=2)
    with pytest.raises(ValueError, match="scale"):
        group_normalized(t([1, 2]), group_size=2, scale="global")


def test_rloo_leave_one_out_baseline():
    """Group [1, 0, 0]: baselines (0+0)/2, (1+0)/2, (1+0)/2 -> A = [1, -0.5, -0.5]
    (= 3/2 * (r - 1/3)). Group [1, 2, 4]: baselines 3, 2.5, 1.5 -> A = [-2, -0.5, 2.5]."""
    adv, _ = rloo(t([1, 0, 0, 1, 2, 4]), group_size=3)
    close(adv, [1.0, -0.5, -0.5, -2.0, -0.5, 2.5])


def test_rloo_unscorable_and_errors():
    """[1, NaN, 3]: baselines use the scorable peers only: 1 - 3 = -2, 3 - 1 = 2; NaN -> 0."""
    adv, _ = rloo(t([1, NAN, 3]), group_size=3)
    close(adv, [-2.0, 0.0, 2.0])
    with pytest.raises(ValueError, match="group_size >= 2"):
        rloo(t([1.0, 2.0]), group_size=1)


def test_reinforce_pp_global_whitening():
    """[1, 2, 3, 6]: mean 3, population var (4 + 1 + 0 + 9)/4 = 3.5 -> A = [-2, -1, 0, 3]/sqrt(3.5).
    With group_size 2 (REINFORCE++-baseline): centred [-0.5, 0.5, -1.5, 1.5], mean 0,
    population var (0.25*2 + 2.25*2)/4 = 1.25 -> A = centred / sqrt(1.25)."""
    adv, stats = reinforce_pp(t([1, 2, 3, 6]))
    close(adv, [x / math.sqrt(3.5) for x in (-2, -1, 0, 3)])
    close(stats["reward_mean"], 3.0)
    adv, _ = reinforce_pp(t([1, 2, 3, 6]), group_size=2)
    close(adv, [x / math.sqrt(1.25) for x in (-0.5, 0.5, -1.5, 1.5)])


def test_reinforce_pp_token_rewards():
    """Token rewards [[0, 0, 1], [0, 2, pad]], gamma 1: returns-to-go [[1, 1, 1], [2, 2, 0]].
    Whitened over the 5 response tokens: mean 1.4, population var (3*0.16 + 2*0.36)/5 = 0.24."""
    mask = t([[1, 1, 1], [1, 1, 0]])
    adv, _ = reinforce_pp(t([[0, 0, 1], [0, 2, 0]]), response_mask=mask)
    std = math.sqrt(0.24)
    lo, hi = -0.4 / std, 0.6 / std
    close(adv, [[lo, lo, lo], [hi, hi, 0.0]])
    with pytest.raises(ValueError, match="response_mask"):
        reinforce_pp(t([[0, 1]]))


def test_masked_whiten_ignores_masked_entries():
    """Entries [1, 3, 100(masked)]: mean 2, population std 1 -> [-1, 1, 0]."""
    close(masked_whiten(t([1, 3, 100]), t([1, 1, 0])), [-1.0, 1.0, 0.0])


def test_expand_to_tokens():
    close(expand_to_tokens(t([2, -1]), t([[1, 1, 0], [1, 0, 0]])), [[2, 2, 0], [-1, 0, 0]])
    with pytest.raises(ValueError, match="batch sizes differ"):
        expand_to_tokens(t([1, 2, 3]), t([[1], [1]]))


def test_builtin_estimators_are_registered():
    assert ADVANTAGE_ESTIMATORS["gae"] is gae
    assert ADVANTAGE_ESTIMATORS["group_normalized"] is group_normalized
    assert ADVANTAGE_ESTIMATORS["rloo"] is rloo
    assert ADVANTAGE_ESTIMATORS["reinforce_pp"] is reinforce_pp
