"""Process-wide runtime helpers shared by the stages and the RL engine: precision, library
verbosity, seeds. Heavy libraries are imported inside the functions."""
from __future__ import annotations

import os


def resolve_precision(precision: str) -> str:
    """auto -> bf16 on CUDA devices that support it, fp32 otherwise (always fp32 on CPU)."""
    if precision != "auto":
        return precision
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def quiet_libraries() -> None:
    """Our progress line replaces the libraries' own bars and log prints."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    # TRL's reference-log-prob precompute draws its own tqdm bar unless TQDM_DISABLE is set.
    os.environ.setdefault("TQDM_DISABLE", "1")
    transformers.utils.logging.set_verbosity_warning()


def cuda_present() -> bool:
    """True when a CUDA device is usable. Cheap on machines without an NVIDIA driver (no torch
    import there), so `posttrain validate` stays fast on CPU."""
    if not os.path.exists("/proc/driver/nvidia/version") and not os.environ.get("CUDA_VISIBLE_DEVICES"):
        return False
    import torch

    return torch.cuda.is_available()


def resolve_engine(engine: str) -> str:
    """``auto`` -> ``vllm`` where CUDA and vllm are both present, ``hf`` otherwise (on CPU, batched
    HF generate is faster than vLLM for tiny models: benchmarks/README.md); others unchanged."""
    if engine != "auto":
        return engine
    import importlib.util

    return "vllm" if importlib.util.find_spec("vllm") is not None and cuda_present() else "hf"


def sampler_precision_differs(engine: str | None, engine_options: dict) -> bool:
    """Whether the rollout engine computes in another precision than the float32 trainer: vllm on
    CUDA, unless its ``dtype`` option is float32 (vLLM's ``auto`` serves float32 checkpoints in
    16 bits there). On CPU the vllm engine runs float32, and hf shares the trainer's module."""
    if engine != "vllm" or not cuda_present():
        return False
    return str(engine_options.get("dtype", "auto")).replace("torch.", "") not in ("float32", "float")
