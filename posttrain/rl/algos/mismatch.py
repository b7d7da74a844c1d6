"""Sampler/trainer mismatch correction: truncated (TIS) and masked (MIS) importance weights.

The rollout engine (vLLM) and the trainer compute slightly different probabilities for the same
tokens (kernels, precision, batch-dependent reductions), so "on-policy" rollouts are in fact
off-policy. Correcting with ``w = pi_trainer / pi_sampler`` per token or per sequence:

- TIS: Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL
  Training" (blog): truncated IS, ``w = min(w, C)``.
- MIS: Liu et al. 2025, "When Speed Kills Stability: Demystifying RL Collapse from the
  Training-Inference Mismatch" (blog), and IcePop (inclusionAI, Ring-1T report, 2025): drop
  (weight 0) the tokens / sequences whose ratio leaves ``[C_min, C_max]`` instead of truncating.

Same semantics as TRL 1.16 ``vllm_importance_sampling_mode`` (``token_truncate``,
``token_mask``, ``sequence_truncate``, ``sequence_mask``) with ``clip_min`` / ``clip_max`` =
``vllm_importance_sampling_clip_min`` / ``_clip_max``: ratio = exp(trainer - sampler) per token,
or exp(SUM over response tokens) per sequence (a product of token ratios, not a geometric
mean); NaN sampler logprobs (vLLM could not score the token) count as no mismatch.
The weights multiply the per-token policy loss (detached: they are constants).

Shapes: B = sequences, T = response tokens.
"""

from __future__ import annotations

import math

import torch

from .kl import kl_estimate

LEVELS = ("token", "sequence")
MODES = ("truncate", "mask")


@torch.no_grad()
def mismatch_weights(
    old_logprobs: torch.Tensor,
    sampler_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    level: str = "token",
    mode: str = "truncate",
    clip_max: float | None = 2.0,
    clip_min: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Truncated or masked IS weights pi_trainer/pi_sampler -> ``(weights (B, T), metrics)``.

    ``old_logprobs`` (B, T): the trainer's log-probs of the sampled tokens under the policy
    that sampled them (before any update); ``sampler_logprobs`` (B, T): the rollout engine's.

    - ``level="token"``: w_t = exp(old_t - sampler_t); ``"sequence"``: one
      w = exp(sum_t (old_t - sampler_t)) per row, broadcast to its tokens.
    - ``mode="truncate"`` (TIS): w = clamp(w, clip_min, clip_max); ``"mask"`` (MIS / IcePop):
      w = 0 where w < clip_min or w > clip_max (a None bound is open).

    Differs from TRL only at padded positions: our weights are 0 there (TRL leaves 1 or the
    sequence weight; the loss mask removes them either way).
    Metrics (detached): ``logprob_abs_diff_mean`` / ``_max`` (over response tokens with a
    sampler logprob; TRL's sampling_logp_difference), ``kl_sampler_trainer`` (k3 estimate of
    KL(pi_sampler || pi_trainer) per token, samples come from the sampler), ``frac_truncated``
    or ``frac_masked`` (share of tokens, or of sequences at sequence level, whose weight hit a
    bound), ``ratio_min`` / ``ratio_mean`` / ``ratio_max`` (of the final weights, over response
    tokens or sequences, as TRL's importance_sampling_ratio metrics).
    """
    # old_logprobs, sampler_logprobs, response_mask: (B, T)
    if not (old_logprobs.shape == sampler_logprobs.shape == response_mask.shape):
        raise ValueError(
            "old_logprobs, sampler_logprobs and response_mask must have one (B, T) shape; got "
            f"{[tuple(t.shape) for t in (old_logprobs, sampler_logprobs, response_mask)]}"
        )
    if level not in LEVELS or mode not in MODES:
        raise ValueError(f"level must be in {LEVELS} and mode in {MODES}; got {level!r}, {mode!r}")
    if clip_max is None and clip_min is None:
        raise ValueError("mismatch_weights needs clip_max or clip_min (else nothing is corrected)")
    keep = response_mask.bool()
    scored = keep & ~torch.isnan(sampler_logprobs)  # tokens with a usable sampler logprob
    log_diff = torch.where(scored, old_logprobs - sampler_logprobs, torch.zeros_like(old_logprobs))
    if level == "sequence":
        log_diff = log_diff.sum(dim=1, keepdim=True)  # (B, 1): log of the product of ratios
    ratio = torch.exp(log_diff)  # (B, T) or (B, 1)
    lower = -math.inf if clip_min is None else clip_min
    upper = math.inf if clip_max is None else clip_max
    out_of_range = (ratio < lower) | (ratio > upper)
    if mode == "truncate":
        weights = torch.clamp(ratio, min=clip_min, max=clip_max)
    else:
        weights = torch.where(out_of_range, torch.zeros_like(ratio), ratio)

    metrics = _metrics(
        old_logprobs, sampler_logprobs, keep, scored, weights, out_of_range, level, mode
    )
    weights = torch.where(keep, weights.expand_as(old_logprobs), torch.zeros_like(old_logprobs))
    return weights, metrics


def _metrics(
    old_logprobs: torch.Tensor,
    sampler_logprobs: torch.Tensor,
    keep: torch.Tensor,
    scored: torch.Tensor,
    weights: torch.Tensor,
    out_of_range: torch.Tensor,
    level: str,
    mode: str,
) -> dict[str, torch.Tensor]:
    """Mismatch metrics; weights/out_of_range are (B, 1) at sequence level, else (B, T)."""
    if level == "sequence":
        per_unit, flagged = weights[:, 0], out_of_range[:, 0]
    else:
        per_unit, flagged = weights[keep], out_of_range[keep]
    flagged = flagged.to(weights.dtype)
    abs_diff = (old_logprobs - sampler_logprobs).abs()[scored]
    # k3 of KL(sampler || trainer): samples come from the sampler, log r = trainer - sampler
    k3 = kl_estimate(sampler_logprobs, old_logprobs, "k3")[scored]
    zero = old_logprobs.new_zeros(())

    def reduce(x: torch.Tensor, fn) -> torch.Tensor:
        return fn(x) if x.numel() else zero

    return {
        "logprob_abs_diff_mean": reduce(abs_diff, torch.mean),
        "logprob_abs_diff_max": reduce(abs_diff, torch.max),
        "kl_sampler_trainer": reduce(k3, torch.mean),
        "frac_truncated" if mode == "truncate" else "frac_masked": reduce(flagged, torch.mean),
        "ratio_min": reduce(per_unit, torch.min),
        "ratio_mean": reduce(per_unit, torch.mean),
        "ratio_max": reduce(per_unit, torch.max),
    }
