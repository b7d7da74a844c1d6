"""RAFT's pieces on hand-computed values: the `pg` loss, the `raft` estimator, the filter's
threshold, and their composition, which must be the SFT loss that TRL's SFTTrainer computes
(transformers' causal-LM cross-entropy) on the kept completions."""

import pytest
import torch
from rl_math_helpers import close, t

from posttrain.rl.algos import (
    ADVANTAGE_ESTIMATORS,
    POLICY_LOSSES,
    advantage_estimator_spec,
    aggregate,
    filter_by_reward,
    pg,
    raft,
)


def test_pg_loss_and_gradient_hand_computed():
    """loss_t = -A_t * logprobs_t on response tokens; d loss_t / d logprobs_t = -A_t.

    Row 0: A = 2, logprobs [-0.5, -1.0]        -> loss [1.0, 2.0]
    Row 1: A = -1, logprobs [-2.0, (pad) -3.0] -> loss [-2.0, 0]   (mask 1, 0)
    ratio_mean: old = logprobs - [0.1, 0.2, 0.3, *] -> r = e^0.1, e^0.2, e^0.3 over 3 tokens."""
    logprobs = t([[-0.5, -1.0], [-2.0, -3.0]]).requires_grad_()
    old = logprobs.detach() - t([[0.1, 0.2], [0.3, 9.0]])
    mask = t([[1, 1], [1, 0]])
    loss, stats = pg(logprobs, old, t([2.0, -1.0]), response_mask=mask)
    close(loss, [[1.0, 2.0], [-2.0, 0.0]])
    close(stats["ratio_mean"], (torch.exp(t(0.1)) + torch.exp(t(0.2)) + torch.exp(t(0.3))) / 3)
    assert [float(stats[k]) for k in ("clip_frac", "clip_frac_low", "clip_frac_high")] == [0.0, 0.0, 0.0]
    loss.sum().backward()
    close(logprobs.grad, [[-2.0, -2.0], [1.0, 0.0]])
    assert POLICY_LOSSES["pg"] is pg


def test_raft_estimator_is_one_except_unscorable():
    adv, stats = raft(t([0.0, 1.0, float("nan"), 0.5]), group_size=2)
    close(adv, [1.0, 1.0, 0.0, 1.0])
    close(stats["reward_mean"], 0.5)
    assert ADVANTAGE_ESTIMATORS["raft"] is raft and advantage_estimator_spec("raft").needs_filter
    assert not advantage_estimator_spec("group_normalized").needs_filter
    with pytest.raises(ValueError, match="whole number of groups"):
        raft(t([1.0, 0.0, 1.0]), group_size=2)


def test_threshold_filters_before_the_best_is_chosen():
    """Groups [0.2, 1.1, 1.0], [0.5, 0.0, 0.5], [1.0, nan, 1.1] with min_reward 1.0:
    best_of_n keeps 1.1 of group 0, nothing of group 1 (its best 0.5 < 1), 1.1 of group 2;
    bands [[-inf, inf]] keeps every reward >= 1; best_worst keeps best 1.1 and worst 1.0."""
    rewards = t([0.2, 1.1, 1.0, 0.5, 0.0, 0.5, 1.0, float("nan"), 1.1])
    best = filter_by_reward(rewards, "best_of_n", group_size=3, min_reward=1.0)
    assert best.int().tolist() == [0, 1, 0, 0, 0, 0, 0, 0, 1]
    bands = filter_by_reward(rewards, "bands", bands=[(-float("inf"), float("inf"))], min_reward=1.0)
    assert bands.int().tolist() == [0, 1, 1, 0, 0, 0, 1, 0, 1]
    worst = filter_by_reward(rewards, "best_worst", group_size=3, min_reward=1.0)
    assert worst.int().tolist() == [0, 1, 1, 0, 0, 0, 1, 0, 1]
    # without a threshold, the best of an all-wrong group is kept (RAFT's paper does so)
    assert filter_by_reward(rewards, "best_of_n", group_size=3).int().tolist()[3:6] == [1, 0, 0]


def test_raft_update_is_the_sft_loss_on_the_kept_completions():
    """raft advantages x pg loss x filter mask x token-mean == transformers' ForCausalLMLoss (what
    TRL's SFTTrainer minimises) on the kept rows' completion tokens, value and gradient.

    Two prompts x 2 completions, each row = 2 prompt tokens + 3 completion tokens (the last row's
    third completion token is padding); rewards [1, 0], [0.5, 0.2] with min_reward 0.4 keep row 0
    and row 2. float32, as transformers computes this loss in float32 whatever the logits' dtype."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    torch.manual_seed(0)
    vocab, prompt, width = 7, 2, 5
    logits = torch.randn(4, width, vocab, requires_grad=True)
    ids = torch.randint(0, vocab, (4, width))
    response_mask = torch.tensor([[1.0, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 0]])
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.2])

    keep = filter_by_reward(rewards, "best_of_n", group_size=2, min_reward=0.4)
    assert keep.tolist() == [True, False, True, False]
    mask = response_mask * keep[:, None]
    # log pi(y_t): the logits at position j predict token j + 1
    logprobs = torch.log_softmax(logits[:, prompt - 1:-1], dim=-1).gather(-1, ids[:, prompt:, None]).squeeze(-1)
    advantages, _ = raft(rewards, group_size=2)
    loss_t, _ = pg(logprobs, logprobs.detach(), advantages, response_mask=mask)
    ours = aggregate(loss_t, mask, "token-mean")
    ours_grad, = torch.autograd.grad(ours, logits)

    labels = ids.clone()
    labels[:, :prompt] = -100
    labels[:, prompt:][mask == 0] = -100
    reference = ForCausalLMLoss(logits, labels, vocab_size=vocab)
    reference_grad, = torch.autograd.grad(reference, logits)
    close(ours.detach(), reference.detach(), atol=1e-6)
    close(ours_grad, reference_grad, atol=1e-7)
