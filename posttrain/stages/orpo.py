"""`orpo` and `simpo`: reference-free preference optimisation (TRL 1.16 `trl.experimental` ORPO / CPO).

ORPO (Hong et al. 2024, arXiv 2403.07691, eq. 6), with odds(y|x) = P(y|x) / (1 - P(y|x)) and
P the length-normalised (per-token mean) likelihood::

    loss = NLL(y_w | x)  -  beta * log sigmoid(log odds(y_w|x) - log odds(y_l|x))

`beta` is the paper's lambda. SimPO (Meng et al. 2024, arXiv 2405.14734, eq. 6), on TRL's
CPOTrainer with `loss_type: simpo`::

    loss = -log sigmoid(beta/|y_w| log pi(y_w|x) - beta/|y_l| log pi(y_l|x) - gamma)  [+ sft_weight * NLL(y_w|x)]

`gamma` is TRL's `simpo_gamma` (the paper's target margin, in reward units). The paper's SimPO has
no NLL term (sft_weight 0); CPO (arXiv 2401.08417) is the same trainer with an NLL term. Neither
needs a reference model. Both read preference data; TRL applies the chat template itself.
These trainers live in `trl.experimental` in TRL 1.16 and may change in later TRL versions.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from posttrain.stages.dpo import HEADLINE, PREFERENCE_RENAME, PreferenceConfig, load_policy
from posttrain.stages.registry import register_stage


class ORPOConfig(PreferenceConfig):
    """Odds-ratio preference optimisation: SFT and preference in one loss, no reference model."""

    kind: Literal["orpo"] = "orpo"
    beta: float = Field(0.1, gt=0, description="lambda of the ORPO paper: weight of the odds-ratio term next to the NLL term.")


class SimPOConfig(PreferenceConfig):
    """SimPO: length-normalised implicit reward with a target margin, no reference model."""

    kind: Literal["simpo"] = "simpo"
    beta: float = Field(2.0, gt=0, description="Scale of the length-normalised reward (the paper uses 2.0-2.5).")
    gamma: float = Field(0.5, ge=0, description="Target reward margin gamma (TRL's simpo_gamma).")
    sft_weight: float = Field(0.0, ge=0, description="Weight of an NLL term on the chosen completions (TRL's cpo_alpha; 0 = the paper's SimPO).")


def _run(config: PreferenceConfig, ctx, config_cls, trainer_cls, specific: dict[str, Any]) -> dict[str, Any]:
    """Shared body: load pairs and model, build the experimental trainer, train, save.

    remove_unused_columns=False: these trainers tokenize inside their collator, which needs the text columns.
    """
    from transformers import set_seed

    from posttrain.common.runtime import quiet_libraries
    from posttrain.data import load_dataset_spec
    from posttrain.stages.trl_bridge import run_trainer

    quiet_libraries()
    train, evaluation = load_dataset_spec(config.data, type(config).data_formats)
    set_seed(config.seed)
    model, tokenizer = load_policy(config)
    return run_trainer(config, ctx, config_cls, trainer_cls, model=model, tokenizer=tokenizer, train=train,
                       evaluation=evaluation, specific=dict(beta=config.beta, remove_unused_columns=False, **specific),
                       rename=PREFERENCE_RENAME, headline_keys=HEADLINE)


@register_stage("orpo", ORPOConfig, "odds-ratio preference optimization, reference-free (TRL experimental ORPOTrainer)")
def run_orpo(config: ORPOConfig, ctx) -> dict[str, Any]:
    from trl.experimental.orpo import ORPOConfig as TRLORPOConfig
    from trl.experimental.orpo import ORPOTrainer

    return _run(config, ctx, TRLORPOConfig, ORPOTrainer, {})


@register_stage("simpo", SimPOConfig, "simple preference optimization, reference-free (TRL experimental CPOTrainer, loss simpo)")
def run_simpo(config: SimPOConfig, ctx) -> dict[str, Any]:
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    return _run(config, ctx, CPOConfig, CPOTrainer,
                {"loss_type": "simpo", "simpo_gamma": config.gamma, "cpo_alpha": config.sft_weight})
