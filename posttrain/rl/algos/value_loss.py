"""Clipped value-function loss (PPO2 style)."""

from __future__ import annotations

import torch


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    response_mask: torch.Tensor,
    clip_range: float | None = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token clipped value loss -> ``(per_token_loss (B, T), stats)``.

    PPO's value term (Schulman et al. 2017, arXiv 1707.06347, eq. 9, ``L^VF = (V - V^targ)^2``)
    with the value clipping of OpenAI baselines' ppo2 (also in torchtune and TRL's old PPO):

        V_clip = old_values + clip(values - old_values, -clip_range, +clip_range)
        loss_t = 0.5 * max((values - returns)^2, (V_clip - returns)^2)

    Taking the max makes clipping pessimistic: it only removes gradient that would move V
    further than ``clip_range`` from ``old_values`` in the direction that lowers the loss.
    ``clip_range=None`` gives the plain ``0.5 * (values - returns)^2``. Not aggregated: reduce
    with :func:`~posttrain.rl.algos.aggregation.aggregate` (usually ``token-mean``);
    padded positions are 0. ``returns`` and ``old_values`` are targets and are detached.
    Stats: ``value_clip_frac`` (tokens whose clipped error is the larger), ``value_mean``,
    ``value_error`` (masked mean of the unclipped squared error, detached).
    """
    # values, old_values, returns, response_mask: (B, T)
    if not (values.shape == old_values.shape == returns.shape == response_mask.shape):
        raise ValueError(
            "values, old_values, returns and response_mask must have one (B, T) shape; got "
            f"{[tuple(t.shape) for t in (values, old_values, returns, response_mask)]}"
        )
    mask = response_mask.to(values.dtype)
    returns, old_values = returns.detach(), old_values.detach()
    unclipped = (values - returns) ** 2
    if clip_range is None:
        loss = 0.5 * unclipped
        clipped_wins = torch.zeros_like(mask, dtype=torch.bool)
    else:
        values_clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
        clipped = (values_clipped - returns) ** 2
        loss = 0.5 * torch.max(unclipped, clipped)
        clipped_wins = clipped > unclipped
    count = mask.sum().clamp(min=1.0)
    stats = {
        "value_clip_frac": (clipped_wins.to(mask.dtype) * mask).sum() / count,
        "value_mean": (values.detach() * mask).sum() / count,
        "value_error": (unclipped.detach() * mask).sum() / count,
    }
    return loss * mask, stats
