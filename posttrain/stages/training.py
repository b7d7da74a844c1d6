"""Config keys shared by the gradient-training stage kinds (pretrain, sft, reward_model, dpo, ...)."""
from __future__ import annotations

from pydantic import Field

from posttrain.common.config import OptimizerConfig, StrictModel, lr_scheduler_field
from posttrain.common.schedule import LRSchedule
from posttrain.data import DataSpec


class LoraConfig(StrictModel):
    """LoRA adapters via peft (Hu et al. 2021, arXiv 2106.09685)."""

    r: int = Field(8, ge=1, description="Adapter rank.")
    alpha: int = Field(16, ge=1, description="Scaling numerator: the update is scaled by alpha / r.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapter input.")
    target_modules: list[str] | str = Field("all-linear", description="Modules that get adapters: a list of names or 'all-linear'.")
    merge: bool = Field(True, description="Merge the adapters into the base weights when the stage ends, so the output is a plain model.")


class TrainingConfig(OptimizerConfig):
    """Keys of the offline stages that train on a dataset (the optimiser's keys come from
    :class:`~posttrain.common.config.OptimizerConfig`, shared with the RL loop)."""

    data: DataSpec = Field(description="Training data: a path or a data block (see docs/data.md).")
    epochs: float = Field(1.0, gt=0, description="Passes over the training data (ignored when max_steps is set).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = Field(8, ge=1, description="Examples per process per forward pass.")
    lr_scheduler: LRSchedule = lr_scheduler_field("linear")
    max_length: int = Field(512, ge=8, description="Truncate examples to this many tokens.")
    logging_steps: int = Field(5, ge=1, description="Log metrics every this many steps.")
    eval_steps: int | None = Field(None, ge=1, description="Evaluate on the eval split every this many steps (default: only at the end).")
    lora: LoraConfig | None = Field(None, description="Train LoRA adapters instead of all weights.")
