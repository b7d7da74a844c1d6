"""PF-PPO reward filtering (arXiv 2409.06957): each mode on hand-made groups, ties, NaN, seeds."""
from __future__ import annotations

import doctest

import pytest
import torch

from posttrain.rl.algos import filter_by_reward, filtering

# 2 prompts x 4 completions, prompt-major.
REWARDS = torch.tensor([0.1, 0.9, 0.5, 0.3,   0.7, 0.2, 0.2, 0.8])


def _ints(mask):
    return mask.int().tolist()


def test_best_of_n_keeps_the_top_completion_of_each_prompt():
    assert _ints(filter_by_reward(REWARDS, "best_of_n", group_size=4)) == \
        [0, 1, 0, 0, 0, 0, 0, 1]


def test_best_worst_keeps_top_and_bottom_with_last_min_on_ties():
    # Prompt 2 has two minima (0.2 at positions 1 and 2): the last one is "worst".
    assert _ints(filter_by_reward(REWARDS, "best_worst", group_size=4)) == \
        [1, 1, 0, 0, 0, 0, 1, 1]


def test_all_equal_group_still_gives_two_distinct_samples():
    """First max = position 0, last min = position G-1."""
    keep = filter_by_reward(torch.tensor([1.0, 1.0, 1.0]), "best_worst", group_size=3)
    assert _ints(keep) == [1, 0, 1]


def test_two_dimensional_rewards_keep_their_shape():
    keep = filter_by_reward(REWARDS.view(2, 4), "best_worst")
    assert keep.shape == (2, 4) and keep.dtype == torch.bool
    assert _ints(keep.flatten()) == [1, 1, 0, 0, 0, 0, 1, 1]


def test_nan_is_never_best_worst_or_kept():
    nan = float("nan")
    r = torch.tensor([nan, 0.4, 0.6, nan,   nan, nan, nan, nan])
    assert _ints(filter_by_reward(r, "best_worst", group_size=4)) == [0, 1, 1, 0, 0, 0, 0, 0]
    assert _ints(filter_by_reward(r, "best_of_n", group_size=4)) == [0, 0, 1, 0, 0, 0, 0, 0]
    g = torch.Generator().manual_seed(0)
    assert _ints(filter_by_reward(r, "best_random", group_size=4, generator=g)) == \
        [0, 1, 1, 0, 0, 0, 0, 0]  # the only other scorable completion is position 1


def test_group_of_one_keeps_its_sample():
    r = torch.tensor([0.3, 0.1])
    for mode in ("best_of_n", "best_worst", "best_random"):
        assert _ints(filter_by_reward(r, mode, group_size=1)) == [1, 1]


def test_best_random_keeps_best_plus_one_uniform_other():
    """3000 groups of 4 with the best at position 2: the random pick is never the best, and
    each of the 3 others is drawn about 1000 times (binomial std ~26, 150 is ~6 sigma)."""
    groups = torch.tensor([0.1, 0.3, 0.9, 0.2]).repeat(3000, 1)
    g = torch.Generator().manual_seed(123)
    keep = filter_by_reward(groups.flatten(), "best_random", group_size=4, generator=g).view(3000, 4)
    assert keep[:, 2].all()
    assert (keep.sum(dim=1) == 2).all()
    counts = keep[:, [0, 1, 3]].sum(dim=0)
    assert ((counts - 1000).abs() < 150).all(), counts
    again = filter_by_reward(groups.flatten(), "best_random", group_size=4,
                             generator=torch.Generator().manual_seed(123)).view(3000, 4)
    assert torch.equal(keep, again)


def test_bands_are_closed_intervals_and_drop_nan():
    r = torch.tensor([-1.0, 0.0, 0.2, 0.5, 0.8, 1.0, 3.0, float("nan")])
    keep = filter_by_reward(r, "bands", bands=[(0.0, 0.2), (0.8, 1.0)])
    assert _ints(keep) == [0, 1, 1, 0, 1, 1, 0, 0]
    open_ends = filter_by_reward(r, "bands", bands=[(-float("inf"), 0.0), (1.0, float("inf"))])
    assert _ints(open_ends) == [1, 1, 0, 0, 0, 1, 1, 0]
    # Works on plain lists and ignores the group layout.
    assert _ints(filter_by_reward([0.5, 0.9], bands=[(0.9, 0.9)])) == [0, 1]


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "top_k", "group_size": 4}, "filter mode 'top_k' is not supported"),
    ({"mode": "bands"}, "needs bands"),
    ({"mode": "bands", "bands": [(0.5, 0.1)]}, "expected lo <= hi"),
    ({"mode": "bands", "bands": [(0.5,)]}, "expected a pair"),
    ({"mode": "best_worst"}, "need group_size"),
    ({"mode": "best_worst", "group_size": 3}, "not a whole number of groups of 3"),
])
def test_invalid_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        filter_by_reward(REWARDS, **kwargs)


def test_docstring_examples_run():
    assert doctest.testmod(filtering).failed == 0
