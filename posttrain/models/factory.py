"""Randomly initialised tiny decoder-only models, written in Hugging Face format.

These are the fixtures the rest of posttrain (and its tests and benchmarks) train on: no hub is
reachable, so :func:`init_model` builds a Qwen2 or Llama model of a fixed size from a seed, plus the
locally trained tokenizer from :mod:`posttrain.models.tokenizer`, and saves both where
``AutoModelForCausalLM``, ``AutoModelForSequenceClassification``, ``AutoTokenizer`` and vLLM can
load them. The same ``(arch, size, seed)`` always produces byte-identical files.
"""
from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
)
from transformers.utils import logging as hf_logging

from posttrain.common.version import __version__
from posttrain.errors import ConfigError
from posttrain.models.tokenizer import ENDOFTEXT, IM_END, build_tokenizer

ARCHES = ("qwen2", "llama")

# Written next to the HF files so describe() can say which preset and seed built a directory.
METADATA_FILE = "posttrain_model.json"


@dataclass(frozen=True)
class ModelSize:
    """Shape of one size preset. head_dim >= 32 everywhere: vLLM's CPU attention needs it."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    max_position_embeddings: int = 1024

    @property
    def head_dim(self) -> int:
        """Per-head width, hidden_size / num_attention_heads."""
        return self.hidden_size // self.num_attention_heads


MODEL_SIZES: dict[str, ModelSize] = {
    # ~0.14M parameters with the 1024-token vocabulary (embedding 65k of it): unit-test fixture.
    "tiny": ModelSize(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=128),
    # ~0.9M: learns 3-operand addition from scratch in minutes on 2 CPU cores.
    "small": ModelSize(hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, intermediate_size=384),
    # ~3.4M: the benchmark model.
    "base": ModelSize(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=768),
}


def build_config(arch: str, size: str, vocab_size: int, pad_token_id: int,
                 eos_token_id: int, bos_token_id: int) -> PretrainedConfig:
    """Return the transformers config for ``arch`` at preset ``size`` (float32, tied embeddings)."""
    _check_choice("arch", arch, ARCHES)
    _check_choice("size", size, tuple(MODEL_SIZES))
    shape = asdict(MODEL_SIZES[size])
    common = dict(
        vocab_size=vocab_size,
        tie_word_embeddings=True,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        bos_token_id=bos_token_id,
        dtype="float32",
        **shape,
    )
    if arch == "qwen2":
        return Qwen2Config(use_sliding_window=False, **common)
    return LlamaConfig(head_dim=MODEL_SIZES[size].head_dim, attention_bias=False, mlp_bias=False,
                       **common)


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not supported; expected one of {', '.join(choices)}")


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Hide transformers' one-shard "Writing model shards" bar, restoring the caller's setting."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"out_dir {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ConfigError(
            f"out_dir {out_dir} is not empty; pass overwrite=True (CLI: --overwrite) to replace it"
        )


def init_model(out_dir: str | Path, arch: str = "qwen2", size: str = "tiny", seed: int = 0,
               overwrite: bool = False) -> Path:
    """Write a randomly initialised ``arch`` model of preset ``size`` and its tokenizer.

    Weights come from ``torch.manual_seed(seed)`` (the caller's global RNG state is restored
    afterwards). With ``overwrite=True`` an existing ``out_dir`` is replaced as a whole; the files
    are assembled in a temporary sibling directory first, so a failure never leaves half a model.

    >>> path = init_model(tmp_path / "m", size="tiny", seed=0)   # doctest: +SKIP
    >>> AutoModelForCausalLM.from_pretrained(path)                # doctest: +SKIP
    """
    _check_choice("arch", arch, ARCHES)
    _check_choice("size", size, tuple(MODEL_SIZES))
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir, overwrite)

    tokenizer = build_tokenizer(arch)
    end_id = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    im_end_id = tokenizer.convert_tokens_to_ids(IM_END)
    # bos = <|endoftext|> as in Qwen2; the tokenizer itself adds no BOS token.
    config = build_config(arch, size, vocab_size=len(tokenizer), pad_token_id=end_id,
                          eos_token_id=im_end_id, bos_token_id=end_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Stop on the chat turn end and on document end, like Qwen2.5-Instruct; greedy by default.
    model.generation_config = GenerationConfig(
        bos_token_id=end_id, eos_token_id=[im_end_id, end_id], pad_token_id=end_id,
    )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it 0700; the result should look like a mkdir'd folder
        with _no_progress_bars():
            model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        metadata = {"arch": arch, "size": size, "seed": seed,
                    "params": count_parameters(model), "vocab_size": len(tokenizer),
                    "posttrain_version": __version__}
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out_dir


def count_parameters(path_or_model: str | Path | torch.nn.Module) -> int:
    """Number of distinct parameters (tied weights once) of a model or a saved model directory.

    For a directory the safetensors headers are read; nothing is loaded into memory.
    """
    if isinstance(path_or_model, torch.nn.Module):
        # parameters() yields a tied tensor once, so the tied lm_head is not double-counted.
        return sum(p.numel() for p in path_or_model.parameters())
    path = Path(path_or_model)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise ConfigError(f"no safetensors weights found at {path}")
    total = 0
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            names = handle.keys()  # safe_open is not iterable itself
            total += sum(math.prod(handle.get_slice(name).get_shape()) for name in names)
    return total


def describe(out_dir: str | Path) -> dict:
    """Summary of a model directory for the CLI: arch, size, seed, params, vocab_size, shape.

    ``size`` and ``seed`` come from the metadata :func:`init_model` writes; for other model
    directories ``size`` is the preset whose shape matches the config, or ``"custom"``.
    """
    out_dir = Path(out_dir)
    config_path = out_dir / "config.json"
    if not config_path.is_file():
        raise ConfigError(f"{config_path} not found; expected a Hugging Face model directory")
    config = json.loads(config_path.read_text())
    meta_path = out_dir / METADATA_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    shape = {key: config.get(key) for key in asdict(MODEL_SIZES["tiny"])}
    matching = [name for name, preset in MODEL_SIZES.items() if asdict(preset) == shape]
    return {
        "path": str(out_dir),
        "arch": meta.get("arch", config.get("model_type")),
        "size": meta.get("size", matching[0] if matching else "custom"),
        "seed": meta.get("seed"),
        "params": count_parameters(out_dir),
        "vocab_size": config.get("vocab_size"),
        "hidden_size": config.get("hidden_size"),
        "num_hidden_layers": config.get("num_hidden_layers"),
        "tie_word_embeddings": config.get("tie_word_embeddings"),
    }


def load_model(path: str | Path) -> PreTrainedModel:
    """Load a causal LM from a local directory in float32 (no hub access)."""
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32,
                                                local_files_only=True)


def pad_vocabulary(model_dir: str | Path, out_dir: str | Path, vocab_size: int, seed: int = 0) -> Path:
    """A copy of ``model_dir`` (model and tokenizer) whose embedding (and lm_head) has ``vocab_size``
    rows, the new ones random (``resize_token_embeddings`` without mean resizing, seeded).

    A tiny model with a real model's vocabulary (Qwen2's 151,936) shows the costs that scale with
    it (logits, sampling, embedding gradients) without a hub download. The tokenizer is unchanged:
    ids it does not know decode to nothing.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if vocab_size < len(tokenizer):
        raise ValueError(f"pad_vocabulary: {vocab_size} rows would drop tokens of the {len(tokenizer)}-token tokenizer")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.resize_token_embeddings(vocab_size, mean_resizing=False)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)
