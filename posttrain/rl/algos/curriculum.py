"""Curricula over the prompt data: DUMP's UCB over data sources and an online difficulty filter.

Shapes: S = data sources (distributions), P = prompts, M = a prompt's memory slots.

DUMP (Wang et al. 2025, "DUMP: Automated Distribution-Level Curriculum Learning for RL-based LLM
Post-training", arXiv 2504.09710) treats each data source as a bandit arm whose value is its
learnability, the expected absolute advantage of its completions (Sec. 3, Theorem 3.1), estimated
over a sliding window of the source's most recent completions; a UCB score adds an exploration
bonus for rarely drawn sources, and a softmax over the scores gives the probability of drawing each
source. Constants and smoothing follow the authors' code (github.com/ZhentingWang/DUMP,
verl/utils/curriculum_learning.py: window 300 completions, c = 1, tau = 0.1, the +1 terms), which
we read; the paper's own text could not be opened from here.

The online difficulty filter skips a prompt whose recent pass rate is 0 or 1: its group of
completions would all score alike, so the group-relative advantage is 0 and the step learns
nothing from it. DAPO's dynamic sampling (arXiv 2503.14476, Sec. 3.2) drops such groups after
generating them; the filter skips them before, from what the same prompt did the last times it was
drawn (a bounded memory of M pass rates per prompt), as the online filtering of Polaris and
Skywork-OR1 does over epochs.

>>> scores = dump_ucb_scores(torch.tensor([0.5, 0.0]), torch.tensor([10.0, 10.0]))
>>> [round(x, 4) for x in scores.tolist()]   # sqrt(2 ln 21 / 11) = 0.7440
[1.244, 0.744]
>>> [round(x, 4) for x in source_probabilities(scores, temperature=0.1).tolist()]
[0.9933, 0.0067]
"""
from __future__ import annotations

import torch


def dump_ucb_scores(mean_abs_advantages: torch.Tensor, counts: torch.Tensor, exploration: float = 1.0) -> torch.Tensor:
    """DUMP's UCB score per source -> (S,).

        score_j = mu_j + c * sqrt(2 ln(N + 1) / (n_j + 1)),   N = max(1, sum_j n_j)

    ``mean_abs_advantages`` (S,): mu_j, the mean |A| of source j's completions in its window (0
    before any); ``counts`` (S,): n_j, completions ever drawn from source j (not limited to the
    window); ``exploration``: c. The +1 terms (the authors' code) keep an undrawn source's bonus
    finite, so the first softmax is uniform rather than undefined.
    """
    if mean_abs_advantages.shape != counts.shape or mean_abs_advantages.dim() != 1:
        raise ValueError(f"mean_abs_advantages {tuple(mean_abs_advantages.shape)} and counts "
                         f"{tuple(counts.shape)} must both be (S,)")
    counts = counts.to(torch.float64)
    total = counts.sum().clamp(min=1.0)
    bonus = torch.sqrt(2.0 * torch.log(total + 1.0) / (counts + 1.0))
    return mean_abs_advantages.to(torch.float64) + exploration * bonus


def source_probabilities(scores: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """softmax(scores / temperature) -> (S,) probabilities of drawing each source (DUMP's tau 0.1)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.softmax((scores - scores.max()) / temperature, dim=0)


def window_mean_abs(values: list[float]) -> float:
    """mu_j: the mean absolute value of a source's window of completion advantages (0 if empty)."""
    return sum(abs(v) for v in values) / len(values) if values else 0.0


def skip_settled_prompts(pass_rates: torch.Tensor) -> torch.Tensor:
    """Prompts the online difficulty filter skips -> (P,) bool.

    ``pass_rates`` (P, M): each prompt's last M group pass rates, NaN in unused slots. A prompt
    is skipped when it has been seen and its recent pass rate (the mean over its memory) is 0 or
    1; a prompt never seen is kept.

    >>> nan = float("nan")
    >>> skip_settled_prompts(torch.tensor([[0.0, 0.0], [1.0, nan], [0.5, 1.0], [nan, nan]])).tolist()
    [True, True, False, False]
    """
    if pass_rates.dim() != 2:
        raise ValueError(f"pass_rates must be (P, M), got shape {tuple(pass_rates.shape)}")
    seen = ~torch.isnan(pass_rates)
    count = seen.sum(dim=1)
    mean = torch.where(seen, pass_rates, 0.0).sum(dim=1) / count.clamp(min=1)
    return (count > 0) & ((mean == 0.0) | (mean == 1.0))
