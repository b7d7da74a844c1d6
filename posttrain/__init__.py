"""posttrain: LLM post-training from one YAML recipe.

Python API (same validation as the CLI): `run`, `resolve`, `recipe_dict`, `run_stage` and one
helper per stage kind (`init_model`, `pretrain`, `sft`, ...).
"""
__version__ = "0.1.0"

from posttrain.api import (  # noqa: E402
    StageResult,
    dpo,
    evaluate,
    grpo,
    init_model,
    kto,
    orpo,
    ppo,
    pretrain,
    recipe_dict,
    resolve,
    reward_model,
    run,
    run_stage,
    sft,
    simpo,
)
from posttrain.errors import ConfigError, DataError, PosttrainError, StageFailed, VerifierError  # noqa: E402

__all__ = ["__version__", "run", "resolve", "recipe_dict", "run_stage", "StageResult", "init_model", "pretrain",
           "sft", "reward_model", "dpo", "kto", "orpo", "simpo", "grpo", "ppo", "evaluate", "PosttrainError", "ConfigError", "DataError", "StageFailed", "VerifierError"]
