"""From rewards to per-token advantages, as the config's estimator and KL placement say.

Every formula lives in :mod:`posttrain.rl.algos`; this module only routes tensors to it:

- ``group_normalized`` / ``rloo`` (sequence level): reward ``r - beta * KL_seq`` when
  ``kl_placement: reward``, the estimator over the rewards of ALL processes (so batch-level
  statistics such as ``advantage_scale: batch`` see the whole step), broadcast to tokens.
- ``reinforce_pp`` (token level): group baseline when G > 1 (REINFORCE++-baseline), then
  KL-penalised token rewards (Ziegler et al. placement), returns-to-go whitened over the tokens
  of this process.
- ``gae``: KL-penalised token rewards, GAE with the critic's values; optional whitening.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from posttrain.rl.algos import (
    expand_to_tokens,
    gae,
    get_advantage_estimator,
    group_normalized,
    kl_estimate,
    kl_penalized_rewards,
    masked_whiten,
    reinforce_pp,
)

Gather = Callable[[torch.Tensor], tuple[torch.Tensor, slice]]  # local (B,) -> (all ranks' (W*B,), my rows)


@dataclass
class AdvantageInputs:
    """What the estimators may read; tensors are this process's rows."""

    rewards: torch.Tensor              # (B,) shaped sequence rewards (channels + overlong penalty)
    response_mask: torch.Tensor        # (B, T) float, tokens that enter the loss
    old_logprobs: torch.Tensor | None  # (B, T); None under the on-policy shortcut (estimators here then never read it)
    ref_logprobs: torch.Tensor | None  # (B, T), None without a reference model
    values: torch.Tensor | None        # (B, T), critic only
    kl_coef: float                     # current beta (adaptive KL changes it)


def kl_in_reward(config, inputs: AdvantageInputs) -> float:
    """The beta applied to the reward: kl_coef when the KL is placed in the reward, else 0."""
    usable = inputs.ref_logprobs is not None and config.kl_placement == "reward"
    return inputs.kl_coef if usable else 0.0


def _sequence_level(config, inputs: AdvantageInputs, gather: Gather):
    rewards = inputs.rewards
    beta = kl_in_reward(config, inputs)
    if beta:
        kl_seq = kl_estimate(inputs.old_logprobs, inputs.ref_logprobs, config.kl_estimator,
                             inputs.response_mask).sum(dim=1)  # (B,) summed per-token KL
        rewards = rewards - beta * kl_seq
    all_rewards, mine = gather(rewards)
    options = {"scale": config.advantage_scale} if config.advantage_estimator == "group_normalized" else {}
    estimator = get_advantage_estimator(config.advantage_estimator)
    advantages, stats = estimator(all_rewards, group_size=config.group_size, **options)
    return expand_to_tokens(advantages[mine], inputs.response_mask), None, stats


def _token_rewards(config, inputs: AdvantageInputs, scores: torch.Tensor) -> torch.Tensor:
    ref = inputs.ref_logprobs if inputs.ref_logprobs is not None else inputs.old_logprobs
    token_rewards, _ = kl_penalized_rewards(scores, inputs.old_logprobs, ref, inputs.response_mask,
                                            kl_in_reward(config, inputs), config.kl_estimator)
    return token_rewards  # (B, T)


def _reinforce_pp(config, inputs: AdvantageInputs, gather: Gather):
    scores = inputs.rewards
    if config.group_size > 1:
        # REINFORCE++-baseline: subtract the group mean from the scores before the KL penalty
        scores, _ = group_normalized(scores, config.group_size, scale="none")
    advantages, stats = reinforce_pp(_token_rewards(config, inputs, scores), response_mask=inputs.response_mask,
                                     gamma=config.gamma)
    return advantages, None, stats


def _gae(config, inputs: AdvantageInputs, gather: Gather):
    if inputs.values is None:
        raise ValueError("advantage_estimator 'gae' needs the critic's values")
    advantages, returns = gae(_token_rewards(config, inputs, inputs.rewards), inputs.values,
                              inputs.response_mask, gamma=config.gamma, lam=config.lam)
    return advantages, returns, {}


_ROUTES = {"group_normalized": _sequence_level, "rloo": _sequence_level,
           "reinforce_pp": _reinforce_pp, "gae": _gae}


def compute_advantages(config, inputs: AdvantageInputs, gather: Gather):
    """-> (advantages (B, T), returns (B, T) | None, stats). ``gather`` all-gathers (B,) rewards."""
    advantages, returns, estimator_stats = _ROUTES[config.advantage_estimator](config, inputs, gather)
    if config.whiten_advantages:
        advantages = masked_whiten(advantages, inputs.response_mask)
    keep = inputs.response_mask.bool()
    picked = advantages[keep]
    # the estimator's own stats, e.g. GRPO's frac_zero_std (groups with no learning signal)
    stats = {f"advantages/{k}": v for k, v in estimator_stats.items()}
    if picked.numel():
        stats |= {"advantages/mean": picked.mean(), "advantages/std": picked.std(unbiased=False),
                 "advantages/min": picked.min(), "advantages/max": picked.max()}
    if returns is not None and picked.numel():
        stats["returns/mean"] = returns[keep].mean()
    return advantages, returns, stats
