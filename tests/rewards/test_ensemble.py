"""Ensemble aggregation: hand-computed values and consistency with posttrain.models.reward."""
from __future__ import annotations

import doctest
import math

import pytest
import torch
from posttrain.rewards import aggregate_ensemble, ensemble

from posttrain.models.reward import AGGREGATIONS, aggregate

# K=3 members, B=2 samples.
SCORES = torch.tensor([[1.0, 4.0], [3.0, 0.0], [5.0, 2.0]], dtype=torch.float64)


def test_hand_computed_modes():
    """Column 0: 1, 3, 5 -> mean 3, min 1, population var (4+0+4)/3 = 8/3.
    Column 1: 4, 0, 2 -> mean 2, min 0, var (4+4+0)/3 = 8/3.
    k = 1.5: 1.5 * sqrt(8/3) = sqrt(6), so mean - k*std = [3 - sqrt(6), 2 - sqrt(6)]."""
    exact = {"rtol": 0, "atol": 1e-12}
    torch.testing.assert_close(aggregate_ensemble(SCORES, "mean"), SCORES.new_tensor([3.0, 2.0]),
                               **exact)
    torch.testing.assert_close(aggregate_ensemble(SCORES, "min"), SCORES.new_tensor([1.0, 0.0]),
                               **exact)
    torch.testing.assert_close(aggregate_ensemble(SCORES, "mean_minus_std", k=1.5),
                               SCORES.new_tensor([3 - math.sqrt(6), 2 - math.sqrt(6)]), **exact)
    torch.testing.assert_close(aggregate_ensemble(SCORES, "mean_minus_std", k=0),
                               SCORES.new_tensor([3.0, 2.0]), **exact)


def test_consistent_with_the_reward_model_scorer_aggregation():
    """The ensemble RewardScorer calls posttrain.models.reward.aggregate: same numbers."""
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(5, 7, generator=gen)
    for mode in AGGREGATIONS:
        for k in (0.0, 0.5, 2.0):
            assert torch.equal(aggregate_ensemble(scores, mode, k),
                               aggregate(scores, mode, std_coef=k))
    assert ensemble.MODES == AGGREGATIONS


def test_single_member_every_mode_is_the_member():
    one = torch.tensor([[0.3, -1.2, 2.0]])
    for mode in AGGREGATIONS:
        torch.testing.assert_close(aggregate_ensemble(one, mode, k=3.0), one[0], rtol=0, atol=0)


def test_member_order_does_not_matter_and_pessimism_orders():
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(4, 16, generator=gen, dtype=torch.float64)
    shuffled = scores[torch.tensor([2, 0, 3, 1])]
    for mode in AGGREGATIONS:
        torch.testing.assert_close(aggregate_ensemble(shuffled, mode, 1.0),
                                   aggregate_ensemble(scores, mode, 1.0), rtol=0, atol=1e-12)
    mean = aggregate_ensemble(scores, "mean")
    assert (aggregate_ensemble(scores, "min") <= mean).all()
    assert (aggregate_ensemble(scores, "mean_minus_std", 1.0) <= mean).all()


def test_errors():
    with pytest.raises(ValueError, match="'median' is not supported"):
        aggregate_ensemble(SCORES, "median")
    with pytest.raises(ValueError, match="k=-1.0; expected a number >= 0"):
        aggregate_ensemble(SCORES, "mean_minus_std", k=-1.0)
    with pytest.raises(ValueError, match=r"must be \(K, B\)"):
        aggregate_ensemble(SCORES[0], "mean")


def test_docstring_examples_run():
    assert doctest.testmod(ensemble).failed == 0
