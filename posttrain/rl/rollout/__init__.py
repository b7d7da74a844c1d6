"""Rollout engines: sample completions for the RL loop and follow the policy's weights.

Two interchangeable engines implement :class:`RolloutEngine`: ``hf`` (transformers ``generate``;
fastest for small models on CPU) and ``vllm`` (a colocated vLLM ``LLM`` with in-place float32
weight sync that also works on CPU). :func:`make_engine` builds either from a model directory.

>>> engine = make_engine("hf", "runs/tiny", tokenizer)                        # doctest: +SKIP
>>> batch = engine.generate([[{"role": "user", "content": "2+2?"}]],
...                         SamplingConfig(n=4, max_tokens=16, seed=0))        # doctest: +SKIP
>>> batch.prompt_index                                                         # doctest: +SKIP
[0, 0, 0, 0]
"""
from __future__ import annotations

from typing import Literal

from posttrain.errors import ConfigError
from posttrain.rl.rollout.hf_engine import HFEngine
from posttrain.rl.rollout.types import (
    RolloutBatch,
    RolloutEngine,
    SamplingConfig,
    check_batch,
    decode_completion,
    render_prompts,
)
from posttrain.rl.rollout.weights import (
    is_zero3,
    iter_full_state_dict,
    unwrap_model,
    write_safetensors_shards,
)

ENGINES = ("hf", "vllm")


def make_engine(name: Literal["hf", "vllm"], model_path: str, tokenizer,
                **options) -> RolloutEngine:
    """Build rollout engine ``name`` on the HF model directory ``model_path``.

    ``options`` go to the engine's constructor: :class:`HFEngine` (``model``, ``batch_size``,
    ``device``) or :class:`~posttrain.rl.rollout.vllm_engine.VLLMEngine` (``dtype``,
    ``max_model_len``, ``seed``, ``gpu_memory_utilization``, ``kv_cache_gib``, ``multiprocess``,
    ``enforce_eager``, ``sync_dir``, ``llm_kwargs``). vLLM is imported only when asked for.
    """
    if name == "hf":
        return HFEngine(model_path, tokenizer, **options)
    if name == "vllm":
        from posttrain.rl.rollout.vllm_engine import VLLMEngine

        return VLLMEngine(model_path, tokenizer, **options)
    raise ConfigError(f"rollout engine {name!r} is not supported; expected one of "
                      f"{', '.join(ENGINES)}")


def __getattr__(name: str):
    # VLLMEngine is importable from here without importing vLLM for users of the hf engine.
    if name == "VLLMEngine":
        from posttrain.rl.rollout.vllm_engine import VLLMEngine

        return VLLMEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ENGINES",
    "HFEngine",
    "RolloutBatch",
    "RolloutEngine",
    "SamplingConfig",
    "VLLMEngine",
    "check_batch",
    "decode_completion",
    "is_zero3",
    "iter_full_state_dict",
    "make_engine",
    "render_prompts",
    "unwrap_model",
    "write_safetensors_shards",
]
