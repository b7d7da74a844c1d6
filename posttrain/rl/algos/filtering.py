"""Reward-based sample filtering (PF-PPO): keep the samples whose rewards are trustworthy.

Zhang, Shen et al., "Policy Filtration in RLHF to Fine-Tune LLM for Code Generation"
(later "Policy Filtration for RLHF to Mitigate Noise in Reward Models"), arXiv 2409.06957.
The paper observes that a reward model is more reliable in some reward ranges than others
(measured by the R^2 between rewards and actual scores of the samples kept), and trains PPO only
on the samples a filtration strategy keeps. With N completions sampled per prompt it compares:

* ``best_of_n`` (PF-PPO BoN): keep the highest-reward completion of each prompt;
* ``best_random`` (PF-PPO BR): keep the best one plus one other chosen uniformly at random;
* ``best_worst`` (PF-PPO BW): keep the best and the worst one.

The three names follow the paper's PF-PPO variants; its method section could not be opened
from here (only its abstract), so details it may specify differently, such as tie-breaking,
are ours and documented below.

``min_reward`` (any mode) treats a reward below it as unscorable: it is never kept and never the
best or the worst. With ``best_of_n`` this is rejection sampling's selection: the best completion
of a prompt, only if it reaches the threshold (RAFT, Dong et al. 2023, arXiv 2304.06767,
Algorithm 1 keeps the best; ReST, Gulcehre et al. 2023, arXiv 2308.08998, Sec. 2 filters by a
threshold; a prompt none of whose completions passes gives no data).

``bands`` keeps every sample whose reward lies in one of the given closed intervals
``[lo, hi]`` (for instance the low and high ranges where a reward model was measured reliable:
``[(-inf, 0.2), (0.8, inf)]``). This is our generalisation of the paper's reward-range analysis,
not one of its named strategies.

Layout: rewards are ``(B,)`` with B = P * G rows ordered prompt-major (G = ``group_size``
consecutive completions per prompt, as the RL loop lays them out), or ``(P, G)``. A NaN reward
("unscorable") is never kept and never counts as best or worst. Ties: "best" is the first
maximal completion of the group and "worst" the last minimal one, so for G >= 2 best and worst
are always two different completions, even when all rewards in the group are equal.

>>> r = torch.tensor([0.1, 0.9, 0.5, 0.3,   0.7, 0.2, 0.2, 0.8])  # 2 prompts x 4 completions
>>> filter_by_reward(r, "best_worst", group_size=4).int().tolist()
[1, 1, 0, 0, 0, 0, 1, 1]
>>> filter_by_reward(r, "bands", bands=[(0.0, 0.2), (0.8, 1.0)]).int().tolist()
[1, 1, 0, 0, 0, 1, 1, 1]
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

MODES = ("bands", "best_of_n", "best_worst", "best_random")


def _check_bands(bands: Sequence[tuple[float, float]] | None) -> list[tuple[float, float]]:
    if not bands:
        raise ValueError("mode='bands' needs bands=[(lo, hi), ...], at least one reward interval")
    checked = []
    for band in bands:
        if not isinstance(band, (tuple, list)) or len(band) != 2:
            raise ValueError(f"band {band!r}: expected a pair (lo, hi)")
        lo, hi = float(band[0]), float(band[1])
        if math.isnan(lo) or math.isnan(hi) or lo > hi:
            raise ValueError(f"band {band!r}: expected lo <= hi (use +-inf for open ends)")
        checked.append((lo, hi))
    return checked


def _as_groups(rewards: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """View (B,) rewards as (P, G); a (P, G) tensor is returned as is."""
    if rewards.dim() == 2:
        if group_size is not None and group_size != rewards.shape[1]:
            raise ValueError(f"group_size={group_size} but rewards have shape "
                             f"{tuple(rewards.shape)} (P, G)")
        return rewards
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be (B,) or (P, G), got shape {tuple(rewards.shape)}")
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
        raise ValueError(f"group modes need group_size, a positive int, got {group_size!r}")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards are not a whole number of groups of "
                         f"{group_size}")
    return rewards.view(-1, group_size)


def _best_and_worst(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(best index, worst index, group has a scorable sample), each shape (P,)."""
    valid = ~torch.isnan(groups)                                        # (P, G)
    # argmax returns the first maximal index: "best" = first max.
    best = torch.where(valid, groups, -torch.inf).argmax(dim=1)
    # "worst" = last min, so that best != worst when G >= 2 even if all rewards tie.
    flipped = torch.where(valid, groups, torch.inf).flip(dims=[1])
    worst = groups.shape[1] - 1 - flipped.argmin(dim=1)
    return best, worst, valid.any(dim=1)


def filter_by_reward(rewards: torch.Tensor, mode: str = "bands",
                     bands: Sequence[tuple[float, float]] | None = None,
                     group_size: int | None = None,
                     generator: torch.Generator | None = None,
                     min_reward: float | None = None) -> torch.Tensor:
    """Return a boolean keep-mask with the shape of ``rewards`` (see the module docstring).

    ``mode``: "bands" (needs ``bands``), or one of the per-prompt strategies "best_of_n",
    "best_worst", "best_random" (need ``group_size`` for 1-D rewards). ``generator`` seeds the
    random pick of "best_random". ``min_reward``: rewards below it count as NaN (never kept).

    >>> filter_by_reward(torch.tensor([0.0, 1.0, 0.5, 0.2]), "best_of_n", group_size=2, min_reward=0.6).int().tolist()
    [0, 1, 0, 0]
    >>> g = torch.Generator().manual_seed(0)
    >>> keep = filter_by_reward(torch.tensor([[0.0, 1.0, 0.5]]), "best_random", generator=g)
    >>> keep[0, 1].item(), keep.sum().item()   # the best one plus exactly one other
    (True, 2)
    """
    if mode not in MODES:
        raise ValueError(f"filter mode {mode!r} is not supported; expected one of "
                         f"{', '.join(MODES)}")
    if not torch.is_tensor(rewards):
        rewards = torch.as_tensor(rewards, dtype=torch.float64)
    if min_reward is not None:
        rewards = torch.where(rewards < min_reward, torch.nan, rewards)
    if mode == "bands":
        keep = torch.zeros(rewards.shape, dtype=torch.bool, device=rewards.device)
        for lo, hi in _check_bands(bands):
            keep |= (rewards >= lo) & (rewards <= hi)        # NaN compares False: dropped
        return keep
    groups = _as_groups(rewards, group_size)                  # (P, G)
    best, worst, scorable = _best_and_worst(groups)
    rows = torch.arange(groups.shape[0], device=groups.device)
    keep = torch.zeros(groups.shape, dtype=torch.bool, device=groups.device)
    keep[rows, best] = scorable
    if mode == "best_worst":
        keep[rows, worst] |= scorable
    elif mode == "best_random":
        # Uniform over the other scorable completions: random keys, invalid ones pushed below 0.
        keys = torch.rand(groups.shape, generator=generator, dtype=torch.float64)
        keys = keys.to(groups.device)
        eligible = ~torch.isnan(groups)
        eligible[rows, best] = False
        pick = torch.where(eligible, keys, -1.0).argmax(dim=1)
        keep[rows, pick] |= eligible.any(dim=1)
    return keep.view(rewards.shape)
