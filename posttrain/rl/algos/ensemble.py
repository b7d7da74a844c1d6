"""Reward-model ensembles: one reward per sample from the rewards of K members.

Aggregating the K member rewards r_1..r_K of one sample (:func:`aggregate`):

* ``mean``: (1/K) sum_i r_i, the ensemble average (Coste et al. 2023, arXiv 2310.02743, "mean").
* ``min``: min_i r_i, worst-case optimisation (WCO, same paper).
* ``mean_minus_std``: mean - k * std with the population std (divide by K), a lower confidence
  bound. Where we differ: Coste et al.'s uncertainty-weighted optimisation (UWO) subtracts
  lambda * *variance*; we subtract k * std so that the penalty is in reward units and k does not
  depend on the reward scale. Reward-Robust RLHF (Yan et al. 2024, arXiv 2409.15360) likewise
  trades the nominal (mean) reward against a pessimistic one; ``min`` and ``mean_minus_std`` are
  the two pessimistic choices offered here. For K = 1 the std is 0, so every aggregation equals
  the single model's reward.

An unknown aggregation is a ValueError here; recipes and ensemble.json are checked before (the
schema's choices, :func:`posttrain.models.reward.load_reward_model`), with the file or key named.
"""
from __future__ import annotations

import torch

AGGREGATIONS = ("mean", "min", "mean_minus_std")


def aggregate(member_rewards: torch.Tensor, aggregation: str = "mean", std_coef: float = 1.0) -> torch.Tensor:
    """Combine per-member rewards of shape (K, B) into one reward per sample, shape (B,).

    >>> r = torch.tensor([[1.0, 0.0], [3.0, 2.0]])   # K=2 members, B=2 samples
    >>> aggregate(r, "mean").tolist(), aggregate(r, "min").tolist()
    ([2.0, 1.0], [1.0, 0.0])
    >>> aggregate(r, "mean_minus_std", std_coef=2.0).tolist()   # std = 1 for both samples
    [0.0, -1.0]
    """
    if member_rewards.dim() != 2:
        raise ValueError(f"member_rewards must be (K, B), got shape {tuple(member_rewards.shape)}")
    if aggregation == "mean":
        return member_rewards.mean(dim=0)
    if aggregation == "min":
        return member_rewards.min(dim=0).values
    if aggregation == "mean_minus_std":
        std = member_rewards.std(dim=0, unbiased=False)  # population std: 0 for an ensemble of one
        return member_rewards.mean(dim=0) - std_coef * std
    raise ValueError(f"reward aggregation {aggregation!r} is not supported; expected one of {', '.join(AGGREGATIONS)}.")
