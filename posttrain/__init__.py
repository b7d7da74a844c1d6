"""posttrain: LLM post-training from one YAML recipe.

Python API (same validation as the CLI): `run`, `resolve`, `recipe_dict`, `run_stage` and one
helper per stage kind (`init_model`, `pretrain`, `sft`, ...).
"""
__version__ = "0.1.0"

from posttrain.api import StageResult, init_model, pretrain, recipe_dict, resolve, run, run_stage, sft  # noqa: E402
from posttrain.errors import ConfigError, DataError, PosttrainError, StageFailed, VerifierError  # noqa: E402

__all__ = ["__version__", "run", "resolve", "recipe_dict", "run_stage", "StageResult", "init_model", "pretrain",
           "sft", "PosttrainError", "ConfigError", "DataError", "StageFailed", "VerifierError"]
