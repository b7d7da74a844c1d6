"""KL estimators, KL-penalised rewards and KL controllers (float64, hand-computed)."""

import math

import pytest
import torch
from rl_math_helpers import ATOL, close, t  # noqa: F401

from posttrain.rl.algos import (
    AdaptiveKLController,
    FixedKLController,
    kl_estimate,
    kl_penalized_rewards,
    last_token_index,
    turn_kl_weights,
)

LN2 = math.log(2.0)


def test_estimators_hand_computed():
    """log r = ref - logprobs. Token 0: pi 0.5, ref 0.25 -> log r = -ln 2; token 1: the reverse,
    log r = +ln 2.
    k1 = -log r              -> [ln 2, -ln 2]
    k2 = 0.5 (log r)^2       -> [0.5 ln^2 2, 0.5 ln^2 2] = 0.2402265
    k3 = r - 1 - log r       -> [0.5 - 1 + ln 2, 2 - 1 - ln 2] = [0.1931472, 0.3068528]
    """
    logprobs, ref = torch.log(t([[0.5, 0.25]])), torch.log(t([[0.25, 0.5]]))
    close(kl_estimate(logprobs, ref, "k1"), [[LN2, -LN2]])
    close(kl_estimate(logprobs, ref, "k2"), [[0.5 * LN2**2, 0.5 * LN2**2]])
    close(kl_estimate(logprobs, ref, "k3"), [[-0.5 + LN2, 1 - LN2]])
    close(kl_estimate(logprobs, ref, "k3", response_mask=t([[1, 0]])), [[-0.5 + LN2, 0.0]])
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_estimate(logprobs, ref, "k4")


def test_k1_and_k3_are_unbiased_k2_is_not():
    """Exact expectations under pi = [0.5, 0.3, 0.2], ref = [0.2, 0.5, 0.3]:
    E_pi[k1] = E_pi[k3] = KL(pi || ref) = sum pi log(pi/ref) (E_pi[r - 1] = sum ref - 1 = 0)."""
    pi, ref = t([[0.5, 0.3, 0.2]]), t([[0.2, 0.5, 0.3]])
    kl = float((pi * torch.log(pi / ref)).sum())
    for kind in ("k1", "k3"):
        expectation = (pi * kl_estimate(torch.log(pi), torch.log(ref), kind)).sum()
        close(expectation, kl)
    k2 = (pi * kl_estimate(torch.log(pi), torch.log(ref), "k2")).sum()
    assert abs(float(k2) - kl) > 1e-3


def test_k3_gradient():
    """d k3 / d logprobs = 1 - exp(ref - logprobs) = 1 - 0.5 = 0.5 for pi 0.5, ref 0.25."""
    logprobs = torch.log(t([[0.5]])).requires_grad_()
    kl_estimate(logprobs, torch.log(t([[0.25]])), "k3").sum().backward()
    close(logprobs.grad, [[0.5]])


def test_turn_kl_weights_hand_computed():
    """Row 0: a prompt token (-1), two tokens of turn 0, one of turn 1, one of turn 2; row 1 starts
    at turn 1 (after a given turn). weights [10, 1]: turn 0 -> 10, turns >= 1 -> 1 (the last entry
    holds), -1 -> 0. The loss's KL term is kl_coef * factor * KL: with kl_coef 0.1 and k3 per token
    [0.2, 0.3, 0.5, 0.7] on row 0's generated tokens -> [0.2, 0.3, 0.05, 0.07]."""
    turns = torch.tensor([[-1, 0, 0, 1, 2], [1, 1, 2, -1, -1]])
    close(turn_kl_weights(turns, [10.0, 1.0], torch.float64), [[0, 10, 10, 1, 1], [1, 1, 1, 0, 0]])
    close(turn_kl_weights(turns, [2.0], torch.float64), [[0, 2, 2, 2, 2], [2, 2, 2, 0, 0]])
    close(turn_kl_weights(turns, [4.0, 3.0, 2.0, 1.0], torch.float64), [[0, 4, 4, 3, 2], [3, 3, 2, 0, 0]])
    kl = t([[0.0, 0.2, 0.3, 0.5, 0.7]])
    close(0.1 * turn_kl_weights(turns[:1], [10.0, 1.0], torch.float64) * kl, [[0.0, 0.2, 0.3, 0.05, 0.07]])
    with pytest.raises(ValueError, match="at least one weight"):
        turn_kl_weights(turns, [])


def test_kl_penalized_rewards_hand_computed():
    """kl_coef 0.1, k1 with log-ratios logprobs - ref:
    row 0 [0.1, 0.2, -0.1], mask [1, 1, 1], score 1  -> [-0.01, -0.02, 0.01 + 1]
    row 1 [0.3, 0.0, pad],  mask [1, 1, 0], score -2 -> [-0.03, 0 - 2, 0]
    row 2 all masked, score 5                         -> [0, 0, 0] (no token to carry it)
    stats kl = mean of per-row KL sums = (0.2 + 0.3 + 0) / 3.
    """
    ref = t([[-1.0, -1.0, -1.0]] * 3)
    logprobs = ref + t([[0.1, 0.2, -0.1], [0.3, 0.0, 9.0], [1.0, 1.0, 1.0]])
    mask = t([[1, 1, 1], [1, 1, 0], [0, 0, 0]])
    rewards, stats = kl_penalized_rewards(t([1.0, -2.0, 5.0]), logprobs, ref, mask, 0.1)
    close(rewards, [[-0.01, -0.02, 1.01], [-0.03, -2.0, 0.0], [0.0, 0.0, 0.0]])
    close(stats["kl"], 0.5 / 3)
    close(stats["kl_coef"], 0.1)


def test_last_token_index():
    close(last_token_index(t([[1, 1, 0], [1, 0, 1], [0, 0, 0]])).double(), [1.0, 2.0, -1.0])


def test_adaptive_controller_ziegler():
    """beta *= 1 + clip(KL/target - 1, -0.2, 0.2) * n_steps / horizon; target 6, horizon 10000:
    KL 12 -> e = clip(1) = 0.2  -> 0.1 * (1 + 0.2*256/1e4)  = 0.100512
    KL 3  -> e = clip(-0.5) = -0.2 -> * (1 - 0.0512/10)      = 0.100512 * 0.99488
    KL 6.6 -> e = 0.1, n 1000     -> * (1 + 0.1*0.1)         = ... * 1.01
    """
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert ctl.update(12.0, 256) == pytest.approx(0.100512, abs=1e-12)
    assert ctl.update(3.0, 256) == pytest.approx(0.100512 * 0.99488, abs=1e-12)
    assert ctl.update(6.6, 1000) == pytest.approx(0.100512 * 0.99488 * 1.01, abs=1e-12)
    restored = AdaptiveKLController(1.0, target=1.0, horizon=1)
    restored.load_state_dict(ctl.state_dict())
    assert restored.update(12.0, 256) == ctl.update(12.0, 256)
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=0.0, horizon=10)


def test_fixed_controller():
    ctl = FixedKLController(0.05)
    assert ctl.update(100.0, 256) == 0.05 and ctl.value == 0.05
    other = FixedKLController(0.0)
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.05
