"""LoRA adapters (Hu et al. 2021, arXiv 2106.09685) through peft, for every stage that trains.

One translation of the recipe's `lora:` block into peft's config: the offline stages hand it to
TRL, the RL loop wraps its policy with it (:func:`add_adapters`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from posttrain.common.config import LoraConfig


def peft_config(lora: LoraConfig, task_type: str = "CAUSAL_LM"):
    """peft's LoraConfig for the recipe's `lora:` block."""
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=lora.target_modules, task_type=task_type)


def add_adapters(model: nn.Module, lora: LoraConfig) -> nn.Module:
    """``model`` as a peft model whose only trainable parameters are fresh LoRA adapters.

    peft initialises B to zero, so the wrapped model computes exactly what ``model`` did until the
    first update; ``disable_adapter()`` gives the base model back (the RL reference).
    """
    from peft import get_peft_model

    return get_peft_model(model, peft_config(lora))
