"""Sampler/trainer mismatch weights (TIS / MIS, token and sequence level), hand-computed."""

import math

import pytest
from rl_math_helpers import ATOL, close, t  # noqa: F401

from posttrain.rl.algos import mismatch_weights

E = math.exp


def batch():
    """Log-ratio d = trainer - sampler per token:
    row 0: [0.2, 1.5, -1.0]          -> ratios [e^0.2, e^1.5, e^-1] = [1.2214, 4.4817, 0.3679]
    row 1: [NaN sampler -> 0, -0.1, pad] -> ratios [1, e^-0.1 = 0.9048, pad]
    """
    old = t([[-1.0, -1.0, -2.0], [-0.5, -0.3, 7.0]])
    sampler = t([[-1.2, -2.5, -1.0], [float("nan"), -0.2, 0.0]])
    mask = t([[1, 1, 1], [1, 1, 0]])
    return old, sampler, mask


def test_token_truncate_tis():
    """clip_max 3: e^1.5 -> 3; 1 of 5 response tokens truncated; pad weight 0.
    ratio_mean over the 5 tokens = (e^0.2 + 3 + e^-1 + 1 + e^-0.1) / 5."""
    weights, m = mismatch_weights(*batch(), level="token", mode="truncate", clip_max=3.0)
    close(weights, [[E(0.2), 3.0, E(-1.0)], [1.0, E(-0.1), 0.0]])
    close(m["frac_truncated"], 1 / 5)
    close(m["ratio_mean"], (E(0.2) + 3.0 + E(-1.0) + 1.0 + E(-0.1)) / 5)
    close(m["ratio_min"], E(-1.0))
    close(m["ratio_max"], 3.0)


def test_token_mask_mis():
    """Keep ratios in [0.5, 3]: e^1.5 = 4.48 and e^-1 = 0.37 are masked to 0 (2 of 5)."""
    weights, m = mismatch_weights(*batch(), level="token", mode="mask", clip_max=3.0, clip_min=0.5)
    close(weights, [[E(0.2), 0.0, 0.0], [1.0, E(-0.1), 0.0]])
    close(m["frac_masked"], 2 / 5)


def test_sequence_level_is_a_product_of_token_ratios():
    """Row 0: exp(0.2 + 1.5 - 1.0) = e^0.7 = 2.0138; row 1: exp(0 - 0.1) = e^-0.1.
    truncate at 2 -> row 0 weight 2 on every token; mask at 2 -> row 0 dropped (1 of 2 rows)."""
    weights, m = mismatch_weights(*batch(), level="sequence", mode="truncate", clip_max=2.0)
    close(weights, [[2.0, 2.0, 2.0], [E(-0.1), E(-0.1), 0.0]])
    close(m["frac_truncated"], 0.5)
    close(m["ratio_mean"], (2.0 + E(-0.1)) / 2)
    weights, m = mismatch_weights(*batch(), level="sequence", mode="mask", clip_max=2.0)
    close(weights, [[0.0, 0.0, 0.0], [E(-0.1), E(-0.1), 0.0]])
    close(m["frac_masked"], 0.5)


def test_mismatch_metrics():
    """Over the 4 tokens that have a sampler logprob (the NaN one and the pad are excluded):
    |d| = [0.2, 1.5, 1.0, 0.1] -> mean 0.7, max 1.5.
    k3 of KL(sampler || trainer) with log r = d: e^d - 1 - d, averaged:
    (e^0.2 - 1.2 + e^1.5 - 2.5 + e^-1 + 0 + e^-0.1 - 0.9) / 4."""
    _, m = mismatch_weights(*batch())
    close(m["logprob_abs_diff_mean"], 0.7)
    close(m["logprob_abs_diff_max"], 1.5)
    k3 = (E(0.2) - 1.2) + (E(1.5) - 2.5) + E(-1.0) + (E(-0.1) - 0.9)
    close(m["kl_sampler_trainer"], k3 / 4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="level"):
        mismatch_weights(*batch(), level="sentence")
    with pytest.raises(ValueError, match="clip_max or clip_min"):
        mismatch_weights(*batch(), clip_max=None)
