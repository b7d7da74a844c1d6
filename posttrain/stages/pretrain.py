"""`pretrain`: causal language modelling on a `text` dataset, to give a fresh model some language."""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from posttrain.common.config import lr_field
from posttrain.stages.registry import register_stage
from posttrain.stages.sft import run_causal_lm
from posttrain.stages.training import TrainingConfig


class PretrainConfig(TrainingConfig):
    """Next-token prediction on every token of a text corpus."""

    data_formats: ClassVar[str | tuple[str, ...] | None] = "text"

    kind: Literal["pretrain"] = "pretrain"
    lr: float = lr_field(1e-3, "Higher than fine-tuning: the model starts from scratch.")
    packing: bool = Field(True, description="Pack documents into max_length sequences.")
    max_length: int = Field(256, ge=8, description="Sequence length of packed blocks.")

    key_metrics: ClassVar[tuple[str, ...]] = ("loss", "eval_loss")


@register_stage("pretrain", PretrainConfig, "causal-LM training on a text corpus (TRL SFTTrainer, all tokens)")
def run_pretrain(config: PretrainConfig, ctx) -> dict[str, Any]:
    from posttrain.data import load_dataset_spec

    train, evaluation = load_dataset_spec(config.data, type(config).data_formats)
    return run_causal_lm(config, ctx, train, evaluation,
                         {"packing": config.packing, "dataset_text_field": "text", "completion_only_loss": False})
