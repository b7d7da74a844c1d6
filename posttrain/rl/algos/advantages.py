"""Advantage estimators: GAE, GRPO group normalisation (and Dr.GRPO), RLOO, REINFORCE++, RAFT.

Shapes: B = sequences in the batch, T = response tokens (right-padded), G = ``group_size``
(completions per prompt; the B rows are ordered prompt-major, G consecutive rows per prompt,
which is how TRL and our rollout lay them out).

Sequence-level estimators take rewards (B,) and return advantages (B,); broadcast them to the
tokens with :func:`expand_to_tokens`. A NaN reward means "unscorable" (every verifier returned
None, as in TRL 1.16): it is left out of the group/batch statistics and gets advantage 0.
Everything here runs under ``torch.no_grad()``: advantages are targets, never differentiated.
"""

from __future__ import annotations

import torch

from .registry import register_advantage_estimator

_SCALES = ("group", "batch", "none")


def _check_groups(rewards: torch.Tensor, group_size: int) -> None:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (B,), got shape {tuple(rewards.shape)}")
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if rewards.numel() % group_size != 0:
        raise ValueError(
            f"batch of {rewards.numel()} rewards is not a whole number of groups of {group_size}"
        )


def _nanstd(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """Unbiased (Bessel-corrected) std ignoring NaNs; NaN where fewer than 2 values remain.

    Same definition as ``trl.trainer.utils.nanstd`` (TRL 1.16), which GRPO's advantages use.
    """
    dims = dim if dim is not None else tuple(range(x.dim()))
    mean = torch.nanmean(x, dim=dims, keepdim=True)
    count = (~torch.isnan(x)).sum(dim=dims, keepdim=True)
    var = torch.nanmean((x - mean) ** 2, dim=dims, keepdim=True)
    var = var * count / (count - 1).clamp(min=1)
    std = torch.where(count > 1, var.sqrt(), torch.full_like(var, float("nan")))
    return std if keepdim else std.squeeze(dims) if dim is not None else std.reshape(())


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-8
) -> torch.Tensor:
    """Return ``(x - mean) / (std + eps)`` over the entries where ``mask`` is 1 (all if None).

    The std is the population (biased) std, as OpenRLHF's REINFORCE++ whitening uses; NaN
    entries of ``x`` are ignored and whitened entries outside the mask (or NaN) are 0.
    """
    valid = ~torch.isnan(x)
    if mask is not None:
        valid = valid & mask.bool()
    n = valid.sum().clamp(min=1)
    filled = torch.where(valid, x, torch.zeros_like(x))
    mean = filled.sum() / n
    var = (torch.where(valid, x - mean, torch.zeros_like(x)) ** 2).sum() / n
    return torch.where(valid, (x - mean) / (var.sqrt() + eps), torch.zeros_like(x))


def expand_to_tokens(advantages: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Broadcast sequence advantages (B,) to tokens (B, T); padded tokens get 0.

    >>> expand_to_tokens(torch.tensor([1.0, -2.0]), torch.tensor([[1, 1, 0], [1, 0, 0]]))
    tensor([[ 1.,  1.,  0.],
            [-2., -0., -0.]])
    """
    if advantages.dim() != 1 or response_mask.dim() != 2:
        raise ValueError(
            f"expected advantages (B,) and response_mask (B, T), got {tuple(advantages.shape)} "
            f"and {tuple(response_mask.shape)}"
        )
    if advantages.shape[0] != response_mask.shape[0]:
        raise ValueError(f"batch sizes differ: {advantages.shape[0]} vs {response_mask.shape[0]}")
    return advantages[:, None] * response_mask.to(advantages.dtype)


@register_advantage_estimator("gae", level="token", needs_critic=True, knobs={"gamma": "gamma", "lam": "lam"})
@torch.no_grad()
def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized Advantage Estimation -> ``(advantages (B, T), returns (B, T))``.

    Schulman et al. 2015, "High-Dimensional Continuous Control Using Generalized Advantage
    Estimation", arXiv 1506.02438, eq. 16 (GAE(gamma, lambda)):

        delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)              # TD residual
        A_t     = sum_l (gamma * lam)^l * delta_{t+l}
                = delta_t + gamma * lam * A_{t+1}                 # computed backwards
        R_t     = A_t + V(s_t)                                    # value-function target

    Mask-aware: positions with ``response_mask == 0`` are skipped, as if removed from the
    sequence: they get advantage and return 0, their reward and value are ignored, and the
    recursion carries V and A of the next unmasked token across them (so a masked tool-output
    span in the middle of a multi-turn response does not cut the credit path; verl does the
    same). The value after the last unmasked token is 0 (episode end).
    """
    # rewards, values, response_mask: (B, T)
    if not (rewards.shape == values.shape == response_mask.shape) or rewards.dim() != 2:
        raise ValueError(
            f"rewards, values and response_mask must all be (B, T); got {tuple(rewards.shape)}, "
            f"{tuple(values.shape)}, {tuple(response_mask.shape)}"
        )
    keep = response_mask.bool()
    next_value = torch.zeros_like(rewards[:, 0])  # (B,)
    next_adv = torch.zeros_like(rewards[:, 0])  # (B,)
    columns = []
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv_t = delta + gamma * lam * next_adv
        columns.append(torch.where(keep[:, t], adv_t, torch.zeros_like(adv_t)))
        next_value = torch.where(keep[:, t], values[:, t], next_value)
        next_adv = torch.where(keep[:, t], adv_t, next_adv)
    advantages = torch.stack(columns[::-1], dim=1)  # (B, T)
    returns = torch.where(keep, advantages + values, torch.zeros_like(values))
    return advantages, returns


@register_advantage_estimator("group_normalized", min_group_size=2, knobs={"scale": "advantage_scale"})
@torch.no_grad()
def group_normalized(
    rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO group-relative advantages -> ``(advantages (B,), stats)``.

    Shao et al. 2024, "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open
    Language Models", arXiv 2402.03300, Sec. 4.1.2 (outcome supervision):
    ``A_i = (r_i - mean(r_group)) / std(r_group)``.

    ``scale`` picks the denominator, with TRL 1.16 ``scale_rewards`` semantics:

    - ``"group"``: std of the prompt's group (the paper; TRL's default).
    - ``"batch"``: std of all B rewards (the centring stays per group), as in "Tricks or Traps?
      A Deep Dive into RL for LLM Reasoning" (PPO Lite, arXiv 2508.08221).
    - ``"none"``: no division: Dr.GRPO, Liu et al. 2025, "Understanding R1-Zero-Like Training:
      A Critical Perspective", arXiv 2503.20783, which shows the std term biases towards
      questions that are too easy or too hard.

    Matching TRL exactly: the std is the UNBIASED one (Bessel's correction, n - 1), eps is added
    to the std (``/(std + eps)``, default 1e-4), a group of size 1 has std 0 (so advantage 0).
    Stats: ``frac_zero_std`` (fraction of sequences whose denominator std is ~0: groups with no
    learning signal under "group"), ``reward_mean``, ``reward_std`` (over scorable rewards).
    """
    _check_groups(rewards, group_size)
    if scale not in _SCALES:
        raise ValueError(f"scale must be one of {_SCALES}, got {scale!r}")
    grouped = rewards.view(-1, group_size)  # (B/G, G)
    mean = torch.nanmean(grouped, dim=1, keepdim=True)  # (B/G, 1)
    if scale == "batch":
        std = _nanstd(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards[0])
        std = std.expand_as(grouped)
    elif group_size > 1:
        std = _nanstd(grouped, dim=1, keepdim=True).expand_as(grouped)
    else:
        std = torch.zeros_like(grouped)
    advantages = grouped - mean
    if scale != "none":
        advantages = advantages / (std + eps)
    advantages = torch.nan_to_num(advantages, nan=0.0).view(-1)  # unscorable -> 0
    stats = {
        "frac_zero_std": torch.isclose(std, torch.zeros_like(std)).to(rewards.dtype).mean(),
        "reward_mean": torch.nanmean(rewards),
        "reward_std": _nanstd(rewards),
    }
    return advantages, stats


@register_advantage_estimator("rloo", min_group_size=2)
@torch.no_grad()
def rloo(rewards: torch.Tensor, group_size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """REINFORCE Leave-One-Out advantages -> ``(advantages (B,), stats)``.

    Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning
    from Human Feedback in LLMs", arXiv 2402.14740 (the RLOO estimator, after Kool et al.
    2019): each sample's baseline is the mean reward of the OTHER samples of its prompt,

        A_i = r_i - 1/(k-1) * sum_{j != i} r_j  =  k/(k-1) * (r_i - mean_j r_j)

    No std scaling (TRL's RLOOTrainer can add one; we keep the paper's estimator and let
    ``group_normalized`` cover scaling). NaN (unscorable) rewards are left out of the other
    samples' baselines and get advantage 0; a sample with no scorable peer gets 0.
    """
    _check_groups(rewards, group_size)
    if group_size < 2:
        raise ValueError("rloo needs group_size >= 2 (a leave-one-out baseline needs a peer)")
    grouped = rewards.view(-1, group_size)  # (B/G, G)
    valid = ~torch.isnan(grouped)
    filled = torch.where(valid, grouped, torch.zeros_like(grouped))
    others_sum = filled.sum(dim=1, keepdim=True) - filled  # (B/G, G)
    others_count = valid.sum(dim=1, keepdim=True) - valid.to(torch.long)
    baseline = others_sum / others_count.clamp(min=1)
    advantages = torch.where(valid & (others_count > 0), grouped - baseline, 0.0)
    return advantages.view(-1), {"reward_mean": torch.nanmean(rewards)}


@register_advantage_estimator("raft", needs_filter=True)
@torch.no_grad()
def raft(rewards: torch.Tensor, group_size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Imitate what the reward filter keeps: ``A_i = 1`` for every scorable completion -> ``(advantages (B,), stats)``.

    Dong et al. 2023, "RAFT: Reward rAnked FineTuning for Generative Foundation Model Alignment",
    arXiv 2304.06767, Algorithm 1: sample k responses per prompt, keep the best by reward, and
    fine-tune on the kept set with the SFT loss. The selection is the loop's ``reward_filter``
    (``best_of_n``, optionally only above ``reward_filter_min``; or ``bands`` [[tau, inf]], which
    keeps every completion above the threshold tau as ReST's Improve step does, Gulcehre et al.
    2023, arXiv 2308.08998, Sec. 2), which takes the others out of the loss; this estimator gives
    the kept ones the same weight 1, so the policy loss ``pg`` (-A log pi) aggregated by
    token-mean is the SFT loss on the kept tokens.
    NaN (unscorable) rewards get 0. Stats: ``reward_mean`` (nanmean of the rewards).

    >>> raft(torch.tensor([0.0, 1.0, float("nan"), 0.5]), group_size=2)[0]
    tensor([1., 1., 0., 1.])
    """
    _check_groups(rewards, group_size)
    advantages = torch.where(torch.isnan(rewards), 0.0, 1.0).to(rewards.dtype)
    return advantages, {"reward_mean": torch.nanmean(rewards)}


@register_advantage_estimator("reinforce_pp", level="token", group_baseline=True, knobs={"gamma": "gamma"})
@torch.no_grad()
def reinforce_pp(
    rewards: torch.Tensor,
    group_size: int | None = None,
    eps: float = 1e-8,
    response_mask: torch.Tensor | None = None,
    gamma: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """REINFORCE++ advantages: returns whitened over the GLOBAL batch -> ``(advantages, stats)``.

    Hu et al. 2025, "REINFORCE++: An Efficient RLHF Algorithm with Robustness to Both Prompt and
    Reward Models", arXiv 2501.03262: ``A = (G - mean_batch G) / std_batch G`` where the mean
    and std run over every (sequence, or response token) of the batch, not per prompt.

    - rewards (B,): sequence scores. With ``group_size`` the group mean is subtracted first
      (the paper's "REINFORCE++-baseline" for k > 1 samples per prompt), then batch whitening.
    - rewards (B, T) with ``response_mask``: token rewards (e.g. from
      :func:`~posttrain.rl.algos.kl.kl_penalized_rewards`); ``G_t`` is the discounted
      return-to-go over unmasked tokens, whitened over all unmasked tokens. The group
      baseline is not defined here: subtract it from the scores before adding the KL penalty.

    Whitening uses the population std and ``/(std + eps)`` (see :func:`masked_whiten`); our
    convention, OpenRLHF uses ``rsqrt(max(var, 1e-8))``: equal up to eps.
    """
    if rewards.dim() == 2:
        if response_mask is None or group_size is not None:
            raise ValueError(
                "token-level rewards (B, T) need response_mask and take no group_size "
                "(apply the group baseline to the scores before the KL penalty)"
            )
        zeros = torch.zeros_like(rewards)
        returns, _ = gae(rewards, zeros, response_mask, gamma=gamma, lam=1.0)  # V=0: returns
        advantages = masked_whiten(returns, response_mask, eps)
        return advantages, {"return_mean": returns[response_mask.bool()].mean()}
    stats = {"reward_mean": torch.nanmean(rewards)}
    if group_size is not None:  # REINFORCE++-baseline: the loop's group centring (a NaN reward centres to 0)
        rewards, _ = group_normalized(rewards, group_size, scale="none")
    elif rewards.dim() != 1:
        raise ValueError(f"rewards must be (B,) or (B, T), got shape {tuple(rewards.shape)}")
    return masked_whiten(rewards, None, eps), stats
