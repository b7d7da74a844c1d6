"""`sft`: supervised fine-tuning on TRL's SFTTrainer (chat messages or prompt/completion data).

Loss is on assistant tokens only for chat data (the tokenizer's chat template marks them with
`{% generation %}`) and on completion tokens only for prompt/completion data, as TRL does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from posttrain.common.config import lr_field, rebase_file_ref
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
    tools: list[str] = Field(default_factory=list, description="Chat data: tools the chat template lists in every example's prompt (built-in names, 'module:function' or './file.py:function', as an RL stage's environment.tools), so SFT transcripts with tool calls see the prompt the RL episodes will.")

    key_metrics: ClassVar[tuple[str, ...]] = ("loss", "eval_loss", "mean_token_accuracy")

    def preflight_problems(self, key: str, run_dir: Path, columns: list[str] | None = None) -> list[str]:
        """A tool in `tools` that does not load (unknown name, no type hints or docstring)."""
        from posttrain.agents.tools import load_tools
        from posttrain.errors import ConfigError

        problems = super().preflight_problems(key, run_dir, columns)
        try:
            load_tools(self.tools, key=f"{key}.tools")
        except ConfigError as exc:
            problems.append(str(exc))
        return problems

    def rebase_paths(self, base_dir: Path) -> None:
        """`./file.py:fn` tools are read relative to the recipe's folder."""
        super().rebase_paths(base_dir)
        self.tools = [rebase_file_ref(t, base_dir) for t in self.tools]


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


def with_tools(dataset, refs: list[str]):
    """``dataset`` with a ``tools`` column: the tools' JSON schemas (what TRL's SFTTrainer passes to
    the chat template), replacing any the data had."""
    import json

    from posttrain.agents.tools import load_tools

    if dataset is None:
        return None
    schemas = json.dumps([tool.schema for tool in load_tools(refs, key="tools")])
    if "tools" in dataset.column_names:
        dataset = dataset.remove_columns("tools")
    return dataset.add_column("tools", [schemas] * len(dataset))


@register_stage("sft", SFTConfig, "supervised fine-tuning (TRL SFTTrainer)")
def run_sft(config: SFTConfig, ctx) -> dict[str, Any]:
    from posttrain.data import load_dataset_spec

    train, evaluation = load_dataset_spec(config.data, type(config).data_formats)
    chat = "messages" in train.column_names
    if config.tools:
        train, evaluation = (with_tools(d, config.tools) for d in (train, evaluation))
    sft_args = {"packing": config.packing,
                "assistant_only_loss": config.assistant_only_loss and chat,
                "completion_only_loss": config.completion_only_loss if not chat else None}
    return run_causal_lm(config, ctx, train, evaluation, sft_args)
