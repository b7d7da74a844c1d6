"""Policy losses and entropy against hand-computed values and gradients (float64)."""

import math

import pytest
import torch
from rl_math_helpers import ATOL, close, t  # noqa: F401

from posttrain.rl.algos import (
    POLICY_LOSSES,
    aggregate,
    cispo,
    decoupled_ppo,
    entropy_bonus,
    entropy_from_logits,
    gspo,
    ppo_clip,
)


def log_of(values):
    return torch.log(t(values)).requires_grad_()


def test_ppo_clip_hand_computed_with_clip_higher():
    """eps_low 0.2, eps_high 0.28 -> clip range [0.8, 1.28]; old logprobs 0 so r = exp(logprobs).

    t0: r 1.5, A  2: min(3.0, 1.28*2 = 2.56)    = 2.56  -> loss -2.56 (high-clipped)
    t1: r 0.5, A -1: min(-0.5, 0.8*-1 = -0.8)   = -0.8  -> loss  0.8  (low-clipped)
    t2: r 1.1, A  1: min(1.1, 1.1)              = 1.1   -> loss -1.1
    t3: r 0.7, A -3: min(-2.1, 0.8*-3 = -2.4)   = -2.4  -> loss  2.4  (low-clipped)
    Gradient of sum(loss) w.r.t. logprobs: 0 on clipped tokens, -r*A = -1.1 on t2.
    """
    logprobs = log_of([[1.5, 0.5, 1.1, 0.7]])
    loss, stats = ppo_clip(logprobs, torch.zeros_like(logprobs), t([[2, -1, 1, -3]]), 0.2, 0.28)
    close(loss, [[-2.56, 0.8, -1.1, 2.4]])
    close(stats["clip_frac_low"], 0.5)
    close(stats["clip_frac_high"], 0.25)
    close(stats["clip_frac"], 0.75)
    close(stats["ratio_mean"], (1.5 + 0.5 + 1.1 + 0.7) / 4)
    loss.sum().backward()
    close(logprobs.grad, [[0.0, 0.0, -1.1, 0.0]])
    assert all(not v.requires_grad for v in stats.values())


def test_ppo_clip_pessimistic_branch_keeps_gradient():
    """r 1.5, A -1: min(-1.5, 1.28*-1 = -1.28) = -1.5 -> loss 1.5: the UNclipped term wins, so
    the gradient -r*A = 1.5 flows (PPO only removes gradient that would help the objective)."""
    logprobs = log_of([[1.5]])
    loss, stats = ppo_clip(logprobs, t([[0.0]]), t([-1.0]), 0.2, 0.28)
    close(loss, [[1.5]])
    close(stats["clip_frac"], 0.0)
    loss.sum().backward()
    close(logprobs.grad, [[1.5]])


def test_ppo_dual_clip_caps_negative_advantage_loss():
    """Dual clip c = 3: r 5, A -1: PPO loss -min(-5, -1.28) = 5, capped at -c*A = 3 (zero
    gradient). r 5, A +1 is untouched by the dual clip: -min(5, 1.28) = -1.28."""
    logprobs = log_of([[5.0, 5.0]])
    loss, stats = ppo_clip(logprobs, t([[0.0, 0.0]]), t([[-1, 1]]), 0.2, 0.28, dual_clip_c=3.0)
    close(loss, [[3.0, -1.28]])
    close(stats["dual_clip_frac"], 0.5)
    loss.sum().backward()
    close(logprobs.grad, [[0.0, 0.0]])
    with pytest.raises(ValueError, match="dual_clip_c"):
        ppo_clip(logprobs, t([[0.0, 0.0]]), t([[-1, 1]]), dual_clip_c=0.5)


def test_ppo_clip_mask_zeroes_padding_and_stats():
    """The padded token (r = 10) gets loss 0 and is not in the clip fraction or ratio mean."""
    logprobs = log_of([[1.1, 10.0]])
    loss, stats = ppo_clip(logprobs, t([[0.0, 0.0]]), t([1.0]), 0.2, 0.2, response_mask=t([[1, 0]]))
    close(loss, [[-1.1, 0.0]])
    close(stats["clip_frac"], 0.0)
    close(stats["ratio_mean"], 1.1)
    with pytest.raises(ValueError, match="advantages must be"):
        ppo_clip(logprobs, t([[0.0, 0.0]]), t([1.0, 2.0, 3.0]))


def test_gspo_sequence_ratio_and_token_gradient():
    """Row 0: log-ratios [0.1, 0.3] -> s_0 = exp(0.2) = 1.2214028, A = 1, clip [0.8, 1.25]:
    not clipped, loss -s_0 on both tokens. Row 1: log-ratios [-0.1, pad 0.9], mask [1, 0] ->
    s_1 = exp(-0.1) = 0.9048374 (the pad is not in the mean), A = -1: loss +s_1, pad 0.
    GSPO-token gradient of sum(loss): d(-s_i A_i)/d logprobs_it = -s_i A_i on each token.
    """
    old = t([[-1.0, -2.0], [-1.0, -1.0]])
    logprobs = (old + t([[0.1, 0.3], [-0.1, 0.9]])).requires_grad_()
    mask = t([[1, 1], [1, 0]])
    s0, s1 = math.exp(0.2), math.exp(-0.1)
    loss, stats = gspo(logprobs, old, t([1.0, -1.0]), mask, 0.2, 0.25)
    close(loss, [[-s0, -s0], [s1, 0.0]])
    close(stats["ratio_mean"], (s0 + s1) / 2)
    close(stats["clip_frac"], 0.0)
    loss.sum().backward()
    close(logprobs.grad, [[-s0, -s0], [s1, 0.0]])


def test_gspo_token_form_matches_sequence_form_gradient():
    """Under seq-mean-token-mean, the GSPO-token loss has the value and gradient of the plain
    sequence objective mean_i(-s_i A_i) with s_i = exp(mean_t log-ratio) differentiated
    through (d s_i / d logprobs_it = s_i / |y_i|)."""
    torch.manual_seed(0)
    old = -torch.rand(3, 5, dtype=torch.float64)
    mask = t([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    adv = t([0.5, -1.0, 2.0])
    logprobs = (old + 0.01 * torch.randn(3, 5, dtype=torch.float64)).requires_grad_()
    loss_t, _ = gspo(logprobs, old, adv, mask, 0.2, 0.2)
    ours = aggregate(loss_t, mask, "seq-mean-token-mean")
    (grad_ours,) = torch.autograd.grad(ours, logprobs)
    seq = torch.exp(((logprobs - old) * mask).sum(1) / mask.sum(1))
    reference = (-seq * adv).mean()
    (grad_ref,) = torch.autograd.grad(reference, logprobs)
    close(ours, reference, atol=1e-12)
    close(grad_ours, grad_ref, atol=1e-12)


def test_gspo_clipped_sequence_has_zero_gradient():
    """s = exp(0.2) = 1.2214 > 1 + 0.2 with A > 0: the whole sequence is clipped."""
    logprobs = t([[0.2, 0.2]]).requires_grad_()
    loss, stats = gspo(logprobs, t([[0.0, 0.0]]), t([1.0]), t([[1, 1]]), 0.2, 0.2)
    close(loss, [[-1.2, -1.2]])
    close(stats["clip_frac_high"], 1.0)
    loss.sum().backward()
    close(logprobs.grad, [[0.0, 0.0]])


def test_cispo_detached_clipped_weight_gradient_through_logprobs():
    """logprobs [-1, -2], old [-1.5, -1] -> r = [e^0.5 = 1.6487, e^-1 = 0.3679]; weight_max 1.5
    -> w = [1.5, 0.3678794]. A = [2, -1]. loss = -w*A*logprobs:
    t0: -1.5*2*(-1) = 3.0;  t1: -0.3678794*(-1)*(-2) = -0.7357589.
    Gradient: -w*A = [-3.0, 0.3678794]: nonzero on the clipped t0 too (unlike PPO), and w
    contributes no gradient of its own (it is detached).
    """
    logprobs = t([[-1.0, -2.0]]).requires_grad_()
    loss, stats = cispo(logprobs, t([[-1.5, -1.0]]), t([[2.0, -1.0]]), weight_max=1.5)
    w1 = math.exp(-1.0)
    close(loss, [[3.0, -2 * w1]])
    close(stats["clip_frac"], 0.5)
    close(stats["clip_frac_high"], 0.5)  # t0: r > weight_max with A > 0
    close(stats["clip_frac_low"], 0.0)   # no lower bound
    close(stats["ratio_mean"], (math.exp(0.5) + w1) / 2)
    loss.sum().backward()
    close(logprobs.grad, [[-3.0, w1]])


def test_cispo_lower_bound_and_mask():
    """weight_min 0.5: r = e^-1 = 0.3679 is raised to 0.5; the padded token contributes 0.
    clip_frac_low counts r < weight_min with A < 0: A = -1 gives 1 of the 1 unpadded tokens."""
    logprobs = t([[-2.0, -3.0]])
    loss, stats = cispo(
        logprobs,
        t([[-1.0, 0.0]]),
        t([1.0]),
        weight_max=2.0,
        weight_min=0.5,
        response_mask=t([[1, 0]]),
    )
    close(loss, [[-0.5 * 1.0 * -2.0, 0.0]])
    close(stats["clip_frac_low"], 0.0)  # A > 0: the lower bound is the mirror of TRL's upper one
    _, stats = cispo(logprobs, t([[-1.0, 0.0]]), t([-1.0]), weight_max=2.0, weight_min=0.5,
                     response_mask=t([[1, 0]]))
    close(stats["clip_frac_low"], 1.0)


def test_decoupled_ppo_hand_computed_behavior_weights_and_cap():
    """AReaL eq. 5 with eps 0.2, old (proximal) log-probs 0, so r = exp(logprobs), and behavior
    log-probs b, so w = exp(0 - b), capped at 3 (a weight above it becomes 0):

    t0: r 1.5, A  2, b log(0.5): w 2   -> clipped 1.2*2 = 2.4 -> loss -2.4 * 2 = -4.8 (no gradient)
    t1: r 1.1, A  1, b 0:        w 1   -> min(1.1, 1.1)       -> loss -1.1        grad -1.1
    t2: r 0.9, A -1, b log(0.25): w 4 > 3 -> weight 0          -> loss  0          grad 0
    t3: r 1.0, A  3, b NaN (an environment's token): w 1       -> loss -3          grad -3
    behavior_weight_mean over the 4 tokens: (2 + 1 + 0 + 1) / 4 = 1; behavior_frac_capped 1/4.
    """
    logprobs = log_of([[1.5, 1.1, 0.9, 1.0]])
    behavior = t([[math.log(0.5), 0.0, math.log(0.25), float("nan")]])
    loss, stats = decoupled_ppo(logprobs, torch.zeros_like(logprobs), t([[2, 1, -1, 3]]), behavior,
                                behavior_weight_cap=3.0)
    close(loss, [[-4.8, -1.1, 0.0, -3.0]])
    close(stats["behavior_weight_mean"], 1.0)
    close(stats["behavior_frac_capped"], 0.25)
    close(stats["clip_frac_high"], 0.25)
    loss.sum().backward()
    close(logprobs.grad, [[0.0, -1.1, 0.0, -3.0]])


def test_decoupled_ppo_with_fresh_samples_is_ppo_clip():
    """pi_behav = pi_prox: every weight is 1 and the loss and gradient are ppo_clip's."""
    torch.manual_seed(0)
    old = torch.randn(3, 5, dtype=torch.float64)
    advantages = torch.randn(3, 5, dtype=torch.float64)
    mask = (torch.rand(3, 5) > 0.3).double()
    a = (old + 0.3 * torch.randn(3, 5, dtype=torch.float64)).requires_grad_()
    b = a.detach().clone().requires_grad_()
    loss_a, _ = decoupled_ppo(a, old, advantages, old.clone(), response_mask=mask)
    loss_b, _ = ppo_clip(b, old, advantages, response_mask=mask)
    close(loss_a, loss_b)
    loss_a.sum().backward()
    loss_b.sum().backward()
    close(a.grad, b.grad)


def test_entropy_from_logits():
    """logits [0, ln 3] -> p = [1/4, 3/4], H = -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.5623351;
    uniform over 2 -> ln 2; the masked position -> 0."""
    logits = t([[[0.0, math.log(3.0)], [0.0, 0.0], [5.0, -5.0]]]).requires_grad_()
    entropy = entropy_from_logits(logits, response_mask=t([[1, 1, 0]]))
    close(entropy, [[-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), math.log(2.0), 0.0]])
    entropy.sum().backward()
    assert logits.grad[0, 0].abs().sum() > 0  # differentiable: usable as a bonus


def test_entropy_bonus_is_minus_coef_times_token_mean():
    """H [[1, 2], [3, pad]] -> mean over 3 tokens = 2 -> bonus term -0.01 * 2 = -0.02; with a
    global token count of 4 (another shard holds one more token) -> -0.01 * 6/4 = -0.015, while the
    logged entropy stays this shard's own mean (2), so averaging it over shards gives the mean."""
    entropies, mask = t([[1.0, 2.0], [3.0, 9.0]]), t([[1, 1], [1, 0]])
    term, stats = entropy_bonus(entropies, mask, coef=0.01)
    close(term, -0.02)
    close(stats["entropy"], 2.0)
    term, stats = entropy_bonus(entropies, mask, coef=0.01, global_tokens=4)
    close(term, -0.015)
    close(stats["entropy"], 2.0)


def test_builtin_losses_are_registered():
    assert POLICY_LOSSES["ppo_clip"] is ppo_clip
    assert POLICY_LOSSES["gspo"] is gspo
    assert POLICY_LOSSES["cispo"] is cispo
    assert POLICY_LOSSES["decoupled_ppo"] is decoupled_ppo
