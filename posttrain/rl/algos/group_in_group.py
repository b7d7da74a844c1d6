"""GiGPO: group-in-group advantages for multi-turn episodes (episode groups, then step groups).

Feng et al. 2025, "Group-in-Group Policy Optimization for LLM Agent Training", arXiv 2505.10978,
Sec. 4: the episode-level advantage is GRPO's over the G episodes of one prompt (eq. 4),
``A_E(tau_i) = (R(tau_i) - mean_j R(tau_j)) / F_norm``; steps of those episodes that start from
the same anchor state (the same observation) form a step group, and a step's advantage within it
is ``A_S = (R_t - mean R_t') / F_norm`` over the discounted returns ``R_t = sum_k gamma^(k-t) r_k``
of its members (eqs. 5-7); each step's tokens get ``A_E + omega * A_S`` (eq. 8).

``scale`` is F_norm: "group" divides by the (unbiased) std of the group, as GRPO does, "none" does
not (the paper's mean-only normalisation). Where we differ: a step group of one member gets
A_S = 0 (verl-agent's code does the same); the anchor state is what the environment said before
the turn (its messages; the prompt for the first turn), compared exactly; the episode's outcome
reward is the last step's reward, the environment's per-turn rewards the others'.
"""
from __future__ import annotations

import torch

from .advantages import group_normalized
from .registry import register_advantage_estimator

_SCALES = ("group", "none")


def discounted_step_returns(step_rewards: torch.Tensor, step_mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """R_t = r_t + gamma * R_{t+1} over each episode's steps -> (B, K), 0 off ``step_mask``.

    >>> discounted_step_returns(torch.tensor([[0.0, 0.0, 1.0], [0.5, 1.0, 0.0]]),
    ...                         torch.tensor([[True, True, True], [True, True, False]]), gamma=0.5)
    tensor([[0.2500, 0.5000, 1.0000],
            [1.0000, 1.0000, 0.0000]])
    """
    # step_rewards, step_mask: (B, K), steps left-aligned per episode
    rewards = step_rewards * step_mask
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        running = rewards[:, t] + gamma * running * step_mask[:, t]
        returns[:, t] = running
    return returns * step_mask


def step_group_advantages(returns: torch.Tensor, step_groups: torch.Tensor, step_mask: torch.Tensor,
                          scale: str = "group", eps: float = 1e-6) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A_S per step: the return minus its step group's mean, divided by the group's unbiased std
    under ``scale="group"`` -> ((B, K), stats). ``step_groups`` (B, K) long: equal ids = the same
    anchor state (ids are global, so groups never mix prompts by accident); a group of one gets 0.

    >>> returns = torch.tensor([[1.0, 2.0], [3.0, 0.0], [5.0, 9.0]])
    >>> groups = torch.tensor([[0, 1], [0, -1], [0, 2]])
    >>> mask = groups >= 0
    >>> step_group_advantages(returns, groups, mask, scale="none")[0]
    tensor([[-2.,  0.],
            [ 0.,  0.],
            [ 2.,  0.]])
    """
    if scale not in _SCALES:
        raise ValueError(f"scale must be one of {_SCALES}, got {scale!r}")
    flat_ids, flat_returns = step_groups[step_mask], returns[step_mask].double()
    advantages = torch.zeros_like(flat_returns)
    sizes = []
    for group in flat_ids.unique():
        members = flat_ids == group
        values = flat_returns[members]
        sizes.append(values.numel())
        if values.numel() < 2:
            continue
        centred = values - values.mean()
        advantages[members] = centred / (values.std() + eps) if scale == "group" else centred
    out = torch.zeros_like(returns)
    out[step_mask] = advantages.to(returns.dtype)
    sizes_t = torch.tensor(sizes or [0], dtype=torch.float32)
    return out, {"step_group_size": sizes_t.mean(), "step_singleton_frac": (sizes_t == 1).float().mean()}


@register_advantage_estimator("gigpo", level="step", min_group_size=2,
                              knobs={"scale": "advantage_scale", "omega": "gigpo_step_weight", "gamma": "gamma"})
def gigpo(rewards: torch.Tensor, group_size: int, step_rewards: torch.Tensor, step_mask: torch.Tensor,
          step_groups: torch.Tensor, token_steps: torch.Tensor, scale: str = "group", omega: float = 1.0,
          gamma: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GiGPO's token advantages ``A_E(episode) + omega * A_S(step)`` -> ((B, T), stats).

    ``rewards`` (B,): each episode's return R(tau) (it should equal the sum of its step rewards);
    ``token_steps`` (B, T) long: the step (turn) each response token belongs to, -1 for tokens of
    no step (the environment's, padding: they get 0). ``scale`` "batch" is not defined here.

    >>> rewards = torch.tensor([1.0, 0.0])
    >>> step_rewards = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    >>> mask = torch.tensor([[True, True], [True, True]])
    >>> groups = torch.tensor([[0, 1], [0, 1]])          # both reached the same second state
    >>> token_steps = torch.tensor([[0, -1, 1], [0, -1, 1]])
    >>> gigpo(rewards, 2, step_rewards, mask, groups, token_steps, scale="none")[0]
    tensor([[ 1.,  0.,  1.],
            [-1.,  0., -1.]])
    """
    # rewards: (B,); step_*: (B, K); token_steps: (B, T)
    if scale not in _SCALES:
        raise ValueError(f"gigpo: advantage_scale must be one of {_SCALES} (group-level normalisation), got {scale!r}")
    episode, stats = group_normalized(rewards, group_size, scale=scale)   # (B,)
    returns = discounted_step_returns(step_rewards, step_mask, gamma)    # (B, K)
    steps, step_stats = step_group_advantages(returns, step_groups, step_mask, scale)
    combined = episode[:, None] + omega * steps                          # (B, K)
    index = token_steps.clamp(min=0)
    out = torch.where(token_steps >= 0, torch.gather(combined, 1, index), torch.zeros_like(combined[:, :1]))
    return out, {**stats, **step_stats}
