"""`init_model`: a randomly initialised tiny model plus a locally trained tokenizer (no hub)."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from posttrain.common.config import StageConfig
from posttrain.stages.registry import register_stage


class InitModelConfig(StageConfig):
    """Build a model from scratch: `posttrain init-model` as a stage."""

    kind: Literal["init_model"] = "init_model"
    arch: Literal["qwen2", "llama"] = Field("qwen2", description="Architecture of the new model.")
    size: Literal["tiny", "small", "base"] = Field("tiny", description="Preset size: tiny ~100k, small ~0.8M, base ~3M parameters.")

    creates_model: ClassVar[bool] = True
    key_metrics: ClassVar[tuple[str, ...]] = ("params",)


@register_stage("init_model", InitModelConfig, "randomly initialised model + locally trained tokenizer")
def run_init_model(config: InitModelConfig, ctx) -> dict:
    from posttrain.models import describe, init_model

    init_model(ctx.output_dir, arch=config.arch, size=config.size, seed=config.seed, overwrite=True)
    info = describe(ctx.output_dir)
    return {"params": info["params"], "vocab_size": info["vocab_size"]}
