"""posttrain: LLM post-training from one YAML recipe.

Python API (same validation as the CLI): `run`, `resolve`, `recipe_dict`, `run_stage` and one
helper per stage kind (`init_model`, `pretrain`, `sft`, ...).
"""
__version__ = "0.1.0"

from posttrain.api import (
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
from posttrain.errors import ConfigError, DataError, PosttrainError, StageFailed, VerifierError

__all__ = [
    "ConfigError",
    "DataError",
    "PosttrainError",
    "StageFailed",
    "StageResult",
    "VerifierError",
    "__version__",
    "dpo",
    "evaluate",
    "grpo",
    "init_model",
    "kto",
    "orpo",
    "ppo",
    "pretrain",
    "recipe_dict",
    "resolve",
    "reward_model",
    "run",
    "run_stage",
    "sft",
    "simpo",
]
