"""The RL math of posttrain as pure functions of tensors (imports only torch).

Advantage estimators, policy/value losses, loss aggregation, KL estimators and controllers,
sampler/trainer mismatch weights, and DAPO's shaping (overlong punishment and filtering, the
dynamic-sampling group filter), OTC's tool-call reward; reward-model ensemble aggregation is in :mod:`.ensemble`. Each
function's docstring names its paper and equation and says where we differ from the paper or from
TRL 1.16. Shapes: B = sequences, T = tokens.

A GRPO-style update from these pieces::

    advantages, _ = group_normalized(rewards, group_size=8)          # (B,)
    loss_t, stats = ppo_clip(logprobs, old_logprobs, advantages,
                             clip_ratio_low=0.2, clip_ratio_high=0.28,
                             response_mask=response_mask)          # (B, T)
    loss = aggregate(loss_t, response_mask, "token-mean", global_tokens=n_tokens)
"""

from .advantages import (
    expand_to_tokens,
    gae,
    group_normalized,
    masked_whiten,
    raft,
    reinforce_pp,
    rloo,
)
from .aggregation import AGGREGATION_MODES, TRL_LOSS_TYPES, aggregate
from .entropy import entropy_bonus, entropy_from_logits
from .filtering import filter_by_reward
from .group_in_group import discounted_step_returns, gigpo, step_group_advantages
from .kl import (
    KL_KINDS,
    AdaptiveKLController,
    FixedKLController,
    kl_estimate,
    kl_penalized_rewards,
    last_token_index,
    turn_kl_weights,
)
from .mismatch import mismatch_weights
from .noisy import backward_correction, check_noise_rates, forward_correction
from .policy_loss import cispo, decoupled_ppo, gspo, pg, ppo_clip
from .preference import (
    DPO_LOSS_TYPES,
    PAIRINGS,
    chosen_nll,
    dpo_pair_loss,
    preference_pairs,
    round_robin,
    win_rates,
)
from .registry import (
    ADVANTAGE_ESTIMATORS,
    POLICY_LOSSES,
    EstimatorSpec,
    PolicyLossSpec,
    advantage_estimator_spec,
    get_advantage_estimator,
    get_policy_loss,
    policy_loss_spec,
    register_advantage_estimator,
    register_policy_loss,
    resolve_policy_loss,
)
from .shaping import groups_with_signal, overlong_filter_mask, soft_overlong_punishment
from .tool_cost import otc_mapping, otc_tool_reward
from .value_loss import value_loss

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATION_MODES",
    "DPO_LOSS_TYPES",
    "KL_KINDS",
    "PAIRINGS",
    "POLICY_LOSSES",
    "TRL_LOSS_TYPES",
    "AdaptiveKLController",
    "EstimatorSpec",
    "FixedKLController",
    "PolicyLossSpec",
    "advantage_estimator_spec",
    "aggregate",
    "backward_correction",
    "check_noise_rates",
    "chosen_nll",
    "cispo",
    "decoupled_ppo",
    "discounted_step_returns",
    "dpo_pair_loss",
    "entropy_bonus",
    "entropy_from_logits",
    "expand_to_tokens",
    "filter_by_reward",
    "forward_correction",
    "gae",
    "get_advantage_estimator",
    "get_policy_loss",
    "gigpo",
    "group_normalized",
    "groups_with_signal",
    "gspo",
    "kl_estimate",
    "kl_penalized_rewards",
    "last_token_index",
    "masked_whiten",
    "mismatch_weights",
    "otc_mapping",
    "otc_tool_reward",
    "overlong_filter_mask",
    "pg",
    "policy_loss_spec",
    "ppo_clip",
    "preference_pairs",
    "raft",
    "register_advantage_estimator",
    "register_policy_loss",
    "reinforce_pp",
    "resolve_policy_loss",
    "rloo",
    "round_robin",
    "soft_overlong_punishment",
    "step_group_advantages",
    "turn_kl_weights",
    "value_loss",
    "win_rates",
]
