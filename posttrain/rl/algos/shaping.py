"""DAPO's batch shaping as pure tensor functions: overlong punishment/filtering, group filtering.

Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale",
arXiv 2503.14476: Sec. 3.2 (dynamic sampling), Sec. 3.4 (overlong reward shaping).
"""
from __future__ import annotations

import torch


def soft_overlong_punishment(lengths: torch.Tensor, max_length: int, buffer: int,
                             penalty: float = 1.0) -> torch.Tensor:
    """DAPO eq. 13, the length-aware penalty added to the reward -> (B,) float, <= 0.

    With L_max = ``max_length`` and L_cache = ``buffer``::

        R_length(y) = 0                                  |y| <= L_max - L_cache
                    = ((L_max - L_cache) - |y|) / L_cache   L_max - L_cache < |y| <= L_max
                    = -1                                 L_max < |y|

    times ``penalty`` (DAPO: 1). In the paper L_max (16,384) is below the generation limit
    (20,480 = L_max + L_cache); here ``max_length`` is usually the generation limit itself, so the
    ramp ends at -penalty exactly at the limit and the third case only fires for longer inputs.

    >>> soft_overlong_punishment(torch.tensor([4, 6, 7, 8, 9]), max_length=8, buffer=4)
    tensor([ 0.0000, -0.5000, -0.7500, -1.0000, -1.0000])
    """
    # lengths: (B,) response token counts
    if buffer <= 0 or buffer > max_length:
        raise ValueError(f"buffer must be in 1..max_length ({max_length}), got {buffer}")
    lengths = lengths.to(torch.float32)
    start = max_length - buffer
    ramp = (start - lengths) / buffer
    out = torch.where(lengths <= start, torch.zeros_like(lengths), ramp)
    out = torch.where(lengths > max_length, torch.full_like(lengths, -1.0), out)
    return penalty * out


def overlong_filter_mask(response_mask: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """DAPO overlong filtering: zero the loss mask of truncated completions -> (B, T).

    A completion cut off by the length limit gets no gradient (its reward says nothing about a
    finished answer). TRL 1.16 calls this ``mask_truncated_completions``.

    >>> overlong_filter_mask(torch.ones(2, 3), torch.tensor([False, True]))
    tensor([[1., 1., 1.],
            [0., 0., 0.]])
    """
    # response_mask: (B, T); truncated: (B,) bool
    return response_mask * (~truncated).to(response_mask.dtype)[:, None]


def groups_with_signal(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """DAPO dynamic sampling filter (eq. 11): True for groups whose rewards are not all equal.

    A group whose G rewards are identical has zero group-relative advantage for every
    completion, so it only dilutes the batch; DAPO drops it and samples more prompts.

    >>> groups_with_signal(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5]), group_size=2)
    tensor([False,  True, False])
    """
    # rewards: (B,) with B = num_groups * group_size, grouped prompt-major
    grouped = rewards.view(-1, group_size)  # (B/G, G)
    return (grouped != grouped[:, :1]).any(dim=1)
