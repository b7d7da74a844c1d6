"""`ppo`: PPO-RLHF with a learned value model (critic), GAE, and a per-token KL penalty.

Ouyang et al. 2022 (InstructGPT, arXiv 2203.02155) / Ziegler et al. 2019 (arXiv 1909.08593):
the reward model's score on the last token minus ``kl_coef * KL_t`` on every token
(kl_placement reward, k1), GAE advantages (Schulman et al. 2015, arXiv 1506.02438) whitened over
the batch, PPO clip 0.2 (arXiv 1707.06347) with a clipped value loss, optional adaptive KL
(``kl_target``). The critic is a separate token-classification model initialised from
``critic_model`` (a reward model, as InstructGPT does) or from the policy, with its own learning
rate and gradient clipping; policy and critic share one forward/backward pass per micro-batch.
Differences: no pretraining-gradient mix (PPO-ptx); rewards are not normalised or clipped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from posttrain.common.config import rebase_dir
from posttrain.rl.loop.config import OnlineRLConfig
from posttrain.stages.registry import register_stage


class PPOConfig(OnlineRLConfig):
    """PPO with a critic; the GRPO knobs apply, with PPO-RLHF defaults."""

    kind: Literal["ppo"] = "ppo"
    critic_model: str | None = Field(None, description="Initialise the critic from this model (a reward model directory, e.g. `${stages.rm.output}`); default: the policy's input model.")
    critic_lr: float = Field(1e-5, gt=0, description="Critic learning rate (its own AdamW parameter group).")
    critic_max_grad_norm: float = Field(1.0, gt=0, description="Clip the critic's gradient norm to this (separately from the policy's).")
    vf_coef: float = Field(0.5, ge=0, description="Weight of the value loss in the summed loss.")
    value_clip: float | None = Field(0.2, gt=0, description="Clip new values to old_values +- value_clip in the value loss (None = no clipping).")

    @model_validator(mode="after")
    def _one_clip_under_deepspeed(self) -> PPOConfig:
        if self.distributed.zero and self.critic_max_grad_norm != self.max_grad_norm:
            raise ValueError(
                f"critic_max_grad_norm {self.critic_max_grad_norm} differs from max_grad_norm {self.max_grad_norm}, but "
                f"under DeepSpeed (distributed.zero: {self.distributed.zero}) the engine clips policy and critic together "
                "by one norm (gradient_clipping); set them equal, or use zero: 0")
        return self

    @classmethod
    def preset_name(cls, data: dict[str, Any]) -> str | None:
        return "ppo"  # the PPO-RLHF knob values, with sources: posttrain.rl.presets

    def rebase_paths(self, base_dir: Path) -> None:
        super().rebase_paths(base_dir)
        self.critic_model = rebase_dir(self.critic_model, base_dir)

    uses_critic: ClassVar[bool] = True
    model_keys: ClassVar[tuple[str, ...]] = ("model", "ref_model", "critic_model")
    key_metrics: ClassVar[tuple[str, ...]] = ("reward", "kl", "loss/value", "entropy", "response_length/mean")


@register_stage("ppo", PPOConfig, "online RL with a value model (PPO-RLHF: GAE, clipped value loss, KL penalty)")
def run_ppo(config: PPOConfig, ctx) -> dict[str, Any]:
    from posttrain.rl.loop.trainer import run_online_rl

    return run_online_rl(config, ctx)
