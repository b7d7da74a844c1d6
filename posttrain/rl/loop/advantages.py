"""From rewards to per-token advantages, as the config's estimator and KL placement say.

Every formula lives in :mod:`posttrain.rl.algos`; this module only routes tensors to it, by the
level and properties each estimator declared when it was registered (never by its name):

- sequence level (``group_normalized``, ``rloo``, a user's): reward ``r - beta * KL_seq`` when
  ``kl_placement: reward``, the estimator over the rewards of ALL processes (so batch-level
  statistics such as ``advantage_scale: batch`` see the whole step), broadcast to tokens.
- token level (``reinforce_pp``): group baseline when G > 1 (REINFORCE++-baseline), then
  KL-penalised token rewards (Ziegler et al. placement), returns-to-go whitened over the tokens
  of this process.
- token level with a critic (``gae``): KL-penalised token rewards, GAE with the critic's
  values; optional whitening.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from posttrain.rl.algos import (
    advantage_estimator_spec,
    expand_to_tokens,
    get_advantage_estimator,
    group_normalized,
    kl_estimate,
    kl_penalized_rewards,
    masked_whiten,
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


def _knobs(config, spec) -> dict:
    """The estimator's keyword arguments, read from the config keys it declared."""
    return {arg: getattr(config, key) for arg, key in spec.knobs.items()}


def _sequence_level(config, spec, inputs: AdvantageInputs, gather: Gather):
    rewards = inputs.rewards
    beta = kl_in_reward(config, inputs)
    if beta:
        kl_seq = kl_estimate(inputs.old_logprobs, inputs.ref_logprobs, config.kl_estimator,
                             inputs.response_mask).sum(dim=1)  # (B,) summed per-token KL
        rewards = rewards - beta * kl_seq
    all_rewards, mine = gather(rewards)
    estimator = get_advantage_estimator(config.advantage_estimator)
    advantages, stats = estimator(all_rewards, group_size=config.group_size, **_knobs(config, spec))
    return expand_to_tokens(advantages[mine], inputs.response_mask), None, stats


def _token_level(config, spec, inputs: AdvantageInputs, gather: Gather):
    """KL-penalised token rewards (Ziegler et al. placement) -> a token-level estimator; with a
    group baseline (REINFORCE++-baseline) the group mean leaves the scores first."""
    scores = inputs.rewards
    if spec.group_baseline and config.group_size > 1:
        scores, _ = group_normalized(scores, config.group_size, scale="none")
    ref = inputs.ref_logprobs if inputs.ref_logprobs is not None else inputs.old_logprobs
    token_rewards, _ = kl_penalized_rewards(scores, inputs.old_logprobs, ref, inputs.response_mask,
                                            kl_in_reward(config, inputs), config.kl_estimator)  # (B, T)
    extra = {}
    if spec.needs_critic:
        if inputs.values is None:
            raise ValueError(f"advantage_estimator {config.advantage_estimator!r} needs the critic's values")
        extra["values"] = inputs.values
    estimator = get_advantage_estimator(config.advantage_estimator)
    advantages, second = estimator(token_rewards, response_mask=inputs.response_mask, **extra, **_knobs(config, spec))
    if spec.needs_critic:
        return advantages, second, {}  # second = returns (B, T)
    return advantages, None, second


_BY_LEVEL = {"sequence": _sequence_level, "token": _token_level}


def compute_advantages(config, inputs: AdvantageInputs, gather: Gather):
    """-> (advantages (B, T), returns (B, T) | None, stats). ``gather`` all-gathers (B,) rewards."""
    spec = advantage_estimator_spec(config.advantage_estimator)
    advantages, returns, estimator_stats = _BY_LEVEL[spec.level](config, spec, inputs, gather)
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
