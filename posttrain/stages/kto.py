"""`kto`: Kahneman-Tversky Optimization on unpaired good/bad completions (TRL KTOTrainer).

KTO (Ethayarajh et al. 2024, arXiv 2402.01306, eq. 8) needs only a binary label per completion::

    r(x, y)  = log pi(y|x) - log ref(y|x)
    z_0      = max(0, KL(pi || ref))    estimated per batch from mismatched (x, y') pairs
    loss     = w_D (1 - sigmoid(beta (r - z_0)))  for desirable y   (label true)
             + w_U (1 - sigmoid(beta (z_0 - r)))  for undesirable y (label false)

Data: `prompt`/`completion` rows with a boolean `label` column, or preference pairs, which are
split into one desirable (chosen) and one undesirable (rejected) row each. Where we differ from
TRL: TRL unpairs in blocks (all chosen rows of a block, then all rejected ones) and samples
sequentially, because it estimates z_0 by pairing each completion with its batch neighbour's
prompt; we shuffle the unpaired rows once with the stage seed so batches mix both labels.
`batch_size` must be at least 2 for that KL estimate.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from posttrain.common.config import rebase_dir
from posttrain.errors import DataError
from posttrain.stages.dpo import (
    PREFERENCE_RENAME,
    PreferenceConfig,
    load_policy,
    load_reference,
    shared_datasets,
)
from posttrain.stages.registry import register_stage


class KTOConfig(PreferenceConfig):
    """KTO: prospect-theoretic loss on completions labelled desirable / undesirable."""

    data_formats: ClassVar[str | tuple[str, ...] | None] = ("preference", "prompt_completion")

    kind: Literal["kto"] = "kto"
    batch_size: int = Field(8, ge=2, description="Examples per process per forward pass (>= 2: the KL reference point is estimated within a batch).")
    desirable_weight: float = Field(1.0, gt=0, description="w_D: weight of desirable-example losses (raise it when desirable examples are rarer).")
    undesirable_weight: float = Field(1.0, gt=0, description="w_U: weight of undesirable-example losses.")
    ref_model: str | None = Field(None, description="Reference model directory; default: the stage's input model.")

    def rebase_paths(self, base_dir: Path) -> None:
        self.ref_model = rebase_dir(self.ref_model, base_dir)
    precompute_ref_log_probs: bool = Field(False, description="Compute reference log-probs once before training, then free the reference model.")

    key_metrics: ClassVar[tuple[str, ...]] = ("loss", "kl", "reward_margin", "eval_reward_margin")
    model_keys: ClassVar[tuple[str, ...]] = ("model", "ref_model")


def to_unpaired(dataset, seed: int, source: str):
    """Preference pairs -> shuffled (prompt, completion, label) rows; unpaired data is checked and kept."""
    from trl.data_utils import unpair_preference_dataset

    columns = dataset.column_names
    if "chosen" in columns and "rejected" in columns:
        return unpair_preference_dataset(dataset).shuffle(seed=seed).flatten_indices()
    if "label" not in columns:
        raise DataError(f"Data file {source}: the kto stage needs preference pairs (chosen, rejected) or "
                        f"prompt/completion rows with a boolean 'label' column; columns found: {', '.join(columns)}.")
    if dataset.features["label"].dtype != "bool":
        raise DataError(f"Data file {source}: column 'label' holds {dataset.features['label'].dtype} values; "
                        "kto needs true (desirable) or false (undesirable) in every row.")
    return dataset


@register_stage("kto", KTOConfig, "Kahneman-Tversky optimization on labelled or unpaired completions (TRL KTOTrainer)")
def run_kto(config: KTOConfig, ctx) -> dict[str, Any]:
    from transformers import set_seed
    from trl import KTOConfig as TRLKTOConfig
    from trl import KTOTrainer

    from posttrain.common.runtime import quiet_libraries
    from posttrain.data import load_dataset_spec
    from posttrain.stages.trl_bridge import run_trainer

    quiet_libraries()
    train, evaluation = load_dataset_spec(config.data, type(config).data_formats)
    train = to_unpaired(train, config.seed, str(config.data.path))
    if evaluation is not None:
        evaluation = to_unpaired(evaluation, config.seed, str(config.data.eval_path or config.data.path))
    set_seed(config.seed)
    model, tokenizer = load_policy(config)
    specific = {"beta": config.beta, "desirable_weight": config.desirable_weight,
                "undesirable_weight": config.undesirable_weight, "precompute_ref_log_probs": config.precompute_ref_log_probs}
    return run_trainer(config, ctx, TRLKTOConfig, KTOTrainer, model=model, tokenizer=tokenizer, train=train,
                       evaluation=evaluation, specific=specific, ref_model=load_reference(config),
                       prepare=lambda args, tr, ev: shared_datasets(args, ctx, config, tr, ev),
                       rename=PREFERENCE_RENAME, headline_keys=("eval_reward_margin", "eval_kl", "last_loss", "steps"))
