"""pass@k (Chen et al. 2021, eq. 1) on hand-computed values and against brute-force enumeration."""
from __future__ import annotations

import itertools
import math

import pytest

from posttrain.evaluation import pass_at_k, summarize_groups


def test_hand_computed_values():
    """n=5, c=2: pass@1 = 2/5; pass@2 = 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7; pass@3 = 1 - C(3,3)/C(5,3) = 0.9."""
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4, abs=1e-12)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7, abs=1e-12)
    assert pass_at_k(5, 2, 3) == pytest.approx(0.9, abs=1e-12)
    assert pass_at_k(5, 2, 4) == 1.0  # only 3 failures: any 4 samples include a pass
    assert pass_at_k(5, 0, 3) == 0.0


@pytest.mark.parametrize("n,c,k", [(6, 1, 2), (6, 3, 3), (7, 2, 4), (8, 5, 1)])
def test_matches_enumeration_of_all_k_subsets(n, c, k):
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / math.comb(n, k), abs=1e-12)


def test_summarize_groups_averages_problems():
    """Problem A: 1 of 2 passes (pass@1 0.5, pass@2 1); problem B: 0 of 2 (0, 0) -> means 0.25 and 0.5."""
    out = summarize_groups([True, False, False, False], group_size=2, ks=[1, 2, 4])
    assert out == {"pass@1": 0.25, "pass@2": 0.5}  # k=4 > group size is left out
    with pytest.raises(ValueError):
        summarize_groups([True, False, True], group_size=2, ks=[1])
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
