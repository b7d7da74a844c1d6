"""`grpo`: critic-free online RL with group-relative advantages, and its published variants.

A variant is a PRESET of the loop's orthogonal knobs (posttrain.rl.loop.config), applied to the
keys the recipe leaves unset, so `posttrain validate` prints the values actually used and any
key can still be overridden. Presets (and where we differ from the paper):

- ``grpo``: Shao et al. 2024, DeepSeekMath, arXiv 2402.03300, Sec. 4.1: group mean/std
  advantages, token-level PPO clip 0.2, per-sequence mean of token means, KL in the loss with the
  k3 estimator and beta 0.04. We run one policy update per rollout batch by default
  (ppo_epochs 1), as TRL does; the paper's iterative reference-model reset is not done.
- ``dr_grpo``: Liu et al. 2025, "Understanding R1-Zero-Like Training", arXiv 2503.20783,
  Sec. 3: no std division (advantage_scale none), token sums divided by a constant
  (seq-mean-token-sum-norm with max_tokens), no KL.
- ``dapo``: Yu et al. 2025, arXiv 2503.14476: clip-higher 0.2/0.28 (Sec. 3.1), dynamic sampling
  (3.2), token-level loss (3.3), soft overlong punishment over the last 20% of max_tokens (3.4;
  the paper's 4,096 of 20,480 tokens), no KL. Differences: L_max is max_tokens itself (the
  paper generates up to L_max + L_cache); a batch still short after max_sampling_rounds is
  filled with zero-advantage groups.
- ``gspo``: Zheng et al. 2025, arXiv 2507.18071: sequence-level, length-normalised importance
  ratio (GSPO-token form) clipped to 3e-4 / 4e-4, sequence mean, no KL.
- ``cispo``: MiniMax 2025, MiniMax-M1, arXiv 2506.13585, Sec. 3.1: the policy loss weighs each
  token's log-prob by its clipped, detached IS weight (no token loses its gradient), group
  mean/std advantages, token-level mean over the batch, no KL. The paper bounds the weight only
  from above and does not state eps_high; ours: weight <= 5.0 (cispo_weight_max, TRL's value).
- ``rloo``: Ahmadian et al. 2024, "Back to Basics", arXiv 2402.14740: leave-one-out baseline,
  the whole completion as one action (seq-mean-token-sum), sequence KL subtracted from the reward
  (k1, beta 0.05). We keep PPO's ratio clip (inactive at ppo_epochs 1, where ratio = 1).
- ``reinforce_pp``: Hu et al. 2025, REINFORCE++, arXiv 2501.03262: group-mean baseline, token-
  level KL penalty in the reward (k1, beta 0.01: our choice), returns whitened over the batch's
  tokens, PPO clip 0.2, token-mean loss. Under several processes the whitening is per process.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from posttrain.rl.loop.config import OnlineRLConfig
from posttrain.rl.presets import preset_values
from posttrain.stages.registry import register_stage

GRPO_VARIANTS = ("grpo", "dr_grpo", "dapo", "gspo", "cispo", "rloo", "reinforce_pp", "raft")

#: variant -> the knob values it stands for (the table with sources: posttrain.rl.presets).
VARIANT_PRESETS: dict[str, dict[str, Any]] = {name: preset_values(name) for name in GRPO_VARIANTS}


class GRPOConfig(OnlineRLConfig):
    """Critic-free online RL; `variant` fills every knob the recipe does not set."""

    kind: Literal["grpo"] = "grpo"
    variant: Literal[GRPO_VARIANTS] = Field(  # type: ignore[valid-type]
        "grpo", description="Named preset of the knobs (posttrain/rl/presets.py gives each value's paper and section); keys set in the recipe win.")

    @classmethod
    def preset_name(cls, data: dict[str, Any]) -> str | None:
        return data.get("variant", "grpo")


@register_stage("grpo", GRPOConfig, "online RL without a critic: GRPO, Dr.GRPO, DAPO, GSPO, CISPO, RLOO, REINFORCE++, RAFT presets")
def run_grpo(config: GRPOConfig, ctx) -> dict[str, Any]:
    from posttrain.rl.loop.trainer import run_online_rl

    return run_online_rl(config, ctx)
