"""DUMP's UCB scores and softmax, and the online difficulty filter, on hand-computed values."""
import math

import pytest
import torch
from rl_math_helpers import close, t

from posttrain.rl.algos.curriculum import (
    dump_ucb_scores,
    skip_settled_prompts,
    source_probabilities,
    window_mean_abs,
)


def test_ucb_scores_hand_computed():
    """mu = [0.2, 0.5, 0.0], n = [30, 10, 0] -> N = 40, bonus_j = sqrt(2 ln 41 / (n_j + 1)):
    ln 41 = 3.713572; 2 ln 41 = 7.427144; /31 = 0.239585 -> 0.489474; /11 = 0.675195 -> 0.821703;
    /1 -> 2.725279. With c = 0.5 the bonus halves."""
    scores = dump_ucb_scores(t([0.2, 0.5, 0.0]), t([30, 10, 0]))
    close(scores, [0.2 + 0.489474, 0.5 + 0.821703, 2.725279])
    half = dump_ucb_scores(t([0.2, 0.5, 0.0]), t([30, 10, 0]), exploration=0.5)
    close(half, [0.2 + 0.244737, 0.5 + 0.410852, 1.362640])


def test_ucb_before_any_draw_is_uniform():
    """n = 0 everywhere: N = max(1, 0) = 1, every bonus sqrt(2 ln 2) and every mu 0: a uniform softmax."""
    scores = dump_ucb_scores(t([0.0, 0.0, 0.0]), t([0, 0, 0]))
    close(scores, [math.sqrt(2 * math.log(2))] * 3)
    close(source_probabilities(scores), [1 / 3] * 3)


def test_softmax_temperature_hand_computed():
    """scores [1.0, 0.9], tau 0.1: exp(0) : exp(-1) -> 1 / (1 + e^-1) = 0.731059; tau 1: 0.524979."""
    close(source_probabilities(t([1.0, 0.9]), temperature=0.1), [0.731059, 0.268941])
    close(source_probabilities(t([1.0, 0.9]), temperature=1.0), [0.524979, 0.475021])
    with pytest.raises(ValueError, match="temperature must be > 0"):
        source_probabilities(t([1.0]), temperature=0.0)


def test_window_mean_abs():
    assert window_mean_abs([]) == 0.0
    assert window_mean_abs([0.5, -1.5, 0.0, 1.0]) == pytest.approx(0.75)


def test_settled_prompts_are_those_with_recent_pass_rate_zero_or_one():
    nan = float("nan")
    rates = torch.tensor([[0.0, 0.0, nan], [1.0, 1.0, 1.0], [0.0, 1.0, nan], [0.25, nan, nan], [nan, nan, nan],
                          [1.0, nan, nan]])
    assert skip_settled_prompts(rates).tolist() == [True, True, False, False, False, True]
    with pytest.raises(ValueError, match=r"\(P, M\)"):
        skip_settled_prompts(torch.tensor([0.0, 1.0]))
