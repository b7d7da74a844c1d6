"""`online_dpo`: online and iterative DPO with a judge, on the online RL loop.

Each step samples ``group_size`` >= 2 completions per prompt from the current policy (the same
engines as grpo: hf or vllm), scores them with the stage's `rewards` channels (the judge: a
verifier, a reward model, a function, or their weighted sum), builds chosen/rejected pairs within
each prompt (`pairing`: the best against the worst, or every pair whose scores differ by more than
`pair_margin`; with a pairwise `judge`, the scores are the answers' win rates over their group) and takes DPO-family steps on them (`loss_type`: sigmoid / cDPO, robust, hinge,
ipo; the offline `dpo` stage's losses) against a frozen reference, or with `ref_update_steps`
against the policy as it was at the start of each iteration (iterative DPO).

Papers: Xiong et al. 2024, arXiv 2312.11456 (online iterative DPO); Dong et al. 2024, "RLHF
Workflow", arXiv 2405.07863, Sec. 3 (best vs worst of n samples ranked by a reward model, the
reference refreshed per iteration); Rosset et al. 2024, DNO, arXiv 2404.03715 (pairs above a
margin). The math: posttrain.rl.algos.preference; the loop's phases: posttrain.rl.loop.preference.

Where we differ: RLHF Workflow generates a whole iteration's data, then trains on it for epochs;
here an iteration is `ref_update_steps` loop steps, each generating its own batch (so the data is
always on-policy). TRL's OnlineDPOTrainer samples 2 completions and trains on ties (the first as
chosen); we drop ties, and stop the stage when `tie_patience` steps in a row give no pair.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from posttrain.common.config import lr_field
from posttrain.rl.loop.config import OnlineRLConfig
from posttrain.stages.registry import register_stage

#: keys of the policy-gradient loop that online DPO does not read (`posttrain stages online_dpo`
#: hides them; setting one is an error that says so)
POLICY_GRADIENT_KEYS = frozenset({
    "advantage_estimator", "advantage_scale", "policy_loss", "ratio_level", "clip_ratio_low", "clip_ratio_high",
    "dual_clip_c", "cispo_weight_max", "loss_aggregation", "entropy_coef", "gamma", "lam", "gigpo_step_weight",
    "whiten_advantages", "kl_coef", "kl_estimator", "kl_placement", "kl_target", "kl_horizon", "kl_turn_weights", "dynamic_sampling",
    "max_sampling_rounds", "overlong_filtering", "reward_filter", "reward_filter_bands", "reward_filter_min",
    "mismatch_correction", "mismatch_level", "mismatch_clip_max", "mismatch_clip_min", "max_tokens_per_microbatch",
    "curriculum", "environment",
})


class OnlineDPOConfig(OnlineRLConfig):
    """Online / iterative DPO: sample a group per prompt, pair its best and worst (or all pairs
    above a margin) by the rewards, DPO steps on the pairs."""

    kind: Literal["online_dpo"] = "online_dpo"
    group_size: int = Field(4, ge=2, description="Completions sampled per prompt (k >= 2): pairs are built within each prompt's group.")
    lr: float = lr_field(5e-7, "Of the policy (RLHF Workflow: 5e-7 on 8B models; tiny models take more).")
    beta: float = Field(0.1, gt=0, description="DPO's beta: the scale of the implicit reward beta * log(pi / ref) (for ipo, its tau).")
    loss_type: Literal["sigmoid", "robust", "hinge", "ipo"] = Field("sigmoid", description="Per-pair loss, as the dpo stage's: sigmoid = DPO (cDPO with label_smoothing > 0), robust = robust DPO, hinge = SLiC, ipo = IPO (length-normalised).")
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description="Assumed probability eps that the judge's preference is flipped (sigmoid: cDPO; robust); 0 for hinge and ipo.")
    sft_weight: float = Field(0.0, ge=0.0, description="Weight of an added NLL loss on the chosen completions (RPO, arXiv 2404.19733: DPO alone lowered the chosen answers' likelihood on math; token mean over the minibatch's chosen tokens, as the dpo stage's sft_weight); 0 = off.")
    pairing: Literal["best_worst", "all"] = Field("best_worst", description="best_worst: each prompt's highest- against its lowest-scored completion (RLHF Workflow); all: every pair of its completions whose scores differ by more than pair_margin (DNO).")
    pair_margin: float = Field(0.0, ge=0.0, allow_inf_nan=False, description="A pair needs chosen score - rejected score > pair_margin (0: any strict preference; ties never pair).")
    ref_update_steps: int = Field(0, ge=0, description="Iterative DPO: after every this many steps the reference becomes a copy of the current policy (0 = the reference stays the stage's input model or ref_model).")
    judge: str | None = Field(None, description="A pairwise judge 'module:fn' or './file.py:fn', judge(first, second, **columns) -> P(first is better) per pair: each group's answers are ranked by their win rates over the group (DNO) instead of by the rewards, which are still scored and logged. None = rank by the rewards.")
    judge_options: dict[str, Any] = Field(default_factory=dict, description="Keyword options bound to the judge.")
    tie_patience: int = Field(3, ge=1, description="Stop the stage when this many steps in a row give no pair on any process (the judge ranked every group a tie), naming the rewards and an example group.")

    key_metrics: ClassVar[tuple[str, ...]] = ("reward", "pairs/pairs", "reward_accuracy", "reward_margin", "loss",
                                              "response_length/mean")
    unused_keys: ClassVar[frozenset[str]] = POLICY_GRADIENT_KEYS

    @model_validator(mode="before")
    @classmethod
    def _refuse_policy_gradient_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            # a round trip (validate -> dump -> validate) carries them at their defaults: only a change is
            # refused (mismatch_correction's default `auto` resolves by engine, so its value is not checked)
            fields = cls.model_fields
            given = sorted(k for k in (POLICY_GRADIENT_KEYS - {"mismatch_correction"}) & set(data)
                           if data[k] != fields[k].get_default(call_default_factory=True))
            if given:
                raise ValueError(f"online_dpo does not read {', '.join(given)} (keys of the policy-gradient "
                                 "stages grpo/ppo); remove them. Its own keys: beta, loss_type, label_smoothing, "
                                 "sft_weight, pairing, pair_margin, ref_update_steps (`posttrain stages online_dpo`)")
        return data

    @model_validator(mode="after")
    def _check_dpo(self) -> OnlineDPOConfig:
        if self.label_smoothing > 0 and self.loss_type in ("hinge", "ipo"):
            raise ValueError(f"label_smoothing applies to loss_type sigmoid (cDPO) and robust, not {self.loss_type}; set it to 0")
        process = [c.channel_name for c in self.rewards if c.process_reward_model]
        if process:
            raise ValueError(f"rewards: channel {process[0]!r} (process_reward_model) gives per-step rewards; online_dpo "
                             "ranks whole answers by their summed reward: use a reward_model, verifier or function")
        if self.ref_update_steps and self.lora is not None:
            raise ValueError("ref_update_steps with lora is not built: the reference would have to become the policy "
                             "with its adapters merged (without ref_model it is the base model with the adapters off); "
                             "set ref_update_steps: 0 or train without lora")
        if self.ref_update_steps and self.distributed.zero == 3:
            raise ValueError("ref_update_steps under distributed.zero 3: the reference is partitioned and its refresh from "
                             "the policy is not built yet; use zero 0-2 or ref_update_steps: 0")
        return self

    def rebase_paths(self, base_dir) -> None:
        """A `./file.py:fn` judge is read relative to the recipe's folder, as reward functions are."""
        from posttrain.common.config import rebase_file_ref

        super().rebase_paths(base_dir)
        self.judge = rebase_file_ref(self.judge, base_dir)

    def preflight_problems(self, key: str, run_dir, columns: list[str] | None = None) -> list[str]:
        """The reward channels' problems, and a judge that does not load."""
        problems = super().preflight_problems(key, run_dir, columns)
        if self.judge is not None:
            from posttrain.errors import ConfigError
            from posttrain.rl.loop.preference import PairwiseJudge

            try:
                PairwiseJudge(self.judge, self.judge_options)
            except ConfigError as err:
                problems.append(f"{key}.judge: {err}")
        return problems

    @property
    def needs_reference(self) -> bool:
        """DPO always compares against a reference."""
        return True


@register_stage("online_dpo", OnlineDPOConfig, "online / iterative DPO: pairs from each prompt's sampled group ranked by the rewards (the judge), DPO-family loss")
def run_online_dpo(config: OnlineDPOConfig, ctx) -> dict[str, Any]:
    from posttrain.rl.loop.preference import PreferenceLearner
    from posttrain.rl.loop.trainer import run_online_rl

    return run_online_rl(config, ctx, learner=PreferenceLearner(config))
