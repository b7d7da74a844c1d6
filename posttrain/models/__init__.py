"""Tiny randomly initialised models and their locally trained tokenizer (no hub needed).

>>> from posttrain.models import init_model, describe        # doctest: +SKIP
>>> path = init_model("runs/tiny", arch="qwen2", size="tiny", seed=0)  # doctest: +SKIP
>>> describe(path)["params"]                                   # doctest: +SKIP
"""
from posttrain.models.factory import (
    ARCHES,
    MODEL_SIZES,
    ModelSize,
    build_config,
    count_parameters,
    describe,
    init_model,
    load_model,
    pad_vocabulary,
)
from posttrain.models.tokenizer import CHAT_TEMPLATE, build_tokenizer, load_tokenizer

__all__ = [
    "ARCHES",
    "CHAT_TEMPLATE",
    "MODEL_SIZES",
    "ModelSize",
    "build_config",
    "build_tokenizer",
    "count_parameters",
    "describe",
    "init_model",
    "load_model",
    "load_tokenizer",
    "pad_vocabulary",
]
