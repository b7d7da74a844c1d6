"""Process-wide runtime helpers shared by the stages and the RL engine: precision, library
verbosity, seeds. Heavy libraries are imported inside the functions."""
from __future__ import annotations

import hashlib
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
