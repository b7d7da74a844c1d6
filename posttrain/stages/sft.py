"""`sft`: supervised fine-tuning on TRL's SFTTrainer (chat messages or prompt/completion data).

Loss is on assistant tokens only for chat data (the tokenizer's chat template marks them with
`{% generation %}`) and on completion tokens only for prompt/completion data, as TRL does.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from posttrain.common.config import lr_field
from posttrain.stages.registry import register_stage
from posttrain.stages.training import TrainingConfig


class SFTConfig(TrainingConfig):
    """Supervised fine-tuning."""

    data_formats: ClassVar[str | tuple[str, ...] | None] = ("messages", "prompt_completion")

    kind: Literal["sft"] = "sft"
    lr: float = lr_field(2e-4)
    packing: bool = Field(False, description="Pack several examples into each max_length sequence (BFD packing, as TRL).")
    assistant_only_loss: bool = Field(True, description="Chat data: compute the loss on assistant turns only.")
    completion_only_loss: bool = Field(True, description="prompt/completion data: compute the loss on the completion only.")

    key_metrics: ClassVar[tuple[str, ...]] = ("loss", "eval_loss", "mean_token_accuracy")


def run_causal_lm(config: TrainingConfig, ctx, train, evaluation, sft_args: dict[str, Any]) -> dict[str, Any]:
    """Shared by `sft` and `pretrain`: load the model, train with SFTTrainer, save."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    from posttrain.common.runtime import quiet_libraries
    from posttrain.stages.trl_bridge import run_trainer

    quiet_libraries()
    tokenizer = AutoTokenizer.from_pretrained(config.model)
    model = AutoModelForCausalLM.from_pretrained(config.model, dtype=torch.float32)
    return run_trainer(config, ctx, TRLSFTConfig, SFTTrainer, model=model, tokenizer=tokenizer, train=train,
                       evaluation=evaluation, specific=sft_args)


@register_stage("sft", SFTConfig, "supervised fine-tuning (TRL SFTTrainer)")
def run_sft(config: SFTConfig, ctx) -> dict[str, Any]:
    from posttrain.data import load_dataset_spec

    train, evaluation = load_dataset_spec(config.data, type(config).data_formats)
    chat = "messages" in train.column_names
    sft_args = {"packing": config.packing,
                "assistant_only_loss": config.assistant_only_loss and chat,
                "completion_only_loss": config.completion_only_loss if not chat else None}
    return run_causal_lm(config, ctx, train, evaluation, sft_args)
