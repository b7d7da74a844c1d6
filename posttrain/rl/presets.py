"""The published RL variants as data: one table, each value beside the paper section it comes from.

A variant is a PRESET of the online RL loop's orthogonal knobs (posttrain.rl.loop.config): it
fills every knob the recipe leaves unset, so `posttrain validate` prints the values a stage
really gets, `posttrain stages grpo --variant NAME` prints the same, and any key can still be
overridden. ``grpo`` and its variants are the presets of the `grpo` stage kind; ``ppo`` is the
preset of the `ppo` kind (same config, plus the critic's keys). This module imports nothing, so
the schema and the CLI read it without torch.

Where we differ from a paper, the source says so ("ours: ...").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Knob:
    """One preset value and where it comes from."""

    value: Any
    source: str


_DSM = "Shao et al. 2024, DeepSeekMath, arXiv 2402.03300"
_DR = "Liu et al. 2025, Understanding R1-Zero-Like Training (Dr.GRPO), arXiv 2503.20783"
_DAPO = "Yu et al. 2025, DAPO, arXiv 2503.14476"
_GSPO = "Zheng et al. 2025, GSPO, arXiv 2507.18071"
_CISPO = "MiniMax 2025, MiniMax-M1 (CISPO), arXiv 2506.13585"
_RLOO = "Ahmadian et al. 2024, Back to Basics (RLOO), arXiv 2402.14740"
_RPP = "Hu et al. 2025, REINFORCE++, arXiv 2501.03262"
_IGPT = "Ouyang et al. 2022, InstructGPT, arXiv 2203.02155"
_ZIEG = "Ziegler et al. 2019, Fine-Tuning LMs from Human Preferences, arXiv 1909.08593"
_PPO = "Schulman et al. 2017, PPO, arXiv 1707.06347"
_RAFT = "Dong et al. 2023, RAFT, arXiv 2304.06767"

_GRPO: dict[str, Knob] = {
    "advantage_estimator": Knob("group_normalized", f"{_DSM}, Sec. 4.1.2 (outcome supervision: (r - mean) / std)"),
    "advantage_scale": Knob("group", f"{_DSM}, Sec. 4.1.2 (the group's std)"),
    "policy_loss": Knob("ppo_clip", f"{_DSM}, Sec. 4.1.1 eq. 3 (PPO's clipped surrogate)"),
    "ratio_level": Knob("token", f"{_DSM}, eq. 3 (per-token ratio)"),
    "clip_ratio_low": Knob(0.2, f"{_DSM}, eq. 3 (epsilon; TRL's default 0.2)"),
    "clip_ratio_high": Knob(0.2, f"{_DSM}, eq. 3 (symmetric clip)"),
    "loss_aggregation": Knob("seq-mean-token-mean", f"{_DSM}, eq. 3 (1/G sum_i 1/|o_i| sum_t)"),
    "kl_coef": Knob(0.04, f"{_DSM}, Sec. 4.2 (beta = 0.04)"),
    "kl_estimator": Knob("k3", f"{_DSM}, eq. 4 (unbiased estimator, Schulman's k3)"),
    "kl_placement": Knob("loss", f"{_DSM}, Sec. 4.1.1 (KL added to the loss, not the reward)"),
    "dynamic_sampling": Knob(False, "not in GRPO (DAPO Sec. 3.2 adds it)"),
    "overlong_filtering": Knob(False, "not in GRPO"),
    "overlong_buffer_ratio": Knob(0.0, "not in GRPO (DAPO Sec. 3.4 adds it)"),
    "cispo_weight_max": Knob(5.0, "not in GRPO (read only by policy_loss cispo; MiniMax-M1 Sec. 3.1 adds it)"),
    "reward_filter": Knob("none", "not in GRPO (every completion enters the loss)"),
    "reward_filter_min": Knob(None, "not in GRPO"),
}


def _variant(base: dict[str, Knob], **changes: Knob) -> dict[str, Knob]:
    unknown = set(changes) - set(base)
    if unknown:  # every preset sets the same keys, so switching variants leaves nothing behind
        raise KeyError(f"preset keys {sorted(unknown)} are not GRPO knobs")
    return {**base, **changes}


#: variant -> knob -> Knob(value, source). Every GRPO-family preset sets the same keys.
PRESETS: dict[str, dict[str, Knob]] = {
    "grpo": _GRPO,
    "dr_grpo": _variant(
        _GRPO,
        advantage_scale=Knob("none", f"{_DR}, Sec. 3 (no std division: it biases toward too easy/hard questions)"),
        loss_aggregation=Knob("seq-mean-token-sum-norm", f"{_DR}, Sec. 3 (token sums over a constant, max_tokens)"),
        kl_coef=Knob(0.0, f"{_DR}, Sec. 3 (no KL term for rule-based rewards)"),
    ),
    "dapo": _variant(
        _GRPO,
        clip_ratio_high=Knob(0.28, f"{_DAPO}, Sec. 3.1 (clip-higher: eps_high = 0.28)"),
        loss_aggregation=Knob("token-mean", f"{_DAPO}, Sec. 3.3 (token-level policy-gradient loss)"),
        kl_coef=Knob(0.0, f"{_DAPO}, Sec. 2.3 (KL penalty removed)"),
        dynamic_sampling=Knob(True, f"{_DAPO}, Sec. 3.2 (drop all-equal groups, sample more)"),
        overlong_buffer_ratio=Knob(0.2, f"{_DAPO}, Sec. 3.4 (L_cache 4,096 of 20,480 tokens; ours: L_max = max_tokens)"),
    ),
    "gspo": _variant(
        _GRPO,
        ratio_level=Knob("sequence", f"{_GSPO} (length-normalised sequence ratio)"),
        clip_ratio_low=Knob(3e-4, f"{_GSPO}, experiments (left clip 3e-4)"),
        clip_ratio_high=Knob(4e-4, f"{_GSPO}, experiments (right clip 4e-4)"),
        kl_coef=Knob(0.0, f"{_GSPO}, experiments (no KL term)"),
    ),
    "cispo": _variant(
        _GRPO,
        policy_loss=Knob("cispo", f"{_CISPO}, Sec. 3.1, the CISPO objective (sg(clipped IS weight) * A * log pi: "
                                  "no token loses its gradient)"),
        ratio_level=Knob("token", f"{_CISPO}, Sec. 3.1 (per-token IS weight r_it)"),
        cispo_weight_max=Knob(5.0, f"{_CISPO}, Sec. 3.1 (weight clipped to [1 - eps_low, 1 + eps_high]; the paper tunes "
                                   "only eps_high and does not state it; ours: 1 + eps_high = 5.0, TRL 1.16's value "
                                   "for cispo after ScaleRL, arXiv 2510.13786)"),
        clip_ratio_low=Knob(0.2, f"{_CISPO}, Sec. 3.1 (no lower weight bound: eps_low set large; ours: cispo reads "
                                 "no clip_ratio_*, so the value is inert)"),
        clip_ratio_high=Knob(0.2, f"{_CISPO} (ours: inert under cispo, whose bound is cispo_weight_max)"),
        loss_aggregation=Knob("token-mean", f"{_CISPO}, Sec. 3.1, the CISPO objective (1 / sum_i |o_i|: token level)"),
        kl_coef=Knob(0.0, f"{_CISPO}, Sec. 3.1 (no KL term in the CISPO objective)"),
        advantage_estimator=Knob("group_normalized", f"{_CISPO}, Sec. 3.1 eq. 2 (GRPO's group-relative advantage)"),
        advantage_scale=Knob("group", f"{_CISPO}, Sec. 3.1 eq. 2 ((R_i - mean) / std over the group)"),
    ),
    "rloo": _variant(
        _GRPO,
        advantage_estimator=Knob("rloo", f"{_RLOO} (leave-one-out baseline)"),
        loss_aggregation=Knob("seq-mean-token-sum", f"{_RLOO} (the whole completion is one action)"),
        kl_coef=Knob(0.05, f"{_RLOO} (beta; ours: 0.05 from their TL;DR range)"),
        kl_estimator=Knob("k1", f"{_RLOO} (r - beta * log(pi / pi_ref) per sequence)"),
        kl_placement=Knob("reward", f"{_RLOO} (KL in the reward)"),
    ),
    "reinforce_pp": _variant(
        _GRPO,
        advantage_estimator=Knob("reinforce_pp", f"{_RPP} (global-batch advantage normalisation)"),
        loss_aggregation=Knob("token-mean", f"{_RPP} (token-level loss)"),
        kl_coef=Knob(0.01, f"{_RPP} (token-level KL penalty; ours: beta 0.01)"),
        kl_estimator=Knob("k1", f"{_RPP} (k1 in the reward)"),
        kl_placement=Knob("reward", f"{_RPP} (KL in the token rewards)"),
    ),
    "raft": _variant(
        _GRPO,
        advantage_estimator=Knob("raft", f"{_RAFT}, Algorithm 1 (every kept response is imitated with weight 1)"),
        policy_loss=Knob("pg", f"{_RAFT}, Algorithm 1 step 3 (the SFT loss, -log pi, on the kept set; no ratio, no clip)"),
        ratio_level=Knob("token", f"{_RAFT} (the SFT loss is per token)"),
        loss_aggregation=Knob("token-mean", f"{_RAFT}, Algorithm 1 step 3 (mean NLL over the kept tokens)"),
        kl_coef=Knob(0.0, f"{_RAFT} (no KL term: the SFT step alone)"),
        advantage_scale=Knob("group", f"{_RAFT} (ours: inert, read only by group_normalized)"),
        clip_ratio_low=Knob(0.2, f"{_RAFT} (ours: inert, pg has no ratio to clip)"),
        clip_ratio_high=Knob(0.2, f"{_RAFT} (ours: inert, pg has no ratio to clip)"),
        reward_filter=Knob("best_of_n", f"{_RAFT}, Algorithm 1 step 2 (keep argmax_j r(x, y_j) of each prompt's K responses)"),
        reward_filter_min=Knob(None, f"{_RAFT} (the best is kept however low; ours: set it for verifier rewards, as "
                                     "recipes/reference/grpo_raft.yaml does, so a prompt with no right answer gives no data; "
                                     "ReST, Gulcehre et al. 2023, arXiv 2308.08998, thresholds the same way)"),
    ),
    "ppo": {
        "advantage_estimator": Knob("gae", f"{_IGPT}, Sec. 3.5 / Schulman et al. 2015 (GAE over the critic's values)"),
        "group_size": Knob(1, f"{_ZIEG} (one completion per prompt)"),
        "prompts_per_step": Knob(16, "ours: a tiny-model batch"),
        "ppo_epochs": Knob(2, f"{_PPO} (K epochs per batch; ours: 2)"),
        "whiten_advantages": Knob(True, f"{_ZIEG} / OpenAI lm-human-preferences (whitened advantages)"),
        "kl_coef": Knob(0.05, f"{_IGPT}, Sec. 3.5 eq. 2 (beta; ours: 0.05)"),
        "kl_estimator": Knob("k1", f"{_ZIEG} (r - beta * log(pi / rho) per token)"),
        "kl_placement": Knob("reward", f"{_ZIEG} (KL penalty in the reward)"),
    },
}


def preset_values(name: str) -> dict[str, Any]:
    """The knob values of preset ``name`` (``KeyError`` if unknown)."""
    return {key: knob.value for key, knob in PRESETS[name].items()}
