"""Loss aggregation: hand-computed modes, data-parallel shard invariance, 1x8 == 8x1."""

import pytest
import torch
from rl_math_helpers import ATOL, close, t  # noqa: F401

from posttrain.rl.algos import AGGREGATION_MODES, aggregate, entropy_bonus, ppo_clip

MAX_TOKENS = 9  # a max completion length larger than any row, as in a real config


def test_modes_hand_computed():
    """loss [[1, 2, 3], [4, 5, 6]], mask [[1, 1, 1], [1, 0, 0]] (N = 4 tokens, S = 2):

    token-mean               (1+2+3+4) / 4       = 2.5
    seq-mean-token-mean      (6/3 + 4/1) / 2     = 3.0
    seq-mean-token-sum       (6 + 4) / 2         = 5.0
    seq-mean-token-sum-norm  10 / (2 * 4)        = 1.25   (max_tokens 4)
    """
    loss, mask = t([[1, 2, 3], [4, 5, 6]]), t([[1, 1, 1], [1, 0, 0]])
    close(aggregate(loss, mask, "token-mean"), 2.5)
    close(aggregate(loss, mask, "seq-mean-token-mean"), 3.0)
    close(aggregate(loss, mask, "seq-mean-token-sum"), 5.0)
    close(aggregate(loss, mask, "seq-mean-token-sum-norm", max_tokens=4), 1.25)


def test_empty_row_counts_as_a_sequence():
    """An all-masked row adds 0 but still counts in S: seq-mean-token-mean = (6/3 + 0)/2 = 1."""
    loss, mask = t([[1, 2, 3], [4, 5, 6]]), t([[1, 1, 1], [0, 0, 0]])
    close(aggregate(loss, mask, "seq-mean-token-mean"), 1.0)
    close(aggregate(loss * 0, mask * 0, "token-mean"), 0.0)  # no tokens at all: 0, not NaN


def test_bad_arguments():
    loss, mask = t([[1.0]]), t([[1]])
    with pytest.raises(ValueError, match="max_tokens"):
        aggregate(loss, mask, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="unknown aggregation mode"):
        aggregate(loss, mask, "sum")
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        aggregate(t([1.0]), t([1]), "token-mean")


def _batch(seed=0, batch=8, tokens=6):
    gen = torch.Generator().manual_seed(seed)
    loss = torch.randn(batch, tokens, generator=gen, dtype=torch.float64)
    lengths = torch.tensor([6, 1, 3, 6, 2, 5, 4, 1])[:batch]
    mask = (torch.arange(tokens)[None, :] < lengths[:, None]).to(torch.float64)
    return loss, mask


@pytest.mark.parametrize("mode", AGGREGATION_MODES)
def test_two_shards_with_global_counts_sum_to_full_batch(mode):
    """Uneven shards (3 and 5 sequences, 10 and 18 tokens), each normalised by the global
    N = 28 and S = 8, sum to the full-batch loss; DDP's gradient MEAN needs world_size * loss."""
    loss, mask = _batch()
    full = aggregate(loss, mask, mode, max_tokens=MAX_TOKENS)
    counts = {"global_tokens": mask.sum(), "global_seqs": loss.shape[0]}
    shards = [
        aggregate(loss[s], mask[s], mode, max_tokens=MAX_TOKENS, **counts)
        for s in (slice(0, 3), slice(3, 8))
    ]
    close(shards[0] + shards[1], full, atol=1e-12)
    world_size = 2
    ddp_mean = sum(world_size * s for s in shards) / world_size
    close(ddp_mean, full, atol=1e-12)


def test_local_normalisation_would_break_the_invariance():
    """The check above has teeth: averaging per-shard token means weighs the 10-token shard
    like the 18-token one and differs from the full-batch token mean."""
    loss, mask = _batch()
    full = aggregate(loss, mask, "token-mean")
    local = [aggregate(loss[s], mask[s], "token-mean") for s in (slice(0, 3), slice(3, 8))]
    assert abs(float((local[0] + local[1]) / 2 - full)) > 1e-3


def _policy_loss(weight, features, old_logprobs, advantages, mask, mode, counts):
    """PPO-clip + entropy-bonus loss of a tiny differentiable stand-in policy.

    logprobs = features @ weight (not normalised: the invariance does not care, and it avoids
    log_softmax, which costs ~15 ms per call when its 2 OpenMP threads share busy cores)."""
    logprobs = features @ weight  # (b, T)
    per_token, _ = ppo_clip(logprobs, old_logprobs, advantages, 0.2, 0.28, response_mask=mask)
    bonus, _ = entropy_bonus(logprobs**2, mask, 0.01, counts.get("global_tokens"))
    return aggregate(per_token, mask, mode, max_tokens=MAX_TOKENS, **counts) + bonus


@pytest.mark.parametrize("mode", AGGREGATION_MODES)
def test_gradient_accumulation_1x8_equals_8x1(mode):
    """One micro-batch of 8 sequences and eight micro-batches of 1 (each normalised by the
    global counts, gradients summed by backward) give the same gradient, to 1e-12."""
    _, mask = _batch()
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(8, 6, 4, generator=gen, dtype=torch.float64)
    weight0 = torch.randn(4, generator=gen, dtype=torch.float64)
    old = features @ weight0 + 0.3 * torch.randn(8, 6, generator=gen, dtype=torch.float64)
    advantages = torch.randn(8, generator=gen, dtype=torch.float64)

    weight = weight0.clone().requires_grad_()
    local = {"global_tokens": None, "global_seqs": None}
    _policy_loss(weight, features, old, advantages, mask, mode, local).backward()
    grad_full = weight.grad.clone()

    weight.grad = None
    counts = {"global_tokens": mask.sum(), "global_seqs": 8}
    for i in range(8):
        rows = slice(i, i + 1)
        _policy_loss(
            weight, features[rows], old[rows], advantages[rows], mask[rows], mode, counts
        ).backward()
    close(weight.grad, grad_full, atol=1e-12)
    assert grad_full.abs().sum() > 1e-3  # a real gradient, not two zeros
