"""Reward-model ensemble aggregation: one reward per sample from K member rewards.

The math lives in :func:`posttrain.rl.algos.ensemble.aggregate` (which the ensemble
:class:`~posttrain.models.reward.RewardScorer` calls); this module re-exports it under the
plugin-facing name so reward plugins and ensembles share one definition:

* ``mean``: ``(1/K) sum_i r_i`` (Coste et al., "Reward Model Ensembles Help Mitigate
  Overoptimization", arXiv 2310.02743, mean optimisation);
* ``min``: ``min_i r_i`` (same paper, worst-case optimisation, WCO);
* ``mean_minus_std``: ``mean - k * std`` with the population std (divide by K), a lower
  confidence bound. Where we differ: Coste et al.'s uncertainty-weighted optimisation (UWO)
  subtracts ``lambda * variance``; we subtract ``k * std`` so the penalty is in reward units.
  Reward-Robust RLHF (Yan et al., arXiv 2409.15360) likewise trades the nominal (mean) reward
  against a pessimistic one; ``min`` and ``mean_minus_std`` are the two pessimistic choices.

For K = 1 the std is 0, so every mode returns the single member's reward.
"""
from __future__ import annotations

import torch

from posttrain.rl.algos.ensemble import AGGREGATIONS, aggregate

MODES = AGGREGATIONS


def aggregate_ensemble(scores: torch.Tensor, mode: str = "mean", k: float = 1.0) -> torch.Tensor:
    """Combine member rewards ``scores`` of shape (K, B) into rewards of shape (B,).

    ``mode``: "mean", "min" or "mean_minus_std"; ``k`` is the std coefficient of
    "mean_minus_std" (>= 0; ignored by the other modes). Unknown modes raise ConfigError (they come from recipes).

    >>> s = torch.tensor([[1.0, 0.0], [3.0, 2.0]])   # K=2 members, B=2 samples
    >>> aggregate_ensemble(s, "mean_minus_std", k=0.5).tolist()   # std = 1 for both samples
    [1.5, 0.5]
    """
    if not isinstance(scores, torch.Tensor):
        scores = torch.as_tensor(scores, dtype=torch.float32)
    # Same range as the reward_model stage's std_coef (ge=0): a negative k would reward
    # disagreement between members, the opposite of the pessimism these modes are for.
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not k >= 0:
        raise ValueError(f"k={k!r}; expected a number >= 0 (the std coefficient)")
    return aggregate(scores, mode, std_coef=float(k))
