"""`dpo`: Direct Preference Optimization and its pairwise variants on TRL's DPOTrainer.

With the implicit reward h = beta * [(log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))]
(beta * Delta below), `loss_type` selects the loss on each pair, all from TRL 1.16's DPOTrainer:

=================  =====================================================  =================================
loss_type          per-pair loss                                          paper
=================  =====================================================  =================================
sigmoid            -log sigmoid(h)                                        DPO, arXiv 2305.18290 eq. 7
sigmoid + eps > 0  -(1-eps) log sigmoid(h) - eps log sigmoid(-h)          conservative DPO (cDPO), Mitchell
                                                                          2023; analysed in arXiv 2403.00409
robust             [-(1-eps) log sigmoid(h) + eps log sigmoid(-h)]/(1-2eps)  robust DPO, arXiv 2403.00409 eq. 9
hinge              max(0, 1 - h)                                          SLiC-HF, arXiv 2305.10425
ipo                (Delta_w/|y_w| - Delta_l/|y_l| - 1/(2 beta))^2          IPO, arXiv 2310.12036 eq. 17
=================  =====================================================  =================================

`label_smoothing` (eps) is the assumed probability that a preference label is flipped. Where we
differ from TRL: TRL 1.16's `sigmoid` ignores label smoothing, so cDPO is built from two TRL terms
with exact algebra (see :func:`trl_loss_terms`). IPO in TRL divides each log-ratio by the
completion length (confirmed with the IPO authors, per TRL's comment); the paper's eq. 17 does not.

`sft_weight` w adds w * NLL(y_w | x) (token mean over the batch's chosen completions), the RPO
objective (Pang et al. 2024, arXiv 2404.19733), as TRL's `sft` loss term with weight w.

The reference model is the stage's input model unless `ref_model` names another one (with LoRA
and no `ref_model`, the base model with adapters disabled). `precompute_ref_log_probs` computes
the reference log-probabilities of every pair once, before training, and frees the reference model.
The summary reports `eval_reward_accuracy` (fraction of eval pairs with h > 0) and
`eval_reward_margin` (mean h) when the data has an eval split.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from posttrain.common.config import lr_field, rebase_dir
from posttrain.stages.registry import register_stage
from posttrain.stages.training import TrainingConfig

# TRL's metric names -> ours (train logs, eval logs, summary); shared by the DPO-family stages.
PREFERENCE_RENAME = {
    f"{prefix}{trl}": f"{prefix}{ours}"
    for prefix in ("", "eval_")
    for trl, ours in (("rewards/accuracies", "reward_accuracy"), ("rewards/margins", "reward_margin"),
                      ("rewards/chosen", "reward_chosen"), ("rewards/rejected", "reward_rejected"),
                      ("logps/chosen", "logp_chosen"), ("logps/rejected", "logp_rejected"))
}

# Shown first in run tables (which list a stage's first few summary metrics).
HEADLINE = ("eval_reward_accuracy", "eval_reward_margin", "last_loss", "steps")


class PreferenceConfig(TrainingConfig):
    """Keys shared by the preference-optimisation stage kinds (dpo, kto, orpo, simpo)."""

    data_formats: ClassVar[str | tuple[str, ...] | None] = "preference"

    lr: float = lr_field(1e-6, "Preference tuning uses small ones on real models.")
    beta: float = Field(0.1, gt=0, description="Strength of the implicit-reward scale / KL regularisation (per loss; see the stage's docs).")

    key_metrics: ClassVar[tuple[str, ...]] = ("loss", "reward_accuracy", "eval_reward_accuracy", "reward_margin")


class DPOConfig(PreferenceConfig):
    """Direct Preference Optimization and variants (sigmoid, cDPO, robust, hinge, IPO) against a frozen reference."""

    kind: Literal["dpo"] = "dpo"
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = Field("sigmoid", description="sigmoid = DPO (cDPO with label_smoothing > 0), robust = robust DPO, hinge = SLiC, ipo = IPO.")
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description="Assumed label-flip probability eps for sigmoid (cDPO) and robust; must be 0 for hinge and ipo.")
    sft_weight: float = Field(0.0, ge=0.0, description="Weight of an added NLL loss on the chosen completions (RPO); 0 = off.")
    ref_model: str | None = Field(None, description="Reference model directory (or `${stages.NAME.output}`); default: the stage's input model.")
    model_keys: ClassVar[tuple[str, ...]] = ("model", "ref_model")

    def rebase_paths(self, base_dir: Path) -> None:
        self.ref_model = rebase_dir(self.ref_model, base_dir)
    precompute_ref_log_probs: bool = Field(False, description="Compute the reference log-probs of all pairs before training, then free the reference model.")

    @model_validator(mode="after")
    def _smoothing_applies(self) -> DPOConfig:
        if self.label_smoothing > 0 and self.loss_type in ("hinge", "ipo"):
            raise ValueError(f"label_smoothing applies to loss_type sigmoid (cDPO) and robust, not {self.loss_type}; set it to 0")
        return self


def trl_loss_terms(loss_type: str, label_smoothing: float, sft_weight: float) -> tuple[list[str], list[float]]:
    """TRL DPOConfig `loss_type` list and `loss_weights` for our (loss_type, eps, sft_weight).

    cDPO is not a TRL 1.16 loss type, but it is an exact combination of two that are. With
    L(h) = -log sigmoid(h) and -log sigmoid(-h) = L(h) + h:
    cDPO(h) = (1-eps) L + eps (L + h) = L + eps h, and TRL's robust(h) = [(1-eps) L - eps (L + h)] / (1-2eps)
    = L - eps h / (1-2eps). So cDPO = (2 - 2eps) * sigmoid + (-(1 - 2eps)) * robust, as functions of h
    (hence with equal gradients).

    >>> trl_loss_terms("sigmoid", 0.1, 0.5)
    (['sigmoid', 'robust', 'sft'], [1.8, -0.8, 0.5])
    """
    if loss_type == "sigmoid" and label_smoothing > 0:
        types, weights = ["sigmoid", "robust"], [2.0 - 2.0 * label_smoothing, -(1.0 - 2.0 * label_smoothing)]
    else:
        types, weights = [loss_type], [1.0]
    if sft_weight > 0:
        types.append("sft")
        weights.append(sft_weight)
    return types, weights


def load_policy(config: TrainingConfig):
    """(model, tokenizer) of the stage's input causal LM, float32, pad token set."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(config.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(config.model, dtype=torch.float32)
    return model, tokenizer


def load_reference(config) -> Any:
    """The reference model to hand to TRL, or None to let TRL build it from the input model.

    Under ZeRO-3 we load the default reference (a copy of the input model) ourselves, before the
    TRL config exists: TRL would otherwise load it inside `deepspeed.zero.Init`, which failed with
    DeepSpeed's batch-size check (it saw a world size of 1) on 2 CPU processes.
    """
    import torch
    from transformers import AutoModelForCausalLM

    dist = config.distributed
    path = config.ref_model
    if path is None and dist.zero == 3 and config.lora is None and not config.precompute_ref_log_probs:
        # also with one process: zero > 0 runs in a launched DeepSpeed worker (common.distributed)
        path = config.model
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32) if path else None


def shared_datasets(args, ctx, config, *splits):
    """With precomputed reference log-probs on several processes: file-backed copies every local rank reads.

    TRL caches the precomputed log-probs next to the dataset's cache files; an in-memory dataset has
    none, so each process would use its own temporary folder and the other ranks cannot find the file
    rank 0 wrote (FileNotFoundError, seen on 2 CPU processes). Saving the splits once per node into
    the stage's work directory gives them a common folder. Otherwise the splits are returned as is.
    """
    import datasets

    if not config.precompute_ref_log_probs or ctx.world_size < 2:
        return splits
    out = []
    for name, split in zip(("train", "eval"), splits):
        if split is None:
            out.append(None)
            continue
        folder = ctx.work_dir / "data" / name
        with args.main_process_first(local=True, desc=f"saving the {name} split for all ranks"):
            if args.local_process_index == 0 and not (folder / "dataset_info.json").exists():
                split.save_to_disk(str(folder))
        out.append(datasets.load_from_disk(str(folder)))
    return tuple(out)


def _dpo_parts(config: DPOConfig, ctx):
    """The keyword arguments of trl_bridge.build_trainer / run_trainer for a dpo stage (seeded model and reference)."""
    from transformers import set_seed
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    set_seed(config.seed)
    model, tokenizer = load_policy(config)
    loss_types, loss_weights = trl_loss_terms(config.loss_type, config.label_smoothing, config.sft_weight)
    specific = {"beta": config.beta, "loss_type": loss_types, "loss_weights": loss_weights,
                "label_smoothing": config.label_smoothing, "precompute_ref_log_probs": config.precompute_ref_log_probs}
    return {"args_cls": TRLDPOConfig, "trainer_cls": DPOTrainer, "model": model, "tokenizer": tokenizer,
            "specific": specific, "ref_model": load_reference(config),
            "prepare": lambda args, train, evaluation: shared_datasets(args, ctx, config, train, evaluation)}


def build_dpo_trainer(config: DPOConfig, ctx, train, evaluation, callbacks: list | None = None):
    """A TRL DPOTrainer for this stage without training it (tests check the loss on given pairs)."""
    from posttrain.stages.trl_bridge import build_trainer

    parts = _dpo_parts(config, ctx)
    return build_trainer(config, ctx, train=train, evaluation=evaluation, callbacks=callbacks, **parts), parts["tokenizer"]


@register_stage("dpo", DPOConfig, "direct preference optimization: sigmoid/cDPO, robust, hinge, IPO (TRL DPOTrainer)")
def run_dpo(config: DPOConfig, ctx) -> dict[str, Any]:
    from posttrain.common.runtime import quiet_libraries
    from posttrain.data import load_dataset_spec
    from posttrain.stages.trl_bridge import run_trainer

    quiet_libraries()
    train, evaluation = load_dataset_spec(config.data, type(config).data_formats)
    return run_trainer(config, ctx, train=train, evaluation=evaluation, rename=PREFERENCE_RENAME,
                       headline_keys=HEADLINE, **_dpo_parts(config, ctx))
