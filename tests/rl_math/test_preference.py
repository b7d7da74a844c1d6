"""Online DPO's math (posttrain.rl.algos.preference): pair construction and the per-pair losses,
on hand-computed values."""
import doctest
import math

import pytest
import torch

from posttrain.rl.algos import (
    chosen_nll,
    dpo_pair_loss,
    preference,
    preference_pairs,
    round_robin,
    win_rates,
)
from posttrain.rl.loop.preference import pair_advantages

NAN = float("nan")


def _pairs(scores, group_size, pairing="best_worst", margin=0.0):
    chosen, rejected, stats = preference_pairs(torch.tensor(scores), group_size, pairing, margin)
    return list(zip(chosen.tolist(), rejected.tolist())), stats


def test_best_worst_takes_the_first_best_and_the_last_worst():
    """Group 0 [1, 1, 0, 0]: best = row 0 (first of the two 1s), worst = row 3 (last of the 0s).
    Group 1 [0.2, 0.9, 0.4, 0.9]: best row 5 (first 0.9), worst row 4. Group 2 all 0.5: a tie, no pair."""
    pairs, stats = _pairs([1, 1, 0, 0, 0.2, 0.9, 0.4, 0.9, 0.5, 0.5, 0.5, 0.5], 4)
    assert pairs == [(0, 3), (5, 4)]
    assert stats["pairs"] == 2
    assert stats["groups_with_pair"] == pytest.approx(2 / 3, abs=1e-12)
    assert stats["score_margin"] == pytest.approx((1.0 + 0.7) / 2, abs=1e-6)


def test_unscorable_samples_are_never_paired():
    """NaN is skipped: [nan, 0.5, nan, 0.2] pairs rows 1 and 3; a group with one scorable sample gives none."""
    pairs, _ = _pairs([NAN, 0.5, NAN, 0.2, NAN, 0.5, NAN, NAN], 4)
    assert pairs == [(1, 3)]
    pairs, _ = _pairs([NAN, 1.0, 0.0, NAN], 4, "all")
    assert pairs == [(1, 2)]


def test_margin_is_strict():
    """Scores 0.3 and 0.5 differ by 0.2: a margin of 0.2 drops the pair, 0.1 keeps it."""
    assert _pairs([0.3, 0.5], 2, margin=0.2)[0] == []
    assert _pairs([0.3, 0.5], 2, margin=0.1)[0] == [(1, 0)]
    assert _pairs([0.3, 0.5], 2, "all", margin=0.2)[0] == []


def test_all_pairs_orders_by_chosen_then_rejected():
    """[0.0, 1.0, 0.5] -> pairs (1, 0), (1, 2), (2, 0); the second group [2, 2, 1]: (3, 5), (4, 5)."""
    pairs, stats = _pairs([0.0, 1.0, 0.5, 2.0, 2.0, 1.0], 3, "all")
    assert pairs == [(1, 0), (1, 2), (2, 0), (3, 5), (4, 5)]
    assert stats["score_margin"] == pytest.approx((1.0 + 0.5 + 0.5 + 1.0 + 1.0) / 5, abs=1e-12)
    assert _pairs([0.0, 1.0, 0.5, 2.0, 2.0, 1.0], 3, "all", margin=0.5)[0] == [(1, 0), (3, 5), (4, 5)]


def test_no_pair_anywhere():
    pairs, stats = _pairs([1.0, 1.0, 0.0, 0.0], 2)
    assert pairs == [] and stats == {"pairs": 0.0, "groups_with_pair": 0.0, "score_margin": 0.0}


@pytest.mark.parametrize("args, message", [
    (([1.0, 0.0, 1.0], 2), "multiple of group_size"),
    (([1.0, 0.0], 1), "group_size >= 2"),
    (([1.0, 0.0], 2, "best_of_n"), "pairing 'best_of_n'"),
    (([1.0, 0.0], 2, "all", -0.1), "margin must be >= 0"),
])
def test_pair_errors(args, message):
    scores, *rest = args
    with pytest.raises(ValueError, match=message):
        preference_pairs(torch.tensor(scores), *rest)


def test_pair_advantages_count_wins_minus_losses():
    """Pairs (1,0), (1,2), (2,0): row 1 won twice, row 2 won once and lost once, row 0 lost twice."""
    assert pair_advantages(torch.tensor([1, 1, 2]), torch.tensor([0, 2, 0]), 4).tolist() == [-2.0, 2.0, 0.0, 0.0]


# Two pairs, beta 0.5. Log-ratios: pair 1 chosen -2 - (-2.5) = 0.5, rejected -3 - (-2.5) = -0.5, so
# Delta = 1 and h = 0.5; pair 2 chosen -5 - (-5) = 0, rejected -4 - (-4.5) = 0.5, Delta = -0.5, h = -0.25.
CHOSEN, REJECTED = [-2.0, -5.0], [-3.0, -4.0]
REF_CHOSEN, REF_REJECTED = [-2.5, -5.0], [-2.5, -4.5]
H = (0.5, -0.25)


def _softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x)."""
    return math.log1p(math.exp(x))


@pytest.mark.parametrize("loss_type, eps, expected", [
    # -log sigmoid(h) = log(1 + e^-h)
    ("sigmoid", 0.0, [_softplus(-h) for h in H]),
    # cDPO: (1 - eps) log(1 + e^-h) + eps log(1 + e^h)
    ("sigmoid", 0.1, [0.9 * _softplus(-h) + 0.1 * _softplus(h) for h in H]),
    # robust: [(1 - eps) log(1 + e^-h) - eps log(1 + e^h)] / (1 - 2 eps)
    ("robust", 0.1, [(0.9 * _softplus(-h) - 0.1 * _softplus(h)) / 0.8 for h in H]),
    # hinge: max(0, 1 - h) = 0.5 and 1.25
    ("hinge", 0.0, [0.5, 1.25]),
    # ipo, lengths chosen (2, 5), rejected (4, 1): pair 1 0.5/2 + 0.5/4 = 0.375, (0.375 - 1)^2 = 0.390625;
    # pair 2 0/5 - 0.5/1 = -0.5, (-0.5 - 1)^2 = 2.25
    ("ipo", 0.0, [0.390625, 2.25]),
])
def test_pair_losses_on_hand_computed_values(loss_type, eps, expected):
    t = torch.tensor
    losses, stats = dpo_pair_loss(t(CHOSEN), t(REJECTED), t(REF_CHOSEN), t(REF_REJECTED), beta=0.5,
                                  loss_type=loss_type, label_smoothing=eps,
                                  chosen_lengths=t([2.0, 5.0]), rejected_lengths=t([4.0, 1.0]))
    assert losses.tolist() == pytest.approx(expected, abs=1e-6)
    # implicit rewards beta * log-ratio: chosen (0.25, 0) -> 0.125, rejected (-0.25, 0.25) -> 0
    assert float(stats["reward_chosen"]) == pytest.approx(0.125, abs=1e-7)
    assert float(stats["reward_rejected"]) == pytest.approx(0.0, abs=1e-7)
    assert float(stats["reward_margin"]) == pytest.approx(0.125, abs=1e-7)
    assert float(stats["reward_accuracy"]) == 0.5


def test_dpo_gradient_is_the_papers():
    """DPO eq. 7's gradient: d loss / d log pi(y_w) = -beta sigmoid(-h) and +beta sigmoid(-h) for y_l:
    pair 1 -0.5 / (1 + e^0.5) = -0.188771, pair 2 -0.5 / (1 + e^-0.25) = -0.218777."""
    chosen = torch.tensor(CHOSEN, requires_grad=True)
    rejected = torch.tensor(REJECTED, requires_grad=True)
    losses, _ = dpo_pair_loss(chosen, rejected, torch.tensor(REF_CHOSEN), torch.tensor(REF_REJECTED), beta=0.5)
    losses.sum().backward()
    expected = [-0.5 / (1 + math.exp(h)) for h in H]
    assert chosen.grad.tolist() == pytest.approx(expected, abs=1e-6)
    assert rejected.grad.tolist() == pytest.approx([-g for g in expected], abs=1e-6)


@pytest.mark.parametrize("keys, message", [
    ({"loss_type": "kto"}, "loss_type 'kto'"),
    ({"label_smoothing": 0.5}, r"label_smoothing must be in \[0, 0.5\)"),
    ({"loss_type": "ipo"}, "needs chosen_lengths and rejected_lengths"),
])
def test_pair_loss_errors(keys, message):
    one = torch.zeros(1)
    with pytest.raises(ValueError, match=message):
        dpo_pair_loss(one, one, one, one, beta=0.1, **keys)


def test_chosen_nll_is_a_token_mean_that_splits():
    """Sums -3 and -5 over 4 + 4 tokens: NLL 1.0; two halves over the same total add up to it."""
    logps = torch.tensor([-3.0, -5.0])
    assert float(chosen_nll(logps, 8)) == 1.0
    assert float(chosen_nll(logps[:1], 8) + chosen_nll(logps[1:], 8)) == 1.0


def test_win_rates_fill_the_mirror_pairs():
    """G = 3, pairs (0,1) 0.9, (0,2) 0.6, (1,2) 0.2: answer 0 beats 1 with 0.9 and 2 with 0.6 -> 0.75;
    answer 1: 0.1 and 0.2 -> 0.15; answer 2: 0.4 and 0.8 -> 0.6. A second group of 0.5s is all 0.5."""
    assert round_robin(3) == [(0, 1), (0, 2), (1, 2)]
    rates = win_rates(torch.tensor([[0.9, 0.6, 0.2], [0.5, 0.5, 0.5]], dtype=torch.float64), 3)
    assert rates.tolist() == pytest.approx([0.75, 0.15, 0.6, 0.5, 0.5, 0.5], abs=1e-12)
    with pytest.raises(ValueError, match=r"preferences must be \(groups, 3\)"):
        win_rates(torch.zeros(2, 4), 3)


def test_docstring_examples():
    assert doctest.testmod(preference).failed == 0
