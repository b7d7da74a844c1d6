"""Policy-gradient losses: PPO clip (+ clip-higher, dual-clip), GSPO, CISPO, decoupled PPO (AReaL),
vanilla PG (RAFT's SFT loss).

Every loss returns ``(per_token_loss (B, T), stats)``: the loss is NOT aggregated (pick the
reduction with :func:`posttrain.rl.algos.aggregation.aggregate`) and is 0 at positions where
``response_mask`` is 0; ``stats`` holds detached scalars (masked means over response tokens).

Shapes: B = sequences, T = response tokens. ``logprobs`` (B, T) are log pi_theta(a_t|s_t) of
the policy being trained (carry the gradient); ``old_logprobs`` (B, T) are log pi_old(a_t|s_t)
of the policy that produced the batch (no gradient); ``advantages`` are (B,) per sequence or
(B, T) per token ((B,) is broadcast over tokens, as TRL does).
"""

from __future__ import annotations

import torch

from .registry import register_policy_loss


def _prepare(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate shapes; return advantages as (B, 1) or (B, T) and the mask as a float (B, T)."""
    if logprobs.dim() != 2 or logprobs.shape != old_logprobs.shape:
        raise ValueError(
            f"logprobs and old_logprobs must both be (B, T); got {tuple(logprobs.shape)} and "
            f"{tuple(old_logprobs.shape)}"
        )
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    batch, tokens = logprobs.shape
    if advantages.shape[0] != batch or advantages.shape[1] not in (1, tokens):
        raise ValueError(
            f"advantages must be (B,) or (B, T) for logprobs {tuple(logprobs.shape)}, got "
            f"{tuple(advantages.shape)}"
        )
    if response_mask is None:
        mask = torch.ones_like(logprobs)
    elif response_mask.shape != logprobs.shape:
        raise ValueError(
            f"response_mask {tuple(response_mask.shape)} must match logprobs "
            f"{tuple(logprobs.shape)}"
        )
    else:
        mask = response_mask.to(logprobs.dtype)
    return advantages.detach(), mask


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    x = x.detach().to(mask.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def _clipped_surrogate(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_ratio_low: float,
    clip_ratio_high: float,
    dual_clip_c: float | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``-min(r A, clip(r, 1-eps_low, 1+eps_high) A)`` (+ dual clip) and its clip statistics."""
    clipped_ratio = torch.clamp(ratio, 1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    loss = -torch.min(ratio * advantages, clipped_ratio * advantages)  # (B, T)
    # clip fractions count tokens where the clamp is the active branch of the min (TRL's metric)
    low = (ratio < 1.0 - clip_ratio_low) & (advantages < 0)
    high = (ratio > 1.0 + clip_ratio_high) & (advantages > 0)
    stats = {
        "ratio_mean": _masked_mean(ratio, mask),
        "clip_frac_low": _masked_mean(low, mask),
        "clip_frac_high": _masked_mean(high, mask),
        "clip_frac": _masked_mean(low | high, mask),
    }
    if dual_clip_c is not None:
        if dual_clip_c <= 1.0:
            raise ValueError(f"dual_clip_c must be > 1, got {dual_clip_c}")
        # negative advantages only: the loss is capped at -c*A, so a huge ratio cannot blow it up
        cap = -dual_clip_c * advantages
        dual = (advantages < 0) & (loss > cap)
        loss = torch.where(advantages < 0, torch.min(loss, cap), loss)
        stats["dual_clip_frac"] = _masked_mean(dual, mask)
    return loss * mask, stats


@register_policy_loss("ppo_clip", forms={"sequence": "gspo"}, knobs={
    "clip_ratio_low": "clip_ratio_low", "clip_ratio_high": "clip_ratio_high", "dual_clip_c": "dual_clip_c"})
def ppo_clip(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    dual_clip_c: float | None = None,
    response_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Token-level PPO clipped surrogate -> ``(per_token_loss (B, T), stats)``.

    Schulman et al. 2017, "Proximal Policy Optimization Algorithms", arXiv 1707.06347, eq. 7:

        r_t = exp(logprobs_t - old_logprobs_t)
        loss_t = -min(r_t * A_t, clip(r_t, 1 - clip_ratio_low, 1 + clip_ratio_high) * A_t)

    - Separate low/high ranges are DAPO's "clip-higher" (Yu et al. 2025, "DAPO: An Open-Source
      LLM Reinforcement Learning System at Scale", arXiv 2503.14476, Sec. 3.1; it uses
      0.2 / 0.28). TRL: ``epsilon`` = clip_ratio_low, ``epsilon_high`` = clip_ratio_high.
    - ``dual_clip_c`` (> 1): dual-clip PPO (Ye et al. 2020, "Mastering Complex Control in MOBA
      Games with Deep Reinforcement Learning", arXiv 1912.09729, dual-clip objective): for
      A_t < 0 the loss becomes ``min(loss_t, -c * A_t)``. TRL 1.16 has no dual clip (its
      ``delta`` is a different, two-sided cap on r for all advantages, INTELLECT-2).

    This is the policy term of TRL's grpo/bnpo/dr_grpo/dapo loss types (importance_sampling_level
    "token"); they differ only in aggregation. Tokens on the clipped branch get zero gradient.
    Stats: ``ratio_mean``, ``clip_frac_low`` (r < 1-eps_low and A < 0), ``clip_frac_high``
    (r > 1+eps_high and A > 0), ``clip_frac`` (either), ``approx_kl`` (masked mean of
    0.5 * (log r)^2, as torchtune), and ``dual_clip_frac`` when dual clip is on.
    """
    advantages, mask = _prepare(logprobs, old_logprobs, advantages, response_mask)
    log_ratio = logprobs - old_logprobs.detach()  # (B, T)
    ratio = torch.exp(log_ratio)
    loss, stats = _clipped_surrogate(
        ratio, advantages, mask, clip_ratio_low, clip_ratio_high, dual_clip_c
    )
    stats["approx_kl"] = _masked_mean(0.5 * log_ratio**2, mask)
    return loss, stats


@register_policy_loss("gspo", ratio_level="sequence", knobs={
    "clip_ratio_low": "clip_ratio_low", "clip_ratio_high": "clip_ratio_high"})
def gspo(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_ratio_low: float = 3e-4,
    clip_ratio_high: float = 4e-4,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Group Sequence Policy Optimization (GSPO-token form) -> ``(per_token_loss (B, T), stats)``.

    Zheng et al. 2025, "Group Sequence Policy Optimization", arXiv 2507.18071. The importance
    ratio is the length-normalised sequence likelihood ratio

        s_i = exp( 1/|y_i| * sum_t (logprobs_it - old_logprobs_it) )     # over response tokens

    clipped like PPO (the paper uses tiny ranges, 3e-4 / 4e-4, our defaults). We use the
    paper's GSPO-token form, ``s_it = sg[s_i] * pi(y_it) / sg[pi(y_it)]``: its VALUE is s_i on
    every token and its gradient w.r.t. token t is s_i * grad log pi(y_it), so per-token
    advantages (B, T) are allowed.

    Versus TRL 1.16 (``importance_sampling_level="sequence"``): TRL computes the same s_i as a
    (B, 1) tensor and differentiates exp(mean log-ratio) directly. With advantages constant
    within a sequence, the two give identical losses AND identical gradients under every
    aggregation (d s_i / d logprobs_it = s_i / |y_i|, and the per-token copies of the sequence
    loss supply the |y_i| back); ``tests/rl_math/test_trl_parity.py`` checks both.
    Stats as :func:`ppo_clip`, but clip fractions count SEQUENCES (mean over the B rows, as TRL).
    """
    advantages, mask = _prepare(logprobs, old_logprobs, advantages, response_mask)
    log_ratio = (logprobs - old_logprobs.detach()) * mask  # (B, T)
    lengths = mask.sum(dim=1).clamp(min=1.0)  # (B,)
    seq_log_ratio = log_ratio.sum(dim=1) / lengths  # (B,) log s_i
    # GSPO-token: value log s_i, gradient flows through each token's own logprob only
    token_log_ratio = seq_log_ratio.detach()[:, None] + logprobs - logprobs.detach()  # (B, T)
    ratio = torch.exp(token_log_ratio)
    loss, _ = _clipped_surrogate(ratio, advantages, mask, clip_ratio_low, clip_ratio_high, None)
    seq_ratio = torch.exp(seq_log_ratio.detach())  # (B,)
    seq_adv = advantages[:, 0]  # the first column is representative when A is per sequence
    low = (seq_ratio < 1.0 - clip_ratio_low) & (seq_adv < 0)
    high = (seq_ratio > 1.0 + clip_ratio_high) & (seq_adv > 0)
    stats = {
        "ratio_mean": seq_ratio.mean(),
        "clip_frac_low": low.to(mask.dtype).mean(),
        "clip_frac_high": high.to(mask.dtype).mean(),
        "clip_frac": (low | high).to(mask.dtype).mean(),
        "approx_kl": (0.5 * seq_log_ratio.detach() ** 2).mean(),
    }
    return loss, stats


@register_policy_loss("cispo", knobs={"weight_max": "cispo_weight_max"})
def cispo(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    weight_max: float = 5.0,
    weight_min: float | None = None,
    response_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped IS-weight Policy Optimization -> ``(per_token_loss (B, T), stats)``.

    MiniMax 2025, "MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning Attention",
    arXiv 2506.13585, Sec. 3 (the CISPO objective):

        w_t = sg[ clip(r_t, weight_min, weight_max) ],   r_t = exp(logprobs_t - old_logprobs_t)
        loss_t = -w_t * A_t * logprobs_t

    The IS weight is clipped and detached, so unlike PPO no token loses its gradient: every
    token contributes w_t * A_t * grad log pi. The paper writes the bounds as 1 - eps_low^IS,
    1 + eps_high^IS and in practice only bounds from above; here they are absolute weights.
    TRL 1.16 ``loss_type="cispo"`` is ``weight_max = epsilon_high`` (ScaleRL recommends 5.0),
    no lower bound, aggregated like dapo (global token mean).
    Stats: ``ratio_mean``, ``clip_frac`` (r > weight_max and A > 0, TRL's cispo_clip_ratio), the
    same as ``clip_frac_high``, and ``clip_frac_low`` (r < weight_min and A < 0, its mirror; 0
    without a lower bound), so the loop logs the clip fractions of every policy loss.
    """
    advantages, mask = _prepare(logprobs, old_logprobs, advantages, response_mask)
    ratio = torch.exp(logprobs.detach() - old_logprobs.detach())  # (B, T)
    weight = torch.clamp(ratio, min=weight_min, max=weight_max)
    loss = -weight * advantages * logprobs * mask
    high = (ratio > weight_max) & (advantages > 0)
    low = (ratio < weight_min) & (advantages < 0) if weight_min is not None else torch.zeros_like(high)
    stats = {
        "ratio_mean": _masked_mean(ratio, mask),
        "clip_frac": _masked_mean(high, mask),
        "clip_frac_high": _masked_mean(high, mask),
        "clip_frac_low": _masked_mean(low, mask),
    }
    return loss, stats


@register_policy_loss("decoupled_ppo", inputs={"behavior_logprobs": "sampler_logprobs"}, knobs={
    "clip_ratio_low": "clip_ratio_low", "clip_ratio_high": "clip_ratio_high", "dual_clip_c": "dual_clip_c",
    "behavior_weight_cap": "decoupled_weight_cap"})
def decoupled_ppo(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    behavior_logprobs: torch.Tensor,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    dual_clip_c: float | None = None,
    behavior_weight_cap: float | None = 5.0,
    response_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Decoupled PPO for asynchronous RL -> ``(per_token_loss (B, T), stats)``.

    Fu et al. 2025, "AReaL: A Large-Scale Asynchronous Reinforcement Learning System for Language
    Reasoning", arXiv 2505.24298, Sec. 5.2, eq. 5: the batch was sampled by a behavior policy
    pi_behav (stale weights), the trust region is taken around the proximal policy pi_prox (the
    trainer's policy when the update starts: ``old_logprobs``):

        r_t = exp(logprobs_t - old_logprobs_t)                        # pi_theta / pi_prox
        w_t = sg[ exp(old_logprobs_t - behavior_logprobs_t) ]          # pi_prox / pi_behav
        loss_t = -w_t * min(r_t * A_t, clip(r_t, 1 - eps_low, 1 + eps_high) * A_t)

    As AReaL's code does with ``behav_imp_weight_cap``, a token whose w_t exceeds
    ``behavior_weight_cap`` gets weight 0 (masked, not truncated; None = no cap). A token without a
    sampler log-prob (NaN: an environment's token) gets w_t = 1. With fresh samples (pi_behav =
    pi_prox) it is :func:`ppo_clip`. ``dual_clip_c`` as in :func:`ppo_clip`.
    Stats: :func:`ppo_clip`'s plus ``behavior_weight_mean`` and ``behavior_frac_capped``.
    """
    advantages, mask = _prepare(logprobs, old_logprobs, advantages, response_mask)
    if behavior_logprobs.shape != logprobs.shape:
        raise ValueError(f"behavior_logprobs {tuple(behavior_logprobs.shape)} must match logprobs "
                         f"{tuple(logprobs.shape)}")
    log_ratio = logprobs - old_logprobs.detach()  # (B, T)
    loss, stats = _clipped_surrogate(torch.exp(log_ratio), advantages, mask, clip_ratio_low, clip_ratio_high,
                                     dual_clip_c)
    behavior_gap = torch.nan_to_num(old_logprobs.detach() - behavior_logprobs.to(old_logprobs.dtype), nan=0.0)
    weight = torch.exp(behavior_gap)  # (B, T)
    capped = weight > behavior_weight_cap if behavior_weight_cap is not None else torch.zeros_like(weight, dtype=torch.bool)
    weight = torch.where(capped, torch.zeros_like(weight), weight)
    stats.update(approx_kl=_masked_mean(0.5 * log_ratio**2, mask), behavior_weight_mean=_masked_mean(weight, mask),
                 behavior_frac_capped=_masked_mean(capped, mask))
    return loss * weight, stats


@register_policy_loss("pg")
def pg(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Vanilla policy gradient -> ``(per_token_loss (B, T), stats)``.

    Williams 1992, "Simple Statistical Gradient-Following Algorithms for Connectionist
    Reinforcement Learning", Machine Learning 8 (the REINFORCE update, A * grad log pi):

        loss_t = -A_t * logprobs_t

    No importance ratio and no clip: ``old_logprobs`` only feeds the ``ratio_mean`` statistic.
    With A = 1 on the completions a reward filter keeps and the token-mean aggregation (not a
    seq-mean one, whose sequence count includes the filtered completions), this is
    the SFT negative log-likelihood of the kept completions, the fine-tuning step of RAFT (Dong et
    al. 2023, arXiv 2304.06767, Algorithm 1, step 3) and of ReST's Improve step (Gulcehre et al.
    2023, arXiv 2308.08998, Sec. 2, the NLL loss on the filtered dataset). Over several epochs of
    one batch it stays uncorrected, as RAFT's SFT on its collected set is.
    Stats: ``ratio_mean`` (exp(logprobs - old_logprobs) over response tokens) and the clip
    fractions, 0 as nothing is clipped, so the loop logs the same keys for every policy loss.
    """
    advantages, mask = _prepare(logprobs, old_logprobs, advantages, response_mask)
    loss = -advantages * logprobs * mask  # (B, T)
    ratio = torch.exp(logprobs.detach() - old_logprobs.detach())
    none = torch.zeros((), dtype=mask.dtype, device=mask.device)
    return loss, {"ratio_mean": _masked_mean(ratio, mask), "clip_frac": none, "clip_frac_low": none, "clip_frac_high": none}
