"""OTC's tool-integrated reward: among correct episodes, fewer tool calls earn more.

Wang et al. 2025, "Acting Less is Reasoning More! Teaching Model to Act Efficiently" (OTC-PO),
arXiv 2504.14870, Sec. 3: the reward is ``r = alpha * r_tool * r_phi`` with r_phi the outcome
(correctness) reward and r_tool a function of m, the episode's tool calls, and n, the optimal
number of calls for the question.

- OTC-PPO (no group): ``r_tool = cos(m * pi / (2m + c))``, 1 at m = 0, falling with m.
- OTC-GRPO: n is estimated as the fewest calls among the group's correct episodes, and with the
  harmonic-mean mapping ``f(m, n) = 0 (m = n = 0), m (n = 0), 2mn / (m + n) (otherwise)``::

      r_tool = 1                      if f(m, n) = n = 0
             = cos(m * pi / (2m + c)) if n = 0
             = sin(f(m, n) * pi / 2n) otherwise     (1 at m = n, less on either side)

Where we differ: a group with no correct episode has no n; the paper's code treats that as n = 0,
and so do we (the product with r_phi = 0 makes it moot for 0/1 outcomes). ``alpha`` is left to the
reward channel's weight.
"""
from __future__ import annotations

import math

import torch


def otc_mapping(m: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """f(m, n) of OTC-GRPO -> (B,) float: 0 where m = n = 0, m where n = 0, else 2mn / (m + n).

    >>> otc_mapping(torch.tensor([0., 3., 1., 3.]), torch.tensor([0., 0., 1., 1.]))
    tensor([0.0000, 3.0000, 1.0000, 1.5000])
    """
    # m, n: (B,) tool calls of the episode, optimal calls of its group
    m, n = m.double(), n.double()
    harmonic = 2 * m * n / (m + n).clamp(min=1e-12)
    return torch.where(n == 0, m, harmonic).float()


def otc_tool_reward(tool_calls: torch.Tensor, correct: torch.Tensor, group_size: int | None,
                    c: float = 1.0) -> torch.Tensor:
    """r_tool of OTC-GRPO (``group_size`` set: n from each group's correct episodes) or OTC-PPO
    (``group_size`` None: n = 0) -> (B,) float in [0, 1].

    >>> calls = torch.tensor([0., 1., 2., 1., 2., 3.])
    >>> otc_tool_reward(calls, torch.tensor([True, True, False, False, True, True]), group_size=3)
    tensor([1.0000, 0.5000, 0.3090, 0.8660, 1.0000, 0.9511])
    """
    # tool_calls: (B,) calls per episode; correct: (B,) bool; rows g*G .. g*G+G-1 form group g
    if c <= 0:
        raise ValueError(f"c must be positive, got {c}")
    m = tool_calls.double()
    if group_size is None:
        n = torch.zeros_like(m)
    else:
        grouped = m.view(-1, group_size)
        masked = torch.where(correct.view(-1, group_size), grouped, torch.full_like(grouped, math.inf))
        best = masked.min(dim=1).values
        n = torch.where(torch.isinf(best), torch.zeros_like(best), best).repeat_interleave(group_size)
    f = otc_mapping(m, n).double()
    decay = torch.cos(m * math.pi / (2 * m + c))
    rise = torch.sin(f * math.pi / (2 * n).clamp(min=1e-12))
    out = torch.where(n == 0, torch.where(f == 0, torch.ones_like(m), decay), rise)
    return out.float()
