"""`reward_model`: Bradley-Terry reward models on preference pairs (TRL RewardTrainer), optionally an ensemble.

Loss per pair (Ouyang et al. 2022, arXiv 2203.02155, eq. 1; the Bradley-Terry model)::

    loss = -log sigmoid(r(x, y_chosen) - r(x, y_rejected) - margin)  [+ c * (r_chosen + r_rejected)^2]

`margin` is the data's optional `margin` column (Llama 2, arXiv 2307.09288, eq. 2), used when
`use_margin` is true; the squared term is `center_rewards_coefficient` (Eisenstein et al. 2023,
arXiv 2312.09244, eq. 2), which pulls rewards towards zero mean.

`ensemble: K` trains K reward models with seeds seed..seed+K-1 (different value-head init and data
order; with `bootstrap: true` each member also sees its own resample, with replacement, of the
training pairs) into `model/member_0 .. member_{K-1}` plus `model/ensemble.json`.
:func:`posttrain.models.reward.load_reward_model` loads either layout and aggregates the members
(mean, min or mean - k*std; Coste et al. 2023, arXiv 2310.02743). A killed ensemble run resumes:
finished members are kept, the interrupted one resumes from its last checkpoint.

The summary's `eval_pairwise_accuracy` is the fraction of eval pairs whose chosen answer gets a
strictly higher (aggregated) reward, computed over every eval pair after training.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from posttrain.errors import DataError
from posttrain.stages.registry import register_stage
from posttrain.stages.training import TrainingConfig

# TRL's metric names -> ours, in the metrics file and the summary.
RENAME = {"accuracy": "pairwise_accuracy", "eval_accuracy": "eval_pairwise_accuracy",
          "margin": "reward_margin", "eval_margin": "eval_reward_margin"}


class RewardModelConfig(TrainingConfig):
    """Train a scalar reward model r(x, y) (or K of them) on chosen/rejected pairs."""

    data_formats: ClassVar[str | tuple[str, ...] | None] = "preference"

    kind: Literal["reward_model"] = "reward_model"
    center_rewards_coefficient: float | None = Field(None, ge=0, description="Weight of the (r_chosen + r_rejected)^2 penalty that centres rewards at zero (arXiv 2312.09244 eq. 2; 0.01 is typical). null = off.")
    use_margin: bool = Field(True, description="If the data has a numeric `margin` column, subtract it inside the sigmoid (Llama 2 margin loss); false ignores the column.")
    ensemble: int = Field(1, ge=1, le=64, description="Number of reward models to train (seeds seed..seed+K-1); K > 1 writes model/member_i/ and model/ensemble.json.")
    bootstrap: bool = Field(False, description="Ensembles: train each member on its own resample (with replacement, same size) of the training pairs.")
    aggregation: Literal["mean", "min", "mean_minus_std"] = Field("mean", description="Default way to combine member rewards, written to ensemble.json: mean, min (worst case) or mean - std_coef * std.")
    std_coef: float = Field(1.0, ge=0, description="k in mean_minus_std (population std over members).")

    key_metrics: ClassVar[tuple[str, ...]] = ("loss", "pairwise_accuracy", "eval_pairwise_accuracy")


def bootstrap_indices(n: int, seed: int) -> list[int]:
    """n row indices drawn uniformly with replacement (numpy PCG64 seeded with `seed`)."""
    import numpy as np

    return np.random.default_rng(seed).integers(0, n, size=n).tolist()


def _check_margin(config: RewardModelConfig, train, evaluation):
    """Drop `margin` when unused; otherwise insist that it is numeric in every split that has it."""
    splits = [train] if evaluation is None else [train, evaluation]
    out = []
    for split in splits:
        if "margin" in split.column_names:
            if not config.use_margin:
                split = split.remove_columns("margin")
            elif split.features["margin"].dtype not in ("int8", "int16", "int32", "int64", "float16", "float32", "float64"):
                raise DataError(f"Data file {config.data.path}: column 'margin' holds {split.features['margin'].dtype} values; "
                                "the reward_model stage needs numbers there (or set use_margin: false).")
        out.append(split)
    return out[0], (out[1] if evaluation is not None else None)


@contextlib.contextmanager
def quiet_new_head():
    """Loading a causal LM as a classifier reports the new `score` head as missing; that is intended here."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


def _train_member(config: RewardModelConfig, ctx, train, evaluation, seed: int, output_dir: Path,
                  member_ctx, callback) -> dict[str, Any]:
    """Train one reward model with `seed`, checkpointing under member_ctx, saving to output_dir."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed
    from trl import RewardConfig, RewardTrainer

    from posttrain.stages.trl_bridge import build_trainer, train_and_save

    tokenizer = AutoTokenizer.from_pretrained(config.model)
    set_seed(seed)  # the value head is freshly initialised: members differ from here on
    with quiet_new_head():
        model = AutoModelForSequenceClassification.from_pretrained(config.model, num_labels=1, dtype=torch.float32)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    trainer = build_trainer(config, ctx, RewardConfig, RewardTrainer, model=model, tokenizer=tokenizer, train=train,
                            evaluation=evaluation, callbacks=[callback], task_type="SEQ_CLS",
                            specific={"center_rewards_coefficient": config.center_rewards_coefficient},
                            args_override={"output_dir": str(member_ctx.checkpoint_dir), "seed": seed, "data_seed": seed})
    return train_and_save(trainer, ctx, tokenizer, merge_lora=True, rename=RENAME, output_dir=output_dir,
                          resume=member_ctx.latest_checkpoint(), step_offset=callback.step_offset)


def pairwise_accuracy(member_rewards_chosen, member_rewards_rejected, aggregation: str, std_coef: float) -> dict[str, float]:
    """Accuracy (chosen strictly above rejected) of the aggregated ensemble and of each member."""
    from posttrain.models.reward import aggregate

    ens = (aggregate(member_rewards_chosen, aggregation, std_coef) > aggregate(member_rewards_rejected, aggregation, std_coef))
    out = {"eval_pairwise_accuracy": round(float(ens.float().mean()), 6)}
    if member_rewards_chosen.shape[0] > 1:
        per_member = (member_rewards_chosen > member_rewards_rejected).float().mean(dim=1)
        out.update({f"eval_pairwise_accuracy_member_{i}": round(float(a), 6) for i, a in enumerate(per_member)})
    return out


def evaluate_pairs(model_dir: Path, evaluation, aggregation: str, std_coef: float) -> dict[str, float]:
    """Score every eval pair with the saved model(s); see :func:`pairwise_accuracy`."""
    from posttrain.models.reward import load_reward_model

    scorer = load_reward_model(model_dir, aggregation=aggregation, std_coef=std_coef)
    prompts = evaluation["prompt"] if "prompt" in evaluation.column_names else [""] * len(evaluation)
    chosen = scorer.member_scores(prompts, evaluation["chosen"])
    rejected = scorer.member_scores(prompts, evaluation["rejected"])
    return pairwise_accuracy(chosen, rejected, aggregation, std_coef)


def _ensemble(config: RewardModelConfig, ctx, train, evaluation, callback_cls) -> dict[str, Any]:
    """Train (or resume) the K members in turn; return the averaged summary."""
    members_dir = ctx.work_dir / "members"
    summaries: list[dict[str, Any]] = []
    done = [_read_done(members_dir / f"member_{i}", ctx.output_dir / f"member_{i}") for i in range(config.ensemble)]
    offset = 0
    for i in range(config.ensemble):
        seed = config.seed + i
        if done[i] is not None:
            summaries.append(done[i])
            offset += int(done[i].get("steps", 0))
            continue
        member_ctx = dataclasses.replace(ctx, work_dir=members_dir / f"member_{i}")
        data = train.select(bootstrap_indices(len(train), seed)) if config.bootstrap else train
        callback = callback_cls(ctx, rename=RENAME, step_offset=offset, extra={"member": i},
                                runs_left=config.ensemble - i)
        summary = _train_member(config, ctx, data, evaluation, seed, ctx.output_dir / f"member_{i}", member_ctx, callback)
        if ctx.is_main:
            (member_ctx.work_dir / "done.json").write_text(json.dumps(summary))
        summaries.append(summary)
        offset += summary["steps"]
    if ctx.is_main:
        spec = {"members": [f"member_{i}" for i in range(config.ensemble)], "aggregation": config.aggregation,
                "std_coef": config.std_coef, "seeds": [config.seed + i for i in range(config.ensemble)],
                "bootstrap": config.bootstrap}
        (ctx.output_dir / "ensemble.json").write_text(json.dumps(spec, indent=2) + "\n")
        shutil.rmtree(members_dir, ignore_errors=True)
    numeric = [k for k in summaries[0] if all(isinstance(s.get(k), (int, float)) for s in summaries)]
    summary = {k: round(sum(s[k] for s in summaries) / len(summaries), 6) for k in numeric}
    summary["steps"] = offset
    summary["members"] = config.ensemble
    return summary


def _read_done(member_work: Path, member_out: Path) -> dict[str, Any] | None:
    """The summary of a member finished by an earlier attempt, or None."""
    marker = member_work / "done.json"
    if marker.is_file() and (member_out / "config.json").is_file():
        return json.loads(marker.read_text())
    return None


@register_stage("reward_model", RewardModelConfig, "Bradley-Terry reward model or ensemble on preference pairs (TRL RewardTrainer)")
def run_reward_model(config: RewardModelConfig, ctx) -> dict[str, Any]:
    from posttrain.common.runtime import quiet_libraries
    from posttrain.data import load_dataset_spec
    from posttrain.stages.trl_bridge import MetricsCallback, headline

    quiet_libraries()
    train, evaluation = load_dataset_spec(config.data, type(config).data_formats)
    train, evaluation = _check_margin(config, train, evaluation)
    if config.ensemble == 1:
        data = train.select(bootstrap_indices(len(train), config.seed)) if config.bootstrap else train
        summary = _train_member(config, ctx, data, evaluation, config.seed, ctx.output_dir, ctx,
                                MetricsCallback(ctx, rename=RENAME))
    else:
        summary = _ensemble(config, ctx, train, evaluation, MetricsCallback)
    if evaluation is not None and ctx.is_main:
        summary.update(evaluate_pairs(ctx.output_dir, evaluation, config.aggregation, config.std_coef))
        ctx.metrics.log(summary["steps"], {k: v for k, v in summary.items() if k.startswith("eval_pairwise")})
    return headline(summary, ("eval_pairwise_accuracy", "eval_reward_margin", "last_loss", "steps"))
