"""Config keys shared by the gradient-training stage kinds (pretrain, sft, reward_model, dpo, ...)."""
from __future__ import annotations

from pydantic import Field, model_validator

from posttrain.common.config import OptimizerConfig, lr_scheduler_field
from posttrain.common.schedule import LRSchedule
from posttrain.data import DataSpec


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

    @model_validator(mode="after")
    def _lora_without_partitions(self) -> TrainingConfig:
        if self.lora is not None and self.distributed.zero == 3:
            # TRL merges the adapters into the base weights on one process; ZeRO-3 shards them.
            raise ValueError("lora with distributed.zero: 3 is not supported in offline stages (merging needs "
                             "unsharded weights); use zero: 2 or 0 (LoRA's optimizer state is small)")
        return self
