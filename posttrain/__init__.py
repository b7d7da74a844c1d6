"""posttrain: LLM post-training from one YAML recipe.

Python API (same validation as the CLI): `run`, `resolve`, `recipe_dict`, `run_stage` and one
helper per stage kind (`init_model`, `pretrain`, `sft`, ...).

Attributes load lazily (PEP 562), so importing a sub-package such as ``posttrain.rl.algos``
does not pull in the recipe runner, pydantic or rich.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from posttrain.common.version import __version__

_API = ("StageResult", "dpo", "evaluate", "grpo", "init_model", "kto", "online_dpo", "orpo", "ppo", "pretrain", "prm",
        "recipe_dict", "resolve", "reward_model", "run", "run_stage", "sft", "simpo")
_ERRORS = ("ConfigError", "DataError", "PosttrainError", "StageFailed", "VerifierError")

__all__ = sorted([*_API, *_ERRORS, "__version__"])

if TYPE_CHECKING:
    from posttrain.api import (  # noqa: F401
        StageResult,
        dpo,
        evaluate,
        grpo,
        init_model,
        kto,
        online_dpo,
        orpo,
        ppo,
        pretrain,
        prm,
        recipe_dict,
        resolve,
        reward_model,
        run,
        run_stage,
        sft,
        simpo,
    )
    from posttrain.errors import ConfigError, DataError, PosttrainError, StageFailed, VerifierError  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _API:
        module = "posttrain.api"
    elif name in _ERRORS:
        module = "posttrain.errors"
    else:
        raise AttributeError(f"module 'posttrain' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
